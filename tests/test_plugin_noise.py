"""Noise, failure groups and what the evidence says about diffs, end to end (pytester) against a
small service on 127.0.0.1 started here, replaying a capture recorded from that same service.

The service (`RowsService`, a threaded http.server) has a list endpoint whose `$.count` grows with
POSTs, fields that truly vary on every answer (a request id, a timestamp, a CSRF token in a one-line
HTML page) and regressions switched on per instance. Captures are recorded from a fresh instance
and written as .gor with timestamps in the order the requests were made (GETs and POSTs on
different connections, so only the timestamps say which came first)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import free_port, serving

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
STEP_NS = 10_000_000  # 10 ms between recorded requests
READS = "a" * 16  # connection of the GETs
WRITES = "b" * 16  # connection of the POSTs
PAGE_SIZE = 3


class RowsService:
    """The service: rows that POST /api/rows appends to, and `regression` (a set of names):
    "count" adds 100 to every list's count, "column" changes column 3 of every row, "secret" changes
    each row's api_key, "html" changes a price deep in the one-line /page."""

    def __init__(self, regression: tuple[str, ...] = ()) -> None:
        self.regression = set(regression)
        self.rows = [[i, f"row {i}", 2.5, i * 10] for i in range(1, 8)]
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                service.answer(self)

            def do_POST(self) -> None:
                service.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- answers -----------------------------------------------------------------------------
    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            handler.rfile.read(length)
        path, _, query = handler.path.partition("?")
        with self.lock:
            if handler.command == "POST" and path == "/api/rows":
                self.rows.append([len(self.rows) + 1, "new", 2.5, 0])
                return self.json(handler, {"id": len(self.rows), "count": len(self.rows)}, 201)
            if path == "/api/rows":
                page = int(query.partition("=")[2] or 1)
                start = (page - 1) * PAGE_SIZE
                count = len(self.rows) + 100 * ("count" in self.regression)
                return self.json(handler, {"count": count, "page": page, "rows": self.rows[start:start + PAGE_SIZE],
                                           "request_id": uuid.uuid4().hex})
            if path.startswith("/api/rows/"):
                row_id = int(path.rsplit("/", 1)[1])
                rows = [[row_id, f"row {row_id}", 2.5, row_id * 10 + ("column" in self.regression)],
                        [row_id + 1000, "twin", 2.5, row_id + ("column" in self.regression)]]
                key = f"sk_live_{row_id:04d}" + ("CHANGED" if "secret" in self.regression else "stable")
                return self.json(handler, {"id": row_id, "rows": rows, "api_key": key,
                                           "generated_at": time.time_ns()})
            if path == "/page":
                return self.html(handler)
        handler.send_response(404)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    @staticmethod
    def json(handler: BaseHTTPRequestHandler, body: dict, status: int = 200) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def html(self, handler: BaseHTTPRequestHandler) -> None:
        price = "21.00" if "html" in self.regression else "20.00"
        filler = "".join(f"<li>item {i}</li>" for i in range(300))  # one long line: the change is far in
        page = (f'<html><body><form><input name="csrf" value="{uuid.uuid4().hex}"></form><ul>{filler}</ul>'
                f'<p class="price">{price}</p></body></html>').encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html; charset=utf-8")
        handler.send_header("Content-Length", str(len(page)))
        handler.end_headers()
        handler.wfile.write(page)


@pytest.fixture
def service():
    """Starts RowsService instances (a fresh state each) and stops them at the end of the test."""
    started: list[RowsService] = []

    def start(*regression: str) -> RowsService:
        started.append(RowsService(regression))
        return started[-1]

    yield start
    for instance in started:
        instance.close()


