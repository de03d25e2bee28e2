"""HTTP/1.x message framing for one direction of one connection (sans-IO).

Why this split: httptools (llhttp) parses a message head about 17x faster than h11 and is strict, so
it decides what is HTTP. But httptools does not tell where a message ends inside the bytes it was
fed, cannot be told that a response answers HEAD, and rejects bare-LF heads and unknown methods.
So the framing (where each message starts and ends, chunked decoding, gaps) is done here, on byte
offsets, and httptools parses every head. h11 was rejected: it is too slow for 150k packets/s.

Use: ``feed(data, ts_ns, frame, ack)`` appends captured bytes, ``gap(n, code)`` says n bytes are
missing, ``close(code)`` ends the stream; ``next_event()`` returns a :class:`Parsed` message, a
:class:`Lost` run of discarded bytes, a :class:`Stop` (not HTTP/1.x, or upgraded), or None when it
needs more data. Partial input is never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import httptools

from .message import (CAPTURE_ENDED, CLOSED, GAP, TRUNCATED, UNPARSABLE, Request, Response, is_chunked,
                      is_http_token, lazy_body, split_head)

MAX_HEAD = 64 * 1024  # a head longer than this is not HTTP we can use
MAX_KEPT = 64 * 1024  # bytes of an unparsable request kept (Lost.data) to be replayed as they were sent
_CRLF2 = b"\r\n\r\n"
_REQUEST_START = re.compile(rb"[A-Za-z][!#$%&'*+.^_`|~0-9A-Za-z-]{0,31} [!-~]{1,65536} HTTP/1\.[01]\r?\n")
_RESPONSE_START = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9][ \r\n]")
_REQUEST_LINE_FEED = re.compile(rb"\n(?=[A-Za-z][!#$%&'*+.^_`|~0-9A-Za-z-]{0,31} [!-~]{1,65536} HTTP/1\.[01]\r?\n)")
_STATUS_PREFIX = len(b"HTTP/1.1 200 ")  # the bytes _RESPONSE_START needs to recognise a status line

# First bytes of streams that are not HTTP/1.x, checked when a stream starts: (prefix test, reason).
STREAM_SIGNATURES: tuple[tuple[Callable[[bytes], bool], str, str], ...] = (
    (lambda b: len(b) >= 3 and b[0] in (0x14, 0x15, 0x16, 0x17) and b[1] == 3 and b[2] <= 4, "tls",
     "TLS record header"),
    (lambda b: b.startswith(b"PRI * HTTP/2"), "http2", "HTTP/2 connection preface"),
    (lambda b: b.startswith(b"SSH-"), "ssh", "SSH version banner"),
)

_SIGNATURE_PREFIXES = (b"PRI * HTTP/2.0\r\n",)  # signatures longer than the 8 bytes needed to judge

# Start-line pieces that repeat, as shared strings: a dict lookup costs less than slicing and decoding.
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE")}
_STATUS_LINES: dict[bytes, tuple[int, str, str]] = {}  # status line -> (status, reason, version)
_MAX_STATUS_LINES = 1024


def _status_line(line: bytes) -> tuple[int, str, str]:
    """(status, reason, version) of a status line httptools accepted strictly (remembered)."""
    parsed = (int(line[9:12]), line[13:].decode("latin-1"), line[5:8].decode("latin-1"))
    if len(_STATUS_LINES) < _MAX_STATUS_LINES:
        _STATUS_LINES[line] = parsed
    return parsed


_ASK = object()  # Framer._fast_response(): the response's callback has not run yet
BODY_FRAMING_METHODS = frozenset({"HEAD", "CONNECT"})  # a response to these may have no body whatever it says

# Framer states
HEAD, FIXED, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS, UNTIL_CLOSE, RESYNC, STOPPED = range(9)


class Parsed:
    """One framed message. Plain slots class: it is built on the hot path and consumed at once."""

    __slots__ = ("is_request", "method", "target", "status", "reason", "version", "head", "body", "trailers",
                 "raw", "start", "end", "ts_ns", "end_ts_ns", "frame", "end_frame", "ack", "where", "flags",
                 "lf_only")

    def __init__(self, is_request: bool, head: bytes, version: str, start: int) -> None:
        self.is_request = is_request
        self.head = head
        self.version = version
        self.start = start
        self.method = self.target = self.reason = ""
        self.status = 0
        self.trailers: tuple = ()
        self.flags: tuple[tuple[str, str], ...] = ()
        self.lf_only = False

    def flag(self, code: str, detail: str) -> None:
        self.flags += ((code, detail),)

    @property
    def headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return split_head(self.head)

    def __repr__(self) -> str:
        line = f"{self.method} {self.target}" if self.is_request else f"{self.status} {self.reason}"
        return f"<Parsed {line} [{self.start}:{self.end}] flags={self.flags}>"


class Lost:
    """Bytes that were discarded because they could not be framed (after a gap, or not HTTP).
    `message`: they are where a message was expected to start, and its head is invalid (so the
    message the peer sent there is lost, not just bytes)."""

    __slots__ = ("nbytes", "start", "code", "detail", "frame", "message", "data", "ts_ns", "where")

    def __init__(self, nbytes: int, start: int, code: str, detail: str, frame: int, message: bool = False) -> None:
        self.nbytes, self.start, self.code, self.detail, self.frame = nbytes, start, code, detail, frame
        self.message = message
        # UNPARSABLE only: the bytes themselves (a malformed request is kept as sent, see
        # reassembly/flows.py), and for `message` the timestamp and file offset where they start
        self.data = b""
        self.ts_ns = self.where = 0

    def __repr__(self) -> str:
        return f"<Lost {self.nbytes} bytes at {self.start}: {self.code} {self.detail}>"


class Stop:
    """The stream stops being HTTP/1.x here: its remaining bytes are not parsed."""

    __slots__ = ("code", "detail", "offset")

    def __init__(self, code: str, detail: str, offset: int) -> None:
        self.code, self.detail, self.offset = code, detail, offset

    def __repr__(self) -> str:
        return f"<Stop {self.code}: {self.detail} at {self.offset}>"


class _StartLine:
    """httptools callback target: only the target or the reason phrase. Header pairs are not
    collected here (a Python call per header costs more than the rest of the parse): httptools
    validates them, and the message cuts them out of its head when they are first used."""

    __slots__ = ("url", "status")

    def __init__(self) -> None:
        self.url = b""
        self.status = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        self.status += status


_LENIENT = dict(lenient_headers=True, lenient_optional_cr_before_lf=True, lenient_optional_lf_after_cr=True,
                lenient_chunked_length=True,  # Transfer-Encoding with Content-Length: chunked wins (RFC 9112 6.3)
                lenient_spaces_after_chunk_size=True, lenient_version=True)
# The headers that decide framing, found in the head by one search (case-insensitive).
_FRAMING = re.compile(rb"\n(content-length|transfer-encoding)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class _NoCallbacks:
    __slots__ = ()


_NO_CALLBACKS = _NoCallbacks()


class Completion:
    """httptools callback target that only notes when a message is complete. A request that its
    head completes has no body (no Transfer-Encoding, no or a zero Content-Length), so its head
    need not be searched for those: one Python call instead of a regex search. Not thread-safe:
    one per framer or reader, reset before each parse."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def on_message_complete(self) -> None:
        self.done = True


