"""Results a user can trust, end to end (issue 11, findings 6 and 7): compressed bodies, JUnit times,
throughput at --speed 0, in-process targets importable from the current directory, the worst
endpoints of a relative budget, write barriers, and the caveats of a relative budget's line.

The servers are real ones on 127.0.0.1, started here: a threaded http.server for canned answers and
uvicorn for a stateful ASGI app."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import uvicorn

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
MS = 1_000_000


# -- a capture, and a server of canned answers ---------------------------------------------------------
def http_response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def http_request(method: str, target: str, body: bytes = b"") -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: shop"]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def write_gor(path: Path, exchanges) -> Path:
    """exchanges: (connection number, request start ns, response start ns, request bytes, response bytes),
    timestamps relative to T0. The first 16 hex digits of an id name its TCP connection (GoReplay)."""
    records = []
    for n, (conn, start, answered, request, response) in enumerate(exchanges):
        rid = f"{conn + 1:016x}{n + 1:08x}"
        records.append((1, rid, T0 + start, request))
        records.append((2, rid, T0 + answered, response))
    path.write_bytes(b"".join(f"{kind} {rid} {ts} -1\n".encode() + payload + SEP
                              for kind, rid, ts, payload in records))
    return path


class Canned(BaseHTTPRequestHandler):
    """Answers each path with (delay s, headers, body) from the server's routes."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        delay, headers, body = self.server.routes[self.path.split("?", 1)[0]]
        time.sleep(delay)
        self.send_response(200)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 256  # a replay opens many connections at once
    daemon_threads = True


