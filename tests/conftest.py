"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

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
