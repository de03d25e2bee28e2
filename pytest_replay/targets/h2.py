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
concurrent. Frames are walked here (`_Connection`: flow control both ways, SETTINGS,
MAX_CONCURRENT_STREAMS, trailers), python-hyper's `h2` state machine is the reference engine
(`_H2PackageConnection`, ENGINES["h2"]); bench/bench_h2_replay.py measures both next to the HTTP/1.1
engine. Per request: the header block is encoded once per request head (`H2Target._prepare`), the
frames of one loop iteration leave in one write per connection (`_Batch`), and response header blocks
are decoded and turned into Responses once per distinct block where HPACK allows
(http/h2.py `HpackDecoder`, `response_for_block`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from ..http.h2 import H2Error, HpackDecoder, is_grpc, response_for_block, to_response
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
MAX_PREPARED = 4096  # request heads whose HTTP/2 form H2Target keeps (emptied when full)


class Unprocessed(TargetError):
    """The server said it did not process the stream (GOAWAY below its id, RST_STREAM REFUSED_STREAM):
    safe to send again on a new connection, whatever the method (RFC 9113 8.7)."""

    def __init__(self, message: str) -> None:
        super().__init__(RESET, message)


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


class _H2PackageConnection(asyncio.Protocol):
    """One HTTP/2 connection on python-hyper's h2 state machine (the reference: ENGINES["h2"]). Many
    streams in flight, each `exchange` waiting for its own."""

    takes_block = False  # exchange() takes the request's header list

    def __init__(self, loop: asyncio.AbstractEventLoop, now, protocol: str, batch=None) -> None:
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
            why = f"the server reset the stream (RST_STREAM {_code(event.error_code)})"
            stream.waiter.set_exception(Unprocessed(why) if event.error_code == REFUSED_STREAM else
                                        TargetError(RESET, why, first_byte_ns=stream.first_ns))
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
                stream.waiter.set_exception(Unprocessed(f"{why} before answering this stream"))

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
    h2.events.ResponseReceived: _H2PackageConnection._response,
    h2.events.InformationalResponseReceived: _H2PackageConnection._informational,
    h2.events.DataReceived: _H2PackageConnection._data,
    h2.events.TrailersReceived: _H2PackageConnection._trailers,
    h2.events.StreamEnded: _H2PackageConnection._ended,
    h2.events.StreamReset: _H2PackageConnection._reset,
    h2.events.WindowUpdated: _H2PackageConnection._window,
    h2.events.RemoteSettingsChanged: _H2PackageConnection._settings,
    h2.events.ConnectionTerminated: _H2PackageConnection._goaway,
}


# -- the frame walker (the default) ---------------------------------------------------------------------
# Frame types and flags (RFC 9113 6), settings (6.5.2) and the HPACK bytes a request needs (RFC 7541).
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 5, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
S_MAX_CONCURRENT, S_INITIAL_WINDOW, S_MAX_FRAME = 3, 4, 5
REFUSED_STREAM = 7
_PLAIN_BLOCK = END_HEADERS | PADDED | PRIORITY  # a whole header block, no padding, no priority: END_HEADERS alone
OUR_MAX_FRAME = 1 << 14  # we do not raise SETTINGS_MAX_FRAME_SIZE: a longer frame is a server error
_OUR_SETTINGS = (b"\x00\x02" + (0).to_bytes(4, "big")  # ENABLE_PUSH 0
                 + b"\x00\x04" + _WINDOW.to_bytes(4, "big"))  # INITIAL_WINDOW_SIZE
# Fully indexed static entries (RFC 7541 Appendix A) for the common pseudo-header values.
_INDEXED = {(b":method", b"GET"): b"\x82", (b":method", b"POST"): b"\x83", (b":path", b"/"): b"\x84",
            (b":scheme", b"http"): b"\x86", (b":scheme", b"https"): b"\x87"}
