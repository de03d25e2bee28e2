"""Run-wide numbers that merge exactly: HDR latency histograms and counters, per endpoint and overall.

One `Aggregate` per process. The plugin adds every replayed exchange to it (with its observation and
verdict); pytest-xdist workers ship `to_dict()` in `workeroutput`, shards write it into their
evidence file, and `merge()` adds them up. Histograms add bucket by bucket, so percentiles of a merged
aggregate are *exactly* those of one aggregate fed all the requests.

Histograms follow HdrHistogram (the `hdrh` package): microsecond values from 1 µs to 1 hour with 3
significant figures (0.1% resolution). The bucket layout and the wire format (`encode()`, base64 of the
compressed V2 payload) are HDR's; counts are kept sparse (bucket index -> count) because a dense HDR
array of this range is ~230 KB, too much for three histograms times a thousand endpoints. Exact sum,
min and max are kept beside the buckets, so `mean` and `max` are exact too.

Definitions (the budgets and the evidence use these):
  requests       observations from the target: sent, not mocked, not cancelled by a stop
  latency        Observation.latency_ns (time to the first response byte), requests with a response
  response       Observation.response_ns, the response time from schedule of those same requests: from
                 the instant each would have been sent had the replayer been on time (its deadline plus
                 the time it queued for the target: its connection busy, a barrier, a slot) to its first
                 response byte; latency plus that queueing (coordinated omission corrected, as wrk2)
  recorded       Exchange.recorded_latency_ns of those same requests, when the capture has it
  lateness       send time minus deadline, clamped at 0 in the histogram; `early` counts negatives
  late_causes    lateness by cause (Observation.lateness_causes): per cause, a histogram of the
                 requests that were late for it (µs, values > 0 only: its count is the requests
                 it delayed, its sum the time it cost); causes in LATENESS_CAUSES
  spilled        requests sent on an extra connection because their own was busy (--replay-connections spill)
  status         replayed status class (2xx..5xx); `recorded_status`: the capture's, same requests
  errors         transport failures by kind (refused, reset, timeout, ...); "cancelled" is kept
                 apart in `cancelled` (the run was stopped), not counted as a request
  failures       failed verdicts by part (status/header/body/latency/error; each part once per verdict)
  ignored        differences not counted as failures, by reason: "rule json:$.id", "learned noise
                 GET /x: json:$.request_id", "volatile header date"... (Verdict.ignored, summed)
  failure_groups failed exchanges by diff signature, with a few examples each (report/failures.py)
  writes         mocked / passed / skipped write requests (by the write policy), and flagged: reads
                 with a body that were sent
  write_reasons  why requests were writes or flagged ("method PURGE", "X-HTTP-Method-Override: DELETE")
  skipped        exchanges not replayed, by reason (Aggregate.skip)
  timeline       per-second requests, status classes, errors, latency and lateness on the capture's
                 timeline (report/timeline.py), bounded
Sans-IO: values in, values out; no pytest, no clock, no files.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

try:
    from _collections import _count_elements  # Counter's own C helper: counts an iterable into a dict
except ImportError:  # pragma: no cover - other Pythons
    def _count_elements(mapping: dict, iterable) -> None:
        for item in iterable:
            mapping[item] = mapping.get(item, 0) + 1

from hdrh.histogram import HdrHistogram

from ..http.normalize import endpoint_of
from ..http.units import US_PER_MS, fmt_ms, ms_number
from .failures import FailureGroups
from .timeline import Timeline

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3
MAX_ENDPOINTS = 1000  # endpoints tracked one by one; the rest are folded into OTHER
MAX_REASONS = 100  # distinct skip reasons kept; the rest are counted under OTHER
MAX_IGNORED = 1000  # distinct reasons for ignored differences kept; the rest are counted under OTHER
FAST_CAUSES = True  # Aggregate.add: lateness causes (and response time) of an observation that waited at most for
# its connection, from its fields (False: through Observation.lateness_causes and .response_ns, the reference)
PENDING = 4096  # values a Histogram holds before folding them into its buckets (Histogram.record)
_FLUSHING = threading.Lock()
OTHER = "(other)"
ALL = "(all)"
METRICS = ("latency", "recorded", "lateness", "response")
WRITE_OUTCOMES = {"mock": "mocked", "send": "passed", "pass": "passed", "skip": "skipped"}  # policy.writes
CANCELLED = "cancelled"  # schedule.target.CANCELLED (kept literal: report/ does not import schedule/)
# schedule.target.LATENESS_CAUSES, with what each means to a reader of the report
LATENESS_CAUSES = {
    "engine": "the replayer behind schedule",
    "connection": "waiting for the connection's previous response",
    "barrier": "waiting for a sent write recorded before it",
    "concurrency": "waiting for a free slot (--replay-concurrency)",
}

_TEMPLATE = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
_UNIT = _TEMPLATE.unit_magnitude
_HALF_MAG = _TEMPLATE.sub_bucket_half_count_magnitude
_HALF = _TEMPLATE.sub_bucket_half_count
_MASK = _TEMPLATE.sub_bucket_mask
_SHIFT = _UNIT + _HALF_MAG + 1
# values 0.._MASK (2047 us) lie in HDR's first bucket, where a value's index is itself (_index; tested exhaustively)
_FIRST_BUCKET_TOP = _MASK if _UNIT == 0 else -1
_HIGHEST_EQUIVALENT: dict[int, int] = {}  # bucket index -> highest value it holds (memo)


def _index(value: int) -> int:
    """HDR's counts index of `value` (same arithmetic as HdrHistogram._counts_index_for, inlined)."""
    bucket = (value | _MASK).bit_length() - _SHIFT
    return ((bucket + 1) << _HALF_MAG) + (value >> (bucket + _UNIT)) - _HALF


