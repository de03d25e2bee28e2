"""Judging cost per exchange for JSON bodies (issue 13.1), and what judging processes take off the engine.

    python bench/bench_verdicts.py [--quick] [--no-engine | --engine-only]

(a) compare() on bodies of ~300 B, ~20 KB and ~200 KB, identical and with one value changed, beside
    json.loads of the same two bodies (the least any JSON verdict must do) and beside deepdiff, the
    reference of the walk (verdicts/jsondiff.py). Judged as a run judges them by default: origins treated
    as one (the bodies hold absolute URLs of the recorded origin and of the replayed one), clock noise on.
    Target: a one-value change in the 200 KB body judged in under 50 ms. Medians of repeated calls.
(b) A judging process (session/judging.py, --replay-judge-workers): per body size (one value changed),
    the CPU this process spends per exchange judging it in its thread, beside the CPU it spends handing
    it to a judging process and taking the verdict back (pickling, the pool's threads: what still holds
    the GIL here), and the round trip's wall time. Where the second is below the first the pool takes GIL
    time off the engine: that is where session/judging.POOL_BYTES is set.
(c) The engine's lateness (issue 13.1: "judging must not cost the engine lateness"): `pytest --replay`
    against nginx at a fixed rate (400 requests/s for 20 s; 8 s with --quick) on 32 connections, every
    20th request a 200 KB JSON page whose recorded answer differs in one value (the others a small JSON
    answered as recorded), streamed (the default), judged in the run's process (--replay-judge-workers 0)
    and in one judging process (1), alternately (2 rounds each; 1 with --quick); without --quick also a run
    that holds the capture and judges during the replay (--replay-stream off --replay-judge during, an item
    per exchange: pytest's own work per item, ~1 ms, is in both runs). Printed: the engine's own
    lateness (evidence: lateness by cause "engine") p50/p99/max, and what failed (the same in both).
    Target: the pool's p99 below the in-thread run's of the same round. Needs nginx (else skipped).

Exit 1 when a target is missed. The machine's load moves all figures; the same-run ratios less.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.verdicts import jsondiff
from pytest_replay.verdicts.clock import ClockNoise
from pytest_replay.verdicts.diff import DiffConfig, compare
from pytest_replay.verdicts.judge import Task
from pytest_replay.verdicts.origin import Origins
from pytest_replay.policy.redact import DEFAULT as REDACTOR
from pytest_replay.session.judging import POOL_BYTES, JudgePool

TARGET_MS = 50.0
RECORDED, REPLAYED = "https://shop.example.com", "http://127.0.0.1:8000"
SIZES = (("300 B", 1), ("20 KB", 60), ("200 KB", 600))  # items in the document


def document(items: int, origin: str) -> dict:
    """An API page: items with nested objects, numbers, booleans, times and absolute URLs."""
    return {
        "page": 1, "per_page": items, "next": f"{origin}/api/items?page=2",
        "generated_at": "2026-12-06T10:00:00Z",
        "items": [{
            "id": i, "sku": f"SKU-{i:06d}", "name": f"Item number {i}", "price": round(9.99 + i * 0.37, 2),
            "in_stock": i % 3 != 0, "tags": ["sale", "new"] if i % 2 else ["core"],
            "dimensions": {"w": 10 + i % 7, "h": 20.5, "d": 3},
            "links": {"self": f"{origin}/api/items/{i}", "image": f"{origin}/img/{i}.png"},
            "updated_at": "2026-12-01T08:30:00Z",
        } for i in range(items)],
    }


def responses(items: int, change: bool) -> tuple[Response, Response]:
    headers = [(b"Content-Type", b"application/json")]
    old = document(items, RECORDED)
    new = document(items, REPLAYED)
    if change:
        new["items"][items // 2]["name"] = "renamed"
    encode = lambda doc: json.dumps(doc).encode()  # noqa: E731
    return Response.build(200, "OK", headers, encode(old)), Response.build(200, "OK", headers, encode(new))


def median_ms(fn, rounds: int) -> float:
    fn()  # warm: compiled patterns, imports
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def config_and_origins() -> tuple[DiffConfig, Origins]:
    now = time.time_ns()
    return DiffConfig(clock=ClockNoise((now - 10**9, now), now, time.time_ns)), Origins((RECORDED,), (REPLAYED,))


def judging_cost(quick: bool) -> dict:
    """(a): judging in the run's thread, per body size and case."""
    config, origins = config_and_origins()
    request = Request.build("GET", "/api/items", [(b"Host", b"shop.example.com")])
    failed = False
    print("(a) judging in the run's thread")
    print(f"{'body':>8} {'case':>10} {'compare (walk)':>15} {'json.loads x2':>14} {'ratio':>6} {'deepdiff ref':>13}")
    for label, items in SIZES:
        for change in (False, True):
            recorded, replayed = responses(items, change)
            exchange = Exchange(0, request, recorded, 0, 1, "10.0.0.1:5000 -> 10.0.0.2:443", 0, Source("bench", 0))
            judge = lambda: compare(recorded, replayed, config, exchange=exchange, origins=origins)  # noqa: E731
            rounds = 5 if quick else 21
            walk = median_ms(judge, rounds)
            loads = median_ms(lambda: (json.loads(recorded.body), json.loads(replayed.body)), rounds)
            verdict = judge()
            expected = not change
            assert verdict.passed is expected, verdict.summary
            reference = "-"
            if not (quick and items > 60):
                jsondiff.FAST_PATH = False
                try:
                    reference = f"{median_ms(judge, 1 if items > 60 else 3):.1f} ms"
                    assert judge() == verdict, "the walk and deepdiff disagree"
                finally:
                    jsondiff.FAST_PATH = True
            case = "one value" if change else "identical"
            print(f"{label:>8} {case:>10} {walk:>12.2f} ms {loads:>11.2f} ms {walk / loads:>5.1f}x {reference:>13}"
                  f"   ({len(recorded.body):,} / {len(replayed.body):,} bytes)")
            if change and items == SIZES[-1][1]:
                ok = walk < TARGET_MS
                failed |= not ok
                print(f"target: one value changed in {label} judged in < {TARGET_MS:g} ms: "
                      f"{walk:.1f} ms {'PASS' if ok else 'FAIL'}")
    return {"failed": failed}


