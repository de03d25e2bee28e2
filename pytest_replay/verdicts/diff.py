"""Per-exchange verdicts: does the replayed response match the recorded one?

Sans-IO: responses in, a frozen Verdict out. The order of the checks: a transport error fails at once;
then status, the headers a user named, the body after undoing Content-Encoding (JSON by jsondiff.py's walk,
text line by line, binary by size and sha256), and the latency cap. Differences that user rules, the
learned noise model or the default volatile headers account for are not failures: they are counted
in `Verdict.ignored`, so a report can say what was left out and why.

Secrets never reach a Verdict or a rendered failure in clear: header values of secret headers, JSON
values under secret-looking keys, secrets in text by name and by shape (Redactor.text) and personal
data (Redactor.mask_pii) are masked (REDACTED-<hash>) before values are truncated: a value cut first
could no longer be recognised (`bob@exampl…`). Paths of differences are screened too (a JSON key can
be a token).
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from ..http.content import decode as decode_content
from ..http.message import Exchange, Request, Response
from ..http.normalize import endpoint_of
from ..http.units import ms
from ..policy.redact import DEFAULT as DEFAULT_REDACTOR
from ..policy.redact import Redactor, is_masked, mask_text
from .origin import Origins
from .clock import ClockNoise
from .jsondiff import MISSING, Change, changes
from .lookup import header as _header
from .learning import NOISE_REASON, SAFE_METHODS, WriteTimeline, describe_noise, text_noise
from .rules import (FRAMING_HEADERS, TRANSPORT_HEADERS, VOLATILE_HEADERS, Endpoint, Header, Json, Keep, Point,
                    Regex, Rule, generalized_path, grouped_path, parse_rule, parse_rules, readable_path)

__all__ = ["DiffConfig", "Difference", "Learned", "NoiseModel", "Verdict", "body_kind", "compare", "decode_body",
           "describe_noise",
           "learn_noise", "mask_text", "parse_rule", "parse_rules", "render_failure"]

PARTS = frozenset({"status", "headers", "body"})
MAX_VALUE = 120  # characters of a value shown in a difference
PLACEHOLDER = "<ignored>"  # what regex rules (and learned text noise) put in place of their matches
WINDOW = 100  # characters of a changed text line shown, from a little before its first difference
LEAD = 30  # characters shown before the first difference
ABSENT = "(absent)"
HIDDEN = "..."  # stands for a value left out on purpose (Set-Cookie values)


# -- bodies -------------------------------------------------------------------------------------------
def _decode(response: Response) -> tuple[bytes, str | None]:
    """(decoded body, None) or (body as received, why it could not be decoded): http/content.py."""
    return decode_content(response.body, _header(response, b"content-encoding"))


def decode_body(response: Response) -> bytes:
    """The body with Content-Encoding undone; the body as received when it cannot be decoded."""
    return _decode(response)[0]


# Content-Type fragments to body kinds, first match wins (ndjson before json: it is compared by line).
CONTENT_KINDS = (
    ("ndjson", "text"), ("json-seq", "text"), ("json", "json"), ("text/", "text"), ("xml", "text"),
    ("javascript", "text"), ("ecmascript", "text"), ("x-www-form-urlencoded", "text"), ("yaml", "text"),
    ("csv", "text"), ("graphql", "text"), ("html", "text"),
    ("image/", "binary"), ("audio/", "binary"), ("video/", "binary"), ("font/", "binary"),
    ("octet-stream", "binary"), ("pdf", "binary"), ("zip", "binary"), ("protobuf", "binary"), ("grpc", "binary"),
)
_UNPARSED = object()  # what _load_json returns for text that is not JSON
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _content_type(response: Response) -> str:
    value = _header(response, b"content-type")
    return value.decode("latin-1").lower() if value else ""


def _charset(response: Response) -> str:
    match = re.search(r"charset=\"?([\w.:-]+)", _content_type(response))
    try:
        return codecs.lookup(match[1]).name if match else "utf-8"
    except LookupError:
        return "utf-8"


def body_kind(response: Response, body: bytes) -> str:
    """"json" | "text" | "binary" | "empty": from Content-Type, else by sniffing the (decoded) body."""
    if not body:
        return "empty"
    declared = _content_type(response).split(";")[0]
    for fragment, kind in CONTENT_KINDS:
        if fragment in declared:
            return kind
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    if text.lstrip()[:1] in ("{", "[") and _load_json(text) is not _UNPARSED:
        return "json"
    return "text" if len(_CONTROL.findall(text)) <= len(text) // 20 else "binary"


def _number(text: str) -> int | float:
    # JSON has one number type: 1 and 1.0 are the same value (see _Comparison.json).
    value = float(text)
    return int(value) if math.isfinite(value) and value.is_integer() else value


def _load_json(text: str):
    try:
        return json.loads(text, parse_float=_number)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse, compared as text
        return _UNPARSED


def _set_cookie_shape(value: bytes) -> bytes:
    """Set-Cookie without its volatile parts: the cookie's value, Expires and Max-Age."""
    name, _, rest = value.partition(b"=")
    attributes = [a.strip() for a in rest.split(b";")[1:]]
    kept = [a for a in attributes if a.split(b"=")[0].strip().lower() not in (b"expires", b"max-age")]
    return b"; ".join([name.strip() + b"=" + HIDDEN.encode(), *kept])


