"""The replay engine (pytest_replay.schedule.engine) with a fake clock and a recording fake target.

Under FakeClock time moves only when every coroutine waits, and jumps to the next deadline: the
deadlines, lateness and overlaps asserted here are exact nanoseconds, not tolerances.

Every test runs twice: on the engine's callback lanes (its fast path: the Recorder offers begin()) and
on its coroutine lanes (the reference, `Engine(fast=False)`); a Hypothesis test compares the two.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time

import pytest

from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.schedule.clock import FakeClock, RealClock
from pytest_replay.schedule.engine import Engine
from pytest_replay.schedule.plan import PlannedRequest, Timing, build_plan
from pytest_replay.schedule.target import APP_ERROR, CANCELLED, REFUSED, TIMEOUT, TargetError

MS = 1_000_000
LEAD = 50 * MS
REQ = Request.build("GET", "/x", ((b"Host", b"example"),))


@pytest.fixture(autouse=True, params=["callback lanes", "coroutine lanes"])
def lanes(request, monkeypatch):
    """The engine's two paths: every test here runs on both."""
    monkeypatch.setattr(Engine, "fast_path", request.param == "callback lanes")
    return request.param


class Recorder:
    """A target that records each send (key, lane, time) and answers after `latency(planned)` ns of
    clock time. `hang` keys never answer; `fail` maps keys to exceptions to raise. It offers both the
    coroutine `send` and the engine's callback protocol (`begin`, `abort_lane`, as targets/raw.py)."""

    name = "recorder"

    def __init__(self, latency=0, hang=(), fail=None):
        self.latency = latency if callable(latency) else (lambda planned: latency)
        self.hang = set(hang)
        self.fail = fail or {}
        self.sends: list[tuple[int, str, int]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled: list[int] = []
        self.closed_lanes: list[str] = []
        self.closed = False
        self.begun: dict[str, asyncio.Task] = {}

    async def start(self):
        pass

    async def send(self, planned, clock):
        sent = clock.now_ns()
        self.sends.append((planned.key, planned.lane, sent))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if planned.key in self.fail:
                raise self.fail[planned.key]
            if planned.key in self.hang:
                await asyncio.get_running_loop().create_future()
            latency = self.latency(planned)
            if latency:
                await clock.sleep_until(sent + latency)
            done = clock.now_ns()
            return Response.build(200, "OK", body=str(planned.key).encode()), sent, done, done
        except asyncio.CancelledError:
            self.cancelled.append(planned.key)
            raise
        finally:
            self.in_flight -= 1

    def begin(self, planned, clock, done):
        """send(), its outcome called back (from the loop, never from inside this call)."""
        task = asyncio.get_running_loop().create_task(self.send(planned, clock))
        self.begun[planned.lane] = task

        def finished(task):
            if self.begun.get(planned.lane) is task:
                del self.begun[planned.lane]
            if task.cancelled():  # abort_lane
                return
            if task.exception() is not None:
                done(None, None, None, clock.now_ns(), task.exception())
            else:
                done(*task.result(), None)

        task.add_done_callback(finished)
        return True

    def abort_lane(self, lane):
        task = self.begun.pop(lane, None)
        if task is not None:
            task.cancel()

    def close_lane(self, lane):
        self.closed_lanes.append(lane)

    async def close(self):
        self.closed = True


def plan_of(rows):
    """rows: (offset_ns, lane) in plan order; keys are 0..n-1."""
    return [PlannedRequest(i, offset, lane, REQ, b"") for i, (offset, lane) in enumerate(rows)]


def run(plan, target, **kwargs):
    engine = Engine(plan, target, clock=FakeClock(), **kwargs)
    observations = asyncio.run(engine.run())
    return engine, {o.key: o for o in observations}


def exchange(index, ts_ns, connection):
    return Exchange(index, REQ, None, ts_ns, None, connection, 0, Source("capture.gor", 0))


# -- deadlines ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("timing, expected", [
    (Timing(speed=2.0), [0, 500 * MS, 1500 * MS, 3000 * MS, 3000 * MS + 5 * MS]),
    (Timing(rate=100.0), [0, 10 * MS, 20 * MS, 30 * MS, 40 * MS]),
    (Timing(speed=1.0, max_wait_ns=1500 * MS), [0, 1000 * MS, 2500 * MS, 4000 * MS, 4010 * MS]),
    (Timing(speed=0), [0, 0, 0, 0, 0]),
])
def test_requests_go_exactly_at_t0_plus_offset(timing, expected):
    stamps = [0, 1000 * MS, 3000 * MS, 6000 * MS, 6010 * MS]
    exchanges = [exchange(i, ts, f"conn{i % 2}") for i, ts in enumerate(stamps)]
    plan = build_plan(exchanges, timing)
    assert [p.offset_ns for p in plan] == expected
    engine, obs = run(plan, Recorder(latency=MS), concurrency=64)
    assert engine.t0_ns == LEAD  # FakeClock starts at 0; t0 = now + lead_ns
    for p in plan:
        o = obs[p.key]
        assert o.ok and o.deadline_ns == LEAD + p.offset_ns
        if timing.speed != 0:
            assert o.sent_ns == o.deadline_ns and o.lateness_ns == 0
    assert engine.progress().completed == 5 and engine.progress().errors == 0


