"""The evidence package: one JSON file saying what was replayed, how, and what came of it.

Written by ``--replay-report DIR`` at the end of a run, also when it was interrupted, atomically
(a temporary file in DIR, then os.replace: a reader sees the old file or the new one, never half of
one). A run writes ``replay-evidence.json``; a shard (``--replay-shard K/N``) writes
``replay-evidence-shard-K-of-N.json``, so the shards of a CI matrix can be gathered in one directory;
``python -m pytest_replay merge`` adds them up and judges the whole (report/merge.py). Secrets never
reach the file: request targets are masked with the Redactor, and the aggregate holds only endpoint
templates and numbers.

Structure (``schema`` = SCHEMA; times in ms unless the key says otherwise):

    schema            "pytest-replay-evidence/2" (2: diff.noise became an object with per-rule counts,
                      diff.ignored is filled, `failures` added, the aggregate's schema is 2; outcomes without
                      budgets, exit_status, wall_s, throughput, verdict)
    tool              {name, version}
    created           ISO 8601 UTC time the file was built
    run               {id, interrupted, planned, started, finished, shard: {index, count} | null,
                       outcomes: {passed, failed, skipped, error, deselected, ...} (the run's test items:
                       budgets are not counted here, they are under `budgets`), exit_status (pytest's, for
                       a run; null for a merge), wall_s (from the replay's start to its last response),
                       merged_from: [{file, shard, run_id, outcomes, interrupted, exit_status, wall_s,
                       budgets_failed, stopped (the shard's capacity stop) | null}] | null, missing_shards: [K...] | null,
                       verdict: {passed, exit_code, reasons} (a merge's gate, see report/merge.py) | null}
    captures          {files: [{path, name, bytes, sha256, format?}], first_ts_ns, last_ts_ns, first, last,
                       duration_s, exchanges, complete, incomplete, incomplete_by_reason,
                       requests_without_response, gaps, gap_bytes, skipped_streams, warning_counts,
                       loss: {gap_bytes, bytes, pct, limit_pct, exceeded} | null (bytes lost to TCP gaps over
                       bytes captured; limit_pct: --replay-max-capture-loss)}
    selection         {filters: [...], sample: {size, of, ...} | null, rewrites: [...], redaction: [...]}
                      (sample.size: exchanges this run or shard selected; a merge adds them up)
    pace              {speed, rate, max_wait_s, concurrency, ...} as given
    target            what requests were sent to
    write_policy      {policy, mocked, passed, skipped, flagged} (passed: writes sent; flagged: reads with a
                      body, sent)
    endpoints         per-endpoint rows (report.aggregate.row): count, recorded_ms, replayed_ms (latency
                      from send) and scheduled_ms (response time from schedule: queueing behind the
                      target included) {p50, p95, p99, max, mean}, error_pct, 5xx_pct, 4xx_pct, transport_errors,
                      lateness_ms {p50, p99, max} (null at --speed 0), lateness_causes {cause: {requests,
                      share_pct, p50_ms, p99_ms, max_ms, total_ms}} (causes: engine, connection, barrier,
                      concurrency; only requests late for that cause), spilled, early, judged, failed,
                      failures, writes, write_reasons, skipped
    totals            the same row for the whole run
    errors            {requests, transport: {kind: n}, status, recorded_status,
                       rates_pct: {5xx, 4xx, errors, recorded_5xx, recorded_4xx}}
    lateness          {p50_ms, p99_ms, max_ms, early, causes, spilled}; null at --speed 0 (no schedule:
                      every request is due at once, so lateness means nothing; see throughput). causes:
                      the totals' lateness_causes; spilled: requests sent on an extra connection
                      (--replay-connections spill)
    throughput        {requests, wall_s, requests_per_s}: requests that reached the target per second of
                      the replay's wall time (a merge: requests and rates of the shards added up, the
                      longest shard's wall time)
    diff              {judged, passed, failed, by_part: {part: n}, ignored: {why: n}, noise}: ignored counts
                      the differences each reason accounted for ("rule json:$.id", "learned noise GET /x:
                      json:$.request_id", "volatile header date"); noise: {summary, rules: [{rule, learned,
                      hid}], not_used: [...]} (hid: differences the learned rule hid in this run) or {};
                      origins: {"origin A treated as B": responses}
    failures          {failed, signatures, groups: [{signature, exchanges, examples: [{index, diff: [lines]}],
                      omitted}], examples_shown, examples_omitted, limits}: failed exchanges grouped by
                      endpoint and what changed ("GET /api/rows/{id} body $.rows[*][3] number changed"),
                      most first, with the first failing exchanges of each (rendered and masked as in the
                      terminal), bounded per group and in all
    budgets           [BudgetResult.to_dict()]: budget, passed, measured, recorded, threshold, reason,
                      worst [{endpoint, value}], requests, endpoints, caveats [sentences],
                      measured_*/recorded_*/limit_*
    latency_caveats   {shared_cores: "in-process" | a loopback host | null, closed_loop: {requests, of,
                      connections, gap_ms, run} | null}: why relative latency budgets may mislead
    skipped           {total, by_reason: {reason: n}, examples: [{index, exchange, source, reason}]}
    incomplete        {total, by_reason, examples}  (incomplete in the capture, not replayed)
    known_gaps        [sentences]: what this evidence does not show, derived and given
    notes             [sentences] given by the run (kept apart so a merge can recompute the derived gaps)
    method            how the numbers were measured (latency definition, histogram precision, rates)
    aggregate         report.aggregate.Aggregate.to_dict(): the mergeable raw data (HDR histograms)
    capacity          (capacity runs) {stages: [{stage, pace, target_rate, planned, sent, ..., lateness_p99_ms,
                      service_p99_ms (latency from send), scheduled_p99_ms (response time from schedule)}],
                      stopped: {condition, measured, measures (what: "response time from schedule", ...),
                      stage, into_stage_s, offered_rate (the schedule's rate then), requests_in_window,
                      in_flight_counted (of them, requests still waiting that counted at their age), ...,
                      tripped_on, worker, relayed} | null, other_stops (xdist workers), shard {index,
                      count}, traffic_share {share, exchanges, of} (a shard ran `share` of each rate: its
                      exchanges of the capture's), shard_stops (a merge: each shard's stop), reached,
                      saturation, planned_stages}
    baseline, extra   optional sections

In code the package is an `Evidence` dataclass (nested dataclasses where the shape is fixed, dicts
where the aggregate or the capture reader renders it); `to_dict()` gives the JSON above, `from_dict()`
reads it back keeping keys it does not declare, `merge()` adds two up, and `check_mergeable()` says
whether files may be merged at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from ..http.units import US_PER_MS, ms_number
from ..policy.redact import DEFAULT as DEFAULT_REDACTOR
from .aggregate import ALL, HIGHEST_US, SIGNIFICANT_FIGURES, Aggregate

SCHEMA = "pytest-replay-evidence/2"
FILENAME = "replay-evidence.json"
MAX_EXAMPLES = 50
CHUNK = 1 << 20
METHOD = {
    "latency": "time to the first response byte: replayed = first byte - send; recorded = response start - "
               "request start in the capture",
    "response_time_from_schedule": "scheduled_ms: first byte - (deadline + the time the request queued for the "
                                   "target: its connection busy, a write barrier, a concurrency slot); the "
                                   "replayer's own lateness left out (coordinated omission corrected, as wrk2); "
                                   "at --speed 0 (no schedule) the latency from send",
    "histograms": f"HDR histograms, 1 us .. {HIGHEST_US // 1_000_000} s, {SIGNIFICANT_FIGURES} significant "
                  "figures; mean and max are exact",
    "requests": "requests that reached the target: mocked writes and requests cancelled by a stop excluded",
    "error_rates": "percent of requests; errors = transport failures + 5xx; recorded rates are over the "
                   "recorded responses of the same requests",
    "lateness": "send time - deadline; early sends are counted, clamped at 0 in the histogram; not measured "
                "at --speed 0 (no schedule: recorded as 0)",
    "throughput": "requests that reached the target / the replay's wall time (its start to its last response)",
}
_SUMMARY_KEYS = ("first_ts_ns", "last_ts_ns", "duration_s", "exchanges", "complete", "incomplete",
                 "incomplete_by_reason", "requests_without_response", "responses_without_request", "gaps",
                 "gap_bytes", "skipped_streams", "warning_counts", "exchanges_per_s")


class EvidenceError(Exception):
    """Evidence files that cannot be read or merged: the message says which and why."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def capture_file(entry) -> dict:
    """A capture file's identity: {path, name, bytes, sha256}; a dict with a sha256 is kept as is."""
    if isinstance(entry, dict):
        if entry.get("sha256"):
            return dict(entry)
        entry = {**entry}
        path = entry.get("path")
        return {**entry, **capture_file(path)} if path else entry
    path = Path(entry)
    return {"path": str(path), "name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _iso(ts_ns: int | None) -> str | None:
    if ts_ns is None:
        return None
    try:
        return datetime.fromtimestamp(ts_ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):  # a damaged timestamp: beyond the years 1-9999
        return f"{ts_ns} ns since 1970 (out of the calendar's range)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pytest-traffic-replay")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


