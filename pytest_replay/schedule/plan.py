"""The replay plan: which requests are sent, when, and on which replay connection (pure).

Deadlines are offsets from the replay's start, computed once from the capture: the recorded
offset divided by the speed factor (gaps capped by max-wait, the cap applied to each idle gap so
the rest of the schedule shifts with it), or an even spacing at a fixed rate. The engine sends
each request at t0 + offset, whatever happened before: lateness never accumulates.

Writes that are sent are ordering barriers (`write_barriers`): a request recorded after a sent write
had completed is not sent before that write completes in the replay, and a sent write is not sent
before the requests recorded as completed before it started. At --speed 0, or when the target is
slower than production, this keeps the captured order between a write and the reads on other
connections (a GET recorded after a PATCH sees the PATCH). Within one connection the lane keeps it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..http.message import Exchange, Request, _fast_new


_NEVER = float("inf")  # the completion time of a request the capture holds no response for


@_fast_new
@dataclass(frozen=True, slots=True, init=False)
class PlannedRequest:
    """One request to send. `key` identifies it to whoever waits for its observation.

    A streamed run's reader thread builds one per request (and another for a connection's last, with
    `last` set): `_fast_new` stores the fields plainly, as Observation's does (a frozen dataclass's
    object.__setattr__ per field cost ~1.5 us of the reader's ~25 per request)."""

    key: int  # the exchange index in the capture
    offset_ns: int  # deadline relative to the replay's start
    lane: str  # captured connection: requests of one lane are sent in order on one replay connection
    request: Request
    wire: bytes  # the bytes to send on a network target (after the replay's rewrites)
    # The last request of its captured connection in a streamed run (a feed): its lane ends once it is
    # sent and answered, not when the feed ends (a capture of many short connections: one lane each).
    last: bool = False


@dataclass(frozen=True, slots=True)
class Timing:
    """How deadlines are derived from the capture."""

    speed: float = 1.0  # 0 = no waiting: everything is due at once
    rate: float | None = None  # requests per second, evenly spaced, instead of the recorded timing
    max_wait_ns: int | None = None  # cap on each idle gap (after scaling)


def offsets(timestamps: list[int], timing: Timing) -> list[int]:
    """Deadline offsets (ns, from the first request) for request timestamps sorted ascending."""
    if not timestamps:
        return []
    if timing.rate:
        step = 1e9 / timing.rate
        return [round(i * step) for i in range(len(timestamps))]
    if timing.speed == 0:
        return [0] * len(timestamps)
    out = [0]
    cap = timing.max_wait_ns
    for previous, current in zip(timestamps, timestamps[1:]):
        gap = (current - previous) / timing.speed
        if cap is not None and gap > cap:
            gap = cap
        out.append(out[-1] + gap)
    return [round(o) for o in out]


# An HTTP/2 connection carries concurrent streams: a lane sends one request at a time, so the streams
# of one captured connection that overlapped in the capture get lanes of their own ("slots"), named
# "CONNECTION ~k/n" (slot k of n). A connection whose streams never overlapped keeps its name as its
# one lane. An HTTP/2 target opens one connection per captured connection (connection_of) and
# multiplexes its slots' streams on it, until all n of them are closed (slot_count).
SLOT = " ~"


def connection_of(lane: str) -> str:
    """The captured connection a lane belongs to."""
    return lane.split(SLOT, 1)[0]


def slot_count(lane: str) -> int:
    """How many lanes (slots) the lane's captured connection has in the plan."""
    _, sep, slot = lane.rpartition(SLOT)
    return int(slot.rpartition("/")[2]) if sep else 1


def stream_lanes(exchanges: Iterable[Exchange]) -> dict[int, str]:
    """exchange index -> lane, for the exchanges captured over HTTP/2 on connections where streams
    overlapped (every other exchange's lane is its connection). A stream takes the lowest slot whose
    previous stream had its response started (recorded) when it began: streams sent one after the
    other share a slot, streams in flight together go side by side."""
    by_connection: dict[str, list[Exchange]] = {}
    for e in exchanges:
        if e.request.http2:
            by_connection.setdefault(e.connection, []).append(e)
    lanes: dict[int, str] = {}
    for connection, members in by_connection.items():
        busy_until: list[float] = []  # per slot: when its last stream's response started
        slots = {}
        for e in sorted(members, key=lambda e: (e.request_ts_ns, e.index)):
            slot = next((k for k, until in enumerate(busy_until) if until <= e.request_ts_ns), len(busy_until))
            if slot == len(busy_until):
                busy_until.append(0)
            busy_until[slot] = _NEVER if e.response_ts_ns is None else e.response_ts_ns
            slots[e.index] = slot
        if len(busy_until) > 1:
            n = len(busy_until)
            lanes.update((index, f"{connection}{SLOT}{slot}/{n}") for index, slot in slots.items())
    return lanes


