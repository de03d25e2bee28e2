"""Path templates: `/api/users/42/orders/9f8e...` -> `/api/users/{id}/orders/{hex}`.

Used for the endpoint mix of a capture, for grouping test items and for scoped budgets. A segment
becomes a placeholder when it looks like an identifier rather than a name. `{token}` is whatever
http/sensitive.py calls a secret segment, the decision the masker uses: a path template never
shows what the masker hides. Path parameters keep their names, not their values
(`/cart;jsessionid=...` -> `/cart;jsessionid`).
"""

from __future__ import annotations

import re
from functools import lru_cache

from .sensitive import names_a_secret, secret_segment

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\d+"), "{id}"),
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "{uuid}"),
    (re.compile(r"(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{12,}"), "{hex}"),
    (re.compile(r"[^@/]+@[^@/]+\.[A-Za-z]{2,}"), "{email}"),
    (re.compile(r"\d{4}-\d{2}-\d{2}(T[\d:.]+Z?)?"), "{date}"),
)
TOKEN = "{token}"  # the placeholder of a segment sensitive.secret_segment() calls secret


def path_template(target: str) -> str:
    """The path (no query string) with identifier-like segments replaced by placeholders."""
    cut = target.find("?")
    return _template(target if cut < 0 else target[:cut])


def _build_template(path: str) -> str:
    """path_template() of a path without its query string (uncached)."""
    if "#" in path:
        path = path.split("#", 1)[0]
    if "://" in path:  # absolute-form target (proxy requests): keep only the path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    return _joined(path) or "/"


# Bounded caches (cleared when full) of what repeats between paths: the template of a path's
# prefix ("/api/v1/users" of "/api/v1/users/42", with whether its last segment names a secret) and
# of a single segment. Paths themselves are mostly unique (ids), so a path costs one split at its
# last "/" and two lookups.
_PREFIXES: dict[str, tuple[str, bool]] = {}
_SEGMENTS: dict[str, str] = {}  # segment -> its placeholder, or itself
_MAX_CACHED = 16384


def _joined(path: str) -> str:
    """"/".join() of the templates of the path's segments."""
    head, slash, last = path.rpartition("/")
    if not slash:
        return _segment_template(last, False)
    prefix = _PREFIXES.get(head)
    if prefix is None:
        prefix = _prefix(head)
        if len(_PREFIXES) >= _MAX_CACHED:
            _PREFIXES.clear()
        _PREFIXES[head] = prefix
    if last:  # _segment_template(), inlined for the segment that is mostly new
        last = "{id}" if last.isdecimal() else _after_secret(last) if prefix[1] else \
            _SEGMENTS.get(last) or _segment(last)
    return prefix[0] + "/" + last


def _prefix(head: str) -> tuple[str, bool]:
    """The template of the path `head`, and whether its last segment names a secret."""
    out = []
    after = False
    for segment in head.split("/"):
        out.append(_segment_template(segment, after))
        after = bool(segment) and names_a_secret(segment)
    return "/".join(out), after


def _segment_template(segment: str, after_secret_name: bool) -> str:
    """The placeholder of one path segment, or the segment itself (an empty one stays empty)."""
    if not segment:
        return segment
    # For speed: most segments are numbers (the first rule: \d is Unicode category Nd, exactly
    # what isdecimal() tests) or seen before; only new ones go through the rules.
    if segment.isdecimal():
        return "{id}"
    if after_secret_name:
        return _after_secret(segment)
    return _SEGMENTS.get(segment) or _segment(segment)


def _after_secret(segment: str) -> str:
    """The template of a segment that follows one naming a secret (/password-reset/<this>)."""
    template = _SEGMENTS.get(segment) or _segment(segment)
    base, semi, params = template.partition(";")
    if base and not base.startswith("{") and secret_segment(base, True):
        return TOKEN + semi + params
    return template


def _segment(segment: str) -> str:
    """A path segment's placeholder (the first rule that matches it, else {token} for a secret), or
    the segment itself; path parameters keep their names only."""
    base, semi, params = segment.partition(";")
    for pattern, placeholder in _RULES:
        if pattern.fullmatch(base):
            break
    else:
        placeholder = TOKEN if secret_segment(base, False) else base
    if semi:
        placeholder += "".join(";" + p.partition("=")[0] for p in params.split(";"))
    if len(_SEGMENTS) >= _MAX_CACHED:
        _SEGMENTS.clear()
    _SEGMENTS[segment] = placeholder
    return placeholder


_template = lru_cache(maxsize=16384)(_build_template)  # keyed by path only: query strings are mostly unique
_ENDPOINTS: dict[tuple[str, str], str] = {}  # (method, path) -> endpoint (bounded: cleared when full)


def printable_method(method: str) -> str:
    """A method fit for a terminal: a malformed request's first token (as sent, any bytes) with its
    control and non-ASCII characters escaped as \\xNN; "(empty)" when there is none."""
    if method.isprintable() and method.isascii() and method:
        return method
    return "".join(c if c.isprintable() and c.isascii() else f"\\x{ord(c):02x}" for c in method) or "(empty)"


def endpoint_of(method: str, target: str) -> str:
    """"METHOD /path/{id}": the method and the path template of the target.

    Called once per captured exchange: a plain dict caches it (an lru_cache miss costs more than
    computing the template of a new path, which is what most misses are)."""
    cut = target.find("?")
    key = (method, target if cut < 0 else target[:cut])
    endpoint = _ENDPOINTS.get(key)
    if endpoint is None:
        endpoint = f"{printable_method(method)} {_build_template(key[1])}"
        if len(_ENDPOINTS) >= _MAX_CACHED:
            _ENDPOINTS.clear()
        _ENDPOINTS[key] = endpoint
    return endpoint
