"""Stop conditions during the replay: schedule/monitor.py and the engine's halt."""

import asyncio

from pytest_replay.http.message import Response
from pytest_replay.schedule.clock import FakeClock
from pytest_replay.schedule.engine import Engine
from pytest_replay.schedule.monitor import StopMonitor
from pytest_replay.schedule.plan import PlannedRequest
from pytest_replay.schedule.target import CANCELLED, Observation
from pytest_replay.verdicts.budgets import parse_stop_condition
from tests.test_engine import REQ, Recorder

MS = 1_000_000


def obs(key, done_s, latency_ms=1, status=200, late_ms=0):
    sent = int(done_s * 1e9) - latency_ms * MS
    return Observation(key, sent - late_ms * MS, sent, sent + latency_ms * MS, int(done_s * 1e9),
                       Response.build(status) if status else None,
                       None if status else "refused", None if status else "refused")


def test_window_trips_on_p99_and_error_rate_once_a_second_is_over():
    monitor = StopMonitor([parse_stop_condition("p99>500ms"), parse_stop_condition("5xx>20%")], window_s=2)
    for i in range(20):
        assert monitor.add(obs(i, 0.05 * i, latency_ms=10), 0) is None  # second 0: fine
    for i in range(20):
        assert monitor.add(obs(100 + i, 1 + 0.04 * i, latency_ms=10, status=503 if i < 8 else 200), 0) is None
    trip = monitor.add(obs(200, 2.01), 0)  # second 1 is over: 8 of 40 in the window = 20%: not > 20%
    assert trip is None
    for i in range(10):
        monitor.add(obs(300 + i, 2.1 + 0.01 * i, latency_ms=900), 0)
    trip = monitor.add(obs(400, 3.0), 0)
    assert trip is not None and trip.condition == "p99>500ms" and trip.at_ns == 3e9
    assert trip.measured.endswith(" ms") and 850 < float(trip.measured.split()[0]) < 950


def test_lateness_condition_and_small_windows_are_not_judged():
    monitor = StopMonitor([parse_stop_condition("lateness>50ms")], window_s=10)
    for i in range(3):
        monitor.add(obs(i, 0.1, late_ms=200), 0)
    assert monitor.add(obs(9, 1.5), 0) is None  # 3 requests: not judged
    for i in range(10):
        monitor.add(obs(10 + i, 1.6, late_ms=200), 0)
    assert monitor.add(obs(99, 2.5), 0).condition == "lateness>50ms"


def test_lateness_condition_judges_the_engines_lateness_not_waits_for_a_slow_target():
    # every request 200 ms late, all of it waiting for its connection's previous response: the target
    # is slow, the replayer keeps up; the same lateness with no wait is the replayer's
    waited = StopMonitor([parse_stop_condition("lateness>50ms")], window_s=2)
    for i in range(10):
        o = obs(i, 0.1 + 0.01 * i, late_ms=200)
        waited.add(Observation(o.key, o.deadline_ns, o.sent_ns, o.first_byte_ns, o.done_ns, o.response,
                               lane_wait_ns=150 * MS, slot_wait_ns=50 * MS), 0)
    assert waited.add(obs(99, 1.5), 0) is None
    behind = StopMonitor([parse_stop_condition("lateness>50ms")], window_s=2)
    for i in range(10):
        behind.add(obs(i, 0.1 + 0.01 * i, late_ms=200), 0)
    assert behind.add(obs(99, 1.5), 0).condition == "lateness>50ms"


def test_strict_connection_waits_do_not_trip_lateness_through_the_engine():
    # lane A: each request takes 300 ms and the next is due 100 ms after it: 200+ ms late, all connection
    plan = [PlannedRequest(i, i * 100 * MS, "A", REQ, b"") for i in range(30)]
    engine = Engine(plan, Recorder(latency=300 * MS), clock=FakeClock(), freeze_gc=False, switch_interval=None,
                    monitor=StopMonitor([parse_stop_condition("lateness>50ms")], 2))
    observations = asyncio.run(engine.run())
    assert engine.halted is None and len(observations) == 30
    assert max(o.lateness_ns for o in observations) > 5_000 * MS


