"""The replay under pytest-xdist: the controller's side and a worker's side, each registered as a
pytest plugin only in its role (as xdist registers its DSession only in distributed mode).

The controller gives every worker a `WorkerSetup` (where and when to start, the redaction key),
hands each worker its partition of the capture's connections, and merges the `RunResults` the
workers ship back."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pytest

from ..distribute import lead_ns_until, local_worker, rendezvous, worker_index, worker_part
from ..http.message import Exchange
from ..report.run import RunResults
from .items import ReplayItem
from .run import ReplayRun

REPLAY_OUTPUT = "pytest_replay"  # the key of a worker's results in xdist's workeroutput
SETUP = "pytest_replay"  # the key of WorkerSetup in a worker's workerinput
REMOTE_START_DELAY_S = 10.0  # workers on other machines start this long after the controller configured them
MIN_LEAD_NS = 1_000_000
_EXCHANGE_ID = re.compile(r" #(\d+)$")
_CONNECTION_ID = re.compile(r"::connection (.+) \(\d+ exchanges\)$")


@dataclass(frozen=True)
class WorkerSetup:
    """What the controller tells each worker before it starts."""

    start: float  # wall-clock instant (seconds) at which remote workers start the replay
    redaction_key: str  # workers mask with the controller's key, so stand-ins agree across workers
    rendezvous: str | None = None  # a directory where local workers meet to agree on the start

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkerSetup:
        return cls(**data)


def worker_setup(config: pytest.Config) -> WorkerSetup | None:
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else WorkerSetup.from_dict(workerinput[SETUP])


def is_controller(config: pytest.Config) -> bool:
    return getattr(config, "workerinput", None) is None and bool(
        getattr(config.option, "numprocesses", None) or getattr(config.option, "tx", None))


class Controller:
    def __init__(self, run: ReplayRun, *, redaction_key: str) -> None:
        self.run = run
        self.redaction_key = redaction_key
        self.start = time.time() + REMOTE_START_DELAY_S
        self.rendezvous = tempfile.mkdtemp(prefix="pytest-replay-start-")

    def pytest_sessionstart(self) -> None:
        self.run.collection.load()  # the controller collects nothing itself: it reads the capture here

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        setup = WorkerSetup(start=self.start, redaction_key=self.redaction_key,
                            rendezvous=self.rendezvous if local_worker(node) else None)
        node.workerinput[SETUP] = setup.to_dict()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        from .scheduler import ReplayScheduling

        lane_of = {e.index: e.connection for e in self.run.collection.load()}
        workers = len(getattr(config.option, "tx", None) or ()) or int(config.option.numprocesses or 1)

        def part_of(nodeid: str) -> int | None:
            # Matched on the whole node id: names hold "::" themselves (IPv6 connections, targets).
            match = _EXCHANGE_ID.search(nodeid)
            if match:
                lane = lane_of.get(int(match.group(1)))
            else:
                match = _CONNECTION_ID.search(nodeid)
                lane = match.group(1) if match else None
            return None if lane is None else worker_part(lane, workers)

        return ReplayScheduling(config, log, part_of)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """A worker finished: add its results to the run's."""
        output = getattr(node, "workeroutput", {}).get(REPLAY_OUTPUT)
        if output:
            self.run.remote.merge(RunResults.from_dict(output))


class Worker:
    def __init__(self, run: ReplayRun, setup: WorkerSetup) -> None:
        self.run = run
        self.setup = setup
        workerinput = run.config.workerinput
        self.workerid = workerinput["workerid"]
        self.part, self.workers = worker_index(self.workerid), int(workerinput["workercount"])
        run.lanes = self.lanes
        run.lead_ns = self.lead_ns
        if self.workers > 1:
            run.split = f"the {self.workers} xdist workers"

    def lanes(self, exchanges: list[Exchange]) -> list[Exchange]:
        """The exchanges of this worker's partition of the connections."""
        return [e for e in exchanges if worker_part(e.connection, self.workers) == self.part]

    def lead_ns(self, items: Iterable) -> int:
        """Every worker starts its engine at one shared instant (so the global schedule holds): they
        meet in a directory the controller gave them, or at a wall-clock time."""
        lanes = {e.connection for item in items if isinstance(item, ReplayItem) for e in item.exchanges
                 if e.replayable}
        participants = len({worker_part(lane, self.workers) for lane in lanes})
        if self.setup.rendezvous:
            start, note = rendezvous(self.setup.rendezvous, self.workerid, participants)
            if note:
                self.run.notes.append(note)
        else:
            start = self.setup.start
        return max(lead_ns_until(start), MIN_LEAD_NS)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """Ship this worker's results to the controller."""
        self.run.count_unjudged()
        self.run.config.workeroutput[REPLAY_OUTPUT] = self.run.results().to_dict()
