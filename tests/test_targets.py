"""Targets: the raw network path against real servers on 127.0.0.1 (uvicorn, and scripted sockets for
faults), the in-process ASGI/WSGI/httpx-client targets, wire_bytes, and make_target."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time

import httpx
import pytest
from support import require
import uvicorn

from pytest_replay.demo import make_app
from pytest_replay.http.message import Request
from pytest_replay.schedule.clock import RealClock
from pytest_replay.schedule.engine import Engine
from pytest_replay.schedule.plan import PlannedRequest
from pytest_replay.targets import make_target
from pytest_replay.schedule.target import APP_ERROR, REFUSED, RESET, TIMEOUT, TRUNCATED, UNPARSABLE, TargetError
from pytest_replay.targets.inprocess import ASGITarget, ClientTarget, WSGITarget
from pytest_replay.targets.h2 import H2Target
from pytest_replay.targets.raw import RawTarget, wire_bytes

CLOCK = RealClock(precise=False)


def req(method="GET", target="/", headers=((b"Host", b"captured.example"),), body=b""):
    return Request.build(method, target, tuple(headers), body)


def planned(target, request, key=0, lane="lane"):
    wire = target.wire(request) if hasattr(target, "wire") else request.raw
    return PlannedRequest(key, 0, lane, request, wire)


async def send_all(target, requests, lane="lane"):
    """Send requests one after another on one lane; a TargetError is returned in place of the result."""
    await target.start()
    out = []
    try:
        for i, request in enumerate(requests):
            try:
                out.append(await target.send(planned(target, request, i, lane), CLOCK))
            except TargetError as exc:
                out.append(exc)
    finally:
        await target.close()
    return out


# -- wire_bytes -------------------------------------------------------------------------------------------
def test_wire_bytes_sets_host_and_keeps_order_and_case():
    r = Request.build("GET", "/a?b=1", ((b"X-First", b"1"), (b"HOST", b"old"), (b"connection", b"close")))
    assert wire_bytes(r, "new:8080") == (b"GET /a?b=1 HTTP/1.1\r\nX-First: 1\r\nHOST: new:8080\r\n"
                                         b"connection: close\r\n\r\n")
    assert wire_bytes(r, None) == r.raw


def test_wire_bytes_adds_missing_host_and_normalizes_bare_lf():
    head = b"POST /p HTTP/1.0\nContent-Type: text/plain\nContent-Length: 99\n\n"
    r = Request("POST", "/p", "1.0", head, b"hello", head + b"hello", (), True)
    assert wire_bytes(r, "h") == (b"POST /p HTTP/1.0\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                                  b"\r\nhello")


def test_wire_bytes_content_length_fixed_added_and_duplicates_dropped():
    r = req("PUT", "/x", ((b"Host", b"a"), (b"Content-Length", b"1"), (b"content-length", b"1")), b"abc")
    assert wire_bytes(r, "a") == b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    r = req("POST", "/x", ((b"Host", b"a"),), b"abc")
    assert wire_bytes(r, "a").endswith(b"Host: a\r\nContent-Length: 3\r\n\r\nabc")
    r = req("GET", "/x", ((b"Host", b"a"),))
    assert b"Content-Length" not in wire_bytes(r, "a")


def test_wire_bytes_rechunks_a_chunked_body_with_trailers():
    head = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 7\r\n\r\n"
    raw = head + b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n"
    r = Request("POST", "/u", "1.1", head, b"abcde", raw, ((b"X-Sum", b"9"),))
    assert wire_bytes(r, "b") == (b"POST /u HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"5\r\nabcde\r\n0\r\nX-Sum: 9\r\n\r\n")


def test_raw_target_url_forms():
    t = RawTarget("https://example.com:8443/")
    assert (t.hostname, t.port, t.host, t.scheme) == ("example.com", 8443, "example.com:8443", "https")
    assert RawTarget("http://127.0.0.1").port == 80
    for bad in ("http://h/base", "ftp://h", "http://h/?q=1", "http://u:p@h", "http://"):
        with pytest.raises(ValueError):
            RawTarget(bad)


# -- a real server: uvicorn ---------------------------------------------------------------------------------
async def small_app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    while (await receive()).get("more_body"):
        pass
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    body = f"{scope['method']} {path} port={scope['client'][1]}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    if path == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def uvicorn_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(small_app, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
    sock.close()


def body_of(result):
    assert not isinstance(result, Exception), result
    return result[0].body.decode()


def test_raw_keep_alive_reuses_the_connection(uvicorn_url):
    results = asyncio.run(send_all(RawTarget(uvicorn_url), [req(target=f"/k{i}") for i in range(3)]))
    ports = {body_of(r).split("port=")[1] for r in results}
    assert len(ports) == 1
    response, sent, first, done = results[0]
    assert response.status == 200 and sent <= first <= done
    assert body_of(results[1]).startswith("GET /k1")


def test_raw_head_has_no_body_and_the_connection_goes_on(uvicorn_url):
    results = asyncio.run(send_all(RawTarget(uvicorn_url), [req("HEAD", "/h"), req("GET", "/after")]))
    head = results[0][0]
    assert head.status == 200 and head.body == b"" and int(head.header("content-length")) > 0
    assert body_of(results[1]).startswith("GET /after")


def test_raw_chunked_response(uvicorn_url):
    (result,) = asyncio.run(send_all(RawTarget(uvicorn_url), [req(target="/stream")]))
    response = result[0]
    assert response.header("transfer-encoding") == b"chunked"
    assert response.body == b"one,two,three" and response.raw.endswith(b"0\r\n\r\n")


def test_raw_connection_close_then_reconnect(uvicorn_url):
    results = asyncio.run(send_all(RawTarget(uvicorn_url), [req(target="/a"), req(target="/close"),
                                                            req(target="/b")]))
    ports = [body_of(r).split("port=")[1] for r in results]
    assert ports[0] == ports[1] != ports[2]


def test_raw_request_with_connection_close_reconnects(uvicorn_url):
    closing = req(target="/c", headers=((b"Host", b"x"), (b"Connection", b"close")))
    results = asyncio.run(send_all(RawTarget(uvicorn_url), [closing, req(target="/d")]))
    assert body_of(results[0]).split("port=")[1] != body_of(results[1]).split("port=")[1]


@pytest.mark.parametrize("loop, batch", [("asyncio", True), ("asyncio", False), ("uvloop", True), ("uvloop", False)])
def test_raw_through_the_engine_many_lanes(uvicorn_url, loop, batch):
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="the [fast] extra is not installed")
    target = RawTarget(uvicorn_url, batch=batch)
    plan = [PlannedRequest(i, i * 200_000, f"L{i % 4}", r, target.wire(r))
            for i, r in enumerate(req(target=f"/n{i}") for i in range(40))]
    engine = Engine(plan, target, lead_ns=0, loop=loop)
    assert engine.loop_name.split()[0] == loop
    engine.start()
    observations = [engine.wait(i, timeout=10) for i in range(40)]
    engine.stop()
    assert all(o.ok for o in observations), [o.error for o in observations if not o.ok]
    assert all(o.deadline_ns <= o.sent_ns <= o.first_byte_ns <= o.done_ns for o in observations)
    assert [o.response.body.split(b" port=")[0] for o in observations] == [f"GET /n{i}".encode() for i in range(40)]
    assert len({o.response.body.split(b"port=")[1] for o in observations}) == 4  # one connection per lane


# -- scripted socket servers for faults ----------------------------------------------------------------------
class Scripted:
    """An asyncio TCP server on 127.0.0.1 whose `handler(reader, writer, n)` plays connection n."""

    def __init__(self, handler):
        self.handler = handler
        self.connections = 0

    async def __aenter__(self):
        async def on_connect(reader, writer):
            self.connections += 1
            try:
                await self.handler(reader, writer, self.connections)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


async def read_request(reader):
    return await reader.readuntil(b"\r\n\r\n")


def scripted_run(handler, requests, *, engine_timeout=None):
    async def main():
        async with Scripted(handler) as server:
            target = RawTarget(server.url)
            if engine_timeout is None:
                results = await send_all(target, requests)
            else:
                plan = [PlannedRequest(i, 0, "lane", r, target.wire(r)) for i, r in enumerate(requests)]
                engine = Engine(plan, target, clock=RealClock(), timeout_s=engine_timeout, lead_ns=0)
                results = sorted(await engine.run(), key=lambda o: o.key)
            return results, server.connections
    return asyncio.run(main())


def test_raw_close_delimited_body():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this until the close")
        await writer.drain()

    (result, ), _ = scripted_run(handler, [req()])
    assert result[0].body == b"all of this until the close"


def test_raw_interim_1xx_is_skipped():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    (result, ), _ = scripted_run(handler, [req("POST", body=b"x")])
    assert result[0].status == 201 and result[0].interim == (100,) and result[0].body == b"ok"


def test_raw_refused():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    (result,) = asyncio.run(send_all(RawTarget(f"http://127.0.0.1:{port}"), [req()]))
    assert isinstance(result, TargetError) and result.kind == REFUSED and str(port) in result.message


def _reset(writer):
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()


def test_raw_reset_mid_response():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()
        await asyncio.sleep(0.05)
        _reset(writer)

    (result,), _ = scripted_run(handler, [req("POST", body=b"x")])
    assert isinstance(result, TargetError) and result.kind == RESET
    assert "inside the response head" in result.message and result.sent_ns is not None


def test_raw_truncated_body_says_how_much_arrived():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 30)
        await writer.drain()

    (result,), _ = scripted_run(handler, [req()])
    assert isinstance(result, TargetError) and result.kind == TRUNCATED
    assert "30 of 100 body bytes" in result.message


def test_raw_garbage_response():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.0\r\nwhatever this is\r\n\r\n")
        await writer.drain()
        await reader.read()

    (result,), _ = scripted_run(handler, [req()])
    assert isinstance(result, TargetError) and result.kind == UNPARSABLE


def test_raw_timeout_then_fresh_connection():
    async def handler(reader, writer, n):
        await read_request(reader)
        if n == 1:
            await asyncio.sleep(30)  # never answers
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    started = time.monotonic()
    (first, second), connections = scripted_run(handler, [req(), req()], engine_timeout=0.2)
    assert time.monotonic() - started < 5
    assert first.error_kind == TIMEOUT and second.ok and second.response.body == b"ok"
    assert connections == 2  # the stuck connection was dropped, the lane got a fresh one


def test_raw_server_closing_idle_keep_alive_connection_is_reopened():
    async def handler(reader, writer, n):
        await read_request(reader)  # answers one request, then closes without saying so
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(n).encode())
        await writer.drain()

    async def main():
        async with Scripted(handler) as server:
            target = RawTarget(server.url)
            await target.start()
            p = planned(target, req())
            first = await target.send(p, CLOCK)
            await asyncio.sleep(0.05)  # the close arrives while the lane is idle
            second = await target.send(p, CLOCK)
            third = await target.send(p, CLOCK)  # close races with reuse: idempotent GET is resent
            await target.close()
            return [r[0].body for r in (first, second, third)]

    assert asyncio.run(main()) == [b"1", b"2", b"3"]


# -- in-process targets ----------------------------------------------------------------------------------------
def test_asgi_target_with_the_demo_app_keeps_gzip_raw():
    target = ASGITarget(make_app())
    gz = req(target="/api/products?limit=2", headers=((b"Host", b"shop"), (b"Accept-Encoding", b"gzip")))
    health, products = asyncio.run(send_all(target, [req(target="/health"), gz]))
    assert health[0].status == 200 and b'"ok"' in health[0].body
    response = products[0]
    assert response.header("content-encoding") == b"gzip" and response.body[:2] == b"\x1f\x8b"
    assert b"Espresso" in gzip.decompress(response.body)
    assert response.raw == response.head + response.body and response.head.startswith(b"HTTP/1.1 200 OK\r\n")


def test_asgi_app_exception_is_an_app_error():
    async def broken(scope, receive, send):
        raise ZeroDivisionError("division by zero")

    (result,) = asyncio.run(send_all(ASGITarget(broken), [req()]))
    assert isinstance(result, TargetError) and result.kind == APP_ERROR
    assert result.message.startswith("ZeroDivisionError: division by zero (at test_targets.py:")
    assert "\n" not in result.message


def echo_wsgi(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise KeyError("missing")
    if environ["PATH_INFO"] == "/slow":
        time.sleep(0.2)
    body = environ["wsgi.input"].read()
    text = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']} " \
           f"host={environ['HTTP_HOST']} " \
           f"body={body.decode()}".encode()
    start_response("201 Created", [("Content-Type", "text/plain"), ("X-Mixed-Case", "yes")])
    return [text]


def test_wsgi_target():
    results = asyncio.run(send_all(WSGITarget(echo_wsgi), [
        req("POST", "/e?q=1", ((b"Host", b"shop.example:8080"), (b"Content-Type", b"text/plain")), b"hi"),
        req("HEAD", "/e"), req(target="/boom")]))
    response = results[0][0]
    assert (response.status, response.reason) == (201, "Created")
    assert response.body == b"POST /e?q=1 host=shop.example:8080 body=hi"
    assert response.header("x-mixed-case") == b"yes" and b"X-Mixed-Case: yes" in response.head
    assert results[1][0].body == b""
    assert isinstance(results[2], TargetError) and results[2].kind == APP_ERROR and "KeyError" in results[2].message


def test_wsgi_lanes_run_concurrently():
    target = WSGITarget(echo_wsgi)
    plan = [PlannedRequest(i, 0, f"L{i}", req(target="/slow"), b"") for i in range(4)]
    started = time.monotonic()
    observations = asyncio.run(Engine(plan, target, clock=RealClock(), lead_ns=0).run())
    assert all(o.ok for o in observations) and len(observations) == 4
    assert time.monotonic() - started < 0.6  # 4 x 0.2 s in parallel, not in sequence


def test_client_target_uses_base_url_and_client_headers_but_not_httpx_defaults():
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["path"], dict(scope["headers"])))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc/base",
                                     headers={"Authorization": "Bearer t"}) as client:
            target = make_target(client)
            assert isinstance(target, ClientTarget)
            return await send_all(target, [req(target="/items?x=1", headers=((b"Host", b"h"), (b"X-A", b"1")))])

    (result,) = asyncio.run(main())
    assert result[0].status == 200 and result[0].body == b"ok"
    path, headers = seen[0]
    assert path == "/base/items" and headers[b"x-a"] == b"1" and headers[b"authorization"] == b"Bearer t"
    assert b"accept-encoding" not in headers and headers[b"host"] == b"svc"


def test_targets_send_the_request_own_host_when_asked_to_keep_it():
    """--replay-original-host and a Host set with --replay-set-header: the request's Host goes out."""
    raw = RawTarget("http://127.0.0.1:8000")
    kept = make_target("http://127.0.0.1:8000", keep_host=True)
    request = req(target="/a")
    assert b"\r\nHost: 127.0.0.1:8000\r\n" in raw.wire(request) and raw.sent_host(request) == "127.0.0.1:8000"
    assert kept.wire(request) == request.raw and kept.sent_host(request) == "captured.example"
    seen = []

    async def app(scope, receive, send):
        seen.append(dict(scope["headers"])[b"host"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main(keep_host):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc:81") as client:
            target = make_target(client, keep_host=keep_host)
            await send_all(target, [request])
            return target.sent_host(request)

    assert asyncio.run(main(False)) == "svc:81" and asyncio.run(main(True)) == "captured.example"
    assert seen == [b"svc:81", b"captured.example"]
    assert ASGITarget(app).sent_host(request) == "captured.example" == WSGITarget(wsgi_app).sent_host(request)


# -- make_target ---------------------------------------------------------------------------------------------------
def wsgi_app(environ, start_response):
    return echo_wsgi(environ, start_response)


def test_make_target_forms():
    network = make_target("http://127.0.0.1:9")  # HTTP/1.x captures through RawTarget, HTTP/2 ones over h2
    assert isinstance(network, H2Target) and isinstance(network.http1, RawTarget) and network.version == "auto"
    assert make_target("https://h", verify=False).verify is False
    demo = make_target("demo")
    assert isinstance(demo, ASGITarget) and demo.name == "demo"
    assert isinstance(make_target("asgi:pytest_replay.demo.app:app"), ASGITarget)
    assert isinstance(make_target("wsgi:tests.test_targets:wsgi_app"), WSGITarget)
    assert isinstance(make_target(make_app()), ASGITarget)
    assert isinstance(make_target(small_app), ASGITarget)
    assert isinstance(make_target(echo_wsgi), WSGITarget)
    custom = RawTarget("http://127.0.0.1:9")
    assert make_target(custom) is custom
    for bad in ("ftp://x", "nonsense", 42, lambda a: a, "asgi:no.such.module:app", "asgi:pytest_replay.demo.app:nope",
                "asgi:missing_colon", httpx.Client()):
        with pytest.raises(ValueError) as info:
            make_target(bad)
        assert "accepted forms" in str(info.value) or "asgi:" in str(info.value) or "httpx" in str(info.value)


# -- https -------------------------------------------------------------------------------------------------------------
def test_raw_https_verify_on_and_off(tmp_path):
    import ssl
    import subprocess

    require("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def handler(reader, writer):
        try:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntls")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            insecure = await send_all(RawTarget(url, verify=False), [req(), req()])
            strict = await send_all(RawTarget(url), [req()])
        finally:
            server.close()
        return insecure, strict

    insecure, (strict,) = asyncio.run(main())
    assert [r[0].body for r in insecure] == [b"tls", b"tls"]
    assert isinstance(strict, TargetError) and strict.kind == REFUSED and "TLS" in strict.message