def exchange_ref(exchange, reason: str, redactor=DEFAULT_REDACTOR) -> dict:
    """A skipped or incomplete exchange, as the evidence lists it (target masked)."""
    request = exchange.request
    return {"index": exchange.index, "exchange": f"{request.method} {redactor.target(request.target)}",
            "source": str(exchange.source), "reason": reason}


def _listing(items: Iterable, redactor) -> dict:
    """{total, by_reason, examples} from (exchange, reason) pairs, Exchanges (reasons from their
    flags) or prepared dicts {exchange, source, reason}."""
    by_reason: Counter = Counter()
    examples = []
    for item in items:
        if isinstance(item, dict):
            ref = item
        elif isinstance(item, tuple):
            exchange, reason = item
            ref = exchange_ref(exchange, str(reason), redactor)
        else:
            reason = "; ".join(str(flag) for flag in getattr(item, "flags", ())) or "unknown"
            ref = exchange_ref(item, reason, redactor)
        by_reason[str(ref.get("reason", "unknown")).split(" (", 1)[0].split(":", 1)[0]] += 1
        if len(examples) < MAX_EXAMPLES:
            examples.append(ref)
    return {"total": sum(by_reason.values()), "by_reason": dict(by_reason), "examples": examples}


def _capture_section(captures: Iterable, summary: dict | None) -> dict:
    files = [capture_file(entry) for entry in captures]
    if summary:  # keep formats and per-file details the capture reader found
        details = {str(info.get("path")): info for info in summary.get("files", [])}
        for entry in files:
            info = details.get(entry.get("path"))
            if info:
                for key in ("format", "compressed", "packets", "records"):
                    if key in info and key not in entry:
                        entry[key] = info[key]
    section = {"files": files}
    for key in _SUMMARY_KEYS:
        section[key] = (summary or {}).get(key)
    section["first"] = _iso(section["first_ts_ns"])
    section["last"] = _iso(section["last_ts_ns"])
    return section


