"""Latency and error budgets (k6 threshold syntax), evaluated over a whole replay as verdicts.

    [SCOPE: ] METRIC OP VALUE

    METRIC   latency: p50 p90 p95 p99 (any pN or p(N), e.g. p99.9, p(95)), max, mean (avg), med (= p50)
             errors:  5xx, 4xx, errors (transport failures and 5xx)
    OP       <  <=  >  >=
    VALUE    latency: 200ms, 150us, 1.5s (a bare number is ms, as in k6); relative: 1.2x (times the
             value of the same requests: the live baseline's with --replay-baseline, else the
             recorded one), 1.2x recorded, 1.2x baseline
             errors:  1%, 0.5% (a bare number is percent); relative: recorded, recorded+0.5%,
             baseline, baseline+0.5%
    SCOPE    [METHOD|*] PATH: PATH is a glob on the path template (`*` any characters, `?` one) in
             which `{name}` matches one path segment, so `GET /api/users/*` and `GET /api/users/{id}`
             both cover the template `/api/users/{id}`. Without a scope the budget covers every request.

A scoped budget measures the union of the endpoints it matches. Latency is time to the first response
byte from the request's send (the service latency, comparable with the recorded latency and k6's
http_req_duration); `scheduled p99<300ms` judges the response time from schedule instead (from the
instant the request would have been sent had the replayer been on time: time queued behind the
target, on its busy connection, a barrier or a concurrency slot, counts; report.aggregate "response";
absolute values only). An absolute budget on the service latency that passes while the response
time from schedule breaks it says so on its line. Latencies are kept in HDR histograms (report.aggregate) at 3 significant figures; error rates are percent of the
requests that reached the target. A budget that cannot be measured (a scope matching no replayed
request, no latency measured, a relative budget without recorded values) fails, saying why: it never
passes silently. Sans-IO: an Aggregate in, frozen BudgetResults out.

A failed budget names its worst endpoints: for an absolute budget those with the most requests
beyond the limit; for a relative one (1.2x) those whose own ratio to their recorded value breaks
the factor, highest ratio first (an endpoint slow in the capture too is no offender). A relative
latency budget's line carries cautions (`with_caveats`) where its ratio cannot be trusted: a
capture of closed-loop bursts (a benchmark tool's back-to-back requests: the recorded latencies
were measured under its load), or a target sharing this machine's cores (in-process, loopback).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import operator
import re
from urllib.parse import urlsplit
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..http.units import US_PER_MS, fmt_ms

# The aggregate (report.aggregate.Aggregate) is taken by duck type, so verdicts do not import report:
# it offers .overall, .endpoints {key: Stats}, .folded and .union(keys) -> Stats.

ACCEPTED_FORMS = (
    "accepted forms: '[SCOPE: ]METRIC OP VALUE' with METRIC p50|p90|p95|p99|pN|p(N)|max|mean|avg|med "
    "(latency) or 5xx|4xx|errors (error rate), OP <|<=|>|>=, VALUE an absolute latency (200ms, 150us, 1.5s) "
    "or a factor of the recorded latency (1.2x), or a rate (1%, recorded, recorded+0.5%) for error metrics; "
    "SCOPE '[METHOD|*] /path/glob/*' or a path template '/api/users/{id}'; 'scheduled' before an absolute "
    "latency metric judges the response time from schedule. Examples: 'p95<200ms', 'scheduled p99<300ms', "
    "'p95<1.2x', 'GET /api/users/*: p99<300ms', '5xx<1%', 'errors<0.5%', '5xx<=recorded+0.5%'")

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
UNITS_NS = {"us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
ERROR_METRICS = ("5xx", "4xx", "errors")
ALIASES = {"avg": "mean", "med": "p50", "median": "p50"}
WORST = 3

_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_BUDGET = re.compile(
    r"^(?:(?P<scope>.+?)\s*:\s*)?"
    r"(?P<basis>scheduled\s+)?(?P<metric>p\(\s*(?:" + _NUMBER + r")\s*\)|p(?:" + _NUMBER + r")|max|mean|avg|med|median|5xx|4xx|errors)"
    r"\s*(?P<op><=|>=|<|>)\s*(?P<value>\S.*?)\s*$", re.IGNORECASE)
_LATENCY_VALUE = re.compile(r"^(?P<n>" + _NUMBER + r")\s*(?P<unit>us|µs|ms|s|x)?"
                            r"(?:\s*(?P<reference>recorded|baseline))?$", re.IGNORECASE)
_ERROR_VALUE = re.compile(
    r"^(?:(?P<recorded>recorded|baseline)(?:\s*(?P<sign>[+-])\s*(?P<delta>" + _NUMBER + r")\s*%?)?"
    r"|(?P<n>" + _NUMBER + r")\s*%?)$", re.IGNORECASE)
_SCOPE = re.compile(r"^(?:(?P<method>\*|[A-Za-z][A-Za-z-]*)\s+)?(?P<path>[/*]\S*)$")


@dataclass(frozen=True, slots=True)
class Scope:
    """Which endpoints a budget covers: a method (None = any) and a glob over path templates
    (`*` any characters, `?` one, `{name}` any placeholder segment of the template)."""

    method: str | None
    path: str
    _regex: re.Pattern[str] = field(compare=False, repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        parts = []
        for piece in re.split(r"(\{[^{}/]*\}|\*|\?)", self.path):
            if piece == "*":
                parts.append(".*")
            elif piece == "?":
                parts.append(".")
            elif piece.startswith("{") and piece.endswith("}"):
                # a placeholder matches a placeholder of the endpoint's template ({id}, {uuid}, ...),
                # not a literal segment: /api/products/{id} is not /api/products/stream
                parts.append(r"\{[^{}/]*\}")
            else:
                parts.append(re.escape(piece))
        object.__setattr__(self, "_regex", re.compile("".join(parts)))

    def matches(self, endpoint: str) -> bool:
        """Does the endpoint key ("GET /api/users/{id}") fall in this scope?"""
        method, _, template = endpoint.partition(" ")
        if self.method is not None and method != self.method:
            return False
        return self._regex.fullmatch(template) is not None

    def __str__(self) -> str:
        return f"{self.method} {self.path}" if self.method else self.path


@dataclass(frozen=True, slots=True)
class Budget:
    """One parsed budget. `value` is ns (absolute latency), a factor (relative latency), percent
    (absolute error rate) or percentage points added to the recorded rate (relative error rate)."""

    text: str
    metric: str  # "p95", "p99.9", "max", "mean", "5xx", "4xx", "errors"
    op: str
    value: float
    relative: bool = False
    scope: Scope | None = None
    reference: str | None = None  # relative budgets: "recorded", "baseline", None = baseline if any, else recorded
    basis: str = "service"  # latency: from send ("service") or from the schedule ("scheduled ..."), see below

    @property
    def kind(self) -> str:
        return "errors" if self.metric in ERROR_METRICS else "latency"

    @property
    def quantile(self) -> float | None:
        """The percentile (0..100) of a latency budget; 100 for max; None for mean and error budgets."""
        if self.metric == "max":
            return 100.0
        if self.metric.startswith("p"):
            return float(self.metric[1:])
        return None

    def __str__(self) -> str:
        return self.text


def parse_budget(text: str) -> Budget:
    """A budget string to a Budget. ValueError names the accepted forms."""
    source = " ".join(str(text).split())
    match = _BUDGET.match(source)
    if not match:
        raise ValueError(f"invalid budget {text!r}; {ACCEPTED_FORMS}")
    metric = match["metric"].lower().replace(" ", "")
    metric = ALIASES.get(metric, metric)
    if metric.startswith("p(") and metric.endswith(")"):
        metric = "p" + metric[2:-1]
    if metric.startswith("p"):
        q = float(metric[1:])
        if not 0 < q < 100:
            raise ValueError(f"invalid budget {text!r}: percentile {q:g} is not between 0 and 100 "
                             f"(use max for the largest value); {ACCEPTED_FORMS}")
        metric = f"p{q:g}"
    scope = None
    reference = None
    if match["scope"] is not None:
        found = _SCOPE.match(match["scope"].strip())
        if not found:
            raise ValueError(f"invalid budget {text!r}: {match['scope']!r} is not an endpoint scope "
                             f"('[METHOD|*] /path', the path a glob or a template); {ACCEPTED_FORMS}")
        method = found["method"]
        path = found["path"].split("?", 1)[0]
        scope = Scope(None if method in (None, "*") else method.upper(), path)
    value_text = match["value"]
    if metric in ERROR_METRICS:
        found = _ERROR_VALUE.match(value_text)
        if not found:
            raise ValueError(f"invalid budget {text!r}: {value_text!r} is not a rate for {metric} "
                             f"(e.g. 1%, recorded, recorded+0.5%); {ACCEPTED_FORMS}")
        if found["recorded"]:
            delta = float(found["delta"] or 0)
            value, relative = (-delta if found["sign"] == "-" else delta), True
            reference = found["recorded"].lower()
        else:
            value, relative = float(found["n"]), False
            if value > 100:
                raise ValueError(f"invalid budget {text!r}: a rate above 100% ; {ACCEPTED_FORMS}")
    else:
        found = _LATENCY_VALUE.match(value_text)
        if not found:
            raise ValueError(f"invalid budget {text!r}: {value_text!r} is not a latency for {metric} "
                             f"(e.g. 200ms, 150us, 1.5s, or 1.2x the recorded value); {ACCEPTED_FORMS}")
        unit = (found["unit"] or "ms").lower()
        if found["reference"] and unit != "x":
            raise ValueError(f"invalid budget {text!r}: {found['reference']!r} goes with a factor (1.2x "
                             f"{found['reference'].lower()}); {ACCEPTED_FORMS}")
        reference = found["reference"].lower() if found["reference"] else None
        if unit == "x":
            value, relative = float(found["n"]), True
        else:
            value, relative = float(found["n"]) * UNITS_NS[unit], False
    basis = "scheduled" if match["basis"] else "service"
    if basis == "scheduled" and (relative or metric in ERROR_METRICS):
        raise ValueError(f"invalid budget {text!r}: 'scheduled' goes with an absolute latency (scheduled p99<300ms): "
                         f"recorded latencies were measured from send; {ACCEPTED_FORMS}")
    return Budget(source, metric, match["op"], value, relative, scope, reference, basis)


def parse_budgets(texts: Iterable[str | Budget]) -> tuple[Budget, ...]:
    """Budgets from option values or ini lines; blank lines and '#' comments are skipped."""
    out = []
    for text in texts:
        if isinstance(text, Budget):
            out.append(text)
        elif text.strip() and not text.strip().startswith("#"):
            out.append(parse_budget(text))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class BudgetResult:
    """The verdict of one budget over the run. Values are display strings; `numbers` has them as
    numbers (ms for latency, percent for rates) for the evidence file."""

    budget: str
    passed: bool
    measured: str | None  # "p95 231.4 ms", "5xx 2.50%"; None when it could not be measured
    recorded: str | None  # "p95 180.2 ms", "5xx 0.40%"; None when the capture has no such value
    threshold: str  # "p95 < 200 ms", "p95 < 1.2x recorded = 216.2 ms", "5xx <= recorded+0.5% = 0.90%"
    worst: tuple[tuple[str, str], ...] = ()  # (endpoint, its value), at most three
    reason: str | None = None  # set when the budget could not be measured: it fails for this reason
    requests: int = 0  # requests the budget covered
    endpoints: int = 0  # endpoints it covered
    numbers: tuple[tuple[str, float | None], ...] = ()  # (measured|recorded|limit, value)
    caveats: tuple[str, ...] = ()  # why the figures may not be trusted (with_caveats)
    reference: str = "recorded"  # what `recorded` was measured on: "recorded" (the capture) or "baseline"

    def line(self) -> str:
        """One line: 'PASS p95<200ms: 143.2 ms (recorded 120.9 ms)' or
        'FAIL GET /api/users/*: p99<300ms: 412.0 ms (recorded 220.1 ms); worst: GET /api/users/{id} 412.0 ms'."""
        head = f"{'PASS' if self.passed else 'FAIL'} {self.budget}: "
        if self.reason is not None:
            return head + self.reason
        value = _value_part(self.measured)
        notes = [f"{self.reference} {_value_part(self.recorded)}" if self.recorded else f"no {self.reference} value"]
        if "=" in self.threshold:
            notes.append("limit " + self.threshold.rsplit("=", 1)[1].strip())
        text = f"{head}{value} ({'; '.join(notes)})"
        if not self.passed and self.worst:
            text += "; worst: " + ", ".join(f"{endpoint} {v}" for endpoint, v in self.worst)
        if self.caveats:
            text += "; CAUTION: " + "; ".join(self.caveats)
        return text

    def to_dict(self) -> dict:
        return {"budget": self.budget, "passed": self.passed, "measured": self.measured, "recorded": self.recorded,
                "threshold": self.threshold, "reason": self.reason, "requests": self.requests,
                "endpoints": self.endpoints, "worst": [{"endpoint": e, "value": v} for e, v in self.worst],
                "caveats": list(self.caveats), **{name: value for name, value in self.numbers}}


def _value_part(text: str | None) -> str:
    return "-" if text is None else text.split(" ", 1)[1]


def _latency_text(us: float | None) -> str:
    return "-" if us is None else f"{fmt_ms(us / US_PER_MS)} ms"


def _rate_text(percent: float | None) -> str:
    return "-" if percent is None else f"{percent:.2f}%"


def _hist(stats, budget: Budget):
    """The histogram a latency budget judges: latency from send, or from schedule ('scheduled p99<...')."""
    return stats.response if budget.basis == "scheduled" else stats.latency


def _latency(stats, budget: Budget, recorded: bool = False) -> float | None:
    """The budget's latency metric of these stats, in µs."""
    hist = stats.recorded if recorded else _hist(stats, budget)
    if budget.metric == "mean":
        return hist.mean
    return hist.percentile(budget.quantile)


