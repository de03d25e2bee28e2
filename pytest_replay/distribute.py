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
from pathlib import Path

SHARD_SALT = b""
WORKER_SALT = b"#worker"
RENDEZVOUS_TIMEOUT_S = 120.0
START_MARGIN_S = 0.25  # after the last worker is ready, before t0


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


def local_worker(node) -> bool:
    """Does this xdist worker run on this machine (so it shares the file system)?"""
    spec = getattr(getattr(node, "gateway", None), "spec", None)
    return bool(getattr(spec, "popen", False)) and not getattr(spec, "ssh", None) and \
        not getattr(spec, "socket", None) and os.name == "posix"