def cpu_s() -> float:
    """CPU seconds of this process, all its threads (the judging processes are other processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


POOL_SIZES = (("1 KB", 2), ("4 KB", 11), ("8 KB", 24), ("16 KB", 48), ("32 KB", 96), ("200 KB", 600))


def pool_cost(quick: bool) -> bool:
    """(b): CPU of this process per exchange, judged here vs handed to a judging process."""
    config, origins = config_and_origins()
    request = Request.build("GET", "/api/items", [(b"Host", b"shop.example.com")])
    pool = JudgePool(1, config, REDACTOR, eager=True, min_bytes=0)
    try:
        while not pool.ready:
            time.sleep(0.05)
        print("\n(b) one exchange (one value changed): judged here vs in a judging process "
              f"(POOL_BYTES = {POOL_BYTES:,})")
        print(f"{'body':>8} {'bytes':>8} {'CPU here: judge':>16} {'CPU here: via pool':>19} {'pickle':>8} "
              f"{'round trip':>11}")
        for label, items in POOL_SIZES:
            recorded, replayed = responses(items, True)
            exchange = Exchange(0, request, recorded, 0, 1, "10.0.0.1:5000 -> 10.0.0.2:443", 0, Source("bench", 0))
            rounds = max(5, (40 if quick else 200) // max(1, items // 10))

            def here():
                return compare(recorded, replayed, config, exchange=exchange, origins=origins)

            def via_pool():
                return pool.judge(exchange, replayed, error=None, latency_ns=1, origins=origins)

            def pickled():
                return pickle.dumps(Task.of(exchange, replayed, error=None, latency_ns=1, origins=origins))

            assert via_pool()[0] == here(), "the judging process and this one disagree"
            figures = []
            for fn in (here, via_pool):
                before, start = cpu_s(), time.perf_counter()
                for _ in range(rounds):
                    fn()
                figures.append(((cpu_s() - before) / rounds * 1000, (time.perf_counter() - start) / rounds * 1000))
            pickling = median_ms(pickled, rounds)
            size = len(recorded.body) + len(replayed.body)
            print(f"{label:>8} {size:>8,} {figures[0][0]:>13.3f} ms {figures[1][0]:>16.3f} ms {pickling:>5.3f} ms "
                  f"{figures[1][1]:>8.3f} ms")
    finally:
        pool.shutdown()
    return False


# -- (c) the engine's lateness under pytest --replay ------------------------------------------------------
SEP = "\n🐵🙈🙉\n".encode()
PROBE = """
import json
from pytest_replay.plugin import RUN


def pytest_sessionfinish(session):
    run = session.config.stash.get(RUN, None)
    if run is not None and run.engine is not None:
        judged = run.judging.judged if run.judging is not None else 0
        open("probe.json", "w").write(json.dumps({"pool": judged, "streamed": run.stream is not None}))
