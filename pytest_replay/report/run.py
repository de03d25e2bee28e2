"""The run's report as data (built once at the end, from the aggregate), and its terminal rendering.

The same object feeds the evidence package; under pytest-xdist the controller builds it from the
workers' merged aggregates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .aggregate import ALL, render_table


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
    writes: list = field(default_factory=list)  # (endpoint, mocked, passed, skipped, flagged, reasons)
    unused_allow: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @classmethod
    def build(cls, session) -> RunReport:
        report = cls(captures=session.capture_summary())
        s = session.settings
        report.target = getattr(session.target, "name", None) or str(s.target or "(replay_target fixture)")
        report.pace = (f"rate {s.rate:g}/s" if s.rate else "speed 0 (no waiting)" if s.speed == 0
                       else f"speed {s.speed:g}x")
        engine, remote = session.engine, session.remote
        if engine is not None:
            report.planned = len(engine.plan)
            report.sent = len(engine.observations())
            report.failure = str(engine.failure) if engine.failure is not None else ""
        else:
            report.planned, report.sent = remote["planned"], remote["sent"]
            report.failure = "; ".join(remote["failures"])
        report.interrupted = report.sent < report.planned
        aggregate = session.aggregate
        overall = aggregate.overall
        report.judged = overall.judged
        report.passed = overall.judged - overall.failed
        report.failed_by = Counter(overall.failures)
        report.errors = Counter({k: v for k, v in overall.errors.items() if v})
        for name, metric in (("lateness", "lateness"), ("latency", "latency"), ("recorded_latency", "recorded")):
            setattr(report, name, {q: aggregate.percentile(None, metric, q) for q in (50, 95, 99, 100)})
        report.table = aggregate.table()
        report.budgets = list(session.budget_results)
        report.noise = session._noise_lines() or list(remote["noise"])
        policy = session.write_policy
        report.write_mode = policy.mode if policy is not None else remote["write_mode"]
        rows = [_write_row(row) for row in report.table if row["writes"] and row["endpoint"] != ALL]
        report.writes = sorted(rows, key=lambda row: -sum(row[1:5]))  # most writes first (stable)
        report.unused_allow = list(session.unused_allow) or list(remote["unused_allow"])
        report.notes = list(session.notes)
        return report


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
        mocked = sum(row[1] for row in report.writes)
        among = f"; {mocked} of them writes answered from the recording, not sent" if mocked else ""
        lines.append(f"replayed: {report.sent} of {report.planned} requests to {report.target}, {report.pace}{state}"
                     + among)
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
        lines.append("noise (differs between recorded responses of identical requests; ignored in diffs, "
                     "override with --replay-ignore keep:RULE or --replay-noise off):")
        shown = report.noise[: (200 if verbose else 8)]
        lines.extend(f"  {entry}" for entry in shown)
        if len(report.noise) > len(shown):
            lines.append(f"  ... {len(report.noise) - len(shown)} more lines (-v shows them)")
    lines.extend(f"note: {note}" for note in report.notes)
    return lines
