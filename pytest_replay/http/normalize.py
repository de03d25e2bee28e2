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


@lru_cache(maxsize=16384)  # keyed by path only: query strings are mostly unique
def _template(path: str) -> str:
    path = path.split("#", 1)[0]
    if "://" in path:  # absolute-form target (proxy requests): keep only the path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    segments = path.split("/")
    for i, segment in enumerate(segments):
        for pattern, placeholder in _RULES:
            if segment and pattern.fullmatch(segment):
                segments[i] = placeholder
                break
    return "/".join(segments) or "/"


def endpoint_of(method: str, target: str) -> str:
    cut = target.find("?")
    return _endpoint(method, target if cut < 0 else target[:cut])


@lru_cache(maxsize=16384)
def _endpoint(method: str, path: str) -> str:
    return f"{method} {_template(path)}"