def test_engine_halts_sends_nothing_more_and_lets_in_flight_complete():
    plan = [PlannedRequest(i, i * 100 * MS, f"lane{i % 3}", REQ, b"") for i in range(60)]
    # every request from key 20 on answers 503
    target = Recorder(latency=lambda p: 50 * MS)
    original = target.send

    async def send(planned, clock):
        response, *times = await original(planned, clock)
        if planned.key >= 20:
            response = Response.build(503)
        return (response, *times)

    target.send = send
    engine = Engine(plan, target, clock=FakeClock(), monitor=StopMonitor([parse_stop_condition("5xx>50%")], 2),
                    freeze_gc=False, switch_interval=None)
    asyncio.run(engine.run())
    assert engine.halted is not None and engine.halted.condition == "5xx>50%"
    sent = {key for key, _, _ in target.sends}
    assert 20 < len(sent) < 60
    assert all(engine.was_sent(k) for k in sent)  # in flight ones completed
    assert not engine.was_sent(59)
    observation = engine.wait(59)
    assert observation.error_kind == CANCELLED and "--replay-abort-on '5xx>50%'" in observation.error


def test_own_trip_is_passed_on_and_a_relayed_one_stops_at_the_next_judgement():
    from pytest_replay.schedule.monitor import Trip

    told = []
    tripping = StopMonitor([parse_stop_condition("p99>500ms")], window_s=1, name="gw0", on_trip=told.append)
    for i in range(10):
        tripping.add(obs(i, 0.05 * i, latency_ms=900), 0)
    trip = tripping.tick(1)
    assert trip is not None and trip.worker == "gw0" and not trip.relayed and told == [trip]

    quiet = StopMonitor([parse_stop_condition("p99>500ms")], window_s=1, name="gw1", on_trip=told.append)
    for i in range(10):
        quiet.add(obs(i, 0.05 * i, latency_ms=1), 0)
    assert quiet.tick(1) is None and quiet.judged == 1
    quiet.relay(trip)
    assert quiet.judged == -1  # the engine's watchdog judges again at its next tick (second 1 > -1)
    relayed = quiet.tick(1)
    assert relayed == Trip("p99>500ms", trip.measured, trip.at_ns, 1.0, trip.requests, "gw0", True)
    assert told == [trip]  # a relayed trip is not passed on again
    assert quiet.tick(2) is None  # once


# -- what latency conditions judge: the response time from schedule (issue 16) -----------------------------
def queued_obs(key, done_s, service_ms, queued_ms):
    """Completed at done_s after `service_ms` from send, sent `queued_ms` late waiting for its connection."""
    done = int(done_s * 1e9)
    sent = done - service_ms * MS
    return Observation(key, sent - queued_ms * MS, sent, done, done, Response.build(200), lane_wait_ns=queued_ms * MS)


def test_latency_conditions_judge_from_the_schedule_and_service_from_send():
    scheduled = StopMonitor([parse_stop_condition("p99>250ms")], window_s=1)
    service = StopMonitor([parse_stop_condition("service p99>250ms")], window_s=1)
    for monitor in (scheduled, service):
        for i in range(20):  # each answered in 190 ms once sent, after 2 s behind its busy connection
            monitor.add(queued_obs(i, 0.1 + 0.01 * i, service_ms=190, queued_ms=2000), 0)
    trip = scheduled.tick(1)
    assert trip is not None and trip.measured.endswith(" s") and 2.0 < float(trip.measured.split()[0]) < 2.4
    assert service.tick(1) is None


def test_the_engines_own_lateness_is_not_the_targets_response_time():
    monitor = StopMonitor([parse_stop_condition("p99>250ms")], window_s=1)
    for i in range(20):  # 2 s late with no wait: the replayer was behind, the target answered in 5 ms
        monitor.add(obs(i, 0.1 + 0.01 * i, latency_ms=5, late_ms=2000), 0)
    assert monitor.tick(1) is None


