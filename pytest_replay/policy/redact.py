"""Masking secrets in what the plugin prints or writes.

A secret value becomes ``REDACTED-<8 hex>``: a short hash of the value, so two equal secrets stay
recognisably equal across a report while neither can be read back. Which header names and query
parameters are secret is configurable; the defaults cover credentials and session tokens.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote, unquote

SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token",
    "x-access-token", "x-csrf-token", "x-xsrf-token", "x-amz-security-token", "x-goog-api-key", "api-key",
})
# Query parameter names (and header names) that look like credentials.
SECRET_NAME = re.compile(
    r"(?i)(^|[-_.])(token|access[-_]?token|refresh[-_]?token|id[-_]?token|api[-_]?key|apikey|key|secret|"
    r"client[-_]?secret|password|passwd|pwd|pass|auth|authorization|session|sessionid|sid|sig|signature|"
    r"credential|credentials|code|otp|jwt|bearer)($|[-_.])")


def mask(value: bytes | str) -> str:
    """The stand-in for a secret value: equal inputs give equal stand-ins."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return "REDACTED-" + hashlib.sha256(data).hexdigest()[:8]


class Redactor:
    """Masks secret headers and query parameters. Extra names extend the defaults."""

    def __init__(self, headers: frozenset[str] | set[str] = SECRET_HEADERS,
                 name_pattern: re.Pattern[str] = SECRET_NAME) -> None:
        self.headers = frozenset(h.lower() for h in headers)
        self.name_pattern = name_pattern

    def is_secret_header(self, name: bytes | str) -> bool:
        text = name.decode("latin-1") if isinstance(name, bytes) else name
        text = text.lower()
        return text in self.headers or bool(self.name_pattern.search(text))

    def header_value(self, name: bytes | str, value: bytes | str) -> str:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        return mask(value) if self.is_secret_header(name) else text

    def headers_text(self, pairs) -> list[tuple[str, str]]:
        return [(name.decode("latin-1"), self.header_value(name, value)) for name, value in pairs]

    def target(self, target: str) -> str:
        """The request target with secret-looking query parameter values masked."""
        path, sep, query = target.partition("?")
        if not sep:
            return target
        parts = []
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            if eq and value and self.name_pattern.search(unquote(name)):
                value = quote(mask(unquote(value)))
            parts.append(name + eq + value)
        return path + "?" + "&".join(parts)


DEFAULT = Redactor()