class StreamedOffsets:
    """`offsets` one timestamp at a time, for a plan streamed in request-timestamp order: call it
    with each request's timestamp, get its deadline offset (the same values `offsets` gives the whole
    list; a timestamp earlier than the previous one gets the previous offset)."""

    __slots__ = ("timing", "count", "previous", "offset")

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.count = 0
        self.previous: int | None = None
        self.offset = 0.0

    def __call__(self, ts: int) -> int:
        timing = self.timing
        count, self.count = self.count, self.count + 1
        if timing.rate:
            return round(count * (1e9 / timing.rate))
        if timing.speed == 0:
            return 0
        previous, self.previous = self.previous, ts if self.previous is None else max(ts, self.previous)
        if previous is not None:
            gap = max(ts - previous, 0) / timing.speed
            cap = timing.max_wait_ns
            self.offset += cap if cap is not None and gap > cap else gap
        return round(self.offset)


def build_plan(exchanges: Iterable[Exchange], timing: Timing, prepare=None, wire=None) -> list[PlannedRequest]:
    """The plan for `exchanges` (already filtered), ordered by deadline. `prepare(exchange)` gives
    the request to send (after rewrites; default: the captured one), `wire(request)` the bytes a
    network target sends for it (default: the captured bytes). Overlapping HTTP/2 streams of one
    connection get lanes of their own (stream_lanes)."""
    chosen = sorted(exchanges, key=lambda e: (e.request_ts_ns, e.index))
    deadlines = offsets([e.request_ts_ns for e in chosen], timing)
    slots = stream_lanes(chosen)
    plan = []
    for exchange, offset in zip(chosen, deadlines):
        request = prepare(exchange) if prepare else exchange.request
        plan.append(PlannedRequest(exchange.index, offset, slots.get(exchange.index, exchange.connection), request,
                                   wire(request) if wire else request.raw))
    return plan


@dataclass(frozen=True, slots=True)
class Barriers:
    """What each request waits for, as prefixes of two completion orders (recorded response time,
    then plan position): `needs[key] = (w, a)`: the first w barrier writes and, for a barrier
    write, the first a planned requests, in that order, must have completed. Every dependency comes
    earlier in the plan, so waiting never deadlocks. `rank` and `write_rank` place a completed
    request in the two orders. Requests that wait for nothing are not in `needs`."""

    rank: dict[int, int]
    write_rank: dict[int, int]
    needs: dict[int, tuple[int, int]]

    @property
    def writes(self) -> int:
        return len(self.write_rank)


def write_barriers(exchanges: Iterable[Exchange], is_barrier: Callable[[Exchange], bool]) -> Barriers | None:
    """The ordering barriers of the sent writes among `exchanges` (the planned ones); None when none
    is a barrier (the engine then pays nothing). `is_barrier(exchange)`: a write that is sent."""
    chosen = sorted(exchanges, key=lambda e: (e.request_ts_ns, e.index))
    done = {e.index: (_NEVER if e.response_ts_ns is None else e.response_ts_ns, i) for i, e in enumerate(chosen)}
    writes = sorted((done[e.index], e.index) for e in chosen if is_barrier(e))
    if not writes:
        return None
    every = sorted((when, key) for key, when in done.items())
    write_done = [when for when, _ in writes]
    every_done = [when for when, _ in every]
    write_rank = {key: i for i, (_, key) in enumerate(writes)}
    needs = {}
    for position, exchange in enumerate(chosen):
        started = (exchange.request_ts_ns, position)
        after_writes = bisect_left(write_done, started)
        after_all = bisect_left(every_done, started) if exchange.index in write_rank else 0
        if after_writes or after_all:
            needs[exchange.index] = (after_writes, after_all)
    return Barriers({key: i for i, (_, key) in enumerate(every)}, write_rank, needs)