def _derived_gaps(aggregate: Aggregate, captures: dict, interrupted: bool, planned: int | None) -> list[str]:
    overall = aggregate.overall
    gaps = []
    cancelled = overall.errors.get("cancelled", 0)
    replayed = overall.requests + overall.writes.get("mocked", 0)
    if interrupted:
        of = f" of {planned} planned" if planned is not None else ""
        gaps.append(f"the run was interrupted: {replayed} requests{of} were replayed"
                    + (f", {cancelled} cancelled" if cancelled else ""))
    elif cancelled:
        gaps.append(f"{cancelled} requests were cancelled before they completed")
    missing = overall.requests - overall.recorded.total
    if overall.requests and missing:
        gaps.append(f"{missing} of {overall.requests} replayed requests have no recorded latency in the capture: "
                    "recorded columns and relative budgets leave them out")
    mocked = overall.writes.get("mocked", 0)
    if mocked:
        gaps.append(f"{mocked} write requests were mocked (answered from the recording): the target never saw "
                    "them, and they are not in latency or error figures")
    skipped_writes = overall.writes.get("skipped", 0)
    if skipped_writes:
        gaps.append(f"{skipped_writes} write requests were skipped by the write policy")
    flagged = overall.writes.get("flagged", 0)
    if flagged:
        gaps.append(f"{flagged} reads carried a body (GET or HEAD with content) and were sent: a server may act "
                    "on that body")
    if aggregate.folded:
        gaps.append(f"{aggregate.folded} exchanges beyond the cap of {aggregate.max_endpoints} endpoints are "
                    "counted under (other): scoped budgets do not see them")
    if overall.early:
        gaps.append(f"{overall.early} requests were sent before their deadline")
    if captures.get("incomplete"):
        gaps.append(f"the capture holds {captures['incomplete']} incomplete exchanges "
                    f"({', '.join(f'{k}: {v}' for k, v in (captures.get('incomplete_by_reason') or {}).items())})")
    if captures.get("gaps"):
        gaps.append(f"the capture has {captures['gaps']} TCP gaps ({captures.get('gap_bytes') or 0} bytes missing)")
    streams = sum((captures.get("skipped_streams") or {}).values())
    if streams:
        gaps.append(f"{streams} captured streams were not HTTP/1.x and were skipped")
    return gaps


def _budget_dict(result) -> dict:
    return result if isinstance(result, dict) else result.to_dict()


# -- the evidence as typed data -------------------------------------------------------------------
class _Data:
    """to_dict/from_dict for the evidence's dataclasses: declared fields in order, then `more` (keys
    this version does not declare, kept as they were: a reader of a newer file loses nothing)."""

    NESTED: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            if f.name != "more":
                value = getattr(self, f.name)
                out[f.name] = value.to_dict() if isinstance(value, _Data) else value
        out.update(self.more)
        return out

    @classmethod
    def from_dict(cls, data: dict):
        if not isinstance(data, dict):
            raise EvidenceError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
        names = [f.name for f in fields(cls) if f.name != "more"]
        values = {}
        for name in names:
            if name in data:
                value, nested = data[name], cls.NESTED.get(name)
                values[name] = nested.from_dict(value) if nested is not None and value is not None else value
        return cls(**values, more={k: v for k, v in data.items() if k not in names})


@dataclass
class Shard(_Data):
    index: int = 1
    count: int = 1
    more: dict = field(default_factory=dict)


