"""Request matchers: small rules combined with ``&``, ``|``, ``~`` (respx-style), and their parsers.

A rule answers "does this request match?" from the request and the host it is for (the Host header
when no host is given). The leaves mirror GoReplay's filter flags (gor-format.md)::

    Method({"POST", "PUT"})        the method is one of these ("*" matches any)
    Path(r"^/api/cart/")           regex searched in the request target: path and query (--http-allow-url)
    Host("sandbox.example.com")    the host, exactly (case-insensitive, with or without its port) or
                                   as a regex matching all of it
    HeaderMatch("X-Env", "^prod")  regex searched in the first value of a header; a request without
                                   the header (or with an empty value) does not match (--http-allow-header)
    HasBody()                      the request carries content (a body after de-chunking)

Strings users type are parsed here, failing at configuration time with the accepted forms::

    parse_allow_write("PUT,PATCH ^/api/users/ @sandbox.example.com")
    parse_write_pattern("GET ^/api/delete")    (the same form: requests declared writes)
    parse_header_filter("X-Tenant: ^acme$")

Sans-IO: no pytest, no asyncio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import combinators
from ..http.message import Request, is_http_token

ALLOW_WRITE_FORMS = (
    "accepted forms: 'METHOD PATH_REGEX [@HOST]' where METHOD is a method name, a comma-separated list "
    "or '*' (any), PATH_REGEX is searched in the request target (path and query, like GoReplay's "
    "--http-allow-url) and HOST is a host name (optionally with :port) or a regex matching the whole host; "
    "e.g. 'POST ^/api/cart/items$', '* ^/api/idempotent/', 'PUT,PATCH /api/users/.* @sandbox.example.com'"
)
WRITE_PATTERN_FORMS = (
    "accepted forms: 'METHOD PATH_REGEX [@HOST]' (as --replay-allow-write) where METHOD is a method name, a "
    "comma-separated list or '*' (any), PATH_REGEX is searched in the request target (path and query) and HOST "
    "is a host name (optionally with :port) or a regex matching the whole host; e.g. 'GET ^/api/delete', "
    "'GET,HEAD /purge$ @cdn.internal'"
)
HEADER_FILTER_FORMS = (
    "accepted form: 'Name: REGEX' (the regex is searched in the header's first value, like GoReplay's "
    "--http-allow-header / --http-disallow-header), e.g. 'X-Tenant: ^acme$', 'User-Agent: (?i)bot'"
)
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class Rule(combinators.Rule):
    """A predicate over requests: `matches(request, host)`; combine with & | ~."""

    __slots__ = ()

    def matches(self, request: Request, host: str | None = None) -> bool:
        return self.test(request, host)


And, Or, Not = combinators.family(Rule)


@dataclass(frozen=True, slots=True)
class Labeled(Rule):
    """A rule remembered with the text it was parsed from (reports show what the user typed)."""

    rule: Rule
    text: str

    def test(self, request: Request, host: str | None = None) -> bool:
        return self.rule.matches(request, host)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Method(Rule):
    """The request method is one of `names` (compared upper-case); "*" among them matches any."""

    names: frozenset[str]

    def __init__(self, names) -> None:
        names = (names,) if isinstance(names, str) else names
        object.__setattr__(self, "names", frozenset(name.upper() for name in names))

    def test(self, request: Request, host: str | None = None) -> bool:
        return "*" in self.names or request.method.upper() in self.names

    def __str__(self) -> str:
        return ",".join(sorted(self.names))


@dataclass(frozen=True, slots=True)
class Path(Rule):
    """A regex searched in the request target (path and query), as GoReplay's --http-allow-url."""

    pattern: str
    _regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def test(self, request: Request, host: str | None = None) -> bool:
        return self._regex.search(request.target) is not None

    def __str__(self) -> str:
        return self.pattern


@dataclass(frozen=True, slots=True)
class Host(Rule):
    """The host (given, else the Host header): equal to `pattern` case-insensitively (with or without
    the port), or matched as a whole by `pattern` as a case-insensitive regex."""

    pattern: str
    _regex: re.Pattern[str] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.pattern, re.IGNORECASE)
        except re.error:
            regex = None  # a literal host that is not a valid regex: exact comparison only
        object.__setattr__(self, "_regex", regex)

    def test(self, request: Request, host: str | None = None) -> bool:
        value = host if host is not None else request.host
        if not value:
            return False
        value = value.strip()
        candidates = (value, _without_port(value))
        wanted = self.pattern.lower()
        if any(c.lower() == wanted for c in candidates):
            return True
        return self._regex is not None and any(self._regex.fullmatch(c) for c in candidates)

    def __str__(self) -> str:
        return f"@{self.pattern}"


