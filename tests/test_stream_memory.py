"""A streamed run's memory is flat (issue 13.2), end to end: pytest --replay against a real keep-alive
server on 127.0.0.1, the same capture at N and at 4N exchanges.

What a streamed run keeps after its replay (pass 1's index, the stream's per-item states, the skipped
exchanges it reports) is measured object by object (sys.getsizeof over what they reach), not as RSS
or time: what is fixed-size must be the same size at 4N as at N, and what is per item by design (one
state per per-exchange item) must be small."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support import free_port, serving
from test_stream import OK, SEP, SERVER, T0

# Written down when the session ends: the bytes that what the run keeps reaches (shared, immortal and
# code objects left out: modules, classes, functions, the run, the config; numbers too, whose size
# grows with their value, as a count's does).
PROBE = """
import gc, json, sys, threading, types, pytest
from pytest_replay.plugin import RUN

SKIP = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.CodeType,
        types.FrameType, threading.Thread, type(threading.Lock()), types.CellType)


def reach(root, stop):
    seen, todo, size = set(stop), [root], 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, SKIP) or obj is None or type(obj) in (bool, int, float):  # (counts)
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        todo.extend(gc.get_referents(obj))
    return size


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    run = session.config.stash[RUN]
    stream = run.stream
    stop = {id(x) for x in (run, run.config, session, run.collection, stream, run.aggregate, run.redactor,
                            run.settings, stream.spill)}
    states = list(stream.selected.values())
    with open("kept.json", "w") as f:
        index = run.collection.index  # (its `ends`, one bit per exchange by design, measured apart)
        json.dump({"streamed": stream is not None, "index": reach(index, stop | {id(index.ends)}),
                   "ends": sys.getsizeof(index.ends),
                   "skipped": reach(run.skipped, stop), "skipped_count": len(run.skipped),
                   "states": len(states), "state_bytes": reach(states, stop) - sys.getsizeof(states),
                   "events": sum(getattr(s, "waiter", getattr(s, "event", None)) is not None for s in states)}, f)
"""


@pytest.fixture(scope="module")
def server() -> str:
    port = free_port()
    with serving([sys.executable, "-c", SERVER, str(port)], port, "keep-alive server") as url:
        yield url


def bursty(path: Path, n: int, connections: int = 10) -> Path:
    """A .gor of n exchanges on keep-alive connections, in closed-loop bursts of 3 (each request 0.1 ms
    after the previous response on its connection), 5 ms apart; every third request is a POST."""
    records, clock = [], [T0] * connections
    for i in range(n):
        lane = i % connections
        rid = f"{lane + 1:016x}{i:08x}"
        clock[lane] += 100_000 if (i // connections) % 3 else 5_000_000
        post = i % 3 == 2
        head = (f"POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Length: 2\r\n\r\n{{}}" if post
                else f"GET /item/{i} HTTP/1.1\r\nHost: shop\r\n\r\n")
        records.append(f"1 {rid} {clock[lane]} -1\n".encode() + head.encode())
        clock[lane] += 50_000
        records.append(f"2 {rid} {clock[lane]} -1\n".encode() + OK)
    path.write_bytes(b"".join(r + SEP for r in records))
    return path


def kept(pytester: pytest.Pytester, server: str, n: int, *args: str) -> dict:
    gor = bursty(pytester.path / f"{n}.gor", n)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "--speed", "0", "--replay", str(gor),
                                           "--replay-target", server, "--replay-writes", "skip", *args, timeout=300)
    assert result.ret == 0, result.stdout.str()[-2000:]
    data = json.loads((pytester.path / "kept.json").read_text())
    assert data["streamed"]
    return data


def test_what_a_streamed_run_keeps_does_not_grow_with_the_capture(pytester: pytest.Pytester, server: str) -> None:
    pytester.makeconftest(PROBE)
    small = kept(pytester, server, 1500, "--replay-group", "connection")
    large = kept(pytester, server, 6000, "--replay-group", "connection")
    assert (small["skipped_count"], large["skipped_count"]) == (500, 2000)  # every skipped write counted
    # pass 1's tallies (closed-loop bursts: a sum, not a list of runs) and the skips (the first 50 kept,
    # the rest counted by reason): the same size for 4x the exchanges
    assert large["index"] - small["index"] <= 256, (small, large)
    # which exchange ends its connection (Index.ends, for the engine to drop the lane): one bit each
    assert large["ends"] - small["ends"] <= (6000 - 1500) // 8 + 64, (small, large)
    assert large["skipped"] - small["skipped"] <= 256, (small, large)
    assert large["state_bytes"] == small["state_bytes"], (small, large)  # one state per connection


def test_a_per_exchange_items_state_is_small(pytester: pytest.Pytester, server: str) -> None:
    pytester.makeconftest(PROBE)
    data = kept(pytester, server, 1200, "--replay-group", "exchange")
    assert data["states"] == 1200  # one per item (a skipped write's item is told it was not sent)
    assert data["events"] == 0  # an item's Event goes once it has its verdict
    # a state is its slots, not a threading.Event (~1.2 KB: Condition, lock, deque) and two lists each
    assert data["state_bytes"] / data["states"] <= 200, data


# The window made small in exchanges and in bytes; the peak of the recorded bytes alive between read and
# verdict is written down when the session ends.
BYTES_PROBE = """
import json
import pytest_replay.session.stream as stream