def test_timeouts_count_with_the_time_they_waited():
    monitor = StopMonitor([parse_stop_condition("p99>1s")], window_s=1)
    for i in range(10):
        sent = int(0.1e9) + i
        monitor.add(Observation(i, sent, sent, None, sent + 2_000 * MS, None, "timeout", "no response"), 0)
    trip = monitor.tick(3)
    assert trip is not None and trip.condition == "p99>1s"


def test_requests_still_waiting_count_at_their_age_once_past_the_threshold():
    monitor = StopMonitor([parse_stop_condition("p99>1s"), parse_stop_condition("errors>50%")], window_s=2)
    for i in range(50):  # a healthy second
        monitor.add(obs(i, 0.02 * i, latency_ms=5), 0)
    monitor.in_flight = lambda: [(300 * MS, 300 * MS)] * 3  # young: not counted
    assert monitor.tick(1) is None
    monitor.in_flight = lambda: [(1_600 * MS, 1_600 * MS)] * 3 + [(1_200 * MS, None)] * 10  # waiting 1.2-1.6 s
    trip = monitor.tick(2)
    assert trip is not None and trip.condition == "p99>1s" and trip.in_flight == 13 and trip.requests == 63
    # service basis: only the requests on the wire count, at their time since sent
    service = StopMonitor([parse_stop_condition("service p99>1s")], window_s=2)
    service.in_flight = lambda: [(1_600 * MS, 1_600 * MS)] * 3 + [(1_200 * MS, None)] * 10
    assert service.tick(2) is None  # 3 requests: too few to judge
    service.in_flight = lambda: [(1_600 * MS, 1_600 * MS)] * 6
    assert service.tick(3).in_flight == 6


class _SlowPipeline:
    """The engine itself busy for 500 ms before sending key 0 (a hook, the GIL, a busy CPU)."""

    error = None

    def __init__(self, clock):
        self.clock = clock

    async def start(self):
        pass

    async def prepare(self, planned):
        if planned.key == 0:
            self.clock.advance(500 * MS)
        return planned

    async def observed(self, planned, observation):
        pass

    async def close(self):
        pass


def test_a_request_behind_one_the_engine_sent_late_is_late_for_the_engine_not_its_connection():
    """Key 1 is due 10 ms after key 0 on the same connection; key 0 answers in 1 ms, but the engine sent
    it 500 ms late: key 1's 491 ms are the engine's, which 'lateness>' judges and p99 does not."""
    clock = FakeClock()
    plan = [PlannedRequest(0, 0, "A", REQ, b""), PlannedRequest(1, 10 * MS, "A", REQ, b"")]
    engine = Engine(plan, Recorder(latency=MS), clock=clock, freeze_gc=False, switch_interval=None,
                    pipeline=_SlowPipeline(clock))
    observations = {o.key: o for o in asyncio.run(engine.run())}
    late = observations[1]
    assert late.lateness_ns == 491 * MS
    assert late.lateness_causes == {"connection": 0, "barrier": 0, "concurrency": 0, "engine": 491 * MS}
    assert late.response_ns == MS and late.queued_ns == 0


def test_a_request_behind_a_slow_response_queued_for_its_connection():
    plan = [PlannedRequest(0, 0, "A", REQ, b""), PlannedRequest(1, 10 * MS, "A", REQ, b"")]
    engine = Engine(plan, Recorder(latency=lambda p: 300 * MS if p.key == 0 else MS), clock=FakeClock(),
                    freeze_gc=False, switch_interval=None)
    observations = {o.key: o for o in asyncio.run(engine.run())}
    assert observations[1].lateness_causes["connection"] == 290 * MS
    assert observations[1].response_ns == 291 * MS and observations[1].latency_ns == MS


def test_stop_condition_grammar_names_its_basis():
    import pytest as _pytest

    assert parse_stop_condition("p99>2s").basis == "scheduled"
    assert parse_stop_condition("service  p99 > 2s").basis == "service"
    assert parse_stop_condition("Service mean>200ms").measures == "service latency (from send)"
    assert parse_stop_condition("lateness>50ms").measures == "the replayer's own p99 lateness"
    for bad in ("service 5xx>1%", "service lateness>5ms", "service", "served p99>1s"):
        with _pytest.raises(ValueError, match="accepted forms"):
            parse_stop_condition(bad)