"""


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def site(workdir: str, n: int, every: int, connections: int) -> tuple[object, str, str]:
    """nginx serving a 200 KB page and a small JSON; a .gor of n GETs recorded against them, every
    `every`-th the page, whose recorded answer differs in one value."""
    from _common import start_nginx

    www = os.path.join(workdir, "www")
    os.makedirs(www)
    page = json.dumps(document(600, RECORDED)).encode()
    changed = document(600, RECORDED)
    changed["items"][300]["name"] = "renamed"
    small = json.dumps(document(1, RECORDED)).encode()
    with open(os.path.join(www, "page.json"), "wb") as f:
        f.write(page)
    with open(os.path.join(www, "small.json"), "wb") as f:
        f.write(small)
    gor = os.path.join(workdir, "mixed.gor")
    t0 = time.time_ns() - 3600 * 10**9
    with open(gor, "wb") as f:
        for i in range(n):
            big = i % every == every - 1
            rid = f"{i % connections + 1:016x}{i:08x}"
            head = f"GET /{'page' if big else 'small'}.json HTTP/1.1\r\nHost: shop.example.com\r\n\r\n"
            f.write(f"1 {rid} {t0 + i * 10**6} 0\n".encode() + head.encode() + SEP)
            body = json.dumps(changed).encode() if big else small
            f.write(f"2 {rid} {t0 + i * 10**6 + 500_000} 500000\n".encode() + answer(body) + SEP)
    with open(os.path.join(workdir, "conftest.py"), "w") as f:
        f.write(PROBE)
    proc, port = start_nginx(workdir)
    return proc, f"http://127.0.0.1:{port}", gor


PATHS = {"streamed": (), "held, judged during": ("--replay-stream", "off", "--replay-judge", "during", "--replay-group",
                                                 "exchange")}


def replay(workdir: str, url: str, gor: str, rate: int, workers: int, path: tuple = ()) -> dict:
    report = os.path.join(workdir, f"evidence-{workers}")
    shutil.rmtree(report, ignore_errors=True)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--replay", gor, "--replay-target", url,
           "--rate", str(rate), "--replay-group", "connection", "--replay-judge-workers", str(workers),
           "--replay-report", report, *path]
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    try:
        with open(os.path.join(report, "replay-evidence.json")) as f:
            evidence = json.load(f)
        with open(os.path.join(workdir, "probe.json")) as f:
            probe = json.load(f)
    except OSError:
        raise RuntimeError(f"the replay wrote no evidence:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}") from None
    engine = evidence["lateness"]["causes"].get("engine") or {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    failed = re.search(r"(\d+) failed", out.stdout)
    return {"engine": engine, "all_p99": evidence["lateness"]["p99_ms"], "requests": evidence["totals"]["requests"],
            "judged_failed": evidence["totals"].get("failed"), "items_failed": int(failed[1]) if failed else 0,
            "pool": probe["pool"], "streamed": probe["streamed"]}


def engine_lateness(quick: bool) -> bool:
    """(c): the engine's lateness with large differing bodies, judged here vs in a judging process."""
    if shutil.which("nginx") is None:
        print("\n(c) skipped: nginx is not installed")
        return False
    rate, seconds, every, rounds = 400, (8 if quick else 20), 20, (1 if quick else 2)
    n = rate * seconds
    workdir = tempfile.mkdtemp(prefix="bench-verdicts-")
    proc = None
    failed = False
    try:
        proc, url, gor = site(workdir, n, every, 32)
        print(f"\n(c) pytest --replay at {rate} requests/s for {seconds} s on 32 connections, every {every}th a "
              f"200 KB JSON page differing in one value ({n // every} of {n}); engine lateness (ms); load average "
              f"{os.getloadavg()[0]:.1f}")
        print(f"{'round':>5} {'judged':>22} {'p50':>7} {'p99':>8} {'max':>8} {'all p99':>8} {'in pool':>8} "
              f"{'failed':>7}")
        for r, (label, path) in [(r, p) for r in range(rounds) for p in list(PATHS.items())[:1 if quick else 2]]:
            results = {}
            print(f"      {label}:")
            for workers in (0, 1):
                got = results[workers] = replay(workdir, url, gor, rate, workers, path)
                how = "in the run's process" if workers == 0 else "in a judging process"
                e = got["engine"]
                print(f"{r + 1:>5} {how:>22} {e['p50_ms']:>7.2f} {e['p99_ms']:>8.2f} {e['max_ms']:>8.2f} "
                      f"{got['all_p99']:>8.2f} {got['pool']:>8} {got['judged_failed']:>7}")
                assert got["streamed"] is (not path) and got["requests"] == n, got
            here, pooled = results[0], results[1]
            assert here["judged_failed"] == pooled["judged_failed"] == n // every, (here, pooled)
            assert pooled["pool"] > 0, "nothing was judged in the judging process"
            ratio = pooled["engine"]["p99_ms"] / max(here["engine"]["p99_ms"], 1e-9)
            ok = ratio < 1
            failed |= not ok
            print(f"      target: the pool's engine lateness p99 below the in-thread run's: x{ratio:.2f} "
                  f"{'PASS' if ok else 'FAIL'}")
    finally:
        if proc is not None:
            from _common import stop
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    return failed


def main() -> int:
    quick = "--quick" in sys.argv
    failed = False
    if "--engine-only" not in sys.argv:
        failed = judging_cost(quick)["failed"]
        failed |= pool_cost(quick)
    if "--no-engine" not in sys.argv:
        failed |= engine_lateness(quick)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
