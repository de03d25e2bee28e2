"""Path templates: `/api/users/42/orders/9f8e...` -> `/api/users/{id}/orders/{hex}`.

Used for the endpoint mix of a capture, for grouping test items and for scoped budgets. A segment
becomes a placeholder when it looks like an identifier rather than a name.
"""

from __future__ import annotations

import re
from functools import lru_cache

_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\d+"), "{id}"),
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "{uuid}"),
    (re.compile(r"(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{12,}"), "{hex}"),
    (re.compile(r"[^@/]+@[^@/]+\.[A-Za-z]{2,}"), "{email}"),
    (re.compile(r"\d{4}-\d{2}-\d{2}(T[\d:.]+Z?)?"), "{date}"),
    (re.compile(r"(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-=.]{24,}"), "{token}"),
)


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
# prefix ("/api/v1/users" of "/api/v1/users/42") and of a single segment. Paths themselves are
# mostly unique (ids), so a path costs one split at its last "/" and two lookups.
_PREFIXES: dict[str, str] = {}
_SEGMENTS: dict[str, str] = {}  # segment -> its placeholder, or itself
_MAX_CACHED = 16384


def _joined(path: str) -> str:
    """"/".join() of the templates of the path's segments."""
    head, slash, last = path.rpartition("/")
    if last:  # _segment_template(), inlined for the segment that is mostly new
        last = "{id}" if last.isdecimal() else _SEGMENTS.get(last) or _segment(last)
    if not slash:
        return last
    prefix = _PREFIXES.get(head)
    if prefix is None:
        prefix = "/".join(map(_segment_template, head.split("/")))
        if len(_PREFIXES) >= _MAX_CACHED:
            _PREFIXES.clear()
        _PREFIXES[head] = prefix
    return prefix + "/" + last


def _segment_template(segment: str) -> str:
    """The placeholder of one path segment, or the segment itself (an empty one stays empty)."""
    if not segment:
        return segment
    # For speed: most segments are numbers (the first rule: \d is Unicode category Nd, exactly
    # what isdecimal() tests) or seen before; only new ones go through the rules.
    if segment.isdecimal():
        return "{id}"
    return _SEGMENTS.get(segment) or _segment(segment)


def _segment(segment: str) -> str:
    """A path segment's placeholder (the first rule that matches it), or the segment itself."""
    for pattern, placeholder in _RULES:
        if pattern.fullmatch(segment):
            break
    else:
        placeholder = segment
    if len(_SEGMENTS) >= _MAX_CACHED:
        _SEGMENTS.clear()
    _SEGMENTS[segment] = placeholder
    return placeholder


_template = lru_cache(maxsize=16384)(_build_template)  # keyed by path only: query strings are mostly unique
_ENDPOINTS: dict[tuple[str, str], str] = {}  # (method, path) -> endpoint (bounded: cleared when full)


def endpoint_of(method: str, target: str) -> str:
    """"METHOD /path/{id}": the method and the path template of the target.

    Called once per captured exchange: a plain dict caches it (an lru_cache miss costs more than
    computing the template of a new path, which is what most misses are)."""
    cut = target.find("?")
    key = (method, target if cut < 0 else target[:cut])
    endpoint = _ENDPOINTS.get(key)
    if endpoint is None:
        endpoint = f"{method} {_build_template(key[1])}"
        if len(_ENDPOINTS) >= _MAX_CACHED:
            _ENDPOINTS.clear()
        _ENDPOINTS[key] = endpoint
    return endpoint