def _highest(index: int) -> int:
    value = _HIGHEST_EQUIVALENT.get(index)
    if value is None:
        value = _HIGHEST_EQUIVALENT[index] = _TEMPLATE.get_highest_equivalent_value(
            _TEMPLATE.get_value_from_index(index))
    return value


def _lowest(index: int) -> int:
    return _TEMPLATE.get_value_from_index(index)


def to_us(ns: int) -> int:
    return (ns + 500) // 1000 if ns > 0 else 0


class Histogram:
    """A sparse HDR histogram of microsecond values (HDR's buckets, exact sum/min/max beside them).

    `record()` of one value appends it to a pending list, folded into the buckets in bulk (`_flush`: one
    C-level count of the bucket indexes, sum, min and max) before anything reads the histogram or when
    PENDING values wait: the judge thread of a streamed run records ten values per exchange, and a
    bucket update each cost more than the rest of recording it (issue 13.1). `record_now()` is the
    reference, which updates the buckets at once; both give equal histograms (tests/test_judgefast.py)."""

    __slots__ = ("_counts", "_total", "_sum", "_min", "_max", "_pending")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self._total = 0
        self._sum = 0
        self._min: int | None = None
        self._max: int | None = None
        self._pending: list[int] = []

    def record(self, us: int, count: int = 1) -> None:
        if count != 1:
            return self.record_now(us, count)
        pending = self._pending
        pending.append(us)
        if len(pending) >= PENDING:
            self._flush()

    def record_now(self, us: int, count: int = 1) -> None:
        self._flush()
        if us < 0:
            us = 0
        elif us > HIGHEST_US:
            us = HIGHEST_US
        index = _index(us)
        counts = self._counts
        counts[index] = counts.get(index, 0) + count
        self._total += count
        self._sum += us * count
        if self._min is None or us < self._min:
            self._min = us
        if self._max is None or us > self._max:
            self._max = us

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        with _FLUSHING:  # (a reader in another thread may flush while the judge thread records)
            n = len(pending)
            if not n:
                return
            values = pending[:n]
            del pending[:n]  # what another thread appends meanwhile stays, for the next flush
            low, high = min(values), max(values)
            if low < 0 or high > HIGHEST_US:
                values = [0 if us < 0 else HIGHEST_US if us > HIGHEST_US else us for us in values]
                low, high = min(values), max(values)
            if high <= _FIRST_BUCKET_TOP:  # every value its own index (a latency under 2 ms): counted in C
                _count_elements(self._counts, values)
            else:
                mask, shift, half_mag, unit, half = _MASK, _SHIFT, _HALF_MAG, _UNIT, _HALF
                _count_elements(self._counts, [  # _index(us), inlined (a call per value cost as much again)
                    (((b := (us | mask).bit_length() - shift) + 1) << half_mag) + (us >> (b + unit)) - half
                    for us in values])
            self._total += n
            self._sum += sum(values)
            if self._min is None or low < self._min:
                self._min = low
            if self._max is None or high > self._max:
                self._max = high

    # the buckets and exact figures, with what is pending folded in first
    @property
    def counts(self) -> dict[int, int]:
        self._flush()
        return self._counts

    @counts.setter
    def counts(self, value: dict[int, int]) -> None:
        self._flush()
        self._counts = value

    @property
    def total(self) -> int:
        self._flush()
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._flush()
        self._total = value

    @property
    def sum(self) -> int:
        self._flush()
        return self._sum

    @sum.setter
    def sum(self, value: int) -> None:
        self._flush()
        self._sum = value

    @property
    def min(self) -> int | None:
        self._flush()
        return self._min

    @min.setter
    def min(self, value: int | None) -> None:
        self._flush()
        self._min = value

    @property
    def max(self) -> int | None:
        self._flush()
        return self._max

    @max.setter
    def max(self, value: int | None) -> None:
        self._flush()
        self._max = value

    def merge(self, other: Histogram) -> Histogram:
        counts = self.counts
        for index, count in other.counts.items():
            counts[index] = counts.get(index, 0) + count
        self._total += other.total
        self._sum += other.sum
        if other.min is not None and (self._min is None or other.min < self._min):
            self._min = other.min
        if other.max is not None and (self._max is None or other.max > self._max):
            self._max = other.max
        return self

    def percentiles(self, qs: Iterable[float]) -> dict[float, int | None]:
        """Values (µs) at percentiles q in 0..100, as HdrHistogram.get_value_at_percentile computes
        them (the highest value equivalent to the bucket reaching the target count), but never above
        the exact maximum; q=100 is the exact maximum, q=0 the exact minimum."""
        qs = list(qs)
        if not self.total:
            return {q: None for q in qs}
        out: dict[float, int | None] = {}
        wanted = []
        for q in qs:
            if q >= 100:
                out[q] = self.max
            elif q <= 0:
                out[q] = self.min
            else:
                wanted.append((max(int(q * self.total / 100 + 0.5), 1), q))
        if wanted:
            wanted.sort()
            i, seen = 0, 0
            for index in sorted(self.counts):
                seen += self.counts[index]
                while i < len(wanted) and seen >= wanted[i][0]:
                    out[wanted[i][1]] = min(_highest(index), self.max)
                    i += 1
                if i == len(wanted):
                    break
        return out

    def percentile(self, q: float) -> int | None:
        return self.percentiles((q,))[q]

    @property
    def mean(self) -> float | None:
        return self.sum / self.total if self.total else None

    def count_beyond(self, us: float, above: bool = True) -> int:
        """Requests whose bucket lies wholly above (or below) `us`."""
        if above:
            return sum(c for i, c in self.counts.items() if _lowest(i) > us)
        return sum(c for i, c in self.counts.items() if _highest(i) < us)

    # -- wire format ------------------------------------------------------------------------
    def encode(self) -> str:
        """HDR's compressed V2 encoding (base64): readable by any HdrHistogram implementation."""
        hist = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)
        if self.counts:
            counts = hist.counts  # the payload's counts array: set in place (record_value is ~7 µs a call)
            for index, count in self.counts.items():
                counts[index] = count
            hist.set_internal_tacking_values(min(self.counts), max(self.counts), self.total)
        encoded = hist.encode()
        return encoded.decode("ascii") if isinstance(encoded, bytes) else encoded

    def to_dict(self) -> dict | None:
        if not self.total:
            return None
        return {"hdr": self.encode(), "count": self.total, "sum_us": self.sum, "min_us": self.min,
                "max_us": self.max}

    @classmethod
    def from_dict(cls, data: dict | None) -> Histogram:
        hist = cls()
        if not data:
            return hist
        decoded = HdrHistogram.decode(data["hdr"])
        same = (decoded.unit_magnitude, decoded.sub_bucket_count) == (_UNIT, _TEMPLATE.sub_bucket_count)
        try:  # the counts array (ctypes) sliced at once: ~100x faster than get_count_at_index
            length = min(decoded.counts_len, decoded.encoder.payload.counts_len)
            values = list(decoded.counts[:length])
        except AttributeError:  # pragma: no cover - other hdrh versions
            values = [decoded.get_count_at_index(i) for i in range(decoded.counts_len)]
        for index, count in enumerate(values):
            if count:
                target = index if same else _index(min(decoded.get_value_from_index(index), HIGHEST_US))
                hist.counts[target] = hist.counts.get(target, 0) + count
        hist.total = sum(hist.counts.values())
        if hist.total != data.get("count", hist.total):
            raise ValueError(f"histogram holds {hist.total} values, its header says {data['count']}")
        hist.sum = int(data.get("sum_us", 0))
        hist.min = data.get("min_us")
        hist.max = data.get("max_us")
        return hist

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Histogram) and (self.counts, self.total, self.sum, self.min, self.max) == (
            other.counts, other.total, other.sum, other.min, other.max)

    def __repr__(self) -> str:
        return f"Histogram(total={self.total}, min={self.min}, max={self.max})"


