"""Replay over HTTP/2: exchanges captured over HTTP/2 go to the target over HTTP/2 when it speaks it
(h2c with prior knowledge for http://, TLS with ALPN h2 for https://), over HTTP/1.1 otherwise;
gRPC always over HTTP/2. Everything captured over HTTP/1.x takes the HTTP/1.1 fast path (raw.py).

`--replay-http-version` (HTTP_VERSIONS): "auto" probes the target once, before the replay starts
(`probe`: the client preface and SETTINGS on a plain socket, or a TLS handshake offering h2), "2"
requires HTTP/2 (the probe failing is a usage error), "1.1" sends HTTP/2 captures over HTTP/1.1
(gRPC still goes over HTTP/2: it has no HTTP/1.1 form).

One TCP (or TLS) connection per captured connection: the plan gives the streams of a connection that
overlapped in the capture lanes of their own (schedule.plan.stream_lanes), which this target maps
back to their connection (`connection_of`) and multiplexes there, so concurrent streams stay
concurrent. The HTTP/2 state machine is python-hyper's `h2` (flow control both ways, SETTINGS,
MAX_CONCURRENT_STREAMS, trailers); bench/bench_h2_replay.py measures what it costs next to the
HTTP/1.1 engine.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ..http.h2 import is_grpc, to_response
from ..http.message import Request, Response
from ..schedule.plan import PlannedRequest, connection_of, slot_count
from ..schedule.target import REFUSED, RESET, TargetError
from .raw import RawTarget

HTTP_VERSIONS = ("auto", "1.1", "2")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_GOAWAY = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8)
# Not sent over HTTP/2 (RFC 9113 8.2.2): connection-specific fields, and Host (it becomes :authority).
_DROPPED = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                      b"host", b"http2-settings"})
_WINDOW = 1 << 24  # our receive window (stream and connection): responses are not throttled by us
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True, slots=True)
class Probe:
    """What the target answered to HTTP/2: `h2` True when it speaks it; `how` says what was seen."""

    h2: bool
    how: str


def probe(scheme: str, host: str, port: int, *, verify: bool = True, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """Does the server at host:port speak HTTP/2? One connection, closed at once (blocking)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return Probe(False, f"could not connect to {host}:{port} ({exc})")
    try:
        if scheme == "https":
            ctx = _tls_context(verify, ("h2", "http/1.1"))
            try:
                sock = ctx.wrap_socket(sock, server_hostname=host)
            except (ssl.SSLError, OSError) as exc:
                return Probe(False, f"TLS handshake failed ({exc})")
            chosen = sock.selected_alpn_protocol()
            if chosen == "h2":
                return Probe(True, "TLS with ALPN h2")
            return Probe(False, f"TLS without ALPN h2 (server chose {chosen or 'no protocol'})")
        sock.sendall(PREFACE + _EMPTY_SETTINGS)
        head = b""
        while len(head) < 9:
            data = sock.recv(9 - len(head))
            if not data:
                break
            head += data
        if len(head) == 9 and head[3] == 4 and not int.from_bytes(head[5:9], "big"):
            sock.sendall(_GOAWAY)
            return Probe(True, "h2c with prior knowledge")
        while head and b"\n" not in head and len(head) < 200:  # the status line of an HTTP/1.x answer
            data = sock.recv(200 - len(head))
            if not data:
                break
            head += data
        shown = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1", "replace")
        return Probe(False, f"the HTTP/2 preface was answered with {shown!r}" if head
                     else "the HTTP/2 preface was answered by closing the connection")
    except OSError as exc:
        return Probe(False, f"the HTTP/2 preface got no answer ({exc})")
    finally:
        sock.close()


