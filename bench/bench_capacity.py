#!/usr/bin/env python
"""Capacity-run benchmark (issue 16): stages up to 20,000 req/s against nginx, and a ramp that stops where a
real app saturates, against references measured in the same run.

    python bench/bench_capacity.py [--quick] [--max-rate N] [--keep DIR]

(a) Achieved rate per stage (engine + RawTarget against nginx, 64 captured connections, concurrency 256,
    the engine in its own thread as the plugin runs it). The capture is synthetic: 20,000 GETs at a mean
    2,000 req/s with exponential gaps (bursts kept), looped as the stages need. Stages (full; --quick halves
    the durations): '2000/s:4s, 5000/s:4s, ramp 5000/s..20000/s:6s, 20000/s:4s, fixed 10000/s:4s, 2x:4s'.
    Achieved rate = requests sent within the stage's time / its duration. Target: within 2% of the stage's
    target rate (schedule.stages.StagePlan.target_rate), every stage. The planned count of the stage is
    printed beside it (the schedule's own discreteness), and wrk's closed-loop rate on the same nginx (the
    ceiling of a load generator here) as the reference.
(b) Stage boundaries add no lateness spike: p99 lateness of the requests due within 100 ms either side of
    each boundary (and of each side alone: which stage carries it), beside the p99 of requests due in a
    200 ms window in the middle of each stage (the reference, same run). Target: boundary p99 < 0.5 ms.
    The engine does nothing at a boundary (the plan is computed before the start; stage_plan's deadlines
    keep each side's rate up to the boundary: no burst), so a boundary p99 above its stages' middles is
    the faster side's own lateness.
(c) Saturation: a uvicorn app (one worker) whose /work burns 5 ms of CPU, run through `pytest --replay` with
    '--replay-stages 1x:3s, ramp 1x..Nx:24s' (1x = 40 req/s), '--replay-abort-on p99>250ms',
    '--replay-abort-window 2' and '--replay-target-pid' of the app. Reference in the same run: the app's
    closed-loop capacity, `wrk -c 4 -t 1 -d 4s` on /work, and the CPU share that capacity implies (capacity x
    5 ms: what the app can get of a core on this machine now). Prints where the ramp stopped (stage, time,
    the offered rate then: it is past the capacity by the time queueing builds a p99 of 250 ms), the stop
    sentence of the summary, each stage's p99 service latency (from send) beside its p99 response time from
    schedule (queueing behind the captured connections included: what p99>250ms judges since issue 16), and
    the app's CPU from the saturation samples. Targets: the run stops in the ramp; the responses per second
    in the stop's window (what the app served while saturated) within 0.7x..1.3x of wrk's capacity; the
    app's CPU in the last 3 s before the stop >= 0.8 of one core (on a loaded machine compare it with the
    implied share). Before issue 16 the run did not stop: the service latency stayed under 250 ms while
    the connections queued the excess for seconds (coordinated omission).

Needs nginx and wrk on PATH. Loopback only. Stdlib plus the project (uvicorn from the test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pytest_replay.http.message import Request  # noqa: E402
from pytest_replay.schedule.engine import Engine, loop_name  # noqa: E402
from pytest_replay.schedule.plan import PlannedRequest  # noqa: E402
from pytest_replay.schedule.stages import parse_stages, stage_plan  # noqa: E402
from pytest_replay.targets.raw import RawTarget  # noqa: E402
from _common import GorFile, free_port, spawn, start_nginx, stop  # noqa: E402

CONNECTIONS = 64
CONCURRENCY = 256
CAPTURE_REQUESTS = 20_000
CAPTURE_RATE = 2_000.0
RATE_TOLERANCE = 0.02
BOUNDARY_P99_MS = 0.5
BOUNDARY_WINDOW_NS = 100_000_000
APP_CPU_S = 0.005
APP_BASE_RATE = 40  # requests per second of the saturation capture at 1x (at most: see run_saturation)
ABORT = "p99>250ms"


def stages_text(quick: bool, max_rate: int) -> str:
    d = 2 if quick else 4
    return (f"2000/s:{d}s, 5000/s:{d}s, ramp 5000/s..{max_rate}/s:{d * 3 // 2}s, {max_rate}/s:{d}s, "
            f"fixed {max_rate // 2}/s:{d}s, 2x:{d}s")


def percentile(values: list[int], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def run_wrk(url: str, seconds: int, connections: int) -> float:
    out = subprocess.run(["wrk", "-c", str(connections), "-t", "1", "-d", f"{seconds}s", url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match or "Non-2xx" in out:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    return float(match.group(1))


# -- (a) and (b): stages against nginx ----------------------------------------------------------------------
def synthetic_capture(seed: int = 16) -> tuple[list[int], list[str]]:
    """Request times (ns, ascending: exponential gaps at CAPTURE_RATE) and each one's connection."""
    rng = random.Random(seed)
    t, times, lanes = 0.0, [], []
    for _ in range(CAPTURE_REQUESTS):
        t += rng.expovariate(CAPTURE_RATE)
        times.append(int(t * 1e9))
        lanes.append(f"conn{rng.randrange(CONNECTIONS)}")
    return times, lanes


