"""Stop conditions see saturation (issue 16, the lead's bench finding (c)): a latency condition judges
the response time from schedule, so a target that queues the excess on the captured keep-alive
connections trips it, and a target that stops answering trips it before the timeouts. End to end:
`pytest --replay` against a real uvicorn app with a CPU-bound endpoint, and against a server that
accepts and never answers."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from support import GOR_SEP, uvicorn

T0 = 1_700_000_000_000_000_000
CPU_MS = 4  # CPU per /work request: ~250 req/s on a free core, less on a loaded machine

APP = f'''
import time

served = 0
CPU_S = {CPU_MS / 1000}

async def app(scope, receive, send):
    global served
    if scope["type"] != "http":
        return
    if scope["path"] == "/served":  # how many /work requests it answered (not in the captures)
        body = str(served).encode()
        await send({{"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]}})
        await send({{"type": "http.response.body", "body": body}})
        return
    served += 1
    end = time.process_time() + CPU_S
    while time.process_time() < end:
        pass
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]}})
    await send({{"type": "http.response.body", "body": b"ok"}})
'''
FAST_APP = APP.replace(f"CPU_S = {CPU_MS / 1000}", "CPU_S = 0")


def keepalive_capture(path: Path, *, connections: int = 3, rate: int = 20, seconds: int = 3) -> Path:
    """`rate` GETs /work per second, evenly, over `connections` keep-alive connections (round robin:
    each connection's requests follow each other), each answered 5 ms later."""
    records = []
    for i in range(rate * seconds):
        ts = T0 + i * 1_000_000_000 // rate
        rid = f"{i % connections + 1:016x}{i:08x}"  # the first 16 hex digits name the connection
        records.append(f"1 {rid} {ts} -1\n".encode() + b"GET /work HTTP/1.1\r\nHost: app.example\r\n\r\n" + GOR_SEP)
        records.append(f"2 {rid} {ts + 5_000_000} -1\n".encode()
                       + b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok" + GOR_SEP)
    path.write_bytes(b"".join(records))
    return path


@pytest.fixture
def cpu_app(tmp_path: Path):
    (tmp_path / "cpu_app.py").write_text(APP)
    with uvicorn("cpu_app:app", app_dir=tmp_path) as url:
        yield url


@pytest.fixture
def fast_app(tmp_path: Path):
    (tmp_path / "fast_app.py").write_text(FAST_APP)
    with uvicorn("fast_app:app", app_dir=tmp_path) as url:
        yield url


def served(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url + "/served", timeout=10) as response:
        return int(response.read())


def replay(pytester: pytest.Pytester, url: str, *args: str):
    gor = keepalive_capture(pytester.path / "work.gor")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(gor), "--replay-target", url,
                                         "--replay-report", str(pytester.path / "evidence"), *args, timeout=300)


def evidence(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "evidence" / "replay-evidence.json").read_text())


def test_a_ramp_past_saturation_stops_although_the_service_latency_stays_low(pytester: pytest.Pytester,
                                                                            cpu_app: str) -> None:
    """Three captured connections: the app never serves more than three requests at a time, so its
    latency from send stays around 3 x 4 ms of CPU; past its capacity the excess queues on the connections
    (strict order). Judged from the send, p99>250ms never trips (the bench's finding); judged from the
    schedule, it trips in the ramp."""
    result = replay(pytester, cpu_app, "--replay-stages", "1x:2s, ramp 1x..30x:8s", "--replay-abort-on", "p99>250ms",
                    "--replay-abort-window", "1", "--replay-group", "endpoint")
    text = result.stdout.str()
    assert result.ret == 1, text
    match = re.search(r"STOPPED: held 1x for 2 s; at ramp 1x\.\.30x \(stage 2, offered ([\d.]+) req/s, "
                      r"([\d.]+) req/s achieved\) after [\d.]+ s: 'p99>250ms' tripped \(measured response time "
                      r"from schedule ([\d.]+) (ms|s) ", text)
    assert match, text
    offered, achieved = float(match[1]), float(match[2])
    assert offered > achieved  # past what the app could serve
    capacity = evidence(pytester)["capacity"]
    stop = capacity["stopped"]
    assert stop["stage"] == 2 and stop["condition"] == "p99>250ms"
    assert stop["measures"] == "response time from schedule"
    held, ramp = capacity["stages"]
    assert held["sent"] == held["planned"] and held["not_sent"] == 0
    assert ramp["not_sent"] > 0
    # what tripped was the last window's response time from schedule; the stage's own p99 covers the
    # whole stage (its calm start included), so it can sit on either side of 250 ms
    tripped_ms = float(match[3]) * (1000 if match[4] == "s" else 1)
    assert tripped_ms > 250, text
    # both figures shown per stage: the service's own latency stayed under the threshold, the queueing
    # behind the target shows in the figure from schedule only
    assert ramp["service_p99_ms"] < 250, ramp
    assert ramp["scheduled_p99_ms"] > 2 * ramp["service_p99_ms"], ramp
    assert f"p99 service {ramp['service_p99_ms']:g} ms / from schedule {ramp['scheduled_p99_ms']:g} ms" in text


