"""ReplaySession: captures -> test items, the engine's lifecycle, verdicts, the run's summary.

One per pytest run, kept in config.stash by plugin.py. Captures are read once, at collection;
each capture file is a collector whose items are its exchanges (or groups of them). The engine
starts with the first replay item (the `replay_engine` session fixture), sends every selected
request on its own schedule in a background thread, and each item waits for its own
observation, then asserts on it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import weakref
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from .capture import Capture, CaptureError, CaptureStats, expand_paths
from .capture.summary import summary_data
from .distribute import (ReplayScheduling, lead_ns_until, local_worker, partition, rendezvous, worker_index,
                         worker_part)
from .http.message import Exchange
from .http.normalize import path_template
from .options import Settings
from .items import CaptureFile, ReplayItem, item_name
from .policy.redact import Redactor
from .report.aggregate import Aggregate
from .report.run import RunReport, render_terminal
from .schedule.plan import Timing, build_plan

REPLAY_OUTPUT = "pytest_replay"  # the key of a worker's results in xdist's workeroutput
PROGRESS_EVERY_S = 5.0  # how often a waiting item reports the replay's progress
REMOTE_START_DELAY_S = 10.0  # workers on other machines start this long after the controller configured them
_EXCHANGE_ID = re.compile(r" #(\d+)$")
_CONNECTION_ID = re.compile(r"::connection (.+) \(\d+ exchanges\)$")
_running: weakref.WeakSet[ReplaySession] = weakref.WeakSet()


def clashing_plugin() -> str | None:
    """ESSS's pytest-replay also installs a module named pytest_replay and a --replay flag."""
    try:
        dist = metadata.distribution("pytest-replay")
    except metadata.PackageNotFoundError:
        return None
    return (f"pytest-traffic-replay cannot run beside the 'pytest-replay' plugin {dist.version} (ESSS, "
            "'replay test runs'): both install a module named pytest_replay and both define --replay. "
            "Fix: pip uninstall pytest-replay, then pip install --force-reinstall pytest-traffic-replay "
            "(or use separate virtual environments).")


