"""The network fast path: captured request bytes over plain asyncio connections, responses framed by
the project's Framer (httptools underneath).

Why not httpx here: its connection pool scans every connection per request (~200-500 req/s at 32
connections, design.md section 3) and respx patches its transports process-wide; a Protocol with
httptools does ~17,500 req/s. One connection per lane (captured connection), opened lazily, reopened
when the server closed it between requests (keep-alive off, `Connection: close`).

A path prefix in the target URL (http://host/base) is not supported yet: request targets are sent
as captured, so such a URL is rejected rather than silently ignored.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from urllib.parse import urlsplit

from ..http.message import (CLOSED, UNPARSABLE as FLAG_UNPARSABLE, Request, Response, field_value, head_lines,
                            header_fields, is_chunked)
from ..http.parser import Framer, Lost, Parsed, Stop
from ..http.sensitive import url_without_password
from ..schedule.plan import PlannedRequest
from ..schedule.target import REFUSED, RESET, TRUNCATED, UNPARSABLE, TargetError

DEFAULT_PORTS = {"http": 80, "https": 443}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # RFC 9110 9.2.2: safe to resend
_CLOSE = re.compile(rb"\nconnection[ \t]*:[^\r\n]*\bclose\b", re.IGNORECASE)
_KEEP_ALIVE = re.compile(rb"\nconnection[ \t]*:[^\r\n]*\bkeep-alive\b", re.IGNORECASE)


# -- the bytes to send ------------------------------------------------------------------------------
def wire_bytes(request: Request, host: str | None) -> bytes:
    """The bytes a network target sends for `request`: its captured head with the Host header set
    to `host` (added after the request line if there was none; None keeps the captured Host), line
    endings normalized to CRLF, Content-Length set to the body length when the body is not chunked
    (a wrong one is fixed, duplicates dropped; none is added to a body-less request), a chunked body
    re-chunked from `request.body` as one chunk plus the captured trailers. Everything else (header
    order and case, Connection) is kept as captured. A malformed request (not valid HTTP/1.x,
    flagged malformed-request) is sent exactly as captured: its bytes are the point."""
    if request.protocol == "malformed":
        return request.raw
    if FAST_WIRE and request.protocol == "http/1":
        plain = _plain_wire_memo(request, host)
        if plain is not None:
            return plain
    lines = head_lines(request.head)
    fields = header_fields(lines[1:])  # each with its obs-fold lines: kept or dropped whole
    body = request.body
    # Which framing the body had: the last transfer coding decides (RFC 9112 6.1).
    chunked = is_chunked(field_value(tuple((name, value) for name, value, _ in fields), b"transfer-encoding"))
    out = [lines[0][0]]
    host_done = host is None
    length_done = chunked
    for name, _, raw in fields:
        key = name.strip().lower()
        if key == b"host" and host is not None:
            if not host_done:
                out.append(name + b": " + host.encode("latin-1"))
                host_done = True
            continue
        if key == b"content-length":
            if not length_done:
                out.append(name + b": " + str(len(body)).encode())
                length_done = True
            continue
        if key == b"transfer-encoding" and not chunked:
            continue  # a request coding other than chunked is not framing we can send
        out += [line for line, _ in raw]
    if not host_done:
        out.insert(1, b"Host: " + host.encode("latin-1"))
    if not length_done and body:
        out.append(b"Content-Length: " + str(len(body)).encode())
    head = b"\r\n".join(out) + b"\r\n\r\n"
    if not chunked:
        return head + body
    framed = [head]
    if body:
        framed += [b"%x\r\n" % len(body), body, b"\r\n"]
    framed.append(b"0\r\n")
    framed += [name + b": " + value + b"\r\n" for name, value in request.trailers]
    framed.append(b"\r\n")
    return b"".join(framed)


FAST_WIRE = True  # wire_bytes()'s default: the plain case without splitting the head (tests compare both)
# a line starting with a blank (folded), CR (an empty line before the end), VT or FF (which strip() takes from a name)
_ODD_LINE_START = re.compile(rb"\n[\r \t\x0b\x0c]").search


PLAIN_MEMO = 256  # heads remembered by _plain_wire_memo, at most (then forgotten all at once): a steady client
# repeats a few heads; a capture of distinct targets (an id in every path) repeats none, and a larger memo would
# only hold MBs of heads for the run's length
PLAIN_MEMO_HEAD = 1024  # and only heads up to this long: 512 KB at most (head and wire bytes)
_PLAIN: dict = {}  # (head, host) -> _plain_wire()'s answer
_MISS = object()


def _plain_wire_memo(request: Request, host: str | None) -> bytes | None:
    """_plain_wire(), remembered per short head and host when the request has no body (its answer depends
    on nothing else then): a capture's framer hands out the same head bytes for the same head (their hash
    kept by the bytes), so a steady client's requests are one lookup each (~0.2 us, where the checks and
    the cut cost ~2 us of the reader thread). Bounded: PLAIN_MEMO heads, then cleared."""
    head = request.head
    if len(head) > PLAIN_MEMO_HEAD or request.body:
        return _plain_wire(request, host)
    key = (head, host)
    plain = _PLAIN.get(key, _MISS)
    if plain is _MISS:
        if len(_PLAIN) >= PLAIN_MEMO:
            _PLAIN.clear()
        plain = _PLAIN[key] = _plain_wire(request, host)
    return plain


def _plain_wire(request: Request, host: str | None) -> bytes | None:
    """wire_bytes() for the plain case, from the head's bytes without splitting it (issue 13.1: the reader
    thread of a streamed run split every head into lines and fields, a fifth of its time), or None: not plain,
    the reference decides. Plain: no body; CRLF line endings only, the one empty line at the end; no line
    starting with a blank (folded), a CR, a vertical tab or a form feed (whitespace `strip()` takes from a
    name); no Content-Length or Transfer-Encoding anywhere in the head (not even inside a value); at most one
    line starting "host" (case-insensitively), and that one "host:". The reference keeps every line of such a
    head as it is and sets the Host line's value (or adds "Host:" after the request line): so does this. Tested
    against the reference (tests/test_percpu.py)."""
    head = request.head
    if request.body or not head.endswith(b"\r\n\r\n") or _ODD_LINE_START(head, 0, len(head) - 2) \
            or head.count(b"\n") != head.count(b"\r\n"):  # (bare LF)
        return None
    lower = head.lower()
    if lower.find(b"content-length") >= 0 or lower.find(b"transfer-encoding") >= 0:
        return None
    at = lower.find(b"\nhost")
    if at >= 0 and (lower[at + 5:at + 6] != b":" or lower.find(b"\nhost", at + 5) >= 0):
        return None
    if host is None:
        return head
    if at < 0:
        start = head.find(b"\n") + 1
        return head[:start] + b"Host: " + host.encode("latin-1") + b"\r\n" + head[start:]
    end = head.find(b"\n", at + 1) - 1
    return head[:at + 5] + b": " + host.encode("latin-1") + head[end:]


# -- one replay connection ----------------------------------------------------------------------------
def response_closes(head: bytes) -> bool:
    """Does the connection end after the response with this head? `Connection: close`, a 101, or an
    HTTP/1.0 response without `Connection: keep-alive`."""
    return (_CLOSE.search(head) is not None or head[9:12] == b"101"
            or (head.startswith(b"HTTP/1.0") and _KEEP_ALIVE.search(head) is None))


# Response heads the Framer's fast path framed whole (strict CRLF head, no Transfer-Encoding, one
# numeric Content-Length), answering a request whose method does not change the framing (not HEAD or
# CONNECT): head -> (the head, status, reason, version, body length, whether the connection ends).
# A server repeats its heads (within the second of their Date): a response whose head is known and
# whose bytes are exactly head + body needs no parsing (_Connection.data_received), and gets what the
# Framer would give it. Bounded: cleared when full; long heads are not kept.
_KNOWN: dict[bytes, tuple[bytes, int, str, str, int, bool]] = {}
_MAX_KNOWN = 1024
_MAX_KNOWN_HEAD = 1024
_REFRAMING = frozenset({"HEAD", "CONNECT"})  # methods whose response's framing is not the head's alone


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection of one lane. `start(planned, done)` sends one request and calls
    `done(response, sent_ns, first_ns, done_ns, error)` once, when its final response is complete
    (error None) or it failed (response None, error a TargetError). data_received feeds the Framer,
    whose fast path hands a whole response straight to `_response`; with `known` (the fast path), a
    response in one segment whose head is in _KNOWN is taken as it is, after the connection's first
    response (which the Framer checks is HTTP at all). `exchange` (a coroutine) is `start` on a
    future: what `RawTarget.send` uses."""

    def __init__(self, loop: asyncio.AbstractEventLoop, now, writer: _Writer | None = None,
                 known: bool = True) -> None:
        self.loop = loop
        self.now = now
        self.writer = writer
        self.known = known  # may use _KNOWN
        self.lean = False  # this request's response may be taken from _KNOWN
        self.retry = None  # the request in flight's resend (planned, done) on a new connection, if any
        self.transport: asyncio.Transport | None = None
        self.framer = Framer(False, on_head=self._method_of, on_message=self._message, on_answer=self._answer,
                             on_response=self._response)
        self.method = "GET"
        self.planned: PlannedRequest | None = None
        self.done = None  # the callback of the request in flight (None: nothing asked for)
        self.sent_ns: int | None = 0
        self.first_ns: int | None = None
        self.interim: tuple[int, ...] = ()
        self.received = 0
        self.closed = False
        self.reusable = True
        self.served = 0

    def _method_of(self, msg) -> str:
        return self.method

    def _answer(self, ack) -> str:
        return self.method

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.done is None:
            # Bytes nobody asked for (an idle-timeout 408, garbage): the next request can not trust
            # this connection.
            self.reusable = False
            self.transport.close()
            return
        now = self.now()
        if self.received == 0:  # the response's first bytes
            self.first_ns = now
            if self.lean:
                end = data.find(b"\r\n\r\n")
                known = _KNOWN.get(data[:end + 4]) if end > 0 else None
                if known is not None and len(data) - end - 4 == known[4]:
                    self.received = len(data)
                    head, status, reason, version, length, closes = known
                    self._finish(Response(status, reason, version, head, data[end + 4:] if length else b"", data),
                                 now, closes)
                    return
        self.received += len(data)
        served = self.served
        self.framer.feed(data, now)  # a whole response in `data`: _response is called from here
        if self.done is not None and self.served == served:  # (not the next request's)
            self._drain(now)

    def eof_received(self):
        return False  # close our side too; connection_lost settles a close-delimited body

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.reusable = False
        if self.done is None:
            return
        how = "connection closed" if exc is None else f"connection reset ({exc})" \
            if isinstance(exc, ConnectionResetError) else f"connection lost ({type(exc).__name__}: {exc})"
        self.framer.close(None if exc is None else CLOSED, how if exc is not None else "")
        self._drain(self.now())
        if self.done is not None:
            where = "before any response byte" if self.received == 0 else \
                f"inside the response head ({self.received} bytes received)"
            self._fail(RESET, f"{how} {where}")

    # framing
    def _drain(self, now: int) -> None:
        framer = self.framer
        while self.done is not None and (event := framer.next_event()) is not None:
            kind = type(event)
            if kind is Parsed:
                self._message(event, now)
            elif kind is Lost:
                if event.code == CLOSED:
                    return  # an incomplete head at the close: connection_lost reports it
                self._fail(UNPARSABLE, f"not an HTTP/1.x response: {event.detail}")
            elif kind is Stop:
                self._fail(UNPARSABLE, f"not an HTTP/1.x response: {event.detail}")

    def _message(self, msg: Parsed, now: int | None = None) -> None:
        """A framed response (the Framer's general path, or a 1xx from its fast path)."""
        if self.done is None:
            return
        status = msg.status
        if status < 200 and status != 101:
            self.interim += (status,)  # 1xx interim responses: keep waiting for the final one
            return
        if msg.flags:
            code, detail = msg.flags[0]
            if code == FLAG_UNPARSABLE:
                self._fail(UNPARSABLE, f"unparsable response body: {detail}")
            else:
                self._fail(TRUNCATED, f"response truncated: {detail}")
            return
        self._complete(Response(msg.status, msg.reason, msg.version, msg.head, msg.body, msg.raw, msg.trailers,
                                self.interim, msg.lf_only), msg.end_ts_ns if now is None else now)

    def _response(self, response: Response, end: int, ts_ns: int, frame: int) -> None:
        """A whole final response from one segment (the Framer's fast path: no trailers, CRLF head)."""
        if self.interim:
            response = Response(response.status, response.reason, response.version, response.head, response.body,
                                response.raw, (), self.interim, False)
        elif self.known and self.method not in _REFRAMING and len(response.head) <= _MAX_KNOWN_HEAD:
            head = response.head
            if len(_KNOWN) >= _MAX_KNOWN:
                _KNOWN.clear()
            _KNOWN[head] = (head, response.status, response.reason, response.version, len(response.body),
                            response_closes(head))
        self._complete(response, ts_ns)

    def _complete(self, response: Response, now: int) -> None:
        self._finish(response, now, response_closes(response.head) or not self.framer.idle)

    def _finish(self, response: Response, now: int, closes: bool) -> None:
        if closes:
            self.reusable = False
            if not self.closed:
                self.transport.close()
        done, self.done = self.done, None
        self.served += 1
        done(response, self.sent_ns, self.first_ns, now, None)

    def _fail(self, kind: str, message: str) -> None:
        self.reusable = False
        if not self.closed:
            self.transport.abort()
        done, self.done = self.done, None
        if done is None:
            return
        planned, self.planned = self.planned, None
        retry, self.retry = self.retry, None
        if kind == RESET and retry is not None and self.served and self.received == 0 \
                and planned.request.method in IDEMPOTENT:
            # A kept-alive connection the server closed just as we reused it: nothing was answered,
            # so an idempotent request is sent again on a fresh connection (what HTTP clients do).
            retry(planned, done)
            return
        done(None, self.sent_ns, self.first_ns, self.now(),
             TargetError(kind, message, sent_ns=self.sent_ns, first_byte_ns=self.first_ns))

    # the lane's side
    def start(self, planned: PlannedRequest, done, retry=None) -> None:
        """Send `planned`; `done` is called once with its outcome (never from inside this call).
        `retry(planned, done)`: how to resend it when the server closed this kept-alive connection
        before answering (None: `done` gets the RESET)."""
        method = self.method = planned.request.method
        self.planned = planned
        self.done = done
        self.retry = retry
        self.first_ns = None
        self.interim = ()
        self.received = 0
        self.lean = self.known and self.framer.messages > 0 and method not in _REFRAMING
        if _CLOSE.search(planned.request.head):
            self.reusable = False  # the server will close after answering
        writer = self.writer
        if writer is None:
            self.sent_ns = self.now()
            self.transport.write(planned.wire)
        else:
            self.sent_ns = None  # set when the batch goes out (a failure before: the engine's send time)
            writer.write(self, planned.wire)

    async def exchange(self, planned: PlannedRequest) -> tuple[Response, int, int, int]:
        """`start` on a future (no retry: RawTarget.send retries itself)."""
        waiter = self.loop.create_future()

        def done(response, sent_ns, first_ns, done_ns, error) -> None:
            if not waiter.done():
                if error is None:
                    waiter.set_result((response, sent_ns, first_ns, done_ns))
                else:
                    waiter.set_exception(error)

        self.start(planned, done)
        try:
            return await waiter
        finally:
            self.done = self.planned = None

    def drop(self) -> None:
        """Forget the request in flight (its `done` is never called) and abort the connection."""
        self.done = self.planned = self.retry = None
        self.abort()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()


