"""Recording without root: ``python -m pytest_replay record`` (no pytest import).

    python -m pytest_replay record --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000 -o capture.gor

A reverse proxy on asyncio streams. Each client connection gets its own upstream connection (the
capture keeps connection affinity, as a packet capture would); both sides stay open between
requests (HTTP/1.1 keep-alive) and pipelined requests are answered in order, one at a time. Bodies,
Content-Length or chunked, are passed through as they arrive, never held whole: what is kept for
the capture is at most --max-body-size per message (a body over it is stored without its bytes and
the summary says how many).

The capture is GoReplay's format, a request (type 1) and its response (type 2) per exchange, with
GoReplay's 24-hex ids (client port, listen port, client IPv4, then a per-connection sequence number,
as GoReplay uses the TCP sequence number), timestamps (when each head arrived, ns since the epoch)
and latencies (how long each message took to arrive). Each exchange is written in one write once
its response has been passed on whole (capture/writer.py: GorAppender), so the file holds whole
exchanges only, also after Ctrl-C or SIGTERM. An exchange that got no response (upstream down, or
gone mid-response) is written as its request alone: readers see a request without a response.

Secrets and personal data are replaced at write time by the masker `redact` uses (policy/redact.py):
the file never holds them unless --keep-secrets. Replays of a redacted capture supply credentials
with --replay-set-header.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import pickle
import random
import re
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .capture.limits import format_size, parse_size
from .capture.writer import GorAppender, gor_record
from .http.message import Request, Response, is_chunked
from .http.parser import MAX_HEAD, fast_message, framing_headers, parse_head, parse_single
from .policy.redact import Redactor

__all__ = ["DEFAULT_MAX_BODY", "build_parser", "main"]

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_MAX_BODY = 8 << 20  # bytes of one body kept in the capture (and in memory while it passes)
CHUNK = 64 << 10  # bytes read at a time from either side
CONNECT_TIMEOUT = 10.0  # seconds to reach the upstream
WRITER_BACKLOG = 4 << 20  # bytes of finished exchanges queued for the writer process before the proxy waits
MAX_ERROR_LINES = 20  # errors printed as they happen; the rest are only counted
_END_HEAD = b"\r\n\r\n"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})  # may be sent again (RFC 9110 9.2.2)

# Body framings
NONE, LENGTH, CHUNKED, UNTIL_CLOSE = "none", "length", "chunked", "until-close"


class BadMessage(Exception):
    """A message whose framing cannot be followed (an invalid Content-Length or chunk size)."""


class Broken(Exception):
    """One side went away (closed or reset) in the middle of an exchange."""

    def __init__(self, side: str, detail: str = "closed the connection") -> None:
        super().__init__(f"{side} {detail}")
        self.side = side


# -- framing ----------------------------------------------------------------------------------------
def _content_length(value: bytes) -> int:
    values = {v.strip() for v in value.split(b",")}
    if len(values) != 1:
        raise BadMessage("Content-Length values disagree")
    text = values.pop()
    if not text.isdigit() or len(text) > 18:
        raise BadMessage(f"invalid Content-Length {text[:20]!r}")
    return int(text)


def request_framing(head: bytes) -> tuple[str, int]:
    """(framing, length) of a request body (RFC 9112 6.3); BadMessage for what a proxy must refuse."""
    te, cl = framing_headers(head)
    if te is not None:
        if cl is not None:
            raise BadMessage("both Transfer-Encoding and Content-Length (refused: request smuggling)")
        if not is_chunked(te):
            raise BadMessage(f"Transfer-Encoding {te[:40]!r} does not end with chunked")
        return CHUNKED, 0
    if cl is not None:
        length = _content_length(cl)
        return (LENGTH, length) if length else (NONE, 0)
    return NONE, 0


def response_framing(head: bytes, method: str, status: int) -> tuple[str, int]:
    if method == "HEAD" or status < 200 or status in (204, 304) or (method == "CONNECT" and status < 300):
        return NONE, 0
    te, cl = framing_headers(head)
    if te is not None:
        return (CHUNKED, 0) if is_chunked(te) else (UNTIL_CLOSE, 0)
    if cl is not None:
        length = _content_length(cl)
        return (LENGTH, length) if length else (NONE, 0)
    return UNTIL_CLOSE, 0


_CONNECTION = re.compile(rb"\nconnection[ \t]*:([^\r\n]*)", re.IGNORECASE)


def _connection_tokens(head: bytes) -> set[bytes]:
    return {token.strip().lower() for value in _CONNECTION.findall(head) for token in value.split(b",")}


def keeps_alive(head: bytes, version: str) -> bool:
    """Does the connection stay open after this message (RFC 9112 9.3)?"""
    tokens = _connection_tokens(head)
    if version == "1.0":
        return b"keep-alive" in tokens
    return b"close" not in tokens


def _buffered(reader: asyncio.StreamReader) -> bool:
    """Has `reader` bytes at hand (a body that came in the same segment as its head)? A private
    attribute of asyncio's StreamReader, read only to save a send: False if it is ever gone."""
    return bool(getattr(reader, "_buffer", None))


