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
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ..http.message import Request, Response
from ..http.units import ms
from ..schedule.plan import PlannedRequest
from ..schedule.target import APP_ERROR, TIMEOUT, TargetError, describe

NOISE_LANE = "#noise"  # suffix of the probe's lanes: its connections are never the baseline's


@dataclass(frozen=True, slots=True)
class Side:
    """What one side (baseline or probe) answered to one request."""

    response: Response | None
    latency_ns: int | None  # to the first response byte
    error_kind: str | None = None
    error: str | None = None

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

    @staticmethod
    def _for(target, planned: PlannedRequest, request: Request, lane_suffix: str = "") -> PlannedRequest:
        wire = getattr(target, "wire", None)
        data = wire(request) if wire is not None else request.raw
        if data is planned.wire and not lane_suffix and request is planned.request:
            return planned
        return dataclasses.replace(planned, request=request, wire=data, lane=planned.lane + lane_suffix)

    async def start(self) -> None:
        targets = [t for t in (self.candidate, self.baseline, self.probe_target) if t is not None]
        await asyncio.gather(*(t.start() for t in targets))

    async def _side(self, target, planned: PlannedRequest, clock, who: str):
        """(response, sent, first, done) or the TargetError, within this side's own time limit."""
        try:
            if self.timeout_s is None:
                return await target.send(planned, clock)
            return await asyncio.wait_for(target.send(planned, clock), self.timeout_s)
        except TargetError as exc:
            return exc
        except (asyncio.TimeoutError, TimeoutError):
            return TargetError(TIMEOUT, f"no complete response from the {who} within {self.timeout_s:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return TargetError(APP_ERROR, f"the {who} target failed: {describe(exc)}")

    @staticmethod
    def _keep(result) -> Side:
        if isinstance(result, TargetError):
            return Side(None, None, result.kind, result.message)
        response, sent, first, _done = result
        return Side(response, None if first is None else first - sent)

    async def send(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        request = self._side_request(planned)
        sides = [self._side(self.candidate, planned, clock, "target"),
                 self._side(self.baseline, self._for(self.baseline, planned, request), clock, "baseline")]
        probing = self.probe_target is not None and self.probe(planned)
        if probing:
            sides.append(self._side(self.probe_target, self._for(self.probe_target, planned, request, NOISE_LANE),
                                    clock, "baseline (noise probe)"))
        results = await asyncio.gather(*sides)
        self.baseline_sides[planned.key] = self._keep(results[1])
        if probing:
            self.probe_sides[planned.key] = self._keep(results[2])
        candidate = results[0]
        if isinstance(candidate, TargetError):
            raise candidate
        return candidate

    def close_lane(self, lane: str) -> None:
        for target, suffix in ((self.candidate, ""), (self.baseline, ""), (self.probe_target, NOISE_LANE)):
            close_lane = getattr(target, "close_lane", None) if target is not None else None
            if close_lane is not None:
                close_lane(lane + suffix)

    async def close(self) -> None:
        targets = [t for t in (self.candidate, self.baseline, self.probe_target) if t is not None]
        await asyncio.gather(*(t.close() for t in targets), return_exceptions=True)
