"""Request rewrites applied before replay: set headers, rewrite the URL (GoReplay's --http-set-header
and --http-rewrite-url).

The captured head is edited minimally: the request line keeps its method and version, headers keep
their order, case and line endings; a set header takes the place of the first header of that name
(later ones and their obs-fold lines are dropped) or is appended before the blank line. The body is
untouched, so Content-Length stays right; a chunked body keeps its captured framing in `raw`.

    parse_set_header("X-Replay: 1")             -> (b"X-Replay", b"1")
    parse_rewrite_url(r"^/v1/(.*):/v2/\\1")     -> UrlRewrite (split on the first ':', as GoReplay)
    Rewrites(set_headers=..., rewrite_url=...).apply(request) -> Request

Sans-IO: no pytest, no asyncio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..http.message import Request, head_lines, header_fields, is_http_token

SET_HEADER_FORMS = "accepted form: 'Name: value' (like GoReplay's --http-set-header), e.g. 'X-Replay: 1'"
REWRITE_URL_FORMS = (
    "accepted form: 'REGEX:REPLACEMENT' split on the first ':' (like GoReplay's --http-rewrite-url), applied to "
    "the request target (path and query); the replacement may use groups as \\1, \\g<name> or Go's $1 / ${1}; "
    "e.g. '^/v1/(.*):/v2/\\1'"
)
# Setting these would contradict the body, which rewrites never change.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_GO_GROUP = re.compile(r"\$(?:\{(\w+)\}|(\d+))")


@dataclass(frozen=True, slots=True)
class UrlRewrite:
    """Every match of `pattern` in the target replaced by `replacement` (Python re.sub syntax)."""

    pattern: str
    replacement: str
    _regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def rewrite(self, target: str) -> str | None:
        """The rewritten target, or None when the pattern does not match."""
        if self._regex.search(target) is None:
            return None
        return self._regex.sub(self.replacement, target)

    def __str__(self) -> str:
        return f"{self.pattern}:{self.replacement}"


def parse_set_header(text: str) -> tuple[bytes, bytes]:
    """'Name: value' -> (b'Name', b'value'), whitespace around both stripped."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise ValueError(f"bad header to set {text!r}; {SET_HEADER_FORMS}")
    if not is_http_token(name):
        raise ValueError(f"bad header to set {text!r}: {name!r} is not a header name; {SET_HEADER_FORMS}")
    if name.lower().encode() in FRAMING:
        raise ValueError(f"bad header to set {text!r}: {name} frames the body, which rewrites never change; "
                         f"{SET_HEADER_FORMS}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"bad header to set {text!r}: the value has a line break or NUL; {SET_HEADER_FORMS}")
    try:
        return name.encode("latin-1"), value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"bad header to set {text!r}: header values are latin-1; {SET_HEADER_FORMS}") from None


def parse_rewrite_url(text: str) -> UrlRewrite:
    """'REGEX:REPLACEMENT' -> UrlRewrite. Go-style $1 / ${name} groups become \\g<1> / \\g<name>."""
    pattern, sep, replacement = text.partition(":")
    if not sep or not pattern:
        raise ValueError(f"bad URL rewrite {text!r}; {REWRITE_URL_FORMS}")
    if any(c.isspace() for c in replacement):
        raise ValueError(f"bad URL rewrite {text!r}: a request target can not hold whitespace; {REWRITE_URL_FORMS}")
    replacement = _GO_GROUP.sub(lambda m: f"\\g<{m.group(1) or m.group(2)}>", replacement)
    try:
        rewrite = UrlRewrite(pattern, replacement)
        rewrite._regex.sub(replacement, "")  # re checks the template (escapes, group references) here
    except (re.error, IndexError) as exc:
        raise ValueError(f"bad URL rewrite {text!r}: {exc}; {REWRITE_URL_FORMS}") from None
    return rewrite


@dataclass(frozen=True, slots=True)
class Rewrites:
    """Headers to set and URL rewrites (the first matching rewrite applies, as in GoReplay)."""

    set_headers: tuple[tuple[bytes, bytes], ...] = ()
    rewrite_url: tuple[UrlRewrite, ...] = ()

    def __init__(self, set_headers=(), rewrite_url=()) -> None:
        headers = tuple(parse_set_header(h) if isinstance(h, str) else (_b(h[0]), _b(h[1])) for h in set_headers)
        urls = tuple(parse_rewrite_url(u) if isinstance(u, str) else u for u in rewrite_url)
        object.__setattr__(self, "set_headers", headers)
        object.__setattr__(self, "rewrite_url", urls)

    def __bool__(self) -> bool:
        return bool(self.set_headers or self.rewrite_url)

    def apply(self, request: Request) -> Request:
        """A new Request with the rewrites applied; `request` itself when nothing changes."""
        if not self:
            return request
        target = request.target
        for rewrite in self.rewrite_url:
            new = rewrite.rewrite(target)
            if new is not None:
                target = new
                break
        return _rebuild(request, target, self.set_headers)


def with_header(request: Request, name: bytes | str, value: bytes | str) -> Request:
    """`request` with header `name` set to `value` (e.g. the dry-run marker of passed writes)."""
    return _rebuild(request, request.target, ((_b(name), _b(value)),))


def _b(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _rebuild(request: Request, target: str, set_headers: tuple[tuple[bytes, bytes], ...]) -> Request:
    head = request.head
    lines = head_lines(head)
    eol = b"\n" if request.lf_only or b"\r\n" not in head else b"\r\n"
    start, ending = lines[0]
    out = [_request_line(start, request.target, target) + ending]
    pending = {name.lower(): (name, value) for name, value in set_headers}
    done: set[bytes] = set()
    for name, _, raw in header_fields(lines[1:]):  # a field with its obs-fold lines
        key = name.strip().lower()
        if key not in pending:
            out += [line + end for line, end in raw]
        elif key not in done:  # the first of that name is set; later ones are dropped
            done.add(key)
            out.append(name + b": " + pending[key][1] + raw[0][1])
    out += [name + b": " + value + eol for key, (name, value) in pending.items() if key not in done]
    new_head = b"".join(out) + eol
    if new_head == head and target == request.target:
        return request
    raw = request.raw
    body_part = raw[len(head):] if raw.startswith(head) else request.body
    return Request(request.method, target, request.version, new_head, request.body, new_head + body_part,
                   request.trailers, request.lf_only)


def _request_line(line: bytes, old: str, new: str) -> bytes:
    if old == new:
        return line
    method, _, rest = line.partition(b" ")
    _, _, version = rest.rpartition(b" ")
    return method + b" " + new.encode("latin-1") + b" " + version