def _scope(budget: Budget, aggregate):
    """(the Stats the budget measures, [(endpoint, Stats)] it covers)."""
    if budget.scope is None:
        return aggregate.overall, list(aggregate.endpoints.items())
    matched = [(key, stats) for key, stats in aggregate.endpoints.items() if budget.scope.matches(key)]
    return aggregate.union(key for key, _ in matched), matched


def evaluate(budgets: Iterable[Budget | str], aggregate) -> list[BudgetResult]:
    """Each budget's pass/fail over the aggregate, in the order given."""
    return [evaluate_one(b if isinstance(b, Budget) else parse_budget(b), aggregate) for b in budgets]


def evaluate_one(budget: Budget, aggregate) -> BudgetResult:
    stats, candidates = _scope(budget, aggregate)
    common = {"budget": budget.text, "requests": stats.requests, "endpoints": len(candidates)}
    if stats.requests == 0:
        why = ("matched no replayed request" if budget.scope is not None else "no replayed requests")
        if budget.scope is not None and candidates:
            why += f" ({len(candidates)} endpoint(s) matched, none of their requests reached the target)"
        if budget.scope is not None and aggregate.folded:
            why += f"; note: {aggregate.folded} exchanges were folded into (other) past the endpoint cap"
        return BudgetResult(passed=False, measured=None, recorded=None, threshold=_threshold_text(budget, None, None),
                            reason=why, **common)
    if budget.kind == "errors":
        return _evaluate_errors(budget, stats, candidates, common)
    return _evaluate_latency(budget, stats, candidates, common)


