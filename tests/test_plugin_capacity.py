"""Capacity runs end to end: stages against a real uvicorn app with a CPU-bound endpoint, stop
conditions tripping at a known stage, a target that dies mid-ramp, the summary and the evidence."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import DEMO, interrupt_after_collection, pytest_to_interrupt

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000

APP = r'''
import os, time

served = 0
DIE_AFTER = int(os.environ.get("DIE_AFTER", "0"))

async def app(scope, receive, send):
    global served
    if scope["type"] != "http":
        return
    if scope["path"] == "/metrics":
        body = ("# HELP process_cpu_seconds_total CPU\n# TYPE process_cpu_seconds_total counter\n"
                f"process_cpu_seconds_total {time.process_time()}\n"
                f'app_requests_total{{path="/work"}} {served}\n').encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] == "/work":
        served += 1
        if DIE_AFTER and served > DIE_AFTER:
            os._exit(1)  # the target dies mid-ramp
        end = time.process_time() + 0.020  # 20 ms of CPU: at most ~50 requests/s
        while time.process_time() < end:
            pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
'''


def capture(path: Path, n: int = 40, gap_ms: int = 50) -> Path:
    records = []
    for i in range(n):
        ts = T0 + i * gap_ms * 1_000_000
        rid = f"{i + 1:016x}{0:08x}"  # the first 16 hex digits name the connection: one each
        records.append(f"1 {rid} {ts} -1\n".encode()
                       + b"GET /work HTTP/1.1\r\nHost: shop.example.test\r\n\r\n" + SEP)
        records.append(f"2 {rid} {ts + 2_000_000} -1\n".encode()
                       + b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok" + SEP)
    path.write_bytes(b"".join(records))
    return path


@pytest.fixture
def serve(tmp_path):
    procs = []

    def start(**env) -> str:
        (tmp_path / "capacity_app.py").write_text(APP)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "capacity_app:app", "--app-dir", str(tmp_path),
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                env={**os.environ, **{k: str(v) for k, v in env.items()}})
        procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                start.pid = proc.pid
                return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        pytest.fail("uvicorn did not start")

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def run(pytester: pytest.Pytester, url: str, *args: str):
    gor = capture(pytester.path / "work.gor")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(gor), "--replay-target", url,
                                         "--replay-report", str(pytester.path / "evidence"), *args, timeout=300)


def evidence(pytester: pytest.Pytester) -> dict:
    files = sorted((pytester.path / "evidence").glob("*.json"))
    return json.loads(files[-1].read_text())


def test_ramp_stops_at_the_stage_the_target_cannot_hold(pytester: pytest.Pytester, serve) -> None:
    url = serve()
    result = run(pytester, url, "--replay-stages", "fixed 4/s:3s, fixed 8/s:3s, fixed 300/s:4s",
                 "--replay-abort-on", "p99>500ms", "--replay-abort-window", "2",
                 "--replay-environment", "staging-eu", "--replay-owner", "team-shop",
                 "--replay-link", "dashboard=https://grafana.example/d/shop")
    text = result.stdout.str()
    assert result.ret == 1, text
    assert "capacity run: 3 stage(s)" in text
    assert "STOPPED: held fixed 8/s for 3 s; at fixed 300/s (stage 3" in text, text
    assert "'p99>500ms' tripped" in text
    assert "replay-stop::p99>500ms" in text
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 40  # each item judges its exchange's first pass
    assert "(STOPPED by --replay-abort-on)" in text
    data = evidence(pytester)
    capacity = data["capacity"]
    assert capacity["stopped"]["stage"] == 3 and capacity["stopped"]["condition"] == "p99>500ms"
    rows = capacity["stages"]
    assert [r["planned"] for r in rows] == [12, 24, 1200]
    assert rows[0]["sent"] == 12 and rows[1]["sent"] == 24
    assert 0 < rows[2]["sent"] < 1200 and rows[2]["not_sent"] == 1200 - rows[2]["sent"]
    assert capacity["planned_stages"] == ["fixed 4/s:3s", "fixed 8/s:3s", "fixed 300/s:4s"]
    assert data["run"]["environment"] == "staging-eu" and data["run"]["owner"] == "team-shop"
    assert data["run"]["links"] == {"dashboard": "https://grafana.example/d/shop"}


def test_target_killed_mid_ramp_stops_at_the_first_window_with_errors(pytester: pytest.Pytester, serve) -> None:
    url = serve(DIE_AFTER=45)  # 30 requests in stage 1, the 46th (15 into stage 2) kills it
    result = run(pytester, url, "--replay-stages", "fixed 10/s:3s, fixed 20/s:6s", "--replay-abort-on", "errors>10%",
                 "--replay-abort-window", "1", "--replay-timeout", "2", "--replay-target-pid", str(serve.pid),
                 "--replay-metrics", url + "/metrics", "--replay-metric", "app_requests_total")
    text = result.stdout.str()
    assert result.ret == 1, text
    assert "STOPPED: held fixed 10/s for 3 s; at fixed 20/s (stage 2" in text, text
    assert "'errors>10%' tripped" in text
    capacity = evidence(pytester)["capacity"]
    stop = capacity["stopped"]
    assert stop["stage"] == 2 and stop["into_stage_s"] <= 3  # the first whole second after the death
    assert capacity["stages"][1]["not_sent"] > 40
    saturation = capacity["saturation"]
    first = saturation["stages"][0]
    assert first["samples"] >= 2 and "replayer_cpu" in first and "target_rss_bytes" in first
    assert "metrics_cpu" in first and first["app_requests_total"]["max"] >= 1
    sources = {f["source"] for f in saturation["failures"]}  # the dead target: reported, never fatal
    assert url + "/metrics" in sources  # (/proc/PID stays readable: the dead server is our unreaped child)
    assert "stage 1 saturation: replayer CPU" in text and "sampling " in text
    outcomes = result.parseoutcomes()
    assert outcomes.get("skipped", 0) == 0  # every item's first pass was sent (stage 1 + the start of 2)


@pytest.mark.parametrize("args, message", [
    (("--replay-stages", "2x:10s", "--speed", "2"), "excludes --speed"),
    (("--replay-stages", "2x:10s", "--rate", "5"), "excludes --rate"),
    (("--replay-stages", "2x:10s", "--replay-duration", "1m"), "excludes --replay-duration"),
    (("--replay-stages", "2x"), "accepted forms"),
    (("--replay-abort-on", "p99 > soon"), "accepted forms"),
    (("--replay-link", "nourl"), "NAME=URL"),
])
def test_usage_errors(pytester: pytest.Pytester, args, message) -> None:
    gor = capture(pytester.path / "work.gor")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(gor), "--replay-target",
                                           "http://127.0.0.1:9", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_loop_replays_the_capture_again_in_process(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('''
import pytest

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

@pytest.fixture(scope="session")
def replay_target():
    return app
''')
    gor = capture(pytester.path / "work.gor", n=10, gap_ms=5)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(gor), "--replay-loop", "3",
                                           "--speed", "4", "--replay-report", str(pytester.path / "evidence"))
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=10)
    data = evidence(pytester)
    assert data["capacity"]["stages"][0]["sent"] == 30 and data["capacity"]["loops"] == 3
    assert "the capture was looped (3 passes begun)" in result.stdout.str()


def test_stages_with_two_xdist_workers(pytester: pytest.Pytester, serve) -> None:
    """Each worker computes the same stage plan from the whole capture and sends its connections'
    part of it; the controller sums the stages."""
    url = serve()
    result = run(pytester, url, "-n", "2", "--replay-stages", "fixed 5/s:2s, ramp 5/s..10/s:2s")
    text = result.stdout.str()
    assert result.ret == 0, text
    capacity = evidence(pytester)["capacity"]
    assert [r["planned"] for r in capacity["stages"]] == [10, 15]
    assert [r["sent"] for r in capacity["stages"]] == [10, 15]
    assert "stage 2: ramp 5/s..10/s" in text
    assert result.parseoutcomes() == {"passed": 25, "skipped": 15}  # the stages end before 15 of the capture's turns


def test_prometheus_text_parsing():
    from pytest_replay.session.saturation import parse_prometheus

    text = """# HELP x y
