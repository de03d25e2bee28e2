"""Test items made from captured exchanges, and the collector of a capture file.

An item is one exchange (or a group of them): a pytest.Function whose only fixture is the running
replay; runtest() waits for its exchange's observation and judges it (the ReplayRun does both).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from ..http.message import Exchange
from ..http.normalize import endpoint_of, path_template
from ..http.units import ms
from ..policy.redact import Redactor
from ..policy.writes import MARKERS, SEND, SKIP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .collection import Collection
    from .run import ReplayRun

LOOK_S = 1.0  # a streamed item without progress lines looks at the engine this often while it waits
MAX_NAME = 100  # item names show at most this much of a request target


class ReplayFailure(AssertionError):
    """A replayed exchange did not match: the message is the readable, masked diff."""


_STAND_IN_HASH = re.compile(r"\b(REDACTED(?:-[A-Z]+)?)-[0-9a-f]{8}\b")


def item_name(exchange: Exchange, redactor: Redactor) -> str:
    """'METHOD target #index': secrets in the target masked without their hash, so the name is the
    same in every run and in every xdist worker (the index keeps it unique)."""
    target = _STAND_IN_HASH.sub(r"\1", redactor.target(exchange.request.target))
    if len(target) > MAX_NAME:
        target = target[:MAX_NAME - 1] + "…"
    return f"{exchange.request.method} {target} #{exchange.index}"


def marker_name(text: str) -> str:
    """An identifier usable in -m expressions: 'GET /api/users/{id}' -> 'api_users_id'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower() or "root"


def skip_reason(reasons) -> str:
    """An item none of whose exchanges can be sent: why (incomplete requests, or streams not replayed)."""
    reasons = sorted(set(reasons))
    incomplete = [r for r in reasons if not r.startswith("not replayed")]
    return f"incomplete in the capture: {'; '.join(incomplete)}" if incomplete else "; ".join(reasons)


def _engine_placeholder(replay_engine) -> None:
    """Declares the fixture every replay item needs; ReplayItem.runtest does the work."""


