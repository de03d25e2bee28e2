"""A streamed replay: the capture is read twice and never held whole (issue 13).

Pass 1, at collection (`Index`): the capture is read once to make the items: a grouped item is a
descriptor (its connection, how many exchanges, its markers), a per-exchange item a capture reference
(file, offset, index) and its name; what the run needs from the whole capture is tallied on the way
in bounded state (the recorded hosts for the production guard, a bounded sample for noise learning,
the capture's time span, closed-loop bursts, a few incomplete exchanges for the evidence).

Pass 2, the run (`Stream`): a reader thread reads the capture again and feeds the engine planned
requests in deadline order through a bounded window (`Feed`, the engine's `PlanFeed`); each
observation goes to a judge thread, which judges it against its exchange, counts it in the
aggregate, spills a failure's text to a temporary file and tells the item waiting for it. An
exchange lives from its read to its verdict: at most WINDOW of them at a time, of which at most AHEAD
not in flight (read ahead, or waiting for the judge thread). What the run keeps
is what a report needs: the aggregate (histograms, counters), the noise model, and per item its
counts and the offsets of its failures in the spill file.

Runs that need the whole capture at once (xdist, endpoint groups, filters, capacity stages,
--replay-update, a baseline, request hooks or middleware, sent writes) are not streamed: the
Collection keeps today's path for them (`streamable`, `Stream.needs_whole_capture`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from ..http.message import Exchange
from ..http.normalize import endpoint_of, path_template
from ..http.units import ms, ms_number
from ..policy.guard import server_address
from ..policy.writes import SEND, SKIP, WriteCounts

WINDOW = 4096  # exchanges read and not yet judged, at most (read-ahead + in flight + waiting for a verdict)
AHEAD = 1024  # of them, not in flight, at most: read ahead of the engine, or answered and waiting for a verdict
WINDOW_BYTES = 64 << 20  # and their recorded messages' bytes, at most (beyond one exchange larger than that)
CHUNK = 256  # planned requests handed to the engine at once
NOISE_SAMPLE = 4096  # exchanges kept for noise learning, at most
NOISE_PER_REQUEST = 32  # of one (method, target): learn_noise's own max_samples
INCOMPLETE_EXAMPLES = 200  # incomplete exchanges kept for the evidence's examples
BURST_GAP_NS = 1_000_000  # capture/summary.py's closed-loop measure, tallied as the capture streams
BURST_RUN = 3
BURST_SHARE = 0.5
MAX_LISTED = 20  # exchanges, endpoints and templates an item lists


@dataclass(slots=True)
class Group:
    """What an item needs to know about its exchanges (one, or a connection's), without them."""

    key: object  # the connection (grouped), or the exchange index (per exchange)
    name: str
    file: str
    count: int = 0
    replayable: int = 0
    methods: set = field(default_factory=set)
    templates: set = field(default_factory=set)
    kinds: list = field(default_factory=list)  # write classifications (one per distinct one)
    reasons: set = field(default_factory=set)
    endpoints: dict = field(default_factory=dict)
    indexes: list = field(default_factory=list)  # the first MAX_LISTED
    source: str = ""
    lane: str = ""


class Index:
    """Pass 1: the items' descriptors and the run's bounded tallies, from one read of the capture."""

    def __init__(self, group: str, classify, item_name) -> None:
        self.group = group  # "connection" or "exchange"
        self.classify = classify  # request -> write Classification (after rewrites)
        self.item_name = item_name  # exchange -> per-exchange item name
        self.by_file: dict[str, dict] = {}  # file -> {key: Group}
        self.planned = 0
        self.hosts: dict[tuple, Exchange] = {}  # (Host, server address) -> one exchange: the guard's input
        self.noise_sample: list[Exchange] = []
        self._noise_seen: Counter = Counter()
        self.writes: list[Exchange] = []  # one per (method, template) of the capture's writes (the allowlist check)
        self._write_kinds: set = set()
        self.has_writes = False
        self.whole = False  # the run needs the whole capture (see _note)
        self.http2 = False  # some exchange was captured over HTTP/2
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.incomplete: list[Exchange] = []
        self._lanes: dict[str, list] = {}  # connection -> [last response ts, run length, server, last index]
        self.ends = bytearray()  # bit i: exchange i is the last of its connection (made by finish())
        self._in_bursts = 0  # requests in closed-loop runs of BURST_RUN or more (a sum: one int, whatever the length)
        self.max_index = -1

    def add(self, exchange: Exchange, file: str) -> None:
        request = exchange.request
        key = exchange.index if self.group == "exchange" else exchange.connection
        groups = self.by_file.get(file)
        if groups is None:
            groups = self.by_file[file] = {}
        sendable = not exchange.flags or exchange.sendable  # (a complete exchange: no property to ask)
        group = groups.get(key)
        if group is None:
            if self.group == "exchange":
                self._one(exchange, groups, file, sendable)
                return
            group = groups[key] = Group(key, f"connection {exchange.connection}", file, source=str(exchange.source),
                                        lane=exchange.connection)
        group.count += 1
        group.methods.add(request.method)
        if len(group.templates) < MAX_LISTED:
            group.templates.add(path_template(request.target))
        kind = self.classify(request)
        if kind not in group.kinds:
            group.kinds.append(kind)
        if sendable:
            group.replayable += 1
        else:
            group.reasons.update(exchange.why_not_sent)
        if len(group.endpoints) < MAX_LISTED:
            group.endpoints.setdefault(endpoint_of(request.method, request.target), None)
        if len(group.indexes) < MAX_LISTED:
            group.indexes.append(exchange.index)
        self._note(exchange, kind, sendable)

    def _one(self, exchange: Exchange, groups: dict, file: str, sendable: bool) -> None:
        """A per-exchange item's descriptor: tuples, not sets (there are as many as exchanges)."""
        request = exchange.request
        kind = self.classify(request)
        reasons = () if sendable else exchange.why_not_sent
        groups[exchange.index] = Group(
            exchange.index, self.item_name(exchange), file, 1, int(sendable), (request.method,),
            (path_template(request.target),), (kind,), reasons,
            {endpoint_of(request.method, request.target): None}, (exchange.index,), str(exchange.source),
            exchange.connection)
        self._note(exchange, kind, sendable)

    def _note(self, exchange: Exchange, kind, sendable: bool) -> None:
        """What every exchange adds to the whole capture's tallies."""
        if kind.write:
            self.has_writes = True
            request = exchange.request
            spot = (request.method, path_template(request.target))
            if spot not in self._write_kinds and len(self.writes) < 1000:
                self._write_kinds.add(spot)
                self.writes.append(exchange)
        protocol = exchange.request.protocol
        if protocol != "http/1" and (exchange.request.http2 or protocol == "malformed"):
            self.http2 = self.http2 or exchange.request.http2
            self.whole = True  # HTTP/2 streams share lanes and the target's HTTP version is chosen on them;
            # a malformed request goes only to a network target: both decided over the whole capture
        if sendable:
            self.planned += 1
        elif len(self.incomplete) < INCOMPLETE_EXAMPLES:
            self.incomplete.append(exchange)
        self.max_index = exchange.index
        self._tally(exchange)

    def _tally(self, exchange: Exchange) -> None:
        """The bounded state of the whole capture: hosts, time span, noise sample, bursts."""
        lane = self._lanes.get(exchange.connection)
        server = server_address(exchange.connection) if lane is None else lane[2]
        host = (recorded_host(exchange.request), server)
        if host not in self.hosts and len(self.hosts) < 10_000:
            self.hosts[host] = exchange
        for ts in (exchange.request_ts_ns, exchange.response_ts_ns):
            if ts is not None:
                self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
                self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        if len(self.noise_sample) < NOISE_SAMPLE:
            spot = (exchange.request.method, exchange.request.target)
            if self._noise_seen[spot] < NOISE_PER_REQUEST:
                self._noise_seen[spot] += 1
                self.noise_sample.append(exchange)
        if lane is None:
            self._lanes[exchange.connection] = [exchange.response_ts_ns, 1, server, exchange.index]
            return
        lane[3] = exchange.index
        answered = lane[0]
        if answered is not None and 0 <= exchange.request_ts_ns - answered <= BURST_GAP_NS:
            lane[1] += 1
        else:
            if lane[1] >= BURST_RUN:
                self._in_bursts += lane[1]
            lane[1] = 1
        lane[0] = exchange.response_ts_ns

    def finish(self) -> None:
        """The end of the read: close the bursts (the per-connection state goes)."""
        self._in_bursts += sum(run for _, run, _, _ in self._lanes.values() if run >= BURST_RUN)
        ends = self.ends = bytearray((self.max_index >> 3) + 1)
        for *_, last in self._lanes.values():
            ends[last >> 3] |= 1 << (last & 7)
        self._lanes.clear()
        self._noise_seen.clear()

    def ends_connection(self, index: int) -> bool:
        """Is exchange `index` the last its captured connection has (after finish())?"""
        ends = self.ends
        return (index >> 3) < len(ends) and bool(ends[index >> 3] & (1 << (index & 7)))

    def closed_loop(self, total: int) -> dict | None:
        in_bursts = self._in_bursts
        if not total or in_bursts < BURST_SHARE * total:
            return None
        return {"requests": in_bursts, "of": total, "connections": None, "gap_ms": ms_number(BURST_GAP_NS),
                "run": BURST_RUN}

    def time_span(self) -> list:
        """Two stand-ins carrying the capture's first and last timestamps (verdicts.clock.ClockNoise.of)."""
        if self.first_ts is None:
            return []
        return [_Span(self.first_ts), _Span(self.last_ts)]


def recorded_host(request) -> str | None:
    """`request.host` (the first Host header's value) without parsing the whole head, for pass 1's
    production-guard tally of every exchange: the one Host line of a plain head is cut out; anything
    else (no Host line or several lines starting "host", a folded value, a malformed or HTTP/2
    request) takes the reference, `request.host`. Tested against it (tests/test_stream.py)."""
    head = request.head
    lower = head.lower()
    at = lower.find(b"\nhost:")
    if at < 0 or request.protocol != "http/1" or lower.count(b"\nhost") != 1:
        return request.host
    end = head.find(b"\n", at + 6)
    if end < 0 or head[end + 1:end + 2] in (b" ", b"\t"):
        return request.host
    return head[at + 6:end].strip(b" \t\r").decode("latin-1")


@dataclass(frozen=True, slots=True)
class _Span:
    request_ts_ns: int
    response_ts_ns: int | None = None


class ItemState:
    """What the judge thread tells an item: how many of its exchanges are done, its failures (offsets in
    the spill file), why those not sent were not, and its own replayed time.

    A per-exchange run has one per item (100,000 items: 100,000 states), so it is small: no Event of
    its own until its item waits for it (`wait`; a threading.Event is ~1.2 KB: its Condition, lock and
    deque), empty tuples until there is something to hold."""

    __slots__ = ("expected", "done", "failures", "failed", "not_sent", "not_sent_count", "own_ns", "waiter",
                 "first_failure", "properties")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.done = 0
        self.failures: tuple[tuple[int, int], ...] = ()  # (offset, length) of the first 5 in the spill file
        self.failed = 0
        self.not_sent: str | None = None
        self.not_sent_count = 0
        self.own_ns = 0
        self.waiter: threading.Event | None = None  # made by wait(), set when the last exchange is done
        self.first_failure = None  # (exchange, observation, verdict) for --pdb only
        self.properties: tuple | list = ()  # a one-exchange item's JUnit properties (statuses, latencies)

    def finished_one(self) -> None:
        self.done += 1
        if self.done >= self.expected:
            self.release()

    def release(self) -> None:
        """Wake its item if it waits (the judge thread, or the run's end)."""
        waiter = self.waiter
        if waiter is not None:
            waiter.set()

    def wait(self, timeout: float) -> bool:
        """Until every exchange of the item is done (True) or `timeout` seconds pass (False). The
        judge thread counts `done` before it looks for the waiter, and the waiter is stored before
        `done` is read again: whichever comes second sees the other."""
        if self.done >= self.expected:
            return True
        waiter = self.waiter
        if waiter is None:
            waiter = self.waiter = threading.Event()
            if self.done >= self.expected:
                return True
        if not waiter.wait(timeout):
            return False
        self.waiter = None  # (done: the Event is not needed any more)
        return True


def short_read(capture, read: int, planned: int, first) -> str:
    """The error of a second read that ended before the exchanges pass 1 found (the file was cut or
    rewritten in between): how many came, and where the read stopped: the second read's first warning
    the first read did not have (`first`: its CaptureStats) names the file and offset, e.g. a record
    cut short; the files' names when there is none (the file was cut between two records)."""
    seen = {str(w) for w in first.warnings} if first is not None else set()
    new = [w for w in capture.stats.warnings if str(w) not in seen]
    where = f": {new[0]}" if new else \
        f" ({', '.join(map(str, capture.paths))}: no damage found; cut or rewritten at a record's end)"
    return (f"while streaming the replay: the capture changed since it was collected: its second read ended "
            f"after {read:,} of the {planned:,} exchanges the first found{where}")


class Skips:
    """`ReplayRun.skipped` in a streamed run: the first EXAMPLES (exchange, reason) pairs as they came,
    every later skip only counted by its reason, so that a run skipping millions of exchanges (writes
    skipped, requests dropped) does not keep them. Iterated (report.evidence's listing), it gives the
    kept pairs, then one shared {"reason": ...} per counted skip: the same counts, examples and order
    as the list of every pair gave."""

    EXAMPLES = 50  # report.evidence.MAX_EXAMPLES: the examples the evidence lists

    def __init__(self, pairs=()) -> None:
        self.kept: list = list(pairs)
        self.counted: dict[str, int] = {}  # reason -> skips beyond the kept ones

    def append(self, pair) -> None:
        if len(self.kept) < self.EXAMPLES:
            self.kept.append(pair)
        else:
            reason = str(pair[1])
            self.counted[reason] = self.counted.get(reason, 0) + 1

    def __len__(self) -> int:
        return len(self.kept) + sum(self.counted.values())

    def __bool__(self) -> bool:
        return bool(self.kept)

    def __iter__(self):
        yield from self.kept
        for reason, count in self.counted.items():
            stand_in = {"reason": reason}
            for _ in range(count):
                yield stand_in


def properties(exchange: Exchange, observation) -> list:
    """A one-exchange item's JUnit properties: a number or "" each."""
    recorded = exchange.response
    return [
        ("recorded_status", recorded.status if recorded else ""),
        ("replayed_status", observation.response.status if observation.response else ""),
        *((name, ms(ns, missing="", unit="")) for name, ns in (
            ("recorded_latency_ms", exchange.recorded_latency_ns),
            ("replayed_latency_ms", observation.latency_ns),
            ("lateness_ms", observation.lateness_ns))),
    ]


class LockedWriteCounts(WriteCounts):
    """policy.writes.WriteCounts counted from two threads (the engine's and the judge's)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, item, decision: str, n: int = 1) -> None:
        with self._lock:
            super().add(item, decision, n)


class Slots:
    """A counting semaphore on a SimpleQueue of tokens: acquire and release are one C-level call each,
    where threading.Semaphore takes a Python Condition (a lock, a with-block, a notify) on both: the
    reader acquires and the judge thread releases once per exchange, contending for the interpreter."""

    def __init__(self, value: int) -> None:
        self._tokens: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(value):
            self._tokens.put(None)
        self.release = functools.partial(self._tokens.put, None)  # (a C call: no Python frame)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        try:
            self._tokens.get(blocking, timeout)
        except queue.Empty:
            return False
        return True


class Feed:
    """The engine's PlanFeed: planned requests read ahead by a reader thread, in chunks, through a
    queue of bounded size; `slots` bounds the exchanges alive between read and verdict."""

    def __init__(self, planned: int, keys) -> None:
        self.planned = planned
        self._keys = keys  # key -> planned? (a callable)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.slots = Slots(WINDOW)
        self._loop = None
        self._waiter: asyncio.Future | None = None
        self._lock = threading.Lock()
        self.closed = False

    def planned_key(self, key: int) -> bool:
        return self._keys(key)

    def take(self):
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            return []

    def ready(self, loop) -> asyncio.Future:
        with self._lock:
            self._loop = loop
            fut = self._waiter = loop.create_future()
            if not self.queue.empty():
                fut.set_result(None)
        return fut

    def put(self, chunk) -> None:
        """A chunk (or None: the end) from the reader thread; wakes the dispatcher if it waits."""
        self.queue.put(chunk)
        with self._lock:
            loop, fut = self._loop, self._waiter
            self._waiter = None
        if fut is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # the loop is closed: the run is over
                pass


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class Stream:
    """Pass 2: reader thread -> engine -> judge thread, each exchange alive only between read and verdict."""

    def __init__(self, run, index: Index, selected, plan_one, open_capture) -> None:
        self.run = run
        self.index = index
        self.selected = selected  # item key -> ItemState, for the items that run here
        self.plan_one = plan_one  # (exchange, offset) -> PlannedRequest | None (None: not sent, already counted)
        self.open_capture = open_capture  # () -> Capture (the same files, read again)
        self.pending: dict[int, Exchange] = {}
        self._slots_of: dict[int, int] = {}  # exchange index -> its window slots, where more than one (cost())
        self.judged: queue.SimpleQueue = queue.SimpleQueue()
        self.spill = tempfile.TemporaryFile(prefix="pytest-replay-failures-")
        self._spill_lock = threading.Lock()
        self.error: str | None = None  # the capture could not be read again (named file and offset)
        self.stopping = threading.Event()
        self.feed = Feed(sum(s.expected for s in selected.values()), self._planned)
        self.fed = 0  # exchanges the reader planned (reader thread)
        self.done = 0  # of them, judged (judge thread)
        self._caught_up = threading.Event()  # set by the judge thread for a reader waiting in _behind()
        self._reader_waits = False
        self.judge_wait_ns = 0  # of the reader's waits, the time the judge thread was busy: it set the pace
        self.judge_idle_ns = 0  # the judge thread's time waiting for observations (judge thread)
        self._idle_since: int | None = None  # when its current wait began (None: judging)
        self._unit = max(WINDOW_BYTES // WINDOW, 1)  # bytes per slot beyond an exchange's first
        self.reader: threading.Thread | None = None
        self.judge_thread: threading.Thread | None = None
        self.finished = threading.Event()  # every exchange read was judged or counted
        self.pdb = bool(run.config.option.usepdb)
        self.recorded = None  # targets.mock.RecordedWrites: mocked writes' recorded responses, while in flight
        self._stopped = False
        run.skipped = Skips(run.skipped)  # (every skip counted, the first few kept: not every exchange)

    def _planned(self, key: int) -> bool:
        return True  # every selected exchange is planned; the feed decides which are sent

    def cost(self, exchange: Exchange) -> int:
        """The window's slots an exchange takes between its read and its verdict: one, and one more per
        WINDOW_BYTES / WINDOW bytes of its recorded request and response (16 KiB by default), at most
        the whole window: WINDOW exchanges of any size would hold WINDOW times their bodies (4,096
        exchanges of 1 MB: 4 GB recorded, as much again replayed), this way at most ~WINDOW_BYTES
        (or one exchange larger than that, alone)."""
        response = exchange.response
        size = len(exchange.request.raw) + (len(response.raw) if response is not None else 0)
        return min(1 + size // self._unit, WINDOW)

    def ahead(self) -> int:
        """Exchanges read and not in flight: read ahead of the engine, or answered and not yet judged
        (fed, judged, sent and completed are each counted by one thread; read here, as ints, from any).
        A request cancelled before it was sent is completed and never sent: the engine's in-flight
        count is taken at 0 at least, so the figure errs high (the reader waits longer), never below
        what is held, and falls to 0 once everything fed is judged."""
        engine = self.run.engine
        in_flight = max(0, engine.sent - engine.completed) if engine is not None else 0
        return self.fed - self.done - in_flight

    def judge_bound(self, wall_s: float | None) -> str | None:
        """The run's note when the reader waited for verdicts a tenth of the replay's wall time or more:
        judging, not the engine nor the target, set the pace of those stretches (at --speed 0, the rate
        the target saw is the replayer's)."""
        waited = self.judge_wait_ns / 1e9
        if not wall_s or waited < 0.1 * wall_s:
            return None
        return (f"judging was the slowest stage for {waited:.1f} s of the replay's {wall_s:.1f} s: the reader "
                f"waited for verdicts ({AHEAD:,} exchanges answered or read ahead and not yet judged), so the "
                "target got fewer requests per second than the engine could send (at --speed 0: the "
                "throughput is the replayer's, not the target's)")

    def _behind(self) -> bool:
        """The reader waits while AHEAD exchanges are held out of flight, until half of them are gone
        (False: the run stops). They are held because the engine has not sent them yet (a schedule read
        ahead, connections busy) or because the judge thread has not judged them yet: the time of the
        wait the judge thread spent judging, not waiting for observations, is counted (`judge_wait_ns`:
        judging set the pace)."""
        started, idle = time.perf_counter_ns(), self._judge_idle()
        self._reader_waits = True
        try:
            while True:
                self._caught_up.clear()  # (before the look: a wake-up after it is not lost)
                if self.ahead() <= AHEAD // 2 or self.stopping.is_set():
                    break
                self._caught_up.wait(0.05)  # (the judge thread wakes it; the timeout covers sends alone)
        finally:
            self._reader_waits = False
            self.judge_wait_ns += max(0, time.perf_counter_ns() - started - (self._judge_idle() - idle))
        return not self.stopping.is_set()

    def _judge_idle(self) -> int:
        """The judge thread's idle time so far, its current wait included."""
        since = self._idle_since
        return self.judge_idle_ns + (time.perf_counter_ns() - since if since is not None else 0)

    def key_of(self, exchange: Exchange):
        return exchange.index if self.index.group == "exchange" else exchange.connection

    # -- threads ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.judge_thread = threading.Thread(target=self._judge_main, name="pytest-replay-judge", daemon=True)
        self.judge_thread.start()
        self.reader = threading.Thread(target=self._read_main, name="pytest-replay-reader", daemon=True)
        self.reader.start()

    def settle(self) -> None:
        """The engine is done: judge what it observed, then release the items still waiting."""
        self.stop()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        self.feed.slots.release()  # (a reader waiting for a slot sees the stop)
        if self.reader is not None:
            self.reader.join(5)
        self.judged.put(None)
        if self.judge_thread is not None:
            self.judge_thread.join(10)
        self._release_all()

    def _read_main(self) -> None:
        from ..capture import CaptureError
        feed, selected, slots = self.feed, self.selected, self.feed.slots
        chunk: list = []
        offsets = self.run.offsets()
        ends_connection = self.index.ends_connection
        read = 0  # the selected exchanges read: pass 1 found feed.planned of them
        try:
            capture = self.open_capture()
            for exchange in capture:
                if self.stopping.is_set():
                    break
                state = selected.get(self.key_of(exchange))
                if state is None or not exchange.sendable:
                    continue
                read += 1
                if self.fed - self.done >= AHEAD and self.ahead() >= AHEAD:
                    if chunk:  # what is read goes to the engine before waiting
                        feed.put(chunk)
                        chunk = []
                    if not self._behind():
                        return
                need = self.cost(exchange)
                for _ in range(need):
                    if slots.acquire(blocking=False):
                        continue
                    if chunk:  # the window is full: what is read goes to the engine before waiting
                        feed.put(chunk)
                        chunk = []
                    while not slots.acquire(timeout=0.2):
                        if self.stopping.is_set():
                            return
                if self.stopping.is_set():
                    return
                planned = self.plan_one(exchange, offsets(exchange.request_ts_ns))
                if planned is None:  # not sent (skipped write): counted, the item told
                    for _ in range(need):
                        slots.release()
                    continue
                self.pending[exchange.index] = exchange
                self.fed += 1
                if need > 1:
                    self._slots_of[exchange.index] = need
                if ends_connection(exchange.index):  # its lane ends once it is answered (one per connection)
                    planned = replace(planned, last=True)
                chunk.append(planned)
                if len(chunk) >= CHUNK:
                    feed.put(chunk)
                    chunk = []
            if read < feed.planned and not self.stopping.is_set() and self.run.collection.error is None:
                self.error = short_read(capture, read, feed.planned, self.run.collection.stats)
        except CaptureError as exc:  # damaged where pass 1 stopped (reported), or changed since
            if self.run.collection.error is None:
                self.error = f"while streaming the replay: {exc}"
        except BaseException as exc:  # noqa: BLE001 - the run must end, and say why
            self.error = f"while streaming the replay: {type(exc).__name__}: {exc}"
        finally:
            if chunk:
                feed.put(chunk)
            feed.put(None)

    def observe(self, observation) -> None:
        """The engine's observer (engine thread): hand the observation to the judge thread."""
        self.judged.put(observation)

    def _judge_main(self) -> None:
        run, judged = self.run, self.judged
        while True:
            try:
                observation = judged.get_nowait()
            except queue.Empty:  # idle: timed (the reader's waits count only what the judge was busy for)
                self._idle_since = since = time.perf_counter_ns()
                observation = judged.get()
                self._idle_since = None
                self.judge_idle_ns += time.perf_counter_ns() - since
            if observation is None:
                break
            if type(observation) is tuple:  # ("skip", exchange, decision): a write the reader did not plan
                self._skipped(*observation[1:])
                continue
            exchange = self.pending.pop(observation.key, None)
            if exchange is None:
                continue
            try:
                self._judge_one(run, exchange, observation)
            except BaseException as exc:  # noqa: BLE001 - a judging bug fails the run, not the thread
                self.error = self.error or f"judging exchange #{exchange.index}: {type(exc).__name__}: {exc}"
            finally:
                run.decisions.pop(exchange.index, None)
                if self.recorded is not None:
                    self.recorded.responses.pop(exchange.index, None)
                release = self.feed.slots.release
                release()
                for _ in range(self._slots_of.pop(exchange.index, 1) - 1):  # (cost() taken again: 3% of the thread)
                    release()
                self.done += 1
                if self._reader_waits and self.ahead() <= AHEAD // 2:
                    self._caught_up.set()
                state = self.selected.get(self.key_of(exchange))
                if state is not None:
                    state.finished_one()

    def _judge_one(self, run, exchange: Exchange, observation) -> None:
        state = self.selected[self.key_of(exchange)]
        if observation.error_kind != "cancelled":
            state.own_ns += observation.total_ns
        if observation.error_kind == "cancelled" or observation.error_kind == "dropped":
            why = observation.error or "not sent"
            run.skip(exchange, "dropped" if observation.error_kind == "dropped" else why)
            self.not_sent(state, why)
            return
        decision = run.decisions.get(exchange.index)
        if decision is not None and decision.action != SEND:
            run.record(exchange, observation, None)
            self.not_sent(state, decision.not_sent())
            return
        verdict, text = run.judge(exchange, observation)
        run.record(exchange, observation, verdict, text)
        if state.expected == 1:
            state.properties = properties(exchange, observation)
        if not verdict.passed:
            state.failed += 1
            if len(state.failures) < 5:
                state.failures += (self._spill(text),)
            if self.pdb and state.first_failure is None:
                state.first_failure = (exchange, observation, verdict)

    def not_sent(self, state: ItemState, why: str) -> None:
        state.not_sent_count += 1
        if state.not_sent is None:
            state.not_sent = why

    def _skipped(self, exchange: Exchange, decision) -> None:
        """A write the policy skips (--replay-writes skip): counted, its item told it was not sent."""
        run = self.run
        try:
            run.write_counts.add(exchange, SKIP)
            run.decisions[exchange.index] = decision
            run.skip(exchange, "write skipped (--replay-writes skip)", write=True)
        finally:
            run.decisions.pop(exchange.index, None)
            state = self.selected.get(self.key_of(exchange))
            if state is not None:
                self.not_sent(state, decision.not_sent())
                state.finished_one()

    def _spill(self, text: str) -> tuple[int, int]:
        data = text.encode("utf-8", "replace")
        with self._spill_lock:
            self.spill.seek(0, os.SEEK_END)
            offset = self.spill.tell()
            self.spill.write(data)
        return offset, len(data)

    def failure_text(self, where: tuple[int, int]) -> str:
        with self._spill_lock:
            self.spill.seek(where[0])
            return self.spill.read(where[1]).decode("utf-8", "replace")

    def _release_all(self) -> None:
        """The run is over: items still waiting learn that their exchanges were not sent."""
        why = "not sent: the replay was stopped" if self.error is None else f"not sent: {self.error}"
        for state in self.selected.values():
            if state.done < state.expected:
                missing = state.expected - state.done
                state.not_sent_count += missing
                state.not_sent = state.not_sent or why
                state.done = state.expected
            state.release()
        self.finished.set()

    def close(self) -> None:
        try:
            self.spill.close()
        except OSError:
            pass