_COUNTERS = ("status", "recorded_status", "errors", "failures", "writes", "write_reasons", "skipped", "ignored")


class Stats:
    """The numbers of one endpoint (or of the whole run): histograms plus counters."""

    __slots__ = ("requests", "early", "judged", "failed", "latency", "recorded", "lateness", "late_causes",
                 "spilled", "response", *_COUNTERS)

    def __init__(self) -> None:
        self.requests = 0
        self.early = 0  # sent before their deadline (lateness < 0)
        self.spilled = 0  # sent on an extra connection (--replay-connections spill)
        self.late_causes: dict[str, Histogram] = {}  # cause -> lateness it caused (µs > 0), LATENESS_CAUSES
        self.judged = 0
        self.failed = 0
        self.latency = Histogram()
        self.recorded = Histogram()
        self.lateness = Histogram()
        self.response = Histogram()  # response time from schedule (µs)
        self.status: Counter = Counter()
        self.recorded_status: Counter = Counter()
        self.errors: Counter = Counter()  # transport error kind -> count (incl. "cancelled")
        self.failures: Counter = Counter()  # verdict part -> failed verdicts involving it
        self.writes: Counter = Counter()  # mocked / passed / skipped / flagged
        self.write_reasons: Counter = Counter()  # why (policy.writes.Classification.reason) -> requests
        self.skipped: Counter = Counter()  # reason -> exchanges not replayed
        self.ignored: Counter = Counter()  # why -> differences ignored (rules, learned noise, volatile headers)

    # -- derived ----------------------------------------------------------------------------
    @property
    def transport_errors(self) -> int:
        return sum(n for kind, n in self.errors.items() if kind != CANCELLED)

    @property
    def recorded_responses(self) -> int:
        return sum(self.recorded_status.values())

    def count(self, what: str, recorded: bool = False) -> int:
        """How many requests count for an error metric: '5xx', '4xx' or 'errors' (transport + 5xx).
        Recorded: the capture's status classes (a capture has no transport errors)."""
        status = self.recorded_status if recorded else self.status
        if what == "errors":
            return status["5xx"] + (0 if recorded else self.transport_errors)
        return status[what]

    def rate(self, what: str, recorded: bool = False) -> float | None:
        """Percent of requests (replayed) or of recorded responses (recorded)."""
        total = self.recorded_responses if recorded else self.requests
        return 100.0 * self.count(what, recorded) / total if total else None

    def histogram(self, metric: str) -> Histogram:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
        return getattr(self, metric)

    # -- combining --------------------------------------------------------------------------
    def merge(self, other: Stats) -> Stats:
        self.requests += other.requests
        self.early += other.early
        self.judged += other.judged
        self.failed += other.failed
        self.latency.merge(other.latency)
        self.recorded.merge(other.recorded)
        self.lateness.merge(other.lateness)
        self.response.merge(other.response)
        self.spilled += other.spilled
        for cause, hist in other.late_causes.items():
            self.late_cause(cause).merge(hist)
        for name in _COUNTERS:
            getattr(self, name).update(getattr(other, name))
        return self

    def late_cause(self, cause: str) -> Histogram:
        hist = self.late_causes.get(cause)
        if hist is None:
            hist = self.late_causes[cause] = Histogram()
        return hist

    def causes_row(self) -> dict:
        """Lateness by cause, causes in LATENESS_CAUSES order: {cause: {requests, share_pct, p50, p99,
        max, total (ms)}}; share_pct is the cause's part of all the lateness measured."""
        total = sum(h.sum for h in self.late_causes.values())
        out = {}
        for cause in [c for c in LATENESS_CAUSES if c in self.late_causes] + sorted(
                set(self.late_causes) - set(LATENESS_CAUSES)):
            hist = self.late_causes[cause]
            if not hist.total:
                continue
            qs = hist.percentiles((50, 99, 100))
            out[cause] = {"requests": hist.total, "share_pct": round(100.0 * hist.sum / total, 1) if total else None,
                          "p50_ms": ms_number(qs[50], US_PER_MS), "p99_ms": ms_number(qs[99], US_PER_MS),
                          "max_ms": ms_number(qs[100], US_PER_MS), "total_ms": ms_number(hist.sum, US_PER_MS)}
        return out

    def to_dict(self) -> dict:
        out = {"requests": self.requests, "early": self.early, "judged": self.judged, "failed": self.failed}
        out.update({name: self.histogram(name).to_dict() for name in METRICS})
        out["late_causes"] = {cause: hist.to_dict() for cause, hist in sorted(self.late_causes.items()) if hist.total}
        out["spilled"] = self.spilled
        out.update({name: dict(getattr(self, name)) for name in _COUNTERS})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Stats:
        stats = cls()
        for name in ("requests", "early", "judged", "failed"):
            setattr(stats, name, int(data.get(name, 0)))
        for name in METRICS:
            setattr(stats, name, Histogram.from_dict(data.get(name)))
        causes = data.get("late_causes") or {}
        stats.late_causes = {cause: Histogram.from_dict(hist) for cause, hist in causes.items()}
        stats.spilled = int(data.get("spilled", 0))  # absent from files written before it existed
        for name in _COUNTERS:
            setattr(stats, name, Counter({k: int(v) for k, v in (data.get(name) or {}).items()}))
        return stats

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stats) and self.to_comparable() == other.to_comparable()

    def to_comparable(self) -> tuple:
        return (self.requests, self.early, self.judged, self.failed, self.latency, self.recorded, self.lateness,
                self.spilled, {c: h for c, h in self.late_causes.items() if h.total}, self.response,
                *(dict(+getattr(self, name)) for name in _COUNTERS))