# -- what is kept of a body -------------------------------------------------------------------------
class Body:
    """The bytes of a body as they passed (chunk framing included), kept up to `cap`."""

    __slots__ = ("parts", "size", "cap", "over")

    def __init__(self, cap: int) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.cap = cap
        self.over = False

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.over:
            return
        if self.size > self.cap:
            self.over = True
            self.parts.clear()
        else:
            self.parts.append(data)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


# -- one side's stream ------------------------------------------------------------------------------
async def _read(reader: asyncio.StreamReader, n: int, side: str) -> bytes:
    try:
        data = await reader.read(n)
    except ConnectionError as exc:
        raise Broken(side, f"reset the connection ({exc.__class__.__name__})") from None
    if not data:
        raise Broken(side)
    return data


async def _line(reader: asyncio.StreamReader, side: str) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise Broken(side) from None
    except asyncio.LimitOverrunError:
        raise BadMessage(f"a chunk-size or trailer line longer than {MAX_HEAD} bytes") from None
    except ConnectionError as exc:
        raise Broken(side, f"reset the connection ({exc.__class__.__name__})") from None


async def _send(writer: asyncio.StreamWriter, data: bytes, side: str) -> None:
    if writer.transport.is_closing():
        raise Broken(side)
    writer.write(data)
    try:
        await writer.drain()
    except ConnectionError as exc:
        raise Broken(side, f"reset the connection ({exc.__class__.__name__})") from None


async def copy_body(framing: tuple[str, int], src: asyncio.StreamReader, dst: asyncio.StreamWriter | None,
                    body: Body, names: tuple[str, str], head: bytes = b"") -> None:
    """Pass a body from `src` to `dst` as it arrives (dst None: read and drop it), keeping what
    `body` keeps. `names`: the sides, for Broken (the one read from, the one written to). `head`:
    bytes to send with the body's first bytes (one send instead of two, for a length or chunked
    body whose first bytes are at hand)."""
    kind, length = framing
    source, sink = names
    pending = [head] if head else []

    async def forward(data: bytes) -> None:
        body.add(data)
        if dst is not None:
            if pending:
                data = pending.pop() + data
            await _send(dst, data, sink)

    if kind == LENGTH:
        while length:
            data = await _read(src, min(length, CHUNK), source)
            length -= len(data)
            await forward(data)
    elif kind == CHUNKED:
        while True:
            line = await _line(src, source)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadMessage(f"invalid chunk size {size_text[:20]!r}") from None
            if size < 0 or len(size_text) > 16:
                raise BadMessage(f"invalid chunk size {size_text[:20]!r}")
            await forward(line)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = await _line(src, source)
                    await forward(line)
                    if line in (b"\r\n", b"\n"):
                        return
            while size:
                data = await _read(src, min(size, CHUNK), source)
                size -= len(data)
                await forward(data)
            end = await _line(src, source)
            if end not in (b"\r\n", b"\n"):
                raise BadMessage("chunk data longer than its size")
            await forward(end)
    elif kind == UNTIL_CLOSE:
        while True:
            try:
                data = await _read(src, CHUNK, source)
            except Broken:
                return
            await forward(data)


# -- the recording ----------------------------------------------------------------------------------
# Masking an exchange costs the redactor ~1-2 ms of Python (policy/redact.py), several times what the
# proxy itself adds per request. So exchanges are written by a writer process of their own (on
# another core): the proxy sends each finished exchange down a pipe and goes on. When the writer
# falls behind, the pipe fills and the proxy waits for it (memory stays bounded).
_FRAME = struct.Struct("!I")