def _threshold_text(budget: Budget, recorded: float | None, limit: float | None) -> str:
    m, op = budget.metric, budget.op
    if budget.kind == "errors":
        if not budget.relative:
            return f"{m} {op} {budget.value:g}%"
        delta = f"{budget.value:+g}%" if budget.value else ""
        return f"{m} {op} recorded{delta}" + (f" = {_rate_text(limit)}" if limit is not None else "")
    if not budget.relative:
        return f"{m} {op} {_latency_text(budget.value / 1000)}"
    return f"{m} {op} {budget.value:g}x recorded" + (f" = {_latency_text(limit)}" if limit is not None else "")


def _evaluate_latency(budget: Budget, stats, candidates, common: dict) -> BudgetResult:
    metric = budget.metric
    measured = _latency(stats, budget)
    recorded = _latency(stats, budget, recorded=True) if stats.recorded.total else None
    if measured is None:
        errors = stats.transport_errors
        return BudgetResult(passed=False, measured=None, recorded=_named(metric, _latency_text(recorded)),
                            threshold=_threshold_text(budget, recorded, None), reason=(
                                f"no response latency measured ({stats.requests} requests, {errors} transport "
                                "errors)"), **common)
    if budget.relative:
        if recorded is None:
            return _not_relative(budget, _latency_text(measured), "latency", common)
        limit = budget.value * recorded
    else:
        limit = budget.value / 1000  # ns -> µs
    passed = OPS[budget.op](measured, limit)
    worst = _worst_latency(budget, candidates, limit)
    caveats = _queued_caveat(budget, stats, limit) if passed else ()
    return BudgetResult(passed=passed, measured=_named(metric, _latency_text(measured)), caveats=caveats,
                        recorded=None if recorded is None else _named(metric, _latency_text(recorded)),
                        threshold=_threshold_text(budget, recorded, limit if budget.relative else None),
                        worst=worst, numbers=(("measured_ms", _round(measured / 1000)),
                                              ("recorded_ms", None if recorded is None else _round(recorded / 1000)),
                                              ("limit_ms", _round(limit / 1000))), **common)