class ReplayItem(pytest.Function):
    """One captured exchange (or a group of them) as a test item. A streamed run's item is a
    descriptor (`key`: its exchange index or its connection; `count`), not a container: its exchanges
    are read when the run streams them, and found in the collection only if the run needs them whole."""

    replay: ReplayRun
    own_ns: int = 0  # the replayed time of its exchanges (sent to response complete), reported as its duration
    _exchanges: tuple[Exchange, ...] | None = None
    key: object = None  # a described item's exchange index or connection
    count: int = 0  # its exchanges
    lane: str = ""  # its (first) exchange's connection: what shards and workers split on
    replayable: int = 0  # a described item's exchanges that can be replayed

    @property
    def exchanges(self) -> tuple[Exchange, ...]:
        if self._exchanges is None:
            return self.parent.collection.members(self.key)
        return self._exchanges

    @classmethod
    def _new(cls, parent: CaptureFile, name: str) -> ReplayItem:
        """An item with the collector's fixture closure: every item of a capture file has the same one
        (one fixture, one function, one parent), so pytest resolves it once per file, as it does
        once per parametrized function, instead of once per item."""
        info = parent.fixtureinfo
        item = cls.from_parent(parent, name=name, callobj=_engine_placeholder, fixtureinfo=info)
        if info is None:
            parent.fixtureinfo = item._fixtureinfo
        item.replay = parent.run
        return item

    def _mark(self, marks) -> None:
        """Add prepared marks (Collection.marks): node.add_marker's work, without its checks per item."""
        keywords, own = self.keywords, self.own_markers
        for mark in marks:
            keywords[mark.name] = mark
            own.append(mark)

    @classmethod
    def describe(cls, parent: CaptureFile, name: str, group) -> ReplayItem:
        """An item of a streamed run, from its descriptor (session.stream.Group)."""
        item = cls._new(parent, name)
        item.key, item.count, item.lane, item.replayable = group.key, group.count, group.lane, group.replayable
        item._mark(parent.collection.marks(group))
        item.user_properties += [("replay_exchange", ",".join(map(str, group.indexes))), ("replay_source", group.source),
                                 ("replay_endpoint", ", ".join(list(group.endpoints)[:20]))]
        return item

    @classmethod
    def create(cls, parent: CaptureFile, name: str, exchanges: tuple[Exchange, ...]) -> ReplayItem:
        item = cls._new(parent, name)
        item._exchanges = exchanges
        item.count, item.lane = len(exchanges), exchanges[0].connection
        marker = parent.collection.marker
        first = exchanges[0]
        item.add_marker(marker("replay", "a test item made from a captured HTTP exchange"))
        methods = {e.request.method for e in exchanges}
        for method in methods:
            item.add_marker(marker(f"http_{marker_name(method)}", f"replayed {method} requests"))
        run = parent.run
        kinds = [run.write_rules.classify(run.rewrites.apply(e.request)) for e in exchanges]
        for name, (applies, description) in MARKERS.items():  # http_write, http_read_with_body
            if any(map(applies, kinds)):
                item.add_marker(marker(name, description))
        for template in {path_template(e.request.target) for e in exchanges}:
            item.add_marker(marker(f"endpoint_{marker_name(template)}", f"replayed requests to {template}"))
        if not any(e.sendable for e in exchanges):
            item.add_marker(pytest.mark.skip(reason=skip_reason(r for e in exchanges for r in e.why_not_sent)))
        item.user_properties.append(("replay_exchange", ",".join(str(e.index) for e in exchanges[:20])))
        item.user_properties.append(("replay_source", str(first.source)))
        endpoints = dict.fromkeys(endpoint_of(e.request.method, e.request.target) for e in exchanges)
        item.user_properties.append(("replay_endpoint", ", ".join(list(endpoints)[:20])))
        return item

    def setup(self) -> None:
        """pytest's fixture set-up for the first item of a capture file; the next ones take the values
        pytest cached for it when every fixture of the item is session-scoped and unparametrized (the
        replay's own, or a conftest's replay_target override): what pytest's cache hit would return,
        without a fixture request per fixture and item (pytest rebuilds and inspects a `request`
        fixture for each of the three that take one). Any other fixture in the closure (a user's
        autouse fixture of a narrower scope) keeps pytest's path for every item."""
        shared = self.parent.session_fixtures
        if shared is not None and all(d.cached_result is not None and d.cached_result[2] is None
                                      and d.cached_result[0] is value for _, d, value in shared):
            fixture_defs, funcargs = self._request._fixture_defs, self.funcargs
            for name, fixturedef, value in shared:
                fixture_defs[name] = fixturedef
                funcargs[name] = value
            if "request" in self.fixturenames:
                funcargs["request"] = self._request
            return
        super().setup()
        self.parent.session_fixtures = self._session_fixtures()

    def _session_fixtures(self) -> tuple | None:
        """(name, FixtureDef, value) of each of this item's fixtures, when all are session-scoped and
        unparametrized (see setup), else None."""
        try:  # pytest's internals (checked on 8.3 and 9.x): where they differ, pytest's own path per item
            from _pytest.scope import Scope

            fixture_defs = self._request._fixture_defs
        except (ImportError, AttributeError):
            return None
        shared = []
        for name in self.fixturenames:
            if name == "request":
                continue
            fixturedef = fixture_defs.get(name)
            if (fixturedef is None or getattr(fixturedef, "_scope", None) is not Scope.Session or fixturedef.params
                    or fixturedef.cached_result is None or fixturedef.cached_result[2] is not None):
                return None
            shared.append((name, fixturedef, fixturedef.cached_result[0]))
        return tuple(shared)

    def runtest(self) -> None:
        engine = self.funcargs["replay_engine"]
        if self.replay.stream is not None:
            return self._streamed(engine)
        failures = []
        not_sent = []
        for exchange in self.exchanges:
            if not exchange.sendable:
                continue
            decision = self.replay.decisions.get(exchange.index)
            if decision is not None and decision.action == SKIP:  # counted when the plan was made
                not_sent.append(decision.not_sent())
                continue
            unsendable = self.replay.unsendable.get(exchange.index)
            if unsendable is not None:  # counted when the plan was made
                not_sent.append(unsendable)
                continue
            if not engine.planned_key(exchange.index):  # a capacity run whose stages end before its turn
                why = "not sent: the stages (--replay-stages) end before its turn in the capture"
                self.replay.skip(exchange, why)
                not_sent.append(why)
                continue
            observation = self.replay.wait(engine, exchange.index)
            if observation.error_kind != "cancelled":  # (never sent: no time of its own)
                self.own_ns += observation.total_ns
            elif getattr(engine, "halted", None) is not None and not engine.was_sent(exchange.index):
                self.replay.skip(exchange, observation.error)  # a stop condition tripped before its turn
                not_sent.append(observation.error)
                continue
            if observation.error_kind == "dropped":
                self.replay.skip(exchange, "dropped")
                not_sent.append(observation.error)
                continue
            decision = self.replay.decisions.get(exchange.index)  # made again as the request left
            if decision is not None and decision.action != SEND:
                self.replay.record(exchange, observation, None)
                not_sent.append(decision.not_sent())
                continue
            verdict, text = self.replay.judge(exchange, observation)
            self.replay.record(exchange, observation, verdict, text)
            if len(self.exchanges) == 1:
                self._properties(exchange, observation)
            if not verdict.passed:
                failures.append((text, exchange, observation, verdict))
        if not_sent and len(not_sent) == sum(e.sendable for e in self.exchanges):
            reason = not_sent[0] if len(not_sent) == 1 else f"{len(not_sent)} requests not sent: {not_sent[0]}"
            # reported at the item (the capture), as skip markers are, not at this line of the plugin
            raise pytest.skip.Exception(reason, _use_item_location=True)
        if failures:
            shown = [text for text, *_ in failures[:5]]
            more = f"\n... and {len(failures) - 5} more failing exchanges" if len(failures) > 5 else ""
            header = f"{len(failures)} of {len(self.exchanges)} exchanges failed\n\n" if len(self.exchanges) > 1 else ""
            _, exchange, observation, verdict = failures[0]
            fail(header + "\n\n".join(shown) + more, exchange, observation, verdict)

    def _streamed(self, engine) -> None:
        """A streamed run's verdict: the judge thread judged its exchanges as they completed; here
        the item waits for the last of them and reads its failures back from the spill file."""
        stream = self.replay.stream
        state = stream.selected[self.key]
        interval = self.replay.progress.interval  # (None: no progress lines; it still looks at the engine)
        while not state.wait(interval or LOOK_S):
            if engine.finished:  # its exchanges may never come (a capture cut since pass 1 read it)
                stream.settle()
            elif interval:
                self.replay.progress.write(engine, None)
        self.own_ns = state.own_ns
        self.user_properties.extend(state.properties)
        state.properties = ()  # (its item holds them now: not twice, for each of 100,000 items)
        if state.not_sent_count and state.not_sent_count == state.expected:
            why = state.not_sent
            reason = why if state.expected == 1 else f"{state.not_sent_count} requests not sent: {why}"
            raise pytest.skip.Exception(reason, _use_item_location=True)
        if state.failed:
            shown = [stream.failure_text(where) for where in state.failures]
            more = f"\n... and {state.failed - 5} more failing exchanges" if state.failed > 5 else ""
            header = f"{state.failed} of {self.count} exchanges failed\n\n" if self.count > 1 else ""
            exchange, observation, verdict = state.first_failure or (None, None, None)
            fail(header + "\n\n".join(shown) + more, exchange, observation, verdict)

    def _properties(self, exchange: Exchange, observation) -> None:
        recorded = exchange.response
        self.user_properties.extend([
            ("recorded_status", recorded.status if recorded else ""),
            ("replayed_status", observation.response.status if observation.response else ""),
            *((name, ms(ns, missing="", unit="")) for name, ns in (  # JUnit properties: a number or ""
                ("recorded_latency_ms", exchange.recorded_latency_ns),
                ("replayed_latency_ms", observation.latency_ns),
                ("lateness_ms", observation.lateness_ns))),
        ])

    def own_duration(self, report) -> None:
        """Its report's duration is its exchanges' own replayed time (setup and teardown: none): what
        pytest measures is waiting for the replay, which the run reports once (its wall time)."""
        report.duration = self.own_ns / 1e9 if report.when == "call" else 0.0

    def repr_failure(self, excinfo, **kwargs):
        if isinstance(excinfo.value, ReplayFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, **kwargs)

    def reportinfo(self):
        # A line number, not None: pytest places skip reports (skip markers) at the item's line.
        return self.path, 0, self.name


