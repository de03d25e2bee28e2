"""Lateness that explains itself (issue 13.4), end to end against a real uvicorn app with a slow
endpoint: a request due while its captured connection waits for a slow response is late, and the
summary, the evidence and the HTML report say the connection caused it; --replay-connections spill
sends it on time on an extra connection, counted, and closed at the end."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from support import uvicorn

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
MS = 1_000_000

APP = r'''
import asyncio

peers = {}  # path -> client ports seen


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/peers":
        body = repr({k: sorted(v) for k, v in peers.items()}).encode()
    else:
        peers.setdefault(path, set()).add(scope["client"][1])
        if path == "/slow":
            await asyncio.sleep(0.4)
        body = b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


def record(conn: int, seq: int, at_ms: int, path: str) -> bytes:
    rid = f"{conn:016x}{seq:08x}"  # the first 16 hex digits name the captured connection
    ts = T0 + at_ms * MS
    return (f"1 {rid} {ts} -1\n".encode() + f"GET {path} HTTP/1.1\r\nHost: shop.example.test\r\n\r\n".encode()
            + SEP + f"2 {rid} {ts + MS} -1\n".encode()
            + b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok" + SEP)


def capture(path: Path) -> Path:
    """Connection 1: /slow at 0, then /health at 100 and 150 ms, due while /slow (400 ms) is in
    flight. Connection 2: /ping at 0 and 50 ms, never held up."""
    path.write_bytes(b"".join([record(1, 1, 0, "/slow"), record(1, 2, 100, "/health"), record(1, 3, 150, "/health"),
                               record(2, 1, 0, "/ping"), record(2, 2, 50, "/ping")]))
    return path


@pytest.fixture
def app(tmp_path):
    (tmp_path / "slow_app.py").write_text(APP)
    with uvicorn("slow_app:app", app_dir=tmp_path) as url:
        yield url


def replay(pytester: pytest.Pytester, url: str, *args: str):
    gor = capture(pytester.path / "slow.gor")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--replay", str(gor), "--replay-target", url, "--replay-group", "connection",
        "--replay-report", str(pytester.path / "evidence"), "--replay-html", str(pytester.path / "report.html"),
        *args, timeout=120)
    evidence = json.loads(sorted((pytester.path / "evidence").glob("*.json"))[-1].read_text())
    return result, evidence


def peers(url: str) -> dict:
    with urllib.request.urlopen(url + "/peers", timeout=5) as response:
        return eval(response.read().decode())  # noqa: S307 - a dict literal written by the test's own app


def endpoint(evidence: dict, name: str) -> dict:
    return next(row for row in evidence["endpoints"] if row["endpoint"] == name)


def test_strict_attributes_the_lateness_to_the_busy_connection(pytester: pytest.Pytester, app: str) -> None:
    result, evidence = replay(pytester, app)
    text = result.stdout.str()
    assert result.ret == 0, text
    health = endpoint(evidence, "GET /health")
    assert health["lateness_ms"]["p99"] >= 150, health  # due at 100/150 ms, sent after /slow's 400 ms
    causes = health["lateness_causes"]
    assert causes["connection"]["requests"] == 2 and causes["connection"]["share_pct"] >= 95, causes
    assert causes["connection"]["max_ms"] >= 250, causes
    assert "connection" not in (endpoint(evidence, "GET /ping")["lateness_causes"] or {})
    assert evidence["lateness"]["causes"]["connection"]["requests"] == 2
    assert evidence["lateness"]["spilled"] == 0
    assert "lateness by cause: connection (waiting for the connection's previous response): 2 requests" in text
    assert "GET /health (late p99" in text
    html = (pytester.path / "report.html").read_text()
    assert 'id="lateness-by-cause"' in html and "connection (" in html
    seen = peers(app)
    assert len(seen["/health"]) == 1 and seen["/health"] == seen["/slow"]  # captured order, one connection


def test_spill_sends_on_time_on_an_extra_connection(pytester: pytest.Pytester, app: str) -> None:
    result, evidence = replay(pytester, app, "--replay-connections", "spill")
    text = result.stdout.str()
    assert result.ret == 0, text
    health = endpoint(evidence, "GET /health")
    assert health["lateness_ms"]["p99"] < 50, health
    assert "connection" not in (health["lateness_causes"] or {}), health
    assert health["spilled"] == 2 and evidence["lateness"]["spilled"] == 2
    assert "2 requests went out on 1 extra connections" in text, text  # the second reused the idle extra one
    assert "--replay-connections spill: 2 requests were sent on an extra connection" in text
    seen = peers(app)
    assert len(seen["/health"]) == 1 and seen["/health"] != seen["/slow"]


def test_connections_mode_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--replay", "x.gor", "--replay-connections", "loose")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--replay-connections: expected one of strict, spill, got 'loose'" in result.stderr.str()


def test_header_names_the_event_loop_and_the_connections_mode(pytester: pytest.Pytester) -> None:
    gor = capture(pytester.path / "slow.gor")
    base = ("-p", "no:cacheprovider", "--collect-only", "--replay", str(gor), "--replay-target", "http://127.0.0.1:9")
    uvloop = pytest.importorskip("uvloop", reason="the [fast] extra is not installed")
    auto = pytester.runpytest_subprocess(*base, "--replay-connections", "spill").stdout.str()
    assert f"event loop uvloop {uvloop.__version__} (network targets)" in auto and "connections spill" in auto
    plain = pytester.runpytest_subprocess(*base, "--replay-event-loop", "asyncio").stdout.str()
    assert "; event loop asyncio" in plain and "connections spill" not in plain


def test_strict_on_asyncio_loop_same_attribution(pytester: pytest.Pytester, app: str) -> None:
    result, evidence = replay(pytester, app, "--replay-event-loop", "asyncio")
    assert result.ret == 0, result.stdout.str()
    assert "; event loop asyncio" in result.stdout.str()
    assert endpoint(evidence, "GET /health")["lateness_causes"]["connection"]["requests"] == 2
