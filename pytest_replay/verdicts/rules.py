"""Ignore rules for verdicts: small predicates combined with ``&``, ``|``, ``~`` (respx-style).

A rule answers one question: "is this differing point to be ignored?" A point is a request (method,
path) plus what differs: a response header (``part="header"``, key = lower-case name), a JSON value
(``part="json"``, key = deepdiff path such as ``root['items'][0]['id']``), or a regex mask asking
whether it is active for this request (``part="regex"``, key = the pattern). Scoping is then just
``Endpoint(...) & Json(...)``. Rules come from strings users type (``--replay-ignore``, ini)::

    header:NAME                 do not compare that response header
    json:$.request_id           JSONPath: $.a.b, $.items[*].updated_at, $..etag (any depth), $.a[0]
    json:root['request_id']     the same, as a deepdiff path
    regex:PATTERN               matches in text bodies and JSON strings become a placeholder
    keep:RULE                   take RULE out of the noise set (learned or default volatile headers)
    GET /api/search: RULE       any of the above, scoped: [METHOD] path template | path | ^regex

Sans-IO: no pytest, no asyncio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import combinators

from ..http.normalize import path_template

ACCEPTED_FORMS = (
    "accepted forms: 'header:NAME', 'json:$.a.b' / 'json:$.items[*].id' / 'json:$..etag' (JSONPath) or "
    "\"json:root['a']\" (deepdiff path), 'regex:PATTERN', 'keep:RULE' (removes RULE from the noise set), "
    "each optionally scoped to an endpoint: 'GET /api/search: json:$.generated_at' "
    "([METHOD] then a path template, a path, or a ^regex, then ': ')"
)

# Response headers that change on every response of a healthy service: never a reason to fail.
VOLATILE_HEADERS = frozenset({
    "date", "expires", "age", "last-modified", "etag", "x-request-id", "x-correlation-id", "x-trace-id",
    "request-id", "traceparent", "tracestate", "x-amzn-trace-id", "x-amzn-requestid", "x-amz-request-id",
    "x-b3-traceid", "x-b3-spanid", "x-cloud-trace-context", "server-timing", "via", "x-runtime",
    "x-response-time", "x-envoy-upstream-service-time", "cf-ray", "cf-cache-status", "report-to", "nel",
    "x-served-by", "x-cache", "x-cache-hits", "x-timer", "alt-svc",
})
# Hop-by-hop and transport headers: they describe the connection or the server, not the answer.
TRANSPORT_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "server",
})
# Headers that only describe the framing of the body: noise when the two responses frame it differently.
FRAMING_HEADERS = frozenset({"content-length"})


@dataclass(frozen=True, slots=True)
class Point:
    """One thing that differs (or one mask to consider) in the response to one request."""

    method: str
    path: str  # request path, no query string
    part: str  # "header" | "json" | "regex"
    key: str


class Rule(combinators.Rule):
    """A predicate over points: `ignores(point)`; combine with & | ~."""

    __slots__ = ()

    def ignores(self, point: Point) -> bool:
        return self.test(point)


And, Or, Invert = combinators.family(Rule)


@dataclass(frozen=True, slots=True)
class Endpoint(Rule):
    """Request scope: METHOD (or None for any) and a path template, a literal path or a regex."""

    is_scope = True  # shown as "SCOPE: rule" when combined with one rule
    method: str | None
    pattern: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.pattern)
        except re.error:
            regex = None
        object.__setattr__(self, "_regex", regex)

    def test(self, point: Point) -> bool:
        if self.method is not None and point.method != self.method:
            return False
        if self.pattern in (point.path, path_template(point.path)):
            return True
        return self._regex is not None and self._regex.fullmatch(point.path) is not None

    def __str__(self) -> str:
        return f"{self.method} {self.pattern}" if self.method else self.pattern


@dataclass(frozen=True, slots=True)
class Header(Rule):
    name: str  # lower-case

    def test(self, point: Point) -> bool:
        return point.part == "header" and point.key == self.name

    def __str__(self) -> str:
        return f"header:{self.name}"


@dataclass(frozen=True, slots=True)
class Json(Rule):
    """A JSON location; `exclude_regex` is the same location as a deepdiff exclude_regex_paths entry."""

    path: str  # as given: "$.items[*].id" or "root['a']"
    exclude_regex: str = field(default="", compare=False)
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        regex = jsonpath_regex(self.path)
        object.__setattr__(self, "exclude_regex", regex)
        object.__setattr__(self, "_regex", re.compile(regex))

    def test(self, point: Point) -> bool:
        return point.part == "json" and self._regex.match(point.key) is not None

    def __str__(self) -> str:
        return f"json:{self.path}"


@dataclass(frozen=True, slots=True)
class Regex(Rule):
    """Mask: matches in text bodies and JSON string values are replaced before comparing."""

    pattern: str
    compiled: re.Pattern[str] = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", re.compile(self.pattern))

    def test(self, point: Point) -> bool:
        return point.part == "regex" and point.key == self.pattern

    def __str__(self) -> str:
        return f"regex:{self.pattern}"


@dataclass(frozen=True, slots=True)
class Keep:
    """Take what `rule` matches out of the noise set (learned noise and default volatile headers).

    Keep overrides noise only; a user's own ignore rule still wins over it. Not combinable."""

    rule: Rule

    def __str__(self) -> str:
        return f"keep:{self.rule}"


