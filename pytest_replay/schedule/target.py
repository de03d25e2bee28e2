"""What the engine needs from a target and from a request pipeline, and what it records for each
request (typed values). The engine owns these seams; targets/ and policy/ implement them.

A target sends one request on a lane (the replay connection standing for one captured connection)
and returns the response, or raises TargetError saying what went wrong. Targets run inside the
engine's event loop; everything crossing back to pytest's thread is an Observation (frozen, plain).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Protocol

from ..http.message import Response, _fast_new
from ..vocab import ErrorKind
from .plan import PlannedRequest

# Why a request got no usable response: one code per cause (vocab.ErrorKind says what each means).
REFUSED = ErrorKind.REFUSED
RESET = ErrorKind.RESET
TIMEOUT = ErrorKind.TIMEOUT
UNPARSABLE = ErrorKind.UNPARSABLE
TRUNCATED = ErrorKind.TRUNCATED
APP_ERROR = ErrorKind.APP_ERROR
CANCELLED = ErrorKind.CANCELLED
DROPPED = ErrorKind.DROPPED
ERROR_KINDS = (REFUSED, RESET, TIMEOUT, UNPARSABLE, TRUNCATED, APP_ERROR, CANCELLED, DROPPED)

# Why a request was sent after its deadline (Observation.lateness_causes): one name per cause.
ENGINE = "engine"  # the engine itself was behind schedule (the dispatcher, the pipeline, the GIL, a busy CPU)
CONNECTION = "connection"  # its captured connection's previous response had not come back yet
BARRIER = "barrier"  # it waited for a sent write recorded before it (schedule/plan.py barriers)
CONCURRENCY = "concurrency"  # --replay-concurrency requests were already in flight
LATENESS_CAUSES = (ENGINE, CONNECTION, BARRIER, CONCURRENCY)

class TargetError(Exception):
    """A request got no usable response. `sent_ns`/`first_byte_ns` (engine clock) say how far it got,
    when the target knows: the engine records them in the observation."""

    def __init__(self, kind: str, message: str, *, sent_ns: int | None = None,
                 first_byte_ns: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.sent_ns = sent_ns
        self.first_byte_ns = first_byte_ns


@_fast_new
@dataclass(frozen=True, slots=True, init=False)
class Observation:
    """What happened to one planned request. Times are monotonic ns (engine clock).

    For a request that was never sent (error_kind "cancelled" before sending), sent_ns is its
    deadline, so lateness is 0 and it does not distort lateness statistics.

    The waits say why a request was late (`lateness_causes`): `lane_wait_ns` for its connection's
    previous response, `barrier_wait_ns` for a write barrier, `slot_wait_ns` for a concurrency slot;
    the rest of its lateness is the engine's own. `spilled`: sent on an extra connection because its
    own was busy (--replay-connections spill).

    One is built per replayed request on the engine's thread: `_fast_new` gives it a constructor
    that stores the fields plainly (~0.3 us; a frozen dataclass's object.__setattr__ per field cost
    ~2 us here, a fifth of the engine's Python per request)."""

    key: int
    deadline_ns: int  # absolute, on the engine clock
    sent_ns: int  # when its first byte was handed to the transport (or the app was called)
    first_byte_ns: int | None  # first byte of the response
    done_ns: int  # response complete, or the error happened
    response: Response | None
    error_kind: str | None = None
    error: str | None = None
    lane_wait_ns: int = 0
    barrier_wait_ns: int = 0
    slot_wait_ns: int = 0
    spilled: bool = False

    @property
    def lateness_ns(self) -> int:
        return self.sent_ns - self.deadline_ns

    def unscheduled(self) -> Observation:
        """This observation in a replay without a schedule (--speed 0 without a rate: every request due
        at t0): its deadline is when it was sent and it waited for nothing, so its lateness and its
        causes are 0 and its response time from schedule is its latency. Kept as measured, a request
        that waited its turn on a busy captured connection would count all of that wait since t0:
        'response time from schedule' p99 of minutes against a healthy target, every `scheduled`
        budget and default stop condition broken, and lateness histograms of no use filling memory."""
        return Observation(self.key, self.sent_ns, self.sent_ns, self.first_byte_ns, self.done_ns, self.response,
                           self.error_kind, self.error, 0, 0, 0, self.spilled)

    @property
    def lateness_causes(self) -> dict[str, int]:
        """Its lateness split by cause (ns, each >= 0, summing to the lateness when it is positive):
        the waits it made (as they would have been had the engine been on time: schedule/engine.py),
        capped at the lateness in the order connection, barrier, concurrency; what remains is the engine's."""
        left = max(self.sent_ns - self.deadline_ns, 0)
        out = {}
        for cause, wait in ((CONNECTION, self.lane_wait_ns), (BARRIER, self.barrier_wait_ns),
                            (CONCURRENCY, self.slot_wait_ns)):
            part = min(wait, left)
            out[cause] = part
            left -= part
        out[ENGINE] = left
        return out

    @property
    def queued_ns(self) -> int:
        """The part of its lateness spent waiting for the target (its connection, a barrier, a
        concurrency slot): its lateness less the engine's own part (lateness_causes)."""
        late = self.sent_ns - self.deadline_ns
        if late <= 0:
            return 0
        return min(late, self.lane_wait_ns + self.barrier_wait_ns + self.slot_wait_ns)

    @property
    def response_ns(self) -> int | None:
        """Response time from schedule (coordinated omission corrected, as wrk2 and HdrHistogram's
        corrected latency): from the instant it would have been sent had the replayer been on time
        (its deadline plus the time it queued for the target, `queued_ns`) to its first response byte.
        The engine's own lateness is left out (a replayer behind schedule is not a slow service:
        `lateness>` judges it). A request that timed out counts until it did (it waited that long at
        least); other failures have none."""
        if self.first_byte_ns is not None:
            return self.first_byte_ns - self.sent_ns + self.queued_ns
        if self.error_kind == TIMEOUT:
            return self.done_ns - self.sent_ns + self.queued_ns
        return None

    @property
    def latency_ns(self) -> int | None:
        """Time to the first response byte: comparable to the recorded latency (response start
        minus request start)."""
        return None if self.first_byte_ns is None else self.first_byte_ns - self.sent_ns

    @property
    def total_ns(self) -> int:
        return self.done_ns - self.sent_ns

    @property
    def ok(self) -> bool:
        return self.error_kind is None


class Target(Protocol):
    """A place to send requests. `send` is called in order per lane, never concurrently on one lane.

    Cancellation: the engine cancels `send` when the request times out or the replay is stopped.
    The target must then drop whatever state the lane had (its connection may be stuck), so the
    next `send` on that lane starts fresh. `close_lane` is called after a lane's last request
    (optional for a target: the engine calls it only if it exists) so connections do not pile up.
    Network targets may also offer `wire(request) -> bytes`, the bytes to plan for a request, and
    the engine's callback protocol (its fast path, declared on the class): `begin(planned, clock,
    done) -> bool` starts the request and later calls `done(response, sent_ns, first_byte_ns,
    done_ns, error)` once (never from inside begin; error None, or the TargetError or exception
    `send` would have raised), or returns False having done nothing (the engine then awaits `send`);
    `abort_lane(lane)` gives up on the lane's request in flight (`done` is then not called);
    optionally `begins` False when begin() would decline every request (a wrapper around a target
    without it: the engine then keeps its coroutine lanes).
    """

    name: str

    async def start(self) -> None: ...

    async def send(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        """Send and wait for the response: (response, sent_ns, first_byte_ns, done_ns).
        Raises TargetError."""
        ...

    def close_lane(self, lane: str) -> None:
        """The lane has no more requests: release its connection (optional)."""
        ...

    async def close(self) -> None: ...


class Dropped(Exception):
    """A request pipeline chose not to send this request (not an error: its item is skipped)."""


class PipelineFailure(Exception):
    """The request pipeline itself broke (a middleware that exited or hung): the replay must stop."""


class RequestPipeline(Protocol):
    """Between a request's deadline and the wire (hooks, middleware): `prepare` returns the request
    to send instead of `planned`, or raises Dropped; `observed` sees each observation."""

    async def start(self) -> None: ...

    async def prepare(self, planned: PlannedRequest) -> PlannedRequest: ...

    async def observed(self, planned: PlannedRequest, observation: Observation) -> None: ...

    async def close(self) -> None: ...


def describe(exc: BaseException) -> str:
    """An exception in one line: 'ExceptionType: message (at file.py:12 in func <- file.py:34 in
    caller)', innermost frames first (at most three)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    if frames:
        where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in reversed(frames))
        text += f" (at {where})"
    return " ".join(text.split("\n"))