HEADER_SHAPES = {"set-cookie": _set_cookie_shape}  # headers compared by shape, not by value


# -- masking secrets ----------------------------------------------------------------------------------
_masked = is_masked  # mask_text (secrets in free text) lives in policy/redact.py with the Redactor


def _redact_json(value, redactor: Redactor, secret: bool = False):
    """A JSON value with everything under secret-looking keys masked (strings screened as text)."""
    if secret and not isinstance(value, (dict, list)):
        return redactor.mask(json.dumps(value)) if not (isinstance(value, str) and _masked(value)) else value
    if isinstance(value, dict):
        return {k: _redact_json(v, redactor, secret or bool(redactor.is_secret_name(str(k))))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v, redactor, secret) for v in value]
    return mask_text(value, redactor) if isinstance(value, str) else value


def _short(text: str, limit: int = MAX_VALUE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_value(value, redactor: Redactor, secret: bool) -> str:
    """A JSON value for display, masked (not shortened: _Comparison.add does that, after masking PII)."""
    if value is MISSING:
        return ABSENT
    return json.dumps(_redact_json(value, redactor, secret), ensure_ascii=False)


def _secret_path(path: str, redactor: Redactor) -> bool:
    return any(redactor.is_secret_name(key) for key in re.findall(r"[^.\[\]'\"$]+", path))


# -- values -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Difference:
    """One thing that differs. All fields are short display strings, secrets already masked."""

    part: str  # "status" | "header" | "body" | "latency" | "error"
    path: str  # "status", a header name, "$.user.display_name", "line 12", "bytes", "latency"...
    recorded: str
    replayed: str
    change: str = ""  # the kind of change: "number changed", "removed", "type number -> string"...
    where: str = ""  # `path` with its values abstracted (list indices as [*]); "" = path itself

    @property
    def signature(self) -> str:
        """What changed, without the values: the same cause gives the same signature on every
        exchange it touches (failures are grouped by endpoint and signature)."""
        if self.part == "status":
            return f"status {self.recorded} -> {self.replayed}"
        if self.part == "latency":
            return "latency over the cap"
        if self.part == "error":
            return f"error {self.change or self.path}"
        return f"{'header' if self.part == 'header' else 'body'} {self.where or self.path} {self.change or 'changed'}"

    @property
    def label(self) -> str:
        return {"status": f"status {self.recorded} -> {self.replayed}", "header": f"header {self.path}",
                "body": self.path if self.path.startswith("$") else f"body {self.path}",
                "latency": f"latency {self.replayed}", "error": _short(self.replayed, 60)}[self.part]

    def __str__(self) -> str:
        where = {"status": "status", "header": f"header {self.path}", "body": f"body {self.path}",
                 "latency": "latency", "error": f"error ({self.path})"}[self.part]
        if self.part == "error":
            return f"{where}: {self.replayed}"
        return f"{where}: {self.recorded} -> {self.replayed}"


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    differences: tuple[Difference, ...]  # at most max_diffs; `more` says how many were left out
    ignored: tuple[tuple[str, int], ...]  # (why, how many differences/matches it accounted for)
    summary: str  # one line
    more: int = 0

    @property
    def total(self) -> int:
        return len(self.differences) + self.more


EVERYWHERE = "*"  # a Learned endpoint: noise on every endpoint where the field appears
SPREAD = 2  # a field learned on this many endpoints, and stable on none, is noise everywhere


@dataclass(frozen=True, slots=True)
class Learned:
    """One piece of learned noise: where, and the evidence for it."""

    endpoint: str  # "GET /api/search"
    part: str  # "header" | "json" | "regex" (a varying token of a text body, masked by this pattern)
    key: str  # lower-case header name, a JSONPath with [*] for list indices, or a regex
    groups: int  # groups of identical requests in which it differed
    samples: int  # responses in those groups
    rule: Rule = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        leaf = {"json": Json, "header": Header, "regex": Regex}[self.part](self.key)
        if self.endpoint != EVERYWHERE:
            method, _, template = self.endpoint.partition(" ")
            leaf = Endpoint(method, template) & leaf
        object.__setattr__(self, "rule", leaf)

    def __str__(self) -> str:
        return f"{self.part}:{self.key}" if self.endpoint == EVERYWHERE else f"{self.endpoint}: {self.part}:{self.key}"


@dataclass(frozen=True, slots=True)
class NoiseModel:
    """What varies between recorded responses to identical requests, per endpoint.

    A group is a run of identical requests with one status and no related write between two of
    them (see verdicts/learning.py). `examined`: (endpoint, groups of >= 2 responses, responses in
    them). `skipped`: (endpoint, groups not used: an unsafe method, or responses that changed shape
    or differed otherwise than in values: state, not noise). `separated`: (endpoint, pairs of
    neighbouring identical requests with a related write between them: not compared, whatever
    differs between them the write may explain). To override an entry: ``keep:<str(learned)>``.
    """

    learned: tuple[Learned, ...] = ()
    examined: tuple[tuple[str, int, int], ...] = ()
    skipped: tuple[tuple[str, int], ...] = ()
    separated: tuple[tuple[str, int], ...] = ()
    _index: dict = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        index: dict[str, list[Learned]] = defaultdict(list)
        for item in self.learned:
            index[item.endpoint].append(item)
        object.__setattr__(self, "_index", dict(index))

    def match(self, point: Point) -> Learned | None:
        for item in (*self._index.get(endpoint_of(point.method, point.path), ()), *self._index.get(EVERYWHERE, ())):
            if item.part != "regex" and item.rule.ignores(point):
                return item
        return None

    def masks(self, method: str, path: str) -> list[Learned]:
        """The learned text masks (part "regex") of this request's endpoint."""
        return [item for item in self._index.get(endpoint_of(method, path), ()) if item.part == "regex"]

    def summary(self) -> dict:
        """What was learned, from which endpoints and how many samples, and what was not used:
        plain data for the report ({summary, rules: [{rule, learned}], not_used: [...]})."""
        groups = sum(g for _, g, _ in self.examined)
        examined = {endpoint: g for endpoint, g, _ in self.examined}
        def evidence(item: Learned) -> str:
            if item.endpoint == EVERYWHERE:
                endpoints = sorted({i.endpoint for i in self.learned if i.key == item.key and i is not item})
                return (f"noise on every endpoint: learned on {len(endpoints)} ({', '.join(endpoints[:3])}"
                        f"{', ...' if len(endpoints) > 3 else ''}), stable on none")
            return (f"differed in {item.groups} of {examined.get(item.endpoint, item.groups)} groups, "
                    f"{item.samples} responses")

        rules = [{"rule": noise_name(item), "learned": evidence(item)} for item in self.learned]
        not_used = [f"{endpoint}: {count} groups not used: unsafe method, or responses changed shape or "
                    "differed otherwise than in values (state, not noise)" for endpoint, count in self.skipped]
        not_used += [f"{endpoint}: {count} pairs of identical requests separated by a write to a related "
                     "path, not compared (the write may explain their differences)"
                     for endpoint, count in self.separated]
        return {"summary": f"noise learned from {groups} groups of identical requests (no related write "
                           f"between them) on {len(self.examined)} endpoints", "rules": rules, "not_used": not_used}

    def describe(self, hidden: dict[str, int] | None = None) -> list[str]:
        """summary() as lines; with `hidden` (rule -> differences it hid in a run), each rule says so."""
        return describe_noise(self.summary(), hidden)


# -- learning noise -----------------------------------------------------------------------------------
STRUCTURAL = frozenset({"dictionary_item_added", "dictionary_item_removed", "iterable_item_added",
                        "iterable_item_removed"})
LEAF = ("values_changed", "type_changes")


def _header_map(response: Response) -> dict[str, tuple[bytes, ...]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for name, value in response.headers:
        out[name.decode("latin-1").lower()].append(value)
    return {name: tuple(values) for name, values in out.items()}


def _json_body(response: Response):
    body, problem = _decode(response)
    if problem is not None or body_kind(response, body) != "json":
        return _UNPARSED
    return _load_json(body.decode(_charset(response), "replace"))


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", dict: "object", list: "array", type(None): "null"}.get(type(value), type(value).__name__)


def _value_change(change: Change) -> bool:
    """A leaf change that keeps the JSON type (int and float are both numbers)."""
    return _json_type(change.old) == _json_type(change.new)


def _leaf_paths(doc, keys: tuple = ()) -> set[str]:
    """The generalized JSONPaths of a document's leaf values."""
    if isinstance(doc, dict):
        return {p for k, v in doc.items() for p in _leaf_paths(v, (*keys, k))}
    if isinstance(doc, list):
        return {p for i, v in enumerate(doc) for p in _leaf_paths(v, (*keys, i))}
    return {generalized_path(list(keys))} if keys else set()


def _stable_json_paths(responses: list[Response], noisy: set[str]) -> set[str]:
    """The JSON leaf paths a group's responses share and that did not vary (seen stable)."""
    doc = _json_body(responses[0])
    return set() if doc is _UNPARSED else _leaf_paths(doc) - noisy


def _noisy_json_paths(responses: list[Response]) -> set[str] | None:
    """Generalized JSONPaths whose values differ across `responses`; None if they differ otherwise
    (not JSON, keys or list items added or removed). A value whose JSON type changes is no noise."""
    docs = [_json_body(r) for r in responses]
    if any(doc is _UNPARSED for doc in docs):
        return None
    paths: set[str] = set()
    for doc in docs[1:]:
        try:
            found = changes(docs[0], doc)
        except RecursionError:  # nested deeper than the stack allows: nothing learned
            return None
        if any(change.kind in STRUCTURAL for change in found):
            return None
        paths.update(generalized_path(list(change.keys)) for change in found
                     if change.kind in LEAF and _value_change(change))
    return paths


def _noisy_body(responses: list[Response]) -> list[tuple[str, str]] | None:
    """(part, key) of what varies in the bodies: JSON values, or tokens of text bodies as regex
    masks; None when the bodies differ in a way that is not noise."""
    decoded = [_decode(r) for r in responses]
    bodies = [body for body, _ in decoded]
    if all(body == bodies[0] for body in bodies):
        return []
    if any(problem for _, problem in decoded):
        return None
    kinds = {body_kind(r, body) for r, body in zip(responses, bodies)}
    if kinds == {"json"}:
        paths = _noisy_json_paths(responses)
        return None if paths is None else [("json", path) for path in sorted(paths)]
    if kinds == {"text"}:
        masks = text_noise([body.decode(_charset(r), "replace") for r, body in zip(responses, bodies)])
        return None if masks is None else [("regex", mask) for mask in masks]
    return None


def _noisy(responses: list[Response]) -> list[tuple[str, str]] | None:
    """What varies across the responses of one group, or None when it is not noise."""
    body = _noisy_body(responses)
    if body is None:
        return None
    maps = [_header_map(r) for r in responses]
    names = {name for m in maps for name in m} - VOLATILE_HEADERS - TRANSPORT_HEADERS
    # a header that comes and goes is a change of shape, not noise: only values that vary count
    headers = [("header", n) for n in sorted(names) if all(n in m for m in maps) and len({m[n] for m in maps}) > 1]
    return headers + body


def _groups(exchanges: Iterable[Exchange], redactor: Redactor, max_samples: int):
    """Identical requests with one status (at most max_samples of each), and the capture's writes."""
    groups: dict[tuple, list[Exchange]] = defaultdict(list)
    writes = WriteTimeline()
    for exchange in exchanges:
        request = exchange.request
        if request.method not in SAFE_METHODS:
            writes.add(exchange)  # complete or not: it may have changed state all the same
        if exchange.response is None or not exchange.complete:
            continue
        credentials = tuple((k.lower(), v) for k, v in request.headers if redactor.is_secret_header(k))
        key = (request.method, request.target, request.body, credentials, exchange.response.status)
        group = groups[key]
        if len(group) < max_samples:
            group.append(exchange)
    return groups, writes


def noise_name(rule) -> str:
    """A learned rule as shown and counted: a JSON key or text token in it can be a secret."""
    return DEFAULT_REDACTOR.shapes(str(rule))


def learn_noise(exchanges: Iterable[Exchange], *, redactor: Redactor = DEFAULT_REDACTOR,
                max_samples: int = 32) -> NoiseModel:
    """Learn what varies between recorded responses to identical requests.

    Requests are identical when method, target, body and credential headers (the ones the redactor
    calls secret: another user's cart is not noise) are equal. They are ordered by their capture
    time (across connections) and cut into groups wherever a write that may touch them came between
    two of them (verdicts/learning.py: same collection in the path, or a write we cannot place):
    what a write may explain is state, not noise. Within a group of >= 2 such requests answered
    with the same status, header values that differ, JSON leaf values that differ keeping their
    type (list indices generalized to [*]) and varying tokens of text bodies (learned as regex
    masks: literal text before and after, the token's shape) are noise. Groups of unsafe requests
    (not GET/HEAD/OPTIONS/TRACE), and groups whose responses changed shape (keys or list items
    added or removed, other text between tokens) or whose binary bodies differ, teach nothing and
    are counted in `skipped`. Only complete exchanges are compared; at most `max_samples` responses
    per set of identical requests.
    """
    groups, writes = _groups(exchanges, redactor, max_samples)
    found: dict[tuple[str, str, str], list[int]] = {}
    examined: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    skipped: Counter[str] = Counter()
    separated: Counter[str] = Counter()
    stable: set[tuple[str, str]] = set()  # (part, key) seen not to vary in some group, on any endpoint
    for (method, target, *_), members in groups.items():
        if len(members) < 2:
            continue
        endpoint = endpoint_of(method, target)
        if method not in SAFE_METHODS:
            skipped[endpoint] += 1
            continue
        members.sort(key=lambda e: (e.request_ts_ns, e.index))
        runs, split = writes.runs(endpoint.partition(" ")[2], members)
        if split:
            separated[endpoint] += split
        for run in runs:
            if len(run) < 2:
                continue
            responses = [e.response for e in run]
            noisy = _noisy(responses)
            if noisy is None:
                skipped[endpoint] += 1
                continue
            examined[endpoint][0] += 1
            examined[endpoint][1] += len(responses)
            for part, key in noisy:
                counts = found.setdefault((endpoint, part, key), [0, 0])
                counts[0] += 1
                counts[1] += len(responses)
            stable.update(("json", path) for path in _stable_json_paths(responses, {k for p, k in noisy if p == "json"}))
    learned = tuple(Learned(endpoint, part, key, g, s) for (endpoint, part, key), (g, s) in sorted(found.items()))
    learned += _everywhere(learned, stable)
    return NoiseModel(learned, tuple((e, g, s) for e, (g, s) in sorted(examined.items())),
                      tuple(sorted(skipped.items())), tuple(sorted(separated.items())))


def _everywhere(learned: tuple[Learned, ...], stable: set[tuple[str, str]]) -> tuple[Learned, ...]:
    """JSON fields learned as noise on SPREAD or more endpoints and seen stable on none: noise on every
    endpoint, including those whose requests occur once (where nothing can be learned)."""
    spread: dict[tuple[str, str], list[Learned]] = defaultdict(list)
    for item in learned:
        if item.part == "json":
            spread[(item.part, item.key)].append(item)
    return tuple(Learned(EVERYWHERE, part, key, sum(i.groups for i in items), sum(i.samples for i in items))
                 for (part, key), items in sorted(spread.items())
                 if len({i.endpoint for i in items}) >= SPREAD and (part, key) not in stable)


# -- configuration -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DiffConfig:
    """What to compare. `rules` may be Rule/Keep objects or rule strings (parsed here: ValueError)."""

    parts: frozenset[str] = frozenset({"status", "body"})
    headers: tuple[str, ...] = ()  # compared when "headers" in parts; "*" = every header
    rules: tuple = ()
    noise: NoiseModel | None = None
    clock: ClockNoise | None = None  # times of the capture vs of the replay, generated UUIDs (verdicts/clock.py)
    max_latency_ns: int | None = None
    max_diffs: int = 10
    redactor: Redactor = field(default=DEFAULT_REDACTOR, compare=False)
    grpc: object | None = field(default=None, compare=False)  # verdicts.grpc.Schema (--replay-proto-descriptors)
    ignores: tuple[Rule, ...] = field(default=(), init=False, compare=False, repr=False)
    keeps: tuple[Rule, ...] = field(default=(), init=False, compare=False, repr=False)
    masks: tuple[Regex, ...] = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = frozenset(self.parts)
        if not parts <= PARTS:
            raise ValueError(f"unknown parts {sorted(parts - PARTS)}; accepted: {sorted(PARTS)}")
        rules = parse_rules((self.rules,) if isinstance(self.rules, str) else self.rules)
        headers = (self.headers,) if isinstance(self.headers, str) else self.headers
        ignores = tuple(r for r in rules if not isinstance(r, Keep))
        leaves = [leaf for rule in ignores for leaf in rule.leaves() if isinstance(leaf, Regex)]
        values = {"parts": parts, "headers": tuple(h.lower() for h in headers), "rules": rules,
                  "ignores": ignores, "keeps": tuple(r.rule for r in rules if isinstance(r, Keep)),
                  "masks": tuple(dict.fromkeys(leaves))}
        for name, value in values.items():
            object.__setattr__(self, name, value)


DEFAULT_CONFIG = DiffConfig()


# -- comparison -----------------------------------------------------------------------------------------
class _Comparison:
    """Collects differences and ignored counts for one exchange (internal, short-lived)."""

    def __init__(self, config: DiffConfig, request: Request | None, origins: Origins | None = None) -> None:
        self.config = config
        self.origins = origins  # replaced by one origin on both sides before comparing (verdicts/origin.py)
        self.method = request.method if request is not None else ""
        self.path = request.path if request is not None else ""
        self.differences: list[Difference] = []
        self.ignored: Counter[str] = Counter()
        self.framing_differs = False

    def add(self, part: str, path: str, recorded: str, replayed: str, change: str = "", where: str = "") -> None:
        """Record a difference: values masked for personal data, then shortened (in that order)."""
        redactor = self.config.redactor
        if redactor.pii:
            recorded, replayed = redactor.mask_pii(recorded), redactor.mask_pii(replayed)
        if part == "body":
            path = redactor.shapes(path)
        self.differences.append(Difference(part, path, _short(recorded), _short(replayed), change, where))

    def why_ignored(self, part: str, key: str, noise: bool = True) -> str | None:
        """Why a difference is not a failure, or None. `noise`: whether learned noise may cover it
        (only a changed value may be noise: never a field added or removed, a type change, a
        changed number of list items)."""
        point = Point(self.method, self.path, part, key)
        for rule in self.config.ignores:
            if rule.ignores(point):
                return f"rule {rule}"
        if any(keep.ignores(point) for keep in self.config.keeps):
            return None
        if part == "header":
            if key in VOLATILE_HEADERS:
                return f"volatile header {key}"
            if key in TRANSPORT_HEADERS or (key in FRAMING_HEADERS and self.framing_differs):
                return f"transport header {key}"
        learned = self.config.noise.match(point) if noise and self.config.noise is not None else None
        return f"{NOISE_REASON}{noise_name(learned)}" if learned is not None else None

    def unless_ignored(self, part: str, key: str, difference: tuple[str, str, str, str], *, noise: bool = True,
                       change: str = "", where: str = "", values: tuple | None = None) -> None:
        why = self.why_ignored(part, key, noise)
        if why is None and noise and values is not None and self.config.clock is not None \
                and not any(keep.ignores(Point(self.method, self.path, part, key)) for keep in self.config.keeps):
            why = self.config.clock.reason(*values)
        if why is None:
            self.add(*difference, change=change, where=where)
        else:
            self.ignored[why] += 1

    # headers
    def headers(self, recorded: Response, replayed: Response) -> None:
        redactor = self.config.redactor
        old, new = _header_map(recorded), _header_map(replayed)
        self.framing_differs = any(old.get(n) != new.get(n) for n in ("content-encoding", "transfer-encoding"))
        names = self.config.headers
        if "*" in names:
            names = tuple(dict.fromkeys([*old, *new]))
        for name in names:
            a, b = _header_values(name, old.get(name)), _header_values(name, new.get(name))
            if a != b and a is not None and b is not None:
                a, b = self.same_origin(a), self.same_origin(b)
            if a != b:
                shown = [ABSENT if v is None else v if name in HEADER_SHAPES
                         else mask_text(redactor.header_value(name, v), redactor) for v in (a, b)]
                change = "added" if a is None else "removed" if b is None else "changed"
                self.unless_ignored("header", name, ("header", name, *shown), noise=change == "changed",
                                    change=change, values=(a, b))

    # bodies
    def body(self, recorded: Response, replayed: Response) -> None:
        (old, old_problem), (new, new_problem) = _decode(recorded), _decode(replayed)
        if old == new:
            return
        if old_problem or new_problem:
            self.add("body", "content-encoding", old_problem or "decoded", new_problem or "decoded")
            return
        kinds = body_kind(recorded, old), body_kind(replayed, new)
        masks = self.active_masks()
        if kinds == ("json", "json"):
            a = _load_json(old.decode(_charset(recorded), "replace"))
            b = _load_json(new.decode(_charset(replayed), "replace"))
            if a is not _UNPARSED and b is not _UNPARSED:
                counted, found = self.ignored.copy(), len(self.differences)
                try:
                    a, b = self.same_origin(a, document=True), self.same_origin(b, document=True)
                    return self.json(self.mask_json(a, masks), self.mask_json(b, masks, count=True))
                except RecursionError:  # nested deeper than Python's stack allows: compared as text
                    self.ignored, self.differences[found:] = counted, []
        if kinds[0] != kinds[1] and "empty" not in kinds:
            self.add("body", "kind", kinds[0], kinds[1])
        if "binary" in kinds:
            return self.add("body", "bytes", _fingerprint(old), _fingerprint(new))
        a = self.same_origin(old.decode(_charset(recorded), "replace"))
        b = self.same_origin(new.decode(_charset(replayed), "replace"))
        a, b = self.mask_text(a, masks), self.mask_text(b, masks, count=True)
        self.text(*self.mask_noise(a, b))

    def mask_noise(self, a: str, b: str) -> tuple[str, str]:
        """Learned text noise: the varying tokens its masks match become the placeholder in both
        texts; each token that differed is counted as a difference the mask hid."""
        noise = self.config.noise
        if noise is None:
            return a, b
        for item in noise.masks(self.method, self.path):
            if any(keep.ignores(Point(self.method, self.path, "regex", item.key)) for keep in self.config.keeps):
                continue
            regex = _compiled(item.key)
            hid = sum(x != y for x, y in zip(regex.findall(a), regex.findall(b)))
            if hid:
                self.ignored[f"{NOISE_REASON}{noise_name(item)}"] += hid
            a, b = regex.sub(PLACEHOLDER, a), regex.sub(PLACEHOLDER, b)
        return a, b

    def same_origin(self, value, document: bool = False):
        """`value` (text, or a JSON document) with the exchange's origins made one, counted as ignored."""
        if self.origins is None:
            return value
        return self.origins.json(value, self.ignored) if document else self.origins.text(value, self.ignored)

    def active_masks(self) -> tuple[Regex, ...]:
        return tuple(m for m in self.config.masks
                     if any(rule.ignores(Point(self.method, self.path, "regex", m.pattern))
                            for rule in self.config.ignores))

    def mask_text(self, text: str, masks: tuple[Regex, ...], count: bool = False) -> str:
        for regex in masks:
            text, n = regex.compiled.subn(PLACEHOLDER, text)
            if count and n:
                self.ignored[f"rule {regex} (matches masked)"] += n
        return text

    def mask_json(self, value, masks: tuple[Regex, ...], count: bool = False):
        if not masks:
            return value
        if isinstance(value, dict):
            return {k: self.mask_json(v, masks, count) for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask_json(v, masks, count) for v in value]
        return self.mask_text(value, masks, count) if isinstance(value, str) else value

    def json(self, a, b) -> None:
        # Decisions: ignore_order=False, because API arrays carry meaning in their order (sorted
        # results, pages, timelines) and a reorder is a real change. Numbers: JSON has one number
        # type, so 1 and 1.0 are equal; that is done at parse time (integral floats become ints),
        # not with ignore_numeric_type_changes, which would also make true equal to 1.
        # The walk is verdicts/jsondiff.py's (deepdiff's rules; deepdiff is its reference).
        redactor = self.config.redactor
        for found in sorted(changes(a, b), key=_document_order):
            keys = list(found.keys)
            path = readable_path(keys)
            secret = _secret_path(path, redactor)
            shown = (_json_value(found.old, redactor, secret), _json_value(found.new, redactor, secret))
            change, value = _json_change(found)
            self.unless_ignored("json", found.path, ("body", path, *shown), noise=value, change=change,
                                where=grouped_path(keys), values=(found.old, found.new))

    def text(self, a: str, b: str) -> None:
        old, new = a.splitlines(), b.splitlines()
        redactor = self.config.redactor
        matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            for k in range(max(i2 - i1, j2 - j1)):
                line_a = old[i1 + k] if i1 + k < i2 else None
                line_b = new[j1 + k] if j1 + k < j2 else None
                line = f"line {i1 + k + 1}" if line_a is not None else f"line {j1 + k + 1}"
                if line_a is None or line_b is None:
                    shown = [ABSENT if text is None else repr(mask_text(text, redactor)) for text in (line_a, line_b)]
                    change, where = ("added", f"{line} (replayed)") if line_a is None else ("removed", line)
                    self.add("body", where, *shown, change=change, where=line)
                    continue
                shown_a, shown_b, column = _window(mask_text(line_a, redactor), mask_text(line_b, redactor))
                where = line if column is None else f"{line}, column {column + 1}"
                self.add("body", where, repr(shown_a), repr(shown_b), change="changed", where=line)

    def verdict(self, note: str = "") -> Verdict:
        cap = self.config.max_diffs
        shown, more = tuple(self.differences[:cap]), max(0, len(self.differences) - cap)
        ignored = tuple(self.ignored.items())
        if self.differences:
            labels = "; ".join(d.label for d in self.differences[:3])
            summary = f"{len(self.differences)} difference{'s' * (len(self.differences) > 1)}: {labels}"
            summary += "; …" if len(self.differences) > 3 else ""
        else:
            summary = "same response"
            if ignored:
                summary += f" ({sum(n for _, n in ignored)} ignored)"
        return Verdict(not self.differences, shown, ignored, f"{note}{summary}", more)


def _json_change(found: Change) -> tuple[str, bool]:
    """(what kind of change it is, whether it is a changed value that keeps its type)."""
    if found.kind in LEAF:
        old, new = _json_type(found.old), _json_type(found.new)
        return (f"{old} changed", True) if old == new else (f"type {old} -> {new}", False)
    return JSON_CHANGES.get(found.kind, found.kind.replace("_", " ")), False


JSON_CHANGES = {"dictionary_item_added": "added", "dictionary_item_removed": "removed",
                "iterable_item_added": "item added", "iterable_item_removed": "item removed"}


def _window(a: str, b: str) -> tuple[str, str, int | None]:
    """Two differing lines as WINDOW characters each from LEAD characters before their first
    difference ("…" where cut), and the 0-based column of that difference if the window does not
    start the line (a long line, such as a whole HTML page, changed far from its start)."""
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, first - LEAD) if max(len(a), len(b)) > WINDOW else 0

    def cut(text: str) -> str:
        end = start + WINDOW
        return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")

    return cut(a), cut(b), first if start else None


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _document_order(found: Change) -> tuple[list[tuple[int, str, int]], str]:
    # the kind breaks ties (deepdiff's order of kinds came from a set: it varied with the hash seed)
    return [(0, "", key) if isinstance(key, int) else (1, str(key), 0) for key in found.keys], found.kind


def _fingerprint(body: bytes) -> str:
    return f"{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()[:16]}"


def _header_values(name: str, values: tuple[bytes, ...] | None) -> str | None:
    if values is None:
        return None
    shape = HEADER_SHAPES.get(name)
    return ", ".join((shape(v) if shape else v).decode("latin-1") for v in values)


SAME = Verdict(True, (), (), "same response")  # what the full path says of a response with nothing to report
FAST_PATH = True  # compare()'s default for `fast` (tests run both paths and compare them)


def _same_quickly(recorded: Response, replayed: Response, config: DiffConfig, exchange: Exchange | None,
                  latency_ns: int | None) -> bool:
    """Would the full path find nothing to report, and nothing to count as ignored? True only in the
    plain case: headers not compared, one status, both HTTP/1 (not gRPC), the recorded response whole,
    the same body bytes under the same Content-Encoding (decoded alike, whatever it is), under the
    latency cap. Anything else: False, and the full path judges."""
    if "headers" in config.parts or recorded.status != replayed.status:
        return False
    if recorded.protocol != "http/1" or replayed.protocol != "http/1":
        return False
    if exchange is not None and exchange.flags:
        return False
    cap = config.max_latency_ns
    if cap is not None and latency_ns is not None and latency_ns > cap:
        return False
    return recorded.body == replayed.body and \
        _header(recorded, b"content-encoding") == _header(replayed, b"content-encoding")


def compare(recorded: Response | None, replayed: Response | None, config: DiffConfig = DEFAULT_CONFIG, *,
            exchange: Exchange | None = None, error: str | None = None, latency_ns: int | None = None,
            recorded_latency_ns: int | None = None, origins: Origins | None = None,
            fast: bool | None = None) -> Verdict:
    """The verdict on one replayed exchange (see the module docstring for the order of checks).
    `origins`: the recorded and replayed origins treated as one (verdicts/origin.py); None: as captured.
    `fast` (default FAST_PATH): a response the same as the recording in the plain case (_same_quickly)
    gets SAME without the full path, which stays the reference (False: always the full path)."""
    if error is None and recorded is not None and replayed is not None and (FAST_PATH if fast is None else fast) \
            and _same_quickly(recorded, replayed, config, exchange, latency_ns):
        return SAME
    request = exchange.request if exchange is not None else None
    check = _Comparison(config, request, origins)
    note = ""
    if error is not None:
        check.add("error", "transport", "", mask_text(error, config.redactor), change=_short(error.split(":")[0], 60))
        return check.verdict()
    if replayed is None:
        check.add("error", "response", "a response", "no response", change="no response")
        return check.verdict()
    if recorded is None:
        note = "no recorded response: checked only that the replay answered without a 5xx; "
        if replayed.status >= 500:
            check.add("status", "status", "(not recorded)", str(replayed.status))
    else:
        # A recorded response the capture holds only in part (cut by a gap, the snapshot length or
        # a close) is compared on what it holds: its status, its headers when its head is whole.
        cut = [str(f) for f in exchange.flags if f.part == "response"] if exchange is not None else []
        head_whole = recorded.head.endswith((b"\n\r\n", b"\n\n"))
        if cut:
            note = (f"the recorded response is incomplete ({'; '.join(cut)}): body "
                    + ("" if head_whole else "and headers ") + "not compared; ")
        grpc = _grpc_pair(recorded, replayed)
        if "status" in config.parts and recorded.status != replayed.status:
            check.add("status", "status", str(recorded.status), str(replayed.status))
        if "status" in config.parts and grpc is not None and not cut:
            grpc.compare_status(check, recorded, replayed)
        if "headers" in config.parts and head_whole:
            check.headers(recorded, replayed)
        if "body" in config.parts and not cut:
            if grpc is not None:
                grpc.compare_messages(check, recorded, replayed, config.grpc)
            else:
                check.body(recorded, replayed)
    cap = config.max_latency_ns
    if cap is not None and latency_ns is not None and latency_ns > cap:
        was = f"cap {ms(cap)}" + (f" (recorded {ms(recorded_latency_ns)})" if recorded_latency_ns else "")
        check.add("latency", "latency", was, ms(latency_ns))
    return check.verdict(note)


def _grpc_pair(recorded: Response, replayed: Response):
    """verdicts.grpc when both responses are gRPC (captured over HTTP/2), else None."""
    if recorded.protocol == "http/1" and replayed.protocol == "http/1":
        return None
    from . import grpc
    return grpc if grpc.both_grpc(recorded, replayed) else None


# -- rendering -------------------------------------------------------------------------------------------
def _rescreen(difference: Difference, redactor: Redactor) -> tuple[str, str]:
    """Mask again with the caller's redactor (it may know more secret names than the config's)."""
    def screen(value: str) -> str:
        if value == ABSENT or _masked(value):
            return value
        if difference.part == "header" and redactor.is_secret_header(difference.path) \
                and difference.path not in HEADER_SHAPES:  # shapes carry no values
            return redactor.mask(value)
        if difference.part == "body" and _secret_path(difference.path, redactor):
            return redactor.mask(value)
        return _short(mask_text(value, redactor))
    return screen(difference.recorded), screen(difference.replayed)


def render_failure(exchange: Exchange, verdict: Verdict, *, recorded_latency_ns: int | None,
                   replayed_latency_ns: int | None, replayed_status: int | None,
                   redactor: Redactor = DEFAULT_REDACTOR) -> str:
    """The text a failing test item shows: request, status and latency, then the differences."""
    request = exchange.request
    recorded_status = exchange.response.status if exchange.response is not None else "(not recorded)"
    lines = [
        f"{request.method} {_short(redactor.target(request.target), 200)} "
        f"{'HTTP/2' if request.protocol != 'http/1' else f'HTTP/{request.version}'}"
        f"  [{exchange.source}]",
        f"  recorded: {recorded_status} in {ms(recorded_latency_ns)}   "
        f"replayed: {replayed_status if replayed_status is not None else '-'} in {ms(replayed_latency_ns)}",
    ]
    for difference in verdict.differences:
        old, new = _rescreen(difference, redactor)
        lines.append("  " + str(Difference(difference.part, difference.path, old, new)))
    if verdict.more:
        lines.append(f"  ... and {verdict.more} more")
    if verdict.ignored:
        ignored = ", ".join(f"{why} ({n})" for why, n in verdict.ignored[:5])
        rest = len(verdict.ignored) - 5
        lines.append(f"  ignored: {mask_text(ignored, redactor)}" + (f" and {rest} more reasons" if rest > 0 else ""))
    return "\n".join(lines)