@dataclass
class RunInfo(_Data):
    """`run`: what ran, how it ended, and (a merge) which shards it is made of."""

    NESTED: ClassVar[dict[str, type]] = {"shard": Shard}
    id: str = ""
    interrupted: bool = False
    planned: int | None = None
    started: str | None = None
    finished: str | None = None
    shard: Shard | None = None
    outcomes: dict = field(default_factory=dict)
    exit_status: int | None = None
    wall_s: float | None = None
    merged_from: list | None = None
    missing_shards: list | None = None
    verdict: dict | None = None
    workers: list = field(default_factory=list)
    more: dict = field(default_factory=dict)  # environment, owner, links (set by the run's reporting)


@dataclass
class Selection(_Data):
    filters: list = field(default_factory=list)
    sample: dict | None = None
    rewrites: list = field(default_factory=list)
    redaction: list = field(default_factory=list)
    more: dict = field(default_factory=dict)


@dataclass
class WritePolicy(_Data):
    policy: str | None = None
    mocked: int = 0
    passed: int = 0
    skipped: int = 0
    flagged: int = 0
    more: dict = field(default_factory=dict)


@dataclass
class Errors(_Data):
    requests: int = 0
    transport: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    recorded_status: dict = field(default_factory=dict)
    rates_pct: dict = field(default_factory=dict)
    more: dict = field(default_factory=dict)


@dataclass
class Lateness(_Data):
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    early: int = 0
    causes: dict | None = None  # the totals' lateness_causes
    spilled: int = 0  # requests sent on an extra connection (--replay-connections spill)
    more: dict = field(default_factory=dict)


@dataclass
class Throughput(_Data):
    requests: int = 0
    wall_s: float | None = None
    requests_per_s: float | None = None
    more: dict = field(default_factory=dict)


@dataclass
class Diff(_Data):
    judged: int = 0
    passed: int = 0
    failed: int = 0
    by_part: dict = field(default_factory=dict)
    ignored: dict = field(default_factory=dict)
    noise: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)
    more: dict = field(default_factory=dict)


@dataclass
class Listing(_Data):
    """`skipped` and `incomplete`: counts by reason and the first examples."""

    total: int = 0
    by_reason: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)
    more: dict = field(default_factory=dict)

    def merge(self, other: Listing) -> Listing:
        by_reason = Counter(self.by_reason)
        by_reason.update(other.by_reason)
        return Listing(sum(by_reason.values()), dict(by_reason), (self.examples + other.examples)[:MAX_EXAMPLES])