def fail(message: str, exchange: Exchange, observation, verdict) -> None:
    """Raise the item's ReplayFailure from a frame whose locals are what a debugger wants at hand:
    `pytest --pdb` stops here with `request`, `recorded` and `replayed` (Request and Response values:
    `p request.target`, `p recorded.status`, `p replayed.body`), `diff` (the differences, each with
    its path and values) and `verdict`, `exchange`, `observation` (timing, error). `message` is the
    masked text shown in the report; the values here are as captured and as received (not masked):
    this frame exists only in a local debugging session. An item of several exchanges stops with its
    first failing one."""
    request = exchange.request if exchange else None  # noqa: F841 - read at the debugger's prompt
    recorded = exchange.response if exchange else None  # noqa: F841
    replayed = observation.response if observation else None  # noqa: F841
    diff = verdict.differences if verdict else None  # noqa: F841
    raise ReplayFailure(message)


class CaptureFile(pytest.File):
    """A capture given with --replay: its exchanges become items."""

    collection: Collection
    run: ReplayRun
    fixtureinfo = None  # its items' FuncFixtureInfo, resolved for the first one
    session_fixtures: tuple | None = None  # its items' session-wide fixture values (ReplayItem.setup)

    def collect(self) -> Iterator[ReplayItem]:
        return self.collection.items_for(self)


class ItemDurations:
    """A pytest plugin (registered when replay is on): a replay item's report carries its exchanges'
    own replayed time, not the time pytest spent waiting for the replay (JUnit, --durations)."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call):
        report = yield
        if isinstance(item, ReplayItem):
            item.own_duration(report)
        return report