def _tls_context(verify: bool, alpn: tuple[str, ...]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def h2_headers(request: Request, scheme: str, authority: str) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header list for a (possibly rewritten) request: pseudo-headers first, then its
    fields in order, names lower-cased, connection-specific ones dropped (TE only as 'trailers')."""
    out = [(b":method", request.method.encode("latin-1")), (b":scheme", scheme.encode()),
           (b":authority", authority.encode("latin-1")), (b":path", request.target.encode("latin-1"))]
    for name, value in request.headers:
        key = name.lower()
        if key in _DROPPED or (key == b"te" and value.strip().lower() != b"trailers"):
            continue
        out.append((key, value))
    return out


# -- one HTTP/2 connection ----------------------------------------------------------------------
class _Stream:
    __slots__ = ("waiter", "headers", "data", "trailers", "interim", "first_ns", "window")

    def __init__(self, waiter: asyncio.Future) -> None:
        self.waiter = waiter
        self.headers: list | None = None
        self.data: list[bytes] = []
        self.trailers: list = []
        self.interim: tuple[int, ...] = ()
        self.first_ns: int | None = None
        self.window: asyncio.Future | None = None  # set while the request body waits for flow control


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: many streams in flight, each `exchange` waiting for its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, now, protocol: str) -> None:
        self.loop = loop
        self.now = now
        self.protocol = protocol  # "h2c" or "h2": what the replayed responses say they came over
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW, h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.slot: asyncio.Future | None = None  # set while a stream waits under MAX_CONCURRENT_STREAMS
        self.closed: str | None = None  # why the connection can take no more streams

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_WINDOW - 65535)
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._lost(f"HTTP/2 protocol error from the server: {exc}")
            self.transport.abort()
            return
        now = self.now()
        for event in events:
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event, now)
        self.flush()

    def connection_lost(self, exc) -> None:
        self._lost("connection closed" if exc is None else f"connection lost ({type(exc).__name__}: {exc})")

    # events
    def _response(self, event, now: int) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.headers = event.headers
            stream.first_ns = now
            if event.stream_ended is not None:
                self._ended(event.stream_ended, now)

    def _informational(self, event, now: int) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            status = next((v for k, v in event.headers if k == b":status"), b"0")
            stream.interim += (int(status) if status.isdigit() else 0,)
            if stream.first_ns is None:
                stream.first_ns = now

    def _data(self, event, now: int) -> None:
        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.data.append(event.data)
            if event.stream_ended is not None:
                self._ended(event.stream_ended, now)

    def _trailers(self, event, now: int) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.trailers = event.headers
            if event.stream_ended is not None:
                self._ended(event.stream_ended, now)

    def _ended(self, event, now: int) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is None or stream.waiter.done():
            return
        if stream.headers is None:
            stream.waiter.set_exception(TargetError(RESET, "the stream ended without response headers",
                                                    first_byte_ns=stream.first_ns))
            return
        response = to_response(stream.headers, b"".join(stream.data), stream.trailers, stream.interim,
                               self.protocol)
        stream.waiter.set_result((response, stream.first_ns, now))
        self._free_slot()

    def _reset(self, event, now: int) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None and not stream.waiter.done():
            stream.waiter.set_exception(TargetError(
                RESET, f"the server reset the stream (RST_STREAM {_code(event.error_code)})",
                first_byte_ns=stream.first_ns))
        self._free_slot()

    def _window(self, event, now: int) -> None:
        stream = self.streams.get(event.stream_id) if event.stream_id else None
        for waiting in self.streams.values() if stream is None else (stream,):
            if waiting.window is not None and not waiting.window.done():
                waiting.window.set_result(None)

    def _settings(self, event, now: int) -> None:
        for waiting in self.streams.values():  # a new initial window may let request bodies go on
            if waiting.window is not None and not waiting.window.done():
                waiting.window.set_result(None)
        self._free_slot()

    def _goaway(self, event, now: int) -> None:
        why = f"the server sent GOAWAY ({_code(event.error_code)})"
        self.closed = why
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for stream_id in [s for s in self.streams if s > last]:
            stream = self.streams.pop(stream_id)
            if not stream.waiter.done():
                stream.waiter.set_exception(TargetError(RESET, f"{why} before answering this stream"))

    def _lost(self, why: str) -> None:
        self.closed = self.closed or why
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if not stream.waiter.done():
                where = "before any response byte" if stream.first_ns is None else "inside the response"
                stream.waiter.set_exception(TargetError(RESET, f"{why} {where}", first_byte_ns=stream.first_ns))
            if stream.window is not None and not stream.window.done():
                stream.window.set_result(None)
        self._free_slot()

    def _free_slot(self) -> None:
        slot = self.slot
        if slot is not None and not slot.done():
            slot.set_result(None)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and self.closed is None:
            self.transport.write(data)

    # the lanes' side
    async def exchange(self, headers: list, body: bytes, trailers) -> tuple[Response, int, int, int]:
        conn = self.h2
        while conn.open_outbound_streams >= conn.remote_settings.max_concurrent_streams and self.closed is None:
            self.slot = self.slot if self.slot is not None and not self.slot.done() else self.loop.create_future()
            await self.slot
        if self.closed is not None:
            raise TargetError(RESET, f"{self.closed}: no new stream could be opened")
        stream_id = conn.get_next_available_stream_id()
        stream = self.streams[stream_id] = _Stream(self.loop.create_future())
        try:
            sent = self.now()
            conn.send_headers(stream_id, headers, end_stream=not body and not trailers)
            self.flush()
            if body or trailers:
                await self._body(stream_id, stream, body)
                if trailers:
                    conn.send_headers(stream_id, list(trailers), end_stream=True)
                else:
                    conn.end_stream(stream_id)
                self.flush()
            response, first, done = await stream.waiter
            return response, sent, first, done
        except h2.exceptions.H2Error as exc:
            self.streams.pop(stream_id, None)
            raise TargetError(RESET, f"HTTP/2 stream {stream_id}: {exc}", sent_ns=sent) from None
        except asyncio.CancelledError:  # timed out or stopped: this stream is dropped, not the connection
            self.cancel(stream_id)
            raise

    async def _body(self, stream_id: int, stream: _Stream, body: bytes) -> None:
        conn = self.h2
        view = memoryview(body)
        while view:
            if self.closed is not None or stream.waiter.done():
                return  # the waiter says what happened
            allowed = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(view))
            if allowed <= 0:
                stream.window = self.loop.create_future()
                await stream.window
                stream.window = None
                continue
            conn.send_data(stream_id, bytes(view[:allowed]))
            view = view[allowed:]
            self.flush()

    def cancel(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None and self.closed is None:
            try:
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self.flush()
            except h2.exceptions.H2Error:
                pass
        self._free_slot()

    def close(self) -> None:
        if self.transport is not None and self.closed is None:
            self.closed = "closed by the replay"
            try:
                self.h2.close_connection()
                self.transport.write(self.h2.data_to_send())
            except h2.exceptions.H2Error:
                pass
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _code(code) -> str:
    return getattr(code, "name", str(code))


_HANDLERS = {
    h2.events.ResponseReceived: _Connection._response,
    h2.events.InformationalResponseReceived: _Connection._informational,
    h2.events.DataReceived: _Connection._data,
    h2.events.TrailersReceived: _Connection._trailers,
    h2.events.StreamEnded: _Connection._ended,
    h2.events.StreamReset: _Connection._reset,
    h2.events.WindowUpdated: _Connection._window,
    h2.events.RemoteSettingsChanged: _Connection._settings,
    h2.events.ConnectionTerminated: _Connection._goaway,
}


# -- the target ---------------------------------------------------------------------------------------
class H2Target:
    """An http:// or https:// target that replays HTTP/2 captures over HTTP/2 (module docstring).
    HTTP/1.x exchanges, and HTTP/2 ones the target or `version` sends over HTTP/1.1, go through
    `http1` (the RawTarget fast path)."""

    def __init__(self, url: str, *, version: str = "auto", verify: bool = True, keep_host: bool = False) -> None:
        if version not in HTTP_VERSIONS:
            raise ValueError(f"HTTP version {version!r}: expected one of {', '.join(HTTP_VERSIONS)}")
        self.http1 = RawTarget(url, verify=verify, keep_host=keep_host)
        self.name = self.url = self.http1.url
        self.scheme = self.http1.scheme
        self.version = version
        self.verify = verify
        self.keep_host = keep_host
        self.probed: Probe | None = None  # set by check() (or the first HTTP/2 request)
        self._ssl: ssl.SSLContext | None = None
        self._conns: dict[str, _Connection] = {}
        self._opening: dict[str, asyncio.Future] = {}
        self._closed_lanes: dict[str, set[str]] = {}  # captured connection -> its lanes closed so far
        self.opened = 0  # HTTP/2 connections opened (one per captured connection, unless one was lost)
        self.wire = self.http1.wire
        self.sent_host = self.http1.sent_host

    def __repr__(self) -> str:
        return f"H2Target({self.url!r}, version={self.version!r})"

    # what goes where
    def check(self, timeout: float = PROBE_TIMEOUT_S) -> Probe:
        """Probe the target once (blocking: before the replay starts) and remember the answer."""
        if self.probed is None:
            self.probed = probe(self.scheme, self.http1.hostname, self.http1.port, verify=self.verify,
                                timeout=timeout)
        return self.probed

    def choice(self) -> str:
        """What HTTP/2 captures go over, in words (the header line and the summary say it)."""
        if self.version == "1.1":
            return "HTTP/2 captures over HTTP/1.1 (--replay-http-version 1.1; gRPC over HTTP/2)"
        answer = self.check()
        if answer.h2:
            return f"HTTP/2 captures over HTTP/2 ({answer.how})"
        return f"HTTP/2 captures over HTTP/1.1 (the target does not speak HTTP/2: {answer.how})"

    def over_h2(self, request: Request) -> bool:
        if request.protocol == "http/1":
            return False
        if is_grpc(request.headers):
            return True
        return self.version == "2" or (self.version == "auto" and self.check().h2)

    # Target
    async def start(self) -> None:
        await self.http1.start()
        if self.scheme == "https":
            self._ssl = _tls_context(self.verify, ("h2",))

    async def send(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        request = planned.request
        if request.protocol == "http/1" or not self.over_h2(request):
            return await self.http1.send(planned, clock)
        answer = self.probed
        if answer is not None and not answer.h2 and self.version != "2":
            raise TargetError(REFUSED, f"gRPC needs HTTP/2 and {self.url} does not speak it ({answer.how})")
        conn = await self._connection(connection_of(planned.lane), clock)
        authority = request.host if self.keep_host and request.host else self.http1.host
        headers = h2_headers(request, self.scheme, authority)
        return await conn.exchange(headers, request.body, request.trailers)

    async def _connection(self, key: str, clock) -> _Connection:
        conn = self._conns.get(key)
        if conn is not None and conn.closed is None:
            return conn
        opening = self._opening.get(key)
        if opening is not None:  # another stream of this connection is connecting: share it
            return await asyncio.shield(opening)
        loop = asyncio.get_running_loop()
        opening = self._opening[key] = loop.create_future()
        try:
            conn = await self._open(loop, clock)
        except BaseException as exc:
            del self._opening[key]
            if not opening.done():
                opening.set_exception(exc)
                opening.exception()  # retrieved: the waiters raise it themselves
            raise
        del self._opening[key]
        opening.set_result(conn)
        self._conns[key] = conn
        return conn

    async def _open(self, loop, clock) -> _Connection:
        host, port = self.http1.hostname, self.http1.port
        protocol = "h2" if self.scheme == "https" else "h2c"
        try:
            transport, conn = await loop.create_connection(
                lambda: _Connection(loop, clock.now_ns, protocol), host, port, ssl=self._ssl,
                server_hostname=host if self._ssl is not None else None)
        except ConnectionRefusedError as exc:
            raise TargetError(REFUSED, f"connection refused by {host}:{port} ({exc.strerror or exc})") from None
        except ssl.SSLError as exc:
            raise TargetError(REFUSED, f"TLS handshake with {host}:{port} failed: {exc}") from None
        except OSError as exc:
            raise TargetError(REFUSED, f"could not connect to {host}:{port}: {exc}") from None
        if self._ssl is not None:
            chosen = transport.get_extra_info("ssl_object").selected_alpn_protocol()
            if chosen != "h2":
                transport.abort()
                raise TargetError(REFUSED, f"{host}:{port} did not agree to HTTP/2 in the TLS handshake "
                                           f"(ALPN: {chosen or 'none'})")
        self.opened += 1
        return conn

    def close_lane(self, lane: str) -> None:
        """The connection closes when every lane (slot) of its captured connection has closed: a slot
        whose streams came late in the capture may not have started yet when an early one ends."""
        self.http1.close_lane(lane)
        key = connection_of(lane)
        done = self._closed_lanes.setdefault(key, set())
        done.add(lane)
        if len(done) < slot_count(lane):
            return
        del self._closed_lanes[key]
        conn = self._conns.pop(key, None)
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.close()
        await self.http1.close()
