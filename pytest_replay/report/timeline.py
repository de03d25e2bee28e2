"""Per-second counts of a replay, on the capture's timeline: mergeable and bounded.

A bucket is a second of the capture (the recorded request's timestamp), so the buckets of xdist
workers and shards of one capture line up exactly and merge by adding. At --speed S the replay ran
that second S times faster; under --rate or --speed 0 the time axis is still the capture's.

Each bucket holds: requests, status classes (1xx..5xx), transport errors, replayed latency (count,
sum, max) and lateness (sum, max), in microseconds. Bounded: beyond MAX_BUCKETS buckets the width
doubles (2 s, 4 s, ...) and buckets are folded, so a day-long capture stays a few thousand rows.
Sans-IO.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_BUCKETS = 2000
FIELDS = ("requests", "1xx", "2xx", "3xx", "4xx", "5xx", "errors", "latency_n", "latency_sum_us", "latency_max_us",
          "lateness_sum_us", "lateness_max_us")
_MAXED = {FIELDS.index("latency_max_us"), FIELDS.index("lateness_max_us")}


class Timeline:
    """Buckets of `width` seconds keyed by their first second since 1970 (capture time)."""

    __slots__ = ("width", "buckets")

    def __init__(self, width: int = 1) -> None:
        self.width = width
        self.buckets: dict[int, list[int]] = {}

    def add(self, ts_ns: int, status: int | None, error: bool, latency_us: int | None, lateness_us: int) -> None:
        key = ts_ns // 1_000_000_000
        if self.width != 1:
            key -= key % self.width
        row = self.buckets.get(key)
        if row is None:
            while len(self.buckets) >= MAX_BUCKETS and row is None:  # no room for one more: coarser buckets
                self._rebucket(self.width * 2)
                key -= key % self.width
                row = self.buckets.get(key)
            if row is None:
                row = self.buckets[key] = [0] * len(FIELDS)
        row[0] += 1
        if error:
            row[6] += 1
        elif status is not None:
            column = status // 100  # (1xx..5xx: columns 1..5)
            if 0 < column < 6:
                row[column] += 1
        if latency_us is not None:
            row[7] += 1
            row[8] += latency_us
            if latency_us > row[9]:
                row[9] = latency_us
        if lateness_us > 0:
            row[10] += lateness_us
            if lateness_us > row[11]:
                row[11] = lateness_us

    def _widen(self) -> None:
        while len(self.buckets) > MAX_BUCKETS:
            self._rebucket(self.width * 2)

    def _rebucket(self, width: int) -> None:
        old, self.buckets, self.width = self.buckets, {}, width
        for key, row in old.items():
            self._fold(key - key % width, row)

    def _fold(self, key: int, row: list[int]) -> None:
        mine = self.buckets.get(key)
        if mine is None:
            self.buckets[key] = list(row)
            return
        for i, value in enumerate(row):
            mine[i] = max(mine[i], value) if i in _MAXED else mine[i] + value

    def merge(self, other: Timeline) -> Timeline:
        if other.width > self.width:
            self._rebucket(other.width)
        for key, row in other.buckets.items():
            self._fold(key - key % self.width, row)
        self._widen()
        return self

    def rows(self) -> list[tuple[int, list[int]]]:
        return sorted(self.buckets.items())

    def to_dict(self) -> dict:
        rows = self.rows()
        return {"width_s": self.width, "fields": list(FIELDS), "start_s": [k for k, _ in rows],
                "rows": [row for _, row in rows]}

    @classmethod
    def from_dict(cls, data: dict | None) -> Timeline:
        timeline = cls(int((data or {}).get("width_s") or 1))
        if data:
            for key, row in zip(data.get("start_s") or [], data.get("rows") or []):
                timeline._fold(int(key), [int(v) for v in row])
        return timeline

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timeline) and (self.width, self.buckets) == (other.width, other.buckets)


def coarsen(data: dict, at_most: int) -> tuple[int, list[int], list[dict]]:
    """(width s, start seconds, rows as dicts) of a timeline dict, folded to at most `at_most` buckets
    (for drawing)."""
    timeline = Timeline.from_dict(data)
    width = timeline.width
    if timeline.buckets:
        span = max(timeline.buckets) - min(timeline.buckets) + width
        while span / width > at_most:
            width *= 2
        if width != timeline.width:
            timeline._rebucket(width)
    rows = timeline.rows()
    return width, [k for k, _ in rows], [dict(zip(FIELDS, row)) for _, row in rows]


def merged(timelines: Iterable[Timeline]) -> Timeline:
    total = Timeline()
    for timeline in timelines:
        total.merge(timeline)
    return total


__all__ = ["FIELDS", "MAX_BUCKETS", "Timeline", "coarsen", "merged"]
