"""The replay plan: which requests are sent, when, and on which replay connection (pure).

Deadlines are offsets from the replay's start, computed once from the capture: the recorded
offset divided by the speed factor (gaps capped by max-wait, the cap applied to each idle gap so
the rest of the schedule shifts with it), or an even spacing at a fixed rate. The engine sends
each request at t0 + offset, whatever happened before: lateness never accumulates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..http.message import Exchange, Request


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request to send. `key` identifies it to whoever waits for its observation."""

    key: int  # the exchange index in the capture
    offset_ns: int  # deadline relative to the replay's start
    lane: str  # captured connection: requests of one lane are sent in order on one replay connection
    request: Request
    wire: bytes  # the bytes to send on a network target (after the replay's rewrites)


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


def build_plan(exchanges: Iterable[Exchange], timing: Timing, prepare=None, wire=None) -> list[PlannedRequest]:
    """The plan for `exchanges` (already filtered), ordered by deadline. `prepare(exchange)` gives
    the request to send (after rewrites; default: the captured one), `wire(request)` the bytes a
    network target sends for it (default: the captured bytes)."""
    chosen = sorted(exchanges, key=lambda e: (e.request_ts_ns, e.index))
    deadlines = offsets([e.request_ts_ns for e in chosen], timing)
    plan = []
    for exchange, offset in zip(chosen, deadlines):
        request = prepare(exchange) if prepare else exchange.request
        plan.append(PlannedRequest(exchange.index, offset, exchange.connection, request,
                                   wire(request) if wire else request.raw))
    return plan
