"""Clock and id noise, judged on the values themselves (issue 12.3): a field whose recorded value is a
time within the capture and whose replayed value is a time within the replay differs because the
clock moved, not because the service changed; a field that holds a UUID on both sides is an id the
service generates. Both are noise even for requests that occur once, where nothing can be learned.

Never more than that: a value that is a time on one side only, a time outside its window, a number
turned into a string, or a field added or removed stays a difference (the diff only asks here about
a value that changed and kept its JSON type). Sans-IO: "now" comes from the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

CLOCK_REASON = "clock noise (a time of the capture replaced by a time of the replay)"
ID_REASON = "id noise (a generated UUID on both sides)"
SLACK_NS = 120 * 10**9  # clocks of the recording host, the sandbox and this machine may disagree this much
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}")
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_RFC1123 = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} (GMT|[+-]\d{4})")
_SECONDS = (10**9, 10**10)  # epoch seconds from 2001 to 2286
_MILLIS = (10**12, 10**13)


def instant_ns(value) -> int | None:
    """Nanoseconds since the epoch if `value` is a time (ISO 8601, RFC 1123, epoch seconds or
    milliseconds), else None. A naive ISO time is taken as UTC."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if _SECONDS[0] <= value < _SECONDS[1]:
            return int(value * 10**9)
        if _MILLIS[0] <= value < _MILLIS[1]:
            return int(value * 10**6)
        return None
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        if _ISO.fullmatch(value):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
        elif _RFC1123.fullmatch(value):
            moment = parsedate_to_datetime(value)
        else:
            return None
    except (ValueError, TypeError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 10**9)


@dataclass(frozen=True)
class ClockNoise:
    """The two windows: the capture's (first request to last response) and the replay's (its start
    to `now()`), each widened by SLACK_NS."""

    capture_ns: tuple[int, int]
    replay_start_ns: int
    now: Callable[[], int]

    def reason(self, recorded, replayed) -> str | None:
        """Why a changed value is noise, or None."""
        if isinstance(recorded, str) and isinstance(replayed, str) and _UUID.fullmatch(recorded) \
                and _UUID.fullmatch(replayed):
            return ID_REASON
        old, new = instant_ns(recorded), instant_ns(replayed)
        if old is None or new is None:
            return None
        in_capture = self.capture_ns[0] - SLACK_NS <= old <= self.capture_ns[1] + SLACK_NS
        in_replay = self.replay_start_ns - SLACK_NS <= new <= self.now() + SLACK_NS
        return CLOCK_REASON if in_capture and in_replay else None

    @classmethod
    def of(cls, exchanges, replay_start_ns: int, now: Callable[[], int]) -> ClockNoise | None:
        """From the capture's exchanges (None when it holds none)."""
        times = [t for e in exchanges for t in (e.request_ts_ns, e.response_ts_ns) if t is not None]
        return cls((min(times), max(times)), replay_start_ns, now) if times else None
