"""The engine's fast path against its reference, on the same plans.

- Callback lanes (`Engine(fast=True)`, a target with `begin`) against coroutine lanes (`fast=False`,
  every request through `await target.send()`): under FakeClock the observations are exact, so
  they must be equal, field by field (Hypothesis over lanes, deadlines, latencies, failures,
  concurrency, spill, write barriers).
- RawTarget's known responses (`fast=True`: a response whose head the Framer framed before is taken
  without parsing) against the Framer for every response (`fast=False`), each through the engine's
  matching path, against a scripted server on 127.0.0.1 playing the responses that change framing
  (HEAD, 204, 304, chunked, close-delimited, Connection: close, HTTP/1.0, 1xx, split segments, bytes
  after the response, a reset, a close before answering, a timeout).
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_replay.http import parser
from pytest_replay.http.message import Request
from pytest_replay.schedule.clock import FakeClock, RealClock
from pytest_replay.schedule.engine import Engine
from pytest_replay.schedule.plan import PlannedRequest, Timing, build_plan, write_barriers
from pytest_replay.schedule.target import REFUSED, TargetError
from pytest_replay.targets import raw
from pytest_replay.targets.raw import RawTarget
from test_engine import LEAD, MS, LateClock, Recorder, recorded
from test_targets import Scripted

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def observed(observations) -> dict:
    """Everything an observation says, comparable across runs: the response by its fields, an app
    error by its message without the traceback's frames (the two paths call the target from
    different places)."""
    out = {}
    for o in observations:
        error = o.error.split(" (at ")[0] if o.error else o.error
        response = None if o.response is None else (o.response.status, o.response.reason, o.response.version,
                                                     o.response.head, o.response.body, o.response.raw,
                                                     o.response.trailers, o.response.interim, o.response.lf_only)
        out[o.key] = (o.deadline_ns, o.sent_ns, o.first_byte_ns, o.done_ns, o.error_kind, error, o.lane_wait_ns,
                      o.barrier_wait_ns, o.slot_wait_ns, o.spilled, response)
    return out


# -- callback lanes against coroutine lanes, under FakeClock --------------------------------------------------
class Suspending(Recorder):
    """The Recorder, failing after its latency like a network target (whose answer, or failure, never
    comes within the call that sends): the Recorder raises at once, and a coroutine lane gets that
    within its own step, before lanes the same burst woke have started, where a callback lane gets it
    from the loop; at one instant of a fake clock that order decides which waiting request gets a free
    slot first."""

    async def send(self, planned, clock):
        failure = self.fail.get(planned.key)
        if failure is None:
            return await Recorder.send(self, planned, clock)
        sent = clock.now_ns()
        self.sends.append((planned.key, planned.lane, sent))
        await clock.sleep_until(sent + self.latency(planned))
        raise failure


def fake_run(plan, fast: bool, latency, fail, late=None, **kwargs):
    target = Suspending(latency=lambda p: latency[p.key], fail=fail)
    engine = Engine(plan, target, clock=LateClock(late or {}), fast=fast, **kwargs)
    observations = asyncio.run(engine.run())
    per_lane: dict[str, list] = {}
    for key, lane, sent in target.sends:
        per_lane.setdefault(lane, []).append((key, sent))
    return engine._fast, (observed(observations), per_lane, sorted(target.closed_lanes), engine.spilled,
                          engine.extra_connections, engine.sent, engine.completed, engine.errors)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3), st.integers(0, 12),
                          st.sampled_from(["ok", "ok", "ok", "refused", "bug"]), st.booleans(),
                          st.sampled_from([0, 0, 0, 4, 25])),
                min_size=1, max_size=30),
       st.integers(1, 5), st.sampled_from(["strict", "spill"]), st.booleans(), st.sampled_from([0.0, 1.0]))
def test_callback_lanes_observe_exactly_what_coroutine_lanes_do(rows, concurrency, connections, with_barriers, speed):
    exchanges = [recorded(i, start, took, f"c{conn}") for i, (start, conn, took, _, _, _) in enumerate(rows)]
    # Latencies differ by a nanosecond per key: no two completions at one instant, whose order (and so
    # which waiting request gets the slot) would be the event loop's, not the engine's; and none is 0,
    # which would answer without suspending (no network target does).
    latency = {i: took * MS + i + 1 for i, (_, _, took, _, _, _) in enumerate(rows)}
    fail = {i: TargetError(REFUSED, f"refused {i}") if outcome == "refused" else ValueError(f"bug {i}")
            for i, (_, _, _, outcome, _, _) in enumerate(rows) if outcome != "ok"}
    writes = {i for i, row in enumerate(rows) if row[4]}
    barriers = write_barriers(exchanges, lambda e: e.index in writes) if with_barriers else None
    plan = build_plan(exchanges, Timing(speed=speed))
    # The engine waking late at some deadlines (a whole number of ms: never a target's wake-up, whose
    # latencies end in a few ns): the backlog it finds waits for slots and barriers, corrected for the
    # engine's lateness (engine._on_time) the same way on both kinds of lane.
    late = {}
    for p in plan:
        stall = rows[p.key][5] * MS
        if stall:
            late[LEAD + p.offset_ns] = stall
    options = dict(concurrency=concurrency, connections=connections, barriers=barriers, late=late)
    fast_used, fast = fake_run(plan, True, latency, fail, **options)
    reference_used, reference = fake_run(plan, False, latency, fail, **options)
    assert fast_used and not reference_used
    assert fast == reference


def test_a_target_without_begin_or_with_a_pipeline_runs_on_coroutine_lanes():
    class SendOnly(Recorder):
        begin = None

    plan = [PlannedRequest(0, 0, "A", Request.build("GET", "/"), b"")]
    assert not Engine(plan, SendOnly(), clock=FakeClock())._fast
    engine = Engine(plan, SendOnly(), clock=FakeClock())
    asyncio.run(engine.run())
    assert not engine._fast
    engine = Engine(plan, Recorder(), clock=FakeClock())
    asyncio.run(engine.run())
    assert engine._fast


def test_a_wrapper_delegating_attributes_does_not_expose_its_inner_begin():
    # PolicyTarget and DifferentialTarget hand unknown attributes to the target they wrap: the engine
    # must not call the inner begin() around the wrapper's own send()
    class Wrapper:
        name = "wrapper"

        def __init__(self, inner):
            self.inner = inner
            self.sent = 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def start(self):
            pass

        async def send(self, planned, clock):
            self.sent += 1
            return await self.inner.send(planned, clock)

        async def close(self):
            pass

    wrapper = Wrapper(Recorder())
    plan = [PlannedRequest(i, 0, "A", Request.build("GET", "/"), b"") for i in range(3)]
    engine = Engine(plan, wrapper, clock=FakeClock())
    asyncio.run(engine.run())
    assert not engine._fast and wrapper.sent == 3


# -- RawTarget: known responses against the Framer, on a real connection --------------------------------------
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"


def get(path="/", method="GET", headers=((b"Host", b"x"),), body=b""):
    return Request.build(method, path, tuple(headers), body)


# Each script: the requests sent one after another on one lane, and what the server answers to each
# (a list of segments, written with a pause between them; None: close the connection without a word).
SCRIPTS = {
    "repeated heads": [(get(f"/{i}"), [OK + b"hello"]) for i in range(6)],
    "head answering HEAD, 204, 304": [
        (get("/a"), [OK + b"hello"]), (get("/b"), [OK + b"hello"]), (get("/c"), [OK + b"hello"]),
        (get("/h", "HEAD"), [OK]),
        (get("/d"), [OK + b"hello"]),
        (get("/e"), [b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"]),
        (get("/f"), [b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"]),
        (get("/g"), [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"]),
        (get("/g"), [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"]),
        (get("/i"), [OK + b"hello"]),
    ],
    "a known head with another body length, split, or followed by more bytes": [
        (get("/a"), [OK + b"hello"]), (get("/b"), [OK + b"hello"]), (get("/c"), [OK + b"hello"]),
        (get("/d"), [OK + b"hel", b"lo"]),
        (get("/e"), [OK, b"hello"]),
        (get("/f"), [OK + b"hello"]),
        (get("/g"), [OK + b"hello" + b"HTTP/1.1 200 OK\r\n"]),  # bytes nobody asked for: the connection ends
        (get("/h"), [OK + b"hello"]),
    ],
    "a HEAD's head, then a GET cut after the same head": [
        (get("/a", "HEAD"), [OK]), (get("/b", "HEAD"), [OK]), (get("/c", "HEAD"), [OK]),
        (get("/d"), [OK + b"hello"]), (get("/e"), [OK + b"hello"]),
        (get("/f"), [OK, None]),  # the head, then the connection closes: 5 body bytes missing
    ],
    "chunked, close-delimited": [
        (get("/a"), [OK + b"hello"]), (get("/b"), [OK + b"hello"]),
        (get("/c"), [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"]),
        (get("/d"), [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"]),
        (get("/e"), [OK + b"hello"]),
        (get("/f"), [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close"]),
        (get("/g"), [OK + b"hello"]),
    ],
    "Connection: close, HTTP/1.0, keep-alive 1.0": [
        (get("/a"), [OK + b"hello"]), (get("/b"), [OK + b"hello"]),
        (get("/c"), [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]),
        (get("/d"), [OK + b"hello"]),
        (get("/e"), [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]),
        (get("/f"), [OK + b"hello"]), (get("/g"), [OK + b"hello"]),
        (get("/h"), [b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"]),
        (get("/i"), [OK + b"hello"]), (get("/j"), [OK + b"hello"]),
        (get("/k"), [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"]),
        (get("/l"), [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"]),
        (get("/m"), [b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"]),
    ],
    "1xx before a known head": [
        (get("/a"), [OK + b"hello"]), (get("/b"), [OK + b"hello"]), (get("/c"), [OK + b"hello"]),
        (get("/d", "POST", body=b"x"), [b"HTTP/1.1 100 Continue\r\n\r\n", OK + b"hello"]),
        (get("/e", "POST", body=b"x"), [b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"hello"]),
        (get("/f"), [OK + b"hello"]),
    ],
    "faults after known heads": [
        (get("/a"), [OK + b"hello"]), (get("/b"), [OK + b"hello"]), (get("/c"), [OK + b"hello"]),
        (get("/d"), [b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", None]),  # truncated
        (get("/e"), [OK + b"hello"]), (get("/f"), [OK + b"hello"]), (get("/g"), [OK + b"hello"]),
        (get("/h"), [b"SSH-2.0-OpenSSH_9.0\r\n\r\n"]),  # not HTTP, after HTTP on the connection
        (get("/i"), [OK + b"hello"]), (get("/j"), [OK + b"hello"]),
        (get("/k", "POST", body=b"x"), [None]),  # closed before answering a POST: not resent
        (get("/l"), [OK + b"hello"]), (get("/m"), [OK + b"hello"]),
        (get("/n"), [None]),  # closed before answering a GET on a kept-alive connection: resent
        (get("/n"), [OK + b"hello"]),
        (get("/o"), [OK + b"hello"]),
    ],
}


def serve(script):
    """A handler answering, across connections, the script's responses in order (one per request)."""
    answers = iter(segments for _, segments in script)

    async def handler(reader, writer, n):
        while True:
            await reader.readuntil(b"\r\n\r\n")
            segments = next(answers, [None])
            for segment in segments:
                if segment is None:
                    writer.close()
                    return
                writer.write(segment)
                await writer.drain()
                await asyncio.sleep(0.01)

    return handler


