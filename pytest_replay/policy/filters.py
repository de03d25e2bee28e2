"""Which captured requests are replayed: header filters and stable sampling (GoReplay's
--http-allow-header / --http-disallow-header and --http-header-limiter / --http-param-limiter).

    Sampler.parse("header:X-User-Id:10%")   keep ~10% of users: the same users every run
    Sampler.parse("param:user:1/4")
    RequestFilter(allow_headers=["X-Env: ^staging$"], disallow_headers=["User-Agent: bot"],
                  sampler=Sampler.parse("param:user:25%")).keep(request)

Sampling hashes the value exactly as GoReplay does (32-bit FNV-1a of the raw bytes, modulo 100,
kept below N), so a user kept by GoReplay's limiter is kept here too. A request without the value
is kept. Sans-IO: no pytest, no asyncio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..http.message import Request
from .rules import And, HeaderMatch, Or, Rule, parse_header_filter

SAMPLER_FORMS = (
    "accepted forms: 'header:NAME:N%' or 'param:NAME:N%' (N from 0 to 100), or a fraction instead of the "
    "percentage ('header:NAME:1/4'); keeps a stable N% of requests chosen by a hash of the header or "
    "query-parameter value (GoReplay's --http-header-limiter / --http-param-limiter); requests without the value "
    "are kept. E.g. 'header:X-User-Id:10%', 'param:user:25%'"
)
_FNV_OFFSET, _FNV_PRIME = 0x811C9DC5, 0x01000193


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a, the hash GoReplay's limiters use."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def query_param(target: str, name: str) -> str | None:
    """The raw (not percent-decoded) value of the first query parameter `name`, or None."""
    _, sep, query = target.partition("?")
    if not sep:
        return None
    query = query.split("#", 1)[0]
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key == name:
            return value
    return None


def _header_value(request: Request, name: str) -> bytes | None:
    value = request.header(name)
    return value or None  # GoReplay treats an empty header as absent


def _param_value(request: Request, name: str) -> bytes | None:
    value = query_param(request.target, name)
    return None if value is None else value.encode("latin-1", "replace")


# kind -> how the sampled value is read from a request
_VALUE_OF = {"header": _header_value, "param": _param_value}


@dataclass(frozen=True, slots=True)
class Sampler:
    """Keep requests whose value's hash falls in the first `percent` of 100 buckets."""

    kind: str  # "header" | "param"
    name: str
    percent: int

    def __post_init__(self) -> None:
        if self.kind not in _VALUE_OF:
            raise ValueError(f"unknown sampler kind {self.kind!r}; {SAMPLER_FORMS}")
        if not 0 <= self.percent <= 100:
            raise ValueError(f"sampler percentage {self.percent} is not between 0 and 100; {SAMPLER_FORMS}")

    @classmethod
    def parse(cls, text: str) -> Sampler:
        kind, sep, rest = text.strip().partition(":")
        name, sep2, amount = rest.rpartition(":")
        kind, name, amount = kind.strip().lower(), name.strip(), amount.strip()
        if not sep or not sep2 or not name or kind not in _VALUE_OF:
            raise ValueError(f"bad sampler {text!r}; {SAMPLER_FORMS}")
        return cls(kind, name, _percent(amount, text))

    def keep(self, request: Request) -> bool:
        value = _VALUE_OF[self.kind](request, self.name)
        return value is None or fnv1a32(value) % 100 < self.percent

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}:{self.percent}%"