def test_speed_zero_sends_everything_at_once_per_lane_in_order():
    plan = plan_of([(0, f"lane{i % 3}") for i in range(12)])
    target = Recorder(latency=2 * MS)
    _, obs = run(plan, target)
    for lane in ("lane0", "lane1", "lane2"):
        sent = [(k, t) for k, l, t in target.sends if l == lane]
        assert [k for k, _ in sent] == sorted(k for k, _ in sent)  # plan order within the lane
        assert [t for _, t in sent] == [LEAD + 2 * MS * i for i in range(4)]  # back to back
    assert target.max_in_flight == 3  # the three lanes run concurrently


# -- lanes, lateness, concurrency ---------------------------------------------------------------------------
def test_busy_lane_makes_its_next_request_late_by_exactly_the_wait():
    # lane A: requests at 0, 1, 2, 10 ms; each answer takes 2.5 ms -> 2nd waits 1.5 ms, 3rd 3 ms.
    plan = plan_of([(0, "A"), (1 * MS, "A"), (2 * MS, "A"), (10 * MS, "A")])
    _, obs = run(plan, Recorder(latency=2_500_000))
    assert [obs[k].lateness_ns for k in range(4)] == [0, 1_500_000, 3_000_000, 0]
    assert [obs[k].sent_ns - LEAD for k in range(4)] == [0, 2_500_000, 5_000_000, 10 * MS]


def test_lanes_are_concurrent_and_a_slow_lane_does_not_delay_others():
    # lane A's first request takes 50 ms; lane B sends every 5 ms meanwhile, each exactly on time.
    rows = [(0, "A")] + [(i * 5 * MS, "B") for i in range(1, 8)] + [(20 * MS, "A")]
    plan = plan_of(rows)
    target = Recorder(latency=lambda p: 50 * MS if p.key == 0 else MS)
    _, obs = run(plan, target)
    for key in range(1, 8):
        assert obs[key].lateness_ns == 0
    assert obs[8].lateness_ns == 30 * MS  # A's second request waited for A's first answer
    assert target.max_in_flight == 2


def test_concurrency_bound_is_respected_and_waiting_shows_as_lateness():
    plan = plan_of([(0, f"L{i}") for i in range(10)])
    target = Recorder(latency=10 * MS)
    _, obs = run(plan, target, concurrency=3)
    assert target.max_in_flight == 3
    late = sorted(o.lateness_ns for o in obs.values())
    assert late == [0] * 3 + [10 * MS] * 3 + [20 * MS] * 3 + [30 * MS]  # FIFO slots, in waves


