"""Capacity runs in the summary, the test reports and the evidence: stages planned and achieved, the
stop condition that tripped and where, the last stage that held (data from ReplayRun.capacity)."""

from __future__ import annotations

import pytest

STOP_NODE = "replay-stop::"


def traffic_share(shard: tuple[int, int] | None, traffic: tuple[int, int] | None) -> float:
    """The part of a rate a CI shard (--replay-shard K/N) sends: its exchanges' share of the whole
    capture's (the shards split the connections, so unevenly), 1/N when the capture says nothing, 1
    without shards. The N shards' parts add up to the rate asked."""
    if not shard or shard[1] <= 1:
        return 1.0
    mine, total = traffic or (0, 0)
    return mine / total if total else 1.0 / shard[1]


def shard_share(stages: tuple, share: float) -> tuple:
    """Each rate stage at `share` of its rate (traffic_share); a speed stage is already a share (each
    shard replays its own connections' timing)."""
    import dataclasses

    from ..schedule.stages import SPEED

    if share >= 1.0:
        return stages
    return tuple(stage if stage.kind == SPEED else
                 dataclasses.replace(stage, start=stage.start * share, end=stage.end * share) for stage in stages)


def _s(value: float) -> str:
    return f"{value:g} s" if value < 120 else f"{value / 60:g} min"


def achieved_rate(row: dict, stopped: dict | None) -> float | None:
    seconds = row["duration_s"]
    if stopped is not None:
        if row["stage"] > stopped["stage"]:
            return None
        if row["stage"] == stopped["stage"]:
            seconds = stopped["into_stage_s"]
            if seconds < 0.5:  # too short a part of the stage to say
                return None
    return row.get("sent_in_stage", row["sent"]) / seconds if seconds else None


def stop_sentence(data: dict) -> str:
    """'held 4x for 60 s; at 5x (stage 2, offered 200 req/s, 169.0 req/s achieved) after 23 s: 'p99>2s'
    tripped (response time from schedule p99 2.40 s over the last 10 s, 812 requests)'."""
    stop = data.get("stopped")
    if not stop:
        return ""
    rows = data["stages"]
    row = rows[stop["stage"] - 1]
    held = rows[stop["stage"] - 2] if stop["stage"] > 1 else None
    first = f"held {held['pace']} for {_s(held['duration_s'])}; " if held else "no stage held; "
    rate = achieved_rate(row, stop)
    rates = [f"offered {stop['offered_rate']:.1f} req/s"] if stop.get("offered_rate") is not None else []
    if rate is not None:
        rates.append(f"{rate:.1f} req/s achieved")
    at = f"at {row['pace']} (stage {stop['stage']}" + "".join(", " + r for r in rates) + ")"
    return (f"{first}{at} after {_s(round(stop['into_stage_s'], 1))}: '{stop['condition']}' tripped "
            f"{_measured(stop, stop['requests_in_window'], stop.get('in_flight_counted'))}")


def _measured(stop: dict, requests: int, in_flight: int | None) -> str:
    """'(measured response time from schedule 2.40 s over the last 10 s, 812 requests, 3 of them still
    waiting for the target)': what a tripped stop condition measured."""
    what = f"{stop['measures']} " if stop.get("measures") else ""
    waiting = f", {in_flight} of them still waiting for the target" if in_flight else ""
    return f"(measured {what}{stop['measured']} over the last {stop['window_s']:g} s, {requests} requests{waiting})"


