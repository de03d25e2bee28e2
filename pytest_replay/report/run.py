"""The run's report as data (built once at the end, from the aggregate), and its terminal rendering.

The same object feeds the evidence package; under pytest-xdist the controller builds it from the
workers' merged aggregates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

from .aggregate import ALL, Aggregate, render_table


@dataclass
class RunResults:
    """What a replay process did. An xdist worker ships its own to the controller (to_dict /
    from_dict), which merges them; the report and the evidence are built from the merged one."""

    aggregate: Aggregate = field(default_factory=Aggregate)
    planned: int = 0
    sent: int = 0
    failures: list[str] = field(default_factory=list)  # why the replay stopped, if it did
    noise: list[str] = field(default_factory=list)  # noise rules learned (the same in every worker)
    unused_allow: list[str] = field(default_factory=list)  # --replay-allow-write patterns matching nothing
    write_mode: str = ""
    notes: list[str] = field(default_factory=list)
    empty_shard: bool = False  # the shard held none of the capture's connections
    escaped: list[str] = field(default_factory=list)  # an in-process app's blocked calls tied to no exchange
    workers: list[dict] = field(default_factory=list)  # xdist workers on other machines: host, clock offset

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
        self.noise = self.noise or list(other.noise)
        self.unused_allow = self.unused_allow or list(other.unused_allow)
        self.write_mode = self.write_mode or other.write_mode
        self.notes += [n for n in other.notes if n not in self.notes]
        self.empty_shard = self.empty_shard or other.empty_shard  # workers all collect alike
        self.escaped += other.escaped
        self.workers += other.workers
        return self


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.2f} ms" if ns < 1e7 else f"{ns / 1e6:.1f} ms"


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
    table: list = field(default_factory=list)
    budgets: list = field(default_factory=list)  # BudgetResult
    noise: list[str] = field(default_factory=list)
    interrupted: bool = False
    failure: str = ""
    write_mode: str = ""
    writes: list = field(default_factory=list)  # (endpoint, mocked, passed, skipped)
    unused_allow: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    workers: list = field(default_factory=list)  # {"worker", "host", "offset_ms", "uncertainty_ms", ...}

    @classmethod
    def build(cls, results: RunResults, *, captures: dict, target: str, pace: str, budgets: list) -> RunReport:
        report = cls(captures=captures, target=target, pace=pace, budgets=list(budgets))
        report.planned, report.sent = results.planned, results.sent
        report.failure = "; ".join(results.failures)
        report.interrupted = report.sent < report.planned
        aggregate = results.aggregate
        overall = aggregate.overall
        report.judged = overall.judged
        report.passed = overall.judged - overall.failed
        report.failed_by = Counter(overall.failures)
        report.errors = Counter({k: v for k, v in overall.errors.items() if v})
        for name, metric in (("lateness", "lateness"), ("latency", "latency"), ("recorded_latency", "recorded")):
            setattr(report, name, {q: aggregate.percentile(None, metric, q) for q in (50, 95, 99, 100)})
        report.table = aggregate.table()
        report.noise = list(results.noise)
        report.write_mode = results.write_mode
        report.writes = [(row["endpoint"], row["writes"].get("mocked", 0), row["writes"].get("passed", 0),
                          row["writes"].get("skipped", 0)) for row in report.table
                         if row["writes"] and row["endpoint"] != ALL]
        report.unused_allow = list(results.unused_allow)
        report.notes = list(results.notes)
        report.workers = list(results.workers)
        return report


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
        state = " (INTERRUPTED)" if report.interrupted else ""
        lines.append(f"replayed: {report.sent} of {report.planned} requests to {report.target}, {report.pace}{state}")
        if report.failure:
            lines.append(f"replay stopped: {report.failure}")
        failed = sum(report.failed_by.values())
        causes = ", ".join(f"{part}: {n}" for part, n in report.failed_by.most_common())
        lines.append(f"verdicts: {report.passed} passed, {report.judged - report.passed} failed"
                     + (f" (differences in {causes})" if causes and failed else ""))
        if report.errors:
            lines.append("transport errors: " + ", ".join(f"{k}: {v}" for k, v in report.errors.most_common()))
        lat = report.lateness
        lines.append(f"lateness (send time - deadline): p50 {_ms(lat.get(50))}, p99 {_ms(lat.get(99))}, "
                     f"max {_ms(lat.get(100))}")
        rep, rec = report.latency, report.recorded_latency
        lines.append("latency (to first byte), replayed vs recorded: "
                     + ", ".join(f"p{q} {_ms(rep.get(q))} vs {_ms(rec.get(q))}" for q in (50, 95, 99)))
        if report.table:
            lines.extend(render_table(report.table, limit=100 if verbose else 15))
    if report.budgets:
        lines.append("budgets:")
        lines.extend(f"  {result.line()}" for result in report.budgets)
    if report.writes or report.write_mode:
        totals = [sum(row[i] for row in report.writes) for i in (1, 2, 3)]
        lines.append(f"writes ({report.write_mode}): {totals[0]} mocked (answered from the recording), "
                     f"{totals[1]} sent, {totals[2]} skipped")
        for endpoint, mocked, passed, skipped in report.writes[: (200 if verbose else 10)]:
            lines.append(f"  {endpoint}: {mocked} mocked, {passed} sent, {skipped} skipped")
    for pattern in report.unused_allow:
        lines.append(f"warning: --replay-allow-write {pattern!r} matches no write in the capture")
    if report.noise:
        lines.append("noise (differs between recorded responses of identical requests; ignored in diffs, "
                     "override with --replay-ignore keep:RULE or --replay-noise off):")
        shown = report.noise[: (200 if verbose else 8)]
        lines.extend(f"  {entry}" for entry in shown)
        if len(report.noise) > len(shown):
            lines.append(f"  ... {len(report.noise) - len(shown)} more lines (-v shows them)")
    if report.workers:
        lines.append("worker clocks (offset from the controller's, +/- uncertainty): " + "; ".join(
            f"{w['worker']} {w['host']} {w['offset_ms']:+.3f} ms +/-{w['uncertainty_ms']:.3f} ms"
            for w in report.workers))
    lines.extend(f"note: {note}" for note in report.notes)
    return lines