@dataclass
class Evidence(_Data):
    """The evidence package (the module's docstring says what each key holds). Sections of a fixed
    shape are dataclasses; sections rendered from the aggregate or the capture reader stay dicts.
    `more` keeps the optional sections (baseline, capacity, extra)."""

    NESTED: ClassVar[dict[str, type]] = {"run": RunInfo, "selection": Selection, "write_policy": WritePolicy,
                                         "errors": Errors, "lateness": Lateness, "throughput": Throughput,
                                         "diff": Diff, "skipped": Listing, "incomplete": Listing}
    schema: str = SCHEMA
    tool: dict = field(default_factory=dict)
    created: str = ""
    run: RunInfo = field(default_factory=RunInfo)
    captures: dict = field(default_factory=dict)
    selection: Selection = field(default_factory=Selection)
    pace: dict = field(default_factory=dict)
    target: str = ""
    write_policy: WritePolicy = field(default_factory=WritePolicy)
    endpoints: list = field(default_factory=list)
    totals: dict | None = None
    errors: Errors = field(default_factory=Errors)
    lateness: Lateness | None = None
    throughput: Throughput = field(default_factory=Throughput)
    diff: Diff = field(default_factory=Diff)
    failures: dict = field(default_factory=dict)
    budgets: list = field(default_factory=list)
    latency_caveats: dict = field(default_factory=dict)
    skipped: Listing = field(default_factory=Listing)
    incomplete: Listing = field(default_factory=Listing)
    known_gaps: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    method: dict = field(default_factory=dict)
    aggregate: dict = field(default_factory=dict)
    more: dict = field(default_factory=dict)

    @classmethod
    def build(cls, *, aggregate: Aggregate, captures: Iterable = (), capture_summary: dict | None = None,
              target: str = "", pace: dict | None = None, filters: Iterable[str] = (), rewrites: Iterable[str] = (),
              redaction: Iterable[str] = (), sample: dict | int | None = None, write_policy: str | dict | None = None,
              budgets: Iterable = (), skipped: Iterable = (), incomplete: Iterable = (), notes: Iterable[str] = (),
              interrupted: bool = False, planned: int | None = None, shard: tuple[int, int] | dict | None = None,
              outcomes: dict | None = None, started: str | None = None, finished: str | None = None,
              ignored: dict | None = None, noise: dict | None = None, run_id: str | None = None,
              origins: dict | None = None, merged_from: list | None = None, redactor=DEFAULT_REDACTOR,
              extra: dict | None = None, exit_status: int | None = None, wall_s: float | None = None,
              throughput: dict | None = None, missing_shards: list[int] | None = None,
              latency_caveats: dict | None = None, workers: Iterable[dict] = ()) -> Evidence:
        """The evidence of one run (or of merged shards).

        captures: capture file paths (hashed here) or dicts with a sha256; capture_summary:
        capture.summary.summary_data(stats); skipped: (exchange, reason) pairs of exchanges selected but
        not replayed; incomplete: Exchanges incomplete in the capture (reasons from their flags), or pairs;
        budgets: BudgetResults; shard: (K, N) 1-based; notes: known gaps the run knows about; ignored:
        why -> differences (default: the aggregate's); noise: NoiseModel.summary() (each rule's `hid`
        is counted from the aggregate); outcomes: the run's test items by outcome (budgets left out);
        exit_status: pytest's; wall_s: the replay's wall time; throughput: given by a merge (else derived
        from wall_s); workers: xdist workers of a run reaching other machines, each with its host and
        measured clock offset."""
        capture_section = _capture_section(captures, capture_summary)
        overall = aggregate.overall
        rows = aggregate.table()
        unscheduled = (pace or {}).get("speed") == 0 and not (pace or {}).get("rate")
        if unscheduled:  # every request is due at t0: "late" by design
            for row in rows:
                row["lateness_ms"] = None
                row["lateness_causes"] = None
        totals = rows.pop() if rows and rows[-1]["endpoint"] == ALL else None
        if isinstance(shard, tuple):
            shard = {"index": shard[0], "count": shard[1]}
        if isinstance(sample, int):
            sample = {"size": sample}
        policy = write_policy if isinstance(write_policy, dict) else {"policy": write_policy}
        policy = {**policy, **{k: overall.writes.get(k, 0) for k in ("mocked", "passed", "skipped", "flagged")}}
        notes = [str(n) for n in notes]
        lateness = overall.lateness.percentiles((50, 99, 100))
        if throughput is None:
            throughput = throughput_of(overall.requests, wall_s)
        run = RunInfo(id=run_id or uuid.uuid4().hex, interrupted=bool(interrupted), planned=planned, started=started,
                      finished=finished, shard=Shard.from_dict(shard) if shard else None,
                      outcomes=dict(outcomes or {}), exit_status=exit_status, wall_s=_r(wall_s),
                      merged_from=merged_from, missing_shards=missing_shards, verdict=None,
                      workers=[dict(w) for w in workers])
        rates = {"5xx": _r(overall.rate("5xx")), "4xx": _r(overall.rate("4xx")), "errors": _r(overall.rate("errors")),
                 "recorded_5xx": _r(overall.rate("5xx", recorded=True)),
                 "recorded_4xx": _r(overall.rate("4xx", recorded=True))}
        quantiles = (("p50", 50), ("p99", 99), ("max", 100))
        return cls(
            schema=SCHEMA, tool={"name": "pytest-traffic-replay", "version": _version()}, created=_now(), run=run,
            captures=capture_section,
            selection=Selection([str(f) for f in filters], sample, [str(r) for r in rewrites],
                                [str(r) for r in redaction]),
            pace=dict(pace or {}), target=str(target), write_policy=WritePolicy.from_dict(policy),
            endpoints=rows, totals=totals,
            errors=Errors(overall.requests, dict(overall.errors), dict(overall.status),
                          dict(overall.recorded_status), rates),
            lateness=None if unscheduled else Lateness(
                **{f"{name}_ms": ms_number(lateness[q], US_PER_MS) for name, q in quantiles}, early=overall.early,
                causes=overall.causes_row(), spilled=overall.spilled),
            throughput=Throughput.from_dict(throughput),
            diff=Diff(overall.judged, overall.judged - overall.failed, overall.failed, dict(overall.failures),
                      dict(overall.ignored if ignored is None else ignored), _noise(noise, aggregate),
                      dict(origins or {})),
            failures=aggregate.failure_groups.section(overall.failed),
            budgets=[_budget_dict(b) for b in budgets], latency_caveats=dict(latency_caveats or {}),
            skipped=Listing.from_dict(skipped if isinstance(skipped, dict) else _listing(skipped, redactor)),
            incomplete=Listing.from_dict(incomplete if isinstance(incomplete, dict) else _listing(incomplete, redactor)),
            known_gaps=_derived_gaps(aggregate, capture_section, interrupted, planned) + notes, notes=notes,
            method=dict(METHOD), aggregate=aggregate.to_dict(), more={"extra": extra} if extra else {})

    @property
    def shard_key(self) -> tuple[int, int] | None:
        shard = self.run.shard
        return (shard.index, shard.count) if shard else None

    def merge(self, other: Evidence) -> Evidence:
        """The evidence of both runs' requests (counts add up, histograms bucket by bucket; the
        settings, captures and noise are this one's). Associative and commutative on counts; whether
        two files may be merged at all is check_mergeable's business."""
        aggregate = Aggregate.merged([Aggregate.from_dict(self.aggregate), Aggregate.from_dict(other.aggregate)])
        runs = (self.run, other.run)
        notes = list(self.notes) + [n for n in other.notes if n not in self.notes]
        planned = None if None in (self.run.planned, other.run.planned) else self.run.planned + other.run.planned
        walls = [run.wall_s for run in runs if run.wall_s is not None]
        rates = (self.throughput.requests_per_s, other.throughput.requests_per_s)
        throughput = {"requests": aggregate.overall.requests, "wall_s": max(walls) if walls else None,
                      "requests_per_s": None if None in rates else round(sum(rates), 1)}
        merged = Evidence.build(
            aggregate=aggregate, captures=self.captures["files"], capture_summary=self.captures,
            target=self.target, pace=self.pace, filters=self.selection.filters, rewrites=self.selection.rewrites,
            redaction=self.selection.redaction, sample=_merge_sample(self.selection.sample, other.selection.sample),
            write_policy=self.write_policy.policy, skipped=self.skipped.merge(other.skipped).to_dict(),
            incomplete=self.incomplete.merge(other.incomplete).to_dict(), notes=notes,
            interrupted=self.run.interrupted or other.run.interrupted, planned=planned,
            outcomes=_add(self.run.outcomes, other.run.outcomes), started=_least(r.started for r in runs),
            finished=max((r.finished for r in runs if r.finished), default=None),
            ignored=_add(self.diff.ignored, other.diff.ignored), noise=self.diff.noise or other.diff.noise,
            origins=_add(self.diff.origins, other.diff.origins), throughput=throughput,
            latency_caveats=self.latency_caveats, wall_s=max(walls) if walls else None,
            workers=self.run.workers + other.run.workers)
        capacity = merge_shard_capacity(self.more.get("capacity"), other.more.get("capacity"))
        if capacity:
            merged.more["capacity"] = capacity
        return merged