def run_stages(url: str, stages: str) -> tuple[Engine, object]:
    times, lanes = synthetic_capture()
    sp = stage_plan(times, parse_stages(stages))
    target = RawTarget(url)
    request = Request.build("GET", "/small.json", ((b"Host", b"shop.example"), (b"User-Agent", b"bench")))
    wire = target.wire(request)
    plan = [PlannedRequest(k, send.offset_ns, lanes[send.position], request, wire) for k, send in enumerate(sp.sends)]
    engine = Engine(plan, target, concurrency=CONCURRENCY, timeout_s=10)
    engine.start()
    engine.join()
    engine.stop()
    observations = engine.observations()
    bad = [o for o in observations if not o.ok]
    if len(observations) != len(plan) or bad:
        raise RuntimeError(f"{len(observations)} observations of {len(plan)}, {len(bad)} errors; first: "
                           f"{bad[0].error_kind if bad else '-'} {bad[0].error if bad else ''}")
    return engine, sp


def stage_rows(engine: Engine, sp) -> list[dict]:
    t0 = engine.t0_ns
    sent = [0] * len(sp.stages)
    for o in engine.observations():
        at = o.sent_ns - t0
        if at < sp.bounds_ns[-1]:
            sent[sp.stage_of(at)] += 1
    planned = sp.planned()
    rows = []
    for i, stage in enumerate(sp.stages):
        seconds = stage.duration_ns / 1e9
        rows.append({"stage": stage.label, "target": sp.target_rate(i), "planned": planned[i] / seconds,
                     "achieved": sent[i] / seconds})
    return rows


def boundary_lateness(engine: Engine, sp) -> tuple[list[tuple[str, float, int]], list[tuple[str, float, int]]]:
    """(label, p99 ms, requests) around each inner boundary, and in the middle of each stage."""
    t0 = engine.t0_ns
    by_deadline = [(o.deadline_ns - t0, o.lateness_ns) for o in engine.observations()]
    around, middle = [], []
    for i, bound in enumerate(sp.bounds_ns[1:-1], start=1):
        late = [max(lat, 0) for at, lat in by_deadline if abs(at - bound) <= BOUNDARY_WINDOW_NS]
        before = [max(lat, 0) for at, lat in by_deadline if bound - BOUNDARY_WINDOW_NS <= at < bound]
        after = [max(lat, 0) for at, lat in by_deadline if bound <= at <= bound + BOUNDARY_WINDOW_NS]
        sides = f" (before {(percentile(before, 99) or 0) / 1e6:.3f} / after {(percentile(after, 99) or 0) / 1e6:.3f})"
        around.append((f"{sp.stages[i - 1].label} -> {sp.stages[i].label}", (percentile(late, 99) or 0) / 1e6,
                       len(late), sides))
    for i, stage in enumerate(sp.stages):
        mid = (sp.bounds_ns[i] + sp.bounds_ns[i + 1]) // 2
        late = [max(lat, 0) for at, lat in by_deadline if abs(at - mid) <= BOUNDARY_WINDOW_NS]
        middle.append((stage.label, (percentile(late, 99) or 0) / 1e6, len(late)))
    return around, middle


# -- (c): a ramp against a CPU-bound app --------------------------------------------------------------------
APP = f'''
import time

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/work":
        end = time.process_time() + {APP_CPU_S}
        while time.process_time() < end:
            pass
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]}})
    await send({{"type": "http.response.body", "body": b"ok"}})
'''