def test_service_basis_keeps_judging_the_latency_from_send(pytester: pytest.Pytester, cpu_app: str) -> None:
    """'service p99>1s' is the old measure: a saturating ramp whose requests queue for seconds on their
    connections does not trip it (the queueing is not the service's latency)."""
    result = replay(pytester, cpu_app, "--replay-stages", "1x:1s, ramp 1x..30x:6s", "--replay-abort-on",
                    "service p99>1s", "--replay-abort-window", "1", "--replay-group", "endpoint")
    text = result.stdout.str()
    assert "STOPPED" not in text, text
    capacity = evidence(pytester)["capacity"]
    assert capacity["stopped"] is None and capacity["conditions"] == ["service p99>1s"]
    assert capacity["stages"][1]["scheduled_p99_ms"] > 1000 > capacity["stages"][1]["service_p99_ms"]


@pytest.fixture
def silent_server():
    """Accepts connections and reads them, never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    conns: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.setblocking(False)
            conns.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    done.set()
    thread.join(5)
    for conn in conns:
        conn.close()
    server.close()


def test_a_target_that_never_answers_trips_p99_before_the_timeouts(pytester: pytest.Pytester,
                                                                 silent_server: str) -> None:
    began = time.monotonic()
    result = replay(pytester, silent_server, "--replay-stages", "fixed 20/s:20s", "--replay-abort-on", "p99>1s",
                    "--replay-abort-window", "2", "--replay-timeout", "8", "--replay-group", "endpoint")
    wall = time.monotonic() - began
    text = result.stdout.str()
    assert result.ret == 1, text
    assert "'p99>1s' tripped" in text and "still waiting for the target" in text, text
    stop = evidence(pytester)["capacity"]["stopped"]
    # window 2 s + threshold 1 s, judged once a second: tripped by the end of second 4 at the latest
    assert stop["at_s"] <= 4, stop
    assert stop["in_flight_counted"] >= 5 and stop["requests_in_window"] == stop["in_flight_counted"]
    assert wall < 60, wall  # the in-flight requests time out (8 s) after the stop; nothing else waits


def test_the_live_baseline_gets_the_same_ramp_and_stops_with_the_target(pytester: pytest.Pytester, cpu_app: str,
                                                                        fast_app: str) -> None:
    """With --replay-baseline each request goes to the target and the baseline (and a noise probe) at the
    same deadline: the saturated target trips p99>250ms and neither side is sent anything more."""
    result = replay(pytester, cpu_app, "--replay-baseline", fast_app, "--replay-stages", "1x:2s, ramp 1x..30x:8s",
                    "--replay-abort-on", "p99>250ms", "--replay-abort-window", "1", "--replay-group", "endpoint")
    text = result.stdout.str()
    assert result.ret == 1, text
    assert "STOPPED: held 1x for 2 s; at ramp 1x..30x (stage 2" in text, text
    capacity = evidence(pytester)["capacity"]
    planned = sum(row["planned"] for row in capacity["stages"])
    sent = sum(row["sent"] for row in capacity["stages"])
    target, baseline = served(cpu_app), served(fast_app)
    assert target == sent < planned  # stopped: the target got what was sent, no more
    assert target <= baseline <= 2 * target  # the baseline (and its noise probe) got the same requests, no more