class Framer(raw.Framer):
    """raw.py's Framer, keeping what it was fed: a response whose bytes it never saw was known."""

    fed: list[bytes] = []

    def feed(self, data, *args, **kwargs):
        self.fed.append(data)
        return super().feed(data, *args, **kwargs)


def replay(script, fast: bool, *, timeout_s: float = 5.0):
    """The script's requests on one lane at speed 0, with RawTarget(fast) on the engine's matching path;
    (observations, connections the server saw, keys whose response was taken from raw._KNOWN)."""
    raw._KNOWN.clear()
    for memory in parser._WHOLE:  # a message the Framer remembered from an earlier test is not one it was fed
        memory.clear()
    Framer.fed = []

    async def main():
        async with Scripted(serve(script)) as server:
            target = RawTarget(server.url, fast=fast)
            plan = [PlannedRequest(i, 0, "lane", r, target.wire(r)) for i, (r, _) in enumerate(script)]
            engine = Engine(plan, target, clock=RealClock(), timeout_s=timeout_s, lead_ns=0, fast=fast, loop="asyncio")
            observations = sorted(await engine.run(), key=lambda o: o.key)
            fed = {id(data) for data in Framer.fed}
            known = {o.key for o in observations if o.response is not None and id(o.response.raw) not in fed}
            return observations, server.connections, known

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(raw, "Framer", Framer)
        return asyncio.run(main())