_RequestParser, _ResponseParser = httptools.HttpRequestParser, httptools.HttpResponseParser
_Upgrade, _ParserError = httptools.HttpParserUpgrade, httptools.HttpParserError


def parse_head(head: bytes, is_request: bool) -> tuple[str, str, str, int, bool] | str:
    """Validate and parse a complete head with httptools.

    Returns (method, target-or-reason, version, status, lenient) or an error text. The strict
    parse runs without callbacks (they cost more than the parse); once llhttp has accepted the
    start line, its fields are where the grammar puts them. If the strict parse fails, llhttp's
    leniencies are tried (bare LF, obs-fold, odd whitespace: real captures hold hand-edited and
    old-client traffic), and a method llhttp does not know (any RFC 9110 token is a valid method)
    is validated with a stand-in and kept as written.
    """
    parser = httptools.HttpRequestParser(_NO_CALLBACKS) if is_request else httptools.HttpResponseParser(_NO_CALLBACKS)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return _parse_head_leniently(head, is_request)
    line = head[:head.find(b"\r\n")]
    if is_request:
        parts = line.split()
        if len(parts) != 3:  # llhttp accepts runs of spaces; let its callbacks say what is what
            return _parse_head_leniently(head, is_request)
        return parts[0].decode("latin-1"), parts[1].decode("latin-1"), parts[2][5:].decode("latin-1"), 0, False
    return "", line[13:].decode("latin-1"), line[5:8].decode("latin-1"), int(line[9:12]), False


def _parse_head_leniently(head: bytes, is_request: bool, *, stand_in: bool = False
                          ) -> tuple[str, str, str, int, bool] | str:
    error = ""
    for lenient in (False, True):
        sink = _StartLine()
        parser = httptools.HttpRequestParser(sink) if is_request else httptools.HttpResponseParser(sink)
        if lenient:
            parser.set_dangerous_leniencies(**_LENIENT)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserInvalidMethodError:
            space = head.find(b" ")
            name = head[:space] if space > 0 else b""
            if stand_in or not is_http_token(name):
                return "invalid method"
            result = _parse_head_leniently(b"POST" + head[space:], True, stand_in=True)
            if isinstance(result, str):
                return result
            return (name.decode("latin-1"),) + result[1:]
        except httptools.HttpParserError as exc:
            error = str(exc) or type(exc).__name__
            if "Content-Length" in error and not stand_in:
                single = _one_content_length(head)
                if single is not None:  # the same length given twice: RFC 9110 lets us accept it
                    return _parse_head_leniently(single, is_request, stand_in=True)
            continue
        if is_request:
            return (parser.get_method().decode("latin-1"), sink.url.decode("latin-1"), parser.get_http_version(),
                    0, lenient)
        return "", sink.status.decode("latin-1"), parser.get_http_version(), parser.get_status_code(), lenient
    return error


