"""Stop conditions judged during the replay, in the engine's thread, on a sliding window.

Each completed request lands in the bucket of the second it completed in (from t0): counts of
requests, 5xx, 4xx and errors, and log-scale histograms (16 bins per doubling: a percentile within
~4.4%) of its response time from schedule, its service latency and its lateness.

What the latency conditions ('p99>2s', 'p50>...', 'mean>...', 'max>...') judge, by default, is the
response time from schedule (Observation.response_ns): from the instant the request would have been
sent had the replayer been on time -- its deadline plus the time it queued for the target (its
captured connection still busy, a write barrier, a concurrency slot) -- to its first response byte.
A saturated target that answers each request in 190 ms while the captured connections queue the
excess for seconds is seen as seconds slow, as its users would see it (coordinated omission: wrk2's
and HdrHistogram's corrected latency). The engine's own lateness (the replayer behind schedule) is
left out: that is what 'lateness>50ms' judges (Observation.lateness_causes["engine"]), so a saturated
client is never taken for a slow service. 'service p99>2s' judges the service latency instead
(first byte minus send, what the latency budgets and the recorded latencies measure). A request that
timed out counts with the time it waited.

Requests still waiting for the target count too, so that a target that stops answering trips a
condition within about window + threshold, not at the timeouts: when a window is judged, each request
in flight (and each queued behind one on its connection) whose response time from schedule so far
already exceeds a latency condition's threshold counts in that condition's window at that age
(`in_flight`, set by the engine: schedule/engine.py Engine._in_flight).

When a second is over, the conditions are judged over the buckets of the last `window_s` seconds: a
few dict updates per request and one small merge per second. The conditions are taken by duck type
(verdicts.budgets.StopCondition: .metric, .quantile, .basis, .op, .value, .holds(value),
.measured_text(value)), so schedule/ does not import verdicts/.

A replay split over processes (xdist workers) stops as one: `on_trip` is told of this monitor's own
trip (to pass it on), and `relay(trip)`, from any thread, makes the next judgement return another
process's trip, so the engine halts at its next watchdog tick (a few ms to 250 ms).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from .target import CANCELLED, DROPPED, TIMEOUT, Observation

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
    __slots__ = ("requests", "s5xx", "s4xx", "errors", "latency", "service", "lateness", "latency_sum", "latency_n",
                 "service_sum", "service_n")

    def __init__(self) -> None:
        self.requests = self.s5xx = self.s4xx = self.errors = self.latency_n = self.service_n = 0
        self.latency_sum = self.service_sum = 0
        self.latency: Counter = Counter()  # response time from schedule
        self.service: Counter = Counter()  # service latency (from send)
        self.lateness: Counter = Counter()  # the engine's own lateness


@dataclass(frozen=True, slots=True)
class Trip:
    """Where a stop condition tripped."""

    condition: str
    measured: str  # e.g. "2.40 s", "7.50%"
    at_ns: int  # from t0: the end of the window that tripped
    window_s: float
    requests: int  # completed requests in the window (and requests still waiting that counted)
    worker: str = ""  # the process whose window tripped (an xdist worker id; "" in a single process)
    relayed: bool = False  # this process stopped because another one tripped
    in_flight: int = 0  # of `requests`, those still waiting for the target, counted at their age


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
        # () -> [(response time from schedule so far, service time so far or None)] of the requests
        # waiting for the target now (the engine sets it; called in the engine's thread)
        self.in_flight: Callable[[], list[tuple[int, int | None]]] | None = None

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
        kind = obs.error_kind
        if kind is not None:
            bucket.errors += 1
        elif obs.response is not None:
            status = obs.response.status
            if status >= 500:
                bucket.s5xx += 1
                bucket.errors += 1
            elif status >= 400:
                bucket.s4xx += 1
        # late: its lateness; queued: the part it waited for the target; the rest is the engine's
        late = obs.sent_ns - obs.deadline_ns
        queued = min(late, obs.lane_wait_ns + obs.barrier_wait_ns + obs.slot_wait_ns) if late > 0 else 0
        first = obs.first_byte_ns
        service = first - obs.sent_ns if first is not None else (obs.done_ns - obs.sent_ns if kind == TIMEOUT else None)
        if service is not None:
            bucket.service[_bin(service)] += 1
            bucket.service_sum += service
            bucket.service_n += 1
            response = service + queued  # (Observation.response_ns, without the property calls)
            bucket.latency[_bin(response)] += 1
            bucket.latency_sum += response
            bucket.latency_n += 1
        bucket.lateness[_bin(max(late - queued, 0))] += 1  # the engine's part (lateness_causes, without the dict)
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
        waiting = None
        for condition in self.conditions:
            extra: list[int] = []
            if condition.metric not in ("5xx", "4xx", "errors", "lateness") and condition.op in (">", ">="):
                if waiting is None:
                    waiting = self.in_flight() if self.in_flight is not None else []
                service = getattr(condition, "basis", "scheduled") == "service"
                extra = [age for age in (s if service else r for r, s in waiting)
                         if age is not None and age > condition.value]
            if requests + len(extra) < MIN_REQUESTS:
                continue
            measured = self._measure(condition, window, requests, extra)
            if condition.holds(measured):
                self.trip = Trip(str(condition), condition.measured_text(measured), second * 1_000_000_000,
                                 float(self.window), requests + len(extra), self.name, in_flight=len(extra))
                if self.on_trip is not None:
                    self.on_trip(self.trip)
                return self.trip
        return None

    @staticmethod
    def _measure(condition, window: list[_Bucket], requests: int, extra: list[int]) -> float | None:
        metric = condition.metric
        if metric in ("5xx", "4xx", "errors"):
            count = sum(getattr(b, "s" + metric if metric != "errors" else "errors") for b in window)
            return 100.0 * count / requests
        service = getattr(condition, "basis", "scheduled") == "service"
        if metric == "mean":
            if service:
                n, total = sum(b.service_n for b in window), sum(b.service_sum for b in window)
            else:
                n, total = sum(b.latency_n for b in window), sum(b.latency_sum for b in window)
            n, total = n + len(extra), total + sum(extra)
            return total / n if n else None
        hist: Counter = Counter(_bin(age) for age in extra)
        for b in window:
            hist.update(b.lateness if metric == "lateness" else b.service if service else b.latency)
        return percentile(hist, condition.quantile)
