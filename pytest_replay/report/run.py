"""The run's report as data (built once at the end), and its terminal rendering."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


def percentile(sorted_values: list[int], q: float) -> int | None:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.1f} ms"


@dataclass
class RunReport:
    captures: dict = field(default_factory=dict)
    target: str = ""
    pace: str = ""
    planned: int = 0
    sent: int = 0
    judged: int = 0
    passed: int = 0
    failed_by: Counter = field(default_factory=Counter)  # first failing part of each failed exchange
    errors: Counter = field(default_factory=Counter)  # transport error kinds
    lateness: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)
    recorded_latency: dict = field(default_factory=dict)
    noise: list[str] = field(default_factory=list)
    interrupted: bool = False
    failure: str = ""
    write_mode: str = ""
    writes: list = field(default_factory=list)  # (endpoint, mocked, passed, skipped)
    unused_allow: list = field(default_factory=list)

    @classmethod
    def build(cls, session) -> RunReport:
        report = cls(captures=session.capture_summary())
        s = session.settings
        report.target = getattr(session.target, "name", None) or str(s.target or "")
        report.pace = (f"rate {s.rate:g}/s" if s.rate else "speed 0 (no waiting)" if s.speed == 0
                       else f"speed {s.speed:g}x")
        engine = session.engine
        if engine is not None:
            report.planned = len(engine.plan)
            observations = engine.observations()
            report.sent = len(observations)
            report.interrupted = report.sent < report.planned
            report.failure = str(engine.failure) if engine.failure is not None else ""
            for obs in observations:
                if not obs.ok:
                    report.errors[obs.error_kind] += 1
            lateness = sorted(o.lateness_ns for o in observations)
            latency = sorted(o.latency_ns for o in observations if o.latency_ns is not None)
            report.lateness = {q: percentile(lateness, q) for q in (50, 99, 100)}
            report.latency = {q: percentile(latency, q) for q in (50, 95, 99)}
        recorded = sorted(e.recorded_latency_ns for e, _, _ in session.results if e.recorded_latency_ns is not None)
        report.recorded_latency = {q: percentile(recorded, q) for q in (50, 95, 99)}
        for _, _, verdict in session.results:
            if verdict is None:  # a mocked write: nothing was judged
                continue
            report.judged += 1
            if verdict.passed:
                report.passed += 1
            else:
                report.failed_by[verdict.differences[0].part if verdict.differences else "?"] += 1
        if session.verdicts is not None and session.verdicts.noise is not None and session.verdicts.noise.learned:
            report.noise = list(session.verdicts.noise.describe())
        if session.write_policy is not None:
            report.write_mode = session.write_policy.mode
            report.writes = session.write_counts.rows() if session.write_counts else []
            report.unused_allow = list(session.unused_allow)
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
        lines.append(f"verdicts: {report.passed} passed, {failed} failed" + (f" ({causes})" if causes else ""))
        if report.errors:
            lines.append("transport errors: " + ", ".join(f"{k}: {v}" for k, v in report.errors.most_common()))
        lat = report.lateness
        lines.append(f"lateness (send time - deadline): p50 {_ms(lat.get(50))}, p99 {_ms(lat.get(99))}, "
                     f"max {_ms(lat.get(100))}")
        rep, rec = report.latency, report.recorded_latency
        lines.append("latency (to first byte), replayed vs recorded: "
                     + ", ".join(f"p{q} {_ms(rep.get(q))} vs {_ms(rec.get(q))}" for q in (50, 95, 99)))
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
    return lines
