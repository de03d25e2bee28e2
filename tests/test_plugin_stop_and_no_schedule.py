"""Stop conditions and latency figures of plain replays (no --replay-stages), end to end against real
servers on 127.0.0.1.

Found while measuring issue 13's --speed 0 runs:
- at --speed 0 (no schedule: every request due at t0) a request that waited its turn on its busy
  captured connection counted all of that wait as "response time from schedule": p99 of seconds
  against a healthy target, so `scheduled` budgets failed, service budgets carried a false caution,
  and the default stop conditions (which judge that figure, requests still queued at their age)
  stopped the replay;
- a stop condition that ended a replay without stages was reported nowhere: "(INTERRUPTED)", every
  item passed, exit status 0, though the option's help says the run then fails."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from support import free_port, serving
from test_stream import SERVER, capture


@pytest.fixture(scope="module")
def fast_server() -> str:
    port = free_port()
    with serving([sys.executable, "-c", SERVER, str(port)], port, "keep-alive server") as url:
        yield url


@pytest.fixture(scope="module")
def slow_server() -> str:
    port = free_port()
    with serving([sys.executable, "-c", SERVER, str(port), "0.4"], port, "slow server") as url:
        yield url


def run(pytester: pytest.Pytester, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-rfE", "--replay-report",
                                         str(pytester.path / "report"), *args, timeout=300)


def evidence(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "report" / "replay-evidence.json").read_text())


@pytest.mark.parametrize("stream", ["auto", "off"])
def test_at_speed_0_the_response_time_from_schedule_is_the_latency_and_nothing_is_late(
        pytester: pytest.Pytester, fast_server: str, stream: str) -> None:
    """20,000 requests on 2 keep-alive connections, all due at once: the replay takes seconds, each
    request waiting its turn. Neither the budgets nor the stop condition may count that wait."""
    gor = capture(pytester.path / "dense.gor", 20_000, 2)
    result = run(pytester, "--replay", str(gor), "--replay-target", fast_server, "--speed", "0",
                 "--replay-group", "connection", "--replay-stream", stream,
                 "--replay-budget", "scheduled p99<150ms", "--replay-budget", "p99<150ms",
                 "--replay-abort-on", "p99>150ms", "--replay-abort-window", "1")
    text = result.stdout.str()
    assert result.ret == 0, text[-3000:]
    result.assert_outcomes(passed=2 + 2)  # the two connections, the two budgets
    assert "replayed: 20000 of 20000 requests" in text and "STOPPED" not in text and "INTERRUPTED" not in text
    assert "CAUTION" not in text and "response time from schedule (" not in text
    data = evidence(pytester)
    totals = data["totals"]
    assert totals["scheduled_ms"] == totals["replayed_ms"], totals
    assert data["lateness"] is None and totals["lateness_ms"] is None
    overall = data["aggregate"]["overall"]
    assert overall["lateness"]["count"] == 20_000 and overall["lateness"]["max_us"] == 0  # nothing to be late for
    assert not overall.get("late_causes")


@pytest.mark.parametrize("stream", ["auto", "off"])
def test_a_stop_condition_that_ends_a_plain_replay_fails_the_run_and_says_where(
        pytester: pytest.Pytester, slow_server: str, stream: str) -> None:
    """A target answering in 0.4 s, a condition on the service latency over 100 ms: the replay stops
    within a couple of seconds, the run fails with a `replay-stop::` entry naming the condition, what
    it measured and how much was sent, and the evidence's notes say it."""
    gor = capture(pytester.path / "slow.gor", 400, 20)
    result = run(pytester, "--replay", str(gor), "--replay-target", slow_server, "--speed", "1",
                 "--replay-group", "connection", "--replay-stream", stream, "--replay-concurrency", "100",
                 "--replay-abort-on", "service p99>100ms", "--replay-abort-window", "1")
    text = result.stdout.str()
    assert result.ret == 1, text[-3000:]
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == 1, outcomes
    assert "FAILED replay-stop::service p99>100ms - the replay was stopped" in text
    stopped = re.search(r"\nthe replay was stopped: 'service p99>100ms' tripped "
                        r"after \d+(\.\d+)? s \(measured service latency \(from send\) [\d.]+ ms over the last 1 s, \d+ "
                        r"requests", text)
    assert stopped, text[-3000:]
    sent = re.search(r"replayed: (\d+) of 400 requests .*\(STOPPED by --replay-abort-on\)", text)
    assert sent and 0 < int(sent[1]) < 400, text[-3000:]
    assert f"{int(sent[1]):,} of 400 planned requests were sent" in text
    data = evidence(pytester)
    assert data["run"]["interrupted"] is False  # stopped by a condition, as asked: not interrupted
    assert any(n.startswith("replay stopped by --replay-abort-on: 'service p99>100ms' tripped") for n in data["notes"])
