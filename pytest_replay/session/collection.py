"""Captures -> test items: each capture file given with --replay is a collector whose items are
its exchanges (or groups of them). Captures are read once, at collection."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..capture import Capture, CaptureError, CaptureStats, expand_paths
from ..capture.summary import closed_loop, summary_data
from ..distribute import partition
from ..http.message import Exchange
from ..http.normalize import path_template
from ..http.sensitive import url_without_password
from ..options import Settings
from ..policy.filters import RequestFilter
from ..policy.redact import Redactor
from ..policy.writes import MARKERS
from .items import CaptureFile, ReplayItem, item_name, marker_name, skip_reason


def _when(ts_ns: int | None) -> str:
    from datetime import datetime, timezone

    if ts_ns is None:
        return "?"
    return datetime.fromtimestamp(ts_ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def display_path(path: str) -> str:
    """A path as users see it: relative to the current directory when it is below it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class Collection:
    """The captures of the run and the items made of them."""

    def __init__(self, config: pytest.Config, settings: Settings, redactor: Redactor, *, distributed: bool,
                 worker: bool = False) -> None:
        self.config = config
        self.settings = settings
        self.redactor = redactor
        try:
            self.paths = [str(Path(p).resolve()) for p in expand_paths(settings.captures)]
        except CaptureError as exc:
            raise pytest.UsageError(f"--replay: {exc}") from None
        self.stats: CaptureStats | None = None
        self.exchanges: list[Exchange] | None = None
        self.error: CaptureError | None = None
        self.request_filter = RequestFilter(settings.allow_header, settings.disallow_header, settings.sample)
        self.notes: list[str] = []
        self.empty_shard = False  # --replay-shard K/N left no replay item in this run
        # --replay-shard K/N: (this shard's sendable exchanges, all shards'), for its share of a rate
        self.shard_traffic: tuple[int, int] | None = None
        self._markers: dict[str, pytest.MarkDecorator] = {}
        self._marks: dict[tuple, tuple] = {}  # Group's methods, templates, kinds, reasons -> its marks
        if settings.group == "endpoint" and (distributed or settings.shard):
            how = "split across xdist workers" if distributed else "sharded"
            raise pytest.UsageError(f"--replay-group endpoint cannot be {how} (an endpoint's exchanges come from "
                                    "many connections); use --replay-group connection or exchange")
        self.index = None  # session.stream.Index of a streamed run (pass 1), once read
        self.streaming = self._streamable(distributed or worker)
        self._point_collection_at_captures(config)

    def _streamable(self, distributed: bool) -> bool:
        """Can the run stream the capture (session/stream.py)? Not when something needs it whole."""
        s = self.settings
        return (s.stream == "auto" and s.group in ("exchange", "connection") and not distributed
                and not (s.include or s.exclude or self.request_filter or s.window or s.connections)
                and not (s.stages or s.loop or s.duration) and not s.update and s.baseline is None
                and not s.middleware)

    def open_capture(self) -> Capture:
        return Capture([display_path(p) for p in self.paths], server_ports=self.settings.server_ports,
                       max_record_size=self.settings.max_record_size,
                       keylog=list(self.settings.keylog) or None)  # TLS key logs

    def scan(self, classify) -> None:
        """Pass 1 of a streamed run: read the capture once into item descriptors and bounded tallies."""
        if self.index is not None or self.error is not None:
            return
        from .items import item_name
        from .stream import Index
        index = Index(self.settings.group, classify, lambda e: item_name(e, self.redactor))
        capture = None
        resolved: dict[str, str] = {}  # a source's file as given -> as collected (resolved once per file)
        try:
            capture = self.open_capture()
            for exchange in capture:
                file = exchange.source.file
                path = resolved.get(file)
                if path is None:
                    path = resolved[file] = str(Path(file).resolve())
                index.add(exchange, path)
        except CaptureError as exc:
            self.error = exc
        index.finish()
        self.index = index
        self.stats = capture.stats if capture is not None else CaptureStats()

    def _point_collection_at_captures(self, config: pytest.Config) -> None:
        """`pytest --replay X` collects the captures only; with test paths given too, both."""
        if config.args_source == pytest.Config.ArgsSource.ARGS:
            config.args.extend(self.paths)
        else:
            config.args[:] = self.paths

    def collect_file(self, file_path, parent, run) -> CaptureFile | None:
        if str(Path(file_path).resolve()) not in self.paths:
            return None
        collector = CaptureFile.from_parent(parent, path=Path(file_path))
        collector.collection = self
        collector.run = run
        return collector

    def load(self) -> list[Exchange]:
        if self.exchanges is None and (self.error is None or self.index is not None):
            capture = None
            try:
                capture = self.open_capture()
                self.exchanges = list(capture)
            except CaptureError as exc:
                self.error = exc
            if self.index is None:  # (a streamed collection keeps its pass-1 stats)
                self.stats = capture.stats if capture is not None else CaptureStats()
        return self.exchanges or []

    def materialize(self) -> None:
        """A streamed collection whose run turns out to need the whole capture (a hook, a baseline
        fixture, sent writes): read it whole now; its items find their exchanges here."""
        self.streaming = False
        self.load()
        self._members: dict = {}
        for exchange in self.exchanges or ():
            key = exchange.index if self.settings.group == "exchange" else exchange.connection
            self._members.setdefault(key, []).append(exchange)

    def members(self, key) -> tuple[Exchange, ...]:
        return tuple(getattr(self, "_members", {}).get(key, ()))

    @property
    def loaded(self) -> bool:
        return self.stats is not None

    def items_for(self, collector: CaptureFile) -> Iterator[ReplayItem]:
        if self.streaming:
            return self._described_items(collector)
        return self._items(collector)

    def _described_items(self, collector: CaptureFile) -> Iterator[ReplayItem]:
        """A streamed run's items: descriptors, not containers of exchanges."""
        run = collector.run
        self.scan(lambda request: run.write_rules.classify(run.rewrites.apply(request)))
        path = str(collector.path.resolve())
        if self.error is not None and self.index.planned == 0:
            if str(Path(self.error.file).resolve()) == path or path == self.paths[0]:
                raise collector.CollectError(f"cannot replay: {self.error}")
            return
        groups = self.index.by_file.get(path)
        if not groups:
            raise collector.CollectError(self._nothing_to_replay(path))
        self.index.by_file[path] = {}  # the items hold what the run needs of their descriptors
        for group in groups.values():
            name = group.name if self.settings.group == "exchange" else f"{group.name} ({group.count} exchanges)"
            yield ReplayItem.describe(collector, name, group)

    def _items(self, collector: CaptureFile) -> Iterator[ReplayItem]:
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
                yield ReplayItem.create(collector, item_name(exchange, self.redactor), (exchange,))
            return
        groups: dict[str, list[Exchange]] = {}
        for exchange in mine:
            key = (f"{exchange.request.method} {path_template(exchange.request.target)}" if group == "endpoint"
                   else f"connection {exchange.connection}")
            groups.setdefault(key, []).append(exchange)
        for key, members in groups.items():
            yield ReplayItem.create(collector, f"{key} ({len(members)} exchanges)", tuple(members))

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

    def marks(self, group) -> tuple:
        """The marks of a described item (session.stream.Group): made once per distinct set of methods,
        write kinds, templates and skip reasons, and shared by every item that has the same (with a
        hundred thousand items, most have the same few)."""
        key = (frozenset(group.methods), frozenset(group.templates), frozenset(group.kinds),
               frozenset(group.reasons) if not group.replayable else None)
        marks = self._marks.get(key)
        if marks is None:
            marks = self._marks[key] = tuple(decorator.mark for decorator in self._mark_decorators(group))
        return marks

    def _mark_decorators(self, group) -> Iterator[pytest.MarkDecorator]:
        marker = self.marker
        yield marker("replay", "a test item made from a captured HTTP exchange")
        for method in sorted(group.methods):
            yield marker(f"http_{marker_name(method)}", f"replayed {method} requests")
        for name, (applies, description) in MARKERS.items():  # http_write, http_read_with_body
            if any(map(applies, group.kinds)):
                yield marker(name, description)
        for template in sorted(group.templates):
            yield marker(f"endpoint_{marker_name(template)}", f"replayed requests to {template}")
        if not group.replayable:
            yield pytest.mark.skip(reason=skip_reason(group.reasons))

    def filter_items(self, items: list) -> None:
        """Include/exclude patterns, header filters, sampling and the shard: what does not pass is
        deselected (and reported so)."""
        shard = self.settings.shard
        if not (self.settings.include or self.settings.exclude or self.request_filter or shard
                or self.settings.window or self.settings.connections):
            return
        selects = self._selects()
        keep, drop = [], []
        mine = total = 0
        for item in items:
            selected = not isinstance(item, ReplayItem) or self.streaming or any(selects(e) for e in item.exchanges)
            other = shard and isinstance(item, ReplayItem) and partition(item.lane, shard[1]) != shard[0] - 1
            if shard and selected and isinstance(item, ReplayItem):
                sendable = item.replayable if item._exchanges is None else sum(e.sendable for e in item.exchanges)
                total += sendable
                mine += 0 if other else sendable
            if not selected or other:
                drop.append(item)
            else:
                keep.append(item)
        if shard:
            self.shard_traffic = (mine, total)
        if drop:
            self.config.hook.pytest_deselected(items=drop)
            items[:] = keep
        self._note_empty_selection(keep)
        if shard and drop and not any(isinstance(item, ReplayItem) for item in keep):
            lanes = len({item.lane for item in drop})
            self.empty_shard = True
            self.notes.append(f"shard {shard[0]}/{shard[1]} holds none of the capture's {lanes} connection(s): "
                              "nothing to replay here (the other shards replay them); this run passes")

    def _note_empty_selection(self, keep: list) -> None:
        """Say why --replay-window / --replay-connection left nothing (a typo in a connection name, a
        window outside the capture)."""
        s = self.settings
        known = {e.connection for e in self.exchanges or ()}
        unknown = [c for c in s.connections if c not in known]
        if unknown:
            self.notes.append(f"--replay-connection: {', '.join(repr(c) for c in unknown)} not in the capture "
                              "(`python -m pytest_replay inspect --json CAPTURE` names its connections)")
        if s.window is not None and not any(isinstance(item, ReplayItem) for item in keep) and self.exchanges:
            from ..capture.summary import summary_data
            data = summary_data(self.stats) if self.stats else {}
            self.notes.append(f"--replay-window {s.window} selects no exchange: the capture spans "
                              f"{_when(data.get('first_ts_ns'))} .. {_when(data.get('last_ts_ns'))}")

    def _selects(self):
        """Does an exchange pass the include/exclude patterns, header filters and sampling,
        --replay-window and --replay-connection?"""
        s = self.settings
        start = end = None
        if s.window is not None:
            first = min((e.request_ts_ns for e in self.exchanges or ()), default=0)
            start, end = s.window.bounds(first)
        connections = frozenset(s.connections)

        def selects(exchange: Exchange) -> bool:
            ts = exchange.request_ts_ns
            return (s.selects(exchange.label) and self.request_filter.keep(exchange.request)
                    and (start is None or ts >= start) and (end is None or ts < end)
                    and (not connections or exchange.connection in connections))
        return selects

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

    def header_lines(self) -> list[str]:
        s = self.settings
        pace = f"rate {s.rate:g}/s" if s.rate else ("speed 0 (no waiting)" if s.speed == 0 else f"speed {s.speed:g}x")
        names = ", ".join(display_path(p) for p in self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")
        shard = f"; shard {s.shard[0]}/{s.shard[1]}" if s.shard else ""
        target = url_without_password(str(s.target)) if s.target else "(replay_target fixture)"
        from ..schedule.engine import uvloop_version  # (no uvloop import: a metadata look-up)

        found = uvloop_version() if s.event_loop != "asyncio" else None
        loop = f"; event loop uvloop {found} (network targets)" if found else "; event loop asyncio"
        spill = "; connections spill" if s.connection_mode == "spill" else ""
        return [f"replay: {names}; target {target}; {pace}; "
                f"concurrency {s.concurrency}{spill}{shard}{loop}"]

    def capture_summary(self) -> dict:
        return summary_data(self.stats) if self.stats else {}

    @functools.cached_property
    def closed_loop(self) -> dict | None:
        """The capture's closed-loop bursts (capture.summary.closed_loop), once it is loaded."""
        if self.index is not None and self.exchanges is None:
            return self.index.closed_loop(self.stats.exchanges if self.stats else 0)
        return closed_loop(self.load())

    def incomplete(self) -> list[Exchange]:
        """Exchanges incomplete in the capture (a streamed run keeps the first few, for examples)."""
        if self.exchanges is None and self.index is not None:
            return list(self.index.incomplete)
        return [e for e in self.exchanges or () if not e.replayable]
