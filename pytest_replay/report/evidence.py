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
                       budgets_failed}] | null, missing_shards: [K...] | null,
                       verdict: {passed, exit_code, reasons} (a merge's gate, see report/merge.py) | null}
    captures          {files: [{path, name, bytes, sha256, format?}], first_ts_ns, last_ts_ns, first, last,
                       duration_s, exchanges, complete, incomplete, incomplete_by_reason,
                       requests_without_response, gaps, gap_bytes, skipped_streams, warning_counts}
    selection         {filters: [...], sample: {size, of, ...} | null, rewrites: [...], redaction: [...]}
                      (sample.size: exchanges this run or shard selected; a merge adds them up)
    pace              {speed, rate, max_wait_s, concurrency, ...} as given
    target            what requests were sent to
    write_policy      {policy, mocked, passed, skipped, flagged} (passed: writes sent; flagged: reads with a
                      body, sent)
    endpoints         per-endpoint rows (report.aggregate.row): count, recorded_ms and replayed_ms
                      {p50, p95, p99, max, mean}, error_pct, 5xx_pct, 4xx_pct, transport_errors,
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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

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
    "histograms": f"HDR histograms, 1 us .. {HIGHEST_US // 1_000_000} s, {SIGNIFICANT_FIGURES} significant "
                  "figures; mean and max are exact",
    "requests": "requests that reached the target: mocked writes and requests cancelled by a stop excluded",
    "error_rates": "percent of requests; errors = transport failures + 5xx; recorded rates are over the "
                   "recorded responses of the same requests",
    "lateness": "send time - deadline; early sends are counted, clamped at 0 in the histogram; not measured "
                "at --speed 0 (no schedule)",
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


def build_evidence(*, aggregate: Aggregate, captures: Iterable = (), capture_summary: dict | None = None,
                   target: str = "", pace: dict | None = None, filters: Iterable[str] = (),
                   rewrites: Iterable[str] = (), redaction: Iterable[str] = (), sample: dict | int | None = None,
                   write_policy: str | dict | None = None, budgets: Iterable = (), skipped: Iterable = (),
                   incomplete: Iterable = (), notes: Iterable[str] = (), interrupted: bool = False,
                   planned: int | None = None, shard: tuple[int, int] | dict | None = None,
                   outcomes: dict | None = None, started: str | None = None, finished: str | None = None,
                   ignored: dict | None = None, noise: dict | None = None, run_id: str | None = None,
                   origins: dict | None = None,
                   merged_from: list | None = None, redactor=DEFAULT_REDACTOR, extra: dict | None = None,
                   exit_status: int | None = None, wall_s: float | None = None, throughput: dict | None = None,
                   missing_shards: list[int] | None = None, latency_caveats: dict | None = None,
                   workers: Iterable[dict] = ()) -> dict:
    """The evidence of one run (or of merged shards) as plain JSON-ready data.

    captures: capture file paths (hashed here) or dicts with a sha256; capture_summary:
    capture.summary.summary_data(stats); skipped: (exchange, reason) pairs of exchanges selected but
    not replayed; incomplete: Exchanges incomplete in the capture (reasons from their flags), or pairs;
    budgets: BudgetResults; shard: (K, N) 1-based; notes: known gaps the run knows about; ignored:
    why -> differences (default: the aggregate's); noise: NoiseModel.summary() (each rule's `hid`
    is counted from the aggregate); outcomes:
    the run's test items by outcome (budgets left out); exit_status: pytest's; wall_s: the replay's
    wall time; throughput: given by a merge (else derived from wall_s); workers:
    xdist workers of a run reaching other machines, each with its host and measured clock offset."""
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
    data = {
        "schema": SCHEMA,
        "tool": {"name": "pytest-traffic-replay", "version": _version()},
        "created": _now(),
        "run": {"id": run_id or uuid.uuid4().hex, "interrupted": bool(interrupted), "planned": planned,
                "started": started, "finished": finished, "shard": shard, "outcomes": dict(outcomes or {}),
                "exit_status": exit_status, "wall_s": _r(wall_s), "merged_from": merged_from,
                "missing_shards": missing_shards, "verdict": None,
                "workers": [dict(w) for w in workers]},
        "captures": capture_section,
        "selection": {"filters": [str(f) for f in filters], "sample": sample, "rewrites": [str(r) for r in rewrites],
                      "redaction": [str(r) for r in redaction]},
        "pace": dict(pace or {}),
        "target": str(target),
        "write_policy": policy,
        "endpoints": rows,
        "totals": totals,
        "errors": {"requests": overall.requests, "transport": dict(overall.errors), "status": dict(overall.status),
                   "recorded_status": dict(overall.recorded_status),
                   "rates_pct": {"5xx": _r(overall.rate("5xx")), "4xx": _r(overall.rate("4xx")),
                                 "errors": _r(overall.rate("errors")),
                                 "recorded_5xx": _r(overall.rate("5xx", recorded=True)),
                                 "recorded_4xx": _r(overall.rate("4xx", recorded=True))}},
        "lateness": None if unscheduled else {
            **{f"{name}_ms": ms_number(lateness[q], US_PER_MS) for name, q in (("p50", 50), ("p99", 99), ("max", 100))},
            "early": overall.early, "causes": overall.causes_row(), "spilled": overall.spilled},
        "throughput": throughput,
        "diff": {"judged": overall.judged, "passed": overall.judged - overall.failed, "failed": overall.failed,
                 "by_part": dict(overall.failures),
                 "ignored": dict(overall.ignored if ignored is None else ignored), "noise": _noise(noise, aggregate),
                 "origins": dict(origins or {})},
        "failures": aggregate.failure_groups.section(overall.failed),
        "budgets": [_budget_dict(b) for b in budgets],
        "latency_caveats": dict(latency_caveats or {}),
        "skipped": _listing(skipped, redactor) if not isinstance(skipped, dict) else skipped,
        "incomplete": _listing(incomplete, redactor) if not isinstance(incomplete, dict) else incomplete,
        "known_gaps": _derived_gaps(aggregate, capture_section, interrupted, planned) + notes,
        "notes": notes,
        "method": METHOD,
        "aggregate": aggregate.to_dict(),
    }
    if extra:
        data["extra"] = extra
    return data


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


def merge_evidence(named: list[tuple[str, dict]], budgets: Iterable | None = None) -> tuple[dict, list[str]]:
    """Merge shard evidence: (merged evidence, warnings). Refuses (EvidenceError) files of other
    schemas, of different captures, duplicate shards, and shards of different splits.

    `budgets` (BudgetResults) are stored in the result; evaluating them is the caller's business."""
    if not named:
        raise EvidenceError("no evidence files to merge")
    warnings: list[str] = []
    first_name, first = named[0]
    for name, data in named:
        if data.get("schema") != SCHEMA:
            raise EvidenceError(f"{name}: evidence schema {data.get('schema')!r}, expected {SCHEMA!r}: "
                                "merge files written by the same version of pytest-traffic-replay")
    digests = {name: sorted(f.get("sha256") or "" for f in data["captures"]["files"]) for name, data in named}
    for name, data in named[1:]:
        if digests[name] != digests[first_name]:
            raise EvidenceError(
                f"{name} and {first_name} are evidence of different captures: sha256 "
                f"{', '.join(d[:12] for d in digests[name]) or 'none'} vs "
                f"{', '.join(d[:12] for d in digests[first_name]) or 'none'}; merge shards of one capture only")
    seen_runs: dict[str, str] = {}
    seen_shards: dict[tuple, str] = {}
    counts = set()
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
        counts.add(key[1] if key else None)
    if len(counts) > 1:
        raise EvidenceError("the files come from different splits (" + ", ".join(
            f"{n}: " + (f"shard {k[0]} of {k[1]}" if k else "whole run") for k, n in seen_shards.items())
            + "): merge the shards of one split")
    count = counts.pop()
    missing: list[int] = []
    if count:
        missing = sorted(set(range(1, count + 1)) - {k[0] for k in seen_shards})
        if missing:
            warnings.append(f"shard(s) {', '.join(map(str, missing))} of {count} missing: the merge covers "
                            f"{len(seen_shards)} of {count} shards")
    aggregate = Aggregate.merged(Aggregate.from_dict(data["aggregate"]) for _, data in named)
    notes: list[str] = []
    for _, data in named:
        for note in data.get("notes") or []:
            if note not in notes:
                notes.append(note)
    for key in ("target", "pace", "selection"):
        def setting(data: dict, key: str = key):
            value = data.get(key)
            if key == "selection" and isinstance(value, dict):  # sample sizes differ by design
                value = {**value, "sample": {k: v for k, v in (value.get("sample") or {}).items() if k != "size"}}
            return json.dumps(value, sort_keys=True)
        values = {setting(data) for _, data in named}
        if len(values) > 1:
            warnings.append(f"shards differ in {key}: " + "; ".join(
                f"{name}: {setting(data)[:200]}" for name, data in named))
    notes.extend(w for w in warnings if w not in notes)
    runs = [data.get("run") or {} for _, data in named]
    outcomes: Counter = Counter()
    for run in runs:
        outcomes.update(run.get("outcomes") or {})
    planned = [run.get("planned") for run in runs]
    ignored: Counter = Counter()
    origins: Counter = Counter()
    noise: dict = {}
    for _, data in named:
        ignored.update((data.get("diff") or {}).get("ignored") or {})
        origins.update((data.get("diff") or {}).get("origins") or {})
        noise = noise or (data.get("diff") or {}).get("noise") or {}  # learned from the whole capture: alike
    sample = first["selection"]["sample"]
    samples = [data["selection"]["sample"] for _, data in named]
    if all(isinstance(s, dict) and isinstance(s.get("size"), int) for s in samples):
        sample = {**sample, "size": sum(s["size"] for s in samples)}  # each shard's own selection
    started = [run["started"] for run in runs if run.get("started")]
    finished = [run["finished"] for run in runs if run.get("finished")]
    walls = [run["wall_s"] for run in runs if run.get("wall_s") is not None]
    rates = [(data.get("throughput") or {}).get("requests_per_s") for _, data in named]
    throughput = {"requests": aggregate.overall.requests, "wall_s": max(walls) if walls else None,
                  "requests_per_s": round(sum(rates), 1) if rates and None not in rates else None}
    merged = build_evidence(
        aggregate=aggregate, captures=first["captures"]["files"], capture_summary=first["captures"],
        target=first.get("target", ""), pace=first.get("pace"), filters=first["selection"]["filters"],
        rewrites=first["selection"]["rewrites"], redaction=first["selection"]["redaction"],
        sample=sample, write_policy=(first.get("write_policy") or {}).get("policy"),
        budgets=budgets if budgets is not None else (), skipped=_merge_listing(d.get("skipped") for _, d in named),
        incomplete=_merge_listing(d.get("incomplete") for _, d in named), notes=notes,
        interrupted=any(run.get("interrupted") for run in runs),
        planned=sum(planned) if all(p is not None for p in planned) else None, outcomes=dict(outcomes),
        started=min(started) if started else None, finished=max(finished) if finished else None,
        ignored=dict(ignored), noise=noise, origins=dict(origins), throughput=throughput,
        latency_caveats=first.get("latency_caveats"), wall_s=max(walls) if walls else None,
        missing_shards=missing or None,
        workers=[{**w, "shard": (data.get("run") or {}).get("shard")} for _, data in named
                 for w in (data.get("run") or {}).get("workers") or ()], merged_from=[_shard_row(name, data) for name, data in named])
    return merged, warnings


def _shard_row(name: str, data: dict) -> dict:
    """What a merge keeps of each shard: where it came from and how its run went."""
    run = data.get("run") or {}
    return {"file": name, "shard": run.get("shard"), "run_id": run.get("id"), "outcomes": run.get("outcomes") or {},
            "interrupted": bool(run.get("interrupted")), "exit_status": run.get("exit_status"),
            "wall_s": run.get("wall_s"),
            "budgets_failed": [b.get("budget") for b in data.get("budgets") or [] if not b.get("passed")]}


def _merge_listing(listings: Iterable[dict | None]) -> dict:
    by_reason: Counter = Counter()
    examples: list = []
    for listing in listings:
        if not listing:
            continue
        by_reason.update(listing.get("by_reason") or {})
        examples.extend(listing.get("examples") or [])
    return {"total": sum(by_reason.values()), "by_reason": dict(by_reason), "examples": examples[:MAX_EXAMPLES]}


__all__ = ["FILENAME", "SCHEMA", "EvidenceError", "build_evidence", "capture_file", "exchange_ref", "filename",
           "merge_evidence", "read_evidence", "sha256_file", "throughput_of", "write_evidence"]