class _Writer:
    """Batched writes: the requests of one event-loop iteration are written back to back at its end
    (one callback), instead of one at a time between the parsing of responses. Each write to a loopback
    peer wakes the server; interleaved with our own work that is a context switch per request, back to
    back the server wakes once and reads them all (bench/bench_replay.py (a) measures both)."""

    __slots__ = ("loop", "now", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, now) -> None:
        self.loop = loop
        self.now = now
        self.pending: list[tuple[_Connection, bytes]] = []
        self.scheduled = False

    def write(self, conn: _Connection, data: bytes) -> None:
        self.pending.append((conn, data))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        self.scheduled = False
        now = self.now()
        for conn, data in pending:
            if conn.closed or conn.done is None:  # dropped (timeout, stop) before its turn
                continue
            conn.sent_ns = now
            try:
                conn.transport.write(data)
            except Exception as exc:  # noqa: BLE001 - one connection's failure, not the batch's
                conn._fail(RESET, f"could not write the request ({type(exc).__name__}: {exc})")


# -- the target ------------------------------------------------------------------------------------------
class RawTarget:
    """Sends `planned.wire` to an http:// or https:// server (see module docstring).
    `verify=False` accepts any TLS certificate. The Host header is set to the target's authority,
    unless `keep_host`: then the request's own Host is sent (the captured one, GoReplay's
    --http-original-host, or one set with --replay-set-header)."""

    fast_path = True

    def __init__(self, url: str, *, verify: bool = True, keep_host: bool = False, batch: bool = True,
                 fast: bool | None = None) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"target URL must start with http:// or https://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"target URL has no host: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"credentials in the target URL are not supported: {url_without_password(url)!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"a path, query or fragment in the target URL is not supported yet (request "
                             f"targets are sent as captured): {url!r}; use {scheme}://{parts.netloc}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port in the target URL {url!r}: {exc}") from None
        self.name = f"{scheme}://{parts.netloc}"
        self.url = self.name
        self.scheme = scheme
        self.hostname = parts.hostname
        self.port = port or DEFAULT_PORTS[scheme]
        self.host = parts.netloc  # the Host header value: as the user wrote it
        self.verify = verify
        self.keep_host = keep_host
        self.idempotent_retry = True
        self._ssl: ssl.SSLContext | None = None
        self._conns: dict[str, _Connection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batch = batch  # batched writes (_Writer); False: each request written as its lane sends it
        # A response whose head was framed before is taken without parsing (_KNOWN); False: the Framer
        # frames every response (the reference the tests compare with). Default: the class attribute.
        self.fast = self.fast_path if fast is None else fast
        self._writer: _Writer | None = None
        self._clock = None  # the engine's clock, for a resend begun from a callback
        self._resends: dict[str, asyncio.Task] = {}  # lane -> a request sent again on a new connection

    sends_bytes = True  # the captured bytes go out as such (a malformed request too)

    def __repr__(self) -> str:
        return f"RawTarget({self.url!r})"

    def wire(self, request: Request) -> bytes:
        """The bytes to plan for `request` on this target (Host set to the target's authority)."""
        return wire_bytes(request, None if self.keep_host else self.host)

    def sent_host(self, request: Request) -> str | None:
        """The Host header this target sends for `request`."""
        return request.host if self.keep_host else self.host

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.scheme == "https":
            ctx = ssl.create_default_context()
            if not self.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl = ctx

    async def _connect(self, lane: str, clock) -> _Connection:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        now = clock.now_ns
        writer = self._writer
        if self.batch and (writer is None or writer.loop is not loop or writer.now != now):
            writer = self._writer = _Writer(loop, now)
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(loop, now, writer if self.batch else None, self.fast), self.hostname, self.port,
                ssl=self._ssl,
                server_hostname=self.hostname if self._ssl is not None else None)
        except ConnectionRefusedError as exc:
            raise TargetError(REFUSED, f"connection refused by {self.hostname}:{self.port} ({exc.strerror or exc})") \
                from None
        except ssl.SSLError as exc:
            raise TargetError(REFUSED, f"TLS handshake with {self.hostname}:{self.port} failed: {exc}") from None
        except OSError as exc:
            raise TargetError(REFUSED, f"could not connect to {self.hostname}:{self.port}: {exc}") from None
        self._conns[lane] = conn
        return conn

    def begin(self, planned: PlannedRequest, clock, done) -> bool:
        """The engine's fast path: send `planned` on its lane's open connection, and call
        `done(response, sent_ns, first_byte_ns, done_ns, error)` once, from the event loop (never from
        inside this call), when its final response is complete (error None) or it failed (response
        None, error a TargetError). Returns False, doing nothing, when the lane has no reusable
        connection: the engine then awaits `send`, which connects. After `abort_lane`, `done` is not
        called. The outcome is the one `send` would give (the idempotent resend included)."""
        conn = self._conns.get(planned.lane)
        if conn is None or not conn.reusable:
            return False
        self._clock = clock
        conn.start(planned, done, self._resend if self.idempotent_retry else None)
        return True

    def _resend(self, planned: PlannedRequest, done) -> None:
        """A request begun on a kept-alive connection the server closed before answering: send it
        again on a new connection (what `send` does inline), then call its `done`."""
        lane = planned.lane
        self._conns.pop(lane, None)
        loop = self._loop or asyncio.get_running_loop()
        task = self._resends[lane] = loop.create_task(self._exchange_anew(planned, self._clock))

        def resent(task: asyncio.Task) -> None:
            if self._resends.get(lane) is task:
                del self._resends[lane]
            if task.cancelled():  # abort_lane: the engine gave up on it
                return
            exc = task.exception()
            if exc is None:
                done(*task.result(), None)
            else:
                done(None, None, None, self._clock.now_ns(), exc)

        task.add_done_callback(resent)

    async def _exchange_anew(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        lane = planned.lane
        conn = await self._connect(lane, clock)
        try:
            return await conn.exchange(planned)
        except BaseException:
            self._conns.pop(lane, None)
            conn.abort()
            raise

    def abort_lane(self, lane: str) -> None:
        """The engine gives up on the lane's request in flight (timeout, stop): its `done` will not be
        called, and the connection, which may be stuck, is dropped."""
        conn = self._conns.pop(lane, None)
        if conn is not None:
            conn.drop()
        task = self._resends.pop(lane, None)
        if task is not None:
            task.cancel()

    async def send(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        lane = planned.lane
        conn = self._conns.get(lane)
        if conn is None or not conn.reusable:
            if conn is not None:
                conn.close()
            conn = await self._connect(lane, clock)
        try:
            return await conn.exchange(planned)
        except TargetError as exc:
            self._conns.pop(lane, None)
            # A kept-alive connection the server closed just as we reused it: nothing was answered,
            # so an idempotent request is sent again on a fresh connection (what HTTP clients do).
            if exc.kind == RESET and conn.served and conn.received == 0 and self.idempotent_retry \
                    and planned.request.method in IDEMPOTENT:
                return await self._exchange_anew(planned, clock)
            raise
        except BaseException:  # cancelled (timeout, stop): the connection may be stuck, drop it
            self._conns.pop(lane, None)
            conn.abort()
            raise

    def close_lane(self, lane: str) -> None:
        conn = self._conns.pop(lane, None)
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        resends, self._resends = self._resends, {}
        for task in resends.values():
            task.cancel()
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.close()
        if conns:
            await asyncio.sleep(0)  # let the transports run their close callbacks
