"""Capacity runs in the summary, the test reports and the evidence: stages planned and achieved, the
stop condition that tripped and where, the last stage that held (data from ReplayRun.capacity)."""

from __future__ import annotations

import pytest

STOP_NODE = "replay-stop::"


def _s(value: float) -> str:
    return f"{value:g} s" if value < 120 else f"{value / 60:g} min"


def achieved_rate(row: dict, stopped: dict | None) -> float | None:
    seconds = row["duration_s"]
    if stopped is not None:
        if row["stage"] > stopped["stage"]:
            return None
        if row["stage"] == stopped["stage"]:
            seconds = max(stopped["into_stage_s"], 1e-9)
    return row.get("sent_in_stage", row["sent"]) / seconds if seconds else None


def stop_sentence(data: dict) -> str:
    """'held 4x for 60 s; at 5x after 23 s p99>2s tripped (p99 2.40 s over the last 10 s)'."""
    stop = data.get("stopped")
    if not stop:
        return ""
    rows = data["stages"]
    row = rows[stop["stage"] - 1]
    held = rows[stop["stage"] - 2] if stop["stage"] > 1 else None
    first = f"held {held['pace']} for {_s(held['duration_s'])}; " if held else "no stage held; "
    rate = achieved_rate(row, stop)
    at = f"at {row['pace']} (stage {stop['stage']}, {rate:.1f} req/s achieved)" if rate is not None else f"at {row['pace']}"
    return (f"{first}{at} after {_s(round(stop['into_stage_s'], 1))}: '{stop['condition']}' tripped "
            f"(measured {stop['measured']} over the last {stop['window_s']:g} s, {stop['requests_in_window']} requests)")


def summary_lines(data: dict) -> list[str]:
    if not data:
        return []
    stop = data.get("stopped")
    lines = [f"capacity run: {len(data['stages'])} stage(s), the capture at 1x is {data['base_rate']:g} req/s, "
             f"{data['loops']} pass(es) over it planned"
             + (f"; stop conditions {', '.join(data['conditions'])} over {data['window_s']:g} s windows"
                if data.get("conditions") else "")]
    for row in data["stages"]:
        rate = achieved_rate(row, stop)
        late = row.get("lateness_p99_ms")
        lines.append(f"  stage {row['stage']}: {row['pace']:<18} {_s(row['duration_s']):>8}  target "
                     f"{row['target_rate']:.1f}/s  sent {row['sent']} of {row['planned']}  achieved "
                     + (f"{rate:.1f}/s" if rate is not None else "-")
                     + f"  errors {row['errors']}"
                     + (f"  lateness p99 {late:g} ms" if late is not None else "")
                     + (f"  not sent {row['not_sent']}" if row.get("not_sent") else ""))
    saturation = data.get("saturation") or {}
    for row in saturation.get("stages", ()):
        parts = [f"{label} {row[key]['mean'] * 100:.0f}% (max {row[key]['max'] * 100:.0f}%)"
                 for key, label in (("replayer_cpu", "replayer CPU"), ("target_cpu", "target CPU"),
                                    ("metrics_cpu", "target CPU (metrics)")) if key in row]
        if "target_rss_bytes" in row:
            parts.append(f"target RSS max {row['target_rss_bytes']['max'] / 2**20:.0f} MiB")
        if "target_open_fds" in row:
            parts.append(f"fds max {row['target_open_fds']['max']:g}")
        if parts:
            lines.append(f"  stage {row['stage']} saturation: " + ", ".join(parts))
    for failure in saturation.get("failures", ()):
        lines.append(f"  sampling {failure['source']} failed {failure['failures']} time(s): {failure['first']}")
    if data.get("sent_after_the_end"):
        lines.append(f"  {data['sent_after_the_end']} request(s) were sent after the last stage's end: the replay "
                     "could not keep the pace (see lateness)")
    reached = data.get("reached")
    if reached and not stop and any(row["sent"] < row["planned"] for row in data["stages"]):
        lines.append(f"  reached stage {reached['stage']} ({reached['pace']}), {_s(reached['into_stage_s'])} into it, "
                     f"{_s(reached['at_s'])} into the replay")
    if stop:
        lines.append("STOPPED: " + stop_sentence(data))
        for other in data.get("other_stops", ()):
            lines.append(f"  (another worker stopped too: '{other['condition']}' at stage {other['stage']})")
    return lines


def report_stop(config: pytest.Config, session: pytest.Session, data: dict) -> None:
    """A tripped stop condition is a failing entry, as a failed budget is."""
    from _pytest.reports import TestReport

    stop = data.get("stopped") if data else None
    if not stop:
        return
    nodeid = f"{STOP_NODE}{stop['condition']}"
    for when in ("setup", "call", "teardown"):
        failed = when == "call"
        report = TestReport(nodeid, ("replay-stop", None, stop["condition"]), {"replay_stop": 1},
                            "failed" if failed else "passed",
                            f"the replay was stopped: {stop_sentence(data)}" if failed else None, when,
                            user_properties=[("stage", stop["stage"]), ("measured", stop["measured"])]
                            if failed else [])
        config.hook.pytest_runtest_logreport(report=report)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
