#!/usr/bin/env python
"""Scale benchmark (issue 13): peak memory and wall time of big replays, beside references measured in the same run.

    python bench/bench_scale.py [--quick] [--pcap FILE] [--keep DIR] [--skip-gor] [--gor-sizes N,N] [--skip-items]

(a) A recorded keep-alive capture: tcpdump on lo while wrk (-c 8 -t 1, GET /item.json only, a 300-byte JSON
    file) drives nginx, like bench_capture.py records its pcap (614k packets, ~307k exchanges; 60k with
    --quick). Replayed with `pytest --replay PCAP --replay-target NGINX --speed 0 --replay-group connection`
    against an nginx serving the same file: the pytest process's wall time and peak RSS (ru_maxrss of the
    child, from wait4), and the replay span (evidence run.wall_s). References, in the same run:
    `python -m pytest_replay inspect PCAP` (wall, peak RSS) and an engine-only replay (a child reads the
    capture untimed, builds the plan, runs schedule.engine.Engine against schedule's RawTarget: t0 to the
    last response). Targets: peak RSS <= 250 MB; pytest wall <= 1.5x the replay span; the reference
    "inspect + engine-only" printed beside it. The children keep compiled modules in a cache under the
    work directory, warmed by one untimed replay, as an installed package has them (`--no-bytecode`: every
    child compiles every module, and pytest assertion-rewrites the plugin's, at each start). Beside it, for where the rest of the wall goes: the same
    pytest with `--collect-only` (start-up, pass 1, the items; nothing replayed).
(b) A generated .gor (3M exchanges; 300k with --quick) of the same GET on 200 connections whose recorded
    responses are what nginx answers (bench_plugin.py's generator): the same replay. Target: peak RSS within
    10% of (a)'s (flat), and the same wall/span ratio. `--gor-sizes 300000,1000000,3000000`: a row per size;
    `--gor-connections 8,200`: a row per number of connections (8 is (a)'s: the same traffic at 10x the
    exchanges, what "flat" asks; 200 adds the cost of more connections).
(c) 100,000 per-exchange items (10k with --quick): `--collect-only` and the run of a .gor of that many
    exchanges, beside bare pytest with as many trivial parametrized items. Target: within 1.3x of bare.
    Printed beside the run (info): its wall without the replay span (evidence run.wall_s), which is what
    pytest's item loop and the plugin's per-item work cost beside bare pytest's.
(d) The judge thread's cost per exchange (a passing small exchange, and a failing one): compare() alone,
    judge(), record() (Aggregate.add alone, the verdict judged beforehand), and the whole step
    (Stream._judge_one: origins, ReplayRun.judge and .record into the aggregate); target <= 40 us for the passing step. `--judge-against DIR` measures the same on another checkout's package
    (a `git archive` of the base) in alternation, the best of 3 children each.
    Whether a process pool pays for judging: one response's judging (verdicts.diff.compare) beside
    pickling its exchange and response to another process and back, 300 B / 20 KB / 200 KB JSON bodies,
    identical and with one value changed. Printed, not judged (`--only-judge`: this part alone).

Figures are ratios to references measured in the same run: the machine may be loaded (say so when you quote
them). Needs root, nginx, tcpdump and wrk to record (or --pcap FILE). Stdlib plus the project only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_capture  # noqa: E402 - the recorder
import bench_plugin  # noqa: E402 - the .gor generator
from _common import cpu_model, log, start_nginx, stop  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = {"packets": 614_000, "gor": 3_000_000, "items": 100_000}
QUICK = {"packets": 60_000, "gor": 300_000, "items": 10_000}
TARGET_RSS_MB = 250
TARGET_RATIO = 1.5
TARGET_FLAT = 0.10
TARGET_ITEMS = 1.3
ROUNDS = 3  # (d): children per checkout, alternated
TARGET_JUDGE_US = 40  # a passing small exchange judged and recorded by the judge thread
WRK_LUA = 'request = function() return wrk.format("GET", "/item.json") end\n'
ITEM = bench_capture.json_blob(300, 1)  # what record_pcap serves as /item.json
MTIME = 1_700_000_000.0


class _Done(Exception):
    """--only-judge: nothing else to measure."""


BYTECODE = {"cache": None}  # where the children keep compiled modules (None: they compile every start)


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    if BYTECODE["cache"]:  # as an installed package runs: pip compiles it, pytest caches its rewritten plugin
        out.pop("PYTHONDONTWRITEBYTECODE", None)
        out["PYTHONPYCACHEPREFIX"] = BYTECODE["cache"]  # (not beside the checkout's sources)
    else:
        out["PYTHONDONTWRITEBYTECODE"] = "1"
    out["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    return out


def measure(cmd: list[str], cwd: str) -> dict:
    """Run a child: wall seconds, peak RSS (MB, its own ru_maxrss via wait4), exit code, output."""
    out = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read().decode(errors="replace")
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "ret": proc.returncode, "out": text}


def pytest_replay(capture: str, url: str, workdir: str, name: str, extra: list[str]) -> dict:
    directory = os.path.join(workdir, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--replay", capture,
           "--replay-target", url, "--speed", "0", "--replay-report", "report", *extra]
    run = measure(cmd, directory)
    if run["ret"] != 0:
        raise RuntimeError(f"{name}: pytest exit {run['ret']}\n{run['out'][-3000:]}")
    with open(os.path.join(directory, "report", "replay-evidence.json"), encoding="utf-8") as f:
        evidence = json.load(f)
    run["span"] = evidence["run"]["wall_s"]
    run["requests"] = evidence["errors"]["requests"]
    run["failed"] = evidence["diff"]["failed"]
    return run


def collect_only(capture: str, url: str, workdir: str, name: str, extra: list[str]) -> dict:
    """`pytest --replay CAPTURE --collect-only`: start-up, pass 1 and the items, nothing replayed."""
    directory = os.path.join(workdir, name)
    os.makedirs(directory, exist_ok=True)
    return measure([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--replay", capture,
                    "--replay-target", url, "--collect-only", *extra], directory)


ENGINE_CHILD = """
import sys, time
from pytest_replay.capture import Capture
from pytest_replay.schedule.engine import Engine
from pytest_replay.schedule.plan import Timing, build_plan
from pytest_replay.targets.raw import RawTarget
target = RawTarget(sys.argv[2])
plan = build_plan(list(Capture([sys.argv[1]])), Timing(speed=0), wire=target.wire)
engine = Engine(plan, target, concurrency=64)
engine.start()
engine.stop()
print("SPAN", engine.wall_s(), len(plan), engine.errors)
"""


def engine_only(capture: str, url: str, workdir: str) -> float:
    run = measure([sys.executable, "-c", ENGINE_CHILD, capture, url], workdir)
    line = [ln for ln in run["out"].splitlines() if ln.startswith("SPAN")]
    if run["ret"] != 0 or not line:
        raise RuntimeError("engine-only replay failed: " + run["out"][-2000:])
    return float(line[0].split()[1])


def record(path: str, packets: int, workdir: str) -> dict:
    bench_capture.WRK_LUA = WRK_LUA  # only the small file: like the capture (~2 packets per exchange)
    seconds = max(2, packets // 2 // 25_000 + 2)
    for buffer_kib in (262_144, 524_288):
        log(f"recording {packets:,} packets: nginx + tcpdump -B {buffer_kib} + wrk -c 8 -t 1 -d {seconds}s")
        facts = bench_capture.record_pcap(path, packets, seconds, workdir, buffer_kib)
        if not facts["dropped"]:
            return facts
    return facts


def gor(path: str, n: int, connections: int = bench_plugin.LANES) -> dict:
    """n exchanges of GET /item.json on `connections` connections, recorded as nginx answers them."""
    def exchange(rng: random.Random, ts: int) -> tuple[bytes, bytes, int]:
        request = (b"GET /item.json HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: wrk\r\n"
                   b"Accept: application/json\r\n\r\n")
        latency = int(rng.lognormvariate(12.9, 0.5))
        return request, bench_plugin.nginx_response(ITEM, "application/json", MTIME, (ts + latency) / 1e9), latency

    return bench_plugin.write_gor(path, n, connections, 3, 20_000, exchange)


def bare(workdir: str, n: int, collect_only: bool) -> dict:
    directory = os.path.join(workdir, "bare")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "test_bare.py"), "w") as f:
        f.write(f"import pytest\n\n\n@pytest.mark.parametrize('i', range({n}))\ndef test(i):\n    pass\n")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_bare.py"]
    return measure(cmd + (["--collect-only"] if collect_only else []), directory)


def judge_costs() -> list[tuple[str, str, str]]:
    """(d) Does a process pool pay for judging? The cost of judging one response (verdicts.diff.compare)
    beside the cost of shipping its exchange and response to another process (pickle + unpickle), for
    small and large JSON bodies, identical and with one value changed (the JSON diff then runs)."""
    import pickle

    from pytest_replay.http.message import Exchange, Request, Response, Source
    from pytest_replay.verdicts.diff import DiffConfig, compare

    def pair(body: bytes, other: bytes):
        headers = ((b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode()))
        request = Request.build("GET", "/item.json", ((b"Host", b"shop.example"),))
        exchange = Exchange(0, request, Response.build(200, "OK", headers, body), 1, 2, "c", 0, Source("f", 0, 0, ()))
        return exchange, Response.build(200, "OK", headers, other)

    def per_call(fn, make, budget_s: float = 1.0) -> float:
        calls, spent = 0, 0.0
        while spent < budget_s and calls < 2000:
            args = make()
            start = time.perf_counter()
            fn(*args)
            spent += time.perf_counter() - start
            calls += 1
        return spent / calls

    config = DiffConfig()
    rows = []
    for size in (300, 20_000, 200_000):
        body = bench_capture.json_blob(size, 1)
        for kind, other in (("identical", body), ("one value changed", body.replace(b'"count": ', b'"count": 1'))):
            judge = per_call(lambda e, r: compare(e.response, r, config, exchange=e, latency_ns=1, recorded_latency_ns=1),
                             lambda: pair(body, other))
            ship = per_call(lambda e, r: pickle.loads(pickle.dumps((e, r), protocol=5)), lambda: pair(body, other))
            rows.append((f"(d) judge {len(body):,} B JSON, {kind}", f"{judge * 1e6:,.0f} us",
                         f"pickle + unpickle to a process {ship * 1e6:,.0f} us: a pool "
                         + ("pays" if judge > 2 * ship else "does not pay")))
    return rows


JUDGE_CHILD = """
import json, os, sys
# the package of the checkout asked for (sys.argv[2]), not an editable install's (its finder comes first)
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "") + repr(f)]
sys.path[:0] = [sys.argv[2], sys.argv[1]]
import pytest_replay
assert os.path.dirname(os.path.dirname(os.path.abspath(pytest_replay.__file__))) == sys.argv[2], pytest_replay.__file__
from bench_scale import judge_record_figures
print("FIGURES", json.dumps(judge_record_figures()))
"""


def judge_record_figures(kinds: tuple[str, ...] = ("passing", "failing"), n: int = 8192, n_failing: int = 1000) -> dict:
    """(d) What the judge thread of a streamed run spends on one exchange, in microseconds: compare()
    alone, judge() (compare, the failure text masked), and the whole step of the judge thread
    (session.stream.Stream._judge_one: the origins resolved, ReplayRun.judge and .record into the
    aggregate), for a passing small exchange and for a failing one (another body, a token in the query
    and a Bearer header: the failure text is rendered and masked).

    As in bench (a)'s run (`--speed 0 --replay-group connection`, wrk's capture of nginx, 8 connections):
    wrk's request (`GET /item.json`, Host the recorded nginx's address); nginx's answers (Server, Date,
    Content-Type, Content-Length, Last-Modified, Connection: keep-alive, ETag, Accept-Ranges: the Date
    differs between the recording and the replay, the ETag and Last-Modified do not); the messages shared
    as the run shares them (the capture's framer hands out the same message for the same bytes, the
    target's framer the same response for the same head and body: one recorded response per second of
    the capture, ~25,000 exchanges, one replayed per second of the replay, ~10,000) with their header
    pairs parsed, as the run's first lookups leave them; the observations of a replay at --speed 0 (every
    deadline t0: lateness grows through the run, most of it waiting for the connection's previous response,
    the rest the engine's); the origins as the run resolves them (a RawTarget's sent Host and URL); a
    judging pool as the run has one (`auto`: not started, asked per exchange); `n` passing exchanges a round,
    twice the report's PENDING values, so that each histogram folds its pending values into its buckets as
    often as in a run (3,000 before: never within the timed loop). The configuration is the
    plugin's default: learned noise, clock noise, origins `same`, a keyed Redactor. Only APIs that exist
    at the base commit are used, so that the same function measures another checkout (`--judge-against DIR`)."""
    import functools
    import queue
    import time as _time
    from types import SimpleNamespace

    from pytest_replay.http.parser import fast_message
    from pytest_replay.http.message import Exchange, Source
    from pytest_replay.policy.redact import Redactor
    from pytest_replay.policy.writes import WritePolicy
    from pytest_replay.report.aggregate import Aggregate
    from pytest_replay.schedule.target import Observation
    from pytest_replay.session.judging import JudgePool
    from pytest_replay.session.run import ReplayRun
    from pytest_replay.session.stream import Index, ItemState, Stream
    from pytest_replay.targets.raw import RawTarget
    from pytest_replay.verdicts.clock import ClockNoise
    from pytest_replay.verdicts.diff import DiffConfig, compare, learn_noise
    from pytest_replay.verdicts.judge import judge
    from pytest_replay.verdicts.origin import OriginResolver

    mtime, t0 = MTIME, 1_765_000_000.0
    query = "?q=shoes&api_key=sk_live_51abcdefghijklmnop"
    recorded_per_s, replayed_per_s = 25_000, 10_000  # exchanges per second: recorded with wrk, replayed
    shared: dict = {}  # bytes -> the one message made of them (the framers' sharing), for one round

    def message(data: bytes, is_request: bool):
        found = shared.get(data)
        if found is None:
            found = shared[data] = fast_message(data, is_request, None if is_request else "GET")
            found.headers  # noqa: B018 - parsed, as the run's first lookups leave a shared message
        return found

    def request(target: str = "/item.json") -> bytes:
        if target == "/item.json":  # wrk's request
            return b"GET /item.json HTTP/1.1\r\nHost: 127.0.0.1:40123\r\n\r\n"
        return (f"GET {target} HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: wrk\r\n"
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl\r\n\r\n").encode()

    def exchange(i: int, target: str = "/item.json", body: bytes = ITEM):
        at = t0 + i / recorded_per_s
        ts = int(at * 1e9)
        req = message(request(target), True)
        resp = message(bench_plugin.nginx_response(body, "application/json", mtime, int(at)), False)
        return Exchange(i, req, resp, ts, ts + 200_000, f"10.0.0.1:{40000 + i % 8} -> 10.0.0.2:80", i // 8,
                        Source("bench.pcap", i * 600, i, ()))

    def replayed(i: int, body: bytes = ITEM):  # nginx's answer during the replay: another Date
        return message(bench_plugin.nginx_response(body, "application/json", mtime, int(t0 + 3600 + i / replayed_per_s)),
                       False)

    sample = [exchange(i) for i in range(64)]
    shared.clear()
    redactor = Redactor(key="bench")
    config = DiffConfig(noise=learn_noise(sample), clock=ClockNoise.of(sample, _time.time_ns(), _time.time_ns),
                        redactor=redactor)
    url = "http://127.0.0.1:8080"
    origins = OriginResolver(RawTarget(url).sent_host, url, ())
    policy = WritePolicy(mode="mock")  # the plugin's default against a network target

    def make_run():
        run = ReplayRun.__new__(ReplayRun)
        run.redactor, run.diff_config, run.origins = redactor, config, origins
        run.outbound = run.differential = run.updates = None
        run.judging = JudgePool(1, config, redactor, eager=False)  # ('auto': started by the first large body)
        run.engine = SimpleNamespace(finished=False)
        run.decisions, run.aggregate, run.counted = {}, Aggregate(), set()
        from collections import Counter
        run.origin_counts = Counter()
        stream = Stream.__new__(Stream)
        stream.index = Index("connection", None, None)
        stream.selected = {}
        stream.pdb = False
        import tempfile as _tempfile, threading as _threading
        stream.spill, stream._spill_lock = _tempfile.TemporaryFile(), _threading.Lock()
        # what Stream.__init__ sets for the reader's bound out of flight (AHEAD; harmless on a checkout before it)
        stream.fed = stream.done = stream.judge_idle_ns = stream.judge_wait_ns = 0
        stream._reader_waits, stream._idle_since, stream._caught_up = False, None, _threading.Event()
        run.stream = stream
        return run, stream

    def observation(i: int, response):
        """At --speed 0: every deadline t0; request i sent ~110 us after the one before (the lead's run:
        30k exchanges in 3.3 s), most of its lateness spent waiting for its connection (8 of them)."""
        sent = 110_000 * i + 40_000
        latency = 150_000 + (i * 7919) % 100_000
        return Observation(i, 0, sent, sent + latency, sent + latency + 20_000, response,
                           lane_wait_ns=(sent * 6) // 10 + (i % 5) * 1000)

    def timed(fresh, step, prepare=None) -> float:
        """Microseconds per call of step(exchange, response, i) over fresh pairs (made anew each round,
        shared and parsed as in a run), the best of 3 rounds."""
        best = None
        for _ in range(3):
            shared.clear()
            pairs = fresh()
            if prepare is not None:
                prepare(pairs)
            start = _time.perf_counter()
            for i, (e, r) in enumerate(pairs):
                step(e, r, i)
            per = (_time.perf_counter() - start) / len(pairs) * 1e6
            best = per if best is None else min(best, per)
        return best

    out = {}
    for kind in kinds:
        def fresh(kind=kind):
            if kind == "passing":
                return [(exchange(i), replayed(i)) for i in range(n)]
            return [(exchange(i, "/item.json" + query), replayed(i, ITEM.replace(b'"count": ', b'"count": 1')))
                    for i in range(n_failing)]

        out[f"{kind} compare()"] = timed(fresh, lambda e, r, i: compare(
            e.response, r, config, exchange=e, latency_ns=220_000, recorded_latency_ns=e.recorded_latency_ns,
            origins=origins(e)))
        out[f"{kind} judge()"] = timed(fresh, lambda e, r, i: judge(
            e, r, config, redactor, error=None, latency_ns=220_000, origins=origins(e)))
        run, stream = make_run()
        observations = []

        def prepare(pairs, stream=stream, observations=observations, run=run):
            for e, _ in pairs:  # the items' states exist before the run (one per connection, as grouped items)
                stream.selected.setdefault(e.connection, ItemState(1_000_000))
                run.decisions[e.index] = policy.decision(e.request)  # (the reader's plan_one decided it)
            observations[:] = [observation(i, r) for i, (_, r) in enumerate(pairs)]  # (the engine's thread's)

        def step(e, r, i, run=run, stream=stream, observations=observations):
            stream._judge_one(run, e, observations[i])

        out[f"{kind} judge thread step"] = timed(fresh, step, prepare)
        run, stream = make_run()
        loop: list = []

        def prepare_loop(pairs, stream=stream, run=run, loop=loop):
            """The judge thread's loop itself (Stream._judge_main) over the exchanges queued by the engine:
            the step and what surrounds it (the exchange taken from the pending ones, its decision and window
            slot freed, its item told)."""
            stream.pending, stream._slots_of, stream.recorded, stream.error, stream.run = {}, {}, None, None, run
            stream.feed = SimpleNamespace(slots=SimpleNamespace(release=functools.partial(queue.SimpleQueue().put, None)))
            stream.judged = queue.SimpleQueue()
            for i, (e, r) in enumerate(pairs):
                stream.selected.setdefault(e.connection, ItemState(1_000_000))
                run.decisions[e.index] = policy.decision(e.request)
                stream.pending[e.index] = e
                stream.judged.put(observation(i, r))
            stream.judged.put(None)
            loop[:] = [len(pairs)]

        def whole_loop(e, r, i, stream=stream, loop=loop):  # (called once per round: the loop judges them all)
            if i == 0:
                stream._judge_main()

        out[f"{kind} judge thread loop"] = timed(fresh, whole_loop, prepare_loop)
        out[f"{kind} failed"] = run.aggregate.overall.failed
        judged, counted = [], [Aggregate()]

        def prepare_record(pairs, judged=judged, counted=counted):  # judged untimed: Aggregate.add alone is timed
            counted[0] = Aggregate()
            judged[:] = [(observation(i, r), judge(e, r, config, redactor, error=None, latency_ns=220_000,
                                                   origins=origins(e))[0]) for i, (e, r) in enumerate(pairs)]

        out[f"{kind} record()"] = timed(fresh, lambda e, r, i: counted[0].add(e, *judged[i]), prepare_record)
    return out


def judge_record_rows(against: str | None) -> list[tuple[str, str, str]]:
    """(d) judge_record_figures() in a child (this checkout, and `against` when given: the same bench
    function on another checkout's package, in the same run)."""
    here = os.path.dirname(os.path.abspath(__file__))
    runs = {"this checkout": ROOT}
    if against:
        runs[f"against {against}"] = os.path.abspath(against)
    figures: dict[str, dict] = {}
    for _ in range(ROUNDS):  # the checkouts in alternation, the best of each figure (a loaded machine varies 2-3x)
        for name, root in runs.items():
            child_env = env()
            child_env["PYTHONPATH"] = os.pathsep.join([root, here])
            proc = subprocess.run([sys.executable, "-c", JUDGE_CHILD, here, root], env=child_env, capture_output=True,
                                  text=True, cwd=root)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FIGURES")]
            if proc.returncode != 0 or not line:
                raise RuntimeError(f"judge cost ({name}) failed: {proc.stderr[-2000:]}")
            found = json.loads(line[0].split(" ", 1)[1])
            best = figures.setdefault(name, found)
            for key, value in found.items():
                best[key] = min(best[key], value)
    rows = []
    mine = figures["this checkout"]
    for what in ("passing compare()", "passing judge()", "passing record()", "passing judge thread step",
                 "passing judge thread loop", "failing compare()", "failing judge()", "failing record()",
                 "failing judge thread step", "failing judge thread loop"):
        others = "; ".join(f"{name} {f[what]:.1f} us" for name, f in figures.items() if name != "this checkout")
        note = "per exchange" + (f"; {others}" if others else "")
        if what == "passing judge thread step":
            note += f"; {TARGET_JUDGE_US:.0f} us target: {'PASS' if mine[what] <= TARGET_JUDGE_US else 'MISSED'}"
        rows.append((f"(d) {what}", f"{mine[what]:.1f} us", note))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (60k packets, 300k .gor, 10k items)")
    ap.add_argument("--pcap", metavar="FILE", help="replay this keep-alive pcap of GET /item.json instead of recording")
    ap.add_argument("--keep", metavar="DIR", help="keep the captures here (reused when present)")
    ap.add_argument("--skip-gor", action="store_true", help="leave out (b)")
    ap.add_argument("--gor-sizes", metavar="N,N,...",
                    help="(b) at each of these sizes, a row each (e.g. 300000,1000000,3000000: the peak RSS should "
                         "be flat); default: 3,000,000 (300,000 with --quick)")
    ap.add_argument("--gor-connections", metavar="N,N,...", default=str(bench_plugin.LANES),
                    help=f"(b) on each of these numbers of connections, a row each (default {bench_plugin.LANES}; "
                         "(a)'s capture has 8)")
    ap.add_argument("--skip-items", action="store_true", help="leave out (c)")
    ap.add_argument("--only-judge", action="store_true", help="only (d), the judging cost (no servers)")
    ap.add_argument("--judge-against", metavar="DIR",
                    help="(d) also measured on the package of another checkout (a `git archive` of the base)")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="children compile every module at every start (PYTHONDONTWRITEBYTECODE=1, as before "
                         "2026-12-06); default: a bytecode cache in the work directory, as an installed package has")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    workdir = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="bench-scale-")
    os.makedirs(workdir, exist_ok=True)
    if not args.no_bytecode:
        BYTECODE["cache"] = os.path.join(workdir, "pycache")
    rows: list[tuple[str, str, str]] = []
    verdicts: list[bool] = []

    def judge(ok: bool, text: str) -> str:
        verdicts.append(ok)
        return f"{text}: {'PASS' if ok else 'FAIL'}"

    site = tempfile.mkdtemp(prefix="nginx-", dir=workdir)
    os.chmod(site, 0o755)
    os.makedirs(os.path.join(site, "www"))
    with open(os.path.join(site, "www", "item.json"), "wb") as f:
        f.write(ITEM)
    os.utime(os.path.join(site, "www", "item.json"), (MTIME, MTIME))
    nginx = None
    if args.only_judge:
        rows.extend(judge_record_rows(args.judge_against))
        rows.extend(judge_costs())
        args.skip_gor = args.skip_items = True
    try:
        if args.only_judge:
            raise _Done
        pcap = args.pcap or os.path.join(workdir, f"scale-{cfg['packets']}.pcap")
        if not os.path.exists(pcap):
            facts = record(pcap, cfg["packets"], workdir)
            rows.append(("record", f"{facts['captured']:,} packets, {facts['dropped']} dropped",
                         f"wrk {facts['wrk_rps']:,.0f} req/s"))
        nginx, port = start_nginx(site)
        url = f"http://127.0.0.1:{port}"

        if BYTECODE["cache"]:  # untimed: the children's modules compiled (and pytest's rewrite cached) once
            log("warm-up: one untimed replay compiles what the children import")
            pytest_replay(pcap, url, workdir, "warm-up", ["--replay-group", "connection"])
            measure([sys.executable, "-c", "import pytest_replay.cli"], workdir)

        # (a) the recorded capture, grouped by connection
        inspect = measure([sys.executable, "-m", "pytest_replay", "inspect", pcap], workdir)
        engine_s = engine_only(pcap, url, workdir)
        a = pytest_replay(pcap, url, workdir, "pcap", ["--replay-group", "connection"])
        reference = inspect["wall"] + engine_s
        rows.append(("(a) inspect PCAP", f"{inspect['wall']:.2f} s, {inspect['rss_mb']:.0f} MB", "reference"))
        rows.append(("(a) engine-only replay span", f"{engine_s:.2f} s", "reference"))
        rows.append(("(a) pytest --replay-group connection",
                     f"{a['wall']:.2f} s wall, span {a['span']:.2f} s, {a['requests']:,} requests, "
                     f"{a['failed']} failed",
                     f"inspect + engine-only = {reference:.2f} s; wall/reference {a['wall'] / reference:.2f}x"))
        rows.append(("(a) peak RSS", f"{a['rss_mb']:.0f} MB", judge(a["rss_mb"] <= TARGET_RSS_MB,
                                                                   f"<= {TARGET_RSS_MB} MB")))
        rows.append(("(a) wall / (inspect + engine-only)", f"{a['wall'] / reference:.2f}x",
                     f"span / engine-only {a['span'] / engine_s:.2f}x (the judge paced the span when far above 1; "
                     "aim <= 2x, info)"))
        ratio_a = a["wall"] / a["span"]
        rows.append(("(a) wall / replay span", f"{ratio_a:.2f}x", judge(ratio_a <= TARGET_RATIO, f"<= {TARGET_RATIO}x")))
        collect_a = collect_only(pcap, url, workdir, "pcap-collect", ["--replay-group", "connection"])
        rows.append(("(a) where the rest goes", f"wall - span = {a['wall'] - a['span']:.2f} s",
                     f"`--collect-only` alone {collect_a['wall']:.2f} s (start-up + pass 1 + items); "
                     f"the rest: engine start, pass 2 before the first send, the report"))

        # (b) a generated .gor, 10x the exchanges (--gor-sizes: a row per size, to show the peak is flat)
        if not args.skip_gor:
            sizes = [int(n) for n in args.gor_sizes.split(",")] if args.gor_sizes else [cfg["gor"]]
            lanes = [int(c) for c in args.gor_connections.split(",")]
            for n, conns in [(n, c) for c in lanes for n in sizes]:
                big = os.path.join(workdir, f"scale-{n}.gor" if conns == bench_plugin.LANES else f"scale-{n}-c{conns}.gor")
                if not os.path.exists(big):
                    log(f"generating {n:,} exchanges on {conns} connections")
                    gor(big, n, conns)
                b = pytest_replay(big, url, workdir, "gor", ["--replay-group", "connection"])
                ratio_b = b["wall"] / b["span"]
                what = f"{n:,} on {conns} connections"
                rows.append((f"(b) pytest, generated .gor, {what}",
                             f"{b['wall']:.2f} s wall, span {b['span']:.2f} s, {b['requests']:,} requests, "
                             f"{b['failed']} failed", f"wall/span {ratio_b:.2f}x (a: {ratio_a:.2f}x)"))
                rows.append((f"(b) peak RSS, {what}", f"{b['rss_mb']:.0f} MB",
                             judge(b["rss_mb"] <= a["rss_mb"] * (1 + TARGET_FLAT),
                                   f"within 10% of (a)'s {a['rss_mb']:.0f} MB")))
                rows.append((f"(b) wall / span, {what}", f"{ratio_b:.2f}x", judge(ratio_b <= TARGET_RATIO, f"<= {TARGET_RATIO}x")))

        # (c) per-exchange items
        if not args.skip_items:
            small = os.path.join(workdir, f"items-{cfg['items']}.gor")
            if not os.path.exists(small):
                gor(small, cfg["items"])
            n = cfg["items"]
            for collecting in (True, False):
                what = "collection" if collecting else "run"
                ref = bare(workdir, n, collecting)
                if collecting:
                    mine = collect_only(small, url, workdir, "items", [])
                else:
                    mine = pytest_replay(small, url, workdir, "items", [])
                ratio = mine["wall"] / ref["wall"]
                rows.append((f"(c) {n:,} items, {what}", f"{mine['wall']:.2f} s, {mine['rss_mb']:.0f} MB",
                             f"bare pytest {ref['wall']:.2f} s, {ref['rss_mb']:.0f} MB; "
                             + judge(ratio <= TARGET_ITEMS, f"{ratio:.2f}x <= {TARGET_ITEMS}x")))
                if not collecting:  # what pytest's item loop costs here, the replay itself left out
                    rest = mine["wall"] - mine["span"]
                    rows.append((f"(c) run without the replay span", f"{rest:.2f} s (span {mine['span']:.2f} s)",
                                 f"{rest / ref['wall']:.2f}x bare pytest's run (info)"))
        rows.extend(judge_record_rows(args.judge_against))
        rows.extend(judge_costs())
    except _Done:
        pass
    finally:
        stop(nginx)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"bench_scale ({'quick' if args.quick else 'full'}; "
          f"{'no bytecode cache' if args.no_bytecode else 'bytecode cached, first runs compile'}); "
          f"{cpu_model()}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    width = max(len(r[0]) for r in rows)
    for what, figure, note in rows:
        print(f"  {what:<{width}}  {figure:<60}  {note}")
    print(f"{sum(verdicts)} of {len(verdicts)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