def _queued_caveat(budget: Budget, stats, limit_us: float) -> tuple[str, ...]:
    """An absolute budget on the latency from send that passes while the response time from schedule
    breaks it: the target made requests queue (coordinated omission). Said on the budget's line."""
    response = getattr(stats, "response", None)
    if budget.relative or budget.basis != "service" or response is None or not response.total:
        return ()
    scheduled = response.mean if budget.metric == "mean" else response.percentile(budget.quantile)
    if scheduled is None or OPS[budget.op](scheduled, limit_us):
        return ()
    return (f"the response time from schedule breaks it ({budget.metric} {_latency_text(scheduled)}): requests "
            f"queued behind the target (their connection busy, a barrier, a slot) before they were sent; "
            f"'scheduled {budget.metric}{budget.op}...' judges that figure",)


def _not_relative(budget: Budget, measured: str, what: str, common: dict) -> BudgetResult:
    """A relative budget over requests the capture has no recorded `what` for: failed, saying why."""
    return BudgetResult(passed=False, measured=_named(budget.metric, measured), recorded=None,
                        threshold=_threshold_text(budget, None, None), reason=(
                            f"{measured} measured, but the capture has no recorded {what} for these requests "
                            "(requests-only capture?): a relative budget cannot be checked"), **common)


def _worst_latency(budget: Budget, candidates, limit_us: float) -> tuple[tuple[str, str], ...]:
    """Endpoints contributing most: requests on the wrong side of the limit (for mean: time beyond it),
    then their own value of the metric. Relative budgets: _worst_ratio."""
    if budget.relative:
        return _worst_ratio(budget, candidates)
    upper = budget.op in ("<", "<=")  # the budget caps the value: high values are the bad ones
    ranked = []
    for key, stats in candidates:
        value = _latency(stats, budget)
        if value is None:
            continue
        if budget.metric == "mean":
            excess = (value - limit_us) if upper else (limit_us - value)
            contribution = max(0.0, excess) * _hist(stats, budget).total
        else:
            contribution = _hist(stats, budget).count_beyond(limit_us, above=upper)
        ranked.append((contribution, value if upper else -value, key, value, stats))
    ranked = _contributors(ranked)
    return tuple((key, _latency_text(value)) for _, _, key, value, _ in ranked[:WORST])