def test_lateness_never_accumulates():
    # 1000 requests 1 ms apart, round robin on 4 lanes, each answered in 0.9 ms: all on time, and a
    # 20 ms stall of one early request only delays its own lane until it catches up.
    rows = [(i * MS, f"L{i % 4}") for i in range(1000)]
    target = Recorder(latency=lambda p: 20 * MS if p.key == 10 else 900_000)
    _, obs = run(plan_of(rows), target)
    lateness = [obs[k].lateness_ns for k in range(1000)]
    late_keys = [k for k, v in enumerate(lateness) if v]
    assert late_keys and all(k % 4 == 2 and k < 40 for k in late_keys)  # lane L2 right after the stall
    assert lateness[-100:] == [0] * 100


def test_unordered_plan_is_sorted_by_offset():
    plan = [PlannedRequest(0, 5 * MS, "A", REQ, b""), PlannedRequest(1, 1 * MS, "B", REQ, b"")]
    target = Recorder()
    _, obs = run(plan, target)
    assert [k for k, _, _ in target.sends] == [1, 0]
    assert obs[0].lateness_ns == 0 and obs[1].lateness_ns == 0


def test_duplicate_keys_are_rejected():
    with pytest.raises(ValueError):
        Engine([PlannedRequest(1, 0, "A", REQ, b"")] * 2, Recorder())


def test_close_lane_is_called_after_each_lanes_last_request():
    plan = plan_of([(0, "A"), (MS, "B"), (2 * MS, "A")])
    target = Recorder()
    run(plan, target)
    assert sorted(target.closed_lanes) == ["A", "B"] and target.closed


# -- errors ----------------------------------------------------------------------------------------------------
def test_target_exceptions_become_that_requests_observation():
    fail = {1: RuntimeError("boom"), 2: TargetError(REFUSED, "connection refused by x:1", sent_ns=LEAD + 7)}
    plan = plan_of([(0, "A"), (MS, "A"), (2 * MS, "A"), (3 * MS, "A")])
    engine, obs = run(plan, Recorder(fail=fail))
    assert obs[0].ok and obs[3].ok
    assert obs[1].error_kind == APP_ERROR and obs[1].error.startswith("RuntimeError: boom")
    assert obs[2].error_kind == REFUSED and obs[2].sent_ns == LEAD + 7
    progress = engine.progress()
    assert (progress.sent, progress.completed, progress.errors) == (4, 4, 2)


def test_timeout_gives_timeout_observation_and_the_lane_goes_on():
    plan = plan_of([(0, "A"), (MS, "A")])
    target = Recorder(hang={0})
    started = time.monotonic()
    _, obs = run(plan, target, timeout_s=0.05)  # the timeout runs on the loop's real time
    assert time.monotonic() - started < 2
    assert obs[0].error_kind == TIMEOUT and "0.05 s" in obs[0].error
    assert target.cancelled == [0]  # the target saw the cancellation (and drops its connection)
    assert obs[1].ok


def test_start_failure_is_reported_and_waits_return():
    class Broken(Recorder):
        async def start(self):
            raise OSError("no way")

    engine = Engine(plan_of([(0, "A")]), Broken(), clock=RealClock(), lead_ns=0)
    engine.start()
    obs = engine.wait(0, timeout=5)
    assert obs.error_kind == CANCELLED and "engine failed" in obs.error and "no way" in obs.error
    assert engine.stop().failure.startswith("OSError")


# -- the thread API ----------------------------------------------------------------------------------------------
def test_threaded_run_wait_and_progress():
    plan = plan_of([(i * 100_000, f"L{i % 8}") for i in range(2000)])
    engine = Engine(plan, Recorder(latency=50_000), lead_ns=MS)
    before = sys.getswitchinterval()
    engine.start()
    assert sys.getswitchinterval() <= 0.0002 + 1e-9
    assert gc.get_freeze_count() > 0
    got = [engine.wait(k, timeout=10) for k in range(0, 2000, 7)]
    assert all(o.ok for o in got)
    progress = engine.stop()
    assert progress.completed == 2000 and progress.sent == 2000 and not progress.running
    assert len(engine.observations()) == 2000
    assert sys.getswitchinterval() == before and gc.get_freeze_count() == 0
    with pytest.raises(KeyError):
        engine.wait(99999)


