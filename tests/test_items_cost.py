"""What a replay item costs pytest (issue 13.2), end to end against a real keep-alive server on 127.0.0.1.

Per-exchange items are many: pytest resolves their fixture closure once per capture file, as it does
once per parametrized function, and their fixture values (all session-wide) once, instead of once per
item. These tests count pytest's own calls in the pytest run they start (never a timer), and check that
what depends on fixtures and selection is unchanged: a user's autouse fixture runs for every item, a
conftest's replay_target is used, failures show their diffs, --lf reruns the failed items."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from support import free_port, serving
from test_stream import (  # the keep-alive server and its answers
    BAD,
    OK,
    SEP,
    SERVER,
    T0,
)

from pytest_replay.http.message import Request
from pytest_replay.session.stream import recorded_host

# Counts pytest's fixture work in the run it is the conftest of; written down when the session ends.
COUNTING = """
import json, pytest
from _pytest import fixtures

calls = {"fixture_closures": 0, "fixture_requests": 0, "autouse": 0}
closure = fixtures.FixtureManager.getfixtureinfo
active = fixtures.FixtureRequest._get_active_fixturedef


def counted_closure(self, node, *args, **kwargs):
    calls["fixture_closures"] += 1
    return closure(self, node, *args, **kwargs)


def counted_request(self, argname):
    calls["fixture_requests"] += 1
    return active(self, argname)


fixtures.FixtureManager.getfixtureinfo = counted_closure
fixtures.FixtureRequest._get_active_fixturedef = counted_request


def pytest_sessionfinish(session):
    with open("calls.json", "w") as f:
        json.dump(calls, f)
"""

AUTOUSE = """

@pytest.fixture(autouse=True)
def every_item():
    calls["autouse"] += 1
    yield
"""

TARGET_FIXTURE = """

@pytest.fixture(scope="session")
def replay_target():
    calls["target_fixture"] = calls.get("target_fixture", 0) + 1
    return %r
"""


@pytest.fixture(scope="module")
def server() -> str:
    port = free_port()
    with serving([sys.executable, "-c", SERVER, str(port)], port, "keep-alive server") as url:
        yield url


def capture(path: Path, n: int, connections: int, *, bad_every: int = 0) -> Path:
    """A .gor of n GETs on `connections` keep-alive connections; every `bad_every`-th recorded answer
    differs from the server's."""
    records = []
    for i in range(n):
        rid = f"{i % connections + 1:016x}{i:08x}"
        records.append(f"1 {rid} {T0 + i * 1000} -1\n".encode() + f"GET /item/{i} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
        answer = BAD if bad_every and i % bad_every == bad_every - 1 else OK
        records.append(f"2 {rid} {T0 + i * 1000 + 500} -1\n".encode() + answer)
    path.write_bytes(b"".join(r + SEP for r in records))
    return path


def replay(pytester: pytest.Pytester, *args: str, cache: bool = False):
    plugins = () if cache else ("-p", "no:cacheprovider")
    return pytester.runpytest_subprocess(*plugins, "-q", "--speed", "0", *args, timeout=300)


def calls(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "calls.json").read_text())


@pytest.mark.parametrize("stream", ["auto", "off"])
def test_items_of_a_capture_resolve_their_fixtures_once_not_per_item(pytester: pytest.Pytester, server: str,
                                                                      stream: str) -> None:
    pytester.makeconftest(COUNTING)
    gor = capture(pytester.path / "some-bad.gor", 300, 5, bad_every=50)
    result = replay(pytester, "--replay", str(gor), "--replay-target", server, "--replay-stream", stream, "-rf")
    result.assert_outcomes(passed=294, failed=6)
    counted = calls(pytester)
    assert counted["fixture_closures"] == 1  # one per capture file (it was one per item: 300)
    assert counted["fixture_requests"] < 30  # the first item's 14 (every item made 9 or more: 2,700+)
    text = result.stdout.str()
    assert text.count("body $.ok") >= 6 and "false" in text  # every failure still shows its diff
    assert "GET /item/49 #49" in text and "GET /item/299 #299" in text


def test_a_users_autouse_fixture_still_runs_for_every_item(pytester: pytest.Pytester, server: str) -> None:
    pytester.makeconftest(COUNTING + AUTOUSE + TARGET_FIXTURE % server)
    gor = capture(pytester.path / "all-good.gor", 40, 4)
    result = replay(pytester, "--replay", str(gor))
    result.assert_outcomes(passed=40)
    counted = calls(pytester)
    assert counted["autouse"] == 40  # a function-scoped fixture: pytest's path for every item
    assert counted["target_fixture"] == 1  # the conftest's replay_target, set up once
    assert counted["fixture_closures"] == 1


def test_last_failed_reruns_the_failed_items_with_their_diffs(pytester: pytest.Pytester, server: str) -> None:
    gor = capture(pytester.path / "some-bad.gor", 60, 3, bad_every=7)
    first = replay(pytester, "--replay", str(gor), "--replay-target", server, "-rf", cache=True)
    first.assert_outcomes(passed=52, failed=8)
    failed = sorted(re.findall(r"FAILED \S+::(GET /item/\d+ #\d+)", first.stdout.str()))
    assert len(failed) == 8
    again = replay(pytester, "--replay", str(gor), "--replay-target", server, "-rf", "--lf", cache=True)
    again.assert_outcomes(failed=8, deselected=52)
    assert sorted(re.findall(r"FAILED \S+::(GET /item/\d+ #\d+)", again.stdout.str())) == failed
    assert again.stdout.str().count("body $.ok") >= 8


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost:shop.example:8080 \r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHOST: \t Shop.Example\r\n\r\n",
    b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",  # none
    b"GET /host: HTTP/1.1\r\nAccept: */*\r\n\r\n",  # "host:" in the request line only
    b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",  # two: the first
    b"GET / HTTP/1.1\r\nHostname: x\r\nHost: a.example\r\n\r\n",  # another field starting "host"
    b"GET / HTTP/1.1\r\nX-A: 1\r\nHost: a.\r\n example\r\n\r\n",  # folded
    b"GET / HTTP/1.1\nHost: lf.example\n\n",  # bare LF
    b"GET / HTTP/1.1\r\nX-Forwarded-Host: x\r\nHost: a.example\r\n\r\n",
])
def test_the_host_cut_from_the_head_is_the_parsed_one(head: bytes) -> None:
    request = Request("GET", "/", "1.1", head, b"", head)
    assert recorded_host(request) == request.host
