"""The replay run: the engine's lifecycle, each item's wait and verdict, and what the run did.

The engine starts with the first replay item (the `replay_engine` session fixture), sends every
selected request on its own schedule in a background thread, and each item waits for its own
observation, then asserts on it. What the run did is summed up as `RunResults` at the end.
"""

from __future__ import annotations

import os
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

import httpx
import pytest

from ..http.message import Exchange
from ..options import Settings
from ..policy.redact import Redactor
from ..policy.writes import WRITE_METHODS_DEPRECATED, WriteRules
from ..policy.rewrite import Rewrites
from ..report.aggregate import Aggregate
from ..report.run import RunResults
from ..schedule.plan import Timing, build_plan
from .collection import Collection
from .items import ReplayItem
from .progress import Progress

MALFORMED_IN_PROCESS = ("not sent: a malformed request (not valid HTTP/1.x) is sent as captured only to a network "
                        "target (an http:// or https:// --replay-target)")
DEFAULT_LEAD_NS = 50_000_000  # from the engine's start to the replay's t0, in a single process
_running: weakref.WeakSet[ReplayRun] = weakref.WeakSet()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def replayed_exchanges(items: Iterable) -> list[Exchange]:
    """The exchanges of the replay items that run (not skipped by a marker) and can be replayed."""
    return [e for item in items if isinstance(item, ReplayItem) and not item.get_closest_marker("skip")
            for e in item.exchanges if e.sendable]


_judge = None  # verdicts.judge.judge, imported at the first verdict (a --collect-only run never needs it)


def _import_judge():
    """verdicts.judge.judge, kept in a global: an import statement in ReplayRun.judge, run once per
    exchange by the judge thread, cost ~8% of that thread's time in a streamed run (py-spy)."""
    global _judge
    from ..verdicts.judge import judge
    _judge = judge
    return judge


def unscheduled(settings) -> bool:
    """--speed 0 without --rate: every request is due at once, so lateness means nothing."""
    return settings.speed == 0 and not settings.rate