def build_evidence(**values) -> dict:
    """Evidence.build(...).to_dict(): the evidence as plain JSON-ready data."""
    return Evidence.build(**values).to_dict()


def _add(a: dict, b: dict) -> dict:
    total = Counter(a)
    total.update(b)
    return dict(total)


def _least(values: Iterable[str | None]) -> str | None:
    return min((v for v in values if v), default=None)


def _merge_sample(a: dict | None, b: dict | None) -> dict | None:
    """Each shard's own selection: sizes add up (when both have one)."""
    if isinstance(a, dict) and isinstance(b, dict) and isinstance(a.get("size"), int) and isinstance(b.get("size"), int):
        return {**a, "size": a["size"] + b["size"]}
    return a


CAPACITY_SUMS = ("planned", "sent", "sent_in_stage", "errors", "not_sent", "target_rate")


def merge_shard_capacity(mine: dict | None, other: dict | None) -> dict | None:
    """Capacity runs of CI shards: each ran every stage at its share of the rate, so the stage rows
    (requests and target rates) add up; each shard's stop is kept in `shard_stops` (a shard stops
    on its own), the first as `stopped`."""
    if not mine or not other:
        only = mine or other
        return _merged_form(only) if only else None
    rows = []
    for row, theirs in zip(mine["stages"], other["stages"]):
        row = dict(row)
        for key in CAPACITY_SUMS:
            if key in row or key in theirs:
                row[key] = round(row.get(key, 0) + theirs.get(key, 0), 3)
        for key in ("lateness_p99_ms", "service_p99_ms", "scheduled_p99_ms"):  # the worst shard's
            late = [v for v in (row.get(key), theirs.get(key)) if v is not None]
            row[key] = max(late) if late else None
        rows.append(row)
    planned = mine.get("planned_stages") or []
    for row, text in zip(rows, planned):  # the stage as given, not one shard's share of it
        row["pace"] = text.rsplit(":", 1)[0]
    merged = {**mine, "stages": rows, "shard": None}
    merged["sent_after_the_end"] = mine.get("sent_after_the_end", 0) + other.get("sent_after_the_end", 0)
    merged["shard_stops"] = _shard_stops(mine) + _shard_stops(other)
    merged["stopped"] = merged["shard_stops"][0] if merged["shard_stops"] else None
    reached = [r for r in (mine.get("reached"), other.get("reached")) if r]
    merged["reached"] = max(reached, key=lambda r: r["at_s"]) if reached else None
    return merged


def _merged_form(capacity: dict) -> dict:
    """One shard's capacity section as a merge shows it (when the other shards have none)."""
    rows = [dict(row) for row in capacity["stages"]]
    for row, text in zip(rows, capacity.get("planned_stages") or []):
        row["pace"] = text.rsplit(":", 1)[0]
    stops = _shard_stops(capacity)
    return {**capacity, "stages": rows, "shard": None, "shard_stops": stops, "stopped": stops[0] if stops else None}