def _percent(amount: str, text: str) -> int:
    """'25%' -> 25; '1/4' -> 25 (truncated, as GoReplay)."""
    if m := re.fullmatch(r"(\d+)\s*%", amount):
        value = int(m.group(1))
    elif m := re.fullmatch(r"(\d+)\s*/\s*(\d+)", amount):
        num, den = int(m.group(1)), int(m.group(2))
        if den == 0:
            raise ValueError(f"bad sampler {text!r}: zero denominator; {SAMPLER_FORMS}")
        value = num * 100 // den
    else:
        raise ValueError(f"bad sampler {text!r}: {amount!r} is not a percentage; {SAMPLER_FORMS}")
    if value > 100:
        raise ValueError(f"bad sampler {text!r}: more than 100%; {SAMPLER_FORMS}")
    return value


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """Keep a request when every allow filter matches (AND), no disallow filter matches (OR) and the
    sampler keeps it. Filters may be given as 'Name: REGEX' strings or HeaderMatch rules."""

    allow_headers: tuple[HeaderMatch, ...] = ()
    disallow_headers: tuple[HeaderMatch, ...] = ()
    sampler: Sampler | None = None
    rule: Rule | None = None  # the filters as one rule (None: keep everything)

    def __init__(self, allow_headers=(), disallow_headers=(), sampler: Sampler | str | None = None) -> None:
        allow = tuple(_header_rule(h) for h in allow_headers)
        disallow = tuple(_header_rule(h) for h in disallow_headers)
        parts: list[Rule] = list(allow)
        if disallow:
            parts.append(~Or(disallow))
        object.__setattr__(self, "allow_headers", allow)
        object.__setattr__(self, "disallow_headers", disallow)
        object.__setattr__(self, "sampler", Sampler.parse(sampler) if isinstance(sampler, str) else sampler)
        object.__setattr__(self, "rule", And(tuple(parts)) if parts else None)

    def __bool__(self) -> bool:
        return self.rule is not None or self.sampler is not None

    def keep(self, request: Request) -> bool:
        if self.rule is not None and not self.rule.matches(request):
            return False
        return self.sampler is None or self.sampler.keep(request)


def _header_rule(value: HeaderMatch | str) -> HeaderMatch:
    return parse_header_filter(value) if isinstance(value, str) else value


# -- --replay-window ----------------------------------------------------------------------------------
_OFFSET = re.compile(r"\+(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_NS = {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
WINDOW_FORMS = ("START..END with absolute times as `inspect` prints them (2024-05-01T12:00:00.000+00:00; "
                "no zone means UTC) or offsets from the capture's first request (+600s..+660s; units ms, s, m, h); "
                "either side may be left open (+600s..)")


@dataclass(frozen=True)
class Bound:
    """One side of a window: an absolute instant (ns since 1970) or an offset from the first request."""

    ns: int
    relative: bool

    def resolve(self, first_ns: int) -> int:
        return first_ns + self.ns if self.relative else self.ns


@dataclass(frozen=True)
class Window:
    """Exchanges whose request started in [start, end)."""

    start: Bound | None
    end: Bound | None
    text: str

    def bounds(self, first_ns: int) -> tuple[int | None, int | None]:
        return (None if self.start is None else self.start.resolve(first_ns),
                None if self.end is None else self.end.resolve(first_ns))

    def __str__(self) -> str:
        return self.text


def _bound(text: str) -> Bound | None:
    text = text.strip()
    if not text:
        return None
    match = _OFFSET.fullmatch(text)
    if match:
        return Bound(round(float(match[1]) * _UNIT_NS[match[2]]), True)
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a time nor an offset; expected {WINDOW_FORMS}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = int(when.timestamp())
    return Bound(seconds * 1_000_000_000 + when.microsecond * 1000, False)


def parse_window(text: str) -> Window:
    """'START..END' -> Window; a ValueError naming the accepted forms otherwise."""
    start, sep, end = text.partition("..")
    if not sep or (not start.strip() and not end.strip()):
        raise ValueError(f"expected {WINDOW_FORMS}, got {text!r}")
    window = Window(_bound(start), _bound(end), text)
    if window.start is not None and window.end is not None and window.start.relative == window.end.relative \
            and window.end.ns <= window.start.ns:
        raise ValueError(f"the window {text!r} ends before it starts")
    return window
