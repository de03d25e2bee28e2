#!/usr/bin/env python
"""Replay engine with a live baseline (issue 12): sends per second and timing, beside the single-target run.

    python bench/bench_baseline.py [--quick] [--requests N] [--seconds S]

Starts two nginx on 127.0.0.1 (as bench/bench_replay.py: free ports, temp configs, a small JSON file) and
stops them in `finally`: the candidate's, and the baseline's (the baseline and the noise probe, each on
its own connections). Both serve the same file: what is measured is the engine and
targets/differential.py, not a difference between servers. Each side sends its own Host (its port), so
the baseline's request bytes are made on every send, as in a real run.

(a) Throughput at speed 0, 32 lanes, concurrency 64, N GET requests (100k; 50k with --quick):
    - the single-target run: engine + RawTarget (the reference, measured in the same run);
    - the baseline run: engine + DifferentialTarget(candidate, baseline, noise probe), 3 sends per read.
    Sends per second = sends / (first send to last answer, over every side). Target: the baseline run's
    sends/s >= 0.8 x the single-target run's. Also the CPU seconds of this process per send in each run
    (getrusage; nginx is other processes): on a machine shared with other work, wall-clock rates swing
    with the neighbours, CPU per send much less; its ratio is judged against the same 0.8.
(b) Timing at 2,000 requests/s (6,000 sends/s) for 60 s (10 s with --quick), 16 lanes, pytest's thread
    waiting for every key as the plugin does: lateness (sent - deadline) of every send, the candidate's
    and the two baseline sends'. Targets as the single-target engine's (docs/benchmarks.md, "Replay
    engine"): p99 <= 1 ms, |drift| <= 0.1 ms; the single-target run at the same rate beside it.

Needs nginx on PATH. Loopback only. Stdlib plus the project only.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench_replay import check, lateness_stats, make_plan, start_site  # noqa: E402
from _common import stop  # noqa: E402

from pytest_replay.schedule.engine import Engine  # noqa: E402
from pytest_replay.targets.differential import DifferentialTarget  # noqa: E402
from pytest_replay.targets.raw import RawTarget  # noqa: E402

TARGET_RATIO = 0.8
TARGET_P99_MS = 1.0
TARGET_DRIFT_MS = 0.1
LANES_THROUGHPUT = 32
LANES_FIDELITY = 16
RATE = 2_000
FULL = {"requests": 100_000, "seconds": 60.0}
QUICK = {"requests": 50_000, "seconds": 10.0}


def target_for(url: str, baseline_url: str | None):
    candidate = RawTarget(url)
    if baseline_url is None:
        return candidate, candidate
    # as the plugin makes them: the probe is the baseline again, on connections of its own
    return candidate, DifferentialTarget(candidate, RawTarget(baseline_url), RawTarget(baseline_url),
                                         probe=lambda planned: True, timeout_s=9.0)


def cpu_s() -> float:
    """CPU seconds of this process (the engine's thread, mostly; nginx is other processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(url: str, n: int, lanes: int, step_ns: int, *, baseline: str | None, wait: bool) -> tuple[Engine, object]:
    candidate, target = target_for(url, baseline)
    plan = make_plan(candidate, n, lanes, step_ns)
    engine = Engine(plan, target, concurrency=64)
    before = cpu_s()
    engine.start()
    if wait:
        for p in plan:
            engine.wait(p.key)
    engine.stop()
    engine.bench_cpu_s = cpu_s() - before
    return engine, target


def sends(engine: Engine, target) -> list[tuple[int, int, int]]:
    """(deadline, sent, done) of every send: the candidate's observations, and the baseline's and the
    probe's sides when there are any; every one must have been answered."""
    observations = check(engine)
    out = [(o.deadline_ns, o.sent_ns, o.done_ns) for o in observations]
    if isinstance(target, DifferentialTarget):
        deadline = {o.key: o.deadline_ns for o in observations}
        for table in (target.baseline_sides, target.probe_sides):
            bad = [s for s in table.values() if not s.ok]
            if len(table) != len(observations) or bad:
                raise RuntimeError(f"{len(table)} baseline-side answers for {len(observations)} requests, "
                                   f"{len(bad)} failed; first: {bad[0].describe() if bad else '-'}")
            out += [(deadline[key], side.sent_ns, side.done_ns) for key, side in table.items()]
    return out


def per_second(rows: list[tuple[int, int, int]]) -> float:
    span = max(done for _, _, done in rows) - min(sent for _, sent, _ in rows)
    return len(rows) / (span / 1e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (< 1 minute)")
    parser.add_argument("--requests", type=int, help="requests in the throughput plan")
    parser.add_argument("--seconds", type=float, help="duration of the 2,000 req/s timing plan")
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    cfg["requests"] = args.requests or cfg["requests"]
    cfg["seconds"] = args.seconds or cfg["seconds"]
    if shutil.which("nginx") is None:
        print("nginx is not on PATH", file=sys.stderr)
        return 2
    ok = True

    def row(what: str, figure: str, verdict: str = "") -> None:
        print(f"  {what:<62} {figure:>28}  {verdict}", flush=True)

    def judge(passed: bool) -> str:
        nonlocal ok
        ok &= passed
        return "PASS" if passed else "FAIL"

    workdirs = [tempfile.mkdtemp(prefix="bench-baseline-") for _ in range(2)]
    for workdir in workdirs:
        os.chmod(workdir, 0o755)  # nginx workers run as nobody
    servers = []
    began = time.monotonic()
    try:
        for workdir in workdirs:
            servers.append(start_site(workdir))
        url, other = servers[0][1], servers[1][1]
        print(f"nginx on {url} (the candidate) and {other} (the baseline); python {sys.version.split()[0]}; "
              f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
        n = cfg["requests"]
        print(f"\n(a) throughput, speed 0, {LANES_THROUGHPUT} lanes, {n:,} requests")
        engine, target = run(url, n, LANES_THROUGHPUT, 0, baseline=None, wait=False)
        single = per_second(sends(engine, target))
        single_cpu = engine.bench_cpu_s / n
        row("single target: sends/s (= requests/s)", f"{single:,.0f}")
        row("  CPU of this process per send (us)", f"{single_cpu * 1e6:,.1f}")
        engine, target = run(url, n, LANES_THROUGHPUT, 0, baseline=other, wait=False)
        rows = sends(engine, target)
        with_baseline = per_second(rows)
        baseline_cpu = engine.bench_cpu_s / len(rows)
        row(f"with a baseline: sends/s ({len(rows):,} sends, 3 per read)", f"{with_baseline:,.0f}")
        row("  requests/s with a baseline", f"{with_baseline / 3:,.0f}")
        row("  CPU of this process per send (us)", f"{baseline_cpu * 1e6:,.1f}")
        ratio = with_baseline / single
        row("  sends/s with a baseline / single target", f"{ratio:.2f}",
            judge(ratio >= TARGET_RATIO) + f" (>= {TARGET_RATIO})")
        # on a loaded machine wall-clock rates swing with the neighbours; CPU per send does much less
        row("  CPU-bound ratio: single CPU per send / with a baseline", f"{single_cpu / baseline_cpu:.2f}",
            judge(single_cpu / baseline_cpu >= TARGET_RATIO) + f" (>= {TARGET_RATIO})")

        print(f"\n(b) timing, {RATE:,} requests/s for {cfg['seconds']:g} s, {LANES_FIDELITY} lanes, "
              "pytest's thread waiting for every key")
        m = int(RATE * cfg["seconds"])
        for label, baseline in (("single target", None), ("with a baseline (6,000 sends/s)", other)):
            engine, target = run(url, m, LANES_FIDELITY, 1_000_000_000 // RATE, baseline=baseline, wait=True)
            rows = sends(engine, target)
            rows.sort(key=lambda r: r[0])
            stats = lateness_stats([sent - deadline for deadline, sent, _ in rows])
            verdict = judge(stats["p99"] <= TARGET_P99_MS) + f" (p99 <= {TARGET_P99_MS} ms)"
            row(f"{label}: lateness p50 / p99 / max (ms)",
                f"{stats['p50']:.3f} / {stats['p99']:.3f} / {stats['max']:.2f}", verdict)
            verdict = judge(abs(stats["drift"]) <= TARGET_DRIFT_MS) + f" (|drift| <= {TARGET_DRIFT_MS} ms)"
            row("  drift: median lateness last 10% - first 10% (ms)", f"{stats['drift']:+.4f}", verdict)
            if baseline:
                candidate = [o.sent_ns - o.deadline_ns for o in engine.observations()]
                c = lateness_stats(sorted(candidate))
                row("  the candidate's sends alone: p50 / p99 (ms)", f"{c['p50']:.3f} / {c['p99']:.3f}")
    finally:
        for proc, _ in servers:
            stop(proc)
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'all targets met' if ok else 'SOME TARGETS MISSED'} ({time.monotonic() - began:.0f} s; "
          f"load average {os.getloadavg()[0]:.2f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