def summary_lines(data: dict) -> list[str]:
    if not data:
        return []
    stop = data.get("stopped")
    lines = [f"capacity run: {len(data['stages'])} stage(s), the capture at 1x is {data['base_rate']:g} req/s, "
             f"{data['loops']} pass(es) over it planned"
             + (f"; stop conditions {', '.join(data['conditions'])} over {data['window_s']:g} s windows"
                if data.get("conditions") else "")]
    lines.append("  (p99 service: latency from send; from schedule: from the instant each request would have been "
                 "sent had the replayer been on time, queueing behind the target included)")
    shard = data.get("shard")
    if shard:
        share = data.get("traffic_share") or {}
        part = (f"{share['share']:.3g} of its rate (its {share['exchanges']} of the capture's {share['of']} "
                "exchanges)" if share.get("of") else f"1/{shard['count']} of its rate")
        lines.append(f"  shard {shard['index']} of {shard['count']}: each rate stage at {part}, so the "
                     f"{shard['count']} shards together keep it; this shard stops on its own")
    for row in data["stages"]:
        rate = achieved_rate(row, stop)
        late = row.get("lateness_p99_ms")
        service, scheduled = row.get("service_p99_ms"), row.get("scheduled_p99_ms")
        lines.append(f"  stage {row['stage']}: {row['pace']:<18} {_s(row['duration_s']):>8}  target "
                     f"{row['target_rate']:.1f}/s  sent {row['sent']} of {row['planned']}  achieved "
                     + (f"{rate:.1f}/s" if rate is not None else "-")
                     + f"  errors {row['errors']}"
                     + (f"  p99 service {service:g} ms / from schedule {scheduled:g} ms" if scheduled is not None
                        else "")
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
        where = f" on worker {stop['tripped_on']}" if stop.get("tripped_on") else ""
        lines.append(f"STOPPED{where}: " + stop_sentence(data))
        for other in data.get("other_stops", ()):
            if other.get("relayed"):
                lines.append(f"  worker {other.get('worker')} stopped too: {other['tripped_on']}'s '{other['condition']}' "
                             "reached it through xdist's channels")
            else:
                lines.append(f"  (worker {other.get('tripped_on')} tripped too: '{other['condition']}' at stage "
                             f"{other['stage']})")
    return lines


def report_stop(config: pytest.Config, session: pytest.Session, data: dict) -> None:
    """A tripped stop condition is a failing entry, as a failed budget is."""
    stop = data.get("stopped") if data else None
    if not stop:
        return
    _fail(config, session, STOP_NODE, stop["condition"], f"the replay was stopped: {stop_sentence(data)}",
          [("stage", stop["stage"]), ("measured", stop["measured"])])


def report_plain_stop(config: pytest.Config, session: pytest.Session, stop: dict, sent: int, planned: int) -> str:
    """A replay without stages that a stop condition ended: a failing entry, as in a capacity run.
    Returns its sentence (for the notes)."""
    where = f" on {stop['worker']}" if stop.get("worker") else ""
    sentence = (f"'{stop['condition']}' tripped{where} after {_s(round(stop['at_s'], 1))} "
                f"{_measured(stop, stop['requests'], stop.get('in_flight'))}: "
                f"{sent:,} of {planned:,} planned requests were sent")
    _fail(config, session, STOP_NODE, stop["condition"], f"the replay was stopped: {sentence}",
          [("measured", stop["measured"]), ("at_s", stop["at_s"])])
    return f"replay stopped by --replay-abort-on: {sentence}"


def _fail(config: pytest.Config, session: pytest.Session, node: str, name: str, message: str,
          properties: list) -> None:
    """A failing entry of the run (setup, call, teardown reports), the run's exit status 1."""
    from _pytest.reports import TestReport

    for when in ("setup", "call", "teardown"):
        failed = when == "call"
        report = TestReport(f"{node}{name}", (node.rstrip(":"), None, name), {node.rstrip(":").replace("-", "_"): 1},
                            "failed" if failed else "passed", message if failed else None, when,
                            user_properties=properties if failed else [])
        config.hook.pytest_runtest_logreport(report=report)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- the capture's coverage ---------------------------------------------------------------------
LOSS_NODE = "replay-capture-loss::"
LOSS_WARN_PCT = 1.0  # above this a capture is not trustworthy: always warned about


def capture_loss(summary: dict | None, limit_pct: float | None) -> dict | None:
    """{gap_bytes, bytes, pct, limit_pct, exceeded}: bytes lost to TCP gaps over bytes captured
    (None when nothing was captured)."""
    captured = (summary or {}).get("bytes") or 0
    lost = (summary or {}).get("gap_bytes") or 0
    if not captured:
        return None
    pct = 100.0 * lost / captured
    return {"gap_bytes": lost, "bytes": captured, "pct": round(pct, 3), "limit_pct": limit_pct,
            "exceeded": limit_pct is not None and pct > limit_pct}


def loss_sentence(loss: dict) -> str:
    return (f"the capture lost {loss['pct']:g}% of its bytes to TCP gaps ({loss['gap_bytes']} bytes lost, "
            f"{loss['bytes']} captured)")


def loss_lines(loss: dict | None) -> list[str]:
    """The summary's lines: a failure over --replay-max-capture-loss, a warning above 1%."""
    if not loss:
        return []
    if loss["exceeded"]:
        return [f"CAPTURE LOSS: {loss_sentence(loss)}, over --replay-max-capture-loss {loss['limit_pct']:g}%: "
                "the run fails"]
    if loss["pct"] > LOSS_WARN_PCT:
        return [f"warning: {loss_sentence(loss)}, over {LOSS_WARN_PCT:g}%: the replay may misrepresent the "
                "traffic (--replay-max-capture-loss PCT fails a run above PCT)"]
    return []


def report_loss(config: pytest.Config, session: pytest.Session, loss: dict | None) -> None:
    """A capture that lost more than --replay-max-capture-loss is a failing entry."""
    if not loss or not loss["exceeded"]:
        return
    _fail(config, session, LOSS_NODE, f"max {loss['limit_pct']:g}%",
          f"{loss_sentence(loss)}: over --replay-max-capture-loss {loss['limit_pct']:g}%",
          [("loss_pct", loss["pct"]), ("limit_pct", loss["limit_pct"])])
