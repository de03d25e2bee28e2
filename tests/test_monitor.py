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