stream.WINDOW = 50
stream.WINDOW_BYTES = 512 * 1024


class Tracking(dict):
    peak = held = 0

    def __setitem__(self, key, exchange):
        super().__setitem__(key, exchange)
        Tracking.held += len(exchange.request.raw) + len(exchange.response.raw)
        Tracking.peak = max(Tracking.peak, Tracking.held)

    def pop(self, key, *default):
        exchange = super().pop(key, *default)
        if exchange is not None:
            Tracking.held -= len(exchange.request.raw) + len(exchange.response.raw)
        return exchange


init = stream.Stream.__init__


def tracked(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.pending = Tracking()


stream.Stream.__init__ = tracked


def pytest_sessionfinish(session):
    with open("window.json", "w") as f:
        json.dump({"peak_bytes": Tracking.peak}, f)
"""


def large_bodies(path: Path, n: int, size: int) -> Path:
    """A .gor of n GETs on 4 keep-alive connections whose recorded answers carry `size` bytes of body."""
    body = b"x" * size
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % size + body
    records = []
    for i in range(n):
        rid = f"{i % 4 + 1:016x}{i:08x}"
        records.append(f"1 {rid} {T0 + i * 1000} -1\n".encode() + f"GET /big/{i} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
        records.append(f"2 {rid} {T0 + i * 1000 + 500} -1\n".encode() + answer)
    path.write_bytes(b"".join(r + SEP for r in records))
    return path


def test_the_window_is_bounded_in_bytes_not_only_in_exchanges(pytester: pytest.Pytester, server: str) -> None:
    # 50 exchanges of 64 KB would be 3.2 MB alive at once; the byte budget (512 KB here) holds ~7
    pytester.makeconftest(BYTES_PROBE)
    gor = large_bodies(pytester.path / "big.gor", 80, 64 * 1024)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "--speed", "0", "--replay", str(gor),
                                           "--replay-target", server, "--replay-group", "connection", timeout=300)
    assert "replayed: 80 of 80 requests" in result.stdout.str(), result.stdout.str()[-2000:]
    result.assert_outcomes(failed=4)  # (the server answers a small JSON body: every exchange differs)
    peak = json.loads((pytester.path / "window.json").read_text())["peak_bytes"]
    assert 0 < peak <= 512 * 1024 + 70 * 1024, peak


LANES_PROBE = """
import json, pytest
from pytest_replay.schedule.engine import Engine

seen = {"max": 0, "records": 0}
record = Engine._record


def counting(self, obs, ideal=None):
    seen["records"] += 1
    seen["max"] = max(seen["max"], len(self._lanes))
    return record(self, obs, ideal)


Engine._record = counting


def pytest_sessionfinish(session):
    with open("lanes.json", "w") as f:
        json.dump(seen, f)
"""


def connections_gor(path: Path, n: int, per_connection: int) -> Path:
    """n exchanges, `per_connection` on each captured connection in turn (one after the other: the
    connection's last request comes before the next connection's first), 2 ms apart."""
    records = []
    for i in range(n):
        rid = f"{i // per_connection + 1:016x}{i:08x}"
        ts = T0 + i * 2_000_000
        records.append(f"1 {rid} {ts} -1\n".encode() + f"GET /item/{i} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
        records.append(f"2 {rid} {ts + 50_000} -1\n".encode() + OK)
    path.write_bytes(b"".join(r + SEP for r in records))
    return path


@pytest.mark.parametrize("per_connection", [1, 20])
@pytest.mark.parametrize("lanes", ["fast", "reference"])
def test_a_streamed_run_drops_the_lane_of_a_connection_that_has_no_more(pytester, server: str, per_connection: int,
                                                                        lanes: str) -> None:
    """A capture of many short connections: the engine kept one lane per captured connection until the
    feed ended (~1.5 KB each: a deque, two bound callbacks, the lane; 20,000 one-request connections held
    ~30 MB of lanes). Pass 1 knows each connection's last exchange; its lane ends and is dropped once that
    request is answered. Every exchange is still replayed and judged, on the callback lanes and on the
    coroutine lanes (the reference)."""
    n = 600
    connections_gor(pytester.path / "short.gor", n, per_connection)
    probe = LANES_PROBE
    if lanes == "reference":
        probe += "\nEngine.fast_path = False\n"
    pytester.makeconftest(probe)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", "short.gor", "--replay-target",
                                           server)
    result.assert_outcomes(passed=n)
    seen = json.loads((pytester.path / "lanes.json").read_text())
    assert seen["records"] == n
    # at the recorded pace (2 ms apart) the lanes alive are the connections with a request queued or in
    # flight, not every connection read so far (was n / per_connection)
    assert seen["max"] < (n // per_connection) / 2, seen