def _causes_of(observation) -> dict[str, int]:
    """Lateness by cause (ns) of an observation; one without the split (a baseline's) is the engine's."""
    causes = getattr(observation, "lateness_causes", None)
    if causes is not None:
        return causes
    return {"engine": max(observation.sent_ns - observation.deadline_ns, 0)}


def _late(stats: Stats, cause: str, ns: int) -> None:
    """`ns` (> 0) of lateness for `cause` into its histogram (under 0.5 us: none)."""
    us = (ns + 500) // 1000
    if us:
        stats.late_cause(cause).record(us)


def _count(counter: Counter, key: str | None) -> None:
    """One more `key` (none for None or ""), under OTHER once MAX_REASONS distinct keys are kept."""
    if key:
        counter[key if key in counter or len(counter) < MAX_REASONS else OTHER] += 1


_CLASSES = {status: f"{status // 100}xx" for status in range(100, 600)}  # (an f-string per status cost ~0.2 us)


# The overall Stats of an Aggregate are derived from its endpoints' when read (Aggregate.overall), except the
# counters with a cap on distinct keys: which reasons the overall keeps and which go under OTHER depends on the
# order they came in across all endpoints, which the endpoints' counters (capped apart) do not hold.
_CAPPED = ("ignored", "skipped", "write_reasons")
_SUMMED = tuple(name for name in _COUNTERS if name not in _CAPPED)
MEMO = 4096  # (method, target) -> endpoint Stats remembered by Aggregate._stats, at most