def _isatty(reporter) -> bool:
    """TerminalReporter.isatty: an attribute up to pytest 8.3, a method since 8.4."""
    isatty = reporter.isatty
    return bool(isatty() if callable(isatty) else isatty)


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _display(path: str) -> str:
    """A path as users see it: relative to the current directory when it is below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class ReplaySession:
    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        try:
            self.paths = [str(Path(p).resolve()) for p in expand_paths(settings.captures)]
        except CaptureError as exc:
            raise pytest.UsageError(f"--replay: {exc}") from None
        self.stats: CaptureStats | None = None
        self.exchanges: list[Exchange] | None = None
        self.error: CaptureError | None = None
        self.engine = None
        self.target = None
        self.outbound = None  # Outbound, for in-process targets
        self.write_policy = None
        self.write_counts = None
        self.unused_allow: list[str] = []
        self.decisions: dict = {}  # exchange index -> policy.writes.Decision (send / mock / skip, and why)
        from .policy.filters import RequestFilter
        from .policy.rewrite import Rewrites
        from .policy.writes import WRITE_METHODS_DEPRECATED, WriteRules

        self.write_rules = WriteRules.declaring(settings.write_pattern, settings.write_methods)  # what is a write

        self.request_filter = RequestFilter(settings.allow_header, settings.disallow_header, settings.sample)
        self.rewrites = Rewrites(settings.set_header, settings.rewrite_url)
        self.verdicts = None  # DiffConfig, made when the engine starts
        self.aggregate = Aggregate()  # what was replayed and how it went (merged from workers under xdist)
        self.skipped: list[tuple[Exchange, str]] = []  # selected, not replayed
        self.recorded: set[int] = set()  # exchanges counted in the aggregate
        self.budget_results: list = []
        self.notes: list[str] = [WRITE_METHODS_DEPRECATED] if settings.write_methods else []
        self.empty_shard = False  # --replay-shard K/N left no replay item in this run
        self._show: bool | None = None  # progress lines shown? (decided once: every item waits)
        self._progress_at: tuple[float, int] | None = None  # (monotonic time, sent) of the last progress line
        self.started = _now()
        self._markers: dict[str, pytest.MarkDecorator] = {}
        workerinput = getattr(config, "workerinput", None)
        self.worker = (worker_index(workerinput["workerid"]), int(workerinput["workercount"])) \
            if workerinput is not None else None
        # Stand-ins are keyed per run (an unkeyed short hash of a card number can be reversed by
        # trying candidates); xdist workers get the controller's key so they agree.
        self.redaction_key = (workerinput or {}).get("pytest_replay_redaction_key") or os.urandom(16).hex()
        self.redactor = Redactor(settings.secret_headers, settings.secret_params,
                                 allow_headers=settings.show_headers or None, allow_fields=settings.show_fields or None,
                                 key=self.redaction_key)
        self.controller = workerinput is None and bool(getattr(config.option, "numprocesses", None)
                                                       or getattr(config.option, "tx", None))
        self.remote = {"planned": 0, "sent": 0, "failures": [], "noise": [], "unused_allow": [], "write_mode": ""}
        if self.controller and settings.group == "endpoint":
            raise pytest.UsageError("--replay-group endpoint cannot be split across xdist workers (an endpoint's "
                                    "exchanges come from many connections); use --replay-group connection or exchange")
        if settings.shard and settings.group == "endpoint":
            raise pytest.UsageError("--replay-group endpoint cannot be sharded (an endpoint's exchanges come from "
                                    "many connections); use --replay-group connection or exchange")
        if settings.report and workerinput is None:
            try:  # now, not after the replay: a gate that cannot write its evidence should not run
                Path(settings.report).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise pytest.UsageError(f"--replay-report {settings.report}: cannot create the directory "
                                        f"({exc.strerror or exc})") from None
        self._point_collection_at_captures(config)

    # -- collection --------------------------------------------------------------------------
    def _point_collection_at_captures(self, config: pytest.Config) -> None:
        """`pytest --replay X` collects the captures only; with test paths given too, both."""
        if config.args_source == pytest.Config.ArgsSource.ARGS:
            config.args.extend(self.paths)
        else:
            config.args[:] = self.paths

    def collect_file(self, file_path, parent) -> CaptureFile | None:
        if str(Path(file_path).resolve()) not in self.paths:
            return None
        collector = CaptureFile.from_parent(parent, path=Path(file_path))
        collector.replay = self
        return collector

    def load(self) -> list[Exchange]:
        if self.exchanges is None and self.error is None:
            capture = Capture([_display(p) for p in self.paths], server_ports=self.settings.server_ports)
            try:
                self.exchanges = list(capture)
            except CaptureError as exc:
                self.error = exc
            self.stats = capture.stats
        return self.exchanges or []

    def items_for(self, collector: CaptureFile) -> Iterator[ReplayItem]:
        exchanges = self.load()
        path = str(collector.path.resolve())
        if self.error is not None:
            if str(Path(self.error.file).resolve()) == path or path == self.paths[0]:
                raise collector.CollectError(f"cannot replay: {self.error}")
            return
        mine = [e for e in exchanges if str(Path(e.source.file).resolve()) == path]
        if not mine:
            raise collector.CollectError(self._nothing_to_replay(path))
        group = self.settings.group
        if group == "exchange":
            for exchange in mine:
                yield ReplayItem.create(collector, item_name(exchange, self.redactor), (exchange,), self)
            return
        groups: dict[str, list[Exchange]] = {}
        for exchange in mine:
            key = (f"{exchange.request.method} {path_template(exchange.request.target)}" if group == "endpoint"
                   else f"connection {exchange.connection}")
            groups.setdefault(key, []).append(exchange)
        for key, members in groups.items():
            yield ReplayItem.create(collector, f"{key} ({len(members)} exchanges)", tuple(members), self)

    def _nothing_to_replay(self, path: str) -> str:
        stats = self.stats
        info = next((f for f in stats.files if str(Path(f["path"]).resolve()) == path), {})
        what = ", ".join(f"{k}: {v}" for k, v in (("packets", info.get("packets")), ("records", info.get("records")))
                         if v is not None)
        why = []
        if stats.skipped_streams:
            why.append("streams skipped as not HTTP/1.x: " + ", ".join(f"{k} {v}" for k, v in stats.skipped_streams.items()))
        if stats.not_decoded:
            why.append("packets not decoded: " + ", ".join(f"{k} ({v})" for k, v in stats.not_decoded.most_common(3)))
        orphans = sum(stats.orphan_responses.values())
        if orphans:
            why.append(f"{orphans} responses without their request")
        return (f"nothing to replay in {path}: it holds no HTTP/1.x request ({what or 'read'}). "
                + ("; ".join(why) if why else "No HTTP/1.x traffic was found. For pcaps on unusual ports "
                   "captured without the SYN, try --replay-server-ports."))

    def marker(self, name: str, description: str) -> pytest.MarkDecorator:
        """The mark `name`, registered once and shared by every item that carries it (a mark object
        per item adds up with a hundred thousand items)."""
        mark = self._markers.get(name)
        if mark is None:
            self.config.addinivalue_line("markers", f"{name}: {description}")
            mark = self._markers[name] = getattr(pytest.mark, name)
        return mark

    def filter_items(self, items: list) -> None:
        """Include/exclude patterns, header filters, sampling and the shard: what does not pass is
        deselected (and reported so)."""
        shard = self.settings.shard
        if not (self.settings.include or self.settings.exclude or self.request_filter or shard):
            return
        keep, drop = [], []
        for item in items:
            if isinstance(item, ReplayItem) and (
                    not any(self.settings.selects(e.label) and self.request_filter.keep(e.request)
                            for e in item.exchanges)
                    or shard and partition(item.exchanges[0].connection, shard[1]) != shard[0] - 1):
                drop.append(item)
            else:
                keep.append(item)
        if drop:
            self.config.hook.pytest_deselected(items=drop)
            items[:] = keep
        if shard and drop and not any(isinstance(item, ReplayItem) for item in keep):
            lanes = len({e.connection for item in drop for e in item.exchanges})
            self.empty_shard = True
            self.notes.append(f"shard {shard[0]}/{shard[1]} holds none of the capture's {lanes} connection(s): "
                              "nothing to replay here (the other shards replay them); this run passes")

    def check_target(self, session: pytest.Session) -> None:
        """No target anywhere is a usage error, before anything runs."""
        items = [i for i in session.items if isinstance(i, ReplayItem)]
        if not items or self.settings.target is not None or self.config.option.collectonly:
            return
        defs = session._fixturemanager.getfixturedefs("replay_target", items[0]) or ()
        if all(d.func.__module__ == "pytest_replay.plugin" for d in defs):
            raise pytest.UsageError(
                "no replay target: give --replay-target URL (or asgi:module:app, wsgi:module:app, demo), set "
                "replay_target in the ini file, or define a replay_target fixture in conftest.py returning a "
                "URL, an ASGI or WSGI app, or an httpx.AsyncClient")

    # -- the engine --------------------------------------------------------------------------
    def start_engine(self, target_spec, items: Iterable, outbound=None):
        """Make the target, apply the write policy, rewrites and the production guard, and start
        the engine with every selected exchange on its schedule."""
        from .policy.guard import check_target, recorded_hosts
        from .policy.writes import SKIP, WriteCounts, WritePolicy
        from .schedule.engine import Engine
        from .targets import make_target
        from .targets.inprocess import ASGITarget, WSGITarget
        from .targets.mock import PolicyTarget, RecordedWrites
        from .targets.outbound import Outbound
        from .verdicts.diff import DiffConfig, learn_noise

        s = self.settings
        try:
            inner = make_target(target_spec, verify=not s.insecure)
        except (ValueError, TypeError) as exc:
            pytest.exit(f"replay target: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        in_process = isinstance(inner, (ASGITarget, WSGITarget)) or isinstance(
            getattr(getattr(inner, "client", None), "_transport", None), (httpx.ASGITransport, httpx.WSGITransport))
        url = getattr(inner, "url", None) or getattr(inner, "base", None)
        if url and not s.force_production:
            refusal = check_target(str(url), recorded_hosts(self.exchanges or ()))
            if refusal:
                pytest.exit(refusal, returncode=pytest.ExitCode.USAGE_ERROR)
        self.write_policy = policy = WritePolicy(
            mode=s.writes or ("pass" if in_process else "mock"), rules=self.write_rules,
            allow=s.allow_write, dry_run_header=s.dry_run_header)
        self.write_counts = WriteCounts()
        self.unused_allow = policy.unused_allow_patterns(self.exchanges or ())
        noise = learn_noise(self.exchanges or ()) if s.noise == "auto" else None
        self.verdicts = DiffConfig(parts=s.diff, headers=s.headers, rules=s.ignore, noise=noise, redactor=self.redactor,
                                   max_latency_ns=None if s.max_latency is None else int(s.max_latency * 1e9))
        selected = [e for item in items if isinstance(item, ReplayItem) and not item.get_closest_marker("skip")
                    for e in item.exchanges if e.replayable]
        if self.worker is not None:  # under xdist: the lanes of this worker's partition only
            part, workers = self.worker
            selected = [e for e in selected if worker_part(e.connection, workers) == part]
        planned = []
        for exchange in selected:  # decided on the request as it will leave (PolicyTarget decides again)
            decision = self.decisions[exchange.index] = policy.decision(self.rewrites.apply(exchange.request))
            if decision.action == SKIP:
                self.write_counts.add(exchange, SKIP)
                self.skip(exchange, "write skipped (--replay-writes skip)", write=True)
            else:
                planned.append(exchange)
        timing = Timing(speed=s.speed, rate=s.rate, max_wait_ns=None if s.max_wait is None else int(s.max_wait * 1e9))
        wire = getattr(inner, "wire", None) or (lambda request: request.raw)
        plan = build_plan(planned, timing, lambda e: self.rewrites.apply(
            policy.mark(e.request, decision=self.decisions[e.index])), wire)
        recorded = RecordedWrites.from_exchanges(planned, lambda e: self.decisions[e.index].why.write)
        self.target = PolicyTarget(inner, policy, recorded, counts=self.write_counts, decisions=self.decisions)
        if outbound is not None and in_process:
            self.outbound = Outbound(outbound())
            self.outbound.start()
        self.engine = Engine(plan, self.target, concurrency=s.concurrency, timeout_s=s.timeout,
                             pipeline=self._pipeline(planned, wire), lead_ns=self._lead_ns(items))
        _running.add(self)
        self.engine.start()
        return self.engine

    def _lead_ns(self, items: Iterable) -> int:
        """Under xdist, every worker starts its engine at one shared instant (so the global schedule
        holds): they meet in a directory the controller gave them, or at a wall-clock time."""
        default = 50_000_000
        workerinput = getattr(self.config, "workerinput", None)
        if self.worker is None or workerinput is None:
            return default
        _, workers = self.worker
        lanes = {e.connection for item in items if isinstance(item, ReplayItem) for e in item.exchanges
                 if e.replayable}
        participants = len({worker_part(lane, workers) for lane in lanes})
        directory = workerinput.get("pytest_replay_rendezvous")
        if directory:
            start, note = rendezvous(directory, workerinput["workerid"], participants)
            if note:
                self.notes.append(note)
        else:
            start = workerinput.get("pytest_replay_start", 0.0)
        return max(lead_ns_until(start), 1_000_000)

    def _pipeline(self, exchanges: list[Exchange], wire):
        """Hooks and middleware between a request's deadline and the wire, if the run has any."""
        from .policy.middleware import Middleware
        from .policy.pipeline import RequestPipeline

        hook = self.config.hook
        hooked = any(getattr(hook, name).get_hookimpls()
                     for name in ("pytest_replay_request", "pytest_replay_response"))
        s = self.settings
        if not hooked and not s.middleware:
            return None
        middleware = Middleware(s.middleware, drop_timeout=s.middleware_drop_timeout,
                                timeout=s.middleware_timeout) if s.middleware else None
        return RequestPipeline({e.index: e for e in exchanges}, wire, middleware=middleware,
                               hook=hook if hooked else None)

    def stop_engine(self, cancel: bool = False) -> None:
        if self.engine is not None:
            self.engine.stop(cancel=cancel)
            _running.discard(self)
        if self.outbound is not None:
            self.outbound.stop()

    @staticmethod
    def running() -> list[ReplaySession]:
        return list(_running)

    # -- verdicts ----------------------------------------------------------------------------
    def judge(self, exchange: Exchange, observation):
        from .verdicts.diff import compare, render_failure

        error = None if observation.ok else f"{observation.error_kind}: {observation.error}"
        calls = self.outbound.unrouted(exchange.index) if self.outbound is not None else ()
        if calls and error is None:
            shown = "; ".join(self.redactor.text(call) for call in calls[:5])
            error = (f"outbound call without a replay_outbound route (blocked, nothing left the process): {shown}"
                     + (f" and {len(calls) - 5} more" if len(calls) > 5 else ""))
        verdict = compare(exchange.response, observation.response, self.verdicts, exchange=exchange, error=error,
                          latency_ns=observation.latency_ns, recorded_latency_ns=exchange.recorded_latency_ns)
        text = "" if verdict.passed else render_failure(
            exchange, verdict, recorded_latency_ns=exchange.recorded_latency_ns,
            replayed_latency_ns=observation.latency_ns,
            replayed_status=observation.response.status if observation.response else None, redactor=self.redactor)
        text = self.redactor.mask_pii(text)  # e-mails, card and phone numbers in bodies shown in a diff
        return verdict, text

    def wait_for_replay(self, engine) -> None:
        """--replay-judge after: the first item waits until the replay is over (a progress line
        every PROGRESS_EVERY_S seconds on a terminal), so pytest's item loop never competes with it."""
        show = self._show_progress()
        while not engine.join(PROGRESS_EVERY_S if show else None):
            self._progress(engine, None)

    def _show_progress(self) -> bool:
        if self._show is None:
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            self._show = (reporter is not None and self.worker is None and self.config.option.verbose >= 0
                          and _isatty(reporter))
        return self._show

    def _progress(self, engine, key: int | None) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        line = self.progress_line(engine, key)
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if capture is not None:
            with capture.global_and_fixture_disabled():  # output capture is on while items run
                reporter.write_line(line)
        else:
            reporter.write_line(line)

    def wait(self, engine, key: int):
        """An item waits for its own observation. While it waits (idle gaps of a long replay), a
        progress line every PROGRESS_EVERY_S seconds says what the replay is doing: on a terminal,
        not under -q, not in an xdist worker (its output is not shown)."""
        show = self._show_progress()
        while True:
            try:
                return engine.wait(key, timeout=PROGRESS_EVERY_S if show else None)
            except TimeoutError:
                self._progress(engine, key)

    def progress_line(self, engine, key: int | None) -> str:
        progress = engine.progress()
        observations = engine.observations()[-2000:]  # the recent ones: enough for "p95 so far"
        latencies = sorted(o.latency_ns for o in observations if o.latency_ns is not None)
        lateness = sorted(o.lateness_ns for o in observations)
        now = time.monotonic()
        last = self._progress_at
        if last is None and engine.t0_ns is not None:  # the first line: the rate since the replay began
            last = (now - max(engine.clock.now_ns() - engine.t0_ns, 0) / 1e9, 0)
        rate = "" if last is None else f" ({(progress.sent - last[1]) / max(now - last[0], 1e-9):.1f}/s)"
        self._progress_at = (now, progress.sent)
        p95 = latencies[int(len(latencies) * 0.95)] / 1e6 if latencies else None
        p99 = lateness[int(len(lateness) * 0.99)] / 1e6 if lateness else None
        waiting = engine.due_in_s(key) if key is not None else None
        return (f"[replay] {progress.sent}/{progress.planned} sent{rate}, {progress.completed} done, "
                f"{progress.errors} errors, p95 so far {'-' if p95 is None else f'{p95:.1f} ms'}, "
                f"lateness p99 {'-' if p99 is None else f'{p99:.2f} ms'}"
                + (f"; this item's request is due in {waiting:.1f} s" if waiting and waiting > 0 else ""))

    def record(self, exchange: Exchange, observation, verdict) -> None:
        decision = self.decisions.get(exchange.index)  # counted as decided when the request left
        column = decision.column if decision is not None else None
        self.aggregate.add(exchange, observation, verdict, write=column, why=decision.why.reason if column else None)
        self.recorded.add(exchange.index)

    def _record_unjudged(self) -> None:
        """Requests the replay sent but no item judged (an interrupted run): counted all the same,
        so the summary, the budgets and the evidence say what was done."""
        if self.engine is None:
            return
        by_index = {e.index: e for e in self.exchanges or ()}
        for observation in self.engine.observations():
            exchange = by_index.get(observation.key)
            if exchange is not None and observation.key not in self.recorded and observation.error_kind != "dropped":
                self.record(exchange, observation, None)

    def skip(self, exchange: Exchange, reason: str, *, write: bool = False) -> None:
        self.skipped.append((exchange, reason))
        decision = self.decisions.get(exchange.index)  # a write not sent (dropped, skipped) is a skipped write
        why = decision.why.reason if decision is not None and decision.why.write else ""
        self.aggregate.skip(exchange, reason, write=write or bool(why), why=why)

    # -- xdist: the controller's side ------------------------------------------------------------
    def configure_node(self, node) -> None:
        """Tell a new worker where the workers meet to start together."""
        if "pytest_replay_rendezvous" not in self.remote:
            import tempfile

            self.remote["pytest_replay_rendezvous"] = tempfile.mkdtemp(prefix="pytest-replay-start-")
            self.remote["pytest_replay_start"] = time.time() + REMOTE_START_DELAY_S
        if local_worker(node):
            node.workerinput["pytest_replay_rendezvous"] = self.remote["pytest_replay_rendezvous"]
        node.workerinput["pytest_replay_redaction_key"] = self.redaction_key
        node.workerinput["pytest_replay_start"] = self.remote["pytest_replay_start"]

    def make_scheduler(self, log):
        lane_of = {e.index: e.connection for e in self.load()}
        workers = len(getattr(self.config.option, "tx", None) or ()) or int(self.config.option.numprocesses or 1)

        def part_of(nodeid: str) -> int | None:
            # Matched on the whole node id: names hold "::" themselves (IPv6 connections, targets).
            match = _EXCHANGE_ID.search(nodeid)
            if match:
                lane = lane_of.get(int(match.group(1)))
            else:
                match = _CONNECTION_ID.search(nodeid)
                lane = match.group(1) if match else None
            return None if lane is None else worker_part(lane, workers)

        return ReplayScheduling(self.config, log, part_of)

    def node_down(self, node) -> None:
        """A worker finished: add its results to the run's."""
        output = getattr(node, "workeroutput", {}).get(REPLAY_OUTPUT)
        if not output:
            return
        self.aggregate.merge(Aggregate.from_dict(output["aggregate"]))
        remote = self.remote
        remote["planned"] += output["planned"]
        remote["sent"] += output["sent"]
        remote["failures"] += output["failures"]
        remote["noise"] = remote["noise"] or output["noise"]
        remote["unused_allow"] = remote["unused_allow"] or output["unused_allow"]
        remote["write_mode"] = remote["write_mode"] or output["write_mode"]
        self.notes += [n for n in output["notes"] if n not in self.notes]
        self.empty_shard = self.empty_shard or output.get("empty_shard", False)  # workers all collect alike

    # -- the end of the run ------------------------------------------------------------------
    def finish(self, session: pytest.Session, exitstatus: int) -> None:
        """Worker: ship the results to the controller. Otherwise: judge the budgets (as test
        reports: terminal, JUnit, exit status) and write the evidence package."""
        self._record_unjudged()
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            engine = self.engine
            workeroutput[REPLAY_OUTPUT] = {
                "aggregate": self.aggregate.to_dict(), "planned": len(engine.plan) if engine else 0,
                "sent": len(engine.observations()) if engine else 0,
                "failures": [str(engine.failure)] if engine is not None and engine.failure is not None else [],
                "noise": self._noise_lines(), "unused_allow": list(self.unused_allow),
                "write_mode": self.write_policy.mode if self.write_policy else "",
                "notes": self.notes, "empty_shard": self.empty_shard}
            return
        if self.empty_shard and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # one job of a CI matrix with nothing to do is not a failure
        if self.stats is None and not self.controller:
            return
        self.budget_results = self._judge_budgets(session)
        if self.settings.report:
            self._write_evidence(session, exitstatus)

    def budgets(self) -> tuple:
        from .verdicts.budgets import parse_budgets

        extra = [b for result in self.config.hook.pytest_replay_budgets(config=self.config) for b in (result or ())]
        try:
            return tuple(self.settings.budgets) + parse_budgets(extra)
        except ValueError as exc:
            raise pytest.UsageError(f"pytest_replay_budgets: {exc}") from None

    def _judge_budgets(self, session: pytest.Session) -> list:
        from _pytest.reports import TestReport

        from .verdicts.budgets import evaluate

        budgets = self.budgets()
        if not budgets or not self.aggregate.overall.requests and not self.aggregate.endpoints:
            return []
        results = evaluate(budgets, self.aggregate)
        if self.settings.shard:
            # A scoped budget may have no request in this shard: the merge of all shards judges it.
            results = [dataclasses.replace(r, passed=True, reason="no request of this shard; judged when the "
                                           "shards are merged") if not r.passed and r.requests == 0 else r
                       for r in results]
        hook = self.config.hook
        for result in results:
            text = str(result.budget)
            nodeid = f"replay-budgets::{text}"
            properties = [("measured", result.measured), ("recorded", result.recorded or ""),
                          ("threshold", result.threshold)]
            for when in ("setup", "call", "teardown"):
                failed = when == "call" and not result.passed
                report = TestReport(nodeid, ("replay-budgets", None, text), {"replay_budget": 1},
                                    "failed" if failed else "passed", result.line() if failed else None, when,
                                    user_properties=properties if when == "call" else [])
                hook.pytest_runtest_logreport(report=report)
        if any(not r.passed for r in results) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return results

    def _write_evidence(self, session: pytest.Session, exitstatus: int) -> None:
        from .report.evidence import build_evidence, write_evidence

        s = self.settings
        report = RunReport.build(self)
        outcomes = {}
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            outcomes = {key: len(value) for key, value in reporter.stats.items() if key}
        data = build_evidence(redactor=self.redactor,
            aggregate=self.aggregate, captures=self.paths, capture_summary=self.capture_summary(),
            target=report.target, pace={"speed": s.speed, "rate": s.rate, "max_wait_s": s.max_wait,
                                        "concurrency": s.concurrency, "timeout_s": s.timeout},
            filters=[f"include {p.pattern}" for p in s.include] + [f"exclude {p.pattern}" for p in s.exclude]
            + [f"allow-header {h}" for h in s.allow_header] + [f"disallow-header {h}" for h in s.disallow_header],
            rewrites=[f"set-header {n.decode('latin-1')}" for n, _ in s.set_header] + [str(r) for r in s.rewrite_url],
            redaction=self._redaction_notes(),
            sample=report.planned or None, write_policy=report.write_mode or None, budgets=self.budget_results,
            skipped=self.skipped, incomplete=[e for e in (self.exchanges or ()) if not e.replayable],
            notes=self.notes + ([f"replay stopped: {report.failure}"] if report.failure else []),
            interrupted=report.interrupted or exitstatus == pytest.ExitCode.INTERRUPTED, planned=report.planned,
            shard=s.shard, outcomes=outcomes, started=self.started, finished=_now(), noise=report.noise)
        try:
            path = write_evidence(s.report, data)
        except OSError as exc:  # a full disk, the directory removed meanwhile: the run fails, saying why
            self.notes.append(f"evidence NOT written to {s.report}: {exc.strerror or exc}")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        self.notes.append(f"evidence written to {path}")

    def _redaction_notes(self) -> list[str]:
        s = self.settings
        notes = ["secret headers, token-like query parameters and secret JSON/form fields masked as "
                 "REDACTED-<keyed hash> (equal values, equal stand-ins, within this run)",
                 "e-mail addresses, Luhn-valid card numbers and phone numbers masked in shown bodies"]
        notes += [f"secret header: {h}" for h in s.secret_headers] + [f"secret field: {p}" for p in s.secret_params]
        if s.show_headers or s.show_fields:
            notes.append(f"allowlist mode: only headers {list(s.show_headers)} and fields {list(s.show_fields)} shown")
        return notes

    def _noise_lines(self) -> list[str]:
        noise = self.verdicts.noise if self.verdicts is not None else None
        return list(noise.describe()) if noise is not None and noise.learned else []

    # -- reporting ---------------------------------------------------------------------------
    def header_lines(self) -> list[str]:
        s = self.settings
        pace = f"rate {s.rate:g}/s" if s.rate else ("speed 0 (no waiting)" if s.speed == 0 else f"speed {s.speed:g}x")
        names = ", ".join(_display(p) for p in self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")
        shard = f"; shard {s.shard[0]}/{s.shard[1]}" if s.shard else ""
        return [f"replay: {names}; target {s.target or '(replay_target fixture)'}; {pace}; "
                f"concurrency {s.concurrency}{shard}"]

    def terminal_summary(self, reporter) -> None:
        if self.stats is None and not self.controller:
            return
        if self.controller and self.stats is None:
            self.load()
        report = RunReport.build(self)
        for line in render_terminal(report, verbose=reporter.config.option.verbose):
            reporter.write_line(line)

    def capture_summary(self) -> dict:
        return summary_data(self.stats) if self.stats else {}
