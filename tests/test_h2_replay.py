"""Replay over HTTP/2 (pytest_replay/targets/h2.py, --replay-http-version): the recorded h2c capture
against nginx speaking h2c only, against nginx speaking HTTP/1.1 only (auto falls back and says so),
against hypercorn over h2c (concurrent streams stay concurrent on one connection) and over TLS with
ALPN h2; flow control both ways with bodies larger than the windows."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FIXTURES, free_port, require, serving, wait_listening

from pytest_replay.capture import load
from pytest_replay.http.h2 import to_request
from pytest_replay.schedule.clock import RealClock
from pytest_replay.schedule.plan import PlannedRequest, Timing, build_plan, slot_count, stream_lanes
from pytest_replay.targets import make_target
from pytest_replay.targets.h2 import H2Target, probe

H2C = FIXTURES / "recorded" / "nginx_h2c_prior_knowledge.pcap"
APPS = Path(__file__).resolve().parent / "apps"


@contextlib.contextmanager
def nginx(tmp_path: Path, *, h2c: bool, keepalive_requests: int = 1000) -> Iterator[tuple[str, Path]]:
    """nginx serving the content of the h2c capture (h2c with prior knowledge only, or HTTP/1.1 only);
    its access log names each request's connection and protocol."""
    require("nginx")
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_bytes(b"hello from nginx over h2c\n")
    (html / "items.json").write_bytes(b'{"items": [1, 2, 3]}\n')
    (tmp_path / "logs").mkdir()
    port = free_port()
    log = tmp_path / "logs" / "access.log"
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; user {getpass.getuser()}; pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log;\n"
        "events { worker_connections 64; }\n"
        "http { log_format replay '$connection $server_protocol $request_method $request_uri $status';\n"
        f"  access_log {log} replay; keepalive_requests {keepalive_requests};\n"
        f"  server {{ listen 127.0.0.1:{port}{' http2' if h2c else ''}; root {html};\n"
        '  location /echo { return 201 "created\\n"; } } }\n')
    proc = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, "nginx")
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(10)


def recorded_responses(tmp_path: Path) -> Path:
    """{path: [status, body]} of the h2c capture's recorded responses, for the hypercorn app."""
    exchanges, _ = load(str(H2C))
    answers = {e.request.path: [e.response.status, e.response.body.decode("latin-1")] for e in exchanges}
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(answers))
    return path


@contextlib.contextmanager
def hypercorn(tmp_path: Path, *, tls: bool = False, delay: float = 0.0, big: int = 0) -> Iterator[tuple[str, Path]]:
    """tests/apps/h2_recorded_app.py under hypercorn: h2c (prior knowledge), or TLS offering h2."""
    port = free_port()
    log = tmp_path / "app.log"
    env = {**os.environ, "H2_APP_RESPONSES": str(recorded_responses(tmp_path)), "H2_APP_DELAY": str(delay),
           "H2_APP_LOG": str(log), "H2_APP_BIG": str(big)}
    argv = [sys.executable, "-m", "hypercorn", "h2_recorded_app:app", "--bind", f"127.0.0.1:{port}",
            "--log-level", "warning"]
    if tls:
        require("openssl")
        key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
        argv += ["--certfile", str(cert), "--keyfile", str(key)]
    with serving(argv, port, "hypercorn", cwd=APPS, env=env) as url:
        yield (url.replace("http://", "https://") if tls else url), log


def replay(pytester: pytest.Pytester, target: str, *args: str, capture: Path = H2C):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--replay-target",
                                         target, "--speed", "0", "-q", *args, timeout=300)


def log_lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()]


# -- nginx -----------------------------------------------------------------------------------------
def test_h2c_capture_replayed_over_h2_on_one_connection_per_captured_one(pytester, tmp_path) -> None:
    """nginx speaks only h2c: every exchange goes over HTTP/2 (over HTTP/1.1 they all failed), the
    four streams of the first captured connection on one connection, the curl request on another."""
    with nginx(tmp_path, h2c=True) as (url, log):
        result = replay(pytester, url, "--replay-allow-write", "POST ^/echo$")
        result.assert_outcomes(passed=5)
        # said once after collection, before the first result (and in the notes at the end)
        result.stdout.fnmatch_lines(["replay: HTTP/2 captures over HTTP/2 (h2c with prior knowledge)", "..... *",
                                     "note: replay: HTTP/2 captures over HTTP/2 (h2c with prior knowledge)"])
        assert result.stdout.str().count("HTTP/2 captures over") == 2
        lines = log_lines(log)
    assert len(lines) == 5 and {line[1] for line in lines} == {"HTTP/2.0"}
    by_connection: dict[str, list[str]] = {}
    for connection, _, method, uri, _ in lines:
        by_connection.setdefault(connection, []).append(f"{method} {uri}")
    assert sorted(map(sorted, by_connection.values())) == [
        ["GET /", "GET /items.json", "GET /missing", "POST /echo"], ["POST /echo"]]