def _worst_ratio(budget: Budget, candidates) -> tuple[tuple[str, str], ...]:
    """The endpoints whose own ratio (replayed / recorded value of the metric) breaks the factor,
    the worst ratio first: an endpoint as slow in the capture as in the replay is no offender."""
    upper = budget.op in ("<", "<=")
    offenders = []
    for key, stats in candidates:
        value = _latency(stats, budget)
        recorded = _latency(stats, budget, recorded=True) if stats.recorded.total else None
        if value is None or not recorded:
            continue
        ratio = value / recorded
        if not OPS[budget.op](ratio, budget.value):
            offenders.append((-ratio if upper else ratio, key, value, ratio))
    offenders.sort()
    return tuple((key, f"{_latency_text(value)} ({ratio:.2f}x)") for _, key, value, ratio in offenders[:WORST])


def _evaluate_errors(budget: Budget, stats, candidates, common: dict) -> BudgetResult:
    metric = budget.metric
    measured = stats.rate(metric)
    recorded = stats.rate(metric, recorded=True)
    if budget.relative:
        if recorded is None:
            return _not_relative(budget, _rate_text(measured), "responses", common)
        limit = recorded + budget.value
    else:
        limit = budget.value
    passed = OPS[budget.op](measured, limit)
    upper = budget.op in ("<", "<=")
    ranked = []
    for key, s in candidates:
        if not s.requests:
            continue
        count = s.count(metric)
        rate = s.rate(metric)
        ranked.append(((count if upper else s.requests - count), rate if upper else -rate, key, count, s.requests,
                       rate))
    ranked = _contributors(ranked)
    worst = tuple((key, f"{_rate_text(rate)} ({count} of {n})") for _, _, key, count, n, rate in ranked[:WORST])
    return BudgetResult(passed=passed, measured=_named(metric, _rate_text(measured)),
                        recorded=None if recorded is None else _named(metric, _rate_text(recorded)),
                        threshold=_threshold_text(budget, recorded, limit if budget.relative else None),
                        worst=worst, numbers=(("measured_pct", _round(measured)),
                                              ("recorded_pct", None if recorded is None else _round(recorded)),
                                              ("limit_pct", _round(limit))), **common)


