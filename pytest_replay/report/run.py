"""The run's report as data (built once at the end, from the aggregate), and its terminal rendering.

The same object feeds the evidence package; under pytest-xdist the controller builds it from the
workers' merged aggregates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

from ..http.sensitive import url_without_password
from ..http.units import fmt_ms, ms
from .aggregate import ALL, LATENESS_CAUSES, Aggregate, render_table


@dataclass
class RunResults:
    """What a replay process did. An xdist worker ships its own to the controller (to_dict /
    from_dict), which merges them; the report and the evidence are built from the merged one."""

    aggregate: Aggregate = field(default_factory=Aggregate)
    planned: int = 0
    sent: int = 0
    failures: list[str] = field(default_factory=list)  # why the replay stopped, if it did
    noise: dict = field(default_factory=dict)  # NoiseModel.summary(): learned from the whole capture
    unused_allow: list[str] = field(default_factory=list)  # --replay-allow-write patterns matching nothing
    write_mode: str = ""
    notes: list[str] = field(default_factory=list)
    empty_shard: bool = False  # the shard held none of the capture's connections
    escaped: list[str] = field(default_factory=list)  # an in-process app's blocked calls tied to no exchange
    origins: dict[str, int] = field(default_factory=dict)  # "origin A treated as B" -> responses
    wall_s: float | None = None  # the replay's start to its last response (workers start at one instant)
    locality: str = ""  # why the target shares this machine's cores ("in-process", "127.0.0.1"), if it does
    baseline: dict = field(default_factory=dict)  # verdicts.baseline.DiffCounts data, with --replay-baseline
    baseline_aggregate: dict = field(default_factory=dict)  # Aggregate.to_dict() of the baseline's side
    workers: list[dict] = field(default_factory=list)  # xdist workers on other machines: host, clock offset
    # --replay-update: a worker's replayed responses (session.update.Replayed.to_dict, bounded by
    # session.update.MAX_SHIPPED_BYTES) and whether some were left out
    updates: list[dict] = field(default_factory=list)
    updates_truncated: bool = False
    capacity: dict = field(default_factory=dict)  # capacity runs: per stage planned/sent, the stop (session.run)
    # a replay without stages that a stop condition (--replay-abort-on) ended: {condition, measured, measures,
    # at_s, window_s, requests, in_flight, worker, relayed} (capacity runs say it in `capacity`)
    stopped: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["aggregate"] = self.aggregate.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RunResults:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["aggregate"] = Aggregate.from_dict(data["aggregate"])
        return cls(**values)

    def merge(self, other: RunResults) -> RunResults:
        self.aggregate.merge(other.aggregate)
        self.planned += other.planned
        self.sent += other.sent
        self.failures += other.failures
        # learned from the whole capture, so every process learns the same: the first non-empty wins
        self.noise = self.noise or dict(other.noise)
        self.unused_allow = self.unused_allow or list(other.unused_allow)
        self.write_mode = self.write_mode or other.write_mode
        self.notes += [n for n in other.notes if n not in self.notes]
        self.empty_shard = self.empty_shard or other.empty_shard  # workers all collect alike
        self.escaped += other.escaped
        self.origins = dict(Counter(self.origins) + Counter(other.origins))
        walls = [w for w in (self.wall_s, other.wall_s) if w is not None]
        self.wall_s = max(walls) if walls else None
        self.locality = self.locality or other.locality
        if other.baseline:
            from ..verdicts.baseline import DiffCounts
            self.baseline = DiffCounts(self.baseline).merge(other.baseline).to_dict()
        if other.baseline_aggregate:
            mine = Aggregate.from_dict(self.baseline_aggregate) if self.baseline_aggregate else Aggregate()
            self.baseline_aggregate = mine.merge(Aggregate.from_dict(other.baseline_aggregate)).to_dict()
        self.workers += other.workers
        self.updates += other.updates
        self.updates_truncated = self.updates_truncated or other.updates_truncated
        self.capacity = merge_capacity(self.capacity, other.capacity)
        if other.stopped and (not self.stopped or self.stopped.get("relayed") and not other.stopped.get("relayed")):
            self.stopped = dict(other.stopped)  # the process whose window tripped, before those it stopped
        return self


@dataclass
class RunReport:
    captures: dict = field(default_factory=dict)
    target: str = ""
    pace: str = ""
    planned: int = 0
    sent: int = 0
    judged: int = 0
    passed: int = 0
    failed_by: Counter = field(default_factory=Counter)  # differing part -> failed exchanges
    errors: Counter = field(default_factory=Counter)  # transport error kinds
    lateness: dict = field(default_factory=dict)  # q -> ns
    latency: dict = field(default_factory=dict)
    recorded_latency: dict = field(default_factory=dict)
    scheduled_latency: dict = field(default_factory=dict)  # response time from schedule (aggregate "response")
    table: list = field(default_factory=list)
    budgets: list = field(default_factory=list)  # BudgetResult
    noise: dict = field(default_factory=dict)  # NoiseModel.summary()
    hidden: dict = field(default_factory=dict)  # learned rule -> differences it hid in this run
    clock: dict = field(default_factory=dict)  # clock / id noise reason -> differences it accounted for
    causes: list = field(default_factory=list)  # (diff signature, failed exchanges), most first
    interrupted: bool = False
    stopped: bool = False  # a stop condition (--replay-abort-on) ended the replay
    failure: str = ""
    write_mode: str = ""
    writes: list = field(default_factory=list)  # (endpoint, mocked, passed, skipped, flagged, reasons)
    unused_allow: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    origins: dict = field(default_factory=dict)  # "origin A treated as B" -> responses
    workers: list = field(default_factory=list)  # {"worker", "host", "offset_ms", "uncertainty_ms", ...}
    wall_s: float | None = None  # the replay's wall time
    requests: int = 0  # requests that reached the target
    unscheduled: bool = False  # --speed 0: no schedule, so throughput is shown instead of lateness

    @property
    def throughput(self) -> float | None:
        return self.requests / self.wall_s if self.wall_s else None

    @classmethod
    def build(cls, results: RunResults, *, captures: dict, target: str, pace: str, budgets: list,
              unscheduled: bool = False) -> RunReport:
        report = cls(captures=captures, target=url_without_password(target),  # http://user:REDACTED@host
                     pace=pace, budgets=list(budgets), unscheduled=unscheduled)
        report.wall_s = None if results.wall_s is None else round(results.wall_s, 3)
        report.planned, report.sent = results.planned, results.sent
        report.failure = "; ".join(results.failures)
        report.stopped = bool((results.capacity or {}).get("stopped") or results.stopped)
        report.interrupted = report.sent < report.planned and not report.stopped
        aggregate = results.aggregate
        overall = aggregate.overall
        report.requests = overall.requests
        report.judged = overall.judged
        report.passed = overall.judged - overall.failed
        report.failed_by = Counter(overall.failures)
        report.errors = Counter({k: v for k, v in overall.errors.items() if v})
        for name, metric in (("lateness", "lateness"), ("latency", "latency"), ("recorded_latency", "recorded"),
                             ("scheduled_latency", "response")):
            setattr(report, name, {q: aggregate.percentile(None, metric, q) for q in (50, 95, 99, 100)})
        report.table = aggregate.table()
        report.noise = dict(results.noise)
        report.hidden = hidden_by_noise(aggregate)
        report.clock = clock_noise(aggregate)
        report.causes = aggregate.failure_groups.most_common()
        report.write_mode = results.write_mode
        rows = [_write_row(row) for row in report.table if row["writes"] and row["endpoint"] != ALL]
        report.writes = sorted(rows, key=lambda row: -sum(row[1:5]))  # most writes first (stable)
        report.unused_allow = list(results.unused_allow)
        report.notes = list(results.notes)
        report.origins = dict(results.origins)
        report.workers = list(results.workers)
        return report


def clock_noise(aggregate: Aggregate) -> dict[str, int]:
    """Differences the values themselves explained (verdicts/clock.py: times, generated UUIDs)."""
    from ..verdicts.clock import CLOCK_REASON, ID_REASON

    return {why: n for why, n in aggregate.overall.ignored.items() if why in (CLOCK_REASON, ID_REASON)}


def hidden_by_noise(aggregate: Aggregate) -> dict[str, int]:
    """Learned noise rule -> differences it accounted for in the run (from Verdict.ignored)."""
    from ..verdicts.learning import NOISE_REASON

    return {why[len(NOISE_REASON):]: n for why, n in aggregate.overall.ignored.items() if why.startswith(NOISE_REASON)}


def render_causes(causes: list, verbose: int = 0) -> list[str]:
    """Failures grouped by diff signature: one line per cause, most exchanges first."""
    if not causes:
        return []
    shown = causes[: (200 if verbose else 10)]
    lines = ["failures by cause (endpoint and what changed; an exchange counts under each of its causes):"]
    lines += [f"  {count:,} exchange{'s' * (count != 1)}: {signature}" for signature, count in shown]
    if len(causes) > len(shown):
        rest = causes[len(shown):]
        lines.append(f"  ... {len(rest)} more causes, {sum(n for _, n in rest):,} exchanges (-v shows them)")
    return lines


WRITE_COLUMNS = ("mocked", "passed", "skipped", "flagged")  # policy.writes.COLUMNS
MAX_WHY = 4  # reasons shown per endpoint in the write summary


def _write_row(row: dict) -> tuple:
    """(endpoint, mocked, passed, skipped, flagged, reasons most frequent first) of a table row."""
    reasons = sorted(row.get("write_reasons", {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return (row["endpoint"], *(row["writes"].get(c, 0) for c in WRITE_COLUMNS), [why for why, _ in reasons])


def _why(reasons: list[str]) -> str:
    if not reasons:
        return ""
    more = f", +{len(reasons) - MAX_WHY} more" if len(reasons) > MAX_WHY else ""
    return f" ({', '.join(reasons[:MAX_WHY])}{more})"


def scheduled_line(report: RunReport) -> str:
    """The response time from schedule beside the latency from send, when queueing behind the target
    made them differ (on a schedule: at --speed 0 everything is due at once)."""
    rep, sched = report.latency, report.scheduled_latency
    if report.unscheduled or sched.get(99) is None or rep.get(99) is None or sched.get(99) <= rep.get(99) * 1.01:
        return ""
    return ("response time from schedule (latency plus queueing behind the target: its connection busy, a barrier, "
            "a slot): " + ", ".join(f"p{q} {ms(sched.get(q), None, missing='-')}" for q in (50, 95, 99))
            + " (the latency from send above leaves that queueing out)")


def _pace_line(report: RunReport) -> str:
    """How the replay kept its pace: lateness on a schedule; at --speed 0 (everything due at once,
    every request 'late' by design) the throughput it reached instead."""
    if report.unscheduled:
        rate = report.throughput
        return (f"throughput: {report.requests} requests in {report.wall_s or 0:.2f} s = "
                + ("-" if rate is None else f"{rate:.1f}") + " requests/s (--speed 0: no schedule to be late for)")
    lat = report.lateness
    shown = (f"{name} {ms(lat.get(q), None, missing='-')}" for name, q in (("p50", 50), ("p99", 99), ("max", 100)))
    return "lateness (send time - deadline): " + ", ".join(shown)


MAX_LATE_ENDPOINTS = 5  # endpoints shown with their lateness causes (-v: all of them)


def _causes_text(causes: dict) -> str:
    """'connection 12 requests, p99 124.9 ms, 97% of it; engine ...' (largest share first)."""
    ordered = sorted(causes.items(), key=lambda kv: -(kv[1]["share_pct"] or 0))
    return "; ".join(f"{cause} ({LATENESS_CAUSES.get(cause, cause)}): {c['requests']} requests, p99 "
                     f"{fmt_ms(c['p99_ms'])} ms, {c['share_pct']:g}% of the lateness" for cause, c in ordered)


def render_lateness_causes(report: RunReport, verbose: int = 0) -> list[str]:
    """Why requests were late, overall and for the endpoints latest at p99 (a scheduled run only)."""
    if report.unscheduled or not report.table:
        return []
    rows = {row["endpoint"]: row for row in report.table}
    overall = rows.get(ALL, {})
    lines = []
    if overall.get("lateness_causes"):
        lines.append("lateness by cause: " + _causes_text(overall["lateness_causes"]))
        late = [row for row in report.table if row["endpoint"] != ALL and row.get("lateness_causes")
                and (row["lateness_ms"].get("p99") or 0) >= 1]
        late.sort(key=lambda row: -(row["lateness_ms"]["p99"] or 0))
        for row in late[: None if verbose else MAX_LATE_ENDPOINTS]:
            lines.append(f"  {row['endpoint']} (late p99 {fmt_ms(row['lateness_ms']['p99'])} ms): "
                         + _causes_text(row["lateness_causes"]))
    if overall.get("spilled"):
        lines.append(f"--replay-connections spill: {overall['spilled']} requests were sent on an extra connection "
                     "because their captured connection was still busy")
    return lines


def render_terminal(report: RunReport, verbose: int = 0) -> list[str]:
    lines = ["", "=" * 28 + " traffic replay " + "=" * 28]
    c = report.captures
    if c:
        skipped = sum(c.get("skipped_streams", {}).values())
        orphans = sum(c.get("responses_without_request", {}).values())
        lines.append(f"captures: {len(c['files'])} file(s), {c['exchanges']} exchanges ({c['complete']} complete, "
                     f"{c['incomplete']} incomplete), {c['requests_without_response']} without response, "
                     f"{orphans} responses without request, {skipped} streams skipped, {c['gaps']} gaps "
                     f"({c['gap_bytes']} bytes)")
        warnings = c.get("warnings", [])
        for warning in warnings[: (20 if verbose else 3)]:
            lines.append(f"  warning: {warning}")
        if len(warnings) > 3 and not verbose:
            lines.append(f"  ... {sum(c['warning_counts'].values()) - 3} more warnings (-v shows them)")
    if report.planned:
        state = " (INTERRUPTED)" if report.interrupted else " (STOPPED by --replay-abort-on)" if report.stopped else ""
        mocked = sum(row[1] for row in report.writes)
        among = f"; {mocked} of them writes answered from the recording, not sent" if mocked else ""
        wall = f"; replay wall time {report.wall_s:.1f} s" if report.wall_s is not None else ""
        lines.append(f"replayed: {report.sent} of {report.planned} requests to {report.target}, {report.pace}{wall}"
                     f"{state}{among}")
        if report.failure:
            lines.append(f"replay stopped: {report.failure}")
        failed = sum(report.failed_by.values())
        causes = ", ".join(f"{part}: {n}" for part, n in report.failed_by.most_common())
        lines.append(f"verdicts: {report.passed} passed, {report.judged - report.passed} failed"
                     + (f" (differences in {causes})" if causes and failed else ""))
        lines.extend(render_causes(report.causes, verbose))
        if report.errors:
            lines.append("transport errors: " + ", ".join(f"{k}: {v}" for k, v in report.errors.most_common()))
        lines.append(_pace_line(report))
        lines.extend(render_lateness_causes(report, verbose))
        rep, rec = report.latency, report.recorded_latency
        lines.append("latency (to first byte), replayed vs recorded: "
                     + ", ".join(f"p{q} {ms(rep.get(q), None, missing='-')} vs {ms(rec.get(q), None, missing='-')}"
                                 for q in (50, 95, 99)))
        line = scheduled_line(report)
        if line:
            lines.append(line)
        if report.table:
            lines.extend(render_table(report.table, limit=100 if verbose else 15, lateness=not report.unscheduled))
    if report.budgets:
        lines.append("budgets:")
        lines.extend(f"  {result.line()}" for result in report.budgets)
    if report.writes or report.write_mode:
        totals = [sum(row[i] for row in report.writes) for i in (1, 2, 3, 4)]
        lines.append(f"writes ({report.write_mode}): {totals[0]} mocked (answered from the recording), "
                     f"{totals[1]} sent, {totals[2]} skipped, {totals[3]} flagged (reads with a body, sent)")
        shown = report.writes[: (200 if verbose else 10)]
        for endpoint, mocked, passed, skipped, flagged, reasons in shown:
            flag = f", {flagged} flagged" if flagged else ""
            lines.append(f"  {endpoint}: {mocked} mocked, {passed} sent, {skipped} skipped{flag}{_why(reasons)}")
        if len(report.writes) > len(shown):
            lines.append(f"  ... {len(report.writes) - len(shown)} more endpoints (-v shows them)")
    for pattern in report.unused_allow:
        lines.append(f"warning: --replay-allow-write {pattern!r} matches no write in the capture")
    if report.noise:
        from ..verdicts.learning import describe_noise

        lines.append("noise (differs between recorded responses of identical requests with no related write "
                     "between them; ignored in diffs, override with --replay-ignore keep:RULE or --replay-noise off):")
        noise = describe_noise(report.noise, report.hidden)
        shown = noise[: (200 if verbose else 8)]
        lines.extend(f"  {entry}" for entry in shown)
        if len(noise) > len(shown):
            lines.append(f"  ... {len(noise) - len(shown)} more lines (-v shows them)")
    for why, n in sorted(report.clock.items()):
        lines.append(f"{why}: {n:,} difference{'s' * (n != 1)} ignored (--replay-noise off compares them)")
    if report.origins:
        lines.append("origins (--replay-origins same; strict compares them as captured):")
        lines.extend(f"  {why} in {n} response{'s' * (n != 1)}" for why, n in sorted(report.origins.items()))
        if len(report.noise) > len(shown):
            lines.append(f"  ... {len(report.noise) - len(shown)} more lines (-v shows them)")
    if report.workers:
        lines.append("worker clocks (offset from the controller's, +/- uncertainty): " + "; ".join(
            f"{w['worker']} {w['host']} {w['offset_ms']:+.3f} ms +/-{w['uncertainty_ms']:.3f} ms"
            for w in report.workers))
    lines.extend(f"note: {note}" for note in report.notes)
    return lines


def merge_capacity(mine: dict, other: dict) -> dict:
    """Workers' stage rows summed (each worker sends its own connections on the same schedule); the
    first stop kept, the others listed."""
    if not other:
        return mine
    if not mine:
        return {**other, "stages": [dict(row) for row in other["stages"]]}
    mine.setdefault("saturation", other.get("saturation"))  # the first worker's samples (each samples alike)
    for row, theirs in zip(mine["stages"], other["stages"]):
        for key in ("planned", "sent", "sent_in_stage", "errors", "not_sent"):
            row[key] += theirs[key]
        for key in ("lateness_p99_ms", "service_p99_ms", "scheduled_p99_ms"):  # the worst worker's
            late = [v for v in (row.get(key), theirs.get(key)) if v is not None]
            row[key] = max(late) if late else None
    mine["sent_after_the_end"] = mine.get("sent_after_the_end", 0) + other.get("sent_after_the_end", 0)
    theirs = other.get("reached")
    if theirs and (not mine.get("reached") or theirs["at_s"] > mine["reached"]["at_s"]):
        mine["reached"] = theirs
    if other.get("stopped"):
        stop, theirs = mine.get("stopped"), other["stopped"]
        if stop and stop.get("relayed") and not theirs.get("relayed"):  # the worker that tripped comes first
            stop, theirs = theirs, stop
        mine["stopped"] = stop or theirs
        if stop:
            mine.setdefault("other_stops", []).append(theirs)
    return mine