def comparable(observations):
    """What must agree between the paths: everything but the times (real ones here)."""
    return [(o.key, o.error_kind, o.error, None if o.response is None else observed([o])[o.key][-1])
            for o in observations]


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_known_responses_give_what_the_framer_gives(name):
    script = SCRIPTS[name]
    fast, fast_connections, known = replay(script, True)
    reference, reference_connections, _ = replay(script, False)
    assert comparable(fast) == comparable(reference)
    assert fast_connections == reference_connections
    assert all(o.sent_ns <= o.first_byte_ns <= o.done_ns for o in fast if o.ok)
    assert known, "no response was taken from the known heads: the fast path was not exercised"


def test_the_known_path_is_used_for_repeated_heads_and_not_for_head_requests():
    script = SCRIPTS["head answering HEAD, 204, 304"]
    observations, _, known = replay(script, True)
    keys = {o.key: o for o in observations}
    assert 2 in known and 4 in known  # the third 200 on the connection, and the one after the HEAD
    assert 3 not in known and keys[3].response.body == b""  # HEAD: the head says 5 bytes, none follow
    assert keys[4].response.body == b"hello"


def test_a_timeout_on_a_known_connection_drops_it_and_the_lane_goes_on():
    script = [(get("/a"), [OK + b"hello"]), (get("/b"), [OK + b"hello"]), (get("/c"), []),  # never answered
              (get("/d"), [OK + b"hello"])]
    for fast in (True, False):
        observations, connections, _ = replay(script, fast, timeout_s=0.3)
        assert [o.error_kind for o in observations] == [None, None, "timeout", None]
        assert connections == 2  # the stuck connection was dropped, the lane got a fresh one