@contextlib.contextmanager
def canned(routes: dict):
    server = Server(("127.0.0.1", 0), Canned)
    server.routes = routes
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run(pytester: pytest.Pytester, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


JSON = ("Content-Type: application/json",)


# -- 6: brotli and zstd bodies are decoded ---------------------------------------------------------------
# {"id": 7, "name": "Espresso Beans 1kg", "tags": ["coffee", "beans"], "price": 2490} at two brotli
# qualities (different bytes, same content), and the same with "2kg"; the same with zstd, one frame
# without its content size (as a streaming compressor writes it). Literals, so that this test runs
# (and fails) where neither library is installed.
BR_SAME_11 = (b'\x1bR\x008\x14\xa1\xd2!~\xefM\xebu\xf3\x1b>)y\xa3\xb2L2\x10I\x8a\xe1\x8f\x02\x1bp\xc0\xbcio\x03'
              b'\xd8x\x1b8\x01\xe3\x8a\xb4\xa1\xe3\xcb\xfa\xbcv\x93>0\xca\xc4\xa9\xfa\xbd\x8c\xc7\xfaT\x9a\xfb4\xf0'
              b'\x89\xc9\xec\x10\x037\xd9%0\n\xdan(?')
BR_SAME_1 = b'\x0b)\x80{"id": 7, "name": "Espresso Beans 1kg", "tags": ["coffee", "beans"], "price": 2490}\x03'
BR_OTHER = (b'\x1bR\x00\x00\x04\xfe\xdb\xdc\xb4~\xde|\x83\x88 \xde(\xb4L\xd1`$\x11\x91\r\x8e\x91\x07\\\xf4K\xb1"'
            b'\x89\x12q\x80\xe3\xd0\x8e?Q\xd4\xfa\xb8\x0e\\\xd9\xc4hOG,3\xea\xbd\xaa\xbd\x8d\xa9x\x9f\x98\xd8"\xb8V>'
            b'\x07\x99\xbb\xc7l&\xea\x14\xae\x98J\xf8\x01')
ZSTD_SAME_19 = (b"(\xb5/\xfd Sm\x02\x00\xf2\x04\x11\x17\x90;\x07\xd7A\x07\x11\x9a\x96P\xb0\x19dl\x90w|;\xc4\xa4"
                b"\xc9\xed9\x11P\x0c\x82\xd3u9'\xde\x99\\\xb9\xf3\xaa\x8c\xc1u\xc4\xe9\xdb\xd4s\xe7\x1b\x13x\x9fR"
                b"\xc3pW\x9d\xb8\xc7\x9d\xae\x8dzw\x12N_\xdc\xa1\x01\x00=\x02\x05\x05")
ZSTD_SAME_1 = (b"(\xb5/\xfd\x00\x00m\x02\x002E\x12\x19\x90\xb79\x97C\x14D\x08i\t\tn\x037\xef\x95\x9ef}\x8d\xa3I"
               b"\xc6N\xe4\x89BA\x0e\xe3\xd5\xa4\xc6\xee\x13|U\xea\xe0\xbe\xab\x9e\xb3\xcc\x03\xc6/\xca\xc3}G\x05\xc3"
               b"\xabR\x17\xaf]ml\x017^\r\xa9\xeeK\x8c'\xa4#\x02\x00")
ZSTD_OTHER = (b'(\xb5/\xfd S}\x02\x00\xb2\x04\x11\x18\x80\xc5:\x13xT\xfbqK*O\x90%\xe9\xa5\x01\xdc#\r%9\x8a\x8c\x06'
              b'\x81\x80\x10\x90j\x11\xde\x07\xf9\xba\xd4Du\xad\xa7~8}Y6\xf79[\x90\xd7\xa5\x16~\xbb\x1a\xe1\x1aw\xba2'
              b'\xe9\xee38]i\x07\x04\x02\x00_\x85B\x0b&\x14')


def test_brotli_and_zstd_bodies_are_decoded_and_compared(pytester: pytest.Pytester) -> None:
    recorded = {"/br-same": ("br", BR_SAME_11), "/br-other": ("br", BR_SAME_11),
                "/zstd-same": ("zstd", ZSTD_SAME_19), "/zstd-other": ("zstd", ZSTD_SAME_19)}
    replayed = {"/br-same": BR_SAME_1, "/br-other": BR_OTHER, "/zstd-same": ZSTD_SAME_1, "/zstd-other": ZSTD_OTHER}
    capture = write_gor(pytester.path / "encoded.gor", [
        (i, i * MS, i * MS + 500_000, http_request("GET", path),
         http_response(body, *JSON, f"Content-Encoding: {coding}"))
        for i, (path, (coding, body)) in enumerate(recorded.items())])
    routes = {path: (0, [("Content-Type", "application/json"), ("Content-Encoding", recorded[path][0])], body)
              for path, body in replayed.items()}
    with canned(routes) as url:
        result = run(pytester, "--replay", str(capture), "--replay-target", url, "--speed", "0", "-rf")
    text = result.stdout.str()
    result.assert_outcomes(passed=2, failed=2)
    for path in ("/br-other", "/zstd-other"):
        block = text.split(f"GET {path} HTTP/1.1", 1)[1].split("____", 1)[0]
        assert 'body $.name: "Espresso Beans 1kg" -> "Espresso Beans 2kg"' in block, block
    assert "content-encoding" not in text.lower().replace("content-encoding: ", "")


# -- 6: JUnit times are each exchange's own; the replay's wall time is said once -------------------------
def test_junit_time_is_each_exchanges_own_and_wall_time_is_a_suite_property(pytester: pytest.Pytester) -> None:
    body = b'{"ok": true}'
    capture = write_gor(pytester.path / "spread.gor", [
        (i, i * 300 * MS, i * 300 * MS + MS, http_request("GET", f"/item/{i}"), http_response(body, *JSON))
        for i in range(5)])  # spread over 1.2 s, replayed at the recorded pace
    xml = pytester.path / "junit.xml"
    with canned({f"/item/{i}": (0, [("Content-Type", "application/json")], body) for i in range(5)}) as url:
        result = run(pytester, "--replay", str(capture), "--replay-target", url, f"--junitxml={xml}")
    result.assert_outcomes(passed=5)
    suite = ET.parse(xml).getroot().find("testsuite")
    properties = {p.get("name"): p.get("value") for p in suite.iter("property") if p.get("name", "").startswith(
        "replay_wall")}
    wall = float(properties["replay_wall_time_s"])
    assert 1.1 < wall < 10
    for case in suite.iter("testcase"):
        own = {p.get("name"): p.get("value") for p in case.iter("property")}
        time_s = float(case.get("time"))
        assert time_s < 0.25, (case.get("name"), time_s)  # before: the first item carried the whole replay
        assert time_s >= float(own["replayed_latency_ms"]) / 1000 - 0.001
    assert f"replay wall time {wall:.1f} s" in result.stdout.str()


# -- 6: at --speed 0, throughput instead of lateness ---------------------------------------------------
def test_speed_zero_reports_throughput_not_lateness(pytester: pytest.Pytester) -> None:
    body = b'{"ok": true}'
    capture = write_gor(pytester.path / "many.gor", [
        (i % 4, i * 10 * MS, i * 10 * MS + MS, http_request("GET", "/ok"), http_response(body, *JSON))
        for i in range(40)])
    with canned({"/ok": (0, [("Content-Type", "application/json")], body)}) as url:
        result = run(pytester, "--replay", str(capture), "--replay-target", url, "--speed", "0",
                     "--replay-report", "evidence")
        paced = run(pytester, "--replay", str(capture), "--replay-target", url, "--speed", "2")
    result.assert_outcomes(passed=40)
    text = result.stdout.str()
    assert "lateness (send" not in text and "late p99" not in text and "lateness p" not in text
    line = next(line for line in result.stdout.lines if line.startswith("throughput: "))
    assert "40 requests in " in line and " requests/s" in line
    data = json.loads((pytester.path / "evidence" / "replay-evidence.json").read_text())
    assert data["lateness"] is None
    assert data["throughput"]["requests"] == 40 and data["throughput"]["requests_per_s"] > 0
    assert "lateness (send time - deadline)" in paced.stdout.str()  # on a schedule, lateness means something


# -- 6: asgi:/wsgi: targets import from the current directory and the rootdir under `pytest` ----------
WSGI_APP = '''
import json

def app(environ, start_response):
    body = json.dumps({"ok": True}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''


def test_wsgi_target_imports_from_cwd_and_rootdir_under_the_pytest_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("pytest")
    assert script.exists()
    capture = write_gor(tmp_path / "ok.gor", [(0, 0, MS, http_request("GET", "/ok"),
                                               http_response(b'{"ok": true}', *JSON))])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "cwdapp.py").write_text(WSGI_APP)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "subapp.py").write_text(WSGI_APP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for cwd, module in ((tmp_path, "cwdapp"), (tmp_path / "sub", "subapp"), (tmp_path / "sub", "cwdapp")):
        done = subprocess.run([str(script), "-p", "no:cacheprovider", "--replay", str(capture), "--replay-target",
                               f"wsgi:{module}:app", "--speed", "0"], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, (cwd, module, done.stdout[-2000:] + done.stderr[-2000:])
        assert "1 passed" in done.stdout


# -- 6: the worst endpoints of a relative budget: by ratio, offenders only ----------------------------
def test_relative_budget_worst_list_is_offenders_by_ratio(pytester: pytest.Pytester) -> None:
    exchanges = []
    # /a: 4 requests recorded at 2 s, answered in 100 ms (0.05x: no offender, but the slowest in ms);
    # /b: 30 recorded at 1 ms, answered in 1 s (~1000x); /c: 66 recorded at 1 ms, answered in ~3 ms. The
    # margins hold on a loaded machine: 100 requests at once to a threaded server queue /c's answers by
    # up to ~350 ms there (CI measured /c at 342x when /b was answered in 150 ms), never 1 s.
    for i, (path, recorded_ms) in enumerate([("/a", 2000)] * 4 + [("/b", 1)] * 30 + [("/c", 1)] * 66):
        exchanges.append((i, i * MS, i * MS + recorded_ms * MS, http_request("GET", path),
                          http_response(b"{}", *JSON)))
    capture = write_gor(pytester.path / "mix.gor", exchanges)
    routes = {"/a": (0.1, [("Content-Type", "application/json")], b"{}"),
              "/b": (1.0, [("Content-Type", "application/json")], b"{}"),
              "/c": (0.003, [("Content-Type", "application/json")], b"{}")}
    with canned(routes) as url:
        result = run(pytester, "--replay", str(capture), "--replay-target", url, "--speed", "0",
                     "--replay-budget", "p95<1.2x", "--replay-concurrency", "100")
    line = next(line for line in result.stdout.lines if "p95<1.2x" in line and ("PASS" in line or "FAIL" in line))
    assert line.lstrip().startswith("FAIL"), line
    worst = line.split("worst: ", 1)[1]
    assert "GET /a" not in worst, line
    assert worst.index("GET /b") < worst.index("GET /c"), line


# -- 7: a relative budget's line says when its figures cannot be trusted -----------------------------
def test_relative_budget_line_names_closed_loop_capture_and_shared_cores(pytester: pytest.Pytester) -> None:
    exchanges = []
    at = 0
    for i in range(40):  # one connection, each request 20 µs after the previous response: a benchmark tool
        exchanges.append((1, at, at + 2 * MS, http_request("GET", "/ok"), http_response(b"{}", *JSON)))
        at += 2 * MS + 20_000
    capture = write_gor(pytester.path / "bench.gor", exchanges)
    with canned({"/ok": (0, [("Content-Type", "application/json")], b"{}")}) as url:
        result = run(pytester, "--replay", str(capture), "--replay-target", url, "--speed", "0",
                     "--replay-budget", "p95<50x", "--replay-budget", "p95<2s")
    relative = next(line for line in result.stdout.lines if "p95<50x:" in line)
    assert "closed-loop" in relative and "40 of 40 requests" in relative, relative
    assert "shares this machine's cores" in relative, relative
    absolute = next(line for line in result.stdout.lines if "p95<2s:" in line)
    assert "closed-loop" not in absolute


# -- 7: sent writes are ordering barriers ----------------------------------------------------------------
ITEMS_APP = '''
import asyncio, json
from urllib.parse import parse_qs

items = {"1": "old", "2": "old"}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    item = scope["path"].rsplit("/", 1)[1]
    delay = float(parse_qs(scope["query_string"].decode()).get("delay", ["0"])[0])
    await asyncio.sleep(delay)  # a slow PATCH applies late; a slow GET reads late
    if scope["method"] == "PATCH":
        items[item] = json.loads(body)["name"]
    data = json.dumps({"name": items[item]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
'''


def items_capture(path: Path) -> Path:
    """Four connections: a slow read of item 2, a PATCH of item 2, a slow PATCH of item 1, a read of
    item 1; each recorded after the previous one completed."""
    def answer(name: str) -> bytes:
        return http_response(json.dumps({"name": name}).encode(), *JSON)

    patch = json.dumps({"name": "new"}).encode()
    return write_gor(path, [
        (1, 0, MS, http_request("GET", "/items/2?delay=0.3"), answer("old")),
        (2, 2 * MS, 3 * MS, http_request("PATCH", "/items/2", patch), answer("new")),
        (3, 4 * MS, 5 * MS, http_request("PATCH", "/items/1?delay=0.3", patch), answer("new")),
        (4, 6 * MS, 7 * MS, http_request("GET", "/items/1"), answer("new")),
    ])


def test_writes_are_ordering_barriers_in_process(pytester: pytest.Pytester) -> None:
    capture = items_capture(pytester.path / "items.gor")
    pytester.makeconftest(ITEMS_APP + '''
import pytest

@pytest.fixture(scope="session")
def replay_target():
    return app
''')
    result = run(pytester, "--replay", str(capture), "--speed", "0", "-rf")
    result.assert_outcomes(passed=4)


def test_writes_are_ordering_barriers_against_uvicorn(pytester: pytest.Pytester) -> None:
    capture = items_capture(pytester.path / "items.gor")
    (pytester.path / "itemsapp.py").write_text(ITEMS_APP)
    with uvicorn("itemsapp:app", app_dir=pytester.path) as url:
        result = run(pytester, "--replay", str(capture), "--replay-target", url, "--replay-writes", "pass",
                     "--speed", "0", "-rf")
    result.assert_outcomes(passed=4)


def test_a_barrier_that_cannot_hold_across_workers_is_said(pytester: pytest.Pytester) -> None:
    capture = items_capture(pytester.path / "items.gor")
    pytester.makeconftest(ITEMS_APP + '''
import pytest

@pytest.fixture(scope="session")
def replay_target():
    return app
''')
    result = run(pytester, "--replay", str(capture), "--speed", "0", "-n", "2")
    assert "cannot hold across the 2 xdist workers" in result.stdout.str()
    sharded = run(pytester, "--replay", str(capture), "--speed", "0", "--replay-shard", "1/2")
    assert "cannot hold across shards" in sharded.stdout.str()
    alone = run(pytester, "--replay", str(capture), "--speed", "0")
    assert "cannot hold" not in alone.stdout.str()
