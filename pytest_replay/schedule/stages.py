"""Capacity runs: stages of speed or arrival rate, and the deadlines they give (pure).

    --replay-stages '1x:60s, 2x:60s, ramp 2x..5x:120s, 5x:60s'
    --replay-stages '500/s:30s, ramp 500/s..4000/s:60s, fixed 500/s:30s'

A stage is a pace held (or ramped linearly) for a duration:

    Nx            a speed factor over the recorded timing (as --speed)
    N/s           a mean arrival rate: the recorded timing scaled so the stage's mean rate is N per
                  second; the capture's bursts, gaps and endpoint mix are kept
    fixed N/s     arrivals evenly spaced at N per second (as --rate)
    ramp A..B     the pace moves linearly from A to B over the stage (both ends of one kind)

The schedule walks a "capture position" forward at the stage's speed (a rate N/s is the speed
N / the capture's mean rate). When the capture is used up it loops: loop k replays request i at
position ts[i] + k * period, where the period is the capture's span plus one mean gap, so a loop
boundary is one ordinary gap, never a burst. Deadlines are monotone in capture order (so in every
lane), and between two consecutive requests the replayed gap is the recorded gap divided by the
speed in between (a fixed stage spaces them by its rate): a stage boundary creates no burst.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from dataclasses import dataclass

from ..vocab import StageKind

SPEED, RATE, FIXED = StageKind.SPEED, StageKind.RATE, StageKind.FIXED
MAX_REQUESTS = 20_000_000  # a plan larger than this is refused (memory): shorten the stages
ACCEPTED = ("accepted forms: comma-separated stages 'PACE:DURATION', PACE a speed factor (2x), a mean "
            "rate scaling the recorded timing (500/s), an even rate ('fixed 500/s'), or a linear ramp "
            "('ramp 2x..5x', 'ramp 500/s..4000/s', 'fixed ramp 100/s..200/s'); DURATION 30s, 500ms, 2m, "
            "1h (a bare number is seconds). Example: '1x:60s, 2x:60s, ramp 2x..5x:120s, 5x:60s'")

_PACE = r"(?:\d+(?:\.\d+)?|\.\d+)\s*(?:x|/s)"
_STAGE = re.compile(r"^(?P<fixed>fixed\s+)?(?:(?P<ramp>ramp)\s+(?P<a>" + _PACE + r")\s*\.\.\s*(?P<b>" + _PACE
                    + r")|(?P<v>" + _PACE + r"))\s*:\s*(?P<d>(?:\d+(?:\.\d+)?|\.\d+)\s*(?:ms|s|m|h)?)$",
                    re.IGNORECASE)
_UNITS = {"ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


@dataclass(frozen=True, slots=True)
class Stage:
    kind: str  # SPEED, RATE (mean rate over the recorded timing) or FIXED (even spacing)
    start: float  # speed factor or requests per second at the stage's start
    end: float  # ... at its end (== start unless a ramp)
    duration_ns: int
    text: str = ""

    @property
    def ramp(self) -> bool:
        return self.start != self.end

    def pace(self, value: float) -> str:
        return f"{value:g}x" if self.kind == SPEED else f"{value:g}/s"

    @property
    def label(self) -> str:
        pace = f"ramp {self.pace(self.start)}..{self.pace(self.end)}" if self.ramp else self.pace(self.start)
        return ("fixed " if self.kind == FIXED else "") + pace


def _pace(text: str) -> tuple[str, float]:
    text = text.replace(" ", "").lower()
    if text.endswith("x"):
        return SPEED, float(text[:-1])
    return RATE, float(text[:-2])


def parse_duration_ns(text: str) -> int:
    text = text.replace(" ", "").lower()
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and (unit != "s" or not text.endswith("ms")):
            return round(float(text[: -len(unit)]) * _UNITS[unit])
    return round(float(text) * 1e9)


def parse_stages(text: str) -> tuple[Stage, ...]:
    """'1x:60s, ramp 1x..3x:30s' -> Stages. ValueError names the accepted forms."""
    stages = []
    for part in str(text).split(","):
        part = " ".join(part.split())
        if not part:
            continue
        match = _STAGE.match(part)
        if not match:
            raise ValueError(f"invalid stage {part!r}; {ACCEPTED}")
        if match["ramp"]:
            (kind_a, a), (kind_b, b) = _pace(match["a"]), _pace(match["b"])
            if kind_a != kind_b:
                raise ValueError(f"invalid stage {part!r}: a ramp goes from a speed to a speed or from a rate "
                                 f"to a rate; {ACCEPTED}")
        else:
            kind_a, a = _pace(match["v"])
            b = a
        kind = kind_a
        if match["fixed"]:
            if kind == SPEED:
                raise ValueError(f"invalid stage {part!r}: 'fixed' goes with a rate (fixed 500/s); {ACCEPTED}")
            kind = FIXED
        duration = parse_duration_ns(match["d"])
        if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)) or a > 1e9 or b > 1e9:
            raise ValueError(f"invalid stage {part!r}: the pace must be above 0 (and at most 1e9); {ACCEPTED}")
        if not 0 < duration <= 1e6 * 1e9:
            raise ValueError(f"invalid stage {part!r}: the duration must be above 0 and at most 1e6 s; {ACCEPTED}")
        stages.append(Stage(kind, a, b, duration, part))
    if not stages:
        raise ValueError(f"no stage in {text!r}; {ACCEPTED}")
    return tuple(stages)


@dataclass(frozen=True, slots=True)
class Send:
    position: int  # index into the capture's requests in time order
    loop: int  # 0 for the capture's first pass
    offset_ns: int  # deadline from the replay's start
    stage: int  # index of the stage it falls in


@dataclass(frozen=True, slots=True)
class StagePlan:
    sends: list[Send]
    stages: tuple[Stage, ...]
    bounds_ns: tuple[int, ...]  # start offset of each stage, then the end of the last
    period_ns: int  # one loop of the capture at 1x
    base_rate: float  # the capture's mean rate at 1x (requests per second over one period)
    loops: int  # passes over the capture begun (1 = no looping)

    def planned(self) -> list[int]:
        counts = [0] * len(self.stages)
        for send in self.sends:
            counts[send.stage] += 1
        return counts

    def stage_of(self, offset_ns: int) -> int:
        """The stage an offset falls in (the last one for offsets at or past the end)."""
        return min(max(bisect_right(self.bounds_ns, offset_ns) - 1, 0), len(self.stages) - 1)

    def rate_at(self, offset_ns: int) -> float:
        """The target rate (requests per second) the schedule offers at `offset_ns` from the start
        (a ramp's pace at that instant)."""
        index = self.stage_of(offset_ns)
        stage = self.stages[index]
        into = min(max(offset_ns - self.bounds_ns[index], 0), stage.duration_ns) / stage.duration_ns
        pace = stage.start + (stage.end - stage.start) * into
        return pace * self.base_rate if stage.kind == SPEED else pace

    def target_rate(self, index: int) -> float:
        """The stage's mean target rate (requests per second)."""
        stage = self.stages[index]
        mean = (stage.start + stage.end) / 2
        return mean * self.base_rate if stage.kind == SPEED else mean


def period_ns(timestamps: list[int]) -> int:
    """One loop of the capture: its span plus one mean gap (at least 1 ms)."""
    n = len(timestamps)
    span = timestamps[-1] - timestamps[0] if n else 0
    if n < 2 or span <= 0:
        return max(span, 1_000_000) if n < 2 else max(1_000_000, n * 1_000)
    return max(round(span * n / (n - 1)), 1_000_000)


def _solve(x: float, a: float, b: float, d: float) -> float:
    """tau in [0, d] with a*tau + (b - a)*tau^2/(2d) = x (a linear ramp's integral), stable form."""
    if a == b:
        return x / a
    root = a * a + 2 * (b - a) * x / d
    return 2 * x / (a + math.sqrt(max(root, 0.0)))


def stage_plan(timestamps: list[int], stages: tuple[Stage, ...], *, max_requests: int = MAX_REQUESTS) -> StagePlan:
    """The sends for `timestamps` (the capture's request times, ascending) over `stages`.
    ValueError if the stages need more than `max_requests` sends."""
    if any(a > b for a, b in zip(timestamps, timestamps[1:])):
        raise ValueError("timestamps must be ascending")
    bounds = [0]
    for stage in stages:
        bounds.append(bounds[-1] + stage.duration_ns)
    n = len(timestamps)
    if not n:
        return StagePlan([], stages, tuple(bounds), 0, 0.0, 0)
    first = timestamps[0]
    rel = [t - first for t in timestamps]
    period = period_ns(timestamps)
    base_rate = n / (period / 1e9)
    sends: list[Send] = []
    j = 0  # the next request, counted over loops

    def position(j: int) -> float:
        return rel[j % n] + (j // n) * period

    c = 0.0  # capture position (ns) reached
    carry = 1.0  # fixed stages: progress towards the next arrival (1 = due now)
    for index, stage in enumerate(stages):
        t0, d = bounds[index], stage.duration_ns
        if stage.kind == FIXED:
            a, b, d_s = stage.start, stage.end, d / 1e9
            k = 1
            while True:
                tau = _solve(k - carry, a, b, d_s) * 1e9 if k - carry > 0 else 0.0
                if tau >= d:
                    break
                sends.append(Send(j % n, j // n, t0 + round(tau), index))
                j += 1
                k += 1
                if len(sends) > max_requests:
                    raise ValueError(f"the stages plan more than {max_requests} requests: shorten them")
            carry = carry + (a + b) / 2 * d_s - (k - 1)
            c = position(j)  # a speed stage after this one goes on from the next request, at once
            continue
        carry = 1.0
        a, b = stage.start, stage.end
        if stage.kind == RATE:
            a, b = a / base_rate, b / base_rate
        end = c + (a + b) / 2 * d
        while True:
            x = position(j)
            if x >= end:
                break
            tau = _solve(x - c, a, b, d) if x > c else 0.0
            sends.append(Send(j % n, j // n, min(t0 + round(tau), t0 + d - 1), index))
            j += 1
            if len(sends) > max_requests:
                raise ValueError(f"the stages plan more than {max_requests} requests: shorten them")
        c = end
    loops = (sends[-1].loop + 1) if sends else 0
    return StagePlan(sends, stages, tuple(bounds), period, base_rate, loops)


def loop_stages(timestamps: list[int], *, speed: float, rate: float | None, loops: int | None,
                duration_s: float | None) -> tuple[Stage, ...]:
    """--replay-loop N / --replay-duration as one stage at the run's pace."""
    if rate:
        kind, value = FIXED, rate
        one = len(timestamps) / rate * 1e9
    else:
        kind, value = SPEED, speed
        one = period_ns(timestamps) / speed if timestamps else 1e9
    duration = duration_s * 1e9 if duration_s else (loops or 1) * one
    return (Stage(kind, value, value, max(round(duration), 1), "loop"),)