def test_wait_timeout_raises_timeouterror():
    engine = Engine(plan_of([(10_000 * MS, "A")]), Recorder(), lead_ns=0)
    engine.start()
    try:
        with pytest.raises(TimeoutError):
            engine.wait(0, timeout=0.05)
    finally:
        engine.stop(cancel=True)


def test_stop_cancel_is_prompt_and_waits_get_cancelled_observations():
    # 5,000 requests over 10 s; lane L0 hangs on its first request (in flight when we stop).
    plan = plan_of([(i * 2 * MS, f"L{i % 10}") for i in range(5000)])
    target = Recorder(latency=100_000, hang={0})
    engine = Engine(plan, target, lead_ns=0)
    engine.start()
    time.sleep(0.3)
    waiter_result = []
    waiter = threading.Thread(target=lambda: waiter_result.append(engine.wait(4999)))
    waiter.start()
    started = time.monotonic()
    progress = engine.stop(cancel=True)
    assert time.monotonic() - started < 1.0
    waiter.join(1.0)
    assert waiter_result and waiter_result[0].error_kind == CANCELLED
    assert "stopped" in waiter_result[0].error and waiter_result[0].lateness_ns == 0
    assert progress.cancelled and not progress.running and 0 < progress.completed < 5000
    in_flight = engine.wait(0)
    assert in_flight.error_kind == CANCELLED and "in flight" in in_flight.error
    assert 0 in target.cancelled and target.closed
    t0 = time.monotonic()
    assert engine.wait(4000).error_kind == CANCELLED and time.monotonic() - t0 < 0.1
    done = [o for o in engine.observations() if o.ok]
    assert len(done) == progress.completed - progress.errors


def test_fake_clock_wakes_concurrent_sleepers_in_deadline_order():
    clock = FakeClock()
    woke = []

    async def sleeper(name, deadline):
        await clock.sleep_until(deadline)
        woke.append((name, clock.now_ns()))

    async def main():
        await asyncio.gather(sleeper("c", 30), sleeper("a", 10), sleeper("b", 20), sleeper("now", 0))

    asyncio.run(main())
    assert woke == [("now", 0), ("a", 10), ("b", 20), ("c", 30)]


