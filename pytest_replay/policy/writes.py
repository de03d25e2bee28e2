"""The write policy: which captured requests may change state on the server, and what happens to them.

Deny by default. GET, HEAD and OPTIONS are reads; every other method, known or not, is a write
(PURGE, MKCOL, MOVE, PROPPATCH, LOCK, CONNECT, TRACE, FOO; a gRPC call is a POST, a read only when a
descriptor set marks its method `idempotency_level = NO_SIDE_EFFECTS`). A request is a
write too when it names a write method the way frameworks honour (a method override: the
X-HTTP-Method-Override, X-HTTP-Method or X-Method-Override header, the `_method` query parameter or
form field) or when a --replay-write-pattern names it. A GET or HEAD with a body is sent, and flagged.

`WriteRules.classify(request)` answers "is this a write, and why" from the tables below: the one
place that decides it, for the plan, the item markers, the counts, grouped items and xdist workers.
A write is sent when the allowlist names every write method it may mean (a GET overridden to
DELETE needs 'DELETE ...', a POST with _method=DELETE needs both); otherwise the mode decides::

    mock   answered from the recording, never sent (the default: replaying is safe by default)
    pass   sent to the target like a read
    skip   not replayed at all (its test item is skipped)

`WritePolicy.decision(request)` gives a Decision: the action ("send", "mock" or "skip") and the
Classification it rests on. A passed write can carry a dry-run header (e.g. ``X-Dry-Run: 1``) so a
target that honours it does not commit; `mark` adds it. `WriteCounts` tallies the outcomes per
endpoint as plain data (mocked, passed, skipped writes; flagged reads that were sent), so worker
tallies merge. Sans-IO.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..http.fields import form_values, query_values
from ..http.h2 import is_grpc
from ..http.message import Request
from ..http.normalize import endpoint_of, printable_method
from ..vocab import WriteDecision, WriteMode, WriteOutcome
from .rewrite import with_header
from .rules import HasBody, Labeled, Method, Rule, parse_allow_write, parse_methods, parse_write_pattern

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # compared exactly: 'get' is not a read
SEND, MOCK, SKIP = WriteDecision.SEND, WriteDecision.MOCK, WriteDecision.SKIP
# mode -> decision for a write the allowlist does not name
MODES = {WriteMode.MOCK: MOCK, WriteMode.PASS: SEND, WriteMode.SKIP: SKIP}
WRITE_MODE_FORMS = ("accepted forms: 'mock' (answer writes from the recorded responses; the default), "
                    "'pass' (send writes to the target), 'skip' (do not replay writes)")
WRITE_METHODS_FORMS = "accepted form: a comma-separated list of method names, e.g. 'PURGE,LOCK'"
WRITE_METHODS_DEPRECATED = (
    "--replay-write-methods is deprecated: every method but GET, HEAD and OPTIONS is a write now; to make "
    "reads writes use --replay-write-pattern 'METHOD PATH_REGEX' (e.g. 'GET ^/api/delete'). It still works "
    "and will be removed in 0.3.")
# decision -> WriteCounts column (a flagged read that was sent: "flagged")
OUTCOMES = {MOCK: WriteOutcome.MOCKED, SEND: WriteOutcome.PASSED, SKIP: WriteOutcome.SKIPPED}
FLAGGED = WriteOutcome.FLAGGED
COLUMNS = (*OUTCOMES.values(), FLAGGED)
# what an item not sent says, by decision
NOT_SENT = {MOCK: "write answered from the recording, not sent (--replay-writes mock; --replay-allow-write "
                  "sends matching writes)",
            SKIP: "write not replayed (--replay-writes skip)"}


def parse_write_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in MODES:
        raise ValueError(f"unknown write mode {text!r}; {WRITE_MODE_FORMS}")
    return WriteMode(mode)


def write_methods(extra: Iterable[str] = ()) -> frozenset[str]:
    """Methods declared writes by --replay-write-methods ('PURGE' or 'PURGE,LOCK' strings). Deprecated:
    only GET, HEAD and OPTIONS are not writes already."""
    methods: set[str] = set()
    for text in extra:
        names = parse_methods(text, forms=WRITE_METHODS_FORMS)
        if "*" in names:
            raise ValueError(f"{text!r}: '*' can not be a write method; {WRITE_METHODS_FORMS}")
        methods |= names
    return frozenset(methods)


def _request_of(item) -> Request:
    """An Exchange, a PlannedRequest or a Request -> its Request."""
    return item if isinstance(item, Request) else item.request


def _as(request: Request, method: str) -> Request:
    """`request` as the server acting on `method` sees it (for the allowlist)."""
    return request if method == request.method else dataclasses.replace(request, method=method)


def _writes(values: Iterable[str]) -> tuple[str, ...]:
    """The write methods among method names a request gives (an empty value names none)."""
    names = (value.strip().upper() for value in values)
    return tuple(name for name in names if name and name not in READ_METHODS)


# -- where a request names a method the server may act on --------------------------------------------------
@dataclass(frozen=True, slots=True)
class OwnMethod:
    """The request line's method, when it is not a read. `reads`: gRPC methods ('/pkg.Service/Get')
    a descriptor set marks `idempotency_level = NO_SIDE_EFFECTS`: their POSTs are reads."""

    hinted = False  # may name a method whatever the head and body hold
    reads: frozenset[str] = frozenset()

    def named(self, request: Request) -> tuple[str, ...]:
        method = request.method
        if method in READ_METHODS:
            return ()
        if self.reads and method == "POST" and request.path in self.reads and is_grpc(request.headers):
            return ()
        return (method,)

    def reason(self, method: str) -> str:
        return f"method {printable_method(method)}"


@dataclass(frozen=True, slots=True)
class HeaderOverride:
    """Every value of a method-override header naming a write method."""

    hinted = True  # names nothing unless the head says "method" (mentions_method)
    name: str
    _probe: re.Pattern[bytes] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # a scan of the head before walking its headers: most requests carry no override
        probe = re.compile(rb"\n" + re.escape(self.name.encode("latin-1")) + rb"[ \t]*:", re.IGNORECASE)
        object.__setattr__(self, "_probe", probe)

    def named(self, request: Request) -> tuple[str, ...]:
        if self._probe.search(request.head) is None:
            return ()
        key = self.name.lower().encode("latin-1")
        return _writes(v.decode("latin-1") for k, v in request.headers if k.lower() == key)

    def reason(self, method: str) -> str:
        return f"{self.name}: {method}"


@dataclass(frozen=True, slots=True)
class QueryOverride:
    """A query parameter naming a write method (Laravel/Symfony, Express method-override)."""

    hinted = True
    name: str

    def named(self, request: Request) -> tuple[str, ...]:
        return _writes(query_values(request.target, self.name))

    def reason(self, method: str) -> str:
        return f"query {self.name}={method}"


@dataclass(frozen=True, slots=True)
class FormOverride:
    """A body field naming a write method: urlencoded or multipart form (Rails, Laravel), JSON (Laravel)."""

    hinted = True  # a request with a body is always looked at
    name: str

    def named(self, request: Request) -> tuple[str, ...]:
        if not request.body:
            return ()
        return _writes(form_values(request.header("content-type"), request.body, self.name))

    def reason(self, method: str) -> str:
        return f"form field {self.name}={method}"


@dataclass(frozen=True, slots=True)
class Declared:
    """A user's pattern naming requests that are writes whatever their method."""

    hinted = False
    rule: Rule
    flag: str = "--replay-write-pattern"

    def named(self, request: Request) -> tuple[str, ...]:
        return (request.method,) if self.rule.matches(request) else ()

    def reason(self, method: str) -> str:
        return f"{self.flag} '{self.rule}'"