@dataclass(frozen=True, slots=True)
class HeaderMatch(Rule):
    """A regex searched in the first value of header `name` (GoReplay --http-allow-header). A missing
    or empty header never matches, so as an allow filter it drops the request and as a disallow
    filter it keeps it, as in GoReplay."""

    name: str
    pattern: str
    _key: bytes = field(init=False, compare=False, repr=False)
    _regex: re.Pattern[bytes] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", self.name.strip().lower().encode("latin-1"))
        object.__setattr__(self, "_regex", re.compile(self.pattern.encode("latin-1")))

    def test(self, request: Request, host: str | None = None) -> bool:
        value = _first_header(request, self._key)
        return bool(value) and self._regex.search(value) is not None

    def __str__(self) -> str:
        return f"{self.name}: {self.pattern}"


@dataclass(frozen=True, slots=True)
class HasBody(Rule):
    """The request carries content (its body, after de-chunking, is not empty)."""

    def test(self, request: Request, host: str | None = None) -> bool:
        return bool(request.body)

    def __str__(self) -> str:
        return "with a body"


def _first_header(request: Request, key: bytes) -> bytes | None:
    for name, value in request.headers:
        if name.lower() == key:
            return value
    return None


def _without_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[:end + 1] if end > 0 else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else host


def _compile(pattern: str, what: str, text: str, forms: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{text!r}: bad {what} regex {pattern!r} ({exc}); {forms}") from None


# -- parsers -------------------------------------------------------------------------------------------
def parse_methods(text: str, *, forms: str = ALLOW_WRITE_FORMS, source: str | None = None) -> frozenset[str]:
    """'POST', 'put,patch' or '*' -> upper-case method names."""
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name != "*" and not _METHOD.fullmatch(name):
            raise ValueError(f"{source or text!r}: {name!r} is not a method name; {forms}")
    return frozenset(name.upper() for name in names)


def parse_allow_write(text: str) -> Labeled:
    """'METHOD PATH_REGEX [@HOST]' -> Method & Path [& Host], labelled with the text."""
    return _parse_request_pattern(text, "write allowlist pattern", ALLOW_WRITE_FORMS)


def parse_write_pattern(text: str) -> Labeled:
    """A request declared a write (--replay-write-pattern): the allowlist's form, 'GET ^/api/delete'."""
    return _parse_request_pattern(text, "write pattern", WRITE_PATTERN_FORMS)


def _parse_request_pattern(text: str, what: str, forms: str) -> Labeled:
    parts = text.split()
    if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].startswith("@")) \
            or parts[1].startswith("@"):
        raise ValueError(f"bad {what} {text!r}; {forms}")
    methods = parse_methods(parts[0], forms=forms, source=text)
    _compile(parts[1], "path", text, forms)
    rule: Rule = Path(parts[1]) if "*" in methods else Method(methods) & Path(parts[1])
    if len(parts) == 3:
        host = parts[2][1:]
        if not host:
            raise ValueError(f"bad {what} {text!r}: empty host after '@'; {forms}")
        rule = rule & Host(host)
    return Labeled(rule, " ".join(parts))


def parse_header_filter(text: str) -> HeaderMatch:
    """'Name: REGEX' -> HeaderMatch (split on the first ':', as GoReplay does)."""
    name, sep, pattern = text.partition(":")
    name, pattern = name.strip(), pattern.strip()
    if not sep or not name:
        raise ValueError(f"bad header filter {text!r}; {HEADER_FILTER_FORMS}")
    if not is_http_token(name):
        raise ValueError(f"bad header filter {text!r}: {name!r} is not a header name; {HEADER_FILTER_FORMS}")
    _compile(pattern, "header", text, HEADER_FILTER_FORMS)
    try:
        pattern.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"bad header filter {text!r}: header values are latin-1; {HEADER_FILTER_FORMS}") from None
    return HeaderMatch(name, pattern)