def _shard_stops(capacity: dict) -> list[dict]:
    if "shard_stops" in capacity:
        return list(capacity["shard_stops"])
    stop = capacity.get("stopped")
    return [{**stop, "shard": capacity.get("shard")}] if stop else []


def _noise(noise: dict | None, aggregate: Aggregate) -> dict:
    """The learned noise with, per rule, the differences it hid in this run (from the aggregate)."""
    if not noise:
        return {}
    from ..verdicts.learning import NOISE_REASON

    ignored = aggregate.overall.ignored
    rules = [{"rule": r["rule"], "learned": r.get("learned", ""), "hid": ignored.get(NOISE_REASON + r["rule"], 0)}
             for r in (noise.get("rules") or [])[:500]]
    return {"summary": noise.get("summary", ""), "rules": rules, "not_used": list(noise.get("not_used") or [])[:500]}


def throughput_of(requests: int, wall_s: float | None) -> dict:
    """{requests, wall_s, requests_per_s}: what reached the target per second of the replay."""
    rate = requests / wall_s if wall_s else None
    return {"requests": requests, "wall_s": _r(wall_s), "requests_per_s": None if rate is None else round(rate, 1)}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def filename(data: dict) -> str:
    shard = (data.get("run") or {}).get("shard")
    if shard:
        return f"replay-evidence-shard-{shard['index']}-of-{shard['count']}.json"
    return FILENAME


@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C while the file is written (main thread only), then deliver it: a second Ctrl-C
    during an interrupted run's final write does not lose the evidence."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    except (ValueError, OSError):  # pragma: no cover - no signal support here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)  # delivered to the restored handler


def write_evidence(directory: str | os.PathLike, data: dict) -> Path:
    """Write `data` to DIR/replay-evidence.json (or the shard's name) atomically; returns the path.

    The JSON goes to a temporary file in DIR (same file system), is flushed and fsynced, then
    os.replace'd over the target. On any failure, or an interrupt mid-write, the temporary file is
    removed and an earlier evidence file, if any, stays as it was."""
    directory = Path(directory)
    text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False, default=str)
    return write_atomically(directory / filename(data), text + "\n")


def write_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same directory, flushed, fsynced and
    os.replace'd over it (readable by all, as a report is meant to be). On any failure, or an
    interrupt mid-write (Ctrl-C waits until the file is complete), the temporary file is removed and
    an earlier file stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _sigint_deferred():
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o644)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    return path