# The method a request means: its own, then the overrides frameworks honour. Each source names the
# write methods it finds; a request is a write when any does, for every reason found.
SOURCES = (
    OwnMethod(),
    HeaderOverride("X-HTTP-Method-Override"),  # Google APIs, Express method-override, Rack
    HeaderOverride("X-HTTP-Method"),  # ASP.NET, OData
    HeaderOverride("X-Method-Override"),
    QueryOverride("_method"),  # Laravel/Symfony, Express method-override('_method')
    FormOverride("_method"),  # Rails (Rack::MethodOverride), Laravel
)


def mentions_method(head: bytes) -> bool:
    """Every hinted source names nothing for a request without a body whose head (request line and
    headers) does not say "method" in any case: most reads are classified without looking further."""
    return b"method" in head.lower()


# Reads with a body sent but flagged: (rule, why). Content on a GET or HEAD has no defined meaning
# (RFC 9110 9.3.1).
FLAGS = (
    (HasBody() & Method({"GET", "HEAD"}), "{method} with a body"),
)


@dataclass(frozen=True, slots=True)
class Classification:
    """Is a request a write, and why. `meanings`: (write method the server may act on, why) pairs,
    empty for a read; `flagged`: why a read is sent but flagged ("" when it is not)."""

    meanings: tuple[tuple[str, str], ...] = ()
    flagged: str = ""

    @property
    def write(self) -> bool:
        return bool(self.meanings)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(method for method, _ in self.meanings))

    @property
    def reason(self) -> str:
        return "; ".join(dict.fromkeys(why for _, why in self.meanings)) or self.flagged