_NAME_INDEX = {b":authority": 1, b":method": 2, b":path": 4, b":scheme": 6}


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise H2Error("bad padding")
    return payload[1:len(payload) - payload[0]]


_FRAME_HEAD = struct.Struct("!HBBBI")  # a frame's 9-byte header: 24-bit length (16 + 8), type, flags, stream


def _frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME_HEAD.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def _hpack_int(value: int, prefix: int, first: int) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_str(data: bytes) -> bytes:
    return _hpack_int(len(data), 7, 0) + data  # no Huffman: encoding time matters more than bytes here


def encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HPACK block that never touches the dynamic table (literal without indexing, names from the
    static table for pseudo-headers): nothing to keep in step with the server's decoder, and cheap."""
    out = []
    for pair in headers:
        indexed = _INDEXED.get(pair)
        if indexed is not None:
            out.append(indexed)
            continue
        name, value = pair
        index = _NAME_INDEX.get(name)
        if index is not None:
            out.append(_hpack_int(index, 4, 0) + _hpack_str(value))
        else:
            out.append(b"\x00" + _hpack_str(name) + _hpack_str(value))
    return b"".join(out)


class _FrameStream(_Stream):
    __slots__ = ("send_window", "received", "block", "sent")

    def __init__(self, waiter: asyncio.Future, window: int, sent: int = 0) -> None:
        self.waiter = waiter
        self.headers = None
        self.data = []
        self.trailers = []
        self.interim = ()
        self.first_ns = None
        self.window = None
        self.send_window = window  # what we may still send on this stream (the server's window)
        self.received = 0  # DATA bytes taken since our last WINDOW_UPDATE for the stream
        self.block = b""  # the response's header block (HpackDecoder remembers state-free ones)
        self.sent = sent  # when its HEADERS went out (set again when a batch is written)


