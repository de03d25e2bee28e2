"""The replay engine: sends the plan open-loop, on its own schedule, in its own thread and event loop.

Each request is due at t0 + offset (absolute deadlines: lateness never accumulates, unlike a replayer
that sleeps relative to the previous send). One dispatcher coroutine walks the plan in deadline order,
sleeps until each deadline and hands the request to its lane. A lane (one captured connection) sends its
requests in plan order, one at a time, and lives from its first due request to its last; lanes run
concurrently. With a target that offers `begin()` (targets/raw.py) a lane is a chain of callbacks (the
fast path: the protocol's completion sends the lane's next request, no future or task per request);
otherwise, and as the reference the tests compare with (`fast=False`), a coroutine awaiting `send()`.
At most `concurrency` requests are in flight; a request waiting for its lane or a free slot goes as
soon as possible, and the wait shows as its lateness (sent_ns - deadline_ns) in its Observation.

Sent writes are ordering barriers when the plan has any (`barriers`, schedule/plan.py): a request
waits for the barrier writes recorded as completed before it started (and a barrier write for every
request recorded so), before it takes a slot; the wait shows as its lateness. Without barriers the
engine pays one test per request for them.

Each request's lateness is split by cause in its Observation: the time its lane was still busy with
the previous request after its deadline (the captured connection's order), a barrier's wait, a
concurrency slot's wait, and the rest, the engine's own. Each wait counts only what it would have been had the
engine been on time: a connection is free when its previous request would have completed on time
(`_Lane.free_ns`), and a barrier or a slot from when the request would have been queued on time to when
the request that freed it would have completed on time (`_on_time`; never more than measured). A backlog
the engine bunched up by being late (a stall, then every due request at once) is the engine's lateness,
not queueing for the target. With `connections="spill"` a request whose
lane is busy when it is due goes out at once on an extra connection of that lane (a spill lane, one
more replay connection, reused while idle, closed when its lane has no more requests; at most
`concurrency` of them in all, beyond which it waits on its own lane): the captured order on the
connection is given up for the schedule. Spilled requests are counted (`spilled`,
`extra_connections`, Observation.spilled).

pytest's thread talks to the engine through `start`, `wait(key)`, `progress()`, `observations()` and
`stop(cancel)`. Everything that crosses threads is an Observation (frozen) or a Progress (frozen).

The plan is a list, or a feed (`PlanFeed`, a streamed run: session/stream.py): the dispatcher pulls
planned requests from the feed in deadline order as a reader thread produces them, a lane lives until
the feed ends, and each observation goes to the `observer` callback instead of being kept (a feed's
run holds no observation: `wait()` and `observations()` are for list plans).
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import sys
import threading
import time
from array import array
from collections import deque
from dataclasses import dataclass, replace
from functools import partial

from .clock import Clock, RealClock
from .plan import Barriers, PlannedRequest
from .target import (APP_ERROR, CANCELLED, DROPPED, TIMEOUT, UNPARSABLE, Dropped, Observation, PipelineFailure,
                     RequestPipeline, Target, TargetError, describe)

SWITCH_INTERVAL_S = 0.0002  # see Engine.start: how fast the engine thread gets the GIL back
_BURST = 256  # requests dispatched back to back (all due) before the dispatcher yields to the lanes
_CLOSE_TIMEOUT_S = 2.0  # a target's close() may not hold up a stop longer than this
# Objects frozen before anyone asked (Python 3.12 starts with a few hundred): not someone else's freeze.
_STARTUP_FREEZE = gc.get_freeze_count()
_NO_WAITS = (0, 0, 0, False)  # a request that waited for nothing (shared: no tuple per request)
_REFREEZE_EVERY = 8192  # observations between two gc.freeze() calls (with freeze_gc)


def _on_time(measured: int, released: int | None, queued_at: int) -> int:
    """A barrier's or a slot's wait as the target made it: from when the request would have been queued
    had the engine been on time (`queued_at`: its deadline plus its connection's wait) to when what it
    waited for would have been released had the engine been on time (`released`: the ideal completion of
    the request that freed the slot, or of the last one the barrier needed), never more than `measured`.
    A backlog the engine's own lateness bunched up is the engine's lateness, not queueing for the target
    (as a connection's wait, `_Lane.free_ns`). `released` None (nothing completed: a stop): as measured."""
    if released is None:
        return measured
    return min(measured, max(released - queued_at, 0))


def _ideal_done(obs: Observation) -> int:
    """When `obs`'s request would have completed had the engine been on time: its deadline, plus the time
    it queued for the target, plus its service time (as _Lane.free_ns)."""
    return obs.deadline_ns + obs.queued_ns + max(obs.done_ns - obs.sent_ns, 0)


def _queued(deadline: int, start: int, waits: tuple) -> int:
    """The part of a request's lateness spent waiting for the target (its connection, a barrier, a slot):
    its lateness less the engine's own part (as Observation.queued_ns)."""
    if waits is _NO_WAITS:
        return 0
    return min(max(start - deadline, 0), waits[0] + waits[1] + waits[2])


@dataclass(frozen=True, slots=True)
class Progress:
    planned: int
    sent: int  # handed to the target
    completed: int  # observation recorded (ok or error)
    errors: int  # observations with an error (cancelled in-flight ones included)
    running: bool
    cancelled: bool  # stop(cancel=True) was called (or the run was cancelled)
    failure: str | None  # the engine itself failed (a bug, or the target's start() raised)

    @property
    def in_flight(self) -> int:
        return self.sent - self.completed


CONNECTION_MODES = ("strict", "spill")  # --replay-connections
LOOPS = ("auto", "asyncio", "uvloop")  # Engine(loop=...): auto is uvloop when it is installed


class PlanFeed:
    """The input of a streamed run (the protocol the engine pulls from): `take()` returns the next
    planned requests in deadline order (a list; empty when none is ready yet, None once the feed is
    over), `ready(loop)` a future resolved when more may be ready, `planned` the number of requests it
    will give (for progress), `planned_key(key)` whether a key is part of it."""

    planned: int

    def take(self) -> list[PlannedRequest] | None:  # pragma: no cover - a protocol
        raise NotImplementedError

    def ready(self, loop) -> asyncio.Future:  # pragma: no cover
        raise NotImplementedError

    def planned_key(self, key: int) -> bool:  # pragma: no cover
        raise NotImplementedError



def uvloop_version() -> str | None:
    """uvloop's version when it is installed (the [fast] extra), without importing it; else None."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    if find_spec("uvloop") is None:
        return None
    try:
        return version("uvloop")
    except PackageNotFoundError:  # importable but not installed as a distribution
        return "?"


def loop_name(loop: str = "auto") -> str:
    """The event loop an engine made with `loop` runs on: 'uvloop 0.23.0' or 'asyncio'."""
    if loop == "asyncio":
        return "asyncio"
    found = uvloop_version()
    if found is None:
        if loop == "uvloop":
            raise ValueError("uvloop is not installed: pip install pytest-traffic-replay[fast]")
        return "asyncio"
    return f"uvloop {found}"


def new_event_loop(loop: str = "auto") -> asyncio.AbstractEventLoop:
    """The engine thread's loop. uvloop (libuv's transports in C) costs less CPU per request on the
    network path: ~18% less than asyncio's loop in bench/bench_replay.py (a), which measures both."""
    if loop_name(loop) == "asyncio":
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()


class _Lane:
    __slots__ = ("name", "queue", "remaining", "task", "wake", "timed_out", "active", "free_ns", "owner", "spills",
                 "live", "sending", "planned", "deadline", "start", "waits", "fallback", "on_done", "on_task")

    def __init__(self, name: str, count: int, owner: _Lane | None = None) -> None:
        self.name = name
        self.queue: deque[PlannedRequest] = deque()
        self.remaining = count  # requests of this lane not yet dispatched (a spill lane: its owner's count)
        self.task: asyncio.Task | None = None
        self.wake: asyncio.Future | None = None  # set while the lane waits for its next due request
        self.timed_out = False  # the watchdog cancelled the send in flight
        self.active = False  # a request was taken from the queue and has no observation yet
        # When its last request would have completed had the engine never been late (engine clock): its
        # deadline plus the time it queued for the target, plus its service time. A request waits for its
        # connection (lateness cause "connection") only up to this: a previous request the engine itself
        # sent late delays it too, but that is the engine's lateness, not the target's.
        self.free_ns = 0
        self.owner = owner  # a spill lane: the captured connection's lane it helps
        self.spills: list[_Lane] = []  # a captured connection's spill lanes (extra connections)
        # The request in flight: its deadline, send time and waits (callback lanes; coroutine lanes when
        # stop conditions watch: Engine._in_flight).
        self.deadline = self.start = 0
        self.waits = _NO_WAITS  # (lane, barrier, slot waits, spilled)
        # Callback lanes (Engine fast path) only: the request in flight and how it is waited for.
        self.live = False  # started and not ended (counted in Engine._fast_live)
        self.sending = False  # inside target.begin(): a completion now is deferred (no recursion)
        self.planned: PlannedRequest | None = None
        self.fallback: asyncio.Task | None = None  # its `await target.send()`, when begin() declined it
        self.on_done = self.on_task = None  # bound callbacks, made once per lane

    @property
    def idle(self) -> bool:
        return not self.active and not self.queue

    def all(self) -> list[_Lane]:
        return [self, *self.spills]


class _Gate:
    """The barriers' state in the engine thread: two done-prefixes (barrier writes, and all requests,
    each in recorded completion order) and the requests waiting for them to grow (heaps keyed by the
    prefix they need)."""

    __slots__ = ("needs", "rank", "write_rank", "done", "write_done", "prefix", "write_prefix", "by_writes",
                 "by_all", "order", "ideal", "write_ideal")

    def __init__(self, barriers: Barriers) -> None:
        self.needs = barriers.needs
        self.rank = barriers.rank
        self.write_rank = barriers.write_rank
        self.done = bytearray(len(barriers.rank))
        self.write_done = bytearray(len(barriers.write_rank))
        # When each request would have completed had the engine been on time (_ideal_done), by rank; once
        # a prefix passes a rank, the latest of the prefix up to it: a waiter is released with the time
        # its prefixes would have been complete (the wait corrected for the engine's lateness, _on_time).
        self.ideal = array("q", bytes(8 * len(barriers.rank)))
        self.write_ideal = array("q", bytes(8 * len(barriers.write_rank)))
        self.prefix = self.write_prefix = 0
        self.by_writes: list[tuple[int, int, int, asyncio.Future]] = []  # (writes needed, order, all needed, fut)
        self.by_all: list[tuple[int, int, int, asyncio.Future]] = []  # (requests needed, order, writes' ideal, fut)
        self.order = 0

    def wait(self, key: int, loop: asyncio.AbstractEventLoop) -> asyncio.Future | None:
        """None if request `key` may go now, else a future resolved when it may: with the time it would
        have been released had the engine been on time (None when the run halted)."""
        need = self.needs.get(key)
        if need is None or (need[0] <= self.write_prefix and need[1] <= self.prefix):
            return None
        fut = loop.create_future()
        self.order += 1
        heapq.heappush(self.by_writes, (need[0], self.order, need[1], fut))
        self._release()
        return fut

    def completed(self, key: int, ideal: int) -> None:
        """Request `key` completed; it would have at `ideal` had the engine been on time."""
        rank = self.rank.get(key)
        if rank is None:
            return
        self.done[rank] = 1
        self.ideal[rank] = ideal
        self.prefix = _advance(self.done, self.ideal, self.prefix)
        rank = self.write_rank.get(key)
        if rank is not None:
            self.write_done[rank] = 1
            self.write_ideal[rank] = ideal
            self.write_prefix = _advance(self.write_done, self.write_ideal, self.write_prefix)
        self._release()

    def _release(self) -> None:
        by_writes, by_all = self.by_writes, self.by_all
        while by_writes and by_writes[0][0] <= self.write_prefix:
            need_writes, order, need_all, fut = heapq.heappop(by_writes)
            writes_ideal = self.write_ideal[need_writes - 1] if need_writes else 0
            heapq.heappush(by_all, (need_all, order, writes_ideal, fut))
        while by_all and by_all[0][0] <= self.prefix:
            need_all, _, writes_ideal, fut = heapq.heappop(by_all)
            if not fut.done():
                fut.set_result(max(writes_ideal, self.ideal[need_all - 1] if need_all else 0))


def _advance(done: bytearray, ideal: array, prefix: int) -> int:
    """The done-prefix grown over the ranks completed since, each rank's ideal time made the latest of
    the prefix up to it."""
    while prefix < len(done) and done[prefix]:
        if prefix:
            ideal[prefix] = max(ideal[prefix], ideal[prefix - 1])
        prefix += 1
    return prefix


class Engine:
    """Open-loop replay of `plan` against `target`.

    Requests of one lane go in plan order (the plan is ordered by offset: build_plan does it; an
    unordered plan is sorted stably by offset), never before their deadline. `timeout_s` bounds each
    whole exchange (on real time, also under a FakeClock; checked every timeout_s/20, at most 0.25 s);
    a timed-out request gets error_kind "timeout" and the target drops the lane's connection
    (cancellation contract of Target). `start()` also lowers sys.setswitchinterval to
    `switch_interval` and freezes the GC (`freeze_gc`) for the duration of the replay. `loop`: the
    engine thread's event loop, "auto" (uvloop when installed), "asyncio" or "uvloop"; an in-process
    app must run on asyncio's (targets/blocker.py sees its sockets through Python's socket module,
    which uvloop's transports bypass).

    `fast` (default: the class attribute `fast_path`, True): lanes driven by callbacks, with no
    coroutine, future or task per request, when the target offers `begin` (targets/raw.py: a request
    on the lane's open connection, its completion called back from the protocol) and the run has no
    request pipeline. The coroutine lanes (`_run_lane`, every target through `await send()`) are the
    reference: the tests run both and compare their observations.
    """

    fast_path = True

    def __init__(self, plan: list[PlannedRequest], target: Target, *, clock: Clock | None = None,
                 concurrency: int = 64, timeout_s: float = 10.0, lead_ns: int = 50_000_000,
                 switch_interval: float | None = SWITCH_INTERVAL_S, freeze_gc: bool = True,
                 pipeline: RequestPipeline | None = None, barriers: Barriers | None = None,
                 monitor=None, connections: str = "strict", loop: str = "auto", observer=None,
                 fast: bool | None = None, scheduled: bool = True) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
        self.loop = loop
        self.loop_name = loop_name(loop)  # what the engine thread runs on
        if connections not in CONNECTION_MODES:
            raise ValueError(f"connections must be one of {', '.join(CONNECTION_MODES)}, got {connections!r}")
        self.feed: PlanFeed | None = plan if hasattr(plan, "take") else None
        self.observer = observer  # called with each observation, in the engine's thread
        # False (--speed 0 without a rate): the plan has no schedule, every request due at once; what an
        # observation would say about a schedule (lateness, its causes, the time queued since the
        # deadline) means nothing, so observations leave without it (Observation.unscheduled).
        self.scheduled = scheduled
        self._last_done_ns: int | None = None
        plan = [] if self.feed is not None else list(plan)
        if any(a.offset_ns > b.offset_ns for a, b in zip(plan, plan[1:])):
            plan.sort(key=lambda p: p.offset_ns)
        self.plan = plan
        self._planned = {p.key: p for p in plan}
        if len(self._planned) != len(plan):
            raise ValueError("plan keys must be unique")
        self.target = target
        # Optional (a RequestPipeline, e.g. policy/pipeline.py): hooks and middleware run here, in the engine.
        self.pipeline = pipeline
        self.barriers = barriers
        self._gate: _Gate | None = None
        self.clock = clock if clock is not None else RealClock()
        self.concurrency = concurrency
        self.connections = connections
        self.spilled = 0  # requests sent on an extra connection (connections="spill")
        self.extra_connections = 0  # spill lanes opened
        self.timeout_s = timeout_s
        self.lead_ns = lead_ns
        self.switch_interval = switch_interval
        self.freeze_gc = freeze_gc
        self._frozen = False
        self.t0_ns: int | None = None
        self.sent = self.completed = self.errors = 0
        self.failure: BaseException | None = None
        self.cancelled = False
        self._obs: dict[int, Observation] = {}
        self._waiters: dict[int, threading.Event] = {}
        self._finished = threading.Event()
        self._started = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task | None = None
        self._cancel_requested = False
        self._lanes: dict[str, _Lane] = {}
        self._live: set[asyncio.Task] = set()
        self._free = concurrency
        self._busy: dict[_Lane, int] = {}  # lanes with a request in flight -> when it times out (_watch_ns)
        self._slot_queue: deque[asyncio.Future] = deque()
        self._saved_switch: float | None = None
        # Stop conditions (schedule.monitor.StopMonitor): when one trips, no more requests are sent,
        # those in flight complete, and the run ends (`halted` says why).
        self.monitor = monitor
        if monitor is not None and hasattr(monitor, "in_flight"):  # it judges the requests still waiting too
            monitor.in_flight = self._in_flight
        self.halted = None  # the monitor's Trip once the replay was stopped by a condition
        self._dispatcher: asyncio.Task | None = None
        self.fast = self.fast_path if fast is None else fast
        self._fast = False  # callback lanes in this run (run() decides: `fast`, a target with begin(), no pipeline)
        self._fast_live = 0  # callback lanes started and not ended
        self._fast_idle: asyncio.Future | None = None  # run() waits on it for the last lane to end
        self._fast_stopped = False  # cancelled: callbacks still to come change nothing
        self._watch_ns = time.monotonic_ns  # the watchdog's clock (the engine's own when it is a RealClock)
        self._timeout_ns = round(timeout_s * 1e9)
        self._watch_is_clock = False  # the watchdog's clock is the engine's (a send's start time serves both)

    # -- pytest's side (any thread) ------------------------------------------------------------
    def start(self) -> None:
        """Run the replay in a daemon thread with its own event loop."""
        if self._started:
            raise RuntimeError("the engine was already started")
        self._started = True
        if self.switch_interval is not None:
            # pytest's thread keeps running Python while the engine works. Each time the engine thread
            # blocks (a poll, a socket call) and comes back, it waits for the GIL up to the switch
            # interval (5 ms by default). bench/bench_replay.py (c) measures it with a pytest-like
            # thread at 2,000 req/s: 5 ms -> the engine falls behind, lateness in seconds; 0.2 ms ->
            # lateness p50 ~0.2-0.5 ms. Restored when the replay ends.
            self._saved_switch = sys.getswitchinterval()
            sys.setswitchinterval(min(self._saved_switch, self.switch_interval))
        if self.freeze_gc and gc.get_freeze_count() <= _STARTUP_FREEZE:  # (someone else's freeze: leave it alone)
            # A full collection scans every object of the process while holding the GIL: with pytest's
            # items, the capture and the plan in memory that is tens of ms (measured: 20 ms at 20k
            # requests), a stall of every send. Collect once now, before t0, and leave what exists
            # now out of later collections until the replay ends (gc.unfreeze in stop).
            gc.collect()
            gc.freeze()
            self._frozen = True
        self._thread = threading.Thread(target=self._thread_main, name="pytest-replay-engine", daemon=True)
        self._thread.start()

    def wait(self, key: int, timeout: float | None = None) -> Observation:
        """Block until request `key` has its observation. If the replay was stopped or failed before
        that request completed, returns at once with a "cancelled" observation. Raises KeyError for
        a key not in the plan, TimeoutError when `timeout` (seconds) passes first."""
        obs = self._obs.get(key)
        if obs is not None:
            return obs
        if key not in self._planned:
            raise KeyError(f"request {key} is not in the replay plan")
        if not self._started:
            raise RuntimeError("the engine is not running: call start() first")
        event = self._waiters.get(key)
        if event is None:
            event = self._waiters.setdefault(key, threading.Event())
        # Registered before looking again: the engine stores the observation, then pops the waiter.
        obs = self._obs.get(key)
        if obs is not None:
            return obs
        if not self._finished.is_set() and not event.wait(timeout):
            raise TimeoutError(f"no observation for request {key} within {timeout} s")
        obs = self._obs.get(key)
        return obs if obs is not None else self._not_sent(key)

    def due_in_s(self, key: int) -> float | None:
        """Seconds until request `key`'s deadline (negative: past), or None before the start."""
        planned = self._planned.get(key)
        if planned is None or self.t0_ns is None:
            return None
        return (self.t0_ns + planned.offset_ns - self.clock.now_ns()) / 1e9

    def stop(self, cancel: bool = False, timeout: float | None = None) -> Progress:
        """End the replay. cancel=False waits for it to finish; cancel=True cancels pending and
        in-flight requests at once (in-flight ones get a "cancelled" observation). Then the target is
        closed and the thread joined. Returns the final progress."""
        if cancel:
            self._request_cancel()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout if timeout is not None else (5.0 if cancel else None))
        self._restore_process_settings()
        return self.progress()

    def progress(self) -> Progress:
        failure = None if self.failure is None else f"{type(self.failure).__name__}: {self.failure}"
        planned = self.feed.planned if self.feed is not None else len(self.plan)
        return Progress(planned, self.sent, self.completed, self.errors,
                        self._started and not self._finished.is_set(), self.cancelled, failure)

    def observations(self) -> list[Observation]:
        """A snapshot of the observations recorded so far, in completion order."""
        return list(self._obs.values())

    def wall_s(self) -> float | None:
        """Seconds from the replay's start (t0) to its last completed request; None before any."""
        if self.feed is not None:  # (no observation kept: the latest completion, tracked)
            last = self._last_done_ns
            return None if self.t0_ns is None or last is None else max(last - self.t0_ns, 0) / 1e9
        observations = self.observations()
        if self.t0_ns is None or not observations:
            return None
        return max(max(o.done_ns for o in observations) - self.t0_ns, 0) / 1e9

    def planned_key(self, key: int) -> bool:
        if self.feed is not None:
            return self.feed.planned_key(key)
        return key in self._planned

    def was_sent(self, key: int) -> bool:
        """Has request `key` an observation of its own (sent, or failed on its way)?"""
        return key in self._obs

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every planned request has its observation (or the run stopped); True if so."""
        return self._finished.wait(timeout)

    # -- the engine thread -----------------------------------------------------------------------
    def _thread_main(self) -> None:
        loop = new_event_loop(self.loop)
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.run())
        except BaseException as exc:  # noqa: BLE001 - never let the thread die silently
            if self.failure is None:
                self.failure = exc
            self._finish()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                pass
            asyncio.set_event_loop(None)
            loop.close()
            self._restore_process_settings()

    def _restore_process_settings(self) -> None:
        """Undo start()'s process-wide settings (switch interval, frozen GC): at stop or when the run ends."""
        saved, self._saved_switch = self._saved_switch, None
        if saved is not None:
            sys.setswitchinterval(saved)
        frozen, self._frozen = self._frozen, False
        if frozen:
            gc.unfreeze()

    def _request_cancel(self) -> None:
        self._cancel_requested = True
        loop, main = self._loop, self._main
        if loop is not None and main is not None:
            try:
                loop.call_soon_threadsafe(self._cancel_now)
            except RuntimeError:  # the loop is already closed: nothing left to cancel
                pass

    def _cancel_now(self) -> None:
        self.cancelled = True
        if self._main is not None and not self._main.done():
            self._main.cancel()

    async def run(self) -> list[Observation]:
        """The replay itself (the thread runs this; tests may run it with asyncio.run and a FakeClock).
        Returns the observations, in completion order."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._main = asyncio.current_task()
        self._started = True
        if self._cancel_requested:
            self._cancel_now()
        lanes = self._lanes
        if self.barriers is not None:
            self._gate = _Gate(self.barriers)
        # begin() declared by the target's class: a wrapper delegating other attributes to the target it
        # wraps (policy, differential) must not be bypassed through its __getattr__; `begins` False: a
        # wrapper whose begin() would decline every request (its inner target has none).
        self._fast = (self.fast and self.pipeline is None and callable(getattr(type(self.target), "begin", None))
                      and getattr(self.target, "begins", True))
        if self._fast:
            self._wake = self._fast_wake  # (the dispatcher's call, once per request: straight to the callback lane)
        if isinstance(self.clock, RealClock):  # (monotonic, like time.monotonic_ns: one clock read per request less)
            self._watch_ns = self.clock.now_ns
            self._watch_is_clock = True
        for p in self.plan:
            lane = lanes.get(p.lane)
            if lane is None:
                lanes[p.lane] = _Lane(p.lane, 1)
            else:
                lane.remaining += 1
        try:
            try:
                await self.target.start()
                if self.pipeline is not None:
                    await self.pipeline.start()
                watchdog = loop.create_task(self._watchdog())
                try:
                    self.t0_ns = self.clock.now_ns() + self.lead_ns
                    dispatch = self._dispatch if self.feed is None else self._dispatch_feed
                    self._dispatcher = loop.create_task(dispatch(self.t0_ns))
                    try:
                        await self._dispatcher
                    except asyncio.CancelledError:
                        if self.halted is None or self._main.cancelling():
                            raise
                    while self._live:
                        await asyncio.wait(list(self._live))
                    while self._fast_live:
                        self._fast_idle = loop.create_future()
                        await self._fast_idle
                finally:
                    watchdog.cancel()
            except asyncio.CancelledError:
                self.cancelled = True
                await self._cancel_lanes()
                if not self._cancel_requested:
                    raise  # cancelled from outside (not through stop): propagate, after cleaning up
            except BaseException as exc:
                self.failure = exc
                await self._cancel_lanes()
        finally:
            if self.pipeline is not None:
                try:
                    await asyncio.wait_for(self.pipeline.close(), _CLOSE_TIMEOUT_S)
                except BaseException:  # noqa: BLE001 - closing is best effort
                    pass
                if self.failure is None and self.pipeline.error is not None:
                    self.failure = self.pipeline.error
            try:
                await asyncio.wait_for(self.target.close(), _CLOSE_TIMEOUT_S)
            except BaseException:  # noqa: BLE001 - closing is best effort
                pass
            close = getattr(self.clock, "close", None)
            if close is not None:
                close()
            self._finish()
        return list(self._obs.values())

    async def _dispatch(self, t0: int) -> None:
        loop = asyncio.get_running_loop()
        now, sleep_until = self.clock.now_ns, self.clock.sleep_until
        lanes, spill = self._lanes, self.connections == "spill"
        burst = 0
        known = now()  # a time already passed: a deadline before it is due without reading the clock
        for p in self.plan:
            deadline = t0 + p.offset_ns
            if deadline > known and deadline > (known := now()):
                await sleep_until(deadline)
                burst = 0
            else:
                burst += 1
                if burst >= _BURST:
                    burst = 0
                    await asyncio.sleep(0)
            lane = lanes[p.lane]
            lane.remaining -= 1
            to = self._queue(p, lane, loop, spill)
            if not lane.remaining:  # idle lanes of the connection wake to see it is over
                for other in lane.all():
                    if other is not to:
                        self._wake(other, None)

    def _queue(self, p: PlannedRequest, lane: _Lane, loop, spill: bool) -> _Lane:
        """Queue `p` on its lane, or (spill, its lane busy) on an extra connection; returns where."""
        to = self._spill_lane(lane) if spill and not lane.idle else None
        if to is None:
            to = lane
        else:
            p = replace(p, lane=to.name)
            self.spilled += 1
        to.queue.append(p)
        self._wake(to, loop)
        return to

    def _wake(self, lane: _Lane, loop) -> None:
        """A lane with a request queued runs (its task made with `loop` when it has none). Callback lanes:
        `_fast_wake` (run() puts it in this method's place)."""
        if lane.task is None:
            if loop is None:
                return
            task = lane.task = loop.create_task(self._run_lane(lane))
            self._live.add(task)
            task.add_done_callback(self._live.discard)
        else:
            wake = lane.wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    def _spill_lane(self, lane: _Lane) -> _Lane | None:
        """An idle extra connection of `lane`'s captured connection, opened if none is and fewer than
        `concurrency` extra ones exist in all (None then: the request waits on its own lane)."""
        for spill in lane.spills:
            if spill.idle:
                return spill
        if self.extra_connections >= self.concurrency:
            return None
        spill = _Lane(f"{lane.name} [extra {len(lane.spills) + 1}]", 0, owner=lane)
        lane.spills.append(spill)
        self.extra_connections += 1
        return spill

    async def _dispatch_feed(self, t0: int) -> None:
        """`_dispatch` for a feed: lanes are made as their first request comes and end with the feed."""
        loop = asyncio.get_running_loop()
        now, sleep_until = self.clock.now_ns, self.clock.sleep_until
        lanes, feed, spill = self._lanes, self.feed, self.connections == "spill"
        burst = 0
        try:
            while True:
                batch = feed.take()
                if batch is None:
                    break
                if not batch:
                    await feed.ready(loop)
                    continue
                for p in batch:
                    deadline = t0 + p.offset_ns
                    if deadline > now():
                        await sleep_until(deadline)
                        burst = 0
                    else:
                        burst += 1
                        if burst >= _BURST:
                            burst = 0
                            await asyncio.sleep(0)
                    lane = lanes.get(p.lane)
                    if lane is None:
                        lane = lanes[p.lane] = _Lane(p.lane, 1)  # (remaining: 1 until the feed ends)
                    to = self._queue(p, lane, loop, spill)
                    if p.last:  # its captured connection has no more: the lane ends when drained (_drop)
                        self._end_lane(lane, but=to)
        finally:
            for lane in list(lanes.values()):  # the feed is over (or the dispatch stopped): lanes end when drained
                self._end_lane(lane)

    def _end_lane(self, lane: _Lane, but=None) -> None:
        """A feed's lane gets no more requests: it ends once drained; its idle connections are woken to
        see that (`but`: the one just given a request)."""
        lane.remaining = 0
        for each in lane.all():
            if each is not but:
                self._wake(each, None)

    async def _run_lane(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        target, clock, record = self.target, self.clock, self._record
        t0, timeout_s = self.t0_ns, self.timeout_s
        now, send, watch_ns = clock.now_ns, target.send, self._watch_ns
        timeout_ns = self._timeout_ns
        queue, slots, busy = lane.queue, self._slot_queue, self._busy
        gate = self._gate
        owner = lane.owner or lane
        spilled = lane.owner is not None
        watched = self.monitor is not None
        try:
            while True:
                if self.halted is not None:
                    break
                if not queue:
                    if owner.remaining == 0:
                        break
                    lane.wake = loop.create_future()
                    await lane.wake
                    lane.wake = None
                    continue
                p = queue.popleft()
                lane.active = True
                deadline = t0 + p.offset_ns
                # Its connection was busy with the previous request past its deadline: that long.
                lane_wait = lane.free_ns - deadline if lane.free_ns > deadline else 0
                barrier_wait = slot_wait = 0
                ideal = None  # when this request would have completed had the engine been on time
                if gate is not None:  # before taking a slot: what it waits for may need one
                    barrier = gate.wait(p.key, loop)
                    if barrier is not None:
                        since = max(now(), deadline)
                        released = await barrier
                        barrier_wait = _on_time(max(now() - since, 0), released, deadline + lane_wait)
                if self._free > 0 and not slots:
                    self._free -= 1
                else:
                    since = max(now(), deadline)
                    released = await self._wait_slot(loop)
                    slot_wait = _on_time(max(now() - since, 0), released, deadline + lane_wait + barrier_wait)
                try:
                    if self.halted is not None:  # stopped while it waited: not sent
                        break
                    if self.pipeline is not None:
                        try:
                            p = await self.pipeline.prepare(p)
                        except Exception as exc:  # noqa: BLE001
                            if not self._pipeline_failed(p, deadline, exc):
                                continue
                            return  # the run is being stopped
                    start = now()
                    self.sent += 1
                    busy[lane] = watch_ns() + timeout_ns
                    waits = (lane_wait, barrier_wait, slot_wait, spilled)
                    if watched:  # stop conditions see the requests in flight (_in_flight)
                        lane.deadline, lane.start, lane.waits = deadline, start, waits
                    try:
                        response, sent_ns, first_ns, done_ns = await send(p, clock)
                        obs = Observation(p.key, deadline, sent_ns, first_ns, done_ns, response, None, None, *waits)
                    except TargetError as exc:
                        obs = Observation(p.key, deadline, exc.sent_ns if exc.sent_ns is not None else start,
                                          exc.first_byte_ns, now(), None, exc.kind, exc.message, *waits)
                    except asyncio.CancelledError:
                        if not lane.timed_out or lane.task.uncancel() > 0:
                            busy.pop(lane, None)
                            record(Observation(p.key, deadline, start, None, now(), None, CANCELLED,
                                               "cancelled: the replay was stopped while this request was in flight",
                                               *waits))
                            raise
                        lane.timed_out = False  # the watchdog's cancellation: a timeout, the lane goes on
                        obs = Observation(p.key, deadline, start, None, now(), None, TIMEOUT,
                                          f"no complete response within {timeout_s:g} s", *waits)
                    except Exception as exc:  # noqa: BLE001 - a target bug must not kill the engine
                        obs = Observation(p.key, deadline, start, None, now(), None, APP_ERROR, describe(exc),
                                          *waits)
                    if lane.timed_out:  # the target swallowed the watchdog's cancellation
                        lane.timed_out = False
                        lane.task.uncancel()
                    else:
                        busy.pop(lane, None)
                    ideal = lane.free_ns = deadline + _queued(deadline, start, waits) + obs.done_ns - obs.sent_ns  # (_Lane)
                    record(obs, ideal)
                    if self.pipeline is not None:
                        await self.pipeline.observed(p, obs)
                finally:
                    lane.active = False
                    self._release_slot(ideal)
        finally:
            lane.task = None
            lane.active = False
            close_lane = getattr(target, "close_lane", None)
            if close_lane is not None:
                try:
                    close_lane(lane.name)
                except Exception:  # noqa: BLE001
                    pass
            self._drop(lane)

    def _drop(self, lane: _Lane) -> None:
        """A feed's lane that ended with its captured connection's last request (PlannedRequest.last),
        drained, with no extra connection: forgotten, so that a capture of many short connections does
        not keep one lane per connection to the feed's end. A lane still to be cancelled or ended by the
        run's end stays (halted, stopped, spill lanes, lanes without their last request)."""
        if (self.feed is not None and lane.remaining == 0 and lane.owner is None and not lane.spills
                and lane.idle and self.halted is None and not self._fast_stopped and self._dispatcher is not None
                and not self._dispatcher.done() and self._lanes.get(lane.name) is lane):
            del self._lanes[lane.name]

    # -- callback lanes (the fast path) ---------------------------------------------------------------
    # The steps of _run_lane as callbacks: a lane takes its next request when one is queued or when
    # its previous one completes (target.begin() calls `lane.on_done` from the protocol), waits for a
    # barrier or a slot with a callback, and ends when its connection has nothing more to send. The
    # common case (no barrier, a free slot) is straight-line code: this runs once per request.
    def _fast_wake(self, lane: _Lane, loop) -> None:
        if not lane.live:
            if loop is None or self._fast_stopped:
                return
            lane.live = True
            self._fast_live += 1
            if lane.on_done is None:
                lane.on_done = partial(self._fast_done, lane)
                lane.on_task = partial(self._fast_task_done, lane)
        if not lane.active:
            self._fast_take(lane)

    def _fast_end(self, lane: _Lane) -> None:
        if not lane.live:
            return
        lane.live = False
        self._fast_live -= 1
        close_lane = getattr(self.target, "close_lane", None)
        if close_lane is not None:
            try:
                close_lane(lane.name)
            except Exception:  # noqa: BLE001
                pass
        self._drop(lane)
        idle = self._fast_idle
        if not self._fast_live and idle is not None and not idle.done():
            idle.set_result(None)

    def _fast_take(self, lane: _Lane) -> None:
        """The lane is free: send its next request (after its barrier and slot), or end."""
        queue = lane.queue
        if not queue or self.halted is not None or self._fast_stopped:
            if self.halted is not None or self._fast_stopped or (lane.owner or lane).remaining == 0:
                self._fast_end(lane)
            return  # (else until the dispatcher queues its next request)
        p = queue.popleft()
        lane.active = True
        deadline = self.t0_ns + p.offset_ns
        # Its connection was busy with the previous request past its deadline: that long.
        lane_wait = lane.free_ns - deadline if lane.free_ns > deadline else 0
        if self._gate is not None:
            self._fast_barrier(lane, p, deadline, lane_wait)
        elif self._free > 0 and not self._slot_queue:
            self._free -= 1
            self._fast_send(lane, p, deadline, lane_wait, 0, 0)
        else:
            self._fast_slot(lane, p, deadline, lane_wait, 0)

    def _fast_barrier(self, lane: _Lane, p: PlannedRequest, deadline: int, lane_wait: int) -> None:
        barrier = self._gate.wait(p.key, self._loop)
        if barrier is None:
            self._fast_slot(lane, p, deadline, lane_wait, 0)
            return
        now = self.clock.now_ns
        since = max(now(), deadline)

        def released(barrier: asyncio.Future) -> None:
            waited = _on_time(max(now() - since, 0), barrier.result(), deadline + lane_wait)
            self._fast_slot(lane, p, deadline, lane_wait, waited)

        barrier.add_done_callback(released)

    def _fast_slot(self, lane: _Lane, p: PlannedRequest, deadline: int, lane_wait: int, barrier_wait: int) -> None:
        if self._fast_stopped:
            return
        if self._free > 0 and not self._slot_queue:
            self._free -= 1
            self._fast_send(lane, p, deadline, lane_wait, barrier_wait, 0)
            return
        now = self.clock.now_ns
        since = max(now(), deadline)
        queued_at = deadline + lane_wait + barrier_wait

        def released(ideal: int | None) -> None:
            waited = _on_time(max(now() - since, 0), ideal, queued_at)
            self._fast_send(lane, p, deadline, lane_wait, barrier_wait, waited)

        self._slot_queue.append(released)

    def _fast_send(self, lane: _Lane, p: PlannedRequest, deadline: int, lane_wait: int, barrier_wait: int,
                   slot_wait: int) -> None:
        """Send `p` (its slot taken): through target.begin(), or a task awaiting target.send()."""
        if self.halted is not None or self._fast_stopped:  # stopped while it waited: not sent
            lane.active = False
            self._release_slot()
            self._fast_end(lane)
            return
        start = self.clock.now_ns()
        self.sent += 1
        lane.planned = p
        lane.deadline = deadline
        lane.start = start
        if lane_wait or barrier_wait or slot_wait or lane.owner is not None:
            lane.waits = (lane_wait, barrier_wait, slot_wait, lane.owner is not None)
        else:
            lane.waits = _NO_WAITS
        self._busy[lane] = (start if self._watch_is_clock else self._watch_ns()) + self._timeout_ns
        lane.sending = True
        try:
            if not self.target.begin(p, self.clock, lane.on_done):
                task = lane.fallback = self._loop.create_task(self.target.send(p, self.clock))
                task.add_done_callback(lane.on_task)
        except BaseException as exc:  # noqa: BLE001 - a target bug: this request's observation
            lane.sending = False
            self._fast_done(lane, None, None, None, None, exc)
            return
        lane.sending = False

    def _fast_task_done(self, lane: _Lane, task: asyncio.Task) -> None:
        if task is not lane.fallback:  # timed out or cancelled meanwhile: already recorded
            return
        lane.fallback = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fast_done(lane, None, None, None, None, exc)
        else:
            self._fast_done(lane, *task.result(), None)

    def _fast_done(self, lane: _Lane, response, sent_ns, first_ns, done_ns, error) -> None:
        """The request in flight on `lane` completed (error None) or failed: its observation, then the
        lane's next request."""
        if lane.sending:  # called back from inside begin(): go on once it returned (no recursion)
            self._loop.call_soon(self._fast_done, lane, response, sent_ns, first_ns, done_ns, error)
            return
        p = lane.planned
        if p is None or self._fast_stopped:
            return
        try:
            lane.planned = None
            self._busy.pop(lane, None)
            if error is None:
                obs = Observation(p.key, lane.deadline, sent_ns, first_ns, done_ns, response, None, None, *lane.waits)
            else:
                obs = self._fast_error(lane, p, error)
            deadline = lane.deadline
            ideal = lane.free_ns = deadline + _queued(deadline, lane.start, lane.waits) + obs.done_ns - obs.sent_ns  # (_Lane)
            self._record(obs, ideal)
            lane.active = False
            if self._slot_queue:
                self._release_slot(ideal)
            else:
                self._free += 1
            self._fast_take(lane)
        except BaseException as exc:  # noqa: BLE001 - a bug here (or in an observer): the run fails
            self._fast_failed(exc)

    def _fast_error(self, lane: _Lane, p: PlannedRequest, error: BaseException) -> Observation:
        if isinstance(error, TargetError):
            sent = error.sent_ns if error.sent_ns is not None else lane.start
            return Observation(p.key, lane.deadline, sent, error.first_byte_ns, self.clock.now_ns(), None, error.kind,
                               error.message, *lane.waits)
        # a target bug must not kill the engine
        return Observation(p.key, lane.deadline, lane.start, None, self.clock.now_ns(), None, APP_ERROR,
                           describe(error), *lane.waits)

    def _fast_timeout(self, lane: _Lane) -> None:
        """The watchdog: the request in flight on `lane` timed out. The target drops the connection
        (its completion never comes), the lane goes on."""
        p = lane.planned
        if p is None:
            return
        task, lane.fallback = lane.fallback, None
        error = TargetError(TIMEOUT, f"no complete response within {self.timeout_s:g} s", sent_ns=lane.start)
        try:
            if task is None:
                self.target.abort_lane(lane.name)
                self._fast_done(lane, None, None, None, None, error)
            else:  # observed once the target has dropped the connection (its send's cleanup), as in _run_lane
                task.cancel()
                task.add_done_callback(lambda _: self._fast_done(lane, None, None, None, None, error))
        except BaseException as exc:  # noqa: BLE001
            self._fast_failed(exc)

    def _fast_failed(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self._request_cancel()

    async def _fast_cancel(self) -> None:
        """The run is cancelled: requests in flight get a "cancelled" observation, their connections
        are dropped, every lane ends; callbacks still to come change nothing."""
        self._fast_stopped = True
        tasks = []
        abort_lane = getattr(self.target, "abort_lane", None)
        for lane in [one for captured in self._lanes.values() for one in captured.all()]:
            p = lane.planned
            if p is not None:
                lane.planned = None
                self._busy.pop(lane, None)
                task, lane.fallback = lane.fallback, None
                if task is not None:
                    task.cancel()
                    tasks.append(task)
                elif abort_lane is not None:
                    abort_lane(lane.name)
                self._record(Observation(p.key, lane.deadline, lane.start, None, self.clock.now_ns(), None, CANCELLED,
                                         "cancelled: the replay was stopped while this request was in flight",
                                         *lane.waits))
            lane.active = False
            self._fast_end(lane)
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def _pipeline_failed(self, p: PlannedRequest, deadline: int, exc: Exception) -> bool:
        """A request the pipeline would not let through: recorded as dropped (False: go on), as
        unparsable (a middleware's answer that is not a request), or the whole replay stops (True:
        a broken middleware is a failure of the run)."""
        now = self.clock.now_ns()
        if isinstance(exc, Dropped):
            self._record(Observation(p.key, deadline, now, None, now, None, DROPPED, str(exc)))
            return False
        if isinstance(exc, PipelineFailure):
            self.failure = exc
            self._record(Observation(p.key, deadline, now, None, now, None, CANCELLED, f"middleware failed: {exc}"))
            self._request_cancel()
            return True
        kind = UNPARSABLE if isinstance(exc, ValueError) else APP_ERROR
        self._record(Observation(p.key, deadline, now, None, now, None, kind,
                                 f"the request hook or middleware failed: {describe(exc)}"))
        return False

    async def _watchdog(self) -> None:
        """Times out requests: one timer for all of them (an asyncio.timeout per request cost ~12% of
        the throughput). A timeout fires between timeout_s and timeout_s + tick; tick is 5% of it."""
        tick = min(max(self.timeout_s / 20, 0.002), 0.25)
        busy = self._busy
        monitor = self.monitor
        watch_ns = self._watch_ns
        while True:
            await asyncio.sleep(tick)
            now = watch_ns()
            if monitor is not None and self.t0_ns is not None:  # a window with no completion is judged too
                second = max(self.clock.now_ns() - self.t0_ns, 0) // 1_000_000_000
                if second > monitor.judged:
                    trip = monitor.tick(second)
                    if trip is not None:
                        self._halt(trip)
            for lane in [lane for lane, limit in busy.items() if limit <= now]:
                del busy[lane]
                if self._fast:
                    self._fast_timeout(lane)
                elif lane.task is not None:
                    lane.timed_out = True
                    lane.task.cancel()

    def _in_flight(self) -> list[tuple[int, int | None]]:
        """(response time from schedule so far, service time so far or None) of each request waiting for
        the target now: those in flight, and those queued behind them on their connection (which wait at
        least until the one in flight would have completed had the engine been on time). For stop
        conditions: a target that stops answering trips them before the timeouts come."""
        now, t0 = self.clock.now_ns(), self.t0_ns or 0
        out: list[tuple[int, int | None]] = []
        if not self.scheduled:  # no schedule: nothing queues behind one; a request waits from its send
            return [(max(now - lane.start, 0),) * 2 for lane in list(self._busy)]
        for lane in list(self._busy):
            deadline, start = lane.deadline, lane.start
            age = max(now - start, 0) + _queued(deadline, start, lane.waits)
            out.append((age, max(now - start, 0)))
            until = deadline + age
            for p in lane.queue:  # in deadline order
                due = t0 + p.offset_ns
                if due >= until:
                    break
                out.append((until - due, None))
        return out

    async def _wait_slot(self, loop) -> int | None:
        """A slot, once one is free: returns when its previous holder would have completed had the engine
        been on time (None: not known)."""
        fut = loop.create_future()
        self._slot_queue.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release_slot(fut.result())  # the slot was handed over just as we were cancelled
            raise

    def _release_slot(self, ideal: int | None = None) -> None:
        """Hand the slot to the first request waiting for one, with `ideal`: when the request that held it
        would have completed had the engine been on time (None: it was not sent)."""
        slots = self._slot_queue
        while slots:
            fut = slots.popleft()
            if callable(fut):  # a callback lane's (fast path): it goes on at the loop's next turn
                self._loop.call_soon(fut, ideal)
                return
            if not fut.done():
                fut.set_result(ideal)  # hand the slot over: first come, first served
                return
        self._free += 1

    def _halt(self, trip) -> None:
        """A stop condition tripped: send nothing more; requests in flight complete."""
        if self.halted is not None:
            return
        self.halted = trip
        dispatcher = self._dispatcher
        if dispatcher is not None and not dispatcher.done():
            dispatcher.cancel()
        for lane in [one for captured in self._lanes.values() for one in captured.all()]:
            lane.queue.clear()
            wake = lane.wake
            if wake is not None and not wake.done():
                wake.set_result(None)
            if lane.live and not lane.active:  # a callback lane waiting for its next request: it ends
                self._fast_end(lane)
        gate = self._gate
        if gate is not None:  # whatever they waited for will not come: let them see the halt
            for entry in gate.by_writes + gate.by_all:
                fut = entry[-1]
                if not fut.done():
                    fut.set_result(None)
            gate.by_writes.clear()
            gate.by_all.clear()

    def _record(self, obs: Observation, ideal: int | None = None) -> None:
        """Keep (or hand on) `obs`; `ideal`: when its request would have completed had the engine been on
        time (_Lane.free_ns; worked out from `obs` when not given)."""
        if not self.scheduled:
            if ideal is None and self._gate is not None:
                ideal = _ideal_done(obs)  # (the barriers' bookkeeping keeps the engine's own times)
            obs = obs.unscheduled()
        if self.feed is None:
            self._obs[obs.key] = obs
        elif self._last_done_ns is None or obs.done_ns > self._last_done_ns:
            self._last_done_ns = obs.done_ns
        self.completed += 1
        monitor = self.monitor
        if monitor is not None and self.t0_ns is not None:
            trip = monitor.add(obs, self.t0_ns)
            if trip is not None:
                self._halt(trip)
        if self._gate is not None:
            self._gate.completed(obs.key, _ideal_done(obs) if ideal is None else ideal)
        if obs.error_kind is not None:
            self.errors += 1
        if not self.completed % _REFREEZE_EVERY and self._frozen:
            # The observations pile up in the oldest generation, and each full collection scans them
            # all (measured: 23 ms at 45k observations, a stall of every send). Collect the young
            # generations, then freeze what survived: full collections stay small.
            gc.collect(1)
            gc.freeze()
        event = self._waiters.pop(obs.key, None)
        if event is not None:
            event.set()
        if self.observer is not None:
            self.observer(obs)

    async def _cancel_lanes(self) -> None:
        if self._fast:
            await self._fast_cancel()
        tasks = [t for t in self._live if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    def _finish(self) -> None:
        self._finished.set()
        for event in list(self._waiters.values()):
            event.set()

    def _not_sent(self, key: int) -> Observation:
        p = self._planned.get(key)
        deadline = (self.t0_ns or 0) + (p.offset_ns if p is not None else 0)
        if self.halted is not None:
            why = f"not sent: the replay was stopped by --replay-abort-on '{self.halted.condition}'"
        elif self.failure is not None:
            why = f"not sent: the replay engine failed ({type(self.failure).__name__}: {self.failure})"
        else:
            why = "not sent: the replay was stopped"
        return Observation(key, deadline, deadline, None, max(deadline, self.clock.now_ns()), None, CANCELLED, why)