class Aggregate:
    """Per-endpoint (method + path template) and overall statistics of a replay; mergeable.

    Each exchange is recorded once, into its endpoint's Stats (issue 13.1: recording it into the overall
    Stats too was half the judge thread's time in a streamed run). `overall` is derived when read: the sum
    of the endpoints' (histograms and counters add exactly, so its percentiles are those of one histogram fed
    every value), kept until the next add, skip or merge. Kept as the run goes, for the overall: the counters
    with a cap on distinct keys (`ignored`, `skipped`, `write_reasons`: which keys the run-wide cap keeps
    depends on the order they came in) and the order in which each summed counter's keys first came (so that
    the overall's counters list their keys as they did when recorded directly: the evidence, `most_common`
    ties). Threads: add/skip/merge and the derivation hold one lock, so a reader in another thread sees
    whole exchanges; the Stats `overall` returns is shared until the next change (do not mutate it unless
    that is what you mean: session/baseline.py's view does, on a copy it does not add to)."""

    SCHEMA = 2  # 2: `ignored` counters and `failure_groups`

    def __init__(self, max_endpoints: int = MAX_ENDPOINTS) -> None:
        self.max_endpoints = max_endpoints
        self.endpoints: dict[str, Stats] = {}
        self.folded = 0  # exchanges counted under OTHER because the endpoint cap was reached
        self.failure_groups = FailureGroups()
        self.timeline = Timeline()  # per-second counts on the capture's timeline (report/timeline.py)
        self._lock = threading.RLock()
        self._overall: Stats | None = None  # the derived overall Stats, until the next change
        self._memo: dict[tuple[str, str], Stats] = {}  # (method, target) -> its endpoint's Stats (not folded)
        # the overall's capped counters, counted as the exchanges come (as the overall's were)
        self._ignored: Counter = Counter()
        self._skipped: Counter = Counter()
        self._write_reasons: Counter = Counter()
        # each summed counter's keys in the order they first came (dicts as ordered sets)
        self._order: dict[str, dict[str, None]] = {name: {} for name in _SUMMED}

    def __getstate__(self) -> dict:  # copy and pickle: a lock does not copy (a fresh one, the memo empty)
        state = dict(self.__dict__)
        state.update(_lock=None, _memo={}, _overall=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- the overall Stats, derived ----------------------------------------------------------
    @property
    def overall(self) -> Stats:
        """The whole run's Stats: the endpoints' summed (derived on first read after a change)."""
        overall = self._overall
        if overall is None:
            with self._lock:
                overall = self._overall
                if overall is None:
                    overall = self._overall = self._derive()
        return overall

    def _derive(self) -> Stats:
        total = Stats()
        for stats in self.endpoints.values():
            total.merge(stats)  # (the capped counters summed too, then replaced below by the run-wide ones)
        for name, order in self._order.items():  # the keys in the order they came, as recorded directly
            summed = getattr(total, name)
            if summed and list(summed) != list(order)[:len(summed)]:
                ordered = Counter({key: summed[key] for key in order if key in summed})
                for key, n in summed.items():
                    if key not in ordered:
                        ordered[key] = n
                setattr(total, name, ordered)
        total.ignored = Counter(self._ignored)
        total.skipped = Counter(self._skipped)
        total.write_reasons = Counter(self._write_reasons)
        return total

    # -- feeding ----------------------------------------------------------------------------
    def _stats(self, method: str, target: str) -> Stats:
        """The Stats an exchange counts in: its endpoint's, or OTHER's once the endpoint cap is reached
        (`folded` counts those). Remembered per (method, target) unless folded (each fold is counted)."""
        memo = self._memo
        stats = memo.get((method, target))
        if stats is not None:
            return stats
        key = endpoint_of(method, target)
        stats = self.endpoints.get(key)
        if stats is None:
            if len(self.endpoints) >= self.max_endpoints and key != OTHER:
                self.folded += 1
                stats = self.endpoints.get(OTHER)
                if stats is None:
                    stats = self.endpoints[OTHER] = Stats()
                return stats
            stats = self.endpoints[key] = Stats()
        if len(memo) >= MEMO:
            memo.clear()
        memo[(method, target)] = stats
        return stats

    def add(self, exchange, observation, verdict=None, *, write: str | None = None, why: str | None = None,
            shown: str = "") -> None:
        """Count one replayed exchange. `observation` is its schedule.target.Observation; `verdict` its
        verdicts.diff.Verdict (if judged); `write` is "mocked" (answered from the recording, not sent:
        counted, not measured), "passed" (a write sent to the target), "flagged" (a read with a body,
        sent) or None (a read). The write policy's decisions "mock"/"send"/"skip" are accepted too.
        `why`: the reason it is a write (or flagged). `shown`: a failed verdict's rendered failure
        (masked), kept as an example of its failure group."""
        request = exchange.request
        self._lock.acquire()  # (released in the finally below: whole exchanges for a reader in another thread)
        try:
            stats = self._stats(request.method, request.target)
            order = self._order
            if write is not None:
                write = WRITE_OUTCOMES.get(write, write)
                stats.writes[write] += 1
                order["writes"].setdefault(write)
                if why:
                    _count(stats.write_reasons, why)
                    _count(self._write_reasons, why)
            if write in ("mocked", "skipped") or observation is None:
                return
            kind = observation.error_kind
            if kind == CANCELLED:
                stats.errors[kind] += 1
                order["errors"].setdefault(kind)
                return
            stats.requests += 1
            lateness = observation.sent_ns - observation.deadline_ns
            lateness_us = (lateness + 500) // 1000 if lateness > 0 else 0  # to_us(), inlined
            if lateness < 0:
                stats.early += 1
            stats.lateness.record(lateness_us)
            queued = None  # Observation.queued_ns, when known here
            lane = getattr(observation, "lane_wait_ns", None)  # (a baseline's has no waits: all the engine's)
            if not FAST_CAUSES or lane is not None and (lane < 0 or observation.barrier_wait_ns
                                                        or observation.slot_wait_ns):
                self._causes(stats, observation)
            else:  # Observation.lateness_causes without its dict: the connection's part, the engine's the rest
                part = 0 if lateness <= 0 or lane is None else lane if lane < lateness else lateness
                if part > 0:
                    _late(stats, "connection", part)
                if lateness - part > 0:
                    _late(stats, "engine", lateness - part)
                if lane is not None:
                    queued = part
            if getattr(observation, "spilled", False):
                stats.spilled += 1
            response = observation.response
            latency_us = None
            if kind is None:
                if response is not None:
                    status = _CLASSES.get(response.status, "other")
                    stats.status[status] += 1
                    order["status"].setdefault(status)
                latency = observation.latency_ns
                if latency is not None:
                    latency_us = (latency + 500) // 1000 if latency > 0 else 0
                    stats.latency.record(latency_us)
                    response_ns = latency + queued if queued is not None else \
                        getattr(observation, "response_ns", None)  # (Observation.response_ns; a baseline's has none)
                    if response_ns is not None:
                        stats.response.record((response_ns + 500) // 1000 if response_ns > 0 else 0)
            else:
                stats.errors[kind] += 1
                order["errors"].setdefault(kind)
            recorded = exchange.response
            if recorded is not None:
                status = _CLASSES.get(recorded.status, "other")
                stats.recorded_status[status] += 1
                order["recorded_status"].setdefault(status)
                recorded_ns = exchange.recorded_latency_ns
                if recorded_ns is not None:
                    stats.recorded.record((recorded_ns + 500) // 1000 if recorded_ns > 0 else 0)
            if verdict is not None:
                stats.judged += 1
                ignored = verdict.ignored
                if ignored:
                    mine, run_wide = stats.ignored, self._ignored
                    for why, n in ignored:
                        mine[why if why in mine or len(mine) < MAX_IGNORED else OTHER] += n
                        run_wide[why if why in run_wide or len(run_wide) < MAX_IGNORED else OTHER] += n
                if not verdict.passed:
                    stats.failed += 1
                    failures, seen = stats.failures, order["failures"]
                    for part in {d.part for d in verdict.differences} or {"?"}:
                        failures[part] += 1
                        seen.setdefault(part)
            self.timeline.add(exchange.request_ts_ns, None if response is None else response.status, kind is not None,
                              latency_us, lateness_us)
            if verdict is not None and not verdict.passed:
                self.failure_groups.add(endpoint_of(request.method, request.target), verdict, exchange.index, shown)
        finally:
            self._overall = None
            self._lock.release()

    @staticmethod
    def _causes(stats: Stats, observation) -> None:
        """Its lateness by cause into the cause's histograms (the reference of add()'s case without waits)."""
        for cause, ns in _causes_of(observation).items():
            if ns > 0:
                _late(stats, cause, ns)

    def skip(self, exchange, reason: str, *, write: bool = False, why: str | None = None) -> None:
        """Count an exchange that was selected but not replayed (incomplete, a write skipped by the
        policy, ...). `reason` is a short stable code; `why` the reason a write is one."""
        with self._lock:
            try:
                stats = self._stats(exchange.request.method, exchange.request.target)
                _count(stats.skipped, reason)
                _count(self._skipped, reason)
                if write:
                    stats.writes["skipped"] += 1
                    self._order["writes"].setdefault("skipped")
                    _count(stats.write_reasons, why)
                    _count(self._write_reasons, why)
            finally:
                self._overall = None

    # -- combining --------------------------------------------------------------------------
    def merge(self, other: Aggregate) -> Aggregate:
        """Add `other` into this aggregate (exact: histogram buckets and counters add)."""
        theirs = other.overall  # (before taking our lock: two aggregates merged into each other never wait)
        with self._lock:
            try:
                for name, order in self._order.items():  # new keys after ours, in their order (Counter.update)
                    for key in getattr(theirs, name):
                        order.setdefault(key)
                self._ignored.update(theirs.ignored)  # (uncapped, as the overall's were merged)
                self._skipped.update(theirs.skipped)
                self._write_reasons.update(theirs.write_reasons)
                self.folded += other.folded
                self.failure_groups.merge(other.failure_groups)
                self.timeline.merge(other.timeline)
                for key, stats in list(other.endpoints.items()):
                    mine = self.endpoints.get(key)
                    if mine is None:
                        if len(self.endpoints) >= self.max_endpoints and key != OTHER:
                            self.folded += stats.requests + sum(stats.writes.values()) + sum(stats.skipped.values())
                            key = OTHER
                            mine = self.endpoints.get(OTHER)
                        if mine is None:
                            mine = self.endpoints[key] = Stats()
                    mine.merge(stats)
            finally:
                self._overall = None
        return self

    @classmethod
    def merged(cls, aggregates: Iterable[Aggregate]) -> Aggregate:
        total = cls()
        for aggregate in aggregates:
            total.merge(aggregate)
        return total

    def to_dict(self) -> dict:
        """JSON-safe (histograms as HDR base64 strings): for xdist's workeroutput and evidence files. The
        overall Stats are written as before (derived: other tools read them from the evidence)."""
        with self._lock:
            return {"schema": self.SCHEMA, "max_endpoints": self.max_endpoints, "folded": self.folded,
                    "overall": self.overall.to_dict(),
                    "endpoints": {key: stats.to_dict() for key, stats in sorted(self.endpoints.items())},
                    "failure_groups": self.failure_groups.to_dict(), "timeline": self.timeline.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Aggregate:
        """An aggregate written by to_dict(), now or by earlier versions. Its overall Stats are derived from
        its endpoints, as when it was recorded, not read from the stored "overall": every writer so far
        wrote the overall as the sum of the endpoints for everything summed (add, skip and merge kept both),
        and one source keeps a loaded aggregate's overall true to its endpoints after it is merged or added
        to. From the stored "overall" come what the endpoints cannot give: the capped counters (`ignored`,
        `skipped`, `write_reasons`: which reasons the run-wide cap kept) and the order of the summed
        counters' keys; without a stored "overall" (not written by us), the endpoints' sums."""
        if data.get("schema") != cls.SCHEMA:
            raise ValueError(f"aggregate schema {data.get('schema')!r} is not {cls.SCHEMA}: written by "
                             "another version of pytest-traffic-replay")
        aggregate = cls(int(data.get("max_endpoints", MAX_ENDPOINTS)))
        aggregate.folded = int(data.get("folded", 0))
        aggregate.endpoints = {key: Stats.from_dict(value) for key, value in data["endpoints"].items()}
        aggregate.failure_groups = FailureGroups.from_dict(data.get("failure_groups"))
        aggregate.timeline = Timeline.from_dict(data.get("timeline"))  # absent in older files: empty
        stored = data.get("overall")
        for name in _CAPPED:
            if stored is not None:
                counter = Counter({k: int(v) for k, v in (stored.get(name) or {}).items()})
            else:
                counter = Counter()
                for stats in aggregate.endpoints.values():
                    counter.update(getattr(stats, name))
            setattr(aggregate, f"_{name}", counter)
        for name, order in aggregate._order.items():
            for key in (stored or {}).get(name) or {}:
                order.setdefault(key)
        return aggregate

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Aggregate) and self.overall == other.overall
                and self.endpoints == other.endpoints and self.failure_groups == other.failure_groups
                and self.timeline == other.timeline)

    # -- reading ----------------------------------------------------------------------------
    def stats(self, endpoint: str | None = None) -> Stats | None:
        """The Stats of an endpoint ("GET /api/users/{id}"), or the overall ones for None/ALL."""
        if endpoint in (None, ALL):
            return self.overall
        return self.endpoints.get(endpoint)

    def percentile(self, endpoint: str | None, metric: str, q: float) -> int | None:
        """The q-th percentile (0..100; 100 = max) of `metric` ("latency", "recorded", "lateness")
        for an endpoint (None or ALL: the whole run), in nanoseconds at microsecond resolution."""
        stats = self.stats(endpoint)
        if stats is None:
            return None
        value = stats.histogram(metric).percentile(q)
        return None if value is None else value * 1000

    def union(self, keys: Iterable[str]) -> Stats:
        """The Stats of several endpoints taken together (a scoped budget's measure)."""
        total = Stats()
        for key in keys:
            total.merge(self.endpoints[key])
        return total

    def table(self) -> list[dict]:
        """One row per endpoint (most requests first), then the overall row (endpoint ALL). Times in ms."""
        with self._lock:
            keys = sorted(self.endpoints, key=lambda k: (-self.endpoints[k].requests, k))
            return [row(key, self.endpoints[key]) for key in keys] + [row(ALL, self.overall)]


QS = (50, 95, 99, 100)


def row(endpoint: str, stats: Stats) -> dict:
    """A table row (plain data) for one endpoint's Stats."""
    rec = stats.recorded.percentiles(QS)
    rep = stats.latency.percentiles(QS)
    late = stats.lateness.percentiles((50, 99, 100))
    names = ("p50", "p95", "p99", "max")

    def pct(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    def in_ms(percentiles: dict, named) -> dict:  # the histograms count µs
        return {name: ms_number(percentiles[q], US_PER_MS) for name, q in named}

    return {
        "endpoint": endpoint,
        "requests": stats.requests,
        "recorded_ms": in_ms(rec, zip(names, QS)) | {"mean": ms_number(stats.recorded.mean, US_PER_MS)},
        "replayed_ms": in_ms(rep, zip(names, QS)) | {"mean": ms_number(stats.latency.mean, US_PER_MS)},
        "scheduled_ms": in_ms(stats.response.percentiles(QS), zip(names, QS))
        | {"mean": ms_number(stats.response.mean, US_PER_MS)},
        "error_pct": pct(stats.rate("errors")),
        "5xx_pct": pct(stats.rate("5xx")),
        "4xx_pct": pct(stats.rate("4xx")),
        "recorded_5xx_pct": pct(stats.rate("5xx", recorded=True)),
        "transport_errors": dict(stats.errors),
        "status": dict(stats.status),
        "recorded_status": dict(stats.recorded_status),
        "lateness_ms": in_ms(late, (("p50", 50), ("p99", 99), ("max", 100))),
        "lateness_causes": stats.causes_row(),
        "spilled": stats.spilled,
        "early": stats.early,
        "judged": stats.judged,
        "failed": stats.failed,
        "failures": dict(stats.failures),
        "writes": dict(stats.writes),
        "write_reasons": dict(stats.write_reasons),
        "skipped": dict(stats.skipped),
        "ignored": dict(stats.ignored),
    }



def render_table(rows: list[dict], limit: int = 20, lateness: bool = True) -> list[str]:
    """The per-endpoint table as terminal lines: recorded -> replayed latency (ms), error %, lateness
    (left out with lateness=False: at --speed 0 it means nothing)."""
    if not rows:
        return []
    body = [r for r in rows if r["endpoint"] != ALL]
    total = [r for r in rows if r["endpoint"] == ALL]
    shown = body[:limit]
    header = ("endpoint", "count", "p50 rec/rep ms", "p95 rec/rep ms", "p99 rec/rep ms", "max rec/rep ms",
              "err %", "late p99 ms")[: None if lateness else -1]

    def cells(r: dict) -> tuple[str, ...]:
        rec, rep = r["recorded_ms"], r["replayed_ms"]
        err = "-" if r["error_pct"] is None else f"{r['error_pct']:.2f}"
        late = (fmt_ms(r["lateness_ms"]["p99"]),) if lateness else ()
        return (r["endpoint"], str(r["requests"]),
                *(f"{fmt_ms(rec[k])}/{fmt_ms(rep[k])}" for k in ("p50", "p95", "p99", "max")), err, *late)

    table = [header] + [cells(r) for r in shown + total]
    widths = [min(max(len(c[i]) for c in table), 60 if i == 0 else 40) for i in range(len(header))]

    def line(c: tuple[str, ...]) -> str:
        first = c[0] if len(c[0]) <= widths[0] else c[0][: widths[0] - 3] + "..."
        return "  " + "  ".join([first.ljust(widths[0])] + [v.rjust(w) for v, w in zip(c[1:], widths[1:])]).rstrip()

    out = [line(header)] + [line(cells(r)) for r in shown]
    if len(body) > len(shown):
        rest = sum(r["requests"] for r in body[len(shown):])
        out.append(f"  ... {len(body) - len(shown)} more endpoints, {rest} requests")
    out += [line(cells(r)) for r in total]
    return out