_CONTENT_LENGTH_LINE = re.compile(rb"\r?\ncontent-length[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def _one_content_length(head: bytes) -> bytes | None:
    """`head` with repeated Content-Length values that all agree reduced to one header (for
    validation only), or None if they disagree."""
    values = {v.strip() for m in _CONTENT_LENGTH_LINE.finditer(head) for v in m.group(1).split(b",")}
    if len(values) != 1:
        return None
    value = values.pop()
    if not value.isdigit():
        return None
    stripped = _CONTENT_LENGTH_LINE.sub(b"", head)
    line_end = stripped.find(b"\n") + 1
    return stripped[:line_end] + b"Content-Length: " + value + b"\r\n" + stripped[line_end:]


def framing_headers(head: bytes) -> tuple[bytes | None, bytes | None]:
    """(Transfer-Encoding, Content-Length) values of a head; repeated headers joined with commas."""
    te = cl = None
    for name, value in _FRAMING.findall(head):
        value = value.rstrip(b" \t")
        if len(name) == 14:  # content-length
            cl = value if cl is None else cl + b"," + value
        else:
            te = value if te is None else te + b"," + value
    return te, cl


class Framer:
    """Frames the messages of one direction. See the module docstring for the protocol.

    `fast` (default: the class attribute, True) lets whole messages at the start of a feed skip
    the buffer (`_fast`); the general path is the reference, and the tests run both."""

    fast_path = True

    def __init__(self, is_request: bool, *, on_head: Callable[[Parsed], str | None] | None = None,
                 on_message: Callable[[Parsed], None] | None = None,
                 on_request: Callable[[Request, int, int, int, int], None] | None = None,
                 on_answer: Callable[[int | None], str | None] | None = None,
                 on_response: Callable[[Response, int, int, int], None] | None = None, resync: bool = False,
                 check_signature: bool = True, cut_code: str = CLOSED, fast: bool | None = None) -> None:
        self.is_request = is_request
        self.fast = self.fast_path if fast is None else fast
        # Called when a request head or a final response head is parsed, before its body. For a
        # response it returns the method of the request it answers (HEAD and CONNECT change the
        # framing): the connection pairs the response with its request there.
        self._on_head = on_head or (lambda msg: None)
        # Optional: whole messages framed straight from a segment are handed here at once instead
        # of waiting in the queue for next_event() (the per-packet fast path; order is kept).
        self._on_message = on_message
        # Optional, with on_message: a whole request framed straight from a segment with nothing
        # framed before it still pending (so no earlier head awaits its message) is handed here as
        # (Request, stream offset of its end, ts_ns, frame, file offset) instead of going through
        # on_head and on_message; it has no flags, trailers or bare-LF head.
        self._on_request = on_request
        # Optional, both or neither, with on_message: the same for final responses. In the fast
        # path, on_answer(ack) stands for on_head (it gets the ACK the head's segment carried and
        # returns the method answered), and a whole response is handed to on_response as
        # (Response, stream offset of its end, ts_ns, frame); status 1xx goes the general way.
        self._on_answer = on_answer
        self._on_response = on_response
        self._completion = Completion() if is_request else None
        self.cut_code = cut_code  # flag of a message cut short by an orderly close
        self._buf = bytearray()
        self._pos = 0  # read position in _buf
        self._base = 0  # stream offset of _buf[0]
        self._marks: list[tuple] = []  # (stream offset, ts_ns, frame, ack, file offset) per feed
        self._mark_i = 0
        self._state = RESYNC if resync else HEAD
        self._resync_code = GAP  # why bytes skipped by _resync() are lost: GAP, or UNPARSABLE after bad framing
        self._first = check_signature  # nothing framed yet: check for TLS/HTTP2/SSH and garbage
        self._scan = 0  # where the head-end search resumes
        self._cur: Parsed | None = None  # the message whose head is parsed and body is in progress
        self._parts: list[bytes] = []  # body pieces of _cur (chunks, or pieces split by a gap)
        self._raw_parts: list[bytes] = []  # raw pieces of _cur already moved out of _buf
        self._remaining = 0  # body (or chunk) bytes still expected
        self._msg_start = 0  # _buf index where the unstashed raw bytes of _cur start
        self._closing = False
        self._close_code: str | None = None
        self._close_detail = ""
        self._pending: list = []  # events produced by gap() before next_event() is called
        self._skipped = 0  # bytes discarded while resynchronising before anything was framed
        self.stopped: Stop | None = None
        self.leftover: list[tuple[bytes, int, int, int]] = []  # unframed bytes when it stopped (_rest())
        self.messages = 0

    # -- input -------------------------------------------------------------------------------
    def feed(self, data: bytes, ts_ns: int, frame: int = 0, ack: int | None = None, where: int = 0) -> None:
        """Append captured bytes: their timestamp, frame number, the ACK they carried and the file
        offset they came from stamp the messages that start or end in them."""
        if not data or self._state == STOPPED:
            return
        if (self._state == HEAD and not self._buf and not self._first and self.fast
                and self._fast(data, ts_ns, frame, ack, where)):
            return
        self._append(data, ts_ns, frame, ack, where)

    def _append(self, data: bytes, ts_ns: int, frame: int, ack: int | None, where: int) -> None:
        """Buffer `data` for the general path (feed() without its checks: the caller made them)."""
        self._marks.append((self._base + len(self._buf), ts_ns, frame, ack, where))
        self._buf += data

    def _fast(self, data: bytes, ts_ns: int, frame: int, ack: int | None, where: int) -> bool:
        """The common case, without copying into the buffer: `data` starts with a whole CRLF head.

        Returns False (nothing changed) when the general path must handle it; once the head's
        callback has run it always finishes the job, loading the buffer if the body goes on.
        The general path is the reference: Framer(fast=False) never takes this one, and the parser
        and reader tests run both ways.

        A whole message of at most 1 KiB that was framed this way before (the same bytes: a dense
        capture repeats a load generator's requests and a server's small responses) is the same
        frozen message again: it is taken from memory (_WHOLE) instead of being parsed and built.
        """
        size = len(data)
        if size <= _MAX_REMEMBERED and not self._pending:
            known = _WHOLE[self.is_request].get(data)
            if known is not None:
                if self.is_request:
                    if self._on_request is not None:
                        self._first = False
                        self._base = end = self._base + size
                        self.messages += 1
                        self._on_request(known, end, ts_ns, frame, where)
                        return True
                elif self._on_response is not None:
                    return self._fast_response(data, known[1], None, None, known[2], ts_ns, frame, ack, where,
                                               known[0])
        strict = _strict_head(data, self.is_request, self._completion)
        if strict is None:
            return False
        head_end, head, line, cl, again = strict
        if not self.is_request:
            status, reason, version = _STATUS_LINES.get(line) or _status_line(line)
            return self._fast_response(data, head_end, (status, reason, version), head, cl, ts_ns, frame, ack, where,
                                       remember=again)
        base = self._base
        length = int(cl) if cl is not None else 0
        start = _remembered_request_line(line)
        if start is None:
            return False
        method, target, version = start
        if head_end + length == size and self._on_request is not None and not self._pending:
            # The whole request in this segment, nothing framed before it waiting: straight
            # to a Request (no Parsed, one callback instead of on_head and on_message).
            self._first = False
            self._base = end = base + size
            self.messages += 1
            if length <= _MAX_REMEMBERED:
                request = Request(method, target, version, head, data[head_end:] if length else b"", data)
                if again and size <= _MAX_REMEMBERED:  # its head came before: it may well come again
                    _remember(_WHOLE[True], data, request)
            else:
                request = lazy_body(Request(method, target, version, head, b"", data))
            self._on_request(request, end, ts_ns, frame, where)
            return True
        msg = Parsed(True, head, version, base)
        msg.method = method
        msg.target = target
        msg.ts_ns, msg.frame, msg.ack, msg.where = ts_ns, frame, ack, where
        self._on_head(msg)
        return self._fast_rest(msg, data, head_end, length, ts_ns, frame, ack, where)

    def _fast_response(self, data: bytes, head_end: int, start, head: bytes | None, cl, ts_ns: int, frame: int,
                       ack: int | None, where: int, known: Response | None = None, answered=_ASK,
                       remember: bool = False) -> bool:
        """_fast() for a response whose head is accepted: `start` is (status, reason, version) or,
        for a whole response taken from memory, None and the Response itself is `known` (`cl` is
        then its Content-Length as a number, or None). Its callback runs here (unless the caller ran
        it: `answered` is then the method it returned), so this always finishes. `remember`: the
        head was seen before, so a whole response of at most 1 KiB is remembered (_WHOLE)."""
        if known is not None:
            status, reason, version, head = known.status, known.reason, known.version, known.head
        else:
            status, reason, version = start
        base = self._base
        size = len(data)
        length = int(cl) if cl is not None else 0
        fused = status >= 200 and self._on_response is not None
        msg = None if fused else _response_head(head, version, base, status, reason, ts_ns, frame, ack, where)
        if status >= 200:
            if answered is _ASK:
                answered = self._on_answer(ack) if fused else self._on_head(msg)
            if answered == "HEAD" or status in (204, 304) or (answered == "CONNECT" and status < 300):
                length = 0
            elif cl is None:
                length = -1  # the body runs until the connection closes
        else:
            length = 0  # an interim (1xx) response has no body, whatever its headers say
        if fused and head_end + length == size and not self._pending:
            # The whole final response in this segment: straight to a Response (no Parsed).
            self._first = False
            self._base = end = base + size
            self.messages += 1
            if known is not None:
                pass
            elif length > _MAX_REMEMBERED:
                known = lazy_body(Response(status, reason, version, head, b"", data))
            else:
                known = Response(status, reason, version, head, data[head_end:] if length else b"", data)
                if remember and size <= _MAX_REMEMBERED:
                    length = int(cl) if cl is not None else None
                    plain = 0 if status in (204, 304) else length if length is not None else -1
                    _remember(_WHOLE[False], data, (known, head_end, length, plain))
            self._on_response(known, end, ts_ns, frame)
            return True
        if msg is None:
            msg = _response_head(head, version, base, status, reason, ts_ns, frame, ack, where)
        return self._fast_rest(msg, data, head_end, length, ts_ns, frame, ack, where)

    def _fast_rest(self, msg: Parsed, data: bytes, head_end: int, length: int, ts_ns: int, frame: int,
                   ack: int | None, where: int) -> bool:
        """The end of _fast() once the head's callback has run: the message is whole in `data`, or
        its body goes on (the buffer is loaded and the general path continues)."""
        base = self._base
        self._first = False
        if head_end + length == len(data):
            msg.raw = data
            msg.body = data[head_end:] if length else b""
            msg.end = base + len(data)
            msg.end_ts_ns, msg.end_frame = ts_ns, frame
            self._base = msg.end
            self.messages += 1
            if self._on_message is not None and not self._pending:
                self._on_message(msg)
            else:
                self._pending.append(msg)
            return True
        # The body goes on past this segment (or another message follows): buffer and continue.
        self._marks.append((base, ts_ns, frame, ack, where))
        self._buf = bytearray(data)
        self._pos = head_end
        self._msg_start = 0
        self._cur = msg
        if length < 0:
            self._state = UNTIL_CLOSE
        elif length == 0:
            self._pending.append(self._finish_message(head_end))
        else:
            self._state = FIXED
            self._remaining = length
        return True

    @property
    def idle(self) -> bool:
        """Nothing buffered, pending or closing: next_event() would return None."""
        return not (self._pending or self._buf or self._closing)

    @property
    def offset(self) -> int:
        """Stream offset just past the last byte fed or skipped."""
        return self._base + len(self._buf)

    def gap(self, nbytes: int, code: str = GAP, detail: str = "") -> None:
        """`nbytes` bytes at the current end of the stream are missing from the capture."""
        if nbytes <= 0 or self._state == STOPPED:
            return
        self._drain_to_pending()
        state, cur = self._state, self._cur
        have = len(self._buf) - self._pos
        what = detail or f"{nbytes} bytes missing"
        if cur is not None and state in (FIXED, CHUNK_DATA, UNTIL_CLOSE):
            # The gap falls inside a body whose end is known (or is the close): keep what was
            # captured, skip the missing bytes, and go on framing after them.
            self._stash_current()
            cur.flag(code, what)
            if state == UNTIL_CLOSE:
                self._advance(nbytes)
                return
            self._remaining -= have + nbytes
            if self._remaining >= 0:
                self._advance(nbytes)
                return
            self._remaining = 0  # the gap runs past the end of this message, into the next one
            if state == CHUNK_DATA:
                cur.flag(UNPARSABLE, "the chunked framing after the gap is unknown")
            self._pending.append(self._emit(cur))
        elif cur is not None:  # chunk-size lines or trailers lost: the framing is unknown
            self._stash_current()
            cur.flag(code, what)
            self._pending.append(self._emit(cur))
        elif have:
            cut = self._cut_head(code, what) if state == HEAD else None
            if cut is None:
                start = self._offset_of(self._pos)
                cut = Lost(have, start, code, f"{have} bytes of a message head before a gap of {nbytes} bytes",
                           self._frame_at(start))
            self._pending.append(cut)
        self._advance(nbytes)
        self._state = RESYNC
        self._resync_code = GAP

    def _cut_head(self, code: str, what: str) -> Parsed | None:
        """A message whose head a gap cuts (a snapshot length shorter than the head, a lost
        segment): when its start line is whole, the message is known (method and target, or
        status), so it is framed, flagged, with the complete header lines as its head and no body.
        None when the start line itself is cut, or for an interim response."""
        buf, pos = self._buf, self._pos
        data = bytes(buf[pos:])
        if self.is_request:
            if _REQUEST_START.match(data) is None:
                return None
            method, target, version = data[:data.find(b"\n")].rstrip(b"\r").split(b" ")
        else:
            if _RESPONSE_START.match(data) is None or data[9:10] == b"1":
                return None
            line = data[:data.find(b"\n")] if b"\n" in data else data
            version, status, reason = line[:8], int(line[9:12]), line[13:].rstrip(b"\r")
        start = self._offset_of(pos)
        msg = Parsed(self.is_request, data[:data.rfind(b"\n") + 1], version[5:].decode("latin-1"), start)
        _, msg.ts_ns, msg.frame, msg.ack, msg.where = self._find_mark(start)
        if self.is_request:
            msg.method, msg.target = method.decode("latin-1"), target.decode("latin-1")
        else:
            msg.status, msg.reason = status, reason.decode("latin-1")
        self._first = False
        self._on_head(msg)
        msg.flag(code, f"the message head is cut after {len(data)} bytes ({what}); headers and body unknown")
        msg.raw, msg.body = data, b""
        msg.end = self._offset_of(len(buf))
        _, msg.end_ts_ns, msg.end_frame, _, _ = self._find_mark(self._offset_of(len(buf) - 1))
        self.messages += 1
        return msg

    def close(self, code: str | None = None, detail: str = "") -> None:
        """No more data will come. `code` None: an orderly end (FIN, end of a .gor record); CLOSED
        for a reset; CAPTURE_ENDED when the capture stops. A message cut short is flagged with
        `code`, or with `cut_code` after an orderly end."""
        if not self._closing and self._state != STOPPED:
            self._closing = True
            self._close_code = code
            self._close_detail = detail

    def stop(self, code: str, detail: str) -> None:
        """Stop framing from the outside (the other direction upgraded the connection)."""
        if self._state != STOPPED:
            self._stop(code, detail)

    # -- output ------------------------------------------------------------------------------
    def next_event(self):
        if self._pending:
            return self._pending.pop(0)
        while True:
            state = self._state
            if state == HEAD:
                result = self._parse_head()
            elif state == FIXED:
                result = self._fixed_body()
            elif state == RESYNC:
                result = self._resync()
            elif state == UNTIL_CLOSE or state == STOPPED:
                result = None
            else:
                result = self._chunked_body()
            if result is _AGAIN:
                continue
            if result is None and self._closing:
                return self._at_close()
            return result

    # -- states ------------------------------------------------------------------------------
    def _parse_head(self):
        buf, pos = self._buf, self._pos
        n = len(buf)
        while pos < n and buf[pos] in (13, 10):  # empty lines before a message are ignored (RFC 9112)
            pos += 1
        self._pos = pos
        if pos >= n:
            return None
        if self._first:
            stop = self._check_start(bytes(buf[pos:pos + 24]), pos)
            if stop is not None:
                return stop
        start = max(pos, self._scan)
        end = buf.find(_CRLF2, start)
        lf = buf.find(b"\n\n", start, end + 2 if end >= 0 else n)
        if lf >= 0 and (end < 0 or lf < end):
            head_end = lf + 2
        elif end >= 0:
            head_end = end + 4
        else:
            if n - pos > MAX_HEAD:
                return self._unparsable(pos, f"no end of the message head within {MAX_HEAD} bytes")
            self._scan = max(pos, n - 3)
            return None
        self._scan = 0
        head = bytes(buf[pos:head_end])
        msg = self._head(head, self._base + pos)
        if not isinstance(msg, Parsed):
            # It looked like HTTP (_check_start let it through): a bad message, not a foreign protocol.
            return self._unparsable(pos, msg)
        self._msg_start = pos
        self._pos = head_end
        self._cur = msg
        return self._begin_body(msg, head, pos)

    def _head(self, head: bytes, start: int) -> Parsed | str:
        """Parse a complete head into a message (no body yet), stamped from the feed it began in."""
        result = parse_head(head, self.is_request)
        if isinstance(result, str):
            return result
        method, text, version, status, lenient = result
        self._first = False
        msg = Parsed(self.is_request, head, version, start)
        if lenient:
            msg.lf_only = b"\r\n" not in head
        _, msg.ts_ns, msg.frame, msg.ack, msg.where = self._find_mark(start)
        if self.is_request:
            msg.method = method
            msg.target = text
        else:
            msg.status = status
            msg.reason = text
        return msg

    def _begin_body(self, msg: Parsed, head: bytes, pos: int):
        """Decide how the body of `msg` is framed (RFC 9112 section 6.3)."""
        te, cl = framing_headers(head)
        chunked = is_chunked(te)
        if self.is_request:
            self._on_head(msg)
            if te is not None:
                if not chunked:
                    return self._unparsable(pos, "request Transfer-Encoding does not end with chunked")
                self._state = CHUNK_SIZE
                return _AGAIN
            return self._begin_fixed(cl, pos) if cl is not None else self._finish_message(self._pos)
        status = msg.status
        if status < 200:
            return self._finish_message(self._pos)  # interim; the connection deals with 101
        answered = self._on_head(msg)
        if answered == "HEAD" or status in (204, 304) or (answered == "CONNECT" and status < 300):
            return self._finish_message(self._pos)
        if chunked:
            self._state = CHUNK_SIZE
        elif te is None and cl is not None:
            return self._begin_fixed(cl, pos)
        else:
            self._state = UNTIL_CLOSE
        return _AGAIN

    def _check_start(self, head: bytes, pos: int):
        """At the very start of a stream: is this HTTP/1.x at all? (None: yes, or not known yet.)"""
        for test, code, what in STREAM_SIGNATURES:
            if test(head):
                return self._stop(code, f"{what} at stream byte {self._offset_of(pos)}")
        if len(head) < 8 or any(sig.startswith(head) for sig in _SIGNATURE_PREFIXES):
            return None  # too short to tell, or the start of a known signature: wait for more
        if self.is_request:
            token, space, _ = head.partition(b" ")
            plausible = bool(space) and is_http_token(token)
        else:
            plausible = head.startswith(b"HTTP/")
        if not plausible:
            kind = "request" if self.is_request else "status"
            return self._stop("not-http", f"stream starts with {head[:16]!r}, not an HTTP/1.x {kind} line")
        return None

    def _begin_fixed(self, value: bytes, pos: int):
        if not value.isdigit():  # repeated headers (or a list) are fine if all values agree
            lengths = {v.strip() for v in value.split(b",")}
            value = lengths.pop() if len(lengths) == 1 else b""
            if not value.isdigit():
                return self._unparsable(pos, f"bad Content-Length {value!r}")
        self._remaining = int(value)
        if self._remaining == 0:
            return self._finish_message(self._pos)
        self._state = FIXED
        return _AGAIN

    def _fixed_body(self):
        buf = self._buf
        if len(buf) - self._pos < self._remaining:
            return None
        end = self._pos + self._remaining
        self._parts.append(bytes(buf[self._pos:end]))
        self._remaining = 0
        return self._finish_message(end)

    def _chunked_body(self):
        buf = self._buf
        while True:
            state, pos = self._state, self._pos
            if state == CHUNK_SIZE:
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    return self._broken_chunk("chunk-size line longer than 1024 bytes") \
                        if len(buf) - pos > 1024 else None
                line = bytes(buf[pos:eol]).rstrip(b"\r").split(b";", 1)[0].strip()
                if not line or not all(c in b"0123456789abcdefABCDEF" for c in line):
                    return self._broken_chunk(f"bad chunk size {line[:20]!r}")
                size = int(line, 16)
                self._pos = eol + 1
                if size == 0:
                    self._state = TRAILERS
                else:
                    self._remaining = size
                    self._state = CHUNK_DATA
            elif state == CHUNK_DATA:
                if len(buf) - pos < self._remaining:
                    return None
                end = pos + self._remaining
                self._parts.append(bytes(buf[pos:end]))
                self._pos = end
                self._remaining = 0
                self._state = CHUNK_END
            elif state == CHUNK_END:
                if buf[pos:pos + 2] == b"\r\n":
                    self._pos = pos + 2
                elif buf[pos:pos + 1] == b"\n":
                    self._pos = pos + 1
                elif len(buf) - pos < 2:
                    return None
                else:
                    return self._broken_chunk("chunk data not followed by CRLF")
                self._state = CHUNK_SIZE
            else:  # TRAILERS
                if buf[pos:pos + 2] == b"\r\n":
                    return self._finish_message(pos + 2)
                if buf[pos:pos + 1] == b"\n":
                    return self._finish_message(pos + 1)
                end = buf.find(_CRLF2, pos)
                lf = buf.find(b"\n\n", pos, end + 2 if end >= 0 else len(buf))
                if lf >= 0 and (end < 0 or lf < end):
                    end, skip = lf, 2
                elif end >= 0:
                    skip = 4
                elif len(buf) - pos > MAX_HEAD:
                    return self._broken_chunk(f"trailers longer than {MAX_HEAD} bytes")
                else:
                    return None
                trailers = []
                for line in bytes(buf[pos:end]).replace(b"\r\n", b"\n").split(b"\n"):
                    name, sep, value = line.partition(b":")
                    if not sep or not is_http_token(name):
                        return self._broken_chunk(f"bad trailer line {line[:40]!r}")
                    trailers.append((name, value.strip()))
                self._cur.trailers = tuple(trailers)
                return self._finish_message(end + skip)

    def _resync(self):
        """Look for the next message start (after a gap, or when the capture began mid-stream)."""
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            return None
        if self._first:
            for test, code, what in STREAM_SIGNATURES:
                if test(bytes(buf[pos:pos + 24])):
                    return self._stop(code, f"{what} at stream byte {self._offset_of(pos)}")
        if self.is_request:
            found = pos if _REQUEST_START.match(buf, pos) else -1
            if found < 0:
                match = _REQUEST_LINE_FEED.search(buf, pos)
                found = match.start() + 1 if match else -1
        else:
            # A status line anywhere, not only at a line start: a response whose length could not be
            # known (an invalid Content-Length) runs straight into the next one.
            match = _RESPONSE_START.search(buf, pos)
            found = match.start() if match else -1
        if found < 0:
            if self.is_request:
                found = buf.rfind(b"\n", pos) + 1  # keep the last partial line: a start line may be arriving
            else:
                found = max(pos, len(buf) - _STATUS_PREFIX)  # keep what may be the start of a status line
            if found <= pos:
                if len(buf) - pos <= MAX_HEAD:
                    return None
                found = len(buf)
        else:
            self._state = HEAD
            self._first = False
            if found == pos:
                return _AGAIN
        start = self._offset_of(pos)
        self._pos = found
        lost = Lost(found - pos, start, self._resync_code, "bytes skipped while looking for the next message "
                    "start" + (" after an unparsable message" if self._resync_code == UNPARSABLE else ""),
                    self._frame_at(start))
        if self._resync_code == UNPARSABLE:
            lost.data = bytes(buf[pos:min(found, pos + MAX_KEPT)])
        if self._first:
            self._skipped += found - pos
            if self._skipped > 4 * MAX_HEAD:
                return self._stop("not-http", f"no HTTP/1.x message start in the first {self._skipped} bytes")
        if self._state == RESYNC:
            self._compact()
        return lost

    def _at_close(self):
        """The stream is closed and no more data will come: settle the message in progress."""
        code, detail = self._close_code, self._close_detail
        state, cur = self._state, self._cur
        rest = len(self._buf) - self._pos
        self._closing = False
        if cur is not None and state == UNTIL_CLOSE:
            self._state = STOPPED
            self._parts.append(bytes(self._buf[self._pos:]))
            if code is not None:
                cur.flag(code, detail or "the body may go on past the end of the stream")
            return self._finish_message(len(self._buf))
        if cur is not None:
            code = code or self.cut_code
            what = detail or _CUT.get(code, code)
            if state == FIXED:
                stashed = sum(map(len, self._parts))
                what += f" after {stashed + rest} of {stashed + self._remaining} body bytes"
            else:
                what += " inside a chunked body"
            self._stash_current()
            self._state = STOPPED
            cur.flag(code, what)
            return self._emit(cur)
        self._state = STOPPED
        if rest and state == RESYNC:  # no message start found in them
            start = self._offset_of(self._pos)
            lost = Lost(rest, start, self._resync_code, f"{rest} bytes at the end of the stream skipped while "
                        "looking for the next message start", self._frame_at(start))
            if self._resync_code == UNPARSABLE:
                lost.data = bytes(self._buf[self._pos:self._pos + MAX_KEPT])
            return lost
        if rest and state == HEAD:
            start = self._offset_of(self._pos)
            return Lost(rest, start, code or self.cut_code,
                        f"{rest} bytes of an incomplete message at the end of the stream", self._frame_at(start))
        return None

    # -- helpers -----------------------------------------------------------------------------
    def _finish_message(self, end: int):
        msg, buf, parts = self._cur, self._buf, self._parts
        if self._raw_parts:
            self._raw_parts.append(bytes(buf[self._msg_start:end]))
            msg.raw = b"".join(self._raw_parts)
            self._raw_parts = []
        else:
            msg.raw = bytes(buf[self._msg_start:end])
        msg.body = parts[0] if len(parts) == 1 else b"".join(parts)
        msg.end = self._base + end
        _, msg.end_ts_ns, msg.end_frame, _, _ = self._find_mark(self._base + max(end - 1, self._msg_start))
        self._pos = end
        self._cur = None
        self._parts = []
        self.messages += 1
        if self._state != STOPPED:
            self._state = HEAD
            self._compact()
        return msg

    def _emit(self, msg: Parsed) -> Parsed:
        """Finish `msg` from its stashed pieces: it was cut by a gap, a close or broken framing."""
        msg.raw = b"".join(self._raw_parts)
        msg.body = b"".join(self._parts)
        msg.end = self._offset_of(len(self._buf))
        _, msg.end_ts_ns, msg.end_frame, _, _ = self._marks[-1] if self._marks else (0, msg.ts_ns, msg.frame, 0, 0)
        self._cur = None
        self._parts = []
        self._raw_parts = []
        self.messages += 1
        return msg

    def _stash_current(self) -> None:
        """Move the buffered bytes of the message in progress out of _buf (before a gap or a close)."""
        buf = self._buf
        if self._state in (FIXED, CHUNK_DATA, UNTIL_CLOSE) and self._pos < len(buf):
            self._parts.append(bytes(buf[self._pos:]))
        self._raw_parts.append(bytes(buf[self._msg_start:]))
        self._pos = self._msg_start = len(buf)

    def _advance(self, nbytes: int) -> None:
        """Skip `nbytes` missing bytes at the end of the stream: the buffer restarts after them."""
        self._base += len(self._buf) + nbytes
        self._buf = bytearray()
        self._pos = self._msg_start = self._scan = 0

    def _drain_to_pending(self) -> None:
        """Frame what is buffered before a gap changes the state."""
        closing, self._closing = self._closing, False
        pending, self._pending = self._pending, []
        while (event := self.next_event()) is not None:
            pending.append(event)
        self._pending = pending
        self._closing = closing

    def _stop(self, code: str, detail: str) -> Stop:
        self.leftover = self._rest()
        self._state = STOPPED
        self.stopped = Stop(code, detail, self._offset_of(self._pos))
        self._base += len(self._buf)
        self._buf = bytearray()
        self._pos = self._msg_start = 0
        self._cur = None
        return self.stopped

    def _rest(self) -> list[tuple[bytes, int, int, int]]:
        """The bytes not framed yet, as (bytes, ts_ns, frame, file offset) per feed: what another
        protocol's parser (HTTP/2 after a preface or an upgrade) takes over."""
        buf, pos, base, marks = self._buf, self._pos, self._base, self._marks
        out = []
        for i, (offset, ts_ns, frame, _ack, where) in enumerate(marks):
            start = max(offset - base, pos)
            end = marks[i + 1][0] - base if i + 1 < len(marks) else len(buf)
            if end > start:
                out.append((bytes(buf[start:end]), ts_ns, frame, where))
        return out

    def _unparsable(self, pos: int, why: str) -> Lost:
        """Not HTTP/1.x where a message was expected: skip that line and look for the next start."""
        self._cur = None
        self._state = RESYNC
        self._resync_code = UNPARSABLE
        self._scan = 0
        nl = self._buf.find(b"\n", pos)
        self._pos = nl if nl >= 0 else len(self._buf)
        start = self._offset_of(pos)
        lost = Lost(self._pos - pos, start, UNPARSABLE, why, self._frame_at(start), message=True)
        lost.data = bytes(self._buf[pos:min(self._pos, pos + MAX_KEPT)])
        _, lost.ts_ns, _, _, lost.where = self._find_mark(start)
        return lost

    def _broken_chunk(self, why: str) -> Parsed:
        """The chunked framing is broken at _pos: the message ends there, incomplete; what follows
        stays in the buffer and is searched for the next message start."""
        msg = self._cur
        buf, pos = self._buf, self._pos
        self._raw_parts.append(bytes(buf[self._msg_start:pos]))
        msg.flag(UNPARSABLE, why)
        msg.raw = b"".join(self._raw_parts)
        msg.body = b"".join(self._parts)
        msg.end = self._offset_of(pos)
        _, msg.end_ts_ns, msg.end_frame, _, _ = self._find_mark(self._offset_of(max(pos - 1, 0)))
        self._cur = None
        self._parts = []
        self._raw_parts = []
        self._msg_start = pos
        self.messages += 1
        self._state = RESYNC
        self._resync_code = UNPARSABLE
        return msg

    def _offset_of(self, index: int) -> int:
        return self._base + index

    def _compact(self) -> None:
        pos = self._pos
        if pos == len(self._buf):
            self._base += pos
            self._buf = bytearray()
            self._pos = self._msg_start = 0
        elif pos > 65536 and pos * 2 > len(self._buf):
            del self._buf[:pos]
            self._base += pos
            self._msg_start -= pos
            self._pos = 0
        marks = self._marks
        if len(marks) > 8:  # keep the marks that can still stamp a message start or end
            keep = self._base + min(self._pos, self._msg_start)
            i = 0
            while i + 1 < len(marks) and marks[i + 1][0] <= keep:
                i += 1
            if i:
                del marks[:i]
                self._mark_i = 0

    def _find_mark(self, offset: int) -> tuple:
        marks = self._marks
        if not marks:
            return (offset, 0, 0, None, 0)
        i = self._mark_i
        if i >= len(marks) or marks[i][0] > offset:
            i = 0
        n = len(marks)
        while i + 1 < n and marks[i + 1][0] <= offset:
            i += 1
        self._mark_i = i
        return marks[i]

    def _frame_at(self, offset: int) -> int:
        return self._find_mark(offset)[2]


def _response_head(head: bytes, version: str, start: int, status: int, reason: str, ts_ns: int, frame: int,
                   ack: int | None, where: int) -> Parsed:
    """The Parsed of a response head framed from one segment (Framer._fast)."""
    msg = Parsed(False, head, version, start)
    msg.status = status
    msg.reason = reason
    msg.ts_ns, msg.frame, msg.ack, msg.where = ts_ns, frame, ack, where
    return msg


def _strict_head(data: bytes, is_request: bool, completion: Completion | None, remember: bool = True
                 ) -> tuple[int, bytes, bytes, bytes | None, bool] | None:
    """The common case of a message starting `data`: a whole CRLF head that httptools accepts
    strictly, with no Transfer-Encoding and at most one numeric Content-Length. Returns (end of the
    head, the head, its start line, the Content-Length digits or None, whether the head was
    remembered from before), or None for anything else
    (the general path then parses it, leniently, or says what is wrong). `completion` (requests
    only) is reused across calls. The fast paths of Framer and fast_message() share it.

    The answer depends on the head's bytes alone, so heads accepted once are remembered (_HEADS,
    bounded): a dense capture repeats its heads (a load generator's requests, a server's responses
    within the second of their Date), and a head seen before costs a dict lookup instead of a parse;
    the exchanges then share one head object.
    """
    end = data.find(_CRLF2)
    if end < 0 or data[0] in (13, 10):
        return None
    head_end = end + 4
    head = data if head_end == len(data) else data[:head_end]
    if remember:
        known = _HEADS[is_request]
        seen = known.get(head)
        if seen is not None:
            return head_end, seen[0], seen[1], seen[2], True
    if is_request:
        completion.done = False
    try:
        (_RequestParser(completion) if is_request else _ResponseParser(_NO_CALLBACKS)).feed_data(head)
    except _Upgrade:
        if is_request:
            completion.done = False  # an upgrade may still have a body: read the headers
    except _ParserError:
        return None
    cl = None
    if not is_request or not completion.done:  # (done: no framing headers, see Completion)
        cl = _content_length(head)
        if cl is _AGAIN:
            return None
    line = head[:head.find(b"\r\n")]
    if remember and head_end <= _MAX_REMEMBERED:
        if len(known) >= _MAX_HEADS:
            known.clear()
        known[head] = (head, line, cl)
    return head_end, head, line, cl, False


_HEADS: tuple[dict[bytes, tuple], dict[bytes, tuple]] = ({}, {})  # [is_request]: head -> (head, line, cl)
# [is_request]: the bytes of a whole message framed by Framer._fast -> the Request, or for a final response
# (Response, end of its head, Content-Length as a number or None, body length unless it answers one of
# BODY_FRAMING_METHODS); messages up to _MAX_REMEMBERED bytes
_WHOLE: tuple[dict[bytes, Request], dict[bytes, tuple]] = ({}, {})
_MAX_HEADS = 4096  # heads remembered per direction (cleared when full)
_MAX_REMEMBERED = 1024  # longer heads are not remembered: at most 8 MiB held, ~2 MiB for usual heads


def _remember(memory: dict, key: bytes, value) -> None:
    """Remember `value` for `key` in a bounded memory (_HEADS, _WHOLE): cleared when full."""
    if len(memory) >= _MAX_HEADS:
        memory.clear()
    memory[key] = value


def _content_length(head: bytes):
    """The Content-Length digits of a strictly parsed head, None without one, or _AGAIN when the
    general path must frame it: a Transfer-Encoding, or a repeated or non-numeric Content-Length."""
    framing = _FRAMING.findall(head)
    if not framing:
        return None
    if len(framing) > 1 or len(framing[0][0]) != 14:
        return _AGAIN  # Transfer-Encoding or repeated Content-Length: the general path
    cl = framing[0][1].rstrip(b" \t")
    return cl if cl.isdigit() else _AGAIN


def _request_line(line: bytes) -> tuple[str, str, str] | None:
    """(method, target, version) of a request line httptools accepted, or None if it does not
    have exactly three parts."""
    parts = line.split()
    if len(parts) != 3:
        return None
    method, target, version = parts
    return (_METHODS.get(method) or method.decode("latin-1"), target.decode("latin-1"),
            _VERSIONS.get(version) or version[5:].decode("latin-1"))


def _remembered_request_line(line: bytes) -> tuple[str, str, str] | None:
    """_request_line(), remembered like status lines (Framer's fast path: dense captures repeat their
    request lines; .gor records, whose lines are mostly unique, do without)."""
    known = _REQUEST_LINES.get(line)
    if known is None:
        known = _request_line(line)
        if known is not None:
            if len(_REQUEST_LINES) >= _MAX_STATUS_LINES:
                _REQUEST_LINES.clear()
            _REQUEST_LINES[line] = known
    return known


_REQUEST_LINES: dict[bytes, tuple[str, str, str]] = {}


def whole_request(data: bytes) -> Request | None:
    """Framer._fast() for a request alone in a segment, with nothing buffered before it, not found
    in _WHOLE (the caller looked): the Request, or None where the framer would take another way (a
    head it does not accept strictly, a body that runs past the segment or stops short of its end).
    The same memories are read and written (heads, request lines, whole messages), in the same order,
    so the pcap fast path (capture/fast.py) shares messages as the framer does."""
    strict = _strict_head(data, True, _WHOLE_COMPLETION)
    if strict is None:
        return None
    head_end, head, line, cl, again = strict
    length = int(cl) if cl is not None else 0
    start = _remembered_request_line(line)
    size = len(data)
    if start is None or head_end + length != size:
        return None
    method, target, version = start
    if length > _MAX_REMEMBERED:
        return lazy_body(Request(method, target, version, head, b"", data))
    request = Request(method, target, version, head, data[head_end:] if length else b"", data)
    if again and size <= _MAX_REMEMBERED:
        _remember(_WHOLE[True], data, request)
    return request


def whole_response(data: bytes) -> Response | None:
    """Framer._fast_response() for a final response alone in a segment that answers a request that
    is not HEAD or CONNECT (the caller sends those the general way), not found in _WHOLE: the
    Response, or None where the framer would take another way (an interim or 101 status, a body that
    runs to the close, past the segment or stops short of its end). Remembers as the framer does."""
    strict = _strict_head(data, False, None)
    if strict is None:
        return None
    head_end, head, line, cl, again = strict
    status, reason, version = _STATUS_LINES.get(line) or _status_line(line)
    if status < 200:
        return None
    if status in (204, 304):
        length = 0
    elif cl is None:
        return None  # the body runs until the connection closes
    else:
        length = int(cl)
    size = len(data)
    if head_end + length != size:
        return None
    if length > _MAX_REMEMBERED:
        return lazy_body(Response(status, reason, version, head, b"", data))
    response = Response(status, reason, version, head, data[head_end:] if length else b"", data)
    if again and size <= _MAX_REMEMBERED:
        length = int(cl) if cl is not None else None
        plain = 0 if status in (204, 304) else length if length is not None else -1
        _remember(_WHOLE[False], data, (response, head_end, length, plain))
    return response


_WHOLE_COMPLETION = Completion()  # whole_request()'s, reused (reset by _strict_head)


_AGAIN = object()
_CUT = {CLOSED: "connection closed", CAPTURE_ENDED: "capture ended", TRUNCATED: "data ends"}


def fast_message(data: bytes, is_request: bool, method: str | None = None, *,
                 completion: Completion | None = None) -> Request | Response | None:
    """One whole message in `data` (a .gor record), in the common case only: a CRLF head that
    httptools accepts strictly, no Transfer-Encoding, a body exactly as long as the framing says.
    Returns None for anything else; parse_single() then handles it (and says what is wrong).
    A caller parsing many requests passes a Completion of its own (made here otherwise).
    """
    if is_request and completion is None:
        completion = Completion()
    strict = _strict_head(data, is_request, completion, False)
    if strict is None:
        return None
    head_end, head, line, cl, _ = strict
    body_length = len(data) - head_end
    if is_request:
        if body_length != (int(cl) if cl is not None else 0):
            return None
        start = _request_line(line)
        if start is None:
            return None
        method, target, version = start
        if body_length > _MAX_REMEMBERED:
            return lazy_body(Request(method, target, version, head, b"", data))
        return Request(method, target, version, head, data[head_end:] if body_length else b"", data)
    status, reason, version = _STATUS_LINES.get(line) or _status_line(line)
    if status < 200 or status in (204, 304) or method == "HEAD" or (method == "CONNECT" and status < 300):
        expected = 0
    else:
        expected = int(cl) if cl is not None else body_length  # no length: the record's end ends it
    if body_length != expected:
        return None
    if body_length > _MAX_REMEMBERED:
        return lazy_body(Response(status, reason, version, head, b"", data))
    return Response(status, reason, version, head, data[head_end:] if body_length else b"", data)


def parse_single(data: bytes, is_request: bool, *, method: str | None = None,
                 ts_ns: int = 0) -> tuple[Parsed | None, str, int]:
    """Parse `data` holding one message (a .gor record): (message, error, extra bytes after it).

    A body shorter than its framing says is flagged "truncated"; an unparsable head gives
    (None, why, 0).
    """
    framer = Framer(is_request, on_head=lambda msg: method, check_signature=False, cut_code=TRUNCATED)
    framer.feed(data, ts_ns, 0)
    event = framer.next_event()
    if event is None:
        framer.close()
        event = framer.next_event()
    if isinstance(event, Parsed):
        return event, "", max(0, len(data) - event.end)
    if isinstance(event, Lost):
        return None, event.detail, 0
    return None, "the record ends inside the message head", 0
