"""Values that differ between the recorded run and the replay (tokens, session ids), carried over.

The classic case: the recorded login response gave token A and later recorded requests carry A; the
replayed login gets token B, so the later requests must carry B. :class:`ReplayState` holds the learned
pairs (recorded -> replayed) for one replay and substitutes them in each request before it is sent: in the
request line, the headers and the body, with Content-Length (or the chunk size) fixed. It is shared by the
engine's thread (which calls the hooks) and pytest's, hence the lock.

Pure: no asyncio, no pytest. The helpers ``correlate_json_field`` and ``correlate_header`` learn a pair from
a recorded and a replayed response.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from ..http.content import decode
from ..http.message import Request, Response, field_value, is_chunked, split_head

_CONTENT_LENGTH = re.compile(rb"(?im)^(content-length[ \t]*:[ \t]*)(\d+)([ \t]*\r?)$")


class _Drop:
    """The DROP sentinel: returned by a pytest_replay_request hook, the request is not sent."""

    _instance = None

    def __new__(cls) -> _Drop:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DROP"

    def __reduce__(self) -> str:
        return "DROP"


DROP = _Drop()


def _bytes(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8")


class ReplayState:
    """Per-run state shared by the replay's hooks: learned substitutions, and `values` for anything else."""

    def __init__(self) -> None:
        self._pairs: dict[bytes, bytes] = {}
        self._compiled: tuple[re.Pattern[bytes], dict[bytes, bytes]] | None = None
        self._lock = threading.Lock()
        self.values: dict[str, Any] = {}  # free for users' hooks (e.g. counters, ids seen)

    def learn(self, recorded: bytes | str, replayed: bytes | str) -> None:
        """From now on, `recorded` in a request is sent as `replayed`. Its percent-encoded form (as it
        appears in a query string or a form body) is substituted too, when it differs."""
        old, new = _bytes(recorded), _bytes(replayed)
        if not old:
            raise ValueError("cannot learn an empty recorded value: it would match everywhere")
        with self._lock:
            self._pairs[old] = new
            quoted_old = quote(old, safe="").encode("ascii")
            if quoted_old != old:
                self._pairs.setdefault(quoted_old, quote(new, safe="").encode("ascii"))
            self._compiled = None

    def forget(self, recorded: bytes | str) -> None:
        old = _bytes(recorded)
        with self._lock:
            self._pairs.pop(old, None)
            self._pairs.pop(quote(old, safe="").encode("ascii"), None)
            self._compiled = None

    @property
    def learned(self) -> dict[bytes, bytes]:
        with self._lock:
            return dict(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def replace(self, data: bytes) -> bytes:
        """`data` with every learned recorded value replaced (longest first, in one pass: a replayed value
        is never replaced again)."""
        if not self._pairs or not data:
            return data
        compiled = self._compiled
        if compiled is None:
            with self._lock:
                if not self._pairs:
                    return data
                keys = sorted(self._pairs, key=len, reverse=True)
                compiled = self._compiled = (re.compile(b"|".join(re.escape(k) for k in keys)), dict(self._pairs))
        pattern, pairs = compiled
        return pattern.sub(lambda m: pairs[m.group(0)], data)

    def substitute(self, request: Request) -> Request:
        """`request` with the learned values replaced in its request line, headers and body, Content-Length
        (or the chunked framing) fixed. The same object when nothing matched."""
        if not self._pairs:
            return request
        head = self.replace(request.head)
        body = self.replace(request.body)
        if head == request.head and body == request.body:
            return request
        return rebuild_request(request, head, body)


def rebuild_request(request: Request, head: bytes, body: bytes) -> Request:
    """A request with a new head and body: Content-Length set to the body's length (when the head has one),
    a chunked body re-framed as one chunk (trailers kept)."""
    if is_chunked(field_value(split_head(head), b"transfer-encoding")):
        framed = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n"
        framed += b"".join(k + b": " + v + b"\r\n" for k, v in request.trailers) + b"\r\n"
    else:
        framed = body
        if _CONTENT_LENGTH.search(head) is not None:
            head = _CONTENT_LENGTH.sub(lambda m: m.group(1) + b"%d" % len(body) + m.group(3), head)
        elif body:
            eol = b"\n" if request.lf_only else b"\r\n"
            end = head.rfind(eol + eol)
            head = head[:end + len(eol)] + b"Content-Length: %d" % len(body) + eol + head[end + len(eol):]
    line_end = head.find(b"\n")
    parts = head[:line_end].rstrip(b"\r").split(b" ")
    method, target = parts[0].decode("latin-1"), b" ".join(parts[1:-1]).decode("latin-1")
    version = parts[-1][5:].decode("latin-1") if parts[-1].startswith(b"HTTP/") else request.version
    return Request(method, target, version, head, body, head + framed, request.trailers, request.lf_only)


# -- helpers for the common cases -----------------------------------------------------------------------

def decoded_body(response: Response | bytes | None) -> bytes | None:
    """The body of a response, its content-encoding undone (every coding http/content.py knows, stacked
    ones too); as it is when it can not be."""
    if response is None:
        return None
    if isinstance(response, (bytes, bytearray)):
        return bytes(response)
    return decode(response.body, response.header("content-encoding"))[0]


def json_field(body: bytes | None, path: str | Sequence[str | int]) -> Any:
    """The value at `path` ("data.token", "items.0.id", or a list of keys/indices) in a JSON body; None when
    the body is not JSON or the path is absent."""
    if not body:
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    steps = path.split(".") if isinstance(path, str) else list(path)
    for step in steps:
        if isinstance(value, dict):
            if step not in value:
                return None
            value = value[step]
        elif isinstance(value, list):
            try:
                value = value[int(step)]
            except (ValueError, IndexError):
                return None
        else:
            return None
    return value


def correlate_json_field(state: ReplayState, recorded_response: Response | bytes | None,
                         replayed_response: Response | bytes | None,
                         path: str | Sequence[str | int]) -> tuple[bytes, bytes] | None:
    """Learn recorded -> replayed for the JSON field at `path` of the two responses (e.g. "access_token",
    "data.session.id"). Returns the pair learned, or None when either side lacks the field (or it is not a
    string or number)."""
    old = json_field(decoded_body(recorded_response), path)
    new = json_field(decoded_body(replayed_response), path)
    if not isinstance(old, (str, int, float)) or not isinstance(new, (str, int, float)) or isinstance(
            old, bool) or isinstance(new, bool):
        return None
    old_b, new_b = _bytes(old), _bytes(new)
    if not old_b:
        return None
    state.learn(old_b, new_b)
    return old_b, new_b


def correlate_header(state: ReplayState, recorded_response: Response | None, replayed_response: Response | None,
                     name: str, pattern: str | bytes | None = None) -> tuple[bytes, bytes] | None:
    """Learn recorded -> replayed for header `name` of the two responses; with `pattern` (a regex with one
    group), for that group of the value, e.g. ``correlate_header(state, rec, rep, "Set-Cookie",
    r"session=([^;]+)")``. Every value of a repeated header is tried, in order."""
    if recorded_response is None or replayed_response is None:
        return None
    regex = None
    if pattern is not None:
        regex = re.compile(pattern.encode("latin-1") if isinstance(pattern, str) else pattern)
    wanted = name.lower().encode("latin-1")

    def values(response: Response) -> list[bytes]:
        found = [v for k, v in response.headers if k.lower() == wanted]
        if regex is None:
            return found
        out = []
        for value in found:
            m = regex.search(value)
            if m is not None:
                out.append(m.group(1) if m.groups() else m.group(0))
        return out

    for old, new in zip(values(recorded_response), values(replayed_response)):
        if old:
            state.learn(old, new)
            return old, new
    return None
