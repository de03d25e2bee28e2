"""HTTP/2 exchanges from the two byte streams of one connection (sans-IO).

Used for cleartext HTTP/2 in captures (h2c with prior knowledge, or after ``Upgrade: h2c``) and,
through :class:`H2Session` or :func:`exchanges_from_streams`, for decrypted TLS streams whose ALPN
was h2: the caller feeds each direction's bytes in order (any segmentation) with the timestamp,
frame number and file offset they came from, and gets one :class:`H2Stream` per HTTP/2 stream.

Frames are walked here directly (a 9-byte header: slicing it costs about a fifth of building
hyperframe objects, see bench/bench_h2.py and docs/benchmarks.md); HPACK header blocks are decoded here too,
over the hpack package's static table and Huffman decoder, because a capture that starts in the
middle of a connection does not know the dynamic table: a reference to an entry it never saw is
flagged (``hpack-unknown``) and decoding goes on with the rest of the block, so later entries stay
at their true indices. hpack's Decoder stops at the first such reference. Nothing here raises
on bad input except :class:`H2Error`, caught by the session and turned into flags.

An HTTP/2 exchange is given an HTTP/1.1-style head (pseudo-headers mapped to the request line,
``:authority`` to Host) and raw bytes, so that everything downstream sees HTTP/1.1-shaped messages;
``protocol`` says how it was captured, and targets/h2.py replays it over HTTP/2 when the target speaks
it (its frame walker decodes responses with this module's HPACK decoder).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from http import HTTPStatus

from hpack.table import HeaderTable

from .message import CAPTURE_ENDED, CLOSED, GAP, H2_ERROR, HPACK_UNKNOWN, TRUNCATED, Headers, Request, Response, build_head

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEAD = struct.Struct("!HBBBI")  # the 9-byte frame header: 24-bit length (16 + 8), type, flags, stream
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 1 << 24  # the 24-bit length field's limit
MAX_HEADER_BLOCK = 1 << 20  # a header block (HEADERS + CONTINUATIONs) longer than this is not used
STATIC = HeaderTable.STATIC_TABLE
_UNKNOWN = b"?"  # name or value of an entry the capture did not see
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class H2Error(ValueError):
    """Invalid HTTP/2 framing or HPACK data (the only exception this module raises)."""


# -- HPACK ---------------------------------------------------------------------------------------
class HpackDecoder:
    """One direction's HPACK state. `known` False: the connection started before the capture, so
    the dynamic table has entries we never saw (beyond the ones we did).

    A block that references no dynamic-table entry and updates no table size decodes to the same
    header list whatever the table holds, and adds the same entries to it: such blocks are decoded
    once and remembered (`_BLOCKS`, shared by every decoder, bounded); a hit returns the remembered
    list and replays the block's additions to the table. nginx sends each response's date, content
    type and length as literals with incremental indexing and never refers back to them, so its
    responses are all of this kind, and repeat for as long as the date does. A block that refers to
    dynamic entries but changes nothing in the table decodes the same for as long as the table stays
    as it is: such blocks are remembered by each decoder (`seen`) for its table's `version`, which
    every change bumps (servers on python-hyper's or Go's encoder answer repeated requests with such
    blocks: every field an index). `decode(..., fast=False)` is the reference: it never uses either
    memory (tests/test_h2.py compares the two with hpack's Decoder on random blocks)."""

    __slots__ = ("table", "size", "max_size", "known", "version", "seen", "seen_version")

    def __init__(self, known: bool = True) -> None:
        self.table: list[tuple[bytes, bytes]] = []  # newest first
        self.size = 0
        self.max_size = 4096
        self.known = known
        self.version = 0  # bumped by every change of the table (additions, size updates)
        self.seen: dict[bytes, tuple] = {}  # block -> (headers, unknown) while the table is at seen_version
        self.seen_version = 0

    def _add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        self.table.insert(0, (name, value))
        self.size += len(name) + len(value) + 32
        if self.size > self.max_size:
            self._evict()

    def _add_all(self, added: tuple, size: int) -> None:
        """A remembered block's additions: `added` newest first, `size` their HPACK size together.
        Eviction waits until the table is read (`_entry`, `entries`) or holds 4 times its size:
        the entries that stay are the newest that fit whenever eviction runs, so deferring it changes
        nothing, and a server that never refers back to its entries (nginx) costs one trim per
        few dozen blocks instead of a few evictions per block."""
        self.version += 1
        self.table[0:0] = added
        self.size += size
        if self.size > 4 * self.max_size + 4096:
            self._trim()

    def _evict(self) -> None:
        table = self.table
        while self.size > self.max_size and table:
            name, value = table.pop()
            self.size -= len(name) + len(value) + 32

    def _trim(self) -> None:
        """_evict() in one step: keep the newest entries that fit (the same ones)."""
        limit, total, keep = self.max_size, 0, 0
        for name, value in self.table:
            size = len(name) + len(value) + 32
            if total + size > limit:
                break
            total += size
            keep += 1
        del self.table[keep:]
        self.size = total

    def entries(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest first (what the encoder's table holds)."""
        if self.size > self.max_size:
            self._trim()
        return list(self.table)

    def _entry(self, index: int) -> tuple[bytes, bytes] | None:
        if index == 0:
            raise H2Error("HPACK index 0")
        if index <= len(STATIC):
            return STATIC[index - 1]
        if self.size > self.max_size:
            self._trim()
        dynamic = index - len(STATIC) - 1
        if dynamic < len(self.table):
            return self.table[dynamic]
        if self.known:
            raise H2Error(f"HPACK index {index} beyond the dynamic table ({len(self.table)} entries)")
        return None

    def decode(self, block: bytes, fast: bool = True) -> tuple[list[tuple[bytes, bytes]], int]:
        """(header pairs, how many referenced unknown entries). Unknown names or values are b"?".
        The common cases (a one-byte index, a static entry) are inlined: this runs per header."""
        if fast:
            seen = _BLOCKS.get(block)
            if seen is not None:
                headers, added, size = seen
                if added:
                    self._add_all(added, size)
                return list(headers), 0
            if self.seen_version == self.version:
                seen = self.seen.get(block)
                if seen is not None:
                    return list(seen[0]), seen[1]
        headers: list[tuple[bytes, bytes]] = []
        append = headers.append
        unknown = 0
        dynamic = False  # an entry of the dynamic table referenced, or its size updated: not in _BLOCKS
        version = self.version
        added: list[tuple[bytes, bytes]] = []
        pos, n = 0, len(block)
        static, nstatic = STATIC, len(STATIC)
        while pos < n:
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index = byte & 0x7F
                if index == 0x7F:
                    index, pos = _integer(block, pos, 7)
                else:
                    pos += 1
                if 0 < index <= nstatic:
                    append(static[index - 1])
                    continue
                dynamic = True
                entry = self._entry(index)
                if entry is None or entry[0] is _UNKNOWN:
                    unknown += 1
                    entry = (_UNKNOWN, _UNKNOWN)
                append(entry)
                continue
            if byte & 0xC0 == 0x40:
                index, indexing = byte & 0x3F, True
                if index == 0x3F:
                    index, pos = _integer(block, pos, 6)
                else:
                    pos += 1
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                size, pos = _integer(block, pos, 5)
                self.max_size = size
                self._evict()
                self.version += 1
                dynamic = True
                continue
            else:
                index, indexing = byte & 0x0F, False
                if index == 0x0F:
                    index, pos = _integer(block, pos, 4)
                else:
                    pos += 1
            if index:
                if index <= nstatic:
                    entry = static[index - 1]
                else:
                    dynamic = True
                    entry = self._entry(index)
                if entry is None or entry[0] is _UNKNOWN:
                    unknown += 1
                    name = _UNKNOWN
                else:
                    name = entry[0]
            else:
                name, pos = _string(block, pos)
            value, pos = _string(block, pos)
            if indexing:
                self._add(name, value)
                added.append((name, value))
            append((name, value))
        if fast and len(block) <= MAX_BLOCK_SEEN:
            if not dynamic:
                if len(_BLOCKS) >= MAX_BLOCKS_SEEN:
                    _BLOCKS.clear()
                added.reverse()
                _BLOCKS[bytes(block)] = (tuple(headers), tuple(added),
                                         sum(len(name) + len(value) + 32 for name, value in added))
            elif self.version == version:  # the table as it was: the block decodes the same until it changes
                if self.seen_version != version or len(self.seen) >= MAX_SEEN_PER_TABLE:
                    self.seen = {}
                    self.seen_version = version
                self.seen[bytes(block)] = (tuple(headers), unknown)
        return headers, unknown


# Header blocks decoded once (HpackDecoder.decode): state-free ones only, keyed by their bytes.
MAX_BLOCKS_SEEN = 4096  # blocks kept (the dict is emptied when full)
MAX_BLOCK_SEEN = 4096  # longer blocks are not kept: at most 16 MiB held
MAX_SEEN_PER_TABLE = 64  # blocks a decoder keeps for one state of its table
_BLOCKS: dict[bytes, tuple[tuple, tuple, int]] = {}


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise H2Error("HPACK integer cut short")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
        if shift > 28:
            raise H2Error("HPACK integer too large")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise H2Error("HPACK string missing")
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise H2Error("HPACK string cut short")
    raw = data[pos:end]
    if huffman:
        decoded = _HUFFMAN_SEEN.get(raw)
        if decoded is None:
            decoded = huffman_decode(raw)
            if len(_HUFFMAN_SEEN) >= MAX_HUFFMAN_SEEN:
                _HUFFMAN_SEEN.clear()
            _HUFFMAN_SEEN[raw] = decoded
        return decoded, end
    return raw, end


# Huffman strings (RFC 7541 appendix B): hpack's decoder walks a nibble state machine, two steps and
# two flag tests per byte. Composing its table into one step per byte (256 states x 256 bytes, each
# state's row made when first reached) reads a string about 3x faster; and header values repeat
# (paths, content types, cookies, user agents), so decoded strings are remembered.
MAX_HUFFMAN_SEEN = 4096  # decoded strings kept (the dict is emptied when full)
_HUFFMAN_SEEN: dict[bytes, bytes] = {}
_ROWS: list = [None] * 256  # per decoder state: its 256 (next state, bytes emitted, complete) steps, made on first use


def _row(state: int) -> list:
    """One state's steps for every byte, composed from hpack's nibble table (None: invalid code)."""
    from hpack.huffman_table import HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL, HUFFMAN_TABLE

    row: list = []
    for byte in range(256):
        emitted = bytearray()
        at, entry = state, None
        for nibble in (byte >> 4, byte & 0x0F):
            at, flags, output = HUFFMAN_TABLE[at * 16 + nibble]
            if flags & HUFFMAN_FAIL:
                break
            if flags & HUFFMAN_EMIT_SYMBOL:
                emitted.append(output)
        else:
            entry = (at, bytes(emitted), bool(flags & HUFFMAN_COMPLETE))
        row.append(entry)
    _ROWS[state] = row
    return row


def huffman_decode(data: bytes) -> bytes:
    """An HPACK Huffman string decoded (one table step per byte); H2Error if it is invalid. Tested
    against hpack's decode_huffman, the reference (tests/test_h2.py)."""
    rows = _ROWS
    state, complete, out = 0, True, []
    for byte in data:
        entry = (rows[state] or _row(state))[byte]
        if entry is None:
            raise H2Error("bad Huffman string: invalid code")
        state, emitted, complete = entry
        if emitted:
            out.append(emitted)
    if not complete:
        raise H2Error("bad Huffman string: incomplete")
    return b"".join(out)


# -- streams -------------------------------------------------------------------------------------
class H2Stream:
    """One HTTP/2 stream: a request and its response, as captured."""

    __slots__ = ("id", "req_headers", "req_data", "req_trailers", "req_ts", "req_frame", "req_where", "req_end",
                 "resp_headers", "resp_data", "resp_trailers", "resp_ts", "resp_frame", "resp_end", "interim",
                 "flags", "reset", "opaque")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.req_headers: list[tuple[bytes, bytes]] | None = None
        self.req_data: list[bytes] = []
        self.req_trailers: list[tuple[bytes, bytes]] = []
        self.req_ts = self.resp_ts = None
        self.req_frame = self.resp_frame = 0
        self.req_where = 0
        self.req_end = self.resp_end = False
        self.resp_headers: list[tuple[bytes, bytes]] | None = None
        self.resp_data: list[bytes] = []
        self.resp_trailers: list[tuple[bytes, bytes]] = []
        self.interim: tuple[int, ...] = ()
        self.flags: list[tuple[str, str, str]] = []  # (code, part, detail)
        self.reset: str | None = None
        self.opaque = None  # the caller's (flows.py: its Draft)

    def flag(self, code: str, part: str, detail: str) -> None:
        if not any(flag[0] == code and flag[1] == part for flag in self.flags):
            self.flags.append((code, part, detail))

    @property
    def done(self) -> bool:
        return self.req_end and self.resp_end

    def request(self, protocol: str = "h2c") -> Request:
        return to_request(self.req_headers or [], b"".join(self.req_data), self.req_trailers, protocol)

    def response(self, protocol: str = "h2c") -> Response | None:
        if self.resp_headers is None:
            return None
        return to_response(self.resp_headers, b"".join(self.resp_data), self.resp_trailers, self.interim, protocol)


def _pseudo(headers: list[tuple[bytes, bytes]]) -> tuple[dict[bytes, bytes], list[tuple[bytes, bytes]], set]:
    """(pseudo-headers, regular headers, the lower-case regular names among host and content-length)."""
    pseudo: dict[bytes, bytes] = {}
    regular = []
    seen = set()
    for pair in headers:
        name = pair[0]
        if name is _UNKNOWN:
            continue  # a reference to an HPACK entry the capture did not see (the stream is flagged)
        if name[:1] == b":":
            if name not in pseudo:
                pseudo[name] = pair[1]
        else:
            regular.append(pair)
            if len(name) in (4, 14):  # HPACK names are lower-case, captures' may not be
                seen.add(name.lower())
    return pseudo, regular, seen


def to_request(headers: list[tuple[bytes, bytes]], body: bytes, trailers, protocol: str) -> Request:
    """An HTTP/1.1-style request for a stream's headers: :method/:path make the request line,
    :authority becomes Host (first), a Content-Length is added when there is a body."""
    pseudo, regular, seen = _pseudo(headers)
    method = pseudo.get(b":method", b"GET").decode("latin-1")
    target = pseudo.get(b":path", b"*" if method == "OPTIONS" else b"/").decode("latin-1")
    authority = pseudo.get(b":authority")
    if authority is not None and b"host" not in seen:
        regular.insert(0, (b"host", authority))
    if (body or method in ("POST", "PUT", "PATCH")) and b"content-length" not in seen:
        regular.append((b"content-length", str(len(body)).encode()))
    fields = tuple(regular)
    head = build_head(f"{method} {target} HTTP/1.1".encode("latin-1"), fields)
    return Request(method, target, "1.1", head, body, head + body, tuple(trailers), False, fields, protocol)


def to_response(headers, body: bytes, trailers, interim: tuple[int, ...], protocol: str) -> Response:
    pseudo, regular, seen = _pseudo(headers)
    status_text = pseudo.get(b":status", b"0")
    status = int(status_text) if status_text.isdigit() and len(status_text) == 3 else 0
    if body and b"content-length" not in seen:
        regular.append((b"content-length", str(len(body)).encode()))
    fields = tuple(regular)
    reason = _REASONS.get(status, "")
    head = build_head(f"HTTP/1.1 {status} {reason}".rstrip().encode("latin-1"), fields)
    return Response(status, reason, "1.1", head, body, head + body, tuple(trailers), interim, False, fields,
                    protocol)


def response_for_block(block: bytes, headers, body: bytes, trailers, interim: tuple[int, ...],
                       protocol: str) -> Response:
    """to_response() for the headers decoded from `block`: the status, head and fields are made once
    per block (and body length) when the block decodes the same whatever the dynamic table holds
    (HpackDecoder keeps it in _BLOCKS); the Response is the same as to_response's either way."""
    key = (block, len(body), protocol)
    parts = _RESPONSE_PARTS.get(key)
    if parts is None:
        response = to_response(headers, body, trailers, interim, protocol)
        if block in _BLOCKS:
            if len(_RESPONSE_PARTS) >= MAX_BLOCKS_SEEN:
                _RESPONSE_PARTS.clear()
            _RESPONSE_PARTS[key] = (response.status, response.reason, response.head, response.headers)
        return response
    status, reason, head, fields = parts
    return Response(status, reason, "1.1", head, body, head + body, tuple(trailers), interim, False, fields,
                    protocol)


_RESPONSE_PARTS: dict[tuple, tuple] = {}  # (block, body length, protocol) -> status, reason, head, fields


# -- gRPC ----------------------------------------------------------------------------------------
def is_grpc(headers: Headers) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.lower().startswith(b"application/grpc")
    return False


def grpc_messages(body: bytes) -> tuple[list[bytes], str | None]:
    """The messages of a gRPC body (5-byte prefix: compressed flag, 4-byte length), kept as bytes,
    and what is wrong with the framing (None if nothing)."""
    messages = []
    pos = 0
    while pos < len(body):
        if len(body) - pos < 5:
            return messages, f"{len(body) - pos} bytes left after the last message"
        length = int.from_bytes(body[pos + 1:pos + 5], "big")
        if pos + 5 + length > len(body):
            return messages, f"message at byte {pos} claims {length} bytes, {len(body) - pos - 5} left"
        messages.append(bytes(body[pos + 5:pos + 5 + length]))
        pos += 5 + length
    return messages, None


def grpc_status(response: Response) -> tuple[int | None, str | None]:
    """grpc-status and grpc-message, from the trailers (or the headers, for a trailers-only reply)."""
    status = message = None
    for name, value in (*response.trailers, *response.headers):
        lname = name.lower()
        if lname == b"grpc-status" and status is None and value.strip().isdigit():
            status = int(value)
        elif lname == b"grpc-message" and message is None:
            message = value.decode("utf-8", "replace")
    return status, message


# -- one direction's frames -----------------------------------------------------------------------
class _Direction:
    __slots__ = ("client", "buf", "base", "marks", "preface", "hpack", "block", "dead", "frames")

    def __init__(self, client: bool, preface: bool, known: bool) -> None:
        self.client = client
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.marks: list[tuple[int, int, int, int]] = []  # (stream offset, ts_ns, frame, file offset)
        self.preface = preface  # the client preface is still expected
        self.hpack = HpackDecoder(known)
        self.block: tuple | None = None  # (stream id, flags, [fragments], mark) of a header block in progress
        self.dead: str | None = None  # framing lost: why
        self.frames = 0

    def mark_at(self, offset: int) -> tuple[int, int, int, int]:
        marks = self.marks
        found = marks[0]
        for mark in marks:
            if mark[0] > offset:
                break
            found = mark
        return found


class H2Session:
    """Both directions of one HTTP/2 connection. `on_open(stream)` is called when a request's
    headers are decoded, `on_close(stream)` when the stream is over (or the connection is)."""

    def __init__(self, on_open: Callable[[H2Stream], None] | None = None,
                 on_close: Callable[[H2Stream], None] | None = None, *, preface: bool = True,
                 known: bool = True, protocol: str = "h2c") -> None:
        self.on_open = on_open or (lambda stream: None)
        self.on_close = on_close or (lambda stream: None)
        self.protocol = protocol
        self.sides = {True: _Direction(True, preface, known), False: _Direction(False, False, known)}
        self.streams: dict[int, H2Stream] = {}
        self.closed_ids: set[int] = set()
        self.warnings: list[str] = []
        self.warning_count = 0
        self.frames = 0

    def _warn(self, text: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < 20:  # the first ones, named; the rest counted
            self.warnings.append(text)

    # -- input -------------------------------------------------------------------------------
    def feed(self, from_client: bool, data: bytes, ts_ns: int = 0, frame: int = 0, where: int = 0) -> None:
        side = self.sides[from_client]
        if side.dead or not data:
            return
        try:
            if not side.buf and not side.preface:  # frames start at the start of `data`: walked in place
                self._frames_in(side, data, (side.base, ts_ns, frame, where))
                return
            side.marks.append((side.base + len(side.buf), ts_ns, frame, where))
            side.buf += data
            self._frames(side)
        except H2Error as exc:
            self._kill(side, H2_ERROR, str(exc))

    def gap(self, from_client: bool, nbytes: int, code: str = GAP, detail: str = "") -> None:
        """Bytes are missing: frame boundaries are lost on this side, its open streams are flagged."""
        side = self.sides[from_client]
        if not side.dead:
            self._kill(side, code, detail or f"{nbytes} bytes missing")

    def close(self, from_client: bool, code: str | None = None, detail: str = "") -> None:
        side = self.sides[from_client]
        if side.dead:
            return
        if side.buf or side.block is not None:
            self._kill(side, code or CLOSED, detail or "the stream ended inside a frame")
        else:
            side.dead = "closed"

    def upgraded(self, request: Request, opaque=None, ts_ns: int = 0, frame: int = 0, where: int = 0) -> H2Stream:
        """The HTTP/1.1 request of an ``Upgrade: h2c`` is stream 1's request (RFC 7540 3.2)."""
        stream = H2Stream(1)
        stream.req_headers = [(b":method", request.method.encode()), (b":path", request.target.encode())]
        stream.req_headers += list(request.headers)
        stream.req_data = [request.body]
        stream.req_end = True
        stream.req_ts, stream.req_frame, stream.req_where = ts_ns, frame, where
        stream.opaque = opaque
        self.streams[1] = stream
        return stream

    def finish(self, why: str = "the capture ended before the stream did", code: str = CAPTURE_ENDED) -> None:
        """The connection is over: every stream still open leaves, flagged."""
        for side in self.sides.values():
            if not side.dead and (side.buf or side.block is not None):
                side.dead = code
                self._flag_open(side, code, f"{why} ({len(side.buf)} bytes of a frame)")
        for stream in list(self.streams.values()):
            if not stream.req_end:
                stream.flag(code, "request", why)
            if not stream.resp_end:
                stream.flag(code, "response", why)
            self._close(stream)

    # -- framing -----------------------------------------------------------------------------
    def _kill(self, side: _Direction, code: str, detail: str) -> None:
        side.dead = code
        self._warn(f"{'client' if side.client else 'server'}: {detail}")
        self._flag_open(side, code, detail)
        side.buf = bytearray()
        side.block = None

    def _flag_open(self, side: _Direction, code: str, detail: str) -> None:
        part = "request" if side.client else "response"
        for stream in self.streams.values():
            if not (stream.req_end if side.client else stream.resp_end):
                stream.flag(code, part, detail)

    def _frames_in(self, side: _Direction, data: bytes, mark: tuple) -> None:
        """The common case of feed() (nothing buffered): the frames of `data` walked where they are,
        all stamped with its mark; a frame cut at the end waits in the buffer."""
        pos, n = 0, len(data)
        unpack = _FRAME_HEAD.unpack_from
        frame = self._frame
        while n - pos >= 9:
            high, low, ftype, flags, stream_id = unpack(data, pos)
            end = pos + 9 + (high << 8 | low)
            if end > n:
                break
            payload = data[pos + 9:end]
            pos = end
            side.frames += 1
            self.frames += 1
            frame(side, ftype, flags, stream_id & 0x7FFFFFFF, payload, mark)
            if side.dead:
                return
        side.base += pos
        side.marks = [(side.base, mark[1], mark[2], mark[3])]
        if pos < n:
            side.buf += data[pos:]

    def _frames(self, side: _Direction) -> None:
        buf = side.buf
        pos = 0
        if side.preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise H2Error("no HTTP/2 client preface")
                return
            if not buf.startswith(PREFACE):
                raise H2Error("no HTTP/2 client preface")
            pos = len(PREFACE)
            side.preface = False
        n = len(buf)
        unpack = _FRAME_HEAD.unpack_from
        while n - pos >= 9:
            high, low, ftype, flags, stream_id = unpack(buf, pos)
            length = high << 8 | low
            if pos + 9 + length > n:
                break
            stream_id &= 0x7FFFFFFF
            payload = bytes(buf[pos + 9:pos + 9 + length])
            mark = side.mark_at(side.base + pos)
            pos += 9 + length
            side.frames += 1
            self.frames += 1
            self._frame(side, ftype, flags, stream_id, payload, mark)
            if side.dead:
                return
        if pos:
            del buf[:pos]
            side.base += pos
            end = side.base
            marks = side.marks
            keep = 0
            while keep + 1 < len(marks) and marks[keep + 1][0] <= end:
                keep += 1
            del marks[:keep]

    def _frame(self, side: _Direction, ftype: int, flags: int, stream_id: int, payload: bytes, mark) -> None:
        if side.block is not None and ftype != CONTINUATION:
            raise H2Error(f"frame type {ftype} inside a header block")
        if ftype == DATA:
            if flags & PADDED:
                payload = _unpad(payload)
            stream = self.streams.get(stream_id)
            if stream is None:
                if stream_id not in self.closed_ids:
                    self._warn(f"DATA on stream {stream_id}, whose HEADERS are not in the capture: ignored")
                return
            (stream.req_data if side.client else stream.resp_data).append(payload)
            if flags & END_STREAM:
                self._end(side, stream)
        elif ftype in (HEADERS, PUSH_PROMISE):
            if stream_id == 0:
                raise H2Error("HEADERS on stream 0")
            if flags & PADDED:
                payload = _unpad(payload)
            if ftype == PUSH_PROMISE:
                payload = payload[4:]  # promised stream id: pushes are not requests the client sent
            elif flags & PRIORITY_FLAG:
                payload = payload[5:]
            side.block = (stream_id, flags, [payload], mark, ftype)
            if flags & END_HEADERS:
                self._block_done(side)
        elif ftype == CONTINUATION:
            if side.block is None or side.block[0] != stream_id:
                raise H2Error("CONTINUATION without its HEADERS")
            side.block[2].append(payload)
            if sum(map(len, side.block[2])) > MAX_HEADER_BLOCK:
                raise H2Error(f"header block over {MAX_HEADER_BLOCK} bytes")
            if flags & END_HEADERS:
                self._block_done(side)
        elif ftype == RST_STREAM:
            stream = self.streams.get(stream_id)
            if stream is not None:
                code = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else -1
                stream.reset = f"RST_STREAM (error code {code}) from the {'client' if side.client else 'server'}"
                if not stream.req_end:
                    stream.flag(CLOSED, "request", stream.reset)
                if not stream.resp_end:
                    stream.flag(CLOSED, "response", stream.reset)
                self._close(stream)
        elif ftype == SETTINGS and not flags & 1 and stream_id == 0:
            for i in range(0, len(payload) - 5, 6):
                if int.from_bytes(payload[i:i + 2], "big") == 1:  # HEADER_TABLE_SIZE: the peer's decoder
                    pass  # only bounds what the other side's encoder may use; its updates come in blocks
        # PRIORITY, PING, GOAWAY, WINDOW_UPDATE, unknown types: nothing to keep

    def _block_done(self, side: _Direction) -> None:
        stream_id, flags, parts, mark, ftype = side.block
        side.block = None
        headers, unknown = side.hpack.decode(b"".join(parts))
        if ftype == PUSH_PROMISE:
            return
        stream = self.streams.get(stream_id)
        part = "request" if side.client else "response"
        if stream is None:
            if stream_id in self.closed_ids or not stream_id & 1:
                return
            # a response whose request is not in the capture (sent before it started, or lost in a
            # gap): kept to be counted as an orphan by the caller (req_headers stays None)
            stream = self.streams[stream_id] = H2Stream(stream_id)
        if unknown:
            stream.flag(HPACK_UNKNOWN, part, f"{unknown} header(s) reference HPACK dynamic-table entries sent "
                                             f"before the capture started (stream {stream_id}): not guessed")
        if side.client:
            if stream.req_headers is None:
                stream.req_headers = headers
                stream.req_ts, stream.req_frame, stream.req_where = mark[1], mark[2], mark[3]
                self.on_open(stream)
            else:
                stream.req_trailers = headers
        else:
            status = next((value for name, value in headers if name == b":status"), None)
            if stream.resp_headers is None and status is not None and status[:1] == b"1" and len(status) == 3:
                stream.interim += (int(status),)
            elif stream.resp_headers is None:
                stream.resp_headers = headers
                stream.resp_ts, stream.resp_frame = mark[1], mark[2]
            else:
                stream.resp_trailers = headers
        if flags & END_STREAM:
            self._end(side, stream)

    def _end(self, side: _Direction, stream: H2Stream) -> None:
        if side.client:
            stream.req_end = True
        else:
            stream.resp_end = True
        if stream.done:
            self._close(stream)

    def _close(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.id, None) is not None:
            self.closed_ids.add(stream.id)
            if stream.resp_headers is None and not any(f[1] == "response" for f in stream.flags):
                stream.flag(TRUNCATED if stream.reset else CAPTURE_ENDED, "response",
                            stream.reset or "no response headers")
            self.on_close(stream)


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise H2Error("padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise H2Error("padding longer than the frame")
    return payload[1:len(payload) - pad]


def looks_like_frames(data: bytes) -> bool:
    """Do these bytes (the first payload of a connection seen mid-way) start with HTTP/2 frames?
    At least two whole frame headers of known types chained, or one frame filling the payload."""
    pos, count = 0, 0
    while len(data) - pos >= 9 and count < 4:
        length = int.from_bytes(data[pos:pos + 3], "big")
        ftype = data[pos + 3]
        if ftype > CONTINUATION or length > 1 << 14 or data[pos + 5] & 0x80:
            return False
        if ftype in (SETTINGS, PING, GOAWAY) and int.from_bytes(data[pos + 5:pos + 9], "big"):
            return False
        if ftype in (DATA, HEADERS, RST_STREAM, CONTINUATION) and not int.from_bytes(data[pos + 5:pos + 9], "big"):
            return False
        pos += 9 + length
        count += 1
    return (count >= 2 and pos <= len(data)) or (count == 1 and pos == len(data))


def exchanges_from_streams(client: bytes, server: bytes, protocol: str = "h2") -> list[H2Stream]:
    """Entry point for whole decrypted streams (TLS with ALPN h2): the streams of the connection,
    in the order they closed. The client stream starts with the preface."""
    out: list[H2Stream] = []
    session = H2Session(on_close=out.append, preface=client.startswith(PREFACE[:3]), known=client.startswith(PREFACE[:3]),
                        protocol=protocol)
    session.feed(True, client)
    session.feed(False, server)
    session.finish()
    return out