def _contributors(ranked: list[tuple]) -> list[tuple]:
    """Rank (contribution, value, key, ...) rows: the endpoints contributing to a violation first; if
    any contributes, only those (an endpoint that does nothing wrong is not 'worst')."""
    ranked.sort(key=lambda r: (-r[0], -r[1], r[2]))
    contributing = [r for r in ranked if r[0] > 0]
    return contributing or ranked


def _named(metric: str, text: str) -> str:
    return f"{metric} {text}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# -- cautions ---------------------------------------------------------------------------------------------
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def shares_cores(url: str | None, in_process: bool) -> str | None:
    """Why the target shares this machine's cores with the replay (None: it need not): an in-process
    app, or a URL on a loopback address. Names other than localhost are not resolved."""
    if in_process:
        return "in-process"
    host = (urlsplit(str(url)).hostname or "") if url else ""
    if host.lower() in LOCAL_NAMES:
        return host
    try:
        return host if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def caveat_texts(caveats: dict | None) -> tuple[str, ...]:
    """The sentences of the cautions in `caveats` ({shared_cores, closed_loop}), as budget lines show them."""
    caveats = caveats or {}
    out = []
    burst = caveats.get("closed_loop")
    if burst:
        out.append(f"the capture is closed-loop ({burst['requests']} of {burst['of']} requests sent back-to-back "
                   "on their connection, as a benchmark tool sends them): its recorded latencies were measured "
                   "under that tool's load, not comparable with an open-loop replay")
    where = caveats.get("shared_cores")
    if where:
        out.append(f"the target ({where}) shares this machine's cores with the replay: replayed latencies "
                   "include that contention, the recorded ones did not")
    return tuple(out)


def with_caveats(results: Iterable[BudgetResult], caveats: dict | None) -> list[BudgetResult]:
    """`results`, the relative latency budgets among them carrying the cautions of `caveats`."""
    texts = caveat_texts(caveats)
    results = list(results)
    if not texts:
        return results
    out = []
    for result in results:
        budget = parse_budget(result.budget)
        if budget.relative and budget.kind == "latency":
            result = dataclasses.replace(result, caveats=texts)
        out.append(result)
    return out


def render_results(results: Iterable[BudgetResult]) -> list[str]:
    """Terminal lines: a heading, then one line per budget."""
    results = list(results)
    if not results:
        return []
    failed = sum(not r.passed for r in results)
    head = f"budgets: {len(results) - failed} passed, {failed} failed"
    return [head] + [f"  {r.line()}" for r in results]