def fetch(port: int, request: bytes) -> bytes:
    """One request on its own socket; the response's raw bytes (framed by Content-Length)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
        while len(body) < length:
            body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def record(port: int, path: Path, requests: list[tuple[str, str]]) -> Path:
    """Send (method, target) requests in order, GETs on one captured connection and POSTs on
    another, and write what was sent and answered as .gor with timestamps in that order."""
    records, positions = [], {READS: 0, WRITES: 0}
    for i, (method, target) in enumerate(requests):
        body = b"{}" if method == "POST" else b""
        request = (f"{method} {target} HTTP/1.1\r\nHost: rows.example\r\n"
                   + (f"Content-Length: {len(body)}\r\n" if body else "") + "\r\n").encode() + body
        response = fetch(port, request)
        connection = WRITES if method == "POST" else READS
        rid = connection + f"{positions[connection]:08x}"
        positions[connection] += 1
        ts = T0 + i * STEP_NS
        records.append(f"1 {rid} {ts} -1\n".encode() + request)
        records.append(f"2 {rid} {ts + STEP_NS // 2} -1\n".encode() + response)
    path.write_bytes(b"".join(r + SEP for r in records))
    return path


def replay(pytester: pytest.Pytester, capture: Path, url: str, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--replay-target", url,
                                         "--speed", "0", "-q", "-rf", *args, timeout=300)


# -- finding 2: noise is not learned from what writes in between explain ----------------------------------
def list_capture(port: int, path: Path) -> tuple[Path, int]:
    """Pages 1 and 2 read twice, then a POST adds a row; four times over. Returns (capture, GETs)."""
    requests: list[tuple[str, str]] = []
    for _ in range(4):
        requests += [("GET", "/api/rows?page=1"), ("GET", "/api/rows?page=2")] * 2
        requests.append(("POST", "/api/rows"))
    return record(port, path, requests), sum(method == "GET" for method, _ in requests)


def test_count_changed_by_writes_is_not_noise_and_its_regression_fails_every_read(pytester, service) -> None:
    capture, reads = list_capture(service().port, pytester.path / "rows.gor")
    result = replay(pytester, capture, service("count").url)
    text = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed") == reads, text[-3000:]
    failures = text.split("short test summary info")[0]  # under CI pytest repeats whole messages there
    assert failures.count("body $.count: ") == reads  # every read fails on the count, none hides it
    noise = text.split("noise (", 1)[1]
    assert "json:$.count" not in noise  # grew only across POSTs: state, not noise
    # the request id varies between identical GETs with no write between: still noise, and counted
    assert f"GET /api/rows: json:$.request_id hid {reads} differences" in noise
    assert "separated by a write" in noise


# -- finding 5: failures grouped by diff signature, in the terminal and the evidence ---------------------------
def rows_capture(port: int, path: Path, ids: range) -> Path:
    return record(port, path, [("GET", f"/api/rows/{i}") for i in ids] + [("GET", "/page"), ("GET", "/page")])


def _groups(evidence: dict) -> dict[str, dict]:
    return {group["signature"]: group for group in evidence["failures"]["groups"]}


def test_one_regression_across_many_items_is_one_group_under_xdist_and_after_a_shard_merge(
        pytester, service) -> None:
    ids = range(1, 41)
    capture = rows_capture(service().port, pytester.path / "rows.gor", ids)
    target = service("column", "secret").url
    result = replay(pytester, capture, target, "-n", "2", "--replay-report", str(pytester.path / "evidence"),
                    "--replay-ignore", "json:$.generated_at")
    text = result.stdout.str()
    assert result.parseoutcomes().get("failed") == 40, text[-3000:]
    assert "40 exchanges: GET /api/rows/{id} body $.rows[*][3] number changed" in text
    assert "40 exchanges: GET /api/rows/{id} body $.api_key string changed" in text
    evidence = json.loads((pytester.path / "evidence" / "replay-evidence.json").read_text())
    assert evidence["schema"] == "pytest-replay-evidence/2"
    groups = _groups(evidence)
    column = groups["GET /api/rows/{id} body $.rows[*][3] number changed"]
    assert column["exchanges"] == 40
    shown = column["examples"]
    assert 0 < len(shown) < 40 and column["omitted"] == 40 - len(shown)
    assert any("$.rows[0][3]: " in line for line in shown[0]["diff"])
    raw = (pytester.path / "evidence" / "replay-evidence.json").read_text()
    assert "sk_live_" not in raw and "REDACTED-" in raw  # the changed secret, masked as in the terminal
    assert "sk_live_" not in text
    masked = [line for line in shown[0]["diff"] if "$.api_key" in line][0]
    assert masked in text  # the same stand-ins as the terminal's
    # finding 6: what ignore rules masked is counted per rule
    assert evidence["diff"]["ignored"]["rule json:$.generated_at"] == 40

    reports = []
    for k in (1, 2):
        directory = pytester.path / f"shard{k}"
        shard = replay(pytester, capture, service("column", "secret").url, "--replay-shard", f"{k}/2",
                       "--replay-report", str(directory), "--replay-ignore", "json:$.generated_at")
        assert shard.ret in (0, 1)
        reports.append(directory / f"replay-evidence-shard-{k}-of-2.json")
    merged = subprocess.run([sys.executable, "-m", "pytest_replay", "merge", *map(str, reports), "--report",
                             str(pytester.path / "merged")], capture_output=True, text=True, timeout=60)
    assert merged.returncode in (0, 1), merged.stderr
    assert "40 exchanges: GET /api/rows/{id} body $.rows[*][3] number changed" in merged.stdout
    data = json.loads((pytester.path / "merged" / "replay-evidence.json").read_text())
    groups = _groups(data)
    assert groups["GET /api/rows/{id} body $.rows[*][3] number changed"]["exchanges"] == 40
    assert data["diff"]["ignored"]["rule json:$.generated_at"] == 40


# -- finding 6 and text noise: one-line HTML pages -----------------------------------------------------------
def test_html_token_noise_is_learned_and_a_change_deep_in_one_line_is_shown(pytester, service) -> None:
    capture = rows_capture(service().port, pytester.path / "site.gor", range(1, 3))
    result = replay(pytester, capture, service().url, "-k", "page", "--replay-ignore", "json:$.generated_at")
    text = result.stdout.str()
    assert result.parseoutcomes().get("passed") == 2, text[-3000:]  # the CSRF token is noise
    assert "GET /page: regex:" in text and "hid 2 differences" in text
    result = replay(pytester, capture, service("html").url, "-k", "page")
    text = result.stdout.str()
    assert result.parseoutcomes().get("failed") == 2, text[-3000:]
    assert "20.00" in text and "21.00" in text  # the window around the change, not the line's start


def test_learned_noise_exported_reviewed_and_loaded_instead_of_learning(pytester, tmp_path) -> None:
    # The capture's identical GETs differ in $.request_id: learned, exported as a rule; the reviewed
    # file then decides instead of learning (an emptied file: the field fails again).
    script = tmp_path / "server.py"
    script.write_text(NOISE_EXPORT_SERVER)
    port = free_port()
    records = []
    for n in range(4):
        body = ('{"request_id": "r%d", "count": 2}' % n).encode()
        request = b"GET /api/rows HTTP/1.1\r\nHost: shop\r\n\r\n"
        response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        rid = f"{n + 1:016x}{n + 1:08x}"
        ts = 1_700_000_000_000_000_000 + n * 10**9
        records += [f"1 {rid} {ts} -1\n".encode() + request + "\n🐵🙈🙉\n".encode(),
                    f"2 {rid} {ts + 10**6} -1\n".encode() + response + "\n🐵🙈🙉\n".encode()]
    (pytester.path / "rows.gor").write_bytes(b"".join(records))
    with serving([sys.executable, str(script), str(port)], port, "the test server") as url:
        args = ("-p", "no:cacheprovider", "--replay", "rows.gor", "--replay-target", url, "--speed", "0")
        learned = pytester.runpytest_subprocess(*args, "--replay-noise-export", "noise.txt")
        learned.assert_outcomes(passed=4)
        exported = (pytester.path / "noise.txt").read_text()
        assert "GET /api/rows: json:$.request_id" in exported.splitlines()
        reviewed = pytester.runpytest_subprocess(*args, "--replay-noise-from", "noise.txt")
        reviewed.assert_outcomes(passed=4)
        assert "noise learned from" not in reviewed.stdout.str()
        (pytester.path / "empty.txt").write_text("# reviewed: nothing is noise here\n")
        emptied = pytester.runpytest_subprocess(*args, "--replay-noise-from", "empty.txt")
        emptied.assert_outcomes(failed=4)
        (pytester.path / "bad.txt").write_text("json:$.ok\nnot a rule\n")
        bad = pytester.runpytest_subprocess(*args, "--replay-noise-from", "bad.txt")
        assert bad.ret == pytest.ExitCode.USAGE_ERROR
        bad.stderr.fnmatch_lines(["*--replay-noise-from bad.txt, line 2:*"])


NOISE_EXPORT_SERVER = '''
import itertools, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
counter = itertools.count(100)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"request_id": "r%d" % next(counter), "count": 2}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''
