"""The replay under pytest-xdist: the controller's side and a worker's side, each registered as a
pytest plugin only in its role (as xdist registers its DSession only in distributed mode).

The controller gives every worker a `WorkerSetup` (where and when to start, the redaction key),
hands each worker its partition of the capture's connections, and merges the `RunResults` the
workers ship back.

Workers on other machines (`--tx ssh=...`, `--tx socket=...`) read the capture at the same absolute
path as the controller (a checkout, a shared mount or a CI artifact at one path): every worker must
collect the same item ids anyway, so each needs the whole capture's index, and streaming a
multi-gigabyte capture through execnet to every worker would make the controller's link the
bottleneck. The controller measures each worker's clock offset over execnet round trips, and
every worker starts at one instant of the controller's clock, read on its own clock."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import pytest

from .. import options
from ..distribute import (CLOCK_WARN_NS, ClockOffset, lead_ns_until, local_spec, measure_offset,
                          rendezvous, spec_host, worker_args, worker_index, worker_part)
from ..http.message import Exchange
from ..http.units import ms
from ..report.run import RunResults
from ..vocab import plain
from .items import ReplayItem
from .run import ReplayRun

REPLAY_OUTPUT = "pytest_replay"  # the key of a worker's results in xdist's workeroutput
SETUP = "pytest_replay"  # the key of WorkerSetup in a worker's workerinput
STOP_CHANNEL = "pytest_replay_stop"  # the key of a worker's stop channel in its workerinput (with --replay-abort-on)
REMOTE_START_DELAY_S = 10.0  # workers on other machines start this long after the controller configured them
MIN_LEAD_NS = 1_000_000
CLOCK_TIMEOUT_S = 30.0  # for one clock round trip to a worker
_EXCHANGE_ID = re.compile(r" #(\d+)$")
_CONNECTION_ID = re.compile(r"::connection (.+) \(\d+ exchanges\)$")


@dataclass(frozen=True)
class WorkerSetup:
    """What the controller tells each worker before it starts."""

    start: float  # wall-clock instant (seconds) at which remote workers start the replay
    redaction_key: str  # workers mask with the controller's key, so stand-ins agree across workers
    rendezvous: str | None = None  # a directory where local workers meet to agree on the start
    clock_offset_ns: int = 0  # how far the worker's clock is ahead of the controller's (measured)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkerSetup:
        return cls(**data)

    def start_on_worker_clock(self) -> float:
        """The shared start instant, read on this worker's clock."""
        return self.start + self.clock_offset_ns / 1e9


def worker_setup(config: pytest.Config) -> WorkerSetup | None:
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else WorkerSetup.from_dict(workerinput[SETUP])


def is_controller(config: pytest.Config) -> bool:
    """As xdist decides to distribute: a dist mode and --tx specs (`-n N` sets both)."""
    option = config.option
    return getattr(config, "workerinput", None) is None and getattr(option, "dist", "no") != "no" and bool(
        getattr(option, "tx", None))


def _echo_clock(channel) -> None:  # runs in the worker's interpreter (execnet sends its source)
    import time

    for _ in channel:
        channel.send(time.time_ns())


def _probe(channel) -> None:  # runs in the worker's interpreter: where it is, what it sees of the captures
    import os
    import socket

    paths, rootdir = channel.receive()
    sizes = []
    for path in paths:
        try:
            sizes.append(os.path.getsize(path))
        except OSError:
            sizes.append(None)
    channel.send({"cwd": os.getcwd(), "host": socket.gethostname(), "sizes": sizes,
                  "rootdir": os.path.isdir(rootdir)})


def measure_gateway(gateway) -> ClockOffset:
    """The clock offset of the interpreter behind an execnet gateway, NTP-style."""
    channel = gateway.remote_exec(_echo_clock)
    try:
        def ping() -> int:
            channel.send(None)
            return channel.receive(CLOCK_TIMEOUT_S)

        return measure_offset(ping)
    finally:
        channel.close()
        channel.waitclose(CLOCK_TIMEOUT_S)


def clock_note(workerid: str, host: str, clock: ClockOffset) -> str | None:
    """A note for the summary when a worker's clock offset is known less precisely than 1 ms."""
    if clock.uncertainty_ns <= CLOCK_WARN_NS:
        return None
    return (f"worker {workerid} ({host}): clock offset {ms(clock.offset_ns, 3, sign='+')} known only to "
            f"within +/-{ms(clock.uncertainty_ns, 3)} (over 1 ms): its start, and so its lateness, may be off by "
            "that much")


def late_note(workerid: str, late_s: float) -> str | None:
    """A note when a worker was ready only after the shared start instant."""
    if late_s <= 0:
        return None
    return (f"worker {workerid} was ready {late_s:.2f} s after the shared start (set {REMOTE_START_DELAY_S:g} s "
            "after the controller began configuring workers): its connections started late by that much")