def test_real_clock_sleep_until_is_precise():
    clock = RealClock()

    async def main():
        late = []
        for _ in range(50):
            deadline = clock.now_ns() + 300_000
            await clock.sleep_until(deadline)
            late.append(clock.now_ns() - deadline)
        clock.close()
        return late

    late = sorted(asyncio.run(main()))
    assert late[0] >= 0
    assert late[len(late) // 2] < 2 * MS  # typically ~30 us with the timerfd; generous for loaded CI


def test_empty_plan_finishes_at_once():
    engine, obs = run([], Recorder())
    assert obs == {} and engine.finished and engine.progress().planned == 0


def test_cancelling_run_from_outside_propagates_after_cleanup():
    target = Recorder(hang={0})
    engine = Engine(plan_of([(0, "A"), (MS, "B")]), target, clock=FakeClock())

    async def main():
        task = asyncio.ensure_future(engine.run())
        for _ in range(20):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert engine.finished and target.closed and engine.wait(0).error_kind == CANCELLED


# -- write barriers ---------------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_replay.schedule.plan import write_barriers  # noqa: E402


def recorded(index, start_ms, took_ms, connection):
    answered = None if took_ms is None else (start_ms + took_ms) * MS
    return Exchange(index, REQ, None, start_ms * MS, answered, connection, 0, Source("capture.gor", 0))


def test_no_sent_write_no_barriers():
    exchanges = [recorded(i, i, 1, f"c{i}") for i in range(5)]
    assert write_barriers(exchanges, lambda e: False) is None


def test_a_read_after_a_write_waits_for_it_and_a_write_for_the_reads_before_it():
    # c1: a slow read done at 1 ms; c2: a write at 2-3 ms; c3: a read at 4 ms (after the write)
    exchanges = [recorded(0, 0, 1, "c1"), recorded(1, 2, 1, "c2"), recorded(2, 4, 1, "c3")]
    barriers = write_barriers(exchanges, lambda e: e.index == 1)
    assert barriers.needs == {1: (0, 1), 2: (1, 0)}
    plan = build_plan(exchanges, Timing(speed=0))
    target = Recorder(latency=lambda p: {0: 30 * MS, 1: 20 * MS, 2: MS}[p.key])
    _, obs = run(plan, target, barriers=barriers)
    assert obs[1].sent_ns == obs[0].done_ns == LEAD + 30 * MS  # the write waited for the read before it
    assert obs[2].sent_ns == obs[1].done_ns == LEAD + 50 * MS  # the read waited for the write
    assert obs[2].lateness_ns == 50 * MS  # the wait shows as lateness
    _, unordered = run(plan, Recorder(latency=lambda p: {0: 30 * MS, 1: 20 * MS, 2: MS}[p.key]))
    assert {o.sent_ns for o in unordered.values()} == {LEAD}  # without barriers: all at once


def test_concurrent_requests_are_not_ordered():
    # the read starts while the write is in flight (recorded): they were concurrent, no order to keep
    exchanges = [recorded(0, 0, 5, "c1"), recorded(1, 2, 1, "c2")]
    assert write_barriers(exchanges, lambda e: e.index == 0) is not None
    assert write_barriers(exchanges, lambda e: e.index == 0).needs == {}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.one_of(st.none(), st.integers(0, 6)), st.integers(0, 3),
                          st.booleans(), st.integers(0, 8)), min_size=1, max_size=25),
       st.integers(1, 4), st.sampled_from([0.0, 1.0]))
def test_barriers_keep_the_recorded_order_and_never_deadlock(rows, concurrency, speed):
    exchanges = [recorded(i, start, took, f"c{conn}") for i, (start, took, conn, _, _) in enumerate(rows)]
    writes = {i for i, row in enumerate(rows) if row[3]}
    latency = {i: row[4] * MS for i, row in enumerate(rows)}
    barriers = write_barriers(exchanges, lambda e: e.index in writes)
    plan = build_plan(exchanges, Timing(speed=speed))
    engine, obs = run(plan, Recorder(latency=lambda p: latency[p.key]), barriers=barriers, concurrency=concurrency)
    assert len(obs) == len(rows) and all(o.ok for o in obs.values())  # every request completed
    for r in exchanges:
        for w in exchanges:
            if w.response_ts_ns is None or w.index == r.index:
                continue
            # w was recorded as complete before r started, and one of them is a sent write
            if w.response_ts_ns < r.request_ts_ns and (w.index in writes or r.index in writes):
                assert obs[w.index].done_ns <= obs[r.index].sent_ns, (w.index, r.index)


# -- lateness by cause, --replay-connections spill ---------------------------------------------------------
from pytest_replay.report.aggregate import Aggregate  # noqa: E402


def test_lateness_is_split_by_cause_exactly():
    # lane A: key 0 takes 30 ms, key 1 is due at 10 ms (connection busy 20 ms); concurrency 1: key 2 on
    # lane B, due at 5 ms, waits for key 0's slot (25 ms), then key 1 waits for key 2's (1 ms more)
    plan = plan_of([(0, "A"), (5 * MS, "B"), (10 * MS, "A")])
    plan[1], plan[2] = PlannedRequest(2, 5 * MS, "B", REQ, b""), PlannedRequest(1, 10 * MS, "A", REQ, b"")
    target = Recorder(latency=lambda p: {0: 30 * MS, 1: MS, 2: MS}[p.key])
    _, obs = run(plan, target, concurrency=1)
    assert obs[2].lateness_causes == {"connection": 0, "barrier": 0, "concurrency": 25 * MS, "engine": 0}
    assert obs[1].lateness_ns == 21 * MS
    assert obs[1].lateness_causes == {"connection": 20 * MS, "barrier": 0, "concurrency": MS, "engine": 0}
    assert obs[0].lateness_causes == {"connection": 0, "barrier": 0, "concurrency": 0, "engine": 0}


