"""The write policy: what happens to captured requests that change state on the server.

Reads are always sent. A write (POST, PUT, PATCH, DELETE and any method the user adds) is sent
when an allowlist pattern matches it; otherwise the mode decides::

    mock   answered from the recording, never sent (the default: replaying is safe by default)
    pass   sent to the target like a read
    skip   not replayed at all (its test item is skipped)

Decisions are "send", "mock" or "skip". A passed write can carry a dry-run header (e.g.
``X-Dry-Run: 1``) so a target that honours it does not commit; `mark` adds it. `WriteCounts`
tallies the outcomes per endpoint as plain data, so worker tallies merge. Sans-IO.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..http.message import Request
from ..http.normalize import endpoint_of
from .rewrite import with_header
from .rules import Rule, parse_allow_write, parse_methods

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SEND, MOCK, SKIP = "send", "mock", "skip"
# mode -> decision for a write no allowlist pattern matches
MODES = {"mock": MOCK, "pass": SEND, "skip": SKIP}
WRITE_MODE_FORMS = ("accepted forms: 'mock' (answer writes from the recorded responses; the default), "
                    "'pass' (send writes to the target), 'skip' (do not replay writes)")
WRITE_METHODS_FORMS = "accepted form: a comma-separated list of method names, e.g. 'PURGE,LOCK'"
# decision -> WriteCounts column
OUTCOMES = {MOCK: "mocked", SEND: "passed", SKIP: "skipped"}


def parse_write_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in MODES:
        raise ValueError(f"unknown write mode {text!r}; {WRITE_MODE_FORMS}")
    return mode


def write_methods(extra: Iterable[str] = ()) -> frozenset[str]:
    """The default write methods plus `extra` ('PURGE' or 'PURGE,LOCK' strings)."""
    methods = set(WRITE_METHODS)
    for text in extra:
        names = parse_methods(text, forms=WRITE_METHODS_FORMS)
        if "*" in names:
            raise ValueError(f"{text!r}: '*' can not be a write method; {WRITE_METHODS_FORMS}")
        methods |= names
    return frozenset(methods)


def _request_of(item) -> Request:
    """An Exchange, a PlannedRequest or a Request -> its Request."""
    return item if isinstance(item, Request) else item.request


@dataclass(frozen=True, slots=True)
class WritePolicy:
    mode: str = "mock"
    methods: frozenset[str] = WRITE_METHODS
    allow: tuple[Rule, ...] = ()
    dry_run_header: tuple[bytes, bytes] | None = None

    def __post_init__(self) -> None:
        parse_write_mode(self.mode)
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        object.__setattr__(self, "allow", tuple(parse_allow_write(a) if isinstance(a, str) else a
                                                for a in self.allow))

    def is_write(self, item) -> bool:
        return _request_of(item).method.upper() in self.methods

    def allowed(self, item, host: str | None = None) -> bool:
        """An allowlist pattern matches (for writes: they are sent whatever the mode)."""
        request = _request_of(item)
        return any(rule.matches(request, host) for rule in self.allow)

    def decide(self, item, host: str | None = None) -> str:
        """"send", "mock" or "skip" for an Exchange, PlannedRequest or Request. `host` defaults to the
        request's Host header."""
        request = _request_of(item)
        if request.method.upper() not in self.methods:
            return SEND
        if any(rule.matches(request, host) for rule in self.allow):
            return SEND
        return MODES[self.mode]

    def mark(self, request: Request, host: str | None = None) -> Request:
        """`request` with the dry-run header when it is a write that will be sent (else unchanged)."""
        if self.dry_run_header is None or not self.is_write(request) or self.decide(request, host) != SEND:
            return request
        return with_header(request, *self.dry_run_header)

    def unused_allow_patterns(self, exchanges: Iterable) -> list[str]:
        """Allowlist patterns (as typed) that match no write of the capture: probably a typo."""
        unused = list(self.allow)
        for item in exchanges:
            if not unused:
                break
            request = _request_of(item)
            if request.method.upper() in self.methods:
                unused = [rule for rule in unused if not rule.matches(request)]
        return [str(rule) for rule in unused]


class WriteCounts:
    """Writes mocked / passed / skipped, per endpoint ("METHOD /path/{id}"). Plain dict data."""

    __slots__ = ("counts",)

    def __init__(self, counts: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        if counts:
            self.merge(counts)

    def add(self, item, decision: str, n: int = 1) -> None:
        """Count `item` (an Exchange, PlannedRequest, Request or an endpoint string) under `decision`
        ("mock"/"send"/"skip", or the column names "mocked"/"passed"/"skipped")."""
        column = OUTCOMES.get(decision, decision)
        if column not in OUTCOMES.values():
            raise ValueError(f"unknown write outcome {decision!r}: expected one of {', '.join(OUTCOMES)}")
        if isinstance(item, str):
            endpoint = item
        else:
            request = _request_of(item)
            endpoint = endpoint_of(request.method, request.target)
        row = self.counts.get(endpoint)
        if row is None:
            row = self.counts[endpoint] = {"mocked": 0, "passed": 0, "skipped": 0}
        row[column] += n

    def merge(self, other: WriteCounts | Mapping[str, Mapping[str, int]]) -> WriteCounts:
        data = other.counts if isinstance(other, WriteCounts) else other
        for endpoint, row in data.items():
            for column, n in row.items():
                if n:
                    self.add(endpoint, column, n)
                else:
                    self.counts.setdefault(endpoint, {"mocked": 0, "passed": 0, "skipped": 0})
        return self

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {endpoint: dict(row) for endpoint, row in sorted(self.counts.items())}

    def totals(self) -> dict[str, int]:
        out = {"mocked": 0, "passed": 0, "skipped": 0}
        for row in self.counts.values():
            for column, n in row.items():
                out[column] += n
        return out

    def rows(self) -> list[tuple[str, int, int, int]]:
        """(endpoint, mocked, passed, skipped), busiest first: what the terminal summary prints."""
        return sorted(((e, r["mocked"], r["passed"], r["skipped"]) for e, r in self.counts.items()),
                      key=lambda row: (-sum(row[1:]), row[0]))

    def __bool__(self) -> bool:
        return bool(self.counts)

    def __eq__(self, other) -> bool:
        return isinstance(other, WriteCounts) and self.counts == other.counts

    def __repr__(self) -> str:
        return f"WriteCounts({self.to_dict()!r})"