READ = Classification()
# pytest markers an item gets when any of its requests' classification says so: name -> (test, description)
MARKERS = {
    "http_write": (lambda why: why.write, "replayed writes: every method but GET, HEAD and OPTIONS, requests whose "
                   "method override names one, and --replay-write-pattern matches"),
    "http_read_with_body": (lambda why: bool(why.flagged), "replayed GET or HEAD requests with a body (sent, "
                            "flagged)"),
}


@dataclass(frozen=True, slots=True)
class WriteRules:
    """Which requests are writes: the built-in SOURCES after the user's declared patterns. The
    hinted sources are skipped for requests without a body whose head `hint` rejects (`hint=lambda
    head: True` gives the reference path, which the tests compare with this one)."""

    sources: tuple = SOURCES
    hint: Callable[[bytes], bool] = mentions_method
    _unhinted: tuple = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_unhinted", tuple(s for s in self.sources if not s.hinted))

    @classmethod
    def declaring(cls, patterns: Iterable = (), methods: Iterable[str] = (), reads: Iterable[str] = ()) -> WriteRules:
        """With --replay-write-pattern rules (or their text), --replay-write-methods names and the
        gRPC methods a descriptor set declares free of side effects (`reads`, paths)."""
        declared = tuple(Declared(parse_write_pattern(p) if isinstance(p, str) else p) for p in patterns)
        own = OwnMethod(frozenset(reads))
        sources = tuple(own if isinstance(s, OwnMethod) else s for s in SOURCES)
        return cls((*declared, *sources)).with_methods(methods)

    def with_methods(self, methods: Iterable[str]) -> WriteRules:
        """These rules, with `methods` declared writes first (deprecated --replay-write-methods)."""
        names = frozenset(m.upper() for m in methods)
        if not names:
            return self
        rule = Labeled(Method(names), ",".join(sorted(names)))
        return WriteRules((Declared(rule, "--replay-write-methods"), *self.sources), self.hint)

    def classify(self, request: Request) -> Classification:
        body = request.body
        sources = self.sources if body or self.hint(request.head) else self._unhinted
        meanings = tuple((method, source.reason(method)) for source in sources for method in source.named(request))
        if meanings:
            return Classification(meanings)
        flagged = body and next((why for rule, why in FLAGS if rule.matches(request)), None)
        return Classification(flagged=flagged.format(method=request.method)) if flagged else READ