def test_streams_refused_by_goaway_are_sent_again(pytester, tmp_path) -> None:
    """nginx ends a connection after 3 requests (keepalive_requests 3) with a GOAWAY: the fourth stream,
    which it did not process, is sent again on a new connection, and passes."""
    with nginx(tmp_path, h2c=True, keepalive_requests=3) as (url, log):
        result = replay(pytester, url, "--replay-allow-write", "POST ^/echo$")
        result.assert_outcomes(passed=5)
        lines = log_lines(log)
    assert len(lines) == 5 and len({line[0] for line in lines}) == 3


def test_auto_falls_back_to_http11_and_says_why(pytester, tmp_path) -> None:
    with nginx(tmp_path, h2c=False) as (url, log):
        result = replay(pytester, url, "--replay-allow-write", "POST ^/echo$")
        result.assert_outcomes(passed=5)
        result.stdout.fnmatch_lines(["*HTTP/2 captures over HTTP/1.1 (the target does not speak HTTP/2: the HTTP/2 "
                                     "preface was answered with 'HTTP/1.1 400 Bad Request')*"])
        lines = log_lines(log)
    # the probe's preface is logged as a 400; the five replayed requests went over HTTP/1.1
    assert sorted(line[1] for line in lines if line[4] != "400") == ["HTTP/1.1"] * 5