def saturation_capture(path: str, seconds: int = 4, rate: int = APP_BASE_RATE) -> None:
    """`rate` GETs /work per second, evenly, one connection each per 8 requests."""
    t0 = 1_700_000_000_000_000_000
    n = rate * seconds
    with GorFile(path) as out:
        for i in range(n):
            ts = t0 + i * 1_000_000_000 // rate
            rid = f"{i // 8 + 1:016x}{i:08x}"
            out.emit(f"1 {rid} {ts} -1\n".encode() + b"GET /work HTTP/1.1\r\nHost: app.example\r\n\r\n")
            out.emit(f"2 {rid} {ts + 6_000_000} -1\n".encode()
                     + b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")


def run_saturation(workdir: str, ramp_to: int) -> dict:
    app_dir = os.path.join(workdir, "app")
    os.makedirs(app_dir)
    with open(os.path.join(app_dir, "cpu_app.py"), "w") as f:
        f.write(APP)
    port = free_port()
    app = spawn([sys.executable, "-m", "uvicorn", "cpu_app:app", "--app-dir", app_dir, "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning", "--no-access-log"], port, timeout=30)
    url = f"http://127.0.0.1:{port}"
    try:
        capacity = run_wrk(url + "/work", 4, 4)
        gor = os.path.join(workdir, "work.gor")
        # 1x at a quarter of what the app serves now (at most 40 req/s): on a loaded machine the app gets a
        # fraction of a core, and a 1x it cannot hold would stop the run before the ramp
        base = max(4, min(APP_BASE_RATE, int(capacity / 4)))
        saturation_capture(gor, rate=base)
        report = os.path.join(workdir, "evidence")
        stages = f"1x:3s, ramp 1x..{ramp_to}x:24s"
        began = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--replay", gor, "--replay-target", url,
             "--replay-group", "endpoint", "--replay-stages", stages, "--replay-abort-on", ABORT,
             "--replay-abort-window", "2", "--replay-target-pid", str(app.pid), "--replay-report", report],
            cwd=workdir, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
        wall = time.monotonic() - began
    finally:
        stop(app)
    files = sorted(os.listdir(report)) if os.path.isdir(report) else []
    if not files:
        raise RuntimeError(f"no evidence written; pytest said:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    with open(os.path.join(report, files[-1])) as f:
        evidence = json.load(f)
    return {"capacity": capacity, "base": base, "evidence": evidence, "stdout": proc.stdout, "returncode": proc.returncode,
            "wall_s": wall, "stages": stages}


class _SkipToSaturation(Exception):
    """--only-saturation: straight to (c)."""


# -- main -------------------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="half the stage durations")
    parser.add_argument("--max-rate", type=int, default=20_000, help="the top stage's rate (req/s)")
    parser.add_argument("--ramp-to", type=int, default=12, help="(c): the ramp's end, a speed factor over 40 req/s")
    parser.add_argument("--keep", help="keep the scratch directory here")
    parser.add_argument("--only-saturation", action="store_true", help="run (c) alone (no nginx needed)")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is not on PATH", file=sys.stderr)
            return 2
    ok = True

    def row(what: str, figure: str, verdict: str = "") -> None:
        print(f"  {what:<52} {figure:>34}  {verdict}", flush=True)

    def judge(passed: bool, why: str) -> str:
        nonlocal ok
        ok &= passed
        return ("PASS" if passed else "FAIL") + f" ({why})"

    workdir = args.keep or tempfile.mkdtemp(prefix="bench-capacity-")
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)  # nginx workers run as nobody
    began = time.monotonic()
    nginx = None
    try:
        if args.only_saturation:
            raise _SkipToSaturation
        os.makedirs(os.path.join(workdir, "www"), exist_ok=True)
        with open(os.path.join(workdir, "www", "small.json"), "wb") as f:
            f.write(b'{"id": 42, "name": "Espresso Beans 1kg", "price_cents": 2490}\n')
        nginx, port = start_nginx(workdir)
        url = f"http://127.0.0.1:{port}"
        print(f"nginx on {url}; python {sys.version.split()[0]}; {os.cpu_count()} cores; load average "
              f"{os.getloadavg()[0]:.2f}; engine event loop: {loop_name()}")
        stages = stages_text(args.quick, args.max_rate)
        print(f"\n(a) achieved rate per stage: '{stages}', {CONNECTIONS} connections, concurrency {CONCURRENCY}")
        wrk = run_wrk(url + "/small.json", 4, CONNECTIONS)
        row(f"wrk -c {CONNECTIONS} -t 1 -d 4s (closed loop, reference)", f"{wrk:,.0f} req/s")
        engine, sp = run_stages(url, stages)
        for r in stage_rows(engine, sp):
            off = r["achieved"] / r["target"] - 1
            row(f"{r['stage']}: target / planned / achieved",
                f"{r['target']:,.0f} / {r['planned']:,.0f} / {r['achieved']:,.0f} ({off:+.1%})",
                judge(abs(off) <= RATE_TOLERANCE, f"within {RATE_TOLERANCE:.0%}"))
        print(f"\n(b) lateness p99 within {BOUNDARY_WINDOW_NS // 1_000_000} ms of each stage boundary (ms)")
        around, middle = boundary_lateness(engine, sp)
        for label, p99, n, sides in around:
            row(f"boundary {label}", f"{p99:.3f} ({n:,} requests)",
                judge(p99 < BOUNDARY_P99_MS, f"< {BOUNDARY_P99_MS}") + sides)
        for label, p99, n in middle:
            row(f"  reference: middle of {label}", f"{p99:.3f} ({n:,} requests)")
        stop(nginx)
        nginx = None
    except _SkipToSaturation:
        print(f"python {sys.version.split()[0]}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    except BaseException:
        stop(nginx)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        print(f"\n(c) ramp against uvicorn with a {APP_CPU_S * 1e3:g} ms CPU-bound endpoint, stop on '{ABORT}'")
        sat = run_saturation(workdir, args.ramp_to)
        capacity_rps = sat["capacity"]
        row("wrk -c 4 -t 1 -d 4s on /work (the app's capacity)", f"{capacity_rps:,.0f} req/s")
        row("  1x of the capture (a quarter of it, at most 40)", f"{sat['base']:,.0f} req/s")
        row(f"  the CPU share it implies (x {APP_CPU_S * 1e3:g} ms)", f"{capacity_rps * APP_CPU_S:.2f} cores")
        data = sat["evidence"].get("capacity") or {}
        stopped = data.get("stopped")
        row(f"pytest --replay-stages '{sat['stages']}'", f"exit {sat['returncode']}, {sat['wall_s']:.1f} s")
        if not stopped:
            row("stopped", "no", judge(False, "the ramp must stop where the app saturates"))
            print(sat["stdout"][-2000:])
        else:
            first, ramp = data["stages"][0], data["stages"][1]
            base = data["base_rate"]
            into = stopped["into_stage_s"] if stopped["stage"] == 2 else 0.0
            end = args.ramp_to
            rate = base * (1 + (end - 1) * into / ramp["duration_s"]) if stopped["stage"] == 2 else base
            rate = stopped.get("offered_rate", rate)  # the schedule's rate at the stop (the window's end)
            row("stopped at", f"stage {stopped['stage']} + {into:.1f} s, offered ~{rate:,.0f} req/s "
                              f"({stopped['condition']}: {stopped['measured']})",
                judge(stopped["stage"] == 2, "in the ramp"))
            sentence = next((line for line in sat["stdout"].splitlines() if line.startswith("STOPPED")), "-")
            print(f"  {sentence}")
            for stage in data["stages"]:
                row(f"  stage {stage['stage']} {stage['pace']}: p99 service / from schedule",
                    f"{stage.get('service_p99_ms') or 0:,.1f} / {stage.get('scheduled_p99_ms') or 0:,.1f} ms")
            # completed in the stop's window (requests still waiting that counted are not served ones)
            served = (stopped["requests_in_window"] - stopped.get("in_flight_counted", 0)) / stopped["window_s"]
            row("  served in the stop's window / the app's capacity", f"{served:,.0f} req/s = "
                f"{served / capacity_rps:.2f}", judge(0.7 <= served / capacity_rps <= 1.3, "0.7..1.3"))
            row("  1x stage held", f"{first['sent_in_stage'] / first['duration_s']:,.1f} req/s")
            samples = (data.get("saturation") or {}).get("samples") or []
            at = stopped["at_s"]
            last = [s["target_cpu"] for s in samples if s.get("target_cpu") is not None and at - 3 <= s["t_s"] <= at]
            early = [s["target_cpu"] for s in samples if s.get("target_cpu") is not None and s["t_s"] <= 3]
            cpu = max(last) if last else 0.0
            row("app CPU (cores): 1x stage mean / last 3 s before the stop max",
                f"{(sum(early) / len(early)) if early else 0:.2f} / {cpu:.2f}",
                judge(cpu >= 0.8, "near one core at saturation"))
            replayer = [s["replayer_cpu"] for s in samples if s.get("replayer_cpu") is not None
                        and at - 3 <= s["t_s"] <= at]
            row("  replayer CPU (cores) in those seconds, max", f"{max(replayer) if replayer else 0:.2f}")
    finally:
        stop(nginx)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'all targets met' if ok else 'SOME TARGETS MISSED'} ({time.monotonic() - began:.0f} s; "
          f"load average {os.getloadavg()[0]:.2f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
