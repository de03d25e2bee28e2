"""Frozen values for captured HTTP/1.x messages and exchanges.

Bytes and integer nanoseconds at the core: bodies and header pairs stay bytes (order, case and
duplicates kept); strings appear only for the start-line fields people filter and display on.
Nothing here imports asyncio or pytest.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field


Headers = tuple[tuple[bytes, bytes], ...]


def _fast_new(cls: type) -> type:
    """Give a frozen slots dataclass (declared with init=False) a fast constructor.

    One of these is built per captured request, response, exchange and source, so their
    construction is a large part of reading a capture. A frozen dataclass sets each field with
    object.__setattr__ (~0.05 us each); here the fields are stored into a twin class with the same
    slots (the same memory layout) by plain attribute stores, and the object then becomes a `cls`:
    about 2x faster. `cls(...)`, dataclasses.replace(), copy and pickle work as before (the twin is
    never seen outside this function).
    """
    fields = [f for f in cls.__dataclass_fields__.values() if f._field_type is dataclasses._FIELD]
    twin = type(f"_{cls.__name__}Builder", cls.__bases__, {"__slots__": cls.__slots__})
    names = [f.name for f in fields]
    params = ", ".join(name if f.default is dataclasses.MISSING else f"{name}=_default_{name}"
                       for name, f in zip(names, fields))
    source = (f"def __new__(cls, {params}):\n    self = _new(_twin)\n"
              + "".join(f"    self.{name} = {name}\n" for name in names)
              + "    self.__class__ = cls\n    return self\n")
    namespace = {"_new": object.__new__, "_twin": twin,
                 **{f"_default_{f.name}": f.default for f in fields if f.default is not dataclasses.MISSING}}
    exec(source, namespace)  # noqa: S102 - generated from the field names, as dataclasses does
    cls.__new__ = staticmethod(namespace["__new__"])
    cls._builder = twin  # for a reader that fills an instance in over time (capture/fast.py)
    cls.__getnewargs__ = lambda self: tuple(getattr(self, name) for name in names)  # copy, pickle
    return cls


# Why an exchange is not complete. One code per cause; the detail says where and how many bytes.
NO_RESPONSE = "no-response"  # the request is there, its response is not in the capture
GAP = "gap"  # bytes of the message are missing (lost segments, capture drops)
TRUNCATED = "truncated"  # packets were cut by the snapshot length, or the record was cut short
UNPARSABLE = "unparsable"  # the bytes are not valid HTTP/1.x where a message was expected
CAPTURE_ENDED = "capture-ended"  # the capture stops in the middle of the message
CLOSED = "closed"  # the connection was closed or reset before the message was complete
HPACK_UNKNOWN = "hpack-unknown"  # HTTP/2 headers referenced HPACK table entries sent before the capture began
H2_ERROR = "h2-error"  # HTTP/2 frames or a header block were invalid where the message was
HTTP2 = frozenset({"h2c", "h2"})  # Request.protocol values of HTTP/2
MALFORMED = "malformed-request"  # not valid HTTP/1.x, but the server answered it: replayed as the bytes sent
# Traffic that is read but not replayed (flag part NOT_REPLAYED; the request is whole, the exchange is
# written by convert and redact): a WebSocket handshake (the connection carried frames after it), a
# server-sent events stream, a response streamed over a long time (long-poll, chunked streaming).
WEBSOCKET, EVENT_STREAM, STREAMED = "websocket", "event-stream", "streamed"
NOT_REPLAYED = "replay"


@dataclass(frozen=True, slots=True)
class Flag:
    """One reason an exchange is incomplete: which part ("request" or "response") and why."""

    code: str
    part: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.code} ({self.part}): {self.detail}" if self.detail else f"{self.code} ({self.part})"


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case bytes), case-insensitively, or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def head_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    """(line, line ending) pairs of a head, start line first; the last pair is the empty line that ends
    it (b"", b"") when the head lacks one). Bare-LF heads are accepted: each line keeps its ending."""
    out = []
    pos = 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            out.append((head[pos:], b""))
            break
        line = head[pos:end]
        if line.endswith(b"\r"):
            out.append((line[:-1], b"\r\n"))
        else:
            out.append((line, b"\n"))
        pos = end + 1
    if len(out) < 2 or out[-1][0]:
        out.append((b"", b""))
    return out


def header_fields(lines: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]]:
    """(name, value, [(line, ending)...]) per header field of head_lines()[1:], in order: the one walk
    over header lines. Obsolete line folding (a line starting with a space or tab) is unfolded into the
    previous value (joined by one space) and its lines stay with the field, so an editor can keep or
    drop a field whole."""
    fields: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = []
    for line, ending in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value, raw = fields[-1]
            fields[-1] = (name, value + b" " + line.strip(b" \t\r"), raw + [(line, ending)])
            continue
        name, _, value = line.partition(b":")
        fields.append((name.rstrip(b" \t"), value.strip(b" \t\r"), [(line, ending)]))
    return fields


def split_head(head: bytes) -> Headers:
    """Header pairs of a message head (start line first), keeping order, case and duplicates.

    The head was validated by httptools when it was framed; this only cuts it up (header_fields).
    """
    return tuple((name, value) for name, value, _ in header_fields(head_lines(head)[1:]))


def codings(value: bytes | str | None) -> list[str]:
    """The codings of a Content-Encoding or Transfer-Encoding value, lower case, in the order they were
    applied."""
    if not value:
        return []
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return [c.strip().lower() for c in text.split(",") if c.strip()]


def field_value(headers: Headers, name: bytes) -> bytes | None:
    """Every value of header `name` (lower-case bytes) joined by ", " (RFC 9110 5.3), or None."""
    values = [value for key, value in headers if key.lower() == name]
    return b", ".join(values) if values else None


def is_chunked(transfer_encoding: bytes | str | None) -> bool:
    """Is a body with this Transfer-Encoding value chunked? Only when chunked is the last transfer
    coding (RFC 9112 6.1): `gzip, chunked` is, `chunked, gzip` is not (its end is the close)."""
    applied = codings(transfer_encoding)
    return bool(applied) and applied[-1] == "chunked"


_TCHARS = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def is_http_token(text: bytes | str) -> bool:
    """Is `text` an RFC 9110 token (5.6.2): what a field name or a method is made of?"""
    if isinstance(text, str):
        try:
            text = text.encode("latin-1")
        except UnicodeEncodeError:
            return False
    return _TCHARS.match(text) is not None


_unset = object.__delattr__


def lazy_body(message: Request | Response) -> Request | Response:
    """`message` (just built, its body the bytes of `raw` after `head`, no chunked framing) with its
    body left to be cut out of `raw` on first use: a replay grouped by connection, `inspect` or a
    plan never reads most recorded bodies, and copying a large one costs more than building the
    message. Every reader of `body` (and eq, hash, repr, replace, copy, pickle) sees the same bytes
    as before."""
    _unset(message, "body")
    return message


def build_head(start_line: bytes, headers: Headers) -> bytes:
    return start_line + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"


class _Message:
    """Shared behaviour of requests and responses: header pairs parsed from the head on first use, and
    the body of a message read from one segment cut out of `raw` on first use (see lazy_body())."""

    __slots__ = ()

    def __getattr__(self, name: str):
        # Reached only when normal lookup fails: for a field, when its slot was left unset. Only
        # `body` is (lazy_body()); it is the bytes after the head, as the framer read them.
        if name != "body":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self)
        body = self.raw[len(self.head):]
        object.__setattr__(self, "body", body)
        return body

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = split_head(self.head)
            object.__setattr__(self, "_headers", headers)
        return headers

    def header(self, name: str) -> bytes | None:
        return header_value(self.headers, name.lower().encode("latin-1"))


@_fast_new
@dataclass(frozen=True, slots=True, init=False)
class Request(_Message):
    method: str
    target: str
    version: str  # "1.1", "1.0"
    head: bytes  # request line and header lines up to and including the empty line, as captured
    body: bytes  # after removing chunked framing; content-encoding untouched
    raw: bytes  # the whole message as captured: on the wire, or as stored in the .gor record
    trailers: Headers = ()
    lf_only: bool = False  # the head used bare LF line endings (hand-edited .gor files)
    _headers: Headers | None = field(default=None, compare=False, repr=False)
    # how it was captured: "http/1" (version says which), "h2c" or "h2" (HTTP/2: head and raw are
    # synthesized in HTTP/1.1 form; targets/h2.py replays it over HTTP/2 when the target speaks it), or
    # "malformed" (not valid HTTP/1.x, see malformed(): raw is what the client sent, sent as it is)
    protocol: str = "http/1"

    @classmethod
    def build(cls, method: str, target: str, headers: Headers = (), body: bytes = b"",
              version: str = "1.1") -> Request:
        """A request made from parts (tests, rewrites): head and raw bytes are generated."""
        head = build_head(f"{method} {target} HTTP/{version}".encode("latin-1"), headers)
        return cls(method, target, version, head, body, head + body, (), False, tuple(headers))

    @classmethod
    def malformed(cls, raw: bytes) -> Request:
        """Bytes a client sent where a request was expected, which are not valid HTTP/1.x: the method
        is the first token as sent (up to the first space, at most 64 bytes), the target what stands
        between it and a final " HTTP/x.y" on the first line ("" without one), the head the first
        line and whatever follows up to an empty line; no body is known. Nothing else is guessed."""
        line = raw.split(b"\n", 1)[0].rstrip(b"\r")
        first, _, rest = line.partition(b" ")
        target, version = b"", ""
        if b" HTTP/" in rest:
            target, _, tail = rest.rpartition(b" HTTP/")
            version = tail.decode("latin-1")[:8]
        end = raw.find(b"\r\n\r\n")
        head = raw[:end + 4] if end >= 0 else raw
        return cls(first[:64].decode("latin-1"), target.decode("latin-1"), version, head, b"", raw, (), False, (),
                   "malformed")

    @property
    def http2(self) -> bool:
        """Captured over HTTP/2 (h2c or h2 inside TLS)."""
        return self.protocol in HTTP2

    @property
    def host(self) -> str | None:
        value = self.header("host")
        return value.decode("latin-1") if value is not None else None

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]


@_fast_new
@dataclass(frozen=True, slots=True, init=False)
class Response(_Message):
    status: int
    reason: str
    version: str
    head: bytes
    body: bytes
    raw: bytes
    trailers: Headers = ()
    interim: tuple[int, ...] = ()  # 1xx statuses that came before this final response
    lf_only: bool = False
    _headers: Headers | None = field(default=None, compare=False, repr=False)
    protocol: str = "http/1"  # as for Request

    @classmethod
    def build(cls, status: int, reason: str = "", headers: Headers = (), body: bytes = b"",
              version: str = "1.1") -> Response:
        head = build_head(f"HTTP/{version} {status} {reason}".rstrip().encode("latin-1"), headers)
        return cls(status, reason, version, head, body, head + body, (), (), False, tuple(headers))


@_fast_new
@dataclass(frozen=True, slots=True, init=False)
class Source:
    """Where an exchange was read from: enough to find it again with a hex editor or Wireshark."""

    file: str
    offset: int  # byte offset of the request's record (.gor) or of its first frame (pcap)
    record: int | None = None  # 0-based record index of the request in a .gor file
    frames: tuple[int, ...] = ()  # 1-based frame numbers: request's first frame, response's first frame

    def __str__(self) -> str:
        where = f"record {self.record}" if self.record is not None else (
            "frame " + "/".join(map(str, self.frames)) if self.frames else "")
        return f"{self.file} ({where}, byte {self.offset})" if where else f"{self.file} (byte {self.offset})"


class _Located:
    """Exchange's base: where an exchange was read from, kept as plain values (`_at`: file, byte
    offset, frame numbers) by the pcap fast path (capture/fast.py), which builds one object per
    exchange; its `source` is made from them on first use. An exchange built with a Source (every
    other reader) never uses `_at`. `_at` is no dataclass field: equality, hash, repr, replace, copy
    and pickle read `source` as before."""

    __slots__ = ("_at",)

    def __getattr__(self, name: str):
        # Reached only when normal lookup fails: for `source`, when its slot was left unset.
        if name != "source":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self)
        at = object.__getattribute__(self, "_at")  # (file, offset, its request's stream end, frames...)
        source = Source(at[0], at[1], None, at[3:])
        object.__setattr__(self, "source", source)
        return source


@_fast_new
@dataclass(frozen=True, slots=True, init=False)
class Exchange(_Located):
    """A captured request with its recorded response (when there is one), timing and provenance."""

    index: int  # position in the merged stream, ordered by request timestamp
    request: Request
    response: Response | None
    request_ts_ns: int  # first byte of the request
    response_ts_ns: int | None  # first byte of the final response
    connection: str  # e.g. "10.0.0.1:51534 -> 10.0.0.2:80" or "gor:1f90c1a2b3c4d5e6"
    position: int  # 0-based position of the request on its connection
    source: Source
    flags: tuple[Flag, ...] = ()
    replayed: tuple[Response, ...] = ()  # type 3 records: responses seen by an earlier GoReplay replay
    scheme: str = "http"  # "https" for exchanges decrypted from TLS
    server_name: str | None = None  # TLS: the SNI host name (the Host header when the client sent no SNI)

    @property
    def recorded_latency_ns(self) -> int | None:
        """Server latency as recorded: response start minus request start."""
        if self.response_ts_ns is None:
            return None
        return self.response_ts_ns - self.request_ts_ns

    @property
    def complete(self) -> bool:
        return not self.flags

    @property
    def replayable(self) -> bool:
        """The request is whole, so it can be sent again (its response may be absent)."""
        return not any(flag.part == "request" for flag in self.flags)

    @property
    def sendable(self) -> bool:
        """Replayable and not one of the streams that are read but not replayed."""
        return self.replayable and self.not_replayed is None

    @property
    def why_not_sent(self) -> tuple[str, ...]:
        """Why an exchange that is not sendable is not: its request's flags, or why it is not replayed."""
        if not self.replayable:
            return tuple(r for r in self.reasons if "(request)" in r)
        return (self.not_replayed,) if self.not_replayed else ()

    @property
    def not_replayed(self) -> str | None:
        """Why the exchange is read but not replayed (WebSocket, event stream, streamed response),
        or None."""
        for flag in self.flags:
            if flag.part == NOT_REPLAYED:
                return f"not replayed: {flag.detail}"
        return None

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(str(flag) for flag in self.flags)

    @property
    def label(self) -> str:
        return f"{self.request.method} {self.request.target}"