__all__ = ["ACCEPTED_FORMS", "Budget", "BudgetResult", "Scope", "caveat_texts", "evaluate", "evaluate_one",
           "parse_budget", "parse_budgets", "render_results", "shares_cores", "with_caveats"]


# -- stop conditions (--replay-abort-on): the budget grammar, inverted --------------------------
STOP_FORMS = ("accepted forms: '[service ]METRIC OP VALUE' as in budgets, tripping when it holds: latency p50|p90|"
              "p95|p99|pN|max|mean (200ms, 1.5s) -- the response time from schedule (queueing behind the target "
              "included), or the service latency from send with 'service' before it --, 5xx|4xx|errors (a "
              "percent), or lateness (the replayer's own p99 lateness: it cannot keep up), e.g. 'p99>2s', "
              "'service p99>2s', '5xx>5%', 'errors>1%', 'lateness>50ms'")
SCHEDULED, SERVICE = "scheduled", "service"  # what a latency stop condition measures from (StopCondition.basis)


@dataclass(frozen=True, slots=True)
class StopCondition:
    """A condition that stops a replay when it holds over the sliding window (k6's abortOnFail,
    written as the failure: 'p99>2s' stops when p99 exceeds 2 s). `value`: ns or percent. A latency
    condition judges the response time from schedule (basis "scheduled": from the instant the request
    would have been sent had the replayer been on time, so time queued behind a busy target counts),
    or the service latency from send ("service", written 'service p99>2s'); see schedule/monitor.py."""

    text: str
    metric: str  # "p99", "max", "mean", "5xx", "4xx", "errors", "lateness" (p99 lateness)
    op: str
    value: float
    basis: str = SCHEDULED

    @property
    def kind(self) -> str:
        return "errors" if self.metric in ERROR_METRICS else "latency"

    @property
    def quantile(self) -> float | None:
        if self.metric == "lateness":
            return 99.0
        return Budget(self.text, self.metric, self.op, self.value).quantile

    @property
    def measures(self) -> str:
        """What it judges, in words (for the summary)."""
        if self.kind == "errors":
            return "error rate"
        if self.metric == "lateness":
            return "the replayer's own p99 lateness"
        return "service latency (from send)" if self.basis == SERVICE else "response time from schedule"

    def holds(self, measured: float | None) -> bool:
        return measured is not None and OPS[self.op](measured, self.value)

    def measured_text(self, measured: float | None) -> str:
        if measured is None:
            return "-"
        if self.kind == "errors":
            return _rate_text(measured)
        return f"{measured / 1e9:.2f} s" if measured >= 1e9 else f"{fmt_ms(measured / 1e6)} ms"

    def __str__(self) -> str:
        return self.text


def parse_stop_condition(text: str) -> StopCondition:
    """'p99>2s', 'service p99>2s', '5xx>5%', 'lateness>50ms' -> StopCondition. ValueError names the
    accepted forms."""
    source = " ".join(str(text).split())
    basis = re.match(r"^(scheduled|service)\s+(?=\S)", source, re.IGNORECASE)
    rest = source[basis.end():] if basis else source
    lateness = re.match(r"^lateness\s*(?=[<>])", rest, re.IGNORECASE)
    try:
        budget = parse_budget("p99" + rest[lateness.end():] if lateness else rest)
    except ValueError as exc:
        raise ValueError(f"invalid stop condition {text!r}; {STOP_FORMS}") from exc
    if budget.scope is not None or budget.relative:
        raise ValueError(f"invalid stop condition {text!r}: scopes and relative values are not judged during the "
                         f"replay; {STOP_FORMS}")
    if basis and (lateness or budget.kind == "errors"):
        raise ValueError(f"invalid stop condition {text!r}: '{basis[1]}' goes with a latency metric (p99, mean, "
                         f"max); {STOP_FORMS}")
    return StopCondition(source, "lateness" if lateness else budget.metric, budget.op, budget.value,
                         basis[1].lower() if basis else SCHEDULED)
