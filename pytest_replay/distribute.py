"""Splitting a replay across pytest-xdist workers, shards and machines.

A captured connection (a lane) is never split: its requests keep their order on one replay
connection, so the unit of distribution is the lane. `partition(lane, n)` is a stable hash (the
same in every process and on every machine), used twice: `--replay-shard K/N` keeps the lanes of
shard K, and under `-n W` worker gwJ replays the lanes of partition J (within the shard). The
xdist scheduler sends each worker exactly the items of its partition, and workers start their
engines at one shared instant so the global schedule holds.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .http.units import ms_number

SHARD_SALT = b""
WORKER_SALT = b"#worker"
RENDEZVOUS_TIMEOUT_S = 120.0
START_MARGIN_S = 0.25  # after the last worker is ready, before t0
CLOCK_SAMPLES = 8  # round trips per worker when measuring its clock's offset
CLOCK_WARN_NS = 1_000_000  # an offset known less precisely than this gets a note in the summary


def partition(lane: str, count: int, salt: bytes = SHARD_SALT) -> int:
    """Which of `count` parts a lane belongs to (0-based), the same in every process."""
    return zlib.crc32(lane.encode("utf-8", "surrogateescape") + salt) % count if count > 1 else 0


def worker_part(lane: str, workers: int) -> int:
    return partition(lane, workers, WORKER_SALT)


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1-based) -> (K, N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match:
        k, n = int(match.group(1)), int(match.group(2))
        if 1 <= k <= n:
            return k, n
    raise ValueError(f"expected K/N with 1 <= K <= N, e.g. 2/4 (shard 2 of 4), got {text!r}")


def worker_index(workerid: str) -> int:
    return int(workerid[2:]) if workerid.startswith("gw") and workerid[2:].isdigit() else 0


def rendezvous(directory: str, workerid: str, participants: int, timeout_s: float = RENDEZVOUS_TIMEOUT_S
               ) -> tuple[float, str | None]:
    """Wait until `participants` workers are ready, then return the shared start time (wall clock,
    seconds) and a note if some never came. Local workers share a directory: each writes when it is
    ready; all take the latest ready time plus a margin, so they agree without talking."""
    path = Path(directory)
    mine = path / f"{workerid}.ready"
    mine.write_text(repr(time.time()))
    deadline = time.monotonic() + timeout_s
    while True:
        ready = sorted(path.glob("*.ready"))
        if len(ready) >= participants:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    times = []
    for entry in ready:
        try:
            times.append(float(entry.read_text()))
        except (OSError, ValueError):
            pass
    note = None if len(ready) >= participants else (
        f"only {len(ready)} of {participants} workers were ready after {timeout_s:g} s; started without the rest")
    return max(times, default=time.time()) + START_MARGIN_S, note


def lead_ns_until(start_wall_s: float) -> int:
    """Nanoseconds from now until a wall-clock instant (0 if it has passed)."""
    return max(0, int((start_wall_s - time.time()) * 1e9))


def local_spec(spec) -> bool:
    """Is an execnet spec (`--tx`) a process on this machine (sharing its clock and file system)?"""
    return bool(getattr(spec, "popen", False)) and not getattr(spec, "ssh", None) and \
        not getattr(spec, "socket", None) and os.name == "posix"


def spec_host(spec) -> str:
    """Where an execnet spec runs, as shown in the summary and the evidence (no options, no paths)."""
    ssh = getattr(spec, "ssh", None)
    if ssh:
        return "ssh " + ssh.split()[-1]  # `ssh=-F config host`: the host is the last word
    socket = getattr(spec, "socket", None)
    return f"socket {socket}" if socket else "popen (this machine)"


def worker_args(args: Sequence[str], value_flags: Iterable[str], path_flags: Iterable[str], cwd: str) -> list[str]:
    """The command line as xdist hands it to remote workers: `--flag VALUE` pairs of our options
    joined as `--flag=VALUE`, and capture paths made absolute.

    xdist rewrites every argument naming an existing file relative to an rsync root, and stops the
    run when it is under none ("arg ... not relative to an rsync root"). A capture is not a test file
    to ship: each worker reads it at the same absolute path, and in the `--flag=VALUE` form xdist
    leaves it alone."""
    values, paths = set(value_flags), set(path_flags)
    out: list[str] = []
    pending: str | None = None
    for arg in args:
        if pending is not None:
            value = os.path.join(cwd, arg) if pending in paths else arg
            out.append(f"{pending}={value}")
            pending = None
            continue
        flag, eq, value = arg.partition("=")
        if flag in values and not eq:
            pending = flag
        elif flag in paths and eq:
            out.append(f"{flag}={os.path.join(cwd, value)}")
        else:
            out.append(arg)
    if pending is not None:
        out.append(pending)
    return out


# -- clocks of other machines ---------------------------------------------------------------------
@dataclass(frozen=True)
class ClockSample:
    """One round trip to a worker: the controller's clock when the ping left and when the answer
    came back, and the worker's clock when it answered (all in nanoseconds)."""

    sent_ns: int
    remote_ns: int
    received_ns: int

    @property
    def round_trip_ns(self) -> int:
        return self.received_ns - self.sent_ns


@dataclass(frozen=True)
class ClockOffset:
    """How far a worker's wall clock is ahead of the controller's (negative: behind), known to
    within +/- `uncertainty_ns` (half the round trip of the sample it comes from)."""

    offset_ns: int
    uncertainty_ns: int
    samples: int

    def to_dict(self) -> dict:
        return {"offset_ms": ms_number(self.offset_ns, digits=4),
                "uncertainty_ms": ms_number(self.uncertainty_ns, digits=4),
                "samples": self.samples}


def estimate_offset(samples: Iterable[ClockSample]) -> ClockOffset:
    """NTP's estimate: the worker read its clock somewhere within the round trip, so taking the
    midpoint errs by at most half the round trip; the sample with the smallest round trip wins."""
    taken = list(samples)
    if not taken:
        raise ValueError("no clock sample")
    best = min(taken, key=lambda s: s.round_trip_ns)
    midpoint = best.sent_ns + best.round_trip_ns // 2
    return ClockOffset(offset_ns=best.remote_ns - midpoint, uncertainty_ns=(best.round_trip_ns + 1) // 2,
                       samples=len(taken))


def measure_offset(ping: Callable[[], int], clock: Callable[[], int] = time.time_ns,
                   samples: int = CLOCK_SAMPLES) -> ClockOffset:
    """Ask a worker's clock `samples` times (`ping` returns its time_ns) and estimate its offset."""
    taken = []
    for _ in range(samples):
        sent = clock()
        remote = ping()
        taken.append(ClockSample(sent, remote, clock()))
    return estimate_offset(taken)