def test_barrier_wait_is_its_own_cause():
    exchanges = [recorded(0, 0, 1, "c1"), recorded(1, 2, 1, "c2"), recorded(2, 4, 1, "c3")]
    barriers = write_barriers(exchanges, lambda e: e.index == 1)
    plan = build_plan(exchanges, Timing(speed=0))
    _, obs = run(plan, Recorder(latency=lambda p: {0: 30 * MS, 1: 20 * MS, 2: MS}[p.key]), barriers=barriers)
    assert obs[2].lateness_causes["barrier"] == 50 * MS and obs[2].lateness_causes["engine"] == 0


class LateClock(FakeClock):
    """A FakeClock on which the engine wakes late: a sleep until one of `late`'s deadlines (the
    dispatcher's: only it sleeps until a planned deadline) ends that many ns after it, once. The engine
    was busy elsewhere (the GIL, a collection, a loaded machine): what it sends then goes late."""

    def __init__(self, late: dict[int, int]) -> None:
        super().__init__()
        self.late = dict(late)

    async def sleep_until(self, deadline_ns: int) -> None:
        await super().sleep_until(deadline_ns + self.late.pop(deadline_ns, 0))


@pytest.mark.parametrize("first_ms, concurrency_ms", [(5, 0), (30, 20)])
def test_a_backlog_the_late_engine_made_is_not_queueing_for_a_slot(first_ms, concurrency_ms):
    # concurrency 1: key 0 due at t0 (lane A), key 1 at t0 + 10 ms (lane B, 1 ms). The engine wakes
    # 20 ms late and finds both due: key 1 waits for key 0's slot. Had the engine been on time, key 0
    # would have freed it at t0 + first_ms: key 1 queued for the target only past its deadline (20 ms
    # when key 0 takes 30 ms), the rest of its lateness is the engine's.
    plan = plan_of([(0, "A"), (10 * MS, "B")])
    engine = Engine(plan, Recorder(latency=lambda p: first_ms * MS if p.key == 0 else MS),
                    clock=LateClock({LEAD: 20 * MS}), concurrency=1)
    obs = {o.key: o for o in asyncio.run(engine.run())}
    assert obs[0].sent_ns == LEAD + 20 * MS and obs[1].sent_ns == obs[0].done_ns  # (the backlog)
    late = obs[1].lateness_ns
    assert late == (first_ms + 10) * MS
    assert obs[1].lateness_causes == {"connection": 0, "barrier": 0, "concurrency": concurrency_ms * MS,
                                      "engine": late - concurrency_ms * MS}
    assert obs[1].response_ns == (concurrency_ms + 1) * MS


@pytest.mark.parametrize("write_ms, barrier_ms", [(5, 0), (30, 20)])
def test_a_barrier_the_late_engine_held_up_is_not_queueing_for_the_target(write_ms, barrier_ms):
    # a write at 0 (recorded done at 5 ms), a read at 10 ms recorded after it: the read waits for the
    # write. The engine wakes 20 ms late, so the write goes late and the read waits for it; had the
    # engine been on time the write would have been done at t0 + write_ms.
    exchanges = [recorded(0, 0, 5, "c1"), recorded(1, 10, 1, "c2")]
    barriers = write_barriers(exchanges, lambda e: e.index == 0)
    assert barriers.needs == {1: (1, 0)}
    plan = build_plan(exchanges, Timing(speed=1.0))
    engine = Engine(plan, Recorder(latency=lambda p: write_ms * MS if p.key == 0 else MS),
                    clock=LateClock({LEAD: 20 * MS}), barriers=barriers)
    obs = {o.key: o for o in asyncio.run(engine.run())}
    assert obs[1].sent_ns == obs[0].done_ns == LEAD + (20 + write_ms) * MS
    late = obs[1].lateness_ns
    assert obs[1].lateness_causes == {"connection": 0, "barrier": barrier_ms * MS, "concurrency": 0,
                                      "engine": late - barrier_ms * MS}
    assert obs[1].response_ns == (barrier_ms + 1) * MS


