"""The socket-level blocker and the outbound bookkeeping of in-process replays (targets/blocker.py,
targets/outbound.py), in this process: each test removes what it installs."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import respx

from pytest_replay.targets.blocker import (AllowedHost, Allowlist, OutboundBlocked, SocketBlocker, endpoint,
                                           parse_allow_host)
from pytest_replay.targets.outbound import CURRENT_EXCHANGE, Outbound

PATCHED = ("connect", "connect_ex", "sendto", "sendmsg")


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:5432", AllowedHost("127.0.0.1", 5432)),
    ("DB.internal", AllowedHost("db.internal", None)),
    ("localhost:6379", AllowedHost("localhost", 6379)),
    ("[::1]:5432", AllowedHost("::1", 5432)),
    ("[::1]", AllowedHost("::1", None)),
    ("::1", AllowedHost("::1", None)),
    (" 10.0.0.7 ", AllowedHost("10.0.0.7", None)),
])
def test_allow_host_forms(text: str, expected: AllowedHost) -> None:
    assert parse_allow_host(text) == expected


@pytest.mark.parametrize("text", ["", ":5432", "db:", "db:http", "db:0", "db:70000", "[::1", "[::1]5432",
                                  "fe80::zz", "http://db:5432", "a b"])
def test_allow_host_refuses_what_it_can_not_read(text: str) -> None:
    with pytest.raises(ValueError, match="HOST or HOST:PORT"):
        parse_allow_host(text)


def test_bad_allow_host_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".gor", x="")
    result = pytester.runpytest("--replay", "x.gor", "--replay-allow-host", "db:http")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--replay-allow-host: the port must be 1-65535*HOST or HOST:PORT*"])


def test_allowlist_matches_names_addresses_and_ports() -> None:
    allow = Allowlist([parse_allow_host("localhost:5432"), parse_allow_host("10.1.2.3")])
    assert allow.allows("127.0.0.1", 5432)  # what localhost resolves to
    assert allow.allows("LOCALHOST", 5432)
    assert not allow.allows("127.0.0.1", 5433)
    assert allow.allows("10.1.2.3", 1) and allow.allows("::ffff:10.1.2.3", 443)
    assert not allow.allows("10.1.2.4", 1)
    assert not Allowlist().allows("127.0.0.1", 5432)
    assert Allowlist([parse_allow_host("127.0.0.1:80")]).allows("localhost", 80)
    assert endpoint("::1", 5432) == "[::1]:5432" and endpoint("Example.COM", 80) == "example.com:80"


@contextlib.contextmanager
def installed(blocker):
    blocker.install()
    try:
        yield blocker
    finally:
        blocker.uninstall()


@pytest.fixture
def listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def test_blocked_connect_raises_connect_ex_refuses_and_socket_is_restored(listener: int) -> None:
    before = {name: vars(socket.socket).get(name) for name in PATCHED}
    calls: list[str] = []
    with installed(SocketBlocker(Allowlist(), exempt=lambda: False, record=calls.append)):
        with pytest.raises(OutboundBlocked) as info:
            socket.create_connection(("127.0.0.1", listener), timeout=2)
        assert isinstance(info.value, ConnectionRefusedError)  # the app's "unreachable" path
        assert f"--replay-allow-host 127.0.0.1:{listener}" in str(info.value)
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", listener)) == errno.ECONNREFUSED
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(OutboundBlocked):
            sock.sendto(b"x", ("127.0.0.1", 9))
    assert {name: vars(socket.socket).get(name) for name in PATCHED} == before
    assert calls == [f"TCP connection to 127.0.0.1:{listener} blocked: allow it with --replay-allow-host "
                     f"127.0.0.1:{listener}"] * 2 + ["UDP datagram to 127.0.0.1:9 blocked: allow it with "
                                                     "--replay-allow-host 127.0.0.1:9"]
    socket.create_connection(("127.0.0.1", listener), timeout=2).close()  # works again


def test_allowed_exempt_and_unix_sockets_pass(listener: int, tmp_path) -> None:
    exempt = [False]
    calls: list[str] = []
    allow = Allowlist([parse_allow_host(f"127.0.0.1:{listener}")])
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as unix_server:
        unix_server.bind(path)
        unix_server.listen(1)
        with installed(SocketBlocker(allow, exempt=lambda: exempt[0], record=calls.append)):
            socket.create_connection(("127.0.0.1", listener), timeout=2).close()
            socket.create_connection(("localhost", listener), timeout=2).close()
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(path)
            exempt[0] = True
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"x", ("127.0.0.1", 9))
    assert calls == []


def test_asyncio_connections_are_blocked(listener: int) -> None:
    calls: list[str] = []

    async def main():
        with pytest.raises(OSError, match="blocked: allow it with --replay-allow-host"):
            await asyncio.open_connection("127.0.0.1", listener)
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setblocking(False)
            with pytest.raises(OutboundBlocked):
                await loop.sock_connect(sock, ("127.0.0.1", listener))
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, family=socket.AF_INET)
        transport.sendto(b"x", ("127.0.0.1", 9))  # asyncio reports a datagram's error to the protocol
        transport.close()

    with installed(SocketBlocker(Allowlist(), exempt=lambda: False, record=calls.append)):
        asyncio.run(main())
    assert [c.split(" to ")[0] for c in calls] == ["TCP connection", "TCP connection", "UDP datagram"]


def test_a_wrapper_installed_over_ours_stays_and_ours_lets_everything_through(listener: int) -> None:
    calls: list[str] = []
    blocker = SocketBlocker(Allowlist(), exempt=lambda: False, record=calls.append)
    blocker.install()
    ours = socket.socket.connect

    def theirs(sock, address):
        return ours(sock, address)

    socket.socket.connect = theirs
    try:
        blocker.uninstall()
        assert vars(socket.socket)["connect"] is theirs
        socket.create_connection(("127.0.0.1", listener), timeout=2).close()
    finally:
        del socket.socket.connect
    assert calls == [] and "connect_ex" not in vars(socket.socket)


def in_thread(fn, *, key=None, name="app-thread"):
    """Run fn in a new thread (as an app's own thread would), with CURRENT_EXCHANGE = key if given."""
    result = {}

    def run():
        if key is not None:
            CURRENT_EXCHANGE.set(key)
        try:
            result["value"] = fn()
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(10)
    return result


@contextlib.contextmanager
def started(outbound: Outbound):
    outbound.start()
    try:
        yield outbound
    finally:
        outbound.stop()


def test_calls_are_tied_to_their_exchange_and_pytests_thread_is_free(listener: int) -> None:
    connect = lambda: socket.create_connection(("127.0.0.1", listener), timeout=2).close()  # noqa: E731
    outbound = Outbound(respx.MockRouter(assert_all_called=False))
    with started(outbound):
        connect()  # pytest's own thread, outside any exchange
        assert isinstance(in_thread(connect, key=7)["error"], OutboundBlocked)
        assert isinstance(in_thread(connect, name="notifier")["error"], OutboundBlocked)
        first = outbound.failure(7)
        assert isinstance(in_thread(connect, key=7)["error"], OutboundBlocked)  # after its verdict
    where = f"127.0.0.1:{listener}"
    assert first == f"TCP connection to {where} blocked: allow it with --replay-allow-host {where}"
    assert outbound.failure(8) is None
    assert outbound.escaped() == [
        f"TCP connection to {where} blocked: allow it with --replay-allow-host {where}, from thread 'notifier'",
        f"TCP connection to {where} blocked: allow it with --replay-allow-host {where}, after exchange #7 was "
        "judged, from thread 'app-thread'"]
    assert "connect" not in vars(socket.socket)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_httpx_calls_to_allowed_hosts_pass_the_respx_router(http_server: str) -> None:
    port = int(http_server.rsplit(":", 1)[1])
    router = respx.MockRouter(assert_all_called=False, assert_all_mocked=True)
    router.get("https://payments.example/charge").respond(201)
    outbound = Outbound(router, allow=[AllowedHost("localhost", port)])
    with started(outbound):
        assert in_thread(lambda: httpx.get(http_server + "/x").text, key=1)["value"] == "hello"
        assert in_thread(lambda: httpx.get("https://payments.example/charge").status_code, key=1)["value"] == 201
        blocked = in_thread(lambda: httpx.get("http://127.0.0.2:9/"), key=2)["error"]
        assert isinstance(blocked, httpx.ConnectError) and "--replay-allow-host" in str(blocked)
        assert httpx.get(http_server + "/own").text == "hello"  # pytest's thread: not the app's call
    assert outbound.failure(1) is None
    assert outbound.failure(2) == "outbound call without a replay_outbound route (blocked): GET http://127.0.0.2:9/"
