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
from collections.abc import Callable
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

SHARD_SALT = b""
WORKER_SALT = b"#worker"
RENDEZVOUS_TIMEOUT_S = 120.0
START_MARGIN_S = 0.25  # after the last worker is ready, before t0
_PARTITION = "pytest-replay-partition-"  # the scheduler's scope of the replay items of one partition


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


class ReplayScheduling(LoadScopeScheduling):
    """LoadScope scheduling where the replay items of partition J form one work unit sent to worker
    gwJ at the start (the worker planned exactly those lanes); other tests are load-balanced by
    module as with --dist loadscope."""

    def __init__(self, config, log, part_of: Callable[[str], int | None]) -> None:
        super().__init__(config, log)
        self._part_of = part_of
        # LoadScope counts a node's pending tests by walking its whole workload, after every test:
        # with one unit of 50,000 replay items that is quadratic (minutes for 100k items). Counted
        # here instead, as units are assigned and tests complete.
        self._pending: dict[int, int] = {}  # id(assigned_work[node]) -> tests not completed
        self._scopes: dict[str, str] = {}  # node id -> its scope: LoadScope asks after every test

    def _split_scope(self, nodeid: str) -> str:
        scope = self._scopes.get(nodeid)
        if scope is None:
            part = self._part_of(nodeid)
            scope = self._scopes[nodeid] = (f"{_PARTITION}{part}" if part is not None
                                            else super()._split_scope(nodeid))
        return scope

    def _pending_of(self, workload: dict[str, dict[str, bool]]) -> int:
        count = self._pending.get(id(workload))
        return super()._pending_of(workload) if count is None else count

    def _assign_work_unit(self, node) -> None:
        scope, unit = next(iter(self.workqueue.items()))
        super()._assign_work_unit(node)
        self._track(node, sum(not done for done in unit.values()))

    def _track(self, node, added: int) -> None:
        """Keep the count of the node's pending tests after `added` more were assigned to it."""
        workload = self.assigned_work[node]
        if id(workload) in self._pending:
            self._pending[id(workload)] += added
        else:  # first assignment: count everything, the new tests included
            self._pending[id(workload)] = super()._pending_of(workload)

    def mark_test_complete(self, node, item_index: int, duration: float = 0) -> None:
        nodeid = self.registered_collections[node][item_index]
        workload = self.assigned_work[node]
        unit = workload[self._split_scope(nodeid)]
        if not unit[nodeid] and id(workload) in self._pending:
            self._pending[id(workload)] -= 1
        super().mark_test_complete(node, item_index, duration)

    def remove_node(self, node):
        self._pending.pop(id(self.assigned_work.get(node)), None)
        return super().remove_node(node)

    def schedule(self) -> None:
        if self.collection is not None or not self._check_nodes_have_same_collection():
            return super().schedule()
        super_collection = list(next(iter(self.registered_collections.values())))
        if not super_collection:
            self.collection = super_collection
            return
        replay_units: dict[str, dict[str, bool]] = {}
        for nodeid in super_collection:
            scope = self._split_scope(nodeid)
            units = replay_units if scope.startswith(_PARTITION) else self.workqueue
            units.setdefault(scope, {})[nodeid] = False
        # Hand each worker its own partition first; then let LoadScope share out the rest.
        for node in self.nodes:
            scope = f"{_PARTITION}{worker_index(node.workerinput['workerid'])}"
            unit = replay_units.pop(scope, None)
            self.assigned_work.setdefault(node, {})
            if unit:
                self.assigned_work[node][scope] = unit
                self._track(node, len(unit))
                position = {nodeid: i for i, nodeid in enumerate(self.registered_collections[node])}
                node.send_runtest_some([position[nodeid] for nodeid in unit])
        if replay_units:  # partitions without a worker (cannot happen: one partition per worker)
            raise RuntimeError(f"replay partitions without a worker: {sorted(replay_units)}")
        self.collection = super_collection
        for node in self.nodes:
            if self.workqueue:
                self._reschedule(node)
        if not self.workqueue:  # as LoadScope: a worker stops once its queue is done
            for node in self.nodes:
                node.shutdown()


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