# -- the write policy around the callback lanes -------------------------------------------------------------
def test_policy_target_sends_reads_on_callback_lanes_and_never_begins_a_mocked_or_skipped_write():
    from pytest_replay.http.message import Response
    from pytest_replay.policy.writes import MOCK, SEND, SKIP, WriteCounts
    from pytest_replay.targets.mock import PolicyTarget, RecordedWrites

    def requests():
        out = []
        for i in range(12):
            kind = ("read", "sent write", "mocked write", "skipped write")[i % 4]
            method = "GET" if kind == "read" else "POST"
            out.append((kind, get(f"/{kind.replace(' ', '-')}/{i}", method, body=b"" if method == "GET" else b"x")))
        return out

    def run_policy(fast: bool):
        seen = []
        raw._KNOWN.clear()

        async def handler(reader, writer, n):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b" ")[1].decode())
                writer.write(OK + b"hello")
                await writer.drain()

        async def main():
            async with Scripted(handler) as server:
                inner = RawTarget(server.url, fast=fast)
                actions = {"read": SEND, "sent write": SEND, "mocked write": MOCK, "skipped write": SKIP}
                planned = requests()
                counts = WriteCounts()
                recorded = RecordedWrites({i: Response.build(201, "Created", (), b"rec")
                                           for i, (kind, _) in enumerate(planned) if kind == "mocked write"})
                target = PolicyTarget(inner, lambda p: actions[planned[p.key][0]], recorded, counts=counts)
                plan = [PlannedRequest(i, 0, f"lane{i % 2}", r, inner.wire(r)) for i, (_, r) in enumerate(planned)]
                engine = Engine(plan, target, clock=RealClock(), lead_ns=0, fast=fast, loop="asyncio")
                observations = sorted(await engine.run(), key=lambda o: o.key)
                return engine._fast, observations, counts.to_dict()

        fast_used, observations, counts = asyncio.run(main())
        return fast_used, [(o.key, o.error_kind, o.response.status if o.response else None,
                            o.response.body if o.response else None) for o in observations], sorted(seen), counts

    fast_used, fast, fast_seen, fast_counts = run_policy(True)
    reference_used, reference, reference_seen, reference_counts = run_policy(False)
    assert fast_used and not reference_used
    assert fast == reference and fast_seen == reference_seen and fast_counts == reference_counts
    assert sorted({path.split("/")[1] for path in fast_seen}) == ["read", "sent-write"] and len(fast_seen) == 6
    assert [status for _, _, status, _ in fast if status is not None] == [200, 200, 201] * 3
    assert [kind for _, kind, _, _ in fast][3::4] == ["cancelled"] * 3  # the skipped writes
    totals = {column: sum(row.get(column, 0) for row in fast_counts.values()) for column in ("passed", "mocked",
                                                                                           "skipped")}
    assert totals == {"passed": 3, "mocked": 3, "skipped": 3}  # each counted once, begun or awaited