class ReplayRun:
    """One replay: started by the `replay_engine` fixture, waited on and judged by the items.

    `lanes` chooses the exchanges this process replays (all of them, or an xdist worker's part);
    `lead_ns` says how long after the engine's start the replay begins (a worker waits for the
    shared instant)."""

    def __init__(self, config: pytest.Config, settings: Settings, collection: Collection, redactor: Redactor,
                 progress: Progress) -> None:
        self.config = config
        self.settings = settings
        self.collection = collection
        self.redactor = redactor
        self.progress = progress
        self.lanes: Callable[[list[Exchange]], list[Exchange]] = lambda exchanges: exchanges
        self.lead_ns: Callable[[Iterable], int] = lambda items: DEFAULT_LEAD_NS
        self.rewrites = Rewrites(settings.set_header, settings.rewrite_url)
        self.engine = None
        self.target = None
        self.outbound = None  # Outbound, for in-process targets
        self.write_policy = None
        self.write_counts = None
        self.unused_allow: list[str] = []
        self.decisions: dict = {}  # exchange index -> policy.writes.Decision (send / mock / skip, and why)
        from ..verdicts.grpc import combined
        self.grpc_schema = combined(settings.proto_descriptors)  # --replay-proto-descriptors, or None
        reads = self.grpc_schema.read_paths if self.grpc_schema is not None else ()  # NO_SIDE_EFFECTS methods
        self.write_rules = WriteRules.declaring(settings.write_pattern, settings.write_methods, reads)  # what is a write
        self.diff_config = None  # DiffConfig, made when the engine starts
        self.origins = None  # OriginResolver (--replay-origins same), made when the engine starts
        self.origin_counts: Counter[str] = Counter()  # "origin A treated as B" -> responses
        self.aggregate = Aggregate()  # what this process replayed and how it went
        self.skipped: list[tuple[Exchange, str]] = []  # selected, not replayed
        self.unsendable: dict[int, str] = {}  # exchange index -> why this target cannot send it (not planned)
        self.counted: set[int] = set()  # exchanges counted in the aggregate
        self.notes: list[str] = [WRITE_METHODS_DEPRECATED] if settings.write_methods else []
        self.remote = RunResults()  # what other processes did (the xdist controller merges workers' here)
        self.started = now_iso()
        self.locality = ""  # why the target shares this machine's cores ("in-process", "127.0.0.1"), if it does
        self.split = ""  # "the 2 xdist workers" / "shards": where sent writes' barriers cannot reach
        if settings.shard:
            self.split = f"shards (--replay-shard {settings.shard[0]}/{settings.shard[1]})"
        self.differential = None  # session.baseline.Differential, with --replay-baseline
        self.updates = None  # session.update.Updates: replayed responses kept for --replay-update
        if settings.update:
            from .update import Updates
            self.updates = Updates()
        self.stage_plan = None  # schedule.stages.StagePlan of a capacity run
        self.share = 1.0  # the part of --rate and of rate stages this process sends (a CI shard's traffic share)
        self.rate = None  # --rate at that share (requests per second), or None
        self.key_stride = 0  # a looped request's key: exchange index + loop * key_stride
        self.sampler = None  # session.saturation.Sampler of a capacity run
        self.probed = None  # (target URL, targets.h2.Probe) when the target was probed after collection
        self.http_version_said = None  # what HTTP/2 captures go over, as said after collection
        self.stream = None  # session.stream.Stream of a streamed run
        self.judging = None  # session.judging.JudgePool: large differing bodies judged in other processes

    # -- the engine --------------------------------------------------------------------------
    def start_engine(self, target_spec, items: Iterable, outbound=None, baseline=None):
        """Make the target, apply the write policy, rewrites and the production guard, and start
        the engine with every selected exchange on its schedule."""
        from ..policy.guard import check_target, recorded_hosts
        from ..policy.writes import SEND, SKIP, WriteCounts, WritePolicy
        from ..schedule.engine import Engine
        from ..targets import make_target
        from ..targets.inprocess import ASGITarget, WSGITarget
        from ..targets.mock import PolicyTarget, RecordedWrites
        from ..targets.outbound import Outbound
        from ..verdicts.budgets import shares_cores
        from ..verdicts.clock import ClockNoise
        from ..verdicts.diff import DiffConfig, learn_noise
        from ..verdicts.origin import SAME, OriginResolver

        s = self.settings
        if self.collection.streaming and (baseline is not None or self._hooked()):
            self.collection.materialize()  # hooks and a baseline see every exchange: not streamed
        index = self.collection.index if self.collection.streaming else None
        exchanges = self.collection.exchanges or ()
        set_host = any(name.lower() == b"host" for name, _ in self.rewrites.set_headers)
        try:
            # --replay-original-host, or a Host set with --replay-set-header: the target sends the request's own
            inner = make_target(target_spec, verify=not s.insecure, keep_host=s.original_host or set_host,
                                import_paths=(os.getcwd(), str(self.config.rootpath)), http_version=s.http_version)
        except (ValueError, TypeError) as exc:
            pytest.exit(self.redactor.text(f"replay target: {exc}"), returncode=pytest.ExitCode.USAGE_ERROR)
        in_process = isinstance(inner, (ASGITarget, WSGITarget)) or isinstance(
            getattr(getattr(inner, "client", None), "_transport", None), (httpx.ASGITransport, httpx.WSGITransport))
        url = getattr(inner, "url", None) or getattr(inner, "base", None)
        if s.event_loop == "uvloop" and not in_process:
            from ..schedule.engine import uvloop_version
            if uvloop_version() is None:
                pytest.exit("--replay-event-loop uvloop: uvloop is not installed (pip install "
                            "pytest-traffic-replay[fast])", returncode=pytest.ExitCode.USAGE_ERROR)
        def origins_of(side, set_headers=()) -> OriginResolver:  # set_headers: a side's own, set last
            side_url = getattr(side, "url", None) or getattr(side, "base", None)
            return OriginResolver(getattr(side, "sent_host", lambda request: None),
                                  str(side_url) if side_url else None, self.rewrites.set_headers + tuple(set_headers))

        if s.origins == SAME:
            self.origins = origins_of(inner)
        self.locality = shares_cores(str(url) if url else None, in_process) or ""
        if url and not s.force_production:
            refusal = check_target(str(url), recorded_hosts(exchanges if index is None else index.hosts.values()))
            if refusal:
                pytest.exit(refusal, returncode=pytest.ExitCode.USAGE_ERROR)
        self.write_policy = policy = WritePolicy(
            mode=s.writes or ("pass" if in_process else "mock"), rules=self.write_rules,
            allow=s.allow_write, dry_run_header=s.dry_run_header)
        self.write_counts = WriteCounts()
        if index is not None and (index.whole or index.has_writes and (policy.mode == "pass" or policy.allow)):
            # sent writes are barriers over the whole capture; HTTP/2 and malformed requests: see Index.whole
            self.collection.materialize()
            index, exchanges = None, self.collection.exchanges or ()
        self.unused_allow = policy.unused_allow_patterns(exchanges if index is None else index.writes)
        # with a baseline, noise is measured live instead; --replay-noise-from: reviewed rules, not learned
        learned = s.noise == "auto" and baseline is None and s.noise_from is None
        noise = learn_noise(exchanges if index is None else index.noise_sample) if learned else None
        span = exchanges if index is None else index.time_span()
        clock = ClockNoise.of(span, time.time_ns(), time.time_ns) if learned else None
        rules = s.ignore + (s.noise_from or ())
        self.diff_config = DiffConfig(parts=s.diff, headers=s.headers, rules=rules, noise=noise, clock=clock,
                                      redactor=self.redactor, grpc=self.grpc_schema,
                                      max_latency_ns=None if s.max_latency is None else int(s.max_latency * 1e9))
        self.judging = self._judge_pool(baseline, exchanges if index is None else index.noise_sample,
                                        streamed=index is not None)
        from .capacity import traffic_share  # a CI shard sends its share of a rate (its part of the traffic)
        self.share = traffic_share(s.shard, self.collection.shard_traffic)
        self.rate = s.rate * self.share if s.rate else s.rate
        timing = Timing(speed=s.speed, rate=self.rate, max_wait_ns=None if s.max_wait is None else int(s.max_wait * 1e9))
        if index is not None:
            from .baseline import check_usage
            check_usage(s, baseline)
            index.noise_sample, index.hosts, index.writes = [], {}, []  # learned, checked: not needed any more
            inner = getattr(inner, "http1", inner)  # (a streamed capture has no HTTP/2 exchange: Index.whole)
            return self._start_streamed(index, items, inner, policy, timing, in_process, outbound)
        planned = []
        sends_bytes = getattr(inner, "sends_bytes", False)  # a network target: captured bytes go out as such
        replayed = replayed_exchanges(items)
        mine = self.lanes(replayed)
        for exchange in mine:
            # decided on the request as it will leave (PolicyTarget decides again)
            decision = self.decisions[exchange.index] = policy.decision(self.rewrites.apply(exchange.request))
            if decision.action == SKIP:
                self.write_counts.add(exchange, SKIP)
                self.skip(exchange, "write skipped (--replay-writes skip)", write=True)
            elif decision.action == SEND and exchange.request.protocol == "malformed" and not sends_bytes:
                why = self.unsendable[exchange.index] = MALFORMED_IN_PROCESS
                self.skip(exchange, why)
            else:
                planned.append(exchange)
        inner = self._choose_http_version(inner, planned)
        wire = getattr(inner, "wire", None) or (lambda request: request.raw)
        prepare = lambda e: self.rewrites.apply(policy.mark(e.request, decision=self.decisions[e.index]))  # noqa: E731
        if s.stages or s.loop or s.duration:
            plan = self._stage_plan(replayed, planned, prepare, wire)
        else:
            plan = build_plan(planned, timing, prepare, wire)
        from .baseline import check_usage
        check_usage(s, baseline)
        if baseline is not None:
            from .baseline import Differential
            self.differential = Differential(s, self.redactor)
            hosts = recorded_hosts(exchanges)
            inner = self.differential.wrap(
                inner, target_spec, baseline, verify=not s.insecure, keep_host=s.original_host or set_host,
                origins=origins_of if s.origins == SAME else None,
                is_write=lambda request: self.write_rules.classify(request).write,
                check=lambda url: None if s.force_production else check_target(url, hosts))
        recorded = RecordedWrites.from_exchanges(planned, lambda e: self.decisions[e.index].why.write)
        self.target = PolicyTarget(inner, policy, recorded, counts=self.write_counts, decisions=self.decisions)
        if outbound is not None and in_process:
            sides = self.differential.network_sides() if self.differential is not None else []
            self.outbound = Outbound(outbound(), allow=(*s.allow_host, *sides))  # the engine reaches a baseline
            self.outbound.start()
        barriers = self._barriers(planned, exchanges, policy)
        monitor = self.stop_monitor(s.abort_on, s.abort_window) if s.abort_on else None
        self.engine = Engine(plan, self.target, concurrency=s.concurrency, timeout_s=s.timeout,
                             pipeline=self._pipeline(planned, wire), lead_ns=self.lead_ns(items),
                             barriers=barriers, monitor=monitor, connections=s.connection_mode,
                             loop="asyncio" if in_process else s.event_loop,  # uvloop bypasses the app's socket blocker
                             scheduled=not unscheduled(s) or self.stage_plan is not None)
        _running.add(self)
        self.engine.start()
        if self.stage_plan is not None:
            from .saturation import Sampler
            self.sampler = Sampler(self.engine.clock.now_ns, pid=s.target_pid, metrics_url=s.metrics_url,
                                   metrics=s.metrics)
            self.sampler.start()
        return self.engine

    def _judge_pool(self, baseline, sample, *, streamed: bool):
        """Judging processes (--replay-judge-workers), or None: every exchange judged in this process
        (also when items judge after the replay, in a run that holds the capture: no engine to make late).
        Started now, before t0 (starting them takes a Python start-up and imports: lateness if the
        replay ran meanwhile), when a number is given or when the capture (`sample`: every exchange, or a
        streamed run's bounded sample) holds large bodies; 'auto' otherwise waits for the first one."""
        from .judging import JudgePool, large_bodies, workers_for

        setting = self.settings.judge_workers
        workerinput = getattr(self.config, "workerinput", None)  # an xdist worker: its run has this many
        workers = workers_for(setting, processes=workerinput.get("workercount", 1) if workerinput else 1)
        if baseline is not None or workers == 0:  # (a baseline's verdict keeps per-endpoint state: judged here)
            return None
        if not streamed and self.settings.judge == "after":
            return None
        eager = setting != "auto" or large_bodies(sample)
        pool = JudgePool(workers, self.diff_config, self.redactor, eager=eager)
        try:
            if eager:
                pool.wait_ready(30.0)
        except BaseException:  # Ctrl-C while they start: none left behind
            pool.shutdown()
            raise
        return pool

    def stop_monitor(self, conditions, window_s: float):
        """The stop conditions' monitor (an xdist Worker replaces this: a stop on one worker stops all)."""
        from ..schedule.monitor import StopMonitor
        return StopMonitor(conditions, window_s)

    def http_version_lines(self, items) -> list[str] | None:
        """After collection, before the replay: with HTTP/2 exchanges selected and an http(s) URL as the
        target option, probe it once and say what they will go over (the target reuses the answer)."""
        s = self.settings
        target = s.target
        if not isinstance(target, str) or not target.strip().lower().startswith(("http://", "https://")) \
                or self.config.option.collectonly:  # (--collect-only reaches no target)
            return None
        index = self.collection.index if self.collection.streaming else None
        if not (index.http2 if index is not None else any(e.request.http2 for e in replayed_exchanges(items))):
            return None
        from ..targets.h2 import H2Target
        try:
            prober = H2Target(target.strip(), version=s.http_version, verify=not s.insecure)
        except ValueError:
            return None  # start_engine says why
        self.http_version_said = prober.choice()
        self.probed = (prober.url, prober.probed)
        return [f"replay: {self.http_version_said}"]

    def _choose_http_version(self, inner, planned: list[Exchange]):
        """The target the engine sends to. With exchanges captured over HTTP/2 and a network target:
        probe it once (before t0, so the probe costs no lateness) and say what they go over;
        --replay-http-version 2 against a target that does not speak HTTP/2 is a usage error. Without
        any, an H2Target's HTTP/1.1 fast path itself (one await less per request on the engine's path)."""
        choice = getattr(inner, "choice", None)
        if choice is None:
            return inner
        if not any(e.request.http2 for e in planned):
            return inner.http1
        if self.probed is not None and self.probed[0] == inner.url and inner.probed is None:
            inner.probed = self.probed[1]  # probed after collection: not again
        if self.settings.http_version == "2":
            probed = inner.check()
            if not probed.h2:
                pytest.exit(f"--replay-http-version 2: {inner.url} does not speak HTTP/2 ({probed.how})",
                            returncode=pytest.ExitCode.USAGE_ERROR)
        said = choice()
        self.notes.append(f"replay: {said}")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and said != self.http_version_said:  # (not said after collection; no reporter in a worker)
            reporter.write_line(f"replay: {said}")
        return inner

    def _hooked(self) -> bool:
        hook = self.config.hook
        return any(getattr(hook, name).get_hookimpls() for name in ("pytest_replay_request", "pytest_replay_response"))

    def _start_streamed(self, index, items: Iterable, inner, policy, timing, in_process, outbound):
        """A streamed run (session/stream.py): the engine pulls planned requests from a reader thread
        and hands each observation to a judge thread."""
        from ..policy.writes import MOCK, SKIP
        from ..schedule.engine import Engine
        from ..schedule.plan import PlannedRequest, StreamedOffsets
        from ..targets.mock import PolicyTarget, RecordedWrites
        from ..targets.outbound import Outbound
        from .stream import ItemState, LockedWriteCounts, Stream

        s = self.settings
        selected = {}
        for item in items:
            if isinstance(item, ReplayItem) and item.replayable and not item.get_closest_marker("skip"):
                selected[item.key] = ItemState(item.replayable)
        wire = getattr(inner, "wire", None) or (lambda request: request.raw)
        recorded = RecordedWrites({})
        self.write_counts = LockedWriteCounts()  # the engine's thread and the judge's both count
        decisions, rewrites = self.decisions, self.rewrites

        rewriting = bool(rewrites)  # (frozen: asked once, not twice per request)
        mark = policy.mark if policy.dry_run_header is not None else None  # (else it returns the request)

        def plan_one(exchange, offset: int):
            request = exchange.request
            decision = policy.decision(rewrites.apply(request) if rewriting else request)
            if decision.action == SKIP:  # counted by the judge thread, which does all the counting
                stream.judged.put(("skip", exchange, decision))
                return None
            decisions[exchange.index] = decision
            if decision.action == MOCK:
                recorded.responses[exchange.index] = exchange.response
            if mark is not None:
                request = mark(request, decision=decision)
            if rewriting:
                request = rewrites.apply(request)
            return PlannedRequest(exchange.index, offset, exchange.connection, request, wire(request))

        stream = self.stream = Stream(self, index, selected, plan_one, self.collection.open_capture)
        self._offsets = lambda: StreamedOffsets(timing)
        self.target = PolicyTarget(inner, policy, recorded, counts=self.write_counts, decisions=self.decisions)
        if outbound is not None and in_process:
            self.outbound = Outbound(outbound(), allow=s.allow_host)
            self.outbound.start()
        monitor = self.stop_monitor(s.abort_on, s.abort_window) if s.abort_on else None
        self.engine = Engine(stream.feed, self.target, concurrency=s.concurrency, timeout_s=s.timeout,
                             lead_ns=self.lead_ns(items), monitor=monitor, observer=stream.observe,
                             connections=s.connection_mode, loop="asyncio" if in_process else s.event_loop,
                             scheduled=not unscheduled(s))
        stream.recorded = recorded
        _running.add(self)
        stream.start()
        self.engine.start()
        return self.engine

    def offsets(self):
        """A streamed run's deadline offsets, one request timestamp at a time."""
        return self._offsets()

    def _stage_plan(self, replayed: list[Exchange], planned: list[Exchange], prepare, wire) -> list:
        """The plan of a capacity run (--replay-stages, --replay-loop, --replay-duration): computed
        from every replayed exchange (so each xdist worker computes the same schedule), then kept for
        the exchanges this process sends. Loop k > 0 of exchange i has the key i + k * stride."""
        from ..schedule.plan import PlannedRequest, stream_lanes
        from ..schedule.stages import loop_stages, stage_plan

        s = self.settings
        chosen = sorted(replayed, key=lambda e: (e.request_ts_ns, e.index))
        timestamps = [e.request_ts_ns for e in chosen]
        from .capacity import shard_share  # a shard's part of each stage's rate
        stages = shard_share(s.stages, self.share) or loop_stages(timestamps, speed=s.speed, rate=self.rate, loops=s.loop,
                                                                  duration_s=s.duration)
        try:
            self.stage_plan = stage_plan(timestamps, stages)
        except ValueError as exc:
            pytest.exit(f"--replay-stages: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        self.key_stride = max((e.index for e in self.collection.exchanges or ()), default=0) + 1
        sent_here = {e.index for e in planned}
        slots = stream_lanes(chosen)  # overlapping HTTP/2 streams side by side
        requests: dict[int, tuple] = {}
        plan = []
        for send in self.stage_plan.sends:
            exchange = chosen[send.position]
            if exchange.index not in sent_here:
                continue
            prepared = requests.get(exchange.index)
            if prepared is None:
                request = prepare(exchange)
                prepared = requests[exchange.index] = (request, wire(request))
            plan.append(PlannedRequest(exchange.index + send.loop * self.key_stride, send.offset_ns,
                                       slots.get(exchange.index, exchange.connection), prepared[0], prepared[1]))
        if self.stage_plan.loops > 1:
            self.notes.append(
                f"the capture was looped ({self.stage_plan.loops} passes begun): the requests of loops after the "
                "first are counted in the summary, the budgets and the evidence, and judged by no test item "
                "(each item judges its exchange's first pass)")
        return plan

    def capacity(self) -> dict:
        """Per stage: planned and achieved requests and rates, lateness; the stop condition that
        tripped, if one did (data for the summary and the evidence, merged across workers)."""
        sp, engine = self.stage_plan, self.engine
        if sp is None or engine is None:
            return {}
        from ..schedule.monitor import percentile, _bin
        from collections import Counter as _Counter
        t0 = engine.t0_ns or 0
        rows = []
        planned_counts = sp.planned()
        sent = [0] * len(sp.stages)
        errors = [0] * len(sp.stages)
        late = [_Counter() for _ in sp.stages]
        service = [_Counter() for _ in sp.stages]  # latency from send
        scheduled = [_Counter() for _ in sp.stages]  # response time from schedule (Observation.response_ns)
        in_window = [0] * len(sp.stages)  # sent during the stage's time (the achieved rate)
        after_end = 0
        for o in engine.observations():
            if o.error_kind in ("cancelled", "dropped"):
                continue
            i = sp.stage_of(o.deadline_ns - t0)
            sent[i] += 1
            at = o.sent_ns - t0
            if at >= sp.bounds_ns[-1]:
                after_end += 1
            else:
                in_window[sp.stage_of(at)] += 1
            if o.error_kind is not None or (o.response is not None and o.response.status >= 500):
                errors[i] += 1
            late[i][_bin(max(o.lateness_ns, 0))] += 1
            if o.response_ns is not None:
                scheduled[i][_bin(o.response_ns)] += 1
                service[i][_bin(o.response_ns - o.queued_ns)] += 1
        mine = [0] * len(sp.stages)
        for p in engine.plan:
            mine[sp.stage_of(p.offset_ns)] += 1
        stop = engine.halted
        for i, stage in enumerate(sp.stages):
            rows.append({"stage": i + 1, "pace": stage.label, "kind": stage.kind, "duration_s": stage.duration_ns / 1e9,
                         "start_s": sp.bounds_ns[i] / 1e9, "target_rate": round(sp.target_rate(i), 3),
                         "planned_all": planned_counts[i], "planned": mine[i], "sent": sent[i], "sent_in_stage": in_window[i], "errors": errors[i],
                         "not_sent": mine[i] - sent[i] if stop is not None else 0,
                         "lateness_p99_ms": round((percentile(late[i], 99) or 0) / 1e6, 3) if late[i] else None,
                         "service_p99_ms": round(percentile(service[i], 99) / 1e6, 3) if service[i] else None,
                         "scheduled_p99_ms": round(percentile(scheduled[i], 99) / 1e6, 3) if scheduled[i] else None})
        traffic = self.collection.shard_traffic
        data = {"stages": rows, "loops": sp.loops, "sent_after_the_end": after_end, "base_rate": round(sp.base_rate, 3), "stopped": None,
                "conditions": [str(c) for c in self.settings.abort_on], "window_s": self.settings.abort_window}
        if traffic is not None:
            data["traffic_share"] = {"share": round(self.share, 4), "exchanges": traffic[0], "of": traffic[1]}
        last = max((o.sent_ns for o in engine.observations() if o.error_kind not in ("cancelled", "dropped")),
                   default=None)
        if last is not None:  # how far the replay got (an interrupted run's evidence says so)
            i = sp.stage_of(last - t0)
            data["reached"] = {"stage": i + 1, "pace": sp.stages[i].label, "at_s": round((last - t0) / 1e9, 3),
                               "into_stage_s": round((last - t0 - sp.bounds_ns[i]) / 1e9, 3)}
        if self.sampler is not None and engine.t0_ns is not None:
            from ..http.sensitive import url_without_password
            self.sampler.stop()
            data["saturation"] = self.sampler.summary(engine.t0_ns, sp.bounds_ns, [st.label for st in sp.stages])
            if self.sampler.url:
                data["saturation"]["metrics_url"] = url_without_password(self.sampler.url)
                for failure in data["saturation"]["failures"]:
                    failure["source"] = url_without_password(failure["source"])
                    failure["first"] = self.redactor.text(failure["first"])
        if stop is not None:  # (the window ends at at_ns: one ending at a boundary judged the stage before it)
            i = sp.stage_of(max(stop.at_ns - 1, 0))
            data["stopped"] = {"condition": stop.condition, "measured": stop.measured, "at_s": stop.at_ns / 1e9,
                               "stage": i + 1, "into_stage_s": (stop.at_ns - sp.bounds_ns[i]) / 1e9,
                               "window_s": stop.window_s, "requests_in_window": stop.requests,
                               "in_flight_counted": stop.in_flight, "offered_rate": round(sp.rate_at(stop.at_ns), 3),
                               "measures": next((c.measures for c in self.settings.abort_on
                                                 if str(c) == stop.condition), None),
                               "tripped_on": stop.worker or None, "relayed": stop.relayed}
        return data

    def _barriers(self, planned: list[Exchange], exchanges, policy):
        """The ordering barriers of the writes this process sends (schedule/plan.py); a note when the
        capture's sent writes meet a split run, where barriers cannot reach the other processes."""
        from ..policy.writes import SEND
        from ..schedule.plan import write_barriers

        def sent_write(exchange: Exchange) -> bool:
            return policy.is_write(exchange) and policy.decide(exchange) == SEND

        # the whole capture's writes: a worker or shard without any races the writes of the others
        if self.split and any(sent_write(e) for e in exchanges if e.replayable):
            self.notes.append(
                "writes are sent: each is an ordering barrier (requests recorded after a write wait for it), "
                f"which cannot hold across {self.split}: a request replayed elsewhere may overtake a write it "
                "followed in the capture, and fail for that (one process, without -n or --replay-shard, keeps "
                "the order)")
        return write_barriers(planned, sent_write)

    def _pipeline(self, exchanges: list[Exchange], wire):
        """Hooks and middleware between a request's deadline and the wire, if the run has any."""
        from ..policy.middleware import Middleware
        from ..policy.pipeline import RequestPipeline

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
        if self.stream is not None:
            self.stream.stop()
        if self.judging is not None:  # (after the judge thread: it judged what the engine observed)
            self.judging.shutdown()
        if self.outbound is not None:
            self.outbound.stop()
        if self.sampler is not None:
            self.sampler.stop()

    @staticmethod
    def running() -> list[ReplayRun]:
        return list(_running)

    # -- waiting -----------------------------------------------------------------------------
    def wait_for_replay(self, engine) -> None:
        """--replay-judge after: the first item waits until the replay is over (with progress lines
        on a terminal), so pytest's item loop never competes with it."""
        while not engine.join(self.progress.interval):
            self.progress.write(engine, None)

    def wait(self, engine, key: int):
        """An item waits for its own observation, with progress lines while it waits (idle gaps of a
        long replay)."""
        while True:
            try:
                return engine.wait(key, timeout=self.progress.interval)
            except TimeoutError:
                self.progress.write(engine, key)

    # -- verdicts and counts -----------------------------------------------------------------
    def judge(self, exchange: Exchange, observation):
        judge = _judge or _import_judge()
        error = None if observation.ok else f"{observation.error_kind}: {observation.error}"
        blocked = self.outbound.failure(exchange.index, self.redactor.text) if self.outbound is not None else None
        error = error or blocked
        origins = self.origins(exchange) if self.origins is not None else None
        if self.differential is not None:
            from ..policy.writes import MOCK
            decision = self.decisions.get(exchange.index)
            judged = self.differential.judge(exchange, observation, self.diff_config, error,
                                             mocked=decision is not None and decision.action == MOCK,
                                             candidate_origins=self.origins)
            if judged is not None:
                return judged
        if self.judging is not None and not self.engine.finished:  # large differing bodies, while the engine
            # sends: in a judging process (session/judging.py); once it is done, here (no round trip)
            judged = self.judging.judge(exchange, observation.response, error=error,
                                        latency_ns=observation.latency_ns, origins=origins)
            if judged is not None:
                return judged
        return judge(exchange, observation.response, self.diff_config, self.redactor, error=error,
                     latency_ns=observation.latency_ns, origins=origins)

    def record(self, exchange: Exchange, observation, verdict, text: str = "") -> None:
        """Count an exchange; `text`: its rendered failure (an example of its failure group)."""
        decision = self.decisions.get(exchange.index)  # counted as decided when the request left
        column = decision.column if decision is not None else None
        self.aggregate.add(exchange, observation, verdict, write=column, why=decision.why.reason if column else None,
                           shown=text)
        if self.stream is None:  # (a streamed run judges each observation once: nothing to look up)
            self.counted.add(exchange.index)
        if verdict is not None and self.updates is not None:  # judged: sent, answered (mocked writes are not)
            self.updates.add(exchange, observation, verdict, self.engine)
        if verdict is not None and self.origins is not None and verdict.ignored:  # (Counter.update([]) costs)
            self.origin_counts.update(self.origins.treated(verdict.ignored))

    def skip(self, exchange: Exchange, reason: str, *, write: bool = False) -> None:
        self.skipped.append((exchange, reason))
        decision = self.decisions.get(exchange.index)  # a write not sent (dropped, skipped) is a skipped write
        why = decision.why.reason if decision is not None and decision.why.write else ""
        self.aggregate.skip(exchange, reason, write=write or bool(why), why=why)

    def count_unjudged(self) -> None:
        """Requests the replay sent but no item judged (an interrupted run): counted all the same,
        so the summary, the budgets and the evidence say what was done."""
        if self.engine is None or self.stream is not None:  # (a streamed run judged every observation)
            return
        by_index = {e.index: e for e in self.collection.exchanges or ()}
        stride = self.key_stride
        for observation in self.engine.observations():
            looped = stride and observation.key >= stride
            exchange = by_index.get(observation.key % stride if looped else observation.key)
            if looped and exchange is not None and observation.error_kind != "dropped":
                decision = self.decisions.get(exchange.index)
                column = decision.column if decision is not None else None
                self.aggregate.add(exchange, observation, None, write=column,
                                   why=decision.why.reason if column else None)
                continue
            if exchange is not None and observation.key not in self.counted and observation.error_kind != "dropped":
                self.record(exchange, observation, None)

    def noise_summary(self) -> dict:
        noise = self.diff_config.noise if self.diff_config is not None else None
        return noise.summary() if noise is not None and (noise.learned or noise.separated) else {}

    def _stopped(self, trip) -> dict:
        """RunResults.stopped: where a stop condition ended a replay without stages."""
        return {"condition": trip.condition, "measured": trip.measured, "at_s": round(trip.at_ns / 1e9, 3),
                "window_s": trip.window_s, "requests": trip.requests, "in_flight": trip.in_flight,
                "measures": next((c.measures for c in self.settings.abort_on if str(c) == trip.condition), None),
                "worker": trip.worker or None, "relayed": trip.relayed}

    def results(self) -> RunResults:
        """What this process did, merged with what other processes reported to it."""
        engine = self.engine
        own = RunResults(
            aggregate=self.aggregate, planned=engine.progress().planned if engine else 0,
            sent=(engine.completed if self.stream is not None else len(engine.observations())) if engine else 0,
            failures=([str(engine.failure)] if engine is not None and engine.failure is not None else [])
            + ([self.stream.error] if self.stream is not None and self.stream.error else [])
            + ([f"the capture could not be read to its end: {self.collection.error}; what was read before it "
                "was replayed"] if self.stream is not None and self.collection.error is not None else []),
            noise=self.noise_summary(), unused_allow=list(self.unused_allow),
            write_mode=self.write_policy.mode if self.write_policy else "",
            notes=self.collection.notes + self.notes + (self.judging.errors if self.judging is not None else []),
            empty_shard=self.collection.empty_shard,
            escaped=self.outbound.escaped() if self.outbound is not None else [],
            origins=dict(self.origin_counts), wall_s=engine.wall_s() if engine else None,
            locality=self.locality,
            baseline=self.differential.counts.to_dict() if self.differential is not None else {},
            baseline_aggregate=self.differential.aggregate.to_dict() if self.differential is not None else {},
            capacity=self.capacity())
        if engine is not None and engine.halted is not None and self.stage_plan is None:
            own.stopped = self._stopped(engine.halted)
        judge_bound = self.stream.judge_bound(own.wall_s) if self.stream is not None else None
        if judge_bound:
            own.notes.append(judge_bound)
        if engine is not None and engine.extra_connections:
            own.notes.append(f"--replay-connections spill: {engine.spilled} requests went out on "
                             f"{engine.extra_connections} extra connections, closed when their captured connection "
                             "had no more requests")
        return RunResults(notes=[]).merge(own).merge(self.remote)