# -- JSON paths -> deepdiff path regexes ------------------------------------------------------------
_KEY = r"\[(?:'[^']*'|\"[^\"]*\")\]"
_INDEX = r"\[\d+\]"
_CHILD = f"(?:{_KEY}|{_INDEX})"
_TOKEN = re.compile(r"""
    (?P<deep>\.\.)?
    (?: \.(?P<name>[^.\[\]]+)
      | (?<=\.\.)(?P<bare>[^.\[\]]+)
      | \[(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|(?P<index>\d+)|(?P<star>\*))\]
    )""", re.VERBOSE)


def _key_regex(key: str) -> str:
    if key == "*":
        return _CHILD
    return r"\[" + re.escape(repr(key)) + r"\]"  # deepdiff quotes keys the way repr() does


def jsonpath_regex(path: str) -> str:
    """A JSONPath (``$.a[*].b``, ``$..b``) or deepdiff path (``root['a'][0]``) as a deepdiff path regex.

    The regex matches the location and everything below it. Raises ValueError when it cannot be read.
    """
    text = path.strip()
    for prefix in ("$", "root"):
        if text.startswith(prefix):
            rest = text[len(prefix):]
            break
    else:
        raise ValueError(f"a JSON path starts with '$' or 'root', not {path!r}")
    out, pos = ["^root"], 0
    while pos < len(rest):
        match = _TOKEN.match(rest, pos)
        if match is None:
            raise ValueError(f"cannot read JSON path {path!r} at {rest[pos:]!r}")
        pos = match.end()
        if match["deep"]:
            out.append(f"(?:{_CHILD})*")
        name = match["name"] or match["bare"] or match["sq"] or match["dq"]
        if name is not None:
            out.append(_key_regex(name))
        elif match["index"] is not None:
            out.append(r"\[" + match["index"] + r"\]")
        else:
            out.append(_CHILD)
    return "".join(out) + r"(?=\[|$)"


def readable_path(keys: list) -> str:
    """``['user', 'display_name', 0]`` -> ``$.user.display_name[0]``."""
    out = ["$"]
    for key in keys:
        if isinstance(key, int):
            out.append(f"[{key}]")
        elif isinstance(key, str) and key.isidentifier():
            out.append(f".{key}")
        else:
            out.append(f"[{key!r}]")
    return "".join(out)


def generalized_path(keys: list) -> str:
    """A learned location: list indices become ``[*]`` so noise in one element covers them all."""
    return readable_path(["*" if isinstance(key, int) else key for key in keys]).replace("['*']", "[*]")


def grouped_path(keys: list) -> str:
    """A location as failures are grouped: list indices become ``[*]``, except an index right after
    another one (a column of a list of rows: ``$.rows[*][3]``)."""
    out = ["$"]
    for i, key in enumerate(keys):
        if isinstance(key, int):
            column = i + 1 == len(keys) and i > 0 and isinstance(keys[i - 1], int)
            out.append(f"[{key}]" if column else "[*]")
        else:
            out.append(readable_path([key])[1:])
    return "".join(out)


# -- parsing ----------------------------------------------------------------------------------------
_SCOPE = re.compile(r"(?:(?P<method>[A-Z]+|\*)\s+)?(?P<path>[/^]\S*)")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header(value: str) -> Rule:
    value = value.strip()
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a header name")
    return Header(value.lower())


def _regex(value: str) -> Rule:
    if not value:
        raise ValueError("empty regex")
    try:
        return Regex(value)
    except re.error as exc:
        raise ValueError(f"bad regex {value!r}: {exc}") from None


KINDS = {"header": _header, "json": lambda value: Json(value.strip()), "regex": _regex}


def _parse_unscoped(text: str) -> Rule:
    kind, sep, value = text.partition(":")
    if not sep or kind not in KINDS:
        raise ValueError(f"unknown rule kind {kind!r}" if sep else "no rule kind")
    return KINDS[kind](value)


def parse_rule(text: str) -> Rule | Keep:
    """One rule string to a Rule (or a Keep). ValueError names the accepted forms."""
    source = text.strip()
    try:
        keep = source.startswith("keep:")
        body = source[5:].strip() if keep else source
        scope = None
        head, sep, rest = body.partition(": ")
        if sep and head.partition(":")[0] not in KINDS:
            match = _SCOPE.fullmatch(head.strip())
            if match is None:
                raise ValueError(f"{head!r} is not an endpoint scope")
            method = match["method"]
            scope = Endpoint(None if method in (None, "*") else method, match["path"])
            body = rest.strip()
            if body.startswith("keep:") and not keep:
                keep, body = True, body[5:].strip()
        rule = _parse_unscoped(body)
        rule = scope & rule if scope is not None else rule
    except ValueError as exc:
        raise ValueError(f"invalid ignore rule {text!r}: {exc}; {ACCEPTED_FORMS}") from None
    return Keep(rule) if keep else rule


def parse_rules(texts) -> tuple[Rule | Keep, ...]:
    return tuple(text if isinstance(text, (Rule, Keep)) else parse_rule(text) for text in texts)
