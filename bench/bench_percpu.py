#!/usr/bin/env python
"""CPU per exchange of a streamed replay, per thread (issue 13.1), beside another checkout in the same run.

    python bench/bench_percpu.py [--pcap FILE] [--against DIR] [--rounds N] [--keep DIR] [--quick]

`pytest --replay PCAP --replay-target NGINX --speed 0 --replay-group connection` (bench_scale (a)'s run: wrk's
keep-alive capture of GET /item.json, replayed against an nginx serving the same file) in a child, with each of
the streamed run's three threads timed by its own CPU clock (time.thread_time() around its main function:
Stream._read_main, Engine._thread_main, Stream._judge_main): microseconds of CPU per exchange for the
reader, the engine and the judge, their sum, and the replay span. At --speed 0 the three are CPU-bound and
share one interpreter lock, so the span is at least their sum: what this measures is what each thread costs,
which a loaded machine inflates less than wall time or py-spy's samples (a thread descheduled while it holds
the lock gets samples, not CPU time). `--against DIR` (a `git archive` of the base) runs the same replay with
that checkout's package, the two in alternation, `--rounds` each; printed: the median of each figure.

Needs nginx, and a pcap (`--pcap`; without it bench_scale's quick capture is recorded into the work
directory, or reused from `--keep DIR`: root, tcpdump and wrk). Stdlib plus the project only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_scale  # noqa: E402 - ITEM and MTIME: what the capture's nginx served
from _common import cpu_model, log, start_nginx, stop  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_PACKETS = bench_scale.QUICK["packets"]  # the capture recorded when --pcap is not given

CHILD = r"""
import json, os, sys, threading, time
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "") + repr(f)]
root = sys.argv[1]
sys.path.insert(0, root)
import pytest_replay
assert os.path.dirname(os.path.dirname(os.path.abspath(pytest_replay.__file__))) == root, pytest_replay.__file__
from pytest_replay.schedule.engine import Engine
from pytest_replay.session.stream import Stream

spent = {}
lock = threading.Lock()

def timed(cls, name, what):
    inner = getattr(cls, name)
    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            with lock:
                spent[what] = spent.get(what, 0.0) + time.thread_time() - start
    setattr(cls, name, wrapper)

timed(Stream, "_read_main", "reader")
timed(Stream, "_judge_main", "judge")
timed(Engine, "_thread_main", "engine")
import pytest
code = pytest.main(sys.argv[2:])
print("CPU", json.dumps(spent))
sys.exit(code)
"""


def one(root: str, pcap: str, url: str, workdir: str) -> dict:
    directory = tempfile.mkdtemp(dir=workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHILD, root, "-p", "no:cacheprovider", "-q", "--replay", pcap,
                           "--replay-target", url, "--speed", "0", "--replay-group", "connection",
                           "--replay-report", "report"], cwd=directory, env=env, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("CPU ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"replay with {root} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    with open(os.path.join(directory, "report", "replay-evidence.json"), encoding="utf-8") as f:
        evidence = json.load(f)
    shutil.rmtree(directory, ignore_errors=True)
    cpu = json.loads(line[0][4:])
    n = evidence["errors"]["requests"]
    out = {what: cpu.get(what, 0.0) / n * 1e6 for what in ("reader", "engine", "judge")}
    out["sum"] = sum(out.values())
    out["span_s"] = evidence["run"]["wall_s"]
    out["requests"] = n
    out["failed"] = evidence["diff"]["failed"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pcap", help="the keep-alive capture of GET /item.json to replay (default: bench_scale's quick "
                    f"capture, {QUICK_PACKETS:,} packets of wrk against nginx, recorded into the work directory "
                    "unless --keep DIR already holds it; recording needs root, tcpdump and wrk)")
    ap.add_argument("--against", metavar="DIR", help="another checkout (a `git archive` of the base), alternated")
    ap.add_argument("--rounds", type=int, default=3, help="replays per checkout (default 3); the median is printed")
    ap.add_argument("--keep", metavar="DIR", help="work directory (kept); default: a temporary one")
    ap.add_argument("--quick", action="store_true", help="one replay per checkout (--rounds 1)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = 1
    workdir = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="bench-percpu-")
    os.makedirs(workdir, exist_ok=True)
    site = tempfile.mkdtemp(prefix="nginx-", dir=workdir)
    os.chmod(site, 0o755)
    os.makedirs(os.path.join(site, "www"))
    item = os.path.join(site, "www", "item.json")
    with open(item, "wb") as f:
        f.write(bench_scale.ITEM)
    os.utime(item, (bench_scale.MTIME, bench_scale.MTIME))
    if args.pcap is None:
        args.pcap = os.path.join(workdir, f"scale-{QUICK_PACKETS}.pcap")
        if not os.path.exists(args.pcap):
            bench_scale.record(args.pcap, QUICK_PACKETS, workdir)
    roots = {"this checkout": ROOT}
    if args.against:
        roots[f"against {args.against}"] = os.path.abspath(args.against)
    runs: dict[str, list[dict]] = {name: [] for name in roots}
    nginx = None
    try:
        nginx, port = start_nginx(site)
        url = f"http://127.0.0.1:{port}"
        for r in range(args.rounds):
            for name, root in roots.items():
                log(f"round {r + 1}/{args.rounds}: {name}")
                runs[name].append(one(root, args.pcap, url, workdir))
    finally:
        stop(nginx)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"bench_percpu: {args.pcap}; {cpu_model()}, {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f} at the end; median of {args.rounds} replays each, alternated")
    print(f"  {'':<40}  {'reader':>8}  {'engine':>8}  {'judge':>8}  {'sum':>8}  {'span':>7}  requests, failed")
    for name, found in runs.items():
        med = {key: statistics.median(run[key] for run in found) for key in ("reader", "engine", "judge", "sum",
                                                                               "span_s")}
        print(f"  {name:<40}  " + "  ".join(f"{med[k]:6.1f}us" for k in ("reader", "engine", "judge", "sum"))
              + f"  {med['span_s']:6.2f}s  {found[0]['requests']:,}, {found[0]['failed']}")
        print(f"  {'(each run: sum us, span s)':<40}  " + ", ".join(f"{run['sum']:.1f} / {run['span_s']:.2f}"
                                                                   for run in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
