"""Stop conditions judged during the replay, in the engine's thread, on a sliding window.

Each completed request lands in the bucket of the second it completed in (from t0): counts of
requests, 5xx, 4xx and errors, and log-scale histograms of latency (time to first byte) and
lateness (16 bins per doubling: a percentile within ~4.4%). The lateness judged is the engine's own
(Observation.lateness_causes["engine"]): 'lateness>50ms' means the replayer cannot keep up, so a request
late because its connection, a write barrier or the concurrency limit waited for a slow target does
not count (that is the target's latency, which p99 judges). When a second is over, the conditions
are judged over the buckets of the last `window_s` seconds: a few dict updates per request and one
small merge per second. The conditions are taken by duck type (verdicts.budgets.StopCondition:
.metric, .quantile, .holds(value), .measured_text(value)), so schedule/ does not import verdicts/.

A replay split over processes (xdist workers) stops as one: `on_trip` is told of this monitor's own
trip (to pass it on), and `relay(trip)`, from any thread, makes the next judgement return another
process's trip, so the engine halts at its next watchdog tick (a few ms to 250 ms).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from .target import CANCELLED, DROPPED, Observation

BINS_PER_DOUBLING = 16
MIN_REQUESTS = 5  # a window with fewer completed requests is not judged (one slow request is no p99)


def _bin(ns: int) -> int:
    return int(math.log2(max(ns, 1_000)) * BINS_PER_DOUBLING)


def _value(b: int) -> float:
    return 2 ** ((b + 0.5) / BINS_PER_DOUBLING)


def percentile(hist: Counter, q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    rank = math.ceil(total * q / 100)
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return _value(b)
    return None


class _Bucket:
    __slots__ = ("requests", "s5xx", "s4xx", "errors", "latency", "lateness", "latency_sum", "latency_n")

    def __init__(self) -> None:
        self.requests = self.s5xx = self.s4xx = self.errors = self.latency_n = 0
        self.latency_sum = 0
        self.latency: Counter = Counter()
        self.lateness: Counter = Counter()


@dataclass(frozen=True, slots=True)
class Trip:
    """Where a stop condition tripped."""

    condition: str
    measured: str  # e.g. "2.40 s", "7.50%"
    at_ns: int  # from t0: the end of the window that tripped
    window_s: float
    requests: int  # completed requests in the window
    worker: str = ""  # the process whose window tripped (an xdist worker id; "" in a single process)
    relayed: bool = False  # this process stopped because another one tripped


class StopMonitor:
    def __init__(self, conditions, window_s: float = 10.0, *, name: str = "",
                 on_trip: Callable[[Trip], None] | None = None) -> None:
        self.conditions = tuple(conditions)
        self.window = max(1, round(window_s))
        self.buckets: dict[int, _Bucket] = {}
        self.judged = 0  # seconds before this one have been judged
        self.trip: Trip | None = None
        self.name = name  # names this process in its trips
        self.on_trip = on_trip  # told of this monitor's own trip (not of a relayed one)
        self._relayed: Trip | None = None

    def relay(self, trip: Trip) -> None:
        """Another process tripped: stop here too (thread-safe: the engine picks it up at its next
        judgement, which setting `judged` back makes come at the next watchdog tick)."""
        if self._relayed is None:
            self._relayed = replace(trip, relayed=True)
            self.judged = -1

    def add(self, obs: Observation, t0_ns: int) -> Trip | None:
        """Count a completed request; judge the window when a second has passed. The Trip when a
        condition holds (once)."""
        if obs.error_kind in (CANCELLED, DROPPED):
            return None
        second = max(obs.done_ns - t0_ns, 0) // 1_000_000_000
        trip = self.tick(second) if second > self.judged else None
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = _Bucket()
        bucket.requests += 1
        if obs.error_kind is not None:
            bucket.errors += 1
        elif obs.response is not None:
            status = obs.response.status
            if status >= 500:
                bucket.s5xx += 1
                bucket.errors += 1
            elif status >= 400:
                bucket.s4xx += 1
        latency = obs.latency_ns
        if latency is not None:
            bucket.latency[_bin(latency)] += 1
            bucket.latency_sum += latency
            bucket.latency_n += 1
        late = obs.sent_ns - obs.deadline_ns - obs.lane_wait_ns - obs.barrier_wait_ns - obs.slot_wait_ns
        bucket.lateness[_bin(max(late, 0))] += 1  # the engine's part (lateness_causes, without the dict)
        return trip

    def tick(self, second: int) -> Trip | None:
        """Judge the window ending at `second` (the seconds before it are complete)."""
        self.judged = second
        if self.trip is not None or not self.conditions:
            return None
        if self._relayed is not None:
            self.trip = self._relayed
            return self.trip
        window = [self.buckets[s] for s in range(second - self.window, second) if s in self.buckets]
        for s in [s for s in self.buckets if s < second - self.window]:
            del self.buckets[s]
        requests = sum(b.requests for b in window)
        if requests < MIN_REQUESTS:
            return None
        for condition in self.conditions:
            measured = self._measure(condition, window, requests)
            if condition.holds(measured):
                self.trip = Trip(str(condition), condition.measured_text(measured), second * 1_000_000_000,
                                 float(self.window), requests, self.name)
                if self.on_trip is not None:
                    self.on_trip(self.trip)
                return self.trip
        return None

    @staticmethod
    def _measure(condition, window: list[_Bucket], requests: int) -> float | None:
        metric = condition.metric
        if metric in ("5xx", "4xx", "errors"):
            count = sum(getattr(b, "s" + metric if metric != "errors" else "errors") for b in window)
            return 100.0 * count / requests
        if metric == "mean":
            n = sum(b.latency_n for b in window)
            return sum(b.latency_sum for b in window) / n if n else None
        hist: Counter = Counter()
        for b in window:
            hist.update(b.lateness if metric == "lateness" else b.latency)
        return percentile(hist, condition.quantile)
