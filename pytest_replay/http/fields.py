"""Named fields of a request: query parameters and body fields (sans-IO, bytes in, strings out).

    query_values("/a?_method=DELETE&x=1", "_method")                       -> ["DELETE"]
    form_values(b"application/x-www-form-urlencoded", b"_method=PUT", "_method") -> ["PUT"]

Bodies are read as servers read them for form parameters: urlencoded, multipart/form-data, and a
JSON object's top-level string members (Laravel takes input from JSON bodies too). The body is
taken as captured (content-encoding is not undone). Anything unreadable gives no values.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

# A multipart part's head names the field: Content-Disposition: form-data; name="field"
_PART_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*;\s*name="?([^";\r\n]*)"?')
_BOUNDARY = re.compile(rb'(?i)boundary="?([^";,\s]+)"?')


def query_values(target: str, name: str) -> list[str]:
    """Values of query parameter `name` in a request target, percent-decoded."""
    _, sep, query = target.partition("?")
    if not sep or name not in query:
        return []
    query = query.partition("#")[0]
    return [value for key, value in parse_qsl(query, keep_blank_values=True) if key == name]


def form_values(content_type: bytes | None, body: bytes, name: str) -> list[str]:
    """Values of field `name` in a request body, by its Content-Type."""
    key = name.encode("latin-1")
    if not body or key not in body:
        return []
    kind = (content_type or b"").lower()
    readers = [reader for marker, reader in _READERS if marker in kind]
    return [value for reader in readers for value in reader(content_type or b"", body, name)]


def _urlencoded(content_type: bytes, body: bytes, name: str) -> list[str]:
    text = body.decode("latin-1")
    return [value for key, value in parse_qsl(text, keep_blank_values=True) if key == name]


def _multipart(content_type: bytes, body: bytes, name: str) -> list[str]:
    match = _BOUNDARY.search(content_type)
    if match is None:
        return []
    values = []
    for part in body.split(b"--" + match.group(1)):
        head, sep, content = part.partition(b"\r\n\r\n")
        field = _PART_NAME.search(head) if sep else None
        if field is not None and field.group(1) == name.encode("latin-1"):
            values.append(content.removesuffix(b"\r\n").decode("latin-1"))
    return values


def _json(content_type: bytes, body: bytes, name: str) -> list[str]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    value = data.get(name) if isinstance(data, dict) else None
    return [value] if isinstance(value, str) else []


# Content-Type marker -> the reader of such a body
_READERS = (
    (b"x-www-form-urlencoded", _urlencoded),
    (b"multipart/form-data", _multipart),
    (b"json", _json),
)