def test_spill_sends_a_request_due_on_a_busy_lane_on_time_on_an_extra_lane():
    # lane A: 0 takes 100 ms; 1 due at 10 ms and 2 at 20 ms (1 ms each): both spill, 2 reuses 1's extra lane
    plan = plan_of([(0, "A"), (10 * MS, "A"), (20 * MS, "A"), (200 * MS, "A")])
    target = Recorder(latency=lambda p: 100 * MS if p.key == 0 else MS)
    engine, obs = run(plan, target, connections="spill")
    assert [o.lateness_ns for o in (obs[1], obs[2], obs[3])] == [0, 0, 0]
    assert [obs[k].spilled for k in range(4)] == [False, True, True, False]
    lanes = {key: lane for key, lane, _ in target.sends}
    assert lanes[1] == lanes[2] == "A [extra 1]" and lanes[0] == lanes[3] == "A"
    assert engine.spilled == 2 and engine.extra_connections == 1
    assert sorted(target.closed_lanes) == ["A", "A [extra 1]"]  # the extra connection closed at the end
    _, strict = run(plan, Recorder(latency=lambda p: 100 * MS if p.key == 0 else MS))
    assert strict[1].lateness_causes["connection"] == 90 * MS and strict[2].lateness_causes["connection"] == 81 * MS


def test_lateness_causes_merge_exactly_across_aggregates():
    plan = plan_of([(0, "A"), (10 * MS, "A"), (20 * MS, "A")])
    _, obs = run(plan, Recorder(latency=lambda p: 100 * MS if p.key == 0 else MS))
    parts = [Aggregate(), Aggregate()]
    whole = Aggregate()
    for key, o in obs.items():
        e = exchange(key, key * 10 * MS, "A")
        parts[key % 2].add(e, o)
        whole.add(e, o)
    merged = Aggregate.from_dict(parts[0].to_dict()).merge(Aggregate.from_dict(parts[1].to_dict()))
    assert merged == whole
    causes = merged.overall.causes_row()
    assert causes["connection"]["requests"] == 2 and causes["connection"]["share_pct"] == 100.0
    assert causes["connection"]["max_ms"] == 90.0


def test_spill_lanes_time_out_and_stop_like_captured_ones():
    # key 1 spills onto an extra lane and hangs: the watchdog times it out there; the run ends
    plan = plan_of([(0, "A"), (10 * MS, "A"), (20 * MS, "A")])
    target = Recorder(latency=lambda p: 100 * MS, hang={1})
    engine = Engine(plan, target, clock=RealClock(), connections="spill", timeout_s=0.3, lead_ns=0)
    observations = {o.key: o for o in asyncio.run(engine.run())}
    assert observations[1].error_kind == TIMEOUT and observations[1].spilled
    assert observations[0].ok and observations[2].ok and observations[2].spilled
    assert sorted(set(target.closed_lanes)) == ["A", "A [extra 1]", "A [extra 2]"]
    with pytest.raises(ValueError, match="connections must be one of strict, spill"):
        Engine(plan, target, connections="loose")


def test_spill_opens_at_most_concurrency_extra_connections():
    # --speed 0: 10 lanes of 50 requests all due at once; without the cap every request would spill
    plan = plan_of([(0, f"L{i % 10}") for i in range(500)])
    target = Recorder(latency=MS)
    engine, obs = run(plan, target, connections="spill", concurrency=8)
    assert len(obs) == 500 and all(o.ok for o in obs.values())
    assert engine.extra_connections == 8 and 8 <= engine.spilled < 490
    assert len({lane for _, lane, _ in target.sends}) == 18
    assert target.max_in_flight <= 8

