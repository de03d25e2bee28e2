"""ReplaySession: captures -> test items, the engine's lifecycle, verdicts, the run's summary.

One per pytest run, kept in config.stash by plugin.py. Captures are read once, at collection;
each capture file is a collector whose items are its exchanges (or groups of them). The engine
starts with the first replay item (the `replay_engine` session fixture), sends every selected
request on its own schedule in a background thread, and each item waits for its own
observation, then asserts on it.
"""

from __future__ import annotations

import os
import re
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from .capture import Capture, CaptureError, CaptureStats, expand_paths
from .capture.summary import summary_data
from .http.message import Exchange
from .http.normalize import path_template
from .options import Settings
from .policy.redact import DEFAULT as REDACT
from .report.run import RunReport, render_terminal
from .schedule.plan import Timing, build_plan

MAX_NAME = 100  # item names show at most this much of a request target
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
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


class ReplayFailure(AssertionError):
    """A replayed exchange did not match: the message is the readable, masked diff."""


def item_name(exchange: Exchange) -> str:
    target = REDACT.target(exchange.request.target)
    if len(target) > MAX_NAME:
        target = target[:MAX_NAME - 1] + "…"
    return f"{exchange.request.method} {target} #{exchange.index}"


def marker_name(text: str) -> str:
    """An identifier usable in -m expressions: 'GET /api/users/{id}' -> 'api_users_id'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower() or "root"


def _engine_placeholder(replay_engine) -> None:
    """Declares the fixture every replay item needs; ReplayItem.runtest does the work."""


class ReplayItem(pytest.Function):
    """One captured exchange (or a group of them) as a test item."""

    exchanges: tuple[Exchange, ...]
    replay: ReplaySession

    @classmethod
    def create(cls, parent, name: str, exchanges: tuple[Exchange, ...], replay: ReplaySession) -> ReplayItem:
        item = cls.from_parent(parent, name=name, callobj=_engine_placeholder)
        item.exchanges = exchanges
        item.replay = replay
        first = exchanges[0]
        item.add_marker("replay")
        methods = {e.request.method for e in exchanges}
        for method in methods:
            item.add_marker(replay.marker(f"http_{marker_name(method)}", f"replayed {method} requests"))
        if methods & WRITE_METHODS:
            item.add_marker(replay.marker("http_write", "replayed POST, PUT, PATCH or DELETE requests"))
        for template in {path_template(e.request.target) for e in exchanges}:
            item.add_marker(replay.marker(f"endpoint_{marker_name(template)}", f"replayed requests to {template}"))
        replayable = [e for e in exchanges if e.replayable]
        if not replayable:
            reasons = "; ".join(sorted({r for e in exchanges for r in e.reasons if "(request)" in r}))
            item.add_marker(pytest.mark.skip(reason=f"incomplete in the capture: {reasons}"))
        item.user_properties.append(("replay_exchange", ",".join(str(e.index) for e in exchanges[:20])))
        item.user_properties.append(("replay_source", str(first.source)))
        return item

    def runtest(self) -> None:
        engine = self.funcargs["replay_engine"]
        failures = []
        not_sent = []
        for exchange in self.exchanges:
            if not exchange.replayable:
                continue
            decision = self.replay.decisions.get(exchange.index)
            if decision == "skip":
                not_sent.append("write not replayed (--replay-writes skip)")
                continue
            observation = engine.wait(exchange.index)
            if observation.error_kind == "dropped":
                not_sent.append(observation.error)
                continue
            if decision == "mock":
                self.replay.record(exchange, observation, None)
                not_sent.append("write answered from the recording, not sent (--replay-writes mock; "
                                "--replay-allow-write sends matching writes)")
                continue
            verdict, text = self.replay.judge(exchange, observation)
            self.replay.record(exchange, observation, verdict)
            if len(self.exchanges) == 1:
                self._properties(exchange, observation)
            if not verdict.passed:
                failures.append(text)
        if not_sent and len(not_sent) == sum(e.replayable for e in self.exchanges):
            pytest.skip(not_sent[0] if len(not_sent) == 1 else f"{len(not_sent)} requests not sent: {not_sent[0]}")
        if failures:
            shown = failures[:5]
            more = f"\n... and {len(failures) - 5} more failing exchanges" if len(failures) > 5 else ""
            header = f"{len(failures)} of {len(self.exchanges)} exchanges failed\n\n" if len(self.exchanges) > 1 else ""
            raise ReplayFailure(header + "\n\n".join(shown) + more)

    def _properties(self, exchange: Exchange, observation) -> None:
        recorded = exchange.response
        self.user_properties.extend([
            ("recorded_status", recorded.status if recorded else ""),
            ("replayed_status", observation.response.status if observation.response else ""),
            ("recorded_latency_ms", _ms(exchange.recorded_latency_ns)),
            ("replayed_latency_ms", _ms(observation.latency_ns)),
            ("lateness_ms", _ms(observation.lateness_ns)),
        ])

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ReplayFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, self.name


def _display(path: str) -> str:
    """A path as users see it: relative to the current directory when it is below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _ms(ns: int | None) -> str:
    return "" if ns is None else f"{ns / 1e6:.1f}"


