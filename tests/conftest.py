"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest
from support import CI_FLAG

# Under CI=true pytest changes its own output (the short summary repeats whole failure messages), so
# the pytest runs these tests start would print differently in CI than on a developer's machine:
# they do not see CI. Whether the suite runs in CI (a missing tool fails instead of skipping,
# support.in_ci) is kept in CI_FLAG.
os.environ.setdefault(CI_FLAG, os.environ.get("CI", ""))


@pytest.fixture(autouse=True)
def _runs_started_here_do_not_see_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)

from pytest_replay.http.parser import Framer


@pytest.fixture(scope="module", params=["fast", "reference"])
def both_framer_paths(request):
    """Run a module's tests twice: with the framer's fast path (whole messages at the start of a
    segment skip the buffer) and with the reference path alone (everything through the buffer).
    Module-scoped, so Hypothesis tests can use it."""
    saved = Framer.fast_path
    Framer.fast_path = request.param == "fast"
    yield request.param
    Framer.fast_path = saved


@pytest.fixture(scope="module", params=["fast", "reference"])
def both_reader_paths(request):
    """Run a module's tests twice: with the .gor reader's fast path (GorReader._read_fast, the
    common cases inlined) and with its reference path alone (GorReader._read_reference, every
    record through the general methods and parser). Module-scoped, like both_framer_paths."""
    from pytest_replay.capture.gor import GorReader

    saved = GorReader.fast_path
    GorReader.fast_path = request.param == "fast"
    yield request.param
    GorReader.fast_path = saved