DEFAULT_RULES = WriteRules()


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one request ("send", "mock" or "skip"), and the classification behind it.
    `on`: the request it was made for (a target sending that very object need not decide again)."""

    action: str
    why: Classification = READ
    on: Request | None = field(default=None, compare=False, repr=False)

    @property
    def column(self) -> str | None:
        """Its write-summary column: mocked/passed/skipped for a write, flagged for a flagged read
        that is sent, None for a plain read."""
        if self.why.write:
            return OUTCOMES[self.action]
        return FLAGGED if self.why.flagged and self.action == SEND else None

    def not_sent(self) -> str:
        """Why its item is skipped, when it is not sent."""
        return f"{NOT_SENT[self.action]}: {self.why.reason}"


@dataclass(frozen=True, slots=True)
class WritePolicy:
    mode: str = "mock"
    methods: frozenset[str] = frozenset()  # deprecated --replay-write-methods: more methods declared writes
    allow: tuple[Rule, ...] = ()
    dry_run_header: tuple[bytes, bytes] | None = None
    rules: WriteRules = DEFAULT_RULES

    def __post_init__(self) -> None:
        parse_write_mode(self.mode)
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        object.__setattr__(self, "allow", tuple(parse_allow_write(a) if isinstance(a, str) else a
                                                for a in self.allow))
        object.__setattr__(self, "rules", self.rules.with_methods(self.methods))

    def classify(self, item) -> Classification:
        return self.rules.classify(_request_of(item))

    def is_write(self, item) -> bool:
        return self.classify(item).write

    def allowed(self, item, host: str | None = None) -> bool:
        """The allowlist names every write method the request may mean (it is sent whatever the mode)."""
        request = _request_of(item)
        return self._allows(request, self.rules.classify(request).methods, host)

    def _allows(self, request: Request, methods: tuple[str, ...], host: str | None) -> bool:
        allow = self.allow
        return bool(allow) and all(any(rule.matches(_as(request, m), host) for rule in allow) for m in methods)

    def decision(self, item, host: str | None = None) -> Decision:
        """The Decision for an Exchange, PlannedRequest or Request. `host` defaults to the request's
        Host header."""
        request = _request_of(item)
        why = self.rules.classify(request)
        if not why.write or self._allows(request, why.methods, host):
            return Decision(SEND, why, request)
        return Decision(MODES[self.mode], why, request)

    def decide(self, item, host: str | None = None) -> str:
        """"send", "mock" or "skip"."""
        return self.decision(item, host).action

    def mark(self, request: Request, host: str | None = None, decision: Decision | None = None) -> Request:
        """`request` with the dry-run header when it is a write that will be sent (else unchanged)."""
        if self.dry_run_header is None:
            return request
        decision = decision or self.decision(request, host)
        if not decision.why.write or decision.action != SEND:
            return request
        return with_header(request, *self.dry_run_header)

    def unused_allow_patterns(self, exchanges: Iterable) -> list[str]:
        """Allowlist patterns (as typed) that match no write of the capture: probably a typo."""
        unused = list(self.allow)
        for item in exchanges:
            if not unused:
                break
            request = _request_of(item)
            for method in self.rules.classify(request).methods:
                unused = [rule for rule in unused if not rule.matches(_as(request, method))]
        return [str(rule) for rule in unused]


def _empty_row() -> dict[str, int]:
    return dict.fromkeys(COLUMNS, 0)


class WriteCounts:
    """Writes mocked / passed / skipped and reads flagged, per endpoint ("METHOD /path/{id}"). Plain
    dict data."""

    __slots__ = ("counts",)

    def __init__(self, counts: Mapping[str, Mapping[str, int]] | None = None) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        if counts:
            self.merge(counts)

    def add(self, item, decision: str, n: int = 1) -> None:
        """Count `item` (an Exchange, PlannedRequest, Request or an endpoint string) under `decision`
        ("mock"/"send"/"skip", or the column names "mocked"/"passed"/"skipped"/"flagged")."""
        column = OUTCOMES.get(decision, decision)
        if column not in COLUMNS:
            raise ValueError(f"unknown write outcome {decision!r}: expected one of {', '.join(OUTCOMES)}")
        if isinstance(item, str):
            endpoint = item
        else:
            request = _request_of(item)
            endpoint = endpoint_of(request.method, request.target)
        row = self.counts.get(endpoint)
        if row is None:
            row = self.counts[endpoint] = _empty_row()
        row[column] += n

    def merge(self, other: WriteCounts | Mapping[str, Mapping[str, int]]) -> WriteCounts:
        data = other.counts if isinstance(other, WriteCounts) else other
        for endpoint, row in data.items():
            for column, n in row.items():
                if n:
                    self.add(endpoint, column, n)
                else:
                    self.counts.setdefault(endpoint, _empty_row())
        return self

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {endpoint: dict(row) for endpoint, row in sorted(self.counts.items())}

    def totals(self) -> dict[str, int]:
        out = _empty_row()
        for row in self.counts.values():
            for column, n in row.items():
                out[column] += n
        return out

    def rows(self) -> list[tuple[str, int, int, int, int]]:
        """(endpoint, mocked, passed, skipped, flagged), busiest first: what the terminal summary prints."""
        return sorted(((e, *(r[c] for c in COLUMNS)) for e, r in self.counts.items()),
                      key=lambda row: (-sum(row[1:]), row[0]))

    def __bool__(self) -> bool:
        return bool(self.counts)

    def __eq__(self, other) -> bool:
        return isinstance(other, WriteCounts) and self.counts == other.counts

    def __repr__(self) -> str:
        return f"WriteCounts({self.to_dict()!r})"
