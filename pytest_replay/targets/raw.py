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


# -- one replay connection ----------------------------------------------------------------------------
class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection of one lane. `exchange` sends one request and waits for its final
    response; data_received feeds the Framer and settles the waiting future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, now, writer: _Writer | None = None) -> None:
        self.loop = loop
        self.now = now
        self.writer = writer
        self.transport: asyncio.Transport | None = None
        self.framer = Framer(False, on_head=self._method_of)
        self.method = "GET"
        self.waiter: asyncio.Future | None = None
        self.sent_ns = 0
        self.first_ns: int | None = None
        self.interim: tuple[int, ...] = ()
        self.received = 0
        self.closed = False
        self.reusable = True
        self.served = 0

    def _method_of(self, msg) -> str:
        return self.method

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (an idle-timeout 408, garbage): the next request can not trust
            # this connection.
            self.reusable = False
            self.transport.close()
            return
        now = self.now()
        if self.first_ns is None:
            self.first_ns = now
        self.received += len(data)
        self.framer.feed(data, now)
        self._drain(now)

    def eof_received(self):
        return False  # close our side too; connection_lost settles a close-delimited body

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.reusable = False
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        how = "connection closed" if exc is None else f"connection reset ({exc})" \
            if isinstance(exc, ConnectionResetError) else f"connection lost ({type(exc).__name__}: {exc})"
        self.framer.close(None if exc is None else CLOSED, how if exc is not None else "")
        self._drain(self.now())
        if not waiter.done():
            where = "before any response byte" if self.received == 0 else \
                f"inside the response head ({self.received} bytes received)"
            self._fail(RESET, f"{how} {where}")

    # framing
    def _drain(self, now: int) -> None:
        framer = self.framer
        while (event := framer.next_event()) is not None:
            kind = type(event)
            if kind is Parsed:
                status = event.status
                if status < 200 and status != 101:
                    self.interim += (status,)  # 1xx interim responses: keep waiting for the final one
                    continue
                if event.flags:
                    code, detail = event.flags[0]
                    if code == FLAG_UNPARSABLE:
                        self._fail(UNPARSABLE, f"unparsable response body: {detail}")
                    else:
                        self._fail(TRUNCATED, f"response truncated: {detail}")
                    return
                self._complete(event, now)
                return
            if kind is Lost:
                if event.code == CLOSED:
                    return  # an incomplete head at the close: connection_lost reports it
                self._fail(UNPARSABLE, f"not an HTTP/1.x response: {event.detail}")
                return
            if kind is Stop:
                self._fail(UNPARSABLE, f"not an HTTP/1.x response: {event.detail}")
                return

    def _complete(self, msg: Parsed, now: int) -> None:
        head = msg.head
        response = Response(msg.status, msg.reason, msg.version, head, msg.body, msg.raw, msg.trailers,
                            self.interim, msg.lf_only)
        if _CLOSE.search(head) or msg.status == 101 or (msg.version == "1.0" and not _KEEP_ALIVE.search(head)) \
                or not self.framer.idle:
            self.reusable = False
            if not self.closed:
                self.transport.close()
        self.waiter.set_result((response, self.first_ns, now))

    def _fail(self, kind: str, message: str) -> None:
        self.reusable = False
        if not self.closed:
            self.transport.abort()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TargetError(kind, message, sent_ns=self.sent_ns, first_byte_ns=self.first_ns))

    # the lane's side
    async def exchange(self, planned: PlannedRequest) -> tuple[Response, int, int, int]:
        method = planned.request.method
        self.method = method
        waiter = self.waiter = self.loop.create_future()
        self.first_ns = None
        self.interim = ()
        self.received = 0
        if _CLOSE.search(planned.request.head):
            self.reusable = False  # the server will close after answering
        writer = self.writer
        if writer is None:
            self.sent_ns = self.now()
            self.transport.write(planned.wire)
        else:
            self.sent_ns = None  # set when the batch goes out (a failure before: the engine's send time)
            writer.write(self, planned.wire)
        try:
            response, first, done = await waiter
        finally:
            self.waiter = None
        self.served += 1
        return response, self.sent_ns, first, done

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
            if conn.closed or conn.waiter is None:  # dropped (timeout, stop) before its turn
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

    def __init__(self, url: str, *, verify: bool = True, keep_host: bool = False, batch: bool = True) -> None:
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
        self._writer: _Writer | None = None

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
                lambda: _Connection(loop, now, writer if self.batch else None), self.hostname, self.port, ssl=self._ssl,
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
                conn = await self._connect(lane, clock)
                try:
                    return await conn.exchange(planned)
                except BaseException:
                    self._conns.pop(lane, None)
                    conn.abort()
                    raise
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
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            conn.close()
        if conns:
            await asyncio.sleep(0)  # let the transports run their close callbacks
