"""An in-process app's own network calls during a replay, end to end (pytester): whatever library
makes them, they must not reach anything but the hosts the run allows.

The upstream (an HTTP server, a UDP receiver and a UNIX-socket server) runs in this test's process
and logs what it receives; the replayed app runs in pytester's subprocess and calls it with
urllib.request, http.client, requests, a raw socket, asyncio streams, UDP sendto, a thread of its
own and a UNIX socket.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000

# What the app answers when its call went through: what the capture recorded.
RECORDED = {"/urllib": "hello /urllib", "/httpclient": "hello /httpclient", "/requests": "hello /requests",
            "/socket": "hello /socket", "/asyncio": "hello /asyncio", "/udp": "sent", "/thread": "spawned",
            "/unix": "unix got /unix"}
TCP_CALLS = ("/urllib", "/httpclient", "/requests", "/socket", "/asyncio")

CALLS = '''
import asyncio, http.client, os, socket, threading, urllib.request
import pytest, requests

HOST = "127.0.0.1"
PORT = int(os.environ["UPSTREAM_PORT"])
UDP_PORT = int(os.environ["UPSTREAM_UDP_PORT"])
UNIX_PATH = os.environ["UPSTREAM_UNIX"]


def body_of(raw):
    return raw.split(b"\\r\\n\\r\\n", 1)[1].decode()


def via_urllib(path):
    with urllib.request.urlopen(f"http://{HOST}:{PORT}{path}", timeout=5) as resp:
        return resp.read().decode()


def via_http_client(path):
    conn = http.client.HTTPConnection(HOST, PORT, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def via_requests(path):
    return requests.get(f"http://{HOST}:{PORT}{path}", timeout=5).text


def via_socket(path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect((HOST, PORT))
        sock.sendall(f"GET {path} HTTP/1.0\\r\\nHost: upstream\\r\\n\\r\\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return body_of(b"".join(chunks))
    finally:
        sock.close()


def via_udp(path):  # fire and forget, errors swallowed (a metrics client)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(path.encode(), (HOST, UDP_PORT))
    except OSError:
        pass
    return "sent"


def via_thread(path):  # a notification sent from a thread of the app's own, errors swallowed
    worker = threading.Thread(target=guarded, args=(via_urllib, path), name="app-notifier")
    worker.start()
    worker.join(5)
    return "spawned"


def via_unix(path):  # a local database on a socket file
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(UNIX_PATH)
        sock.sendall(path.encode())
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(1024).decode()


async def via_asyncio(path):
    reader, writer = await asyncio.open_connection(HOST, PORT)
    writer.write(f"GET {path} HTTP/1.0\\r\\nHost: upstream\\r\\n\\r\\n".encode())
    raw = await reader.read()
    writer.close()
    return body_of(raw)


def guarded(call, path):
    try:
        return call(path)
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {exc}"


SYNC = {"/urllib": via_urllib, "/httpclient": via_http_client, "/requests": via_requests, "/socket": via_socket,
        "/udp": via_udp, "/thread": via_thread, "/unix": via_unix}


@pytest.fixture(scope="session")
def replay_target():
    return app
'''

STARLETTE_APP = CALLS + '''
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


def sync_endpoint(request):  # Starlette runs it in a worker thread (anyio)
    return PlainTextResponse(guarded(SYNC[request.url.path], request.url.path))


async def asyncio_endpoint(request):  # in the replay engine's event loop
    try:
        text = await via_asyncio(request.url.path)
    except Exception as exc:
        text = f"failed: {type(exc).__name__}: {exc}"
    return PlainTextResponse(text)


app = Starlette(routes=[Route(path, sync_endpoint) for path in SYNC] + [Route("/asyncio", asyncio_endpoint)])
'''

FLASK_APP = CALLS + '''
from flask import Flask, request

app = Flask(__name__)


@app.route("/<name>")
def endpoint(name):
    return guarded(SYNC[request.path], request.path)
'''


def gor(*records: tuple[int, str, int, bytes]) -> bytes:
    return b"".join(f"{kind} {rid} {ts} -1\n".encode() + payload + SEP for kind, rid, ts, payload in records)


def capture(path: Path, paths) -> Path:
    records = []
    for n, target in enumerate(paths):
        rid, ts, body = f"{n:024x}", T0 + n * 10_000_000, RECORDED[target].encode()
        records.append((1, rid, ts, f"GET {target} HTTP/1.1\r\nHost: shop\r\n\r\n".encode()))
        records.append((2, rid, ts + 1_000_000, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body))
    path.write_bytes(gor(*records))
    return path


class Upstream:
    """An HTTP server, a UDP receiver and a UNIX-socket server, logging everything they receive."""

    def __init__(self) -> None:
        self.tcp: list[str] = []  # every accepted TCP connection, then every HTTP request path
        self.udp: list[bytes] = []
        self.unix: list[bytes] = []
        self._dir = tempfile.mkdtemp(prefix="rp-")  # short: a UNIX socket path has ~100 bytes at most
        self.unix_path = os.path.join(self._dir, "db.sock")
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self) -> None:
        log = self.tcp

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                log.append(f"GET {self.path}")
                body = f"hello {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request, client_address) -> bool:
                log.append(f"connection from {client_address[0]}")
                return True

        self.http = Server(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        self.udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_sock.bind(("127.0.0.1", 0))
        self.udp_port = self.udp_sock.getsockname()[1]
        self.unix_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix_sock.bind(self.unix_path)
        self.unix_sock.listen(8)
        for target in (self.http.serve_forever, self._receive_udp, self._serve_unix):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _receive_udp(self) -> None:
        self.udp_sock.settimeout(0.1)  # closing a socket does not wake a thread blocked on it
        while not self._stopping.is_set():
            try:
                self.udp.append(self.udp_sock.recv(65536))
            except TimeoutError:
                continue
            except OSError:
                return

    def _serve_unix(self) -> None:
        while True:
            try:
                conn, _ = self.unix_sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(1024)
                self.unix.append(data)
                conn.sendall(b"unix got " + data)

    def stop(self) -> None:
        self._stopping.set()
        self.http.shutdown()
        self.http.server_close()
        self.udp_sock.close()
        self.unix_sock.shutdown(socket.SHUT_RDWR)
        self.unix_sock.close()
        for thread in self._threads:
            thread.join(5)
        os.unlink(self.unix_path)
        os.rmdir(self._dir)


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch):
    server = Upstream()
    server.start()
    monkeypatch.setenv("UPSTREAM_PORT", str(server.port))
    monkeypatch.setenv("UPSTREAM_UDP_PORT", str(server.udp_port))
    monkeypatch.setenv("UPSTREAM_UNIX", server.unix_path)
    yield server
    server.stop()


def failure_of(text: str, path: str) -> str:
    """The failure section of the item replaying GET `path`."""
    start = text.index(f" GET {path} #")
    end = text.find("\n____", start)
    return text[start:end if end != -1 else len(text)]


APPS = {"asgi": (STARLETTE_APP, TCP_CALLS), "wsgi": (FLASK_APP, TCP_CALLS[:-1])}


@pytest.mark.parametrize("kind", sorted(APPS))
def test_app_network_calls_are_blocked_and_fail_their_exchange(pytester: pytest.Pytester, upstream: Upstream,
                                                               kind: str) -> None:
    app, tcp_calls = APPS[kind]
    paths = (*tcp_calls, "/udp", "/thread", "/unix")
    recorded = capture(pytester.path / "calls.gor", paths)
    pytester.makeconftest(app)
    result = pytester.runpytest_subprocess("--replay", str(recorded), "--speed", "0", "-p", "no:cacheprovider",
                                           "--replay-report", "evidence")
    assert upstream.tcp == [] and upstream.udp == []  # nothing reached the upstream
    assert upstream.unix == [b"/unix"]  # a UNIX socket is not blocked
    text = result.stdout.str()
    where = f"127.0.0.1:{upstream.port}"
    for path in tcp_calls:
        section = failure_of(text, path)
        assert f"connection to {where}" in section and f"--replay-allow-host {where}" in section, section
    section = failure_of(text, "/udp")
    assert f"127.0.0.1:{upstream.udp_port}" in section and "--replay-allow-host" in section, section
    # The thread's call is tied to no exchange: the run fails, naming it.
    run_failure = failure_of(text.replace("_ calls tied to no exchange _", "_ GET calls #"), "calls")
    assert "tied to no exchange" in run_failure
    assert f"connection to {where}" in run_failure and f"--replay-allow-host {where}" in run_failure
    assert "app-notifier" in run_failure
    result.assert_outcomes(passed=2, failed=len(tcp_calls) + 2)  # /thread, /unix; the TCP calls, /udp, the run
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    notes = json.loads((pytester.path / "evidence" / "replay-evidence.json").read_text())["notes"]
    assert any(where in note and "app-notifier" in note for note in notes), notes


@pytest.mark.parametrize("kind", sorted(APPS))
def test_allowed_hosts_are_reached(pytester: pytest.Pytester, upstream: Upstream, kind: str) -> None:
    app, tcp_calls = APPS[kind]
    paths = (*tcp_calls, "/udp", "/thread", "/unix")
    recorded = capture(pytester.path / "calls.gor", paths)
    pytester.makeconftest(app)
    tcp, udp = f"127.0.0.1:{upstream.port}", f"127.0.0.1:{upstream.udp_port}"
    if kind == "wsgi":  # the ini twin
        pytester.makeini(f"[pytest]\nreplay_allow_host =\n    {tcp}\n    {udp}\n")
        args = ()
    else:
        args = ("--replay-allow-host", tcp, "--replay-allow-host", udp)
    result = pytester.runpytest_subprocess("--replay", str(recorded), "--speed", "0", "-p", "no:cacheprovider",
                                           *args)
    result.assert_outcomes(passed=len(paths))
    requests_seen = sorted(line for line in upstream.tcp if line.startswith("GET "))
    assert requests_seen == sorted(f"GET {p}" for p in (*tcp_calls, "/thread"))
    assert upstream.udp == [b"/udp"]


def test_allowing_another_port_of_the_host_does_not_allow_this_one(pytester: pytest.Pytester,
                                                                     upstream: Upstream) -> None:
    recorded = capture(pytester.path / "calls.gor", ("/urllib",))
    pytester.makeconftest(FLASK_APP)
    result = pytester.runpytest_subprocess("--replay", str(recorded), "--speed", "0", "-p", "no:cacheprovider",
                                           "--replay-allow-host", f"127.0.0.1:{upstream.udp_port}")
    result.assert_outcomes(failed=1)
    assert upstream.tcp == []


def test_the_blocker_is_removed_after_an_interrupted_replay(pytester: pytest.Pytester, upstream: Upstream) -> None:
    """Ctrl-C during the replay: the socket functions are pytest's own again when pytest ends."""
    recorded = capture(pytester.path / "calls.gor", ("/urllib", "/socket"))
    pytester.makeconftest(FLASK_APP + '''

def pytest_runtest_logreport(report):
    if report.when == "call":
        raise KeyboardInterrupt


def pytest_unconfigure(config):
    patched = sorted(name for name in ("connect", "connect_ex", "sendto", "sendmsg") if name in vars(socket.socket))
    print("patched after the run:", patched or "nothing")
''')
    result = pytester.runpytest_subprocess("--replay", str(recorded), "--speed", "0", "-p", "no:cacheprovider", "-s")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*patched after the run: nothing*"])
    assert upstream.tcp == []


def test_under_xdist_a_workers_untied_call_fails_the_run(pytester: pytest.Pytester, upstream: Upstream) -> None:
    recorded = capture(pytester.path / "calls.gor", ("/urllib", "/thread", "/unix"))
    pytester.makeconftest(FLASK_APP)
    result = pytester.runpytest_subprocess("--replay", str(recorded), "--speed", "0", "-p", "no:cacheprovider",
                                           "-n", "2")
    assert upstream.tcp == []
    result.assert_outcomes(passed=2, failed=2)  # /thread and /unix pass; /urllib and the run fail
    text = result.stdout.str()
    assert f"--replay-allow-host 127.0.0.1:{upstream.port}, from thread 'app-notifier'" in text