@dataclass(slots=True)
class Message:
    """One message as it passed: head, body kept, when its head arrived and how long it took."""

    head: bytes
    body: Body
    ts_ns: int
    latency_ns: int

    def wire(self) -> tuple:
        return (self.head, self.body.bytes(), self.body.over, self.ts_ns, self.latency_ns)


def _frame(obj) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


def _read_frame(stream):
    size = stream.read(_FRAME.size)
    if len(size) < _FRAME.size:
        return None
    data = stream.read(_FRAME.unpack(size)[0])
    return pickle.loads(data)  # noqa: S301 - from our own proxy, over a pipe it made


class Writer:
    """In the writer process: each exchange redacted (unless redactor is None) and appended whole."""

    def __init__(self, path: str, redactor: Redactor | None, max_body: int, err) -> None:
        self.out = GorAppender(path)
        self.redactor = redactor
        self.max_body = max_body
        self.err = err
        self.counts: Counter = Counter()
        self.redactions: Counter = Counter()  # the masker's counts: (kind, name) -> n

    def write(self, rid: str, method: str, request: tuple, response: tuple | None) -> None:
        try:
            records = [gor_record(1, rid, request[3], request[4], self._stored(request, True, method))]
            if response is not None:
                records.append(gor_record(2, rid, response[3], response[4], self._stored(response, False, method)))
        except BadMessage as exc:
            self.counts["not written: could not be parsed to redact"] += 1
            self.err.write(f"record: exchange {rid}: not written, could not be parsed to redact it: {exc}\n")
            return
        try:
            written = self.out.append(records)
        except ValueError:
            self.counts["not written: holds the .gor separator line"] += 1
            return
        except OSError as exc:
            self.counts["not written: the file could not be written"] += 1
            self.err.write(f"record: {self.out.path}: cannot write exchange {rid}: {exc.strerror or exc}\n")
            return
        self.counts["exchanges"] += 1
        self.counts["without response"] += response is None
        self.counts["file bytes"] += written

    def _stored(self, msg: tuple, is_request: bool, method: str) -> bytes:
        """The bytes stored for a message: redacted unless keep_secrets; its head alone when its
        body was over the cap."""
        head, body, over = msg[0], msg[1], msg[2]
        if over:
            self.counts["request bodies over the cap" if is_request else "response bodies over the cap"] += 1
        raw = head if over else head + body
        if self.redactor is None:
            return raw
        parsed = _parse(raw, head, is_request, method, over)
        if over:
            return self.redactor.head(parsed, self.redactions)
        return self.redactor.message(parsed, self.redactions).raw

    def result(self) -> dict:
        return {"counts": dict(self.counts),
                "redactions": [[kind, name, n] for (kind, name), n in self.redactions.items()]}


def _parse(raw: bytes, head: bytes, is_request: bool, method: str, head_only: bool) -> Request | Response:
    if head_only:  # only the start line and the headers are looked at
        parsed = parse_head(head, is_request)
        if isinstance(parsed, str):
            raise BadMessage(parsed)
        name, text, version, status, _ = parsed
        if is_request:
            return Request(name, text, version, head, b"", head)
        return Response(status, text, version, head, b"", head)
    msg = fast_message(raw, is_request, method)
    if msg is not None:
        return msg
    parsed, error, _ = parse_single(raw, is_request, method=method)
    if parsed is None:
        raise BadMessage(error)
    if is_request:
        return Request(parsed.method, parsed.target, parsed.version, parsed.head, parsed.body, parsed.raw,
                       parsed.trailers, parsed.lf_only)
    return Response(parsed.status, parsed.reason, parsed.version, parsed.head, parsed.body, parsed.raw,
                    parsed.trailers, (), parsed.lf_only)