class CaptureFile(pytest.File):
    """A capture given with --replay: its exchanges become items."""

    replay: ReplaySession

    def collect(self) -> Iterator[ReplayItem]:
        return self.replay.items_for(self)


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
        self.decisions: dict[int, str] = {}  # exchange index -> send / mock / skip
        from .policy.filters import RequestFilter
        from .policy.rewrite import Rewrites

        self.request_filter = RequestFilter(settings.allow_header, settings.disallow_header, settings.sample)
        self.rewrites = Rewrites(settings.set_header, settings.rewrite_url)
        self.verdicts = None  # DiffConfig, made when the engine starts
        self.outcomes: Counter = Counter()
        self.results: list = []  # (exchange, observation, verdict) per judged exchange
        self._markers: set[str] = set()
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
                yield ReplayItem.create(collector, item_name(exchange), (exchange,), self)
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

    def marker(self, name: str, description: str) -> str:
        if name not in self._markers:
            self._markers.add(name)
            self.config.addinivalue_line("markers", f"{name}: {description}")
        return name

    def filter_items(self, items: list) -> None:
        """Include/exclude patterns, header filters and sampling: what does not pass is deselected
        (and reported so)."""
        if not (self.settings.include or self.settings.exclude or self.request_filter):
            return
        keep, drop = [], []
        for item in items:
            if isinstance(item, ReplayItem) and not any(
                    self.settings.selects(e.label) and self.request_filter.keep(e.request) for e in item.exchanges):
                drop.append(item)
            else:
                keep.append(item)
        if drop:
            self.config.hook.pytest_deselected(items=drop)
            items[:] = keep

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
        from .policy.writes import SKIP, WRITE_METHODS, WriteCounts, WritePolicy
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
            mode=s.writes or ("pass" if in_process else "mock"), methods=WRITE_METHODS | s.write_methods,
            allow=s.allow_write, dry_run_header=s.dry_run_header)
        self.write_counts = WriteCounts()
        self.unused_allow = policy.unused_allow_patterns(self.exchanges or ())
        noise = learn_noise(self.exchanges or ()) if s.noise == "auto" else None
        self.verdicts = DiffConfig(parts=s.diff, headers=s.headers, rules=s.ignore, noise=noise, redactor=REDACT,
                                   max_latency_ns=None if s.max_latency is None else int(s.max_latency * 1e9))
        selected = [e for item in items if isinstance(item, ReplayItem) and not item.get_closest_marker("skip")
                    for e in item.exchanges if e.replayable]
        planned = []
        for exchange in selected:
            decision = policy.decide(exchange)
            self.decisions[exchange.index] = decision
            if decision == SKIP:
                self.write_counts.add(exchange, decision)
            else:
                planned.append(exchange)
        timing = Timing(speed=s.speed, rate=s.rate, max_wait_ns=None if s.max_wait is None else int(s.max_wait * 1e9))
        wire = getattr(inner, "wire", None) or (lambda request: request.raw)
        plan = build_plan(planned, timing, lambda e: self.rewrites.apply(policy.mark(e.request)), wire)
        self.target = PolicyTarget(inner, policy, RecordedWrites.from_exchanges(planned, policy.is_write),
                                   counts=self.write_counts)
        if outbound is not None and in_process:
            self.outbound = Outbound(outbound())
            self.outbound.start()
        self.engine = Engine(plan, self.target, concurrency=s.concurrency, timeout_s=s.timeout,
                             pipeline=self._pipeline(planned, wire))
        _running.add(self)
        self.engine.start()
        return self.engine

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
            shown = "; ".join(REDACT.target(call) for call in calls[:5])
            error = (f"outbound call without a replay_outbound route (blocked, nothing left the process): {shown}"
                     + (f" and {len(calls) - 5} more" if len(calls) > 5 else ""))
        verdict = compare(exchange.response, observation.response, self.verdicts, exchange=exchange, error=error,
                          latency_ns=observation.latency_ns, recorded_latency_ns=exchange.recorded_latency_ns)
        text = "" if verdict.passed else render_failure(
            exchange, verdict, recorded_latency_ns=exchange.recorded_latency_ns,
            replayed_latency_ns=observation.latency_ns,
            replayed_status=observation.response.status if observation.response else None, redactor=REDACT)
        return verdict, text

    def record(self, exchange: Exchange, observation, verdict) -> None:
        self.results.append((exchange, observation, verdict))

    # -- reporting ---------------------------------------------------------------------------
    def header_lines(self) -> list[str]:
        s = self.settings
        pace = f"rate {s.rate:g}/s" if s.rate else ("speed 0 (no waiting)" if s.speed == 0 else f"speed {s.speed:g}x")
        names = ", ".join(_display(p) for p in self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")
        return [f"replay: {names}; target {s.target or '(replay_target fixture)'}; {pace}; "
                f"concurrency {s.concurrency}"]

    def terminal_summary(self, reporter) -> None:
        if self.stats is None:
            return
        report = RunReport.build(self)
        for line in render_terminal(report, verbose=reporter.config.option.verbose):
            reporter.write_line(line)

    def capture_summary(self) -> dict:
        return summary_data(self.stats) if self.stats else {}
