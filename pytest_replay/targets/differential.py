"""A composite Target for judging against a live baseline (Diffy's model).

For each planned request, `DifferentialTarget` sends to the candidate (the target under test) and
to the baseline (a known-good version) concurrently, and for reads also a second time to the
baseline (or to a second baseline instance): the noise probe. Each side has its own lanes and
connections (the same connection structure as the capture), and its own time limit, so a slow or
dead side never makes the other look slow or dead. The candidate's response goes back to the engine
(the engine is unchanged); the baseline's and the probe's outcomes are kept in side tables keyed by
the request key, read by the judge (verdicts/baseline.py) once the item's observation is in.

It sits inside PolicyTarget: mocked writes are answered from the recording and never get here;
sent writes go once to each side, never to the probe.

Settings that differ per side (the baseline's credentials, Host, URL rewrites) are `side_request`:
it turns the request as the target gets it (after the run's rewrites, hooks and middleware) into the
baseline's, for the baseline and the probe (made once per send, for both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from ..http.message import Request, Response
from ..http.units import ms
from ..schedule.plan import PlannedRequest
from ..schedule.target import APP_ERROR, CANCELLED, TIMEOUT, TargetError, describe

NOISE_LANE = "#noise"  # suffix of the probe's lanes: its connections are never the baseline's


_HOST_LINE = len(b"\r\nhost: ")


def rehost(wire: bytes, old: str, new: str) -> bytes | None:
    """The fast twin of `RawTarget.wire` for another side: `wire`, made by `raw.wire_bytes` with the
    Host `old` (which then holds one Host line), with that Host made `new`. None when the line is not
    found exactly once: the caller makes the bytes with `wire()` instead. Tested against it."""
    end = wire.find(b"\r\n\r\n")
    if end < 0:
        return None
    lowered = wire[:end + 2].lower()
    needle = b"\r\nhost: " + old.encode("latin-1").lower() + b"\r\n"
    at = lowered.find(needle)
    if at < 0 or lowered.find(b"\r\nhost:", at + 1) >= 0:
        return None
    return wire[:at + _HOST_LINE] + new.encode("latin-1") + wire[at + len(needle) - 2:]


@dataclass(frozen=True, slots=True)
class Side:
    """What one side (baseline or probe) answered to one request."""

    response: Response | None
    latency_ns: int | None  # to the first response byte
    error_kind: str | None = None
    error: str | None = None
    sent_ns: int | None = None  # on the engine's clock: this side's lateness and span (bench/bench_baseline.py)
    done_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None and self.response is not None

    def describe(self) -> str:
        if self.ok:
            return f"{self.response.status} in {ms(self.latency_ns)}"
        return f"{self.error_kind}: {self.error}"


class DifferentialTarget:
    """candidate + baseline (+ the noise probe, for requests `probe(planned)` accepts)."""

    def __init__(self, candidate, baseline, probe_target=None, *, probe: Callable[[PlannedRequest], bool] | None = None,
                 timeout_s: float | None = None, side_request: Callable[[Request], Request] | None = None) -> None:
        self.candidate = candidate
        self.baseline = baseline
        self.probe_target = probe_target
        self.probe = probe or (lambda planned: True)
        self.timeout_s = timeout_s
        self.side_request = side_request
        self.name = candidate.name
        self.baseline_sides: dict[int, Side] = {}
        self.probe_sides: dict[int, Side] = {}
        self._expired: set[int] = set()  # keys whose baseline sides ran out of time
        self._shared_wire = False  # the probe sends the baseline's bytes (set in start())
        self._rehost = False  # every side a RawTarget setting its own Host (set in start())

    def __repr__(self) -> str:
        return f"DifferentialTarget({self.candidate!r}, baseline={self.baseline!r})"

    def __getattr__(self, name: str):
        if name == "candidate":
            raise AttributeError(name)
        return getattr(self.candidate, name)

    def wire(self, request):
        wire = getattr(self.candidate, "wire", None)
        return wire(request) if wire is not None else request.raw

    def _side_request(self, planned: PlannedRequest) -> Request:
        """The baseline's version of the request the target gets (itself without per-side settings)."""
        side_request = self.side_request
        return planned.request if side_request is None else side_request(planned.request)

    def _wire(self, target, planned: PlannedRequest, request: Request) -> bytes:
        """The bytes `target` sends for `request`: for a network side of an unchanged request, the
        target's bytes with the side's Host (rehost), else made anew."""
        if self._rehost and request is planned.request:
            wire = rehost(planned.wire, self.candidate.host, target.host)
            if wire is not None:
                return wire
        wire = getattr(target, "wire", None)
        return wire(request) if wire is not None else request.raw

    def _same_wire(self) -> bool:
        """Do the baseline and the probe send the same bytes for a request (the probe is the baseline
        again, or another instance addressed alike)? Then they are made once per read."""
        from .raw import RawTarget

        a, b = self.baseline, self.probe_target
        if b is None or a is b:
            return True
        if type(a) is not type(b):
            return False
        if not hasattr(a, "wire"):
            return True  # both send the request's own bytes
        return isinstance(a, RawTarget) and (a.host, a.keep_host) == (b.host, b.keep_host)

    async def start(self) -> None:
        targets = [t for t in (self.candidate, self.baseline, self.probe_target) if t is not None]
        await asyncio.gather(*(t.start() for t in targets))
        self._shared_wire = self._same_wire()
        from .raw import RawTarget

        # network sides that all set their own Host: a side's bytes are the target's with its Host
        sides = [t for t in (self.candidate, self.baseline, self.probe_target) if t is not None]
        self._rehost = all(type(t) is RawTarget and not t.keep_host for t in sides)

    async def _side(self, target, planned: PlannedRequest, clock, who: str):
        """(response, sent, first, done) or the TargetError; a TIMEOUT if send()'s timer cancelled it."""
        try:
            return await target.send(planned, clock)
        except TargetError as exc:
            return exc
        except asyncio.CancelledError:
            if planned.key in self._expired:
                return TargetError(TIMEOUT, f"no complete response from the {who} within {self.timeout_s:g} s")
            raise
        except Exception as exc:
            return TargetError(APP_ERROR, f"the {who} target failed: {describe(exc)}")

    @staticmethod
    def _keep(result) -> Side:
        if isinstance(result, TargetError):
            return Side(None, None, result.kind, result.message, result.sent_ns)
        response, sent, first, done = result
        return Side(response, None if first is None else first - sent, None, None, sent, done)

    def _expire(self, key: int, tasks: list) -> None:
        """The baseline sides' time limit: the ones still running are cancelled (and recorded as
        timeouts); the target's own is the engine's (--replay-timeout)."""
        self._expired.add(key)
        for task in tasks:
            task.cancel()

    async def send(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        """The target's send runs in the engine's task; the baseline and the probe in two tasks of
        their own started first (one timer bounds both). Hot: no gather, no wait_for per side."""
        request = self._side_request(planned)
        key, lane = planned.key, planned.lane
        baseline_wire = self._wire(self.baseline, planned, request)
        create_task = asyncio.get_running_loop().create_task
        tasks = [create_task(self._side(self.baseline, PlannedRequest(key, planned.offset_ns, lane, request,
                                                                      baseline_wire), clock, "baseline"))]
        if self.probe_target is not None and self.probe(planned):
            probe_wire = baseline_wire if self._shared_wire else self._wire(self.probe_target, planned, request)
            tasks.append(create_task(self._side(self.probe_target, PlannedRequest(
                key, planned.offset_ns, lane + NOISE_LANE, request, probe_wire), clock, "baseline (noise probe)")))
        timer = None
        if self.timeout_s is not None:
            timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire, key, tasks)
        try:
            try:
                candidate = await self.candidate.send(planned, clock)
            except TargetError:  # the target failed: what the baseline answered is still wanted
                await self._finish(key, tasks)
                raise
            await self._finish(key, tasks)
            return candidate
        except BaseException as exc:
            if not isinstance(exc, TargetError):  # the engine gave up on this request (its timeout, a stop)
                cancelled = Side(None, None, CANCELLED, "cancelled with the target's request")
                for table, task in zip((self.baseline_sides, self.probe_sides), tasks):
                    done = task.done() and not task.cancelled()
                    table[key] = self._keep(task.result()) if done else cancelled
                    task.cancel()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._expired.discard(key)

    async def _finish(self, key: int, tasks: list) -> None:
        """Wait for the baseline sides (a _side never raises but for a cancellation) and keep them."""
        for task in tasks:
            await task
        for table, task in zip((self.baseline_sides, self.probe_sides), tasks):
            table[key] = self._keep(task.result())

    def close_lane(self, lane: str) -> None:
        for target, suffix in ((self.candidate, ""), (self.baseline, ""), (self.probe_target, NOISE_LANE)):
            close_lane = getattr(target, "close_lane", None) if target is not None else None
            if close_lane is not None:
                close_lane(lane + suffix)

    async def close(self) -> None:
        targets = [t for t in (self.candidate, self.baseline, self.probe_target) if t is not None]
        await asyncio.gather(*(t.close() for t in targets), return_exceptions=True)