def test_http_version_2_against_an_http11_target_is_a_usage_error(pytester, tmp_path) -> None:
    with nginx(tmp_path, h2c=False) as (url, _):
        result = replay(pytester, url, "--replay-http-version", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([f"*--replay-http-version 2: {url} does not speak HTTP/2 (the HTTP/2 preface was "
                                 "answered with 'HTTP/1.1 400 Bad Request')*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_http_version_option_rejects_other_values(pytester) -> None:
    result = replay(pytester, "http://127.0.0.1:9", "--replay-http-version", "3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--replay-http-version: expected one of auto, 1.1, 2, got '3'*"])


def test_http_version_2_needs_a_network_target() -> None:
    with pytest.raises(ValueError, match="needs a network target"):
        make_target("demo", http_version="2")


# -- hypercorn: concurrency, TLS -----------------------------------------------------------------------
def test_concurrent_streams_stay_concurrent(pytester, tmp_path) -> None:
    """The first captured connection sent four streams before reading any answer: replayed, they are
    in flight together on one connection (the app holds each for 0.5 s)."""
    with hypercorn(tmp_path, delay=0.5) as (url, log):
        result = replay(pytester, url, "--replay-allow-write", "POST ^/echo$")
        result.assert_outcomes(passed=5)
        lines = log_lines(log)
    assert {line[0] for line in lines} == {"2"}
    by_port: dict[str, list[tuple[float, float]]] = {}
    for _, port, _, start, end in lines:
        by_port.setdefault(port, []).append((float(start), float(end)))
    spans = sorted(by_port.values(), key=len)
    assert [len(s) for s in spans] == [1, 4]
    four = spans[1]
    assert max(start for start, _ in four) < min(end for _, end in four), four  # all in flight at once


def test_overlapping_streams_get_lanes_of_their_own() -> None:
    exchanges, _ = load(str(H2C))
    lanes = stream_lanes(exchanges)
    first = exchanges[0].connection
    assert sorted(lanes.values()) == [f"{first} ~{k}/4" for k in range(4)]
    assert all(slot_count(lane) == 4 for lane in lanes.values())
    plan = build_plan(exchanges, Timing(speed=0))
    assert [p.lane for p in plan][-1] == exchanges[4].connection  # one stream alone: its connection


def test_tls_alpn_h2(pytester, tmp_path) -> None:
    with hypercorn(tmp_path, tls=True) as (url, log):
        assert probe("https", "127.0.0.1", int(url.rsplit(":", 1)[1]), verify=False).how == "TLS with ALPN h2"
        result = replay(pytester, url, "--replay-insecure", "--replay-allow-write", "POST ^/echo$")
        result.assert_outcomes(passed=5)
        result.stdout.fnmatch_lines(["*HTTP/2 captures over HTTP/2 (TLS with ALPN h2)*"])
        lines = log_lines(log)
    assert [line[0] for line in lines] == ["2"] * 5


@pytest.mark.parametrize("engine", ["frames", "h2"])
def test_flow_control_both_ways(tmp_path, engine) -> None:
    """A 300 kB request body and a 1 MB response: more than the 64 kB windows the server starts with,
    so both sides wait for WINDOW_UPDATEs. Our frame walker and the h2 package (the reference) alike."""
    body = bytes(range(256)) * 1200
    request = to_request([(b":method", b"POST"), (b":path", b"/upload"), (b":authority", b"x")], body, (), "h2c")

    async def send(url: str):
        target = H2Target(url, version="2", engine=engine)
        await target.start()
        try:
            planned = PlannedRequest(0, 0, "c", request, target.wire(request))
            return await asyncio.wait_for(target.send(planned, RealClock()), 30)
        finally:
            await target.close()

    with hypercorn(tmp_path, big=1_000_000) as (url, _):
        response, sent, first, done = asyncio.run(send(url))
    head, rest = response.body.split(b"\n", 1)
    assert head == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    assert rest == b"x" * 1_000_000 and response.protocol == "h2c"
    assert sent <= first <= done


@pytest.mark.parametrize("engine", ["frames", "h2"])
def test_requests_of_one_head_share_their_http2_form_not_their_bodies(tmp_path, engine) -> None:
    """H2Target works out a request's HTTP/2 header block once per method, target and fields: two
    POSTs with the same head and different bodies (same length) share it, each body goes as its own."""
    bodies = [b"a" * 10, b"b" * 10]
    requests = [to_request([(b":method", b"POST"), (b":path", b"/upload"), (b":authority", b"x")], body, (), "h2c")
                for body in bodies]

    async def send(url: str):
        target = H2Target(url, version="2", engine=engine)
        await target.start()
        try:
            out = []
            for i, request in enumerate(requests * 2):
                out.append(await target.send(PlannedRequest(i, 0, "c", request, b""), RealClock()))
            return out, len(target._prepared)
        finally:
            await target.close()

    with hypercorn(tmp_path) as (url, _):
        results, prepared = asyncio.run(send(url))
    assert [r[0].body for r in results] == [f"10 {hashlib.sha256(b).hexdigest()}\n".encode() for b in bodies * 2]
    assert prepared == 1


def test_frame_walker_agrees_with_the_h2_package(tmp_path) -> None:
    """Every exchange of the h2c capture sent by both connection engines to the same server: the same
    responses (status, headers less the date, body, trailers)."""
    exchanges, _ = load(str(H2C))

    async def send_all(url: str, engine: str):
        target = H2Target(url, version="2", engine=engine)
        await target.start()
        try:
            plans = [PlannedRequest(e.index, 0, e.connection, e.request, target.wire(e.request)) for e in exchanges]
            return await asyncio.gather(*(target.send(p, RealClock()) for p in plans))
        finally:
            await target.close()

    def shape(response):
        headers = tuple((k, v) for k, v in response.headers if k != b"date")
        return response.status, headers, response.body, response.trailers, response.protocol

    with hypercorn(tmp_path) as (url, _):
        ours = asyncio.run(send_all(url, "frames"))
        reference = asyncio.run(send_all(url, "h2"))
    assert [shape(r[0]) for r in ours] == [shape(r[0]) for r in reference]
    assert [r[0].status for r in ours] == [e.response.status for e in exchanges]


def test_frame_walker_agrees_with_the_h2_package_against_nginx(tmp_path) -> None:
    """nginx's HPACK (a literal with incremental indexing for each response's date, type and length,
    never referred back to) is the case the frame walker's fast paths serve: every exchange of the
    capture sent three times by both engines, on several connections, gives the same responses as the
    h2 package's, the ones that came from remembered blocks included (byte for byte: head, raw, fields)."""
    exchanges, _ = load(str(H2C))

    async def send_all(url: str, engine: str):
        target = H2Target(url, version="2", engine=engine)
        await target.start()
        try:
            out = []
            for round_ in range(3):
                plans = [PlannedRequest(e.index, 0, f"c{round_ % 2}", e.request, target.wire(e.request))
                         for e in exchanges]
                out += await asyncio.gather(*(target.send(p, RealClock()) for p in plans))
            return out
        finally:
            await target.close()

    def shape(response):
        def no_date(text: bytes) -> bytes:
            return b"\r\n".join(line for line in text.split(b"\r\n") if not line.lower().startswith(b"date:"))

        headers = tuple((k, v) for k, v in response.headers if k != b"date")
        return (response.status, response.reason, response.version, headers, no_date(response.head),
                no_date(response.raw), response.body, response.trailers, response.interim, response.protocol)

    with nginx(tmp_path, h2c=True) as (url, _):
        ours = asyncio.run(send_all(url, "frames"))
        reference = asyncio.run(send_all(url, "h2"))
    assert [shape(r[0]) for r in ours] == [shape(r[0]) for r in reference]
    assert [r[0].status for r in ours] == [e.response.status for e in exchanges] * 3


def test_frames_of_one_loop_iteration_go_out_in_one_write() -> None:
    """Four streams opened in one event-loop iteration: their HEADERS leave in one write (the batch),
    each stream's send time is when that write happened; the answers settle each its own stream."""
    from pytest_replay.targets.h2 import _Batch, _Connection, encode_headers, h2_headers

    class Transport:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def is_closing(self) -> bool:
            return False

    ticks = iter(range(1000, 100000, 10))

    async def main():
        loop = asyncio.get_running_loop()
        conn = _Connection(loop, ticks.__next__, "h2c", _Batch(loop, ticks.__next__))
        conn.connection_made(transport := Transport())
        preface = transport.writes.pop()
        request = to_request([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"x")], b"", (), "h2c")
        block = encode_headers(h2_headers(request, "http", "x"))
        tasks = [asyncio.ensure_future(conn.exchange(block, b"", ())) for _ in range(4)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(transport.writes) == 1 and preface.startswith(b"PRI * HTTP/2.0")
        (batch,) = transport.writes
        assert [batch[i + 3] for i in range(0, len(batch), 9 + len(block))] == [1, 1, 1, 1]  # four HEADERS
        assert [int.from_bytes(batch[i + 5:i + 9], "big") for i in range(0, len(batch), 9 + len(block))] == [1, 3, 5, 7]
        sent = {stream.sent for stream in conn.streams.values()}
        # the server answers stream 5, then 1, 3, 7: HEADERS (:status 200, 404, ...) + DATA, one read
        answers = b""
        for sid, status in ((5, b"\x8d"), (1, b"\x88"), (3, b"\x8c"), (7, b"\x88")):  # 404, 200, 400, 200
            answers += (len(status).to_bytes(3, "big") + b"\x01\x04" + sid.to_bytes(4, "big") + status
                        + b"\x00\x00\x02\x00\x01" + sid.to_bytes(4, "big") + b"ok")
        conn.data_received(answers)
        return sent, await asyncio.gather(*tasks)

    sent, results = asyncio.run(main())
    assert len(sent) == 1  # one write, one send time for the four
    assert [(r[0].status, r[0].body, r[0].head) for r in results] == [
        (200, b"ok", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"),
        (400, b"ok", b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n"),
        (404, b"ok", b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n"),
        (200, b"ok", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")]
    assert all(r[1] == next(iter(sent)) <= r[2] <= r[3] for r in results)


def test_header_blocks_longer_than_a_frame_go_in_continuations(tmp_path) -> None:
    """A 40 kB header (more than the 16 kB frame limit): HEADERS + CONTINUATION frames."""
    big = b"v" * 40_000
    request = to_request([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"x"), (b"x-big", big)], b"", (),
                         "h2c")

    async def send(url: str):
        target = H2Target(url, version="2")
        await target.start()
        try:
            return await target.send(PlannedRequest(0, 0, "c", request, b""), RealClock())
        finally:
            await target.close()

    with hypercorn(tmp_path) as (url, _):
        response = asyncio.run(send(url))[0]
    assert response.status == 200 and response.body == b"hello from nginx over h2c\n"


def test_timed_out_streams_are_cancelled_and_reported(pytester, tmp_path) -> None:
    """The app holds every request for 3 s, the replay allows 0.5 s: each exchange fails as a timeout
    (its stream reset with CANCEL, the connection kept for the others), no traceback, and the run ends."""
    with hypercorn(tmp_path, delay=3.0) as (url, _):
        result = replay(pytester, url, "--replay-timeout", "0.5", "--replay-allow-write", "POST ^/echo$")
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines(["*error (transport): timeout: no complete response within 0.5 s*"])
    result.stdout.fnmatch_lines(["*HTTP/2 captures over HTTP/2 (h2c with prior knowledge)*"])
    assert "Traceback" not in result.stdout.str()


def test_http_version_11_sends_http2_captures_over_http11(pytester, tmp_path) -> None:
    with hypercorn(tmp_path) as (url, log):
        result = replay(pytester, url, "--replay-http-version", "1.1", "--replay-allow-write", "POST ^/echo$")
        result.assert_outcomes(passed=5)
        result.stdout.fnmatch_lines(["*HTTP/2 captures over HTTP/1.1 (--replay-http-version 1.1; gRPC over HTTP/2)*"])
        lines = log_lines(log)
    assert [line[0] for line in lines] == ["1.1"] * 5