process_open_fds 12
http_requests_total{code="200"} 5
http_requests_total{code="500"} 2 1700000000000
process_resident_memory_bytes 1.5e+07
bad_metric NaN
"""
    assert parse_prometheus(text, ["process_open_fds", "http_requests_total", "process_resident_memory_bytes",
                                   "bad_metric"]) == {"process_open_fds": 12.0, "http_requests_total": 7.0,
                                                      "process_resident_memory_bytes": 1.5e7}


def test_ctrl_c_mid_ramp_gives_partial_evidence_with_the_stage_reached(tmp_path: Path) -> None:
    report = tmp_path / "evidence"
    proc = pytest_to_interrupt(["--replay", str(DEMO), "--replay-target", "demo", "--replay-stages",
                                "1x:2s, ramp 1x..3x:60s", "--replay-report", str(report)], tmp_path)
    out, _ = interrupt_after_collection(proc, 4, timeout=30)  # 2 s of stage 1, then stage 2 runs
    assert proc.returncode == 2, out
    assert "reached stage 2 (ramp 1x..3x)" in out, out
    capacity = json.loads((report / "replay-evidence.json").read_text())["capacity"]
    assert capacity["reached"]["stage"] == 2 and capacity["stages"][0]["sent"] == capacity["stages"][0]["planned"]
    assert 0 < capacity["stages"][1]["sent"] < capacity["stages"][1]["planned"]