def read_evidence(path: str | os.PathLike) -> dict:
    """An evidence file's data; EvidenceError if it is not one, or of another schema."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise EvidenceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise EvidenceError(f"{path}: not a JSON evidence file ({exc})") from None
    if not isinstance(data, dict) or "schema" not in data:
        raise EvidenceError(f"{path}: not a pytest-traffic-replay evidence file (no 'schema' field)")
    if data["schema"] != SCHEMA:
        raise EvidenceError(f"{path}: evidence schema {data['schema']!r}, this version reads {SCHEMA!r}; "
                            "merge files written by the same version of pytest-traffic-replay")
    return data


def check_mergeable(named: list[tuple[str, dict]]) -> tuple[int | None, list[int], list[str]]:
    """Whether the files may be merged: one schema, one capture (sha256), each shard once, one split.
    EvidenceError (naming the files) if not; else (N of the split or None, missing shards, warnings)."""
    if not named:
        raise EvidenceError("no evidence files to merge")
    first_name, first = named[0]
    for name, data in named:
        if data.get("schema") != SCHEMA:
            raise EvidenceError(f"{name}: evidence schema {data.get('schema')!r}, expected {SCHEMA!r}: "
                                "merge files written by the same version of pytest-traffic-replay")
    for name, data in named:
        files = (data.get("captures") or {}).get("files") if isinstance(data.get("captures"), dict) else None
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise EvidenceError(f"{name}: no captures.files list: not a complete evidence file")
        if not isinstance(data.get("run") or {}, dict) or not isinstance((data.get("run") or {}).get("shard") or {}, dict):
            raise EvidenceError(f"{name}: run (or run.shard) is not an object: not a complete evidence file")
    digests = {name: sorted(f.get("sha256") or "" for f in data["captures"]["files"]) for name, data in named}
    for name, data in named[1:]:
        if digests[name] != digests[first_name]:
            raise EvidenceError(
                f"{name} and {first_name} are evidence of different captures: sha256 "
                f"{', '.join(d[:12] for d in digests[name]) or 'none'} vs "
                f"{', '.join(d[:12] for d in digests[first_name]) or 'none'}; merge shards of one capture only")
    seen_runs: dict[str, str] = {}
    seen_shards: dict[tuple | None, str] = {}
    for name, data in named:
        run = data.get("run") or {}
        shard = run.get("shard")
        key = (shard["index"], shard["count"]) if shard else None
        run_id = run.get("id")
        if run_id and run_id in seen_runs:
            raise EvidenceError(f"{name} duplicates {seen_runs[run_id]} (the same run, id {run_id}): each shard "
                                "must be given once")
        if key in seen_shards:
            what = f"shard {key[0]} of {key[1]}" if key else "a whole run (not a shard)"
            raise EvidenceError(f"{name} and {seen_shards[key]} are both {what}: duplicate shards would count "
                                "requests twice")
        seen_runs[run_id] = name
        seen_shards[key] = name
    counts = {key[1] if key else None for key in seen_shards}
    if len(counts) > 1:
        raise EvidenceError("the files come from different splits (" + ", ".join(
            f"{n}: " + (f"shard {k[0]} of {k[1]}" if k else "whole run") for k, n in seen_shards.items())
            + "): merge the shards of one split")
    count = counts.pop()
    missing = sorted(set(range(1, count + 1)) - {k[0] for k in seen_shards if k}) if count else []
    warnings = []
    if missing:
        warnings.append(f"shard(s) {', '.join(map(str, missing))} of {count} missing: the merge covers "
                        f"{len(seen_shards)} of {count} shards")
    return count, missing, warnings + _setting_differences(named)


def _setting_differences(named: list[tuple[str, dict]]) -> list[str]:
    warnings = []
    for key in ("target", "pace", "selection"):
        def setting(data: dict, key: str = key):
            value = data.get(key)
            if key == "selection" and isinstance(value, dict):  # sample sizes differ by design
                value = {**value, "sample": {k: v for k, v in (value.get("sample") or {}).items() if k != "size"}}
            return json.dumps(value, sort_keys=True)
        if len({setting(data) for _, data in named}) > 1:
            warnings.append(f"shards differ in {key}: " + "; ".join(
                f"{name}: {setting(data)[:200]}" for name, data in named))
    return warnings


def merge_evidence(named: list[tuple[str, dict]], budgets: Iterable | None = None) -> tuple[dict, list[str]]:
    """Merge shard evidence: (merged evidence, warnings). Refuses (EvidenceError) files of other
    schemas, of different captures, duplicate shards, and shards of different splits.

    `budgets` (BudgetResults) are stored in the result; evaluating them is the caller's business."""
    _, missing, warnings = check_mergeable(named)
    shards = [_load(name, data) for name, data in named]
    for evidence in shards:  # a worker of a shard is named with its shard
        shard = evidence.run.shard.to_dict() if evidence.run.shard else None
        evidence.run.workers = [{**w, "shard": shard} for w in evidence.run.workers]
    merged = functools.reduce(Evidence.merge, shards)
    for warning in warnings:
        if warning not in merged.notes:
            merged.notes.append(warning)
            merged.known_gaps.append(warning)
    merged.run.missing_shards = missing or None
    merged.run.merged_from = [_shard_row(name, data) for name, data in named]
    merged.budgets = [_budget_dict(b) for b in budgets or ()]
    return merged.to_dict(), warnings


def _load(name: str, data: dict) -> Evidence:
    """A shard's Evidence, its sections checked: EvidenceError naming the file and the section."""
    section = "the file"
    try:
        evidence = Evidence.from_dict(data)
        for section, value in (("run.outcomes", evidence.run.outcomes), ("diff.ignored", evidence.diff.ignored),
                               ("diff.origins", evidence.diff.origins),
                               ("skipped.by_reason", evidence.skipped.by_reason),
                               ("incomplete.by_reason", evidence.incomplete.by_reason)):
            if not isinstance(value, dict) or not all(isinstance(n, int) for n in value.values()):
                raise TypeError("expected an object of counts")
        section = "aggregate"
        Aggregate.from_dict(evidence.aggregate)
    except (EvidenceError, TypeError, KeyError, ValueError, AttributeError) as exc:
        raise EvidenceError(f"{name}: {section} is malformed ({type(exc).__name__}: {exc})") from None
    return evidence


def _shard_row(name: str, data: dict) -> dict:
    """What a merge keeps of each shard: where it came from, how its run went, where it stopped."""
    run = data.get("run") or {}
    stop = (data.get("capacity") or {}).get("stopped")
    return {"file": name, "shard": run.get("shard"), "run_id": run.get("id"), "outcomes": run.get("outcomes") or {},
            "interrupted": bool(run.get("interrupted")), "exit_status": run.get("exit_status"),
            "wall_s": run.get("wall_s"),
            "budgets_failed": [b.get("budget") for b in data.get("budgets") or [] if not b.get("passed")],
            "stopped": stop}


__all__ = ["FILENAME", "SCHEMA", "Evidence", "EvidenceError", "Listing", "RunInfo", "build_evidence", "capture_file",
           "check_mergeable", "exchange_ref", "filename", "merge_evidence", "read_evidence", "sha256_file",
           "throughput_of", "write_evidence"]