class _Batch:
    """Writes of one event-loop iteration, written at its end (one callback): each connection's
    frames of the iteration (HEADERS of its new streams, WINDOW_UPDATEs, acks) go out in one write,
    and the connections are written back to back, as RawTarget's writer does for HTTP/1.1: a write
    to a loopback peer wakes the server, once per batch instead of once per request."""

    __slots__ = ("loop", "now", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, now) -> None:
        self.loop = loop
        self.now = now
        self.pending: list[_Connection] = []
        self.scheduled = False

    def add(self, conn: _Connection) -> None:
        self.pending.append(conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        self.scheduled = False
        now = self.now()
        for conn in pending:
            conn.flush(now)


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection, frames walked directly (ENGINES["frames"]): python-hyper's h2 state
    machine costs far more per exchange than the rest of the replay (bench/bench_h2_replay.py (c));
    it stays as the reference (_H2PackageConnection), and tests run both against the same servers.
    Flow control both ways, SETTINGS (concurrent streams, initial window, frame size), PING, GOAWAY,
    RST_STREAM, trailers, 1xx; response headers decoded by the capture parser's HPACK decoder.

    Per exchange it does as little Python as it can: the request's header block comes encoded
    (H2Target encodes it once per request), frames are written through a `_Batch` (one write per
    connection per loop iteration), received frames are walked where they lie in the data read,
    and the Response's head and fields are made once per distinct response header block
    (http.h2.response_for_block)."""

    takes_block = True  # exchange() takes the request's encoded header block

    def __init__(self, loop: asyncio.AbstractEventLoop, now, protocol: str, batch: _Batch | None = None) -> None:
        self.loop = loop
        self.now = now
        self.protocol = protocol
        self.batch = batch  # None: every frame written at once
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.out: list[bytes] = []  # frames waiting for the batch
        self.unsent: list[_FrameStream] = []  # streams whose HEADERS wait in `out`
        self.queued = False
        self.hpack = HpackDecoder(True)
        self.block: tuple | None = None  # (stream id, flags, [fragments]) of a header block in progress
        self.streams: dict[int, _FrameStream] = {}
        self.next_id = 1
        self.max_streams = 1 << 31
        self.initial_window = 65535  # the server's SETTINGS_INITIAL_WINDOW_SIZE: our new streams' send window
        self.send_window = 65535  # the connection's send window
        self.max_frame = OUR_MAX_FRAME  # the server's SETTINGS_MAX_FRAME_SIZE: our frames' limit
        self.received = 0  # DATA bytes taken since our last connection WINDOW_UPDATE
        self.slot: asyncio.Future | None = None
        self.closed: str | None = None

    # writing
    def _write(self, data: bytes) -> None:
        if self.batch is None:
            self.transport.write(data)
            return
        self.out.append(data)
        if not self.queued:
            self.queued = True
            self.batch.add(self)

    def flush(self, now: int) -> None:
        """The batch's turn: this connection's frames in one write; its new streams are sent now."""
        self.queued = False
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)
        for stream in self.unsent:
            stream.sent = now
        self.unsent.clear()

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(PREFACE + _frame(SETTINGS, 0, 0, _OUR_SETTINGS)
                        + _frame(WINDOW_UPDATE, 0, 0, (_WINDOW - 65535).to_bytes(4, "big")))

    def data_received(self, data: bytes) -> None:
        now = self.now()
        buf = self.buf
        try:
            if buf:
                buf += data
                data = bytes(buf)
                buf.clear()
            pos, n = 0, len(data)
            unpack, frame, on_data, on_headers = _FRAME_HEAD.unpack_from, self._frame, self._data, self._headers
            while n - pos >= 9:  # frames walked where they lie; a cut one waits in buf
                high, low, ftype, flags, stream_id = unpack(data, pos)
                length = high << 8 | low
                if length > OUR_MAX_FRAME:
                    raise H2Error(f"a {length}-byte frame (our SETTINGS_MAX_FRAME_SIZE is {OUR_MAX_FRAME})")
                end = pos + 9 + length
                if end > n:
                    break
                if self.block is None and (ftype == DATA or (ftype == HEADERS and flags & _PLAIN_BLOCK == END_HEADERS)):
                    # the frames of every response, straight to their handlers (_frame has the rest)
                    if ftype == DATA:
                        on_data(flags, stream_id & 0x7FFFFFFF, data[pos + 9:end], now)
                    else:
                        on_headers(stream_id & 0x7FFFFFFF, flags, data[pos + 9:end], now)
                else:
                    frame(ftype, flags, stream_id & 0x7FFFFFFF, data[pos + 9:end], now)
                pos = end
        except H2Error as exc:
            self._lost(f"HTTP/2 protocol error from the server: {exc}")
            self.transport.abort()
            return
        if pos < n:
            buf += data[pos:]

    def connection_lost(self, exc) -> None:
        self._lost("connection closed" if exc is None else f"connection lost ({type(exc).__name__}: {exc})")

    # frames
    def _frame(self, ftype: int, flags: int, stream_id: int, payload: bytes, now: int) -> None:
        if self.block is not None and ftype != CONTINUATION:
            raise H2Error(f"frame type {ftype} inside a header block")
        if ftype == DATA:
            self._data(flags, stream_id, payload, now)
        elif ftype == HEADERS:
            if flags & PADDED:
                payload = _unpad(payload)
            if flags & PRIORITY:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(stream_id, flags, payload, now)
            else:
                self.block = (stream_id, flags, [payload])
        elif ftype == CONTINUATION:
            if self.block is None or self.block[0] != stream_id:
                raise H2Error("CONTINUATION without its HEADERS")
            self.block[2].append(payload)
            if flags & END_HEADERS:
                stream_id, flags, parts = self.block
                self.block = None
                self._headers(stream_id, flags, b"".join(parts), now)
        elif ftype == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif ftype == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif ftype == PING:
            if not flags & ACK:
                self._write(_frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            code = int.from_bytes(payload[:4], "big")
            self._fail(stream_id, f"the server reset the stream (RST_STREAM {_code_name(code)})",
                       unprocessed=code == REFUSED_STREAM)
        elif ftype == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            why = f"the server sent GOAWAY ({_code_name(int.from_bytes(payload[4:8], 'big'))})"
            self.closed = self.closed or why
            for sid in [sid for sid in self.streams if sid > last]:
                self._fail(sid, f"{why} before answering this stream", unprocessed=True)
        elif ftype == PUSH_PROMISE:
            raise H2Error("PUSH_PROMISE although we disabled server push")
        # PRIORITY and unknown frame types: nothing to do

    def _data(self, flags: int, stream_id: int, payload: bytes, now: int) -> None:
        taken = len(payload)  # flow control counts the padding too
        if flags & PADDED:
            payload = _unpad(payload)
        self.received += taken
        if self.received >= _WINDOW // 2:
            self._write(_frame(WINDOW_UPDATE, 0, 0, self.received.to_bytes(4, "big")))
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.data.append(payload)
            stream.received += taken
            if flags & END_STREAM:
                self._end(stream_id, now)
            elif stream.received >= _WINDOW // 2:
                self._write(_frame(WINDOW_UPDATE, 0, stream_id, stream.received.to_bytes(4, "big")))
                stream.received = 0

    def _headers(self, stream_id: int, flags: int, block: bytes, now: int) -> None:
        headers, _ = self.hpack.decode(block)  # decoded even for a stream we dropped: HPACK state
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.first_ns is None:
            stream.first_ns = now
        first = headers[0] if headers else (b"", b"")
        status = first[1] if first[0] == b":status" else next(
            (value for name, value in headers if name == b":status"), None)
        if stream.headers is None and status is not None and status[:1] == b"1":
            stream.interim += (int(status) if status.isdigit() else 0,)
        elif stream.headers is None:
            stream.headers = headers
            stream.block = block
        else:
            stream.trailers = headers
        if flags & END_STREAM:
            self._end(stream_id, now)

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = int.from_bytes(payload[i:i + 2], "big"), int.from_bytes(payload[i + 2:i + 6], "big")
            if key == S_MAX_CONCURRENT:
                self.max_streams = value
            elif key == S_INITIAL_WINDOW:
                delta, self.initial_window = value - self.initial_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_MAX_FRAME:
                self.max_frame = value
        self._write(_frame(SETTINGS, ACK, 0))
        self._wake_senders()
        self._free_slot()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        if stream_id == 0:
            self.send_window += increment
            self._wake_senders()
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.send_window += increment
            if stream.window is not None and not stream.window.done():
                stream.window.set_result(None)

    def _wake_senders(self) -> None:
        for stream in self.streams.values():
            if stream.window is not None and not stream.window.done():
                stream.window.set_result(None)

    def _end(self, stream_id: int, now: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None or stream.waiter.done():
            return
        if stream.headers is None:
            stream.waiter.set_exception(TargetError(RESET, "the stream ended without response headers",
                                                    first_byte_ns=stream.first_ns))
        else:
            data = stream.data
            body = data[0] if len(data) == 1 else b"".join(data)
            response = response_for_block(stream.block, stream.headers, body, stream.trailers, stream.interim,
                                          self.protocol)
            stream.waiter.set_result((response, stream.first_ns, now))
        if self.slot is not None:
            self._free_slot()

    def _fail(self, stream_id: int, why: str, unprocessed: bool = False) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None and not stream.waiter.done():
            stream.waiter.set_exception(Unprocessed(why) if unprocessed else
                                        TargetError(RESET, why, first_byte_ns=stream.first_ns))
        self._free_slot()

    _lost = _H2PackageConnection._lost
    _free_slot = _H2PackageConnection._free_slot

    # the lanes' side
    async def exchange(self, block: bytes, body: bytes, trailers) -> tuple[Response, int, int, int]:
        """One stream: `block` is the request's HPACK header block (encode_headers)."""
        while len(self.streams) >= self.max_streams and self.closed is None:
            if self.slot is None or self.slot.done():
                self.slot = self.loop.create_future()
            await self.slot
        if self.closed is not None or self.next_id > 0x7FFFFFFF:
            raise TargetError(RESET, f"{self.closed or 'stream ids used up'}: no new stream could be opened")
        stream_id, self.next_id = self.next_id, self.next_id + 2
        stream = self.streams[stream_id] = _FrameStream(self.loop.create_future(), self.initial_window, self.now())
        try:
            if self.batch is not None:
                self.unsent.append(stream)
            self._write(self._header_frames(stream_id, block, not body and not trailers))
            if body or trailers:
                await self._body(stream_id, stream, body, not trailers)
                if trailers and stream_id in self.streams and self.closed is None:
                    self._write(self._header_frames(stream_id, encode_headers(list(trailers)), True))
            response, first, done = await stream.waiter
            return response, stream.sent, first, done
        except asyncio.CancelledError:
            self.cancel(stream_id)
            raise

    def _header_frames(self, stream_id: int, block: bytes, end_stream: bool) -> bytes:
        limit = self.max_frame
        flags = END_STREAM if end_stream else 0
        if len(block) <= limit:
            return _FRAME_HEAD.pack(len(block) >> 8, len(block) & 0xFF, HEADERS, flags | END_HEADERS,
                                    stream_id) + block
        chunks = [block[i:i + limit] for i in range(0, len(block), limit)]
        frames = [_frame(HEADERS, flags, stream_id, chunks[0])]
        frames += [_frame(CONTINUATION, 0, stream_id, c) for c in chunks[1:-1]]
        frames.append(_frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))
        return b"".join(frames)

    async def _body(self, stream_id: int, stream: _FrameStream, body: bytes, end: bool) -> None:
        view = memoryview(body)
        while view:
            if self.closed is not None or stream.waiter.done():
                return  # the waiter says what happened
            allowed = min(self.send_window, stream.send_window, self.max_frame, len(view))
            if allowed <= 0:
                stream.window = self.loop.create_future()
                await stream.window
                stream.window = None
                continue
            last = allowed == len(view)
            self._write(_frame(DATA, END_STREAM if last and end else 0, stream_id, bytes(view[:allowed])))
            self.send_window -= allowed
            stream.send_window -= allowed
            view = view[allowed:]
        if not body and end:
            self._write(_frame(DATA, END_STREAM, stream_id))

    def cancel(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None and self.closed is None:
            self._write(_frame(RST_STREAM, 0, stream_id, (8).to_bytes(4, "big")))  # CANCEL
        self._free_slot()

    def close(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.flush(self.now())  # what the batch has not written yet goes first
        if self.closed is None:  # (after the server's GOAWAY: just close)
            self.closed = "closed by the replay"
            transport.write(_frame(GOAWAY, 0, 0, bytes(8)))  # we accept no streams: last id 0, NO_ERROR
        transport.close()

    def abort(self) -> None:
        self.out.clear()
        if self.transport is not None:
            self.transport.abort()


_ERROR_CODES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
                "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
                "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")


def _code_name(code: int) -> str:
    return _ERROR_CODES[code] if code < len(_ERROR_CODES) else f"error code {code}"


ENGINES = {"frames": _Connection, "h2": _H2PackageConnection}


# -- the target ---------------------------------------------------------------------------------------
class H2Target:
    """An http:// or https:// target that replays HTTP/2 captures over HTTP/2 (module docstring).
    HTTP/1.x exchanges, and HTTP/2 ones the target or `version` sends over HTTP/1.1, go through
    `http1` (the RawTarget fast path)."""

    sends_bytes = True  # HTTP/1.x and malformed requests go out through http1 as captured

    def __init__(self, url: str, *, version: str = "auto", verify: bool = True, keep_host: bool = False,
                 engine: str = "frames") -> None:
        if version not in HTTP_VERSIONS:
            raise ValueError(f"HTTP version {version!r}: expected one of {', '.join(HTTP_VERSIONS)}")
        self.http1 = RawTarget(url, verify=verify, keep_host=keep_host)
        self.name = self.url = self.http1.url
        self.scheme, self.hostname, self.port, self.host = (self.http1.scheme, self.http1.hostname,
                                                           self.http1.port, self.http1.host)
        self.version = version
        self.connection_class = ENGINES[engine]  # "frames" (ours) or "h2" (python-hyper's, the reference)
        self.verify = verify
        self.keep_host = keep_host
        self.probed: Probe | None = None  # set by check() (or the first HTTP/2 request)
        self._ssl: ssl.SSLContext | None = None
        self._conns: dict[str, _Connection] = {}
        self._opening: dict[str, asyncio.Future] = {}
        self._closed_lanes: dict[str, set[str]] = {}  # captured connection -> its lanes closed so far
        self._probing: asyncio.Future | None = None
        self._prepared: dict[tuple, tuple] = {}  # (method, target, header fields) -> _prepare()'s answer
        self._batch: _Batch | None = None  # the frame walker's writes of one loop iteration
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
        if self.version == "2":
            return f"HTTP/2 captures need HTTP/2 (--replay-http-version 2), and the target does not speak it: {answer.how}"
        return f"HTTP/2 captures over HTTP/1.1 (the target does not speak HTTP/2: {answer.how})"

    def over_h2(self, request: Request) -> bool:
        if not request.http2:
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
        if not request.http2:
            return await self.http1.send(planned, clock)
        try:
            prepared = self._prepared.get((request.method, request.target, request.headers))
        except TypeError:  # fields that are not hashable (lists made by a hook): worked out each time
            prepared = None
        if prepared is None:
            if self.probed is None and self.version == "auto":  # not probed before the replay (a baseline target)
                await self._probe_once()
            prepared = self._prepare(request)
        if not prepared[0]:
            return await self.http1.send(planned, clock)
        headers = prepared[1]
        key = connection_of(planned.lane)
        conn = self._conns.get(key)
        if conn is None or conn.closed is not None:
            conn = await self._connection(key, clock)
        try:
            return await conn.exchange(headers, request.body, request.trailers)
        except Unprocessed:  # not processed by the server: once more (after a GOAWAY, on a new connection)
            conn = await self._connection(key, clock)
            return await conn.exchange(headers, request.body, request.trailers)

    def _prepare(self, request: Request) -> tuple:
        """(over HTTP/2?, what the connection engine sends: the encoded header block for the frame
        walker, the header list for the h2 package) for an HTTP/2 request, worked out once per method,
        target and header fields (all it depends on once the target is probed: requests of the same
        head share it, and a loop or a capacity run sends the same requests again). The bodies are
        not kept."""
        if not self.over_h2(request):
            prepared = (False, None)
        else:
            answer = self.probed
            if answer is not None and not answer.h2 and self.version != "2":
                raise TargetError(REFUSED, f"gRPC needs HTTP/2 and {self.url} does not speak it ({answer.how})")
            authority = request.host if self.keep_host and request.host else self.http1.host
            headers = h2_headers(request, self.scheme, authority)
            prepared = (True, encode_headers(headers) if self.connection_class.takes_block else headers)
        if len(self._prepared) >= MAX_PREPARED:
            self._prepared.clear()
        try:
            self._prepared[(request.method, request.target, request.headers)] = prepared
        except TypeError:
            pass
        return prepared

    async def _probe_once(self) -> None:
        """check() off the event loop (it blocks), once for every stream that needs it."""
        if self._probing is None:
            self._probing = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, self.check))
        await asyncio.shield(self._probing)

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
            if self.connection_class.takes_block and (self._batch is None or self._batch.loop is not loop):
                self._batch = _Batch(loop, clock.now_ns)
            transport, conn = await loop.create_connection(
                lambda: self.connection_class(loop, clock.now_ns, protocol, self._batch), host, port, ssl=self._ssl,
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