class Controller:
    def __init__(self, run: ReplayRun, *, redaction_key: str) -> None:
        self.run = run
        self.redaction_key = redaction_key
        self.start = time.time() + REMOTE_START_DELAY_S
        self.rendezvous = tempfile.mkdtemp(prefix="pytest-replay-start-")
        self._lane_of: dict[int, str] = {}  # exchange index -> its captured connection
        self._down: dict[str, object] = {}  # worker id -> why it went down, for a worker that died
        self._stop_channels: dict[str, object] = {}  # worker id -> its execnet channel for stops
        self._stop_lock = threading.Lock()
        self._hand_workers_absolute_paths(run.config)

    @staticmethod
    def _hand_workers_absolute_paths(config: pytest.Config) -> None:
        """xdist gives remote workers the command line with every existing path rewritten against
        an rsync root: ours go as `--flag=VALUE` (left alone), captures as absolute paths."""
        params = config.invocation_params
        args = worker_args(params.args, [o.flag for o in options.OPTIONS if not o.flag_only] + ["--rootdir"],
                           ["--replay", "--rootdir"], str(params.dir))
        if not any(arg.startswith("--rootdir=") for arg in args):
            # pytest finds the rootdir from a `--replay PATH` value too, not from `--replay=PATH`:
            # workers are told the controller's, so that item ids agree
            args.append(f"--rootdir={config.rootpath}")
        config.invocation_params = dataclasses.replace(params, args=tuple(args))

    def pytest_unconfigure(self) -> None:
        shutil.rmtree(self.rendezvous, ignore_errors=True)

    def pytest_sessionstart(self) -> None:
        self.run.collection.load()  # the controller collects nothing itself: it reads the capture here

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        specs = getattr(getattr(node, "nodemanager", None), "specs", None) or [node.gateway.spec]
        all_local = all(local_spec(spec) for spec in specs)
        setup = WorkerSetup(start=self.start, redaction_key=self.redaction_key,
                            rendezvous=self.rendezvous if all_local else None)
        if not all_local:  # some worker is on another machine: all start at the instant, on their clocks
            self._check_same_view(node)
            setup = dataclasses.replace(setup, clock_offset_ns=self._measure(node))
        node.workerinput[SETUP] = setup.to_dict()
        if self.run.settings.abort_on:
            self._open_stop_channel(node)

    def _open_stop_channel(self, node) -> None:
        """A channel of the worker's execnet gateway, handed over in its workerinput: the worker sends
        its own trip on it, the controller passes it on to every other worker."""
        workerid = node.workerinput["workerid"]
        channel = node.gateway.newchannel()
        with self._stop_lock:
            self._stop_channels[workerid] = channel
        channel.setcallback(lambda message: self._relay_stop(workerid, message), endmarker=None)
        node.workerinput[STOP_CHANNEL] = channel

    def _relay_stop(self, workerid: str, message: dict | None) -> None:
        """A worker's stop condition tripped (execnet's receiving thread): stop the others."""
        if message is None:  # the worker's gateway closed
            return
        with self._stop_lock:
            others = [channel for other, channel in self._stop_channels.items() if other != workerid]
        for channel in others:
            try:
                channel.send(message)
            except (OSError, EOFError):  # that worker is done already
                pass

    def _check_same_view(self, node) -> None:
        """A worker on another machine must see what the controller sees: the same directory (item ids
        are relative to the rootdir found from there) and the same captures at the same paths. Checked
        here, before the worker starts: a worker failing at its start would be restarted again and again."""
        config, paths = node.config, self.run.collection.paths
        channel = node.gateway.remote_exec(_probe)
        channel.send((list(paths), str(config.rootpath)))
        seen = channel.receive(CLOCK_TIMEOUT_S)
        channel.waitclose(CLOCK_TIMEOUT_S)
        where = f"worker {node.workerinput['workerid']} ({spec_host(node.gateway.spec)}, host {seen['host']})"
        here = str(config.invocation_params.dir)
        if seen["cwd"] not in (here, str(config.rootpath)):
            pytest.exit(f"{where} runs in {seen['cwd']}, the controller in {here}: item ids would differ. Give its "
                        f"--tx spec //chdir={here} (the project checked out at the same path on that host)",
                        returncode=pytest.ExitCode.USAGE_ERROR)
        if not seen["rootdir"]:
            pytest.exit(f"{where}: the controller's rootdir {config.rootpath} does not exist there; item ids are "
                        "relative to it: check the project out at the same path on every host",
                        returncode=pytest.ExitCode.USAGE_ERROR)
        for path, size in zip(paths, seen["sizes"]):
            if size != _size(path):
                found = "not found" if size is None else f"{size} bytes"
                pytest.exit(f"{where}: capture {path}: {found} there, {_size(path)} bytes here. Workers read the "
                            "capture at the same absolute path: copy or mount it there on every host",
                            returncode=pytest.ExitCode.USAGE_ERROR)

    def _measure(self, node) -> int:
        workerid = node.workerinput["workerid"]
        host = spec_host(node.gateway.spec)
        clock = measure_gateway(node.gateway)
        self.run.remote.workers.append({"worker": workerid, "host": host, **clock.to_dict()})
        note = clock_note(workerid, host, clock)
        if note:
            self.run.notes.append(note)
        return clock.offset_ns

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        from xdist.workermanage import parse_tx_spec_config

        from .scheduler import ReplayScheduling

        self._lane_of = {e.index: e.connection for e in self.run.collection.load()}
        workers = len(parse_tx_spec_config(config)) or 1  # `--tx 2*ssh=...` is two workers

        def part_of(nodeid: str) -> int | None:
            lane = self._lane(nodeid)
            return None if lane is None else worker_part(lane, workers)

        return ReplayScheduling(config, log, part_of, on_lost=self._lost)

    def _lane(self, nodeid: str) -> str | None:
        """The captured connection of a replay item (matched on the whole node id: names hold "::"
        themselves, in IPv6 connections and targets)."""
        match = _EXCHANGE_ID.search(nodeid)
        if match:
            return self._lane_of.get(int(match.group(1)))
        match = _CONNECTION_ID.search(nodeid)
        return match.group(1) if match else None

    def _lost(self, node, nodeids: list[str]) -> None:
        """A worker died with replay items not judged: its part of the schedule is gone (another
        worker cannot take it over), so they fail, naming the worker and its connections; the run's
        results and evidence hold what the other workers did."""
        workerid = node.gateway.id
        host = spec_host(node.gateway.spec)
        error = str(self._down.get(workerid) or "no reason given").strip().splitlines()
        lanes = sorted({lane for lane in map(self._lane, nodeids) if lane is not None})
        shown = ", ".join(lanes[:20]) + (f" and {len(lanes) - 20} more" if len(lanes) > 20 else "")
        died = f"worker {workerid} ({host}) died during the replay ({error[-1] if error else ''})"
        self.run.remote.planned += sum(_exchanges_in(nodeid) for nodeid in nodeids)  # its plan, not sent
        self.run.remote.failures.append(f"{died}: {len(nodeids)} replay item(s) of the {len(lanes)} connection(s) "
                                        f"it held not judged: {shown}")
        hook = self.run.config.hook
        for nodeid in nodeids:
            path = nodeid.split("::")[0]
            why = f"{died}: not judged (connection {self._lane(nodeid)}, one of the {len(lanes)} it held)"
            for when, outcome in (("setup", "passed"), ("call", "failed"), ("teardown", "passed")):
                report = pytest.TestReport(nodeid, (path, None, nodeid[len(path) + 2:]), {}, outcome,
                                           why if outcome == "failed" else None, when)
                hook.pytest_runtest_logreport(report=report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """A worker finished: add its results to the run's (a worker that died has none)."""
        if error is not None:
            self._down[node.gateway.id] = error
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
        self._stop_channel = workerinput.get(STOP_CHANNEL)
        self._monitor = None  # the engine's StopMonitor, once made
        self._relayed = None  # a stop that came before the monitor was made
        self._stop_lock = threading.Lock()
        if self._stop_channel is not None:
            run.stop_monitor = self.stop_monitor
            self._stop_channel.setcallback(self._on_relayed_stop, endmarker=None)
        if self.workers > 1:
            run.split = f"the {self.workers} xdist workers"

    def stop_monitor(self, conditions, window_s: float):
        """A monitor that names this worker in its trip, sends it to the controller (which stops the
        other workers), and stops on theirs."""
        from ..schedule.monitor import StopMonitor

        monitor = StopMonitor(conditions, window_s, name=self.workerid, on_trip=self._send_trip)
        with self._stop_lock:
            self._monitor = monitor
            if self._relayed is not None:
                monitor.relay(self._relayed)
        return monitor

    def _send_trip(self, trip) -> None:  # the engine's thread
        try:
            self._stop_channel.send(plain(asdict(trip)))
        except (OSError, EOFError):  # the controller is gone: this worker stops alone
            pass

    def _on_relayed_stop(self, message: dict | None) -> None:  # execnet's receiving thread
        if message is None:
            return
        from ..schedule.monitor import Trip

        trip = Trip(**message)
        with self._stop_lock:
            if self._monitor is None:
                self._relayed = self._relayed or trip
                return
            monitor = self._monitor
        monitor.relay(trip)

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
            start = self.setup.start_on_worker_clock()
            note = late_note(self.workerid, time.time() - start) if participants else None
            if note:
                self.run.notes.append(note)
        return max(lead_ns_until(start), MIN_LEAD_NS)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """Ship this worker's results to the controller."""
        self.run.count_unjudged()
        results = self.run.results()
        if (results.capacity or {}).get("stopped"):  # the stop that ended this worker's replay
            results.capacity["stopped"]["worker"] = self.workerid
        if self.run.updates is not None:  # --replay-update: only the controller writes
            results.updates, results.updates_truncated = self.run.updates.to_dicts()
        self.run.config.workeroutput[REPLAY_OUTPUT] = plain(results.to_dict())  # execnet: builtin types only


def _exchanges_in(nodeid: str) -> int:
    match = _CONNECTION_ID.search(nodeid)
    return int(re.search(r"\((\d+) exchanges\)$", nodeid).group(1)) if match else 1


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None