def test_a_stop_condition_halts_both_kinds_of_lanes_at_the_same_request():
    # (tests/test_monitor.py runs the Recorder, so the callback lanes; this runs the same stop on both)
    from pytest_replay.http.message import Response
    from pytest_replay.schedule.monitor import StopMonitor
    from pytest_replay.verdicts.budgets import parse_stop_condition

    class FailingLater(Recorder):
        async def send(self, planned, clock):
            response, *times = await Recorder.send(self, planned, clock)
            return (Response.build(503) if planned.key >= 20 else response, *times)

    plan = [PlannedRequest(i, i * 100 * MS + i, f"lane{i % 3}", Request.build("GET", f"/{i}"), b"")
            for i in range(60)]
    results = []
    for fast in (True, False):
        target = FailingLater(latency=lambda p: 50 * MS + p.key)
        engine = Engine(plan, target, clock=FakeClock(), fast=fast, freeze_gc=False, switch_interval=None,
                        monitor=StopMonitor([parse_stop_condition("5xx>50%")], 2))
        observations = asyncio.run(engine.run())
        assert engine._fast == fast and engine.halted is not None
        not_sent = engine.wait(59)
        results.append((observed(observations), engine.halted.condition, engine.sent, not_sent.error_kind,
                        sorted(key for key, _, _ in target.sends)))
    assert results[0] == results[1]
    assert 20 < len(results[0][-1]) < 60 and results[0][3] == "cancelled"


def test_the_policy_around_an_in_process_app_keeps_coroutine_lanes():
    # its begin() would decline every request: a task per request through send() would cost more
    from pytest_replay.policy.writes import SEND
    from pytest_replay.targets.inprocess import ASGITarget
    from pytest_replay.targets.mock import PolicyTarget, RecordedWrites

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    plan = [PlannedRequest(i, 0, "A", get(f"/{i}"), b"") for i in range(3)]
    engine = Engine(plan, PolicyTarget(ASGITarget(app), lambda p: SEND, RecordedWrites({})), clock=FakeClock())
    observations = asyncio.run(engine.run())
    assert [o.response.body for o in sorted(observations, key=lambda o: o.key)] == [b"ok"] * 3
    assert not engine._fast  # (around a RawTarget it is: test_policy_target_sends_reads_on_callback_lanes...)
