"""`python -m pytest_replay record`: the recording reverse proxy, run as a subprocess in front of real
servers (the demo app under uvicorn, a stdlib server with faults), driven by httpx and raw sockets;
the capture it writes is read back with our reader and replayed with `pytest --replay`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from pytest_replay.capture import Capture
from pytest_replay.capture.gor import SEPARATOR
from pytest_replay.demo.app import session_for, token_for

from support import free_port, pythonpath_env, require, uvicorn, wait_listening

API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"  # planted secrets: never in a redacted capture
PASSWORD = "alice-pw"
HEADER_KEY = "k3y-9f8e7d6c5b4a39281706f5e4d3c2b1a0"


class Recording:
    """The recorder subprocess: its URL while it runs; its output, exit status once stopped."""

    def __init__(self, proc: subprocess.Popen, url: str, path: Path) -> None:
        self.proc, self.url, self.path = proc, url, path
        self.stdout = self.stderr = ""
        self.returncode: int | None = None

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.returncode is not None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.stdout, self.stderr = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, self.stderr = self.proc.communicate()
            pytest.fail(f"the recorder did not stop on signal {sig}: {self.stderr}")
        self.returncode = self.proc.returncode


def _recorder(upstream: str, out: Path, *args: str, port: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pytest_replay", "record", "--listen",
                             f"127.0.0.1:{port}", "--upstream", upstream, "-o", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=pythonpath_env())


@contextlib.contextmanager
def recording(upstream: str, out: Path, *args: str) -> Iterator[Recording]:
    port = free_port()
    proc = _recorder(upstream, out, *args, port=port)
    rec = Recording(proc, f"http://127.0.0.1:{port}", out)
    try:
        wait_listening(port, proc, "the recorder")
        yield rec
    finally:
        rec.stop()


def read_back(path: Path):
    capture = Capture([str(path)])
    exchanges = list(capture)
    return exchanges, capture.stats


# -- a stdlib upstream with faults ----------------------------------------------------------------------
class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _json(self, status: int, answer: dict) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/slow":
            self.server.slow_started.set()
            time.sleep(3)
            self._json(200, {"slow": True})
        elif self.path == "/cut":  # the upstream goes away in the middle of its response
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            self.wfile.flush()
            self.close_connection = True
        elif self.path.startswith("/big"):
            size = int(self.path.split("=", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"x" * (1 << 20)
            while size:
                n = min(size, len(block))
                self.wfile.write(block[:n])
                size -= n
        else:
            self._json(200, {"path": self.path, "auth": bool(self.headers.get("Authorization"))})

    def do_POST(self) -> None:  # noqa: N802
        digest, count = hashlib.sha256(), 0
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    data = self.rfile.read(min(left, 1 << 16))
                    digest.update(data)
                    left -= len(data)
                    count += len(data)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                data = self.rfile.read(min(left, 1 << 16))
                if not data:
                    return
                digest.update(data)
                left -= len(data)
                count += len(data)
        self._json(200, {"bytes": count, "sha256": digest.hexdigest()})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    srv.daemon_threads = True
    srv.slow_started = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _raw(url: str, data: bytes, *, read_until_close: bool = True, close_after_send: bool = False) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        if close_after_send:
            return b""
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


# -- end to end: record the demo app, replay the capture against it ------------------------------------
def _drive_demo(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        login = client.post("/api/login", json={"username": "alice", "password": PASSWORD})
        assert login.status_code == 200 and login.json()["token"] == token_for("alice")
        client.cookies.clear()  # credentials go in explicitly below
        bearer = {"Authorization": f"Bearer {token_for('alice')}", "X-Api-Key": HEADER_KEY}
        assert client.get("/health").status_code == 200
        assert client.get(f"/api/products?limit=3&api_key={API_KEY}").status_code == 200
        assert client.get("/api/products/2").status_code == 200
        assert client.get("/api/products/999").status_code == 404
        stream = client.get("/api/products/stream")
        assert stream.status_code == 200 and stream.headers["transfer-encoding"] == "chunked"
        assert client.get("/api/cart", headers=bearer).status_code == 200
        assert client.get("/api/users/1").status_code == 200


def test_a_recording_of_the_demo_replays_and_passes_with_secrets_redacted(pytester: pytest.Pytester,
                                                                             tmp_path: Path) -> None:
    capture = tmp_path / "demo.gor"
    with uvicorn("pytest_replay.demo.app:app", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as app:
        with recording(app, capture) as rec:
            _drive_demo(rec.url)
        assert rec.returncode == 0, rec.stderr
        assert "recorded" in rec.stdout and "8 exchanges (0 without a response)" in rec.stdout, rec.stdout
        assert "errors: none" in rec.stdout
        assert "redactions:" in rec.stdout and " header" in rec.stdout and " json" in rec.stdout, rec.stdout

        data = capture.read_bytes()
        for secret in (PASSWORD, token_for("alice"), session_for("alice"), API_KEY, HEADER_KEY):
            assert secret.encode() not in data, f"{secret!r} is in the capture"
        assert b"REDACTED-" in data
        assert data.endswith(SEPARATOR)

        exchanges, stats = read_back(capture)
        assert len(exchanges) == 8 and all(e.complete for e in exchanges)
        assert not stats.warnings
        assert len({e.connection for e in exchanges}) == 1  # keep-alive: one connection, as GoReplay ids say
        assert all(e.recorded_latency_ns > 0 for e in exchanges)
        assert [e.request.target.split("?")[0] for e in exchanges][:3] == ["/api/login", "/health", "/api/products"]
        stream = next(e for e in exchanges if e.request.target == "/api/products/stream")
        assert stream.response.header("transfer-encoding") is None and stream.response.body.count(b"\n") >= 3

        # the replay: credentials come from --replay-set-header, as the README says
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--replay", str(capture), "--replay-target", app, "--speed", "0",
            "--replay-timeout", "10", "--replay-set-header", f"Authorization: Bearer {token_for('alice')}",
            "-q", timeout=180)
        result.assert_outcomes(passed=7, skipped=1)  # the login, a write: answered from the recording
        # without them the authenticated request fails: the capture holds no usable credential
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--replay", str(capture), "--replay-target", app, "--speed", "0",
            "--replay-timeout", "10", "-q", timeout=180)
        result.assert_outcomes(passed=6, failed=1, skipped=1)


def test_keep_secrets_keeps_them_and_warns(tmp_path: Path) -> None:
    capture = tmp_path / "kept.gor"
    with uvicorn("pytest_replay.demo.app:app", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as app:
        with recording(app, capture, "--keep-secrets") as rec:
            _drive_demo(rec.url)
    assert rec.returncode == 0
    assert "WARNING: --keep-secrets" in rec.stderr and "--replay-set-header" in rec.stderr
    assert "redactions: none (--keep-secrets" in rec.stdout
    data = capture.read_bytes()
    for secret in (PASSWORD, token_for("alice"), session_for("alice"), API_KEY, HEADER_KEY):
        assert secret.encode() in data
    assert b"REDACTED-" not in data
    assert oct(capture.stat().st_mode & 0o777) == "0o600"


# -- streaming, framing, pipelining -----------------------------------------------------------------------
def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_request_larger_than_memory_allows_is_streamed(upstream: str, tmp_path: Path) -> None:
    size = 300 << 20  # generated on the fly: neither the client nor the proxy holds it
    block = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)

    def body():
        for _ in range(size // len(block)):
            yield block

    capture = tmp_path / "big.gor"
    with recording(upstream, capture) as rec:
        with httpx.Client(timeout=60) as client:
            answer = client.post(rec.url + "/upload", content=body(),
                                 headers={"Content-Length": str(size), "Authorization": f"Bearer {API_KEY}"})
            assert answer.json() == {"bytes": size, "sha256": digest.hexdigest()}
            chunked = client.post(rec.url + "/upload", content=body())  # no length: chunked
            assert chunked.json() == {"bytes": size, "sha256": digest.hexdigest()}
            download = client.get(rec.url + f"/big?n={size}")
            assert len(download.content) == size
        peak = _peak_rss_kib(rec.proc.pid)
    assert peak < 120 * 1024, f"the proxy's peak RSS was {peak} KiB for 300 MiB bodies"
    assert "2 request bodies over the cap (8 MiB): stored without their bytes" in rec.stdout, rec.stdout
    assert "1 response bodies over the cap" in rec.stdout
    exchanges, stats = read_back(capture)
    assert len(exchanges) == 3
    assert capture.stat().st_size < 64 << 10
    assert API_KEY.encode() not in capture.read_bytes()  # a head stored alone is masked too (Redactor.head)
    # a head alone: the reader says the body is missing (flagged, never a whole message with an empty body)
    assert [e.replayable for e in exchanges] == [False, False, True]
    assert [[f.code for f in e.flags] for e in exchanges] == [["truncated"], ["truncated"], ["truncated"]]
    assert {w.kind for w in stats.warnings} == {"truncated-record"}


def test_pipelined_and_chunked_requests_on_one_connection(upstream: str, tmp_path: Path) -> None:
    capture = tmp_path / "pipe.gor"
    chunked = (b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    with recording(upstream, capture) as rec:
        answer = _raw(rec.url, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" + chunked
                      + b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200") == 3
    assert answer.index(b'"/a"') < answer.index(hashlib.sha256(b"hello world").hexdigest().encode()) \
        < answer.index(b'"/b"')
    exchanges, stats = read_back(capture)
    assert [e.request.target for e in exchanges] == ["/a", "/upload", "/b"]
    assert exchanges[1].request.body == b"hello world" and all(e.complete for e in exchanges)
    assert len({e.connection for e in exchanges}) == 1 and not stats.warnings


# -- faults ---------------------------------------------------------------------------------------------
def test_upstream_down_answers_502_and_records_the_request_without_a_response(tmp_path: Path) -> None:
    capture = tmp_path / "down.gor"
    with recording(f"http://127.0.0.1:{free_port()}", capture) as rec:
        with httpx.Client(timeout=10) as client:
            first = client.get(rec.url + "/x")
            second = client.post(rec.url + "/y", content=b"payload")
        assert first.status_code == second.status_code == 502
        assert b"unreachable" in first.content
    assert "2 upstream unreachable" in rec.stdout and "2 exchanges (2 without a response)" in rec.stdout
    exchanges, _ = read_back(capture)
    assert [(e.request.method, e.response) for e in exchanges] == [("GET", None), ("POST", None)]
    assert exchanges[1].request.body == b"payload"
    assert all(any(flag.code == "no-response" for flag in e.flags) for e in exchanges)
    assert b"\n2 " not in capture.read_bytes()  # no response record: the 502 was the proxy's, not the upstream's


def test_upstream_closing_mid_response_is_an_error_not_a_response(upstream: str, tmp_path: Path) -> None:
    capture = tmp_path / "cut.gor"
    with recording(upstream, capture) as rec:
        answer = _raw(rec.url, b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"0123456789")  # cut, then closed
        with httpx.Client(timeout=10) as client:
            assert client.get(rec.url + "/after").status_code == 200  # the proxy serves on
    assert "1 upstream failed" in rec.stdout
    exchanges, _ = read_back(capture)
    assert [(e.request.target, e.response is None) for e in exchanges] == [("/cut", True), ("/after", False)]


def test_client_going_away_mid_body_is_counted_and_not_recorded(upstream: str, tmp_path: Path) -> None:
    capture = tmp_path / "gone.gor"
    with recording(upstream, capture) as rec:
        _raw(rec.url, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789",
             close_after_send=True)
        time.sleep(0.3)
        with httpx.Client(timeout=10) as client:
            assert client.get(rec.url + "/next").status_code == 200
    assert "1 client went away in a request body" in rec.stdout
    exchanges, _ = read_back(capture)
    assert [e.request.target for e in exchanges] == ["/next"]


@pytest.mark.parametrize("request_bytes, why", [
    (b"NOT HTTP AT ALL\r\n\r\n", "invalid request head"),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n", "Content-Length"),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "smuggling"),
    (b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
])
def test_a_bad_request_gets_400_and_is_not_recorded(upstream: str, tmp_path: Path, request_bytes: bytes,
                                                     why: str) -> None:
    capture = tmp_path / "bad.gor"
    with recording(upstream, capture) as rec:
        answer = _raw(rec.url, request_bytes)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request") and why.encode() in answer
    assert "bad request (400 sent, not recorded)" in rec.stderr and why in rec.stderr
    assert "Traceback" not in rec.stderr
    assert capture.read_bytes() == b""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_leaves_whole_exchanges_only(upstream: str, tmp_path: Path, sig: int) -> None:
    capture = tmp_path / "stopped.gor"
    srv_done = threading.Event()
    with recording(upstream, capture) as rec:
        with httpx.Client(timeout=10) as client:
            for i in range(20):
                assert client.get(rec.url + f"/n{i}").status_code == 200

        def slow() -> None:  # under way when the signal comes
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(rec.url + "/slow", timeout=10)
            srv_done.set()

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)
        rec.stop(sig)
        thread.join(10)
    assert rec.returncode == 0, rec.stderr
    assert "1 exchanges under way when stopped: not written" in rec.stdout, rec.stdout
    data = capture.read_bytes()
    assert data.endswith(SEPARATOR)
    exchanges, stats = read_back(capture)
    assert [e.request.target for e in exchanges] == [f"/n{i}" for i in range(20)]
    assert all(e.complete for e in exchanges) and not stats.warnings


def test_listen_address_in_use_is_one_line_and_leaves_the_output_alone(upstream: str, tmp_path: Path) -> None:
    capture = tmp_path / "keep.gor"
    capture.write_bytes(b"an earlier capture")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _recorder(upstream, capture, port=port)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert err.strip() == f"record: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert capture.read_bytes() == b"an earlier capture"


def test_bad_usage_is_refused_before_anything_starts(tmp_path: Path) -> None:
    for args, message in ((["--upstream", "https://example.com"], "https upstreams are not supported"),
                          (["--upstream", "http://127.0.0.1:1", "--listen", "nowhere"], "expected HOST:PORT"),
                          (["--upstream", "http://127.0.0.1:1/api"], "expected no path"),
                          (["--upstream", "http://127.0.0.1:1", "-o", str(tmp_path / "x.gor.gz")], "uncompressed")):
        proc = subprocess.run([sys.executable, "-m", "pytest_replay", "record", "-o", str(tmp_path / "x.gor"),
                               *args], capture_output=True, text=True, env=pythonpath_env(), timeout=30)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "x.gor").exists()


def test_a_stale_upstream_connection_is_retried_once(tmp_path: Path) -> None:
    """An upstream that closes idle keep-alive connections without saying so (no Connection: close)."""
    port = free_port()
    server = socket.create_server(("127.0.0.1", port))
    served = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                served.append(data.split(b" ")[1])
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                # and closes: the proxy finds out on its next request

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    capture = tmp_path / "stale.gor"
    with recording(f"http://127.0.0.1:{port}", capture) as rec:
        with httpx.Client(timeout=10) as client:
            assert client.get(rec.url + "/one").text == "ok"
            time.sleep(0.2)
            assert client.get(rec.url + "/two").text == "ok"
    server.close()
    assert served == [b"/one", b"/two"]
    assert "errors: none" in rec.stdout
    assert len(read_back(capture)[0]) == 2


def test_record_is_listed_by_the_cli_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest_replay", "--help"], capture_output=True, text=True,
                          env=pythonpath_env(), timeout=30)
    assert "record" in proc.stdout and "recording reverse proxy" in proc.stdout


def test_records_carry_goreplay_ids_timestamps_and_latencies(upstream: str, tmp_path: Path) -> None:
    capture = tmp_path / "ids.gor"
    with recording(upstream, capture) as rec:
        before = time.time_ns()
        with httpx.Client(timeout=10) as client:
            for i in range(3):
                client.post(rec.url + f"/p{i}", content=b"x" * 1000)
        after = time.time_ns()
    headers = [record.split(b"\n", 1)[0].decode() for record in capture.read_bytes().split(SEPARATOR)[:-1]]
    assert [h.split()[0] for h in headers] == ["1", "2"] * 3
    ids = [h.split()[1] for h in headers]
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    assert ids[0] == ids[1] != ids[2] == ids[3] != ids[4] == ids[5]  # a request and its response share one
    assert len({i[:16] for i in ids}) == 1  # the connection: client port, listen port, client address
    assert ids[0][4:8] == f"{int(rec.url.rsplit(':', 1)[1]):04x}" and ids[0][8:16] == "7f000001"
    stamps = [int(h.split()[2]) for h in headers]
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= after
    assert all(int(h.split()[3]) > 0 for h in headers)


def test_an_unwritable_output_is_one_line_before_serving(upstream: str, tmp_path: Path) -> None:
    proc = _recorder(upstream, tmp_path / "missing" / "x.gor", port=free_port())
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "recording" not in out
    assert err.strip() == f"record: {tmp_path / 'missing' / 'x.gor'}: cannot write: No such file or directory"


def test_the_writer_process_dying_stops_the_proxy_with_whole_exchanges(upstream: str, tmp_path: Path) -> None:
    capture = tmp_path / "writer.gor"
    with recording(upstream, capture) as rec:
        with httpx.Client(timeout=10) as client:
            assert client.get(rec.url + "/first").status_code == 200
            time.sleep(0.3)
            children = Path(f"/proc/{rec.proc.pid}/task/{rec.proc.pid}/children").read_text().split()
            assert len(children) == 1
            os.kill(int(children[0]), signal.SIGKILL)
            time.sleep(0.3)
            with contextlib.suppress(httpx.HTTPError):
                client.get(rec.url + "/second")
        rec.proc.wait(timeout=20)
    assert rec.returncode == 1
    assert "the writer process exited" in rec.stderr and "stopping" in rec.stderr
    exchanges, stats = read_back(capture)
    assert [e.request.target for e in exchanges] == ["/first"] and not stats.warnings


def test_curl_upload_with_expect_100_continue(upstream: str, tmp_path: Path) -> None:
    """curl sends `Expect: 100-continue` for bodies over 1 MiB and waits for the 100 before sending."""
    require("curl")
    data = tmp_path / "upload.bin"
    data.write_bytes(os.urandom(3 << 20))
    capture = tmp_path / "curl.gor"
    with recording(upstream, capture, "--max-body-size", "16M") as rec:
        start = time.monotonic()
        proc = subprocess.run(["curl", "-sS", "--expect100-timeout", "15", "--data-binary", f"@{data}", "-H", "Content-Type: application/octet-stream",
                               rec.url + "/upload"], capture_output=True, timeout=30)
        elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"bytes": 3 << 20, "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    assert elapsed < 10  # curl did not sit out its (15 s) wait for the 100 Continue
    exchanges, stats = read_back(capture)
    assert len(exchanges) == 1 and exchanges[0].complete and len(exchanges[0].request.body) == 3 << 20
    assert exchanges[0].response.status == 200 and not stats.warnings


def test_an_upgrade_is_recorded_up_to_the_101_and_then_tunnelled(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:  # answers 101, then echoes
        conn, _ = server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
            while chunk := conn.recv(65536):
                conn.sendall(chunk)

    threading.Thread(target=serve, daemon=True).start()
    capture = tmp_path / "upgrade.gor"
    with recording(f"http://127.0.0.1:{port}", capture) as rec:
        host, cport = rec.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(cport)), timeout=10) as sock:
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 101")
            sock.sendall(b"ping over the tunnel")
            echoed = b""
            while len(echoed) < 20:
                echoed += sock.recv(65536)
            assert echoed == b"ping over the tunnel"
    server.close()
    assert "upgraded connections (not recorded after the 101): 1" in rec.stdout
    exchanges, _ = read_back(capture)
    assert [(e.request.target, e.response.status) for e in exchanges] == [("/ws", 101)]
    assert b"ping" not in capture.read_bytes()


def test_a_write_failing_part_way_is_cut_back_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GorAppender: a full disk in the middle of an exchange leaves the file as it was before it."""
    from pytest_replay.capture import writer

    out = writer.GorAppender(tmp_path / "full.gor")
    first = [b"1 " + b"a" * 24 + b" 1 1\nGET / HTTP/1.1\r\n\r\n"]
    out.append(first)
    size = (tmp_path / "full.gor").stat().st_size
    real_write = os.write
    calls = []

    def disk_fills(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.os, "write", disk_fills)
    with pytest.raises(OSError):
        out.append(first + first)
    monkeypatch.setattr(writer.os, "write", real_write)
    assert (tmp_path / "full.gor").stat().st_size == size
    out.append(first)  # and the next exchange follows on at the right place
    out.close()
    data = (tmp_path / "full.gor").read_bytes()
    assert data == (first[0] + SEPARATOR) * 2
