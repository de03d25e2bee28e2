"""Clock and id noise without a baseline (issue 12.3): one-off responses that carry the time they were
made, or a generated UUID, pass against an unchanged service; nothing else is hidden."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import pytest

from pytest_replay.verdicts.clock import CLOCK_REASON, ID_REASON, ClockNoise, instant_ns

SEP = "\n🐵🙈🙉\n".encode()
HOUR_NS = 3600 * 10**9


def test_instants_in_every_form() -> None:
    at = instant_ns("2026-12-06T08:00:00Z")
    assert at == instant_ns("2026-12-06T09:00:00+01:00") == instant_ns("Sun, 06 Dec 2026 08:00:00 GMT")
    assert at == instant_ns(at // 10**9) == instant_ns(at // 10**6) == instant_ns("2026-12-06 08:00:00")
    for not_a_time in ("12", "2026", 42, True, None, "2026-13-45T99:99", "v1.2.3", 3.5, [], "a" * 80):
        assert instant_ns(not_a_time) is None, not_a_time


def test_a_time_of_the_capture_replaced_by_a_time_of_the_replay_is_noise_and_nothing_else() -> None:
    now = time.time_ns()
    clock = ClockNoise((now - 2 * HOUR_NS, now - HOUR_NS), now - 10**9, lambda: now)
    recorded, replayed = now - 90 * 60 * 10**9, now
    iso = lambda ns: datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat()  # noqa: E731
    assert clock.reason(iso(recorded), iso(replayed)) == CLOCK_REASON
    assert clock.reason(recorded // 10**6, replayed // 10**6) == CLOCK_REASON  # epoch milliseconds
    assert clock.reason(iso(recorded - 24 * HOUR_NS), iso(replayed)) is None  # not a time of the capture
    assert clock.reason(iso(recorded), iso(replayed + 24 * HOUR_NS)) is None  # not a time of the replay
    assert clock.reason(iso(recorded), "soon") is None
    assert clock.reason(str(uuid.uuid4()), str(uuid.uuid4())) == ID_REASON
    assert clock.reason(str(uuid.uuid4()), "42") is None


APP = '''
import json, os, time, uuid
from datetime import datetime, timezone

REGRESSION = os.environ.get("CLOCK_REGRESSION", "")

async def app(scope, receive, send):
    assert scope["type"] == "http"
    body = {"generated_at": datetime.now(timezone.utc).isoformat(), "request_id": str(uuid.uuid4()),
            "epoch_ms": int(time.time() * 1000), "path": scope["path"], "total": 3}
    if REGRESSION == "total":
        body["total"] = 4
    if REGRESSION == "type":
        body["generated_at"] = int(time.time())  # a string turned into a number: never noise
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
'''


def _capture(path, paths: list[str]) -> None:
    """Each path requested once, an hour ago: its recorded body holds the time of the recording."""
    start = time.time_ns() - HOUR_NS
    records = []
    for n, target in enumerate(paths):
        ts = start + n * 10**9
        body = json.dumps({"generated_at": datetime.fromtimestamp(ts / 1e9, timezone.utc).isoformat(),
                           "request_id": str(uuid.uuid4()), "epoch_ms": ts // 10**6, "path": target,
                           "total": 3}).encode()
        request = f"GET {target} HTTP/1.1\r\nHost: shop\r\n\r\n".encode()
        response = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    .encode() + body)
        rid = f"{n + 1:016x}{n + 1:08x}"
        records += [f"1 {rid} {ts} -1\n".encode() + request + SEP,
                    f"2 {rid} {ts + 2_000_000} -1\n".encode() + response + SEP]
    path.write_bytes(b"".join(records))


@pytest.fixture
def replay(pytester: pytest.Pytester, monkeypatch):
    pytester.makepyfile(clockapp=APP)
    _capture(pytester.path / "once.gor", ["/report/daily", "/missing/x", "/api/status"])

    def run(*args: str, regression: str = "") -> pytest.RunResult:
        monkeypatch.setenv("CLOCK_REGRESSION", regression)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", "once.gor", "--replay-target",
                                             "asgi:clockapp:app", "--speed", "0", "-rf", *args)
    return run


def test_one_off_responses_with_times_and_ids_pass_against_an_unchanged_service(replay) -> None:
    result = replay()
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["clock noise (a time of the capture replaced by a time of the replay): 6 differences*",
                                 "id noise (a generated UUID on both sides): 3 differences*"])
    strict = replay("--replay-noise", "off")
    strict.assert_outcomes(failed=3)
    strict.stdout.fnmatch_lines(["*$.generated_at*", "*$.request_id*", "*$.epoch_ms*"])


def test_clock_and_id_noise_hide_no_real_change(replay) -> None:
    changed = replay(regression="total")
    changed.assert_outcomes(failed=3)
    changed.stdout.fnmatch_lines(["*$.total: 3 -> 4*"])
    retyped = replay(regression="type")
    retyped.assert_outcomes(failed=3)
    retyped.stdout.fnmatch_lines(["*$.generated_at*"])