def writer_main() -> int:
    """The writer process: a configuration frame, then exchange frames on stdin until it closes;
    one JSON line on stdout when the output is open ({"ready": true} or {"error": ...}), one with
    the counts at the end. Signals are the proxy's business: it closes the pipe to stop this."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin, out, err = sys.stdin.buffer, sys.stdout, sys.stderr
    config = _read_frame(stdin)
    redactor = None
    if not config["keep_secrets"]:
        redactor = Redactor(config["secret_header"], config["secret_param"], key=config["key"],
                            pii=not config["keep_pii"])
    try:
        writer = Writer(config["path"], redactor, config["max_body"], err)
    except OSError as exc:
        out.write(json.dumps({"error": exc.strerror or str(exc)}) + "\n")
        return 1
    out.write('{"ready": true}\n')
    out.flush()
    while (item := _read_frame(stdin)) is not None:
        writer.write(*item)
    writer.out.close()
    out.write(json.dumps(writer.result()) + "\n")
    out.flush()
    return 0


class Recorder:
    """In the proxy: what happened (counts, errors), and the writer process exchanges are sent to."""

    def __init__(self, path: str, max_body: int, keep_secrets: bool, err) -> None:
        self.path = path
        self.max_body = max_body
        self.keep_secrets = keep_secrets
        self.err = err
        self.counts: Counter = Counter()  # requests, bytes; the writer's counts are added at the end
        self.errors: Counter = Counter()  # kind -> n
        self.redactions: Counter = Counter()
        self.error_lines = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.failed: str | None = None  # the writer process is gone: why
        self.on_failure = None

    async def start(self, config: dict) -> str | None:
        """Start the writer process; None when it has opened the output, else why it could not."""
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH"))
                                                          if p)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; from pytest_replay.record import writer_main; sys.exit(writer_main())",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        # Up to WRITER_BACKLOG of finished exchanges wait for the writer before the proxy does (a burst
        # faster than the masker goes through at the proxy's speed; sustained, at the masker's).
        self.proc.stdin.transport.set_write_buffer_limits(high=WRITER_BACKLOG)
        self.proc.stdin.write(_frame({"path": self.path, "max_body": self.max_body, **config}))
        line = await self.proc.stdout.readline()
        answer = json.loads(line) if line.strip() else {"error": "the writer process exited"}
        if "error" in answer:
            await self.proc.wait()
            return answer["error"]
        return None

    def error(self, kind: str, where: str, detail: str = "") -> None:
        self.errors[kind] += 1
        if self.error_lines < MAX_ERROR_LINES:
            self.error_lines += 1
            more = f": {detail}" if detail else ""
            self.err.write(f"record: {where}: {kind}{more}\n")
            if self.error_lines == MAX_ERROR_LINES:
                self.err.write("record: further errors are only counted (see the summary)\n")
            self.err.flush()

    async def write(self, rid: str, method: str, request: Message, response: Message | None) -> None:
        """Hand an exchange to the writer process (waits only when the writer is behind)."""
        if self.failed is not None:
            return
        frame = _frame((rid, method, request.wire(), response.wire() if response is not None else None))
        try:
            self.proc.stdin.write(frame)
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            self.failed = f"the writer process exited ({exc.__class__.__name__}); exchanges are no longer written"
            self.err.write(f"record: {self.failed}: stopping\n")
            if self.on_failure is not None:
                self.on_failure()

    async def finish(self) -> None:
        """Close the pipe, let the writer write what it holds, and take its counts."""
        proc = self.proc
        if proc is None:
            return
        queued = proc.stdin.transport.get_write_buffer_size() if not proc.stdin.is_closing() else 0
        if queued > 1 << 16:
            self.err.write(f"record: stopping: the writer still has {queued:,} bytes of finished exchanges to "
                           "write...\n")
            self.err.flush()
        try:
            proc.stdin.close()
            await proc.stdin.wait_closed()
        except (ConnectionError, RuntimeError):
            pass
        line = await proc.stdout.readline()
        await proc.wait()
        if not line.strip():
            self.failed = self.failed or "the writer process exited without its counts"
            return
        result = json.loads(line)
        self.counts.update(result["counts"])
        for kind, name, n in result["redactions"]:
            self.redactions[kind, name] += n


# -- a client connection ----------------------------------------------------------------------------
def _id_prefix(peer, local) -> str:
    """GoReplay's first 16 hex of an id: client port, server (here: listen) port, client IPv4 (or the
    last 4 bytes of an IPv6 address)."""
    try:
        packed = ipaddress.ip_address(peer[0]).packed[-4:]
        cport, lport = int(peer[1]), int(local[1])
    except (TypeError, ValueError, IndexError):
        packed, cport, lport = b"\0\0\0\0", 0, 0
    return f"{cport & 0xFFFF:04x}{lport & 0xFFFF:04x}{packed.hex()}"


class Connection:
    """One client connection and its upstream connection, exchange after exchange."""

    def __init__(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.where = f"{peer[0]}:{peer[1]}" if len(peer) >= 2 else str(peer)
        self.prefix = _id_prefix(peer, writer.get_extra_info("sockname") or ("", 0))
        self.seq = random.getrandbits(32)  # like a TCP sequence number: plus the bytes sent to the client
        self.up_r: asyncio.StreamReader | None = None
        self.up_w: asyncio.StreamWriter | None = None
        self.reused = False  # the upstream connection has answered before (it may have timed out since)
        self.busy = False  # an exchange is under way (not written if the recorder stops now)
        self.responding = False  # a response head has been passed on: no 502 can follow it

    async def run(self) -> None:
        try:
            while await self.exchange():
                self.busy = False
        except Broken:
            pass
        finally:
            self.close_upstream()
            self.writer.close()

    # the client's side
    async def to_client(self, data: bytes) -> None:
        await _send(self.writer, data, "client")
        self.seq = (self.seq + len(data)) & 0xFFFFFFFF
        self.proxy.recorder.counts["bytes to clients"] += len(data)

    async def answer(self, status: int, reason: str, text: str, close: bool) -> None:
        if self.responding:  # the client has part of the upstream's response: closing says it is cut
            return
        body = (text + "\n").encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
        try:
            await self.to_client(head.encode() + body)
        except Broken:
            pass

    async def bad_request(self, why: str) -> bool:
        self.proxy.recorder.error("bad request (400 sent, not recorded)", self.where, why)
        await self.answer(400, "Bad Request", f"bad request: {why}", close=True)
        return False

    # the upstream's side
    async def connect(self) -> str | None:
        """Open the upstream connection if there is none; None, or why it failed."""
        if self.up_w is not None and not self.up_w.transport.is_closing() and not self.up_r.at_eof():
            return None  # (at EOF: the upstream closed it while idle, and said so)
        self.close_upstream()
        host, port = self.proxy.upstream
        try:
            self.up_r, self.up_w = await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_HEAD),
                                                          CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
        self.reused = False
        return None

    def close_upstream(self) -> None:
        if self.up_w is not None:
            self.up_w.close()
        self.up_r = self.up_w = None

    async def response_head(self) -> bytes:
        try:
            return await self.up_r.readuntil(_END_HEAD)
        except asyncio.IncompleteReadError as exc:
            raise Broken("upstream", "closed the connection before answering" if not exc.partial else
                         "closed the connection in a response head") from None
        except asyncio.LimitOverrunError:
            raise BadMessage(f"a response head longer than {MAX_HEAD} bytes") from None
        except ConnectionError as exc:
            raise Broken("upstream", f"reset the connection ({exc.__class__.__name__})") from None

    # one exchange
    async def exchange(self) -> bool:
        """Pass one request and its response; False when the client connection ends."""
        rec = self.proxy.recorder
        try:
            head = await self.reader.readuntil(_END_HEAD)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                rec.error("client closed the connection in a request head (not recorded)", self.where)
            return False
        except asyncio.LimitOverrunError:
            return await self.bad_request(f"a request head longer than {MAX_HEAD} bytes")
        except ConnectionError:
            return False
        self.busy = True
        self.responding = False
        request = Message(head.lstrip(b"\r\n"), Body(rec.max_body), time.time_ns(), 0)
        started = time.perf_counter_ns()
        parsed = parse_head(request.head, True)
        if isinstance(parsed, str):
            return await self.bad_request(f"invalid request head ({parsed})")
        method, _, version = parsed[0], parsed[1], parsed[2]
        try:
            framing = request_framing(request.head)
        except BadMessage as exc:
            return await self.bad_request(str(exc))
        rec.counts["requests"] += 1
        rec.counts["bytes from clients"] += len(head)
        client_alive = keeps_alive(request.head, version)
        if framing[0] != NONE and b"100-continue" in request.head.lower():
            await self.to_client(b"HTTP/1.1 100 Continue\r\n\r\n")  # the proxy takes the body itself
        try:
            return await self._pass(request, method, framing, started, client_alive)
        except Broken as exc:
            self.close_upstream()
            if exc.side == "client":
                phase = "a request body" if request.latency_ns == 0 else "a response"
                rec.error(f"client went away in {phase} (not recorded)", self.where, str(exc))
                return False
            sent = "response cut" if self.responding else "502 sent"
            rec.error(f"upstream failed ({sent}, request recorded without a response)", self.where, str(exc))
            if request.latency_ns == 0:  # the request was not read whole: it cannot be recorded
                await self.answer(502, "Bad Gateway", f"upstream failed: {exc}", close=True)
                return False
            await rec.write(self.rid(), method, request, None)
            await self.answer(502, "Bad Gateway", f"upstream failed: {exc}", close=True)
            return False
        except BadMessage as exc:
            self.close_upstream()
            if request.latency_ns == 0:
                return await self.bad_request(str(exc))
            rec.error("bad response from upstream (502 sent, request recorded without a response)", self.where,
                      str(exc))
            await rec.write(self.rid(), method, request, None)
            await self.answer(502, "Bad Gateway", f"bad response from upstream: {exc}", close=True)
            return False

    def rid(self) -> str:
        return f"{self.prefix}{self.seq:08x}"

    async def _pass(self, request: Message, method: str, framing: tuple[str, int], started: int,
                    client_alive: bool) -> bool:
        rec = self.proxy.recorder
        connecting = time.perf_counter_ns()
        failure = await self.connect()
        started += time.perf_counter_ns() - connecting  # the request's latency: its own arrival only
        if failure is not None:  # upstream down: the body is read (and dropped), the client gets a 502
            await copy_body(framing, self.reader, None, request.body, ("client", "upstream"))
            request.latency_ns = max(1, time.perf_counter_ns() - started)
            rec.counts["bytes from clients"] += request.body.size
            host, port = self.proxy.upstream
            rec.error("upstream unreachable (502 sent, request recorded without a response)", self.where,
                      f"{host}:{port}: {failure}")
            await rec.write(self.rid(), method, request, None)
            await self.answer(502, "Bad Gateway", f"upstream {host}:{port} unreachable: {failure}",
                              close=not client_alive)
            return client_alive
        together = framing[0] != NONE and _buffered(self.reader)
        if not together:
            await _send(self.up_w, request.head, "upstream")
        await copy_body(framing, self.reader, self.up_w, request.body, ("client", "upstream"),
                        request.head if together else b"")
        request.latency_ns = max(1, time.perf_counter_ns() - started)
        rec.counts["bytes from clients"] += request.body.size
        try:
            head = await self.response_head()
        except Broken:
            if not (self.reused and method in IDEMPOTENT and not request.body.over):
                raise
            # A keep-alive connection the upstream closed while idle without a FIN seen yet: once more
            # on a new one, for idempotent methods only (RFC 9110 9.2.2).
            self.close_upstream()
            failure = await self.connect()
            if failure is not None:
                raise Broken("upstream", f"unreachable on reconnecting: {failure}") from None
            await _send(self.up_w, request.head + request.body.bytes(), "upstream")
            head = await self.response_head()
        response = Message(head, Body(rec.max_body), time.time_ns(), 0)
        answered = time.perf_counter_ns()
        rid = self.rid()
        while True:
            parsed = parse_head(head, False)
            if isinstance(parsed, str):
                raise BadMessage(f"invalid response head ({parsed})")
            status, version = parsed[3], parsed[2]
            if not 100 <= status < 200 or status == 101:
                break
            await self.to_client(head)  # an interim response (100 Continue, 103 Early Hints): passed on
            head = await self.response_head()
            response.head = head
        resp_framing = response_framing(head, method, status)
        self.responding = True
        together = resp_framing[0] in (LENGTH, CHUNKED) and _buffered(self.up_r)
        if not together:
            await self.to_client(head)
        await copy_body(resp_framing, self.up_r, self.writer, response.body, ("upstream", "client"),
                        head if together else b"")
        sent = response.body.size + (len(head) if together else 0)
        self.seq = (self.seq + sent) & 0xFFFFFFFF
        rec.counts["bytes to clients"] += sent
        response.latency_ns = max(1, time.perf_counter_ns() - answered)
        self.reused = True
        self.busy = False
        await rec.write(rid, method, request, response)
        if status == 101:
            await self.tunnel()
            return False
        upstream_alive = resp_framing[0] != UNTIL_CLOSE and keeps_alive(head, version)
        if not upstream_alive:
            self.close_upstream()
        return client_alive and upstream_alive

    async def tunnel(self) -> None:
        """After a 101 (WebSocket...): bytes passed both ways, not recorded."""
        self.proxy.recorder.counts["upgraded connections (not recorded after the 101)"] += 1
        sink = Body(0)

        async def pump(src, dst, names):
            try:
                await copy_body((UNTIL_CLOSE, 0), src, dst, sink, names)
            except Broken:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(self.reader, self.up_w, ("client", "upstream")),
                             pump(self.up_r, self.writer, ("upstream", "client")))


# -- the proxy --------------------------------------------------------------------------------------
class Proxy:
    def __init__(self, recorder: Recorder, upstream: tuple[str, int]) -> None:
        self.recorder = recorder
        self.upstream = upstream
        self.connections: dict[asyncio.Task, Connection] = {}
        self.accepted = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        connection = Connection(self, reader, writer)
        self.connections[task] = connection
        self.accepted += 1
        try:
            await connection.run()
        finally:
            self.connections.pop(task, None)

    async def stop(self) -> int:
        """Cancel every connection; how many exchanges were under way (and are not written)."""
        in_flight = sum(c.busy for c in self.connections.values())
        tasks = list(self.connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return in_flight


# -- command line -----------------------------------------------------------------------------------
def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. {DEFAULT_LISTEN}), got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _upstream(text: str) -> tuple[str, int]:
    parts = urlsplit(text)
    if parts.scheme == "https":
        raise argparse.ArgumentTypeError("https upstreams are not supported yet: give an http:// URL")
    if parts.scheme != "http" or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected a URL like http://127.0.0.1:8000, got {text!r}")
    if parts.path not in ("", "/") or parts.query:
        raise argparse.ArgumentTypeError(f"expected no path in the upstream URL (requests keep theirs), got {text!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port in {text!r}") from None
    return parts.hostname, port


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_replay record",
        description="A recording reverse proxy: clients talk to --listen, requests go on to --upstream, and every "
                    "exchange is written to a GoReplay .gor capture (no root, no packet capture). Secrets and "
                    "personal data are redacted as the file is written, with the masker of `redact`; replay a "
                    "redacted capture with --replay-set-header for credentials. Ctrl-C (or SIGTERM) stops it: the "
                    "file then holds every exchange completed, whole, and a summary is printed.")
    parser.add_argument("--listen", type=_address, default=_address(DEFAULT_LISTEN), metavar="HOST:PORT",
                        help=f"where clients connect (default: {DEFAULT_LISTEN}, this machine only; port 0 picks a "
                             "free port)")
    parser.add_argument("--upstream", type=_upstream, required=True, metavar="URL",
                        help="the service recorded, an http:// URL such as http://127.0.0.1:8000 (required)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.gor",
                        help="the capture written (replaced if it exists; created readable by you only)")
    parser.add_argument("--keep-secrets", action="store_true",
                        help="write credentials, cookies, tokens and personal data as sent (default: redacted)")
    parser.add_argument("--keep-pii", action="store_true",
                        help="do not mask e-mail addresses, card numbers and phone numbers (default: masked)")
    parser.add_argument("--secret-header", action="append", default=[], metavar="NAME",
                        help="one more header whose value is secret (repeatable; default: Authorization, Cookie, "
                             "Set-Cookie, X-Api-Key and other credential headers)")
    parser.add_argument("--secret-param", action="append", default=[], metavar="NAME",
                        help="one more secret query parameter / form / JSON field name (repeatable)")
    parser.add_argument("--salt", metavar="TEXT",
                        help="key the stand-ins with TEXT (stable across recordings; default: a random salt per run)")
    parser.add_argument("--max-body-size", type=_size, default=DEFAULT_MAX_BODY, metavar="SIZE",
                        help="the longest body kept in the capture, e.g. 32M; a longer one is passed on whole but "
                             f"stored without its bytes, and counted in the summary (default: {format_size(DEFAULT_MAX_BODY)})")
    return parser


def render_summary(recorder: Recorder, accepted: int, in_flight: int, seconds: float) -> str:
    c = recorder.counts
    lines = [f"recorded {recorder.path}: {c['exchanges']} exchanges ({c['without response']} without a response) "
             f"in {seconds:.1f} s over {accepted} client connections",
             f"  bytes: {c['bytes from clients']:,} from clients, {c['bytes to clients']:,} to clients, "
             f"{c['file bytes']:,} written"]
    if in_flight:
        lines.append(f"  {in_flight} exchanges under way when stopped: not written (the file ends with whole exchanges)")
    for key in ("request bodies over the cap", "response bodies over the cap"):
        if c[key]:
            lines.append(f"  {c[key]} {key} ({format_size(recorder.max_body)}): stored without their bytes "
                         "(passed on whole; --max-body-size to keep them)")
    for key in ("not written: could not be parsed to redact", "not written: holds the .gor separator line",
                "not written: the file could not be written", "upgraded connections (not recorded after the 101)"):
        if c[key]:
            lines.append(f"  {key}: {c[key]}")
    errors = ", ".join(f"{n} {kind}" for kind, n in recorder.errors.most_common())
    lines.append(f"  errors: {errors or 'none'}")
    if recorder.failed is not None:
        lines.append(f"  ERROR: {recorder.failed}")
    if recorder.keep_secrets:
        lines.append("  redactions: none (--keep-secrets: the file holds secrets as sent; keep it private)")
    else:
        by_kind: Counter = Counter()
        for (kind, _), n in recorder.redactions.items():
            if kind not in ("body", "skipped"):
                by_kind[kind] += n
        shown = ", ".join(f"{n} {kind}" for kind, n in sorted(by_kind.items())) or "nothing to mask"
        lines.append(f"  redactions: {shown} (stand-ins REDACTED-<8 hex>; replays supply credentials with "
                     "--replay-set-header)")
        inspected = [name for kind, name in recorder.redactions if kind == "body" and name.startswith("not inspected")]
        if inspected:
            lines.append(f"  WARNING: bodies copied without inspection: {', '.join(sorted(set(inspected)))}")
    return "\n".join(lines)


async def serve(args: argparse.Namespace, out, err) -> int:
    host, port = args.listen
    proxy = Proxy(Recorder(args.output, args.max_body_size, args.keep_secrets, err), args.upstream)
    recorder = proxy.recorder
    try:
        server = await asyncio.start_server(proxy.handle, host, port, limit=MAX_HEAD, start_serving=False)
    except OSError as exc:  # before the output is touched: an existing file stays as it was
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        err.write(f"record: cannot listen on {host}:{port}: {why}\n")
        return 1
    key = args.salt.encode("utf-8") if args.salt else os.urandom(16)
    failure = await recorder.start({"keep_secrets": args.keep_secrets, "keep_pii": args.keep_pii,
                                    "secret_header": args.secret_header, "secret_param": args.secret_param,
                                    "key": key})
    if failure is not None:
        server.close()
        err.write(f"record: {args.output}: cannot write: {failure}\n")
        return 1
    stopping = asyncio.Event()
    recorder.on_failure = stopping.set
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await server.start_serving()
    bound = server.sockets[0].getsockname()
    up_host, up_port = args.upstream
    mode = "secrets kept as sent" if args.keep_secrets else "secrets redacted"
    out.write(f"recording http://{bound[0]}:{bound[1]} -> http://{up_host}:{up_port} into {args.output} "
              f"({mode}; Ctrl-C to stop)\n")
    out.flush()
    if args.keep_secrets:
        err.write(f"record: WARNING: --keep-secrets: {args.output} will hold credentials, cookies, tokens and personal "
                  "data as sent; keep it private (without --keep-secrets they are redacted, and replays supply "
                  "credentials with --replay-set-header)\n")
        err.flush()
    started = time.monotonic()
    try:
        await stopping.wait()
    finally:
        server.close()
        in_flight = await proxy.stop()
        await server.wait_closed()
        await recorder.finish()
    out.write(render_summary(recorder, proxy.accepted, in_flight, time.monotonic() - started) + "\n")
    out.flush()
    return 0 if recorder.failed is None else 1


def main(argv: Sequence[str] | None = None, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[2:] if argv is None else argv))
    if args.output.endswith(".gz"):
        parser.error(f"the output is written uncompressed, an exchange at a time (so that it is whole when "
                     f"stopped): give a .gor name and gzip it afterwards, got {args.output!r}")
    return asyncio.run(serve(args, out, err))
