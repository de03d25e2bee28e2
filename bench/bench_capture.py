#!/usr/bin/env python
"""Capture-layer benchmark: pcap and .gor reading speed and memory, against references measured in the same run.

    python bench/bench_capture.py [--quick] [--pcap FILE] [--keep DIR] [--repeat N] [--against DIR]

1. pcap end to end (the fast loop, capture/fast.py, and beside it the reference path alone). Unless --pcap is given, records a keep-alive capture on loopback (nginx on 127.0.0.1
   with a temp config, tcpdump -c N, wrk -c 8 -t 1 mixing a small and (1 in 10) a ~20 KB JSON file; fails if
   tcpdump reports drops). Times `Capture(file)` iterated to the end (best of --repeat) and
   `tshark -Y http.request -T fields -e http.request.uri` on the same file; compares the request counts.
   Also reads the small committed captures (reported, not used for targets).
2. .gor. Writes synthetic but realistic .gor files (request/response pairs on interleaved keep-alive
   connections, 24-hex ids, JSON bodies, ~1% records out of order) of 100k, 300k and 1M records, plus a
   .gor.gz of the 300k one; times `Capture(file)` and a reference loop "split on the separator +
   httptools parse of each record" (design.md section 3: ~187k records/s); the peak RSS (VmHWM, see
   child_memory) of a fresh child process per size shows whether memory stays flat as the file grows.
   The .gor reader's reference path (GorReader(fast=False)) is timed beside its fast path on the smallest file.
3. pcapng: the recorded capture converted with `editcap -F pcapng` (when editcap is on PATH), timed like the pcap.
4. --against DIR (a checkout of another commit, e.g. `git worktree add /tmp/before main`): that tree's reader
   reads the same pcap, pcapng and .gor files in the same run, each file alternately by a fresh process of
   each tree (best of --repeat, CPU time and wall time): before/after figures measured under the same load.
5. Prints one table with targets: pcap >= 350,000 packets/s and >= 7x tshark, .gor >= 200,000 records/s,
   peak RSS at the largest .gor size <= 1.25 x peak RSS at the smallest.

Needs root, tcpdump, nginx and wrk to record (tshark optional). Stdlib plus the project only.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import heapq
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pytest_replay.capture import Capture  # noqa: E402
from _common import SEPARATOR, GorFile, cpu_model, log, start_nginx, stop, tool_version  # noqa: E402

TARGET_PCAP_PPS = 350_000
TARGET_TSHARK_RATIO = 7.0
TARGET_GOR_RPS = 200_000
TARGET_MEM_RATIO = 1.25
DESIGN_GOR_BASELINE = "~187k rec/s"
DESIGN_TSHARK = "~14k pkt/s"

FULL = {"packets": 120_000, "wrk_seconds": 3, "gor_sizes": (100_000, 300_000, 1_000_000), "gz_size": 300_000}
QUICK = {"packets": 20_000, "wrk_seconds": 1, "gor_sizes": (10_000, 30_000, 100_000), "gz_size": 30_000}


# ---------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------
def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def best_of(fn, repeat: int):
    """(best seconds, result of the best run)."""
    best = None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        if best is None or dt < best[0]:
            best = (dt, result)
    return best


# ---------------------------------------------------------------------------------------------------
# 1. pcap: record with nginx + tcpdump + wrk
# ---------------------------------------------------------------------------------------------------
WRK_LUA = """
local i = 0
request = function()
  i = i + 1
  if i % 10 == 0 then return wrk.format("GET", "/big.json") end
  return wrk.format("GET", "/item.json")
end
"""


def json_blob(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    items, out = [], b""
    while True:
        items.append({"id": rng.randrange(10**6), "sku": f"SKU-{rng.randrange(10**5):05d}",
                      "name": rng.choice(["lamp", "desk", "chair", "shelf", "mug"]) + f" {rng.randrange(100)}",
                      "price": round(rng.uniform(1, 500), 2), "tags": rng.sample(["a", "b", "c", "d", "e"], 2)})
        candidate = json.dumps({"items": items, "count": len(items)}).encode() + b"\n"
        if len(candidate) > size:
            return out or candidate
        out = candidate


def record_pcap(out: str, packets: int, wrk_seconds: int, workdir: str, buffer_kib: int = 65536) -> dict:
    """Record a keep-alive nginx capture of `packets` packets; returns facts about the recording."""
    for tool in ("nginx", "tcpdump", "wrk"):
        if not shutil.which(tool):
            raise RuntimeError(f"{tool} not found on PATH (or give --pcap FILE)")
    if os.geteuid() != 0:
        raise RuntimeError("recording on lo needs root (or give --pcap FILE)")
    tmp = tempfile.mkdtemp(prefix="bench-nginx-", dir=workdir)
    os.chmod(tmp, 0o755)
    www = os.path.join(tmp, "www")
    os.mkdir(www)
    small, big = json_blob(300, 1), json_blob(20_000, 2)
    for name, data in (("item.json", small), ("big.json", big)):
        with open(os.path.join(www, name), "wb") as f:
            f.write(data)
    lua = os.path.join(tmp, "mix.lua")
    with open(lua, "w") as f:
        f.write(WRK_LUA)
    nginx = tcpdump = None
    err: list[str] = []
    try:
        nginx, port = start_nginx(tmp)
        # the readiness probe above is not in the capture: tcpdump starts after it
        tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-B", str(buffer_kib), "-n",
                                    "-Z", "root", "-w", out, "-c", str(packets), f"tcp port {port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready = threading.Event()

        def pump():
            for raw in iter(tcpdump.stderr.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                err.append(line)
                if "listening on" in line:
                    ready.set()
            ready.set()

        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        if not ready.wait(15) or tcpdump.poll() is not None:
            raise RuntimeError("tcpdump did not start: " + " | ".join(err))
        time.sleep(0.3)
        wrk = subprocess.run(["wrk", "-c", "8", "-t", "1", "-d", f"{wrk_seconds}s", "-s", lua,
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=wrk_seconds + 30)
        if wrk.returncode != 0:
            raise RuntimeError("wrk failed: " + wrk.stderr + wrk.stdout)
        if tcpdump.poll() is None:  # fewer packets than -c: flush, then stop it
            time.sleep(0.6)
            stop(tcpdump, signal.SIGINT)
        else:
            tcpdump.wait()
        pumper.join(5)
    finally:
        stop(tcpdump, signal.SIGINT)
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)
    captured = next((int(ln.split()[0]) for ln in err if ln.endswith("packets captured")), None)
    dropped = next((int(ln.split()[0]) for ln in err if "dropped by kernel" in ln), None)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", wrk.stdout)
    reqs = re.search(r"(\d+) requests in", wrk.stdout)
    return {"port": port, "buffer_kib": buffer_kib, "captured": captured, "dropped": dropped, "tcpdump": " | ".join(err[-3:]),
            "wrk_rps": float(rps.group(1)) if rps else None, "wrk_requests": int(reqs.group(1)) if reqs else None,
            "small_bytes": len(small), "big_bytes": len(big)}


def read_capture(path: str, fast: bool = True):
    """Iterate Capture(path) to the end: (exchanges, stats, server ports seen). `fast`: the pcap fast
    loop (capture/fast.py), else read_pcap's reference path alone."""
    from pytest_replay.capture import pcap as pcap_module

    saved, pcap_module.FAST_PATH = pcap_module.FAST_PATH, fast
    try:
        return _read_capture(path)
    finally:
        pcap_module.FAST_PATH = saved


def _read_capture(path: str):
    capture = Capture(path)
    conns = set()
    add = conns.add
    n = 0
    for exchange in capture:
        n += 1
        add(exchange.connection)
    ports = set()
    for conn in conns:
        if "->" in conn:
            ports.add(int(conn.rsplit(":", 1)[1]))
    return n, capture.stats, ports


def run_tshark(path: str, ports: set[int]) -> dict | None:
    tshark = shutil.which("tshark")
    if not tshark:
        return None
    cmd = [tshark, "-n", "-r", path, "-Y", "http.request", "-T", "fields", "-e", "http.request.uri"]
    for port in sorted(ports):
        if port != 80:
            cmd += ["-d", f"tcp.port=={port},http"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[:200], "seconds": dt}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    uris = sum(len(ln.split(",")) for ln in lines)  # pipelined requests in one frame are comma-joined
    return {"seconds": dt, "lines": len(lines), "uris": uris}


def bench_pcap(path: str, repeat: int, with_tshark: bool = True, reference: bool = False) -> dict:
    size = os.path.getsize(path)
    dt, (n, stats, ports) = best_of(lambda: read_capture(path), repeat)
    res = {"path": path, "bytes": size, "seconds": dt, "packets": stats.packets, "exchanges": n,
           "complete": stats.complete, "gaps": stats.gaps, "ports": ports}
    if reference:  # read_pcap's reference path alone (no capture/fast.py), same file, same run
        rdt, (rn, rstats, _) = best_of(lambda: read_capture(path, fast=False), repeat)
        res["reference"] = {"seconds": rdt, "same": (rn, rstats.complete) == (n, stats.complete)}
    res["tshark"] = run_tshark(path, ports) if with_tshark else None
    return res


# ---------------------------------------------------------------------------------------------------
# 2. .gor: synthetic files, reference loop
# ---------------------------------------------------------------------------------------------------
ENDPOINTS = (  # (weight, method, path template, request body?, statuses)
    (40, "GET", "/api/v1/users/{id}?include=profile", False, (200, 200, 200, 404)),
    (25, "GET", "/api/v1/orders?page={page}&limit=20", False, (200,)),
    (15, "POST", "/api/v1/orders", True, (201, 201, 201, 422)),
    (8, "PUT", "/api/v1/users/{id}/settings", True, (200, 204)),
    (5, "DELETE", "/api/v1/sessions/{token}", False, (204,)),
    (7, "GET", "/health", False, (200,)),
)
REASONS = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found", 422: "Unprocessable Entity",
           500: "Internal Server Error"}
AGENTS = ("python-requests/2.31.0", "okhttp/4.12.0",
          "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
          "Go-http-client/1.1")


class GorSynth:
    """Realistic request/response records on interleaved keep-alive connections, in timestamp order."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.weights = [e[0] for e in ENDPOINTS]

    def message_pair(self, ts: int) -> tuple[bytes, bytes]:
        rng = self.rng
        _, method, tmpl, has_body, statuses = rng.choices(ENDPOINTS, self.weights)[0]
        target = tmpl.format(id=rng.randrange(1, 10**6), page=rng.randrange(1, 50), token=f"{rng.getrandbits(64):016x}")
        rid = f"{rng.getrandbits(128):032x}"
        head = [f"{method} {target} HTTP/1.1", "Host: api.example.com", f"User-Agent: {rng.choice(AGENTS)}",
                "Accept: application/json", "Accept-Encoding: gzip, deflate",
                f"Authorization: Bearer {rng.getrandbits(160):040x}", f"X-Request-Id: {rid}", "Connection: keep-alive"]
        body = b""
        if has_body:
            body = json.dumps({"item_id": rng.randrange(10**5), "qty": rng.randrange(1, 9),
                               "note": "x" * rng.randrange(0, 80), "gift": rng.random() < 0.1}).encode()
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        status = rng.choice(statuses)
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(ts // 10**9))
        rhead = [f"HTTP/1.1 {status} {REASONS[status]}", "Server: nginx/1.22.1", f"Date: {date}",
                 f"X-Request-Id: {rid}", "Connection: keep-alive"]
        rbody = b""
        if status != 204:
            if status >= 400:
                rbody = json.dumps({"error": REASONS[status].lower(), "request_id": rid}).encode()
            else:
                rbody = json.dumps({"id": rng.randrange(10**6), "status": rng.choice(["active", "pending", "done"]),
                                    "items": [rng.randrange(1000) for _ in range(rng.randrange(1, 12))],
                                    "updated_at": date}).encode()
            rhead += ["Content-Type: application/json", f"Content-Length: {len(rbody)}"]
        response = ("\r\n".join(rhead) + "\r\n\r\n").encode() + rbody
        return request, response

    def records(self, n_records: int):
        """Yield (ts, record bytes) for n_records records (half requests, half responses)."""
        rng = self.rng
        t = 1_700_000_000 * 10**9
        pending: list[tuple[int, int, bytes]] = []  # (ts, tiebreak, record)
        tie = 0
        pool = 32
        conns = [self._new_conn() for _ in range(pool)]  # [prefix, seq, requests left, busy until]
        pairs = n_records // 2
        for _ in range(pairs):
            t += int(rng.expovariate(1 / 40_000))  # ~25k requests/s
            idle = [c for c in conns if c[3] <= t]
            if not idle:
                t = min(c[3] for c in conns) + 1
                idle = [c for c in conns if c[3] <= t]
            conn = rng.choice(idle)
            conn[1] = (conn[1] + rng.randrange(200, 4000)) & 0xFFFFFFFF
            rid = f"{conn[0]}{conn[1]:08x}"
            latency = int(rng.lognormvariate(14.5, 0.6))  # median ~2 ms
            request, response = self.message_pair(t)
            resp_ts = t + latency
            while pending and pending[0][0] <= t:
                ts, _, rec = heapq.heappop(pending)
                yield ts, rec
            tie += 1
            yield t, f"1 {rid} {t} {rng.randrange(1000, 90_000)}\n".encode() + request
            heapq.heappush(pending, (resp_ts, tie, f"2 {rid} {resp_ts} {rng.randrange(1000, 90_000)}\n".encode()
                                     + response))
            conn[3] = resp_ts + rng.randrange(10_000, 200_000)
            conn[2] -= 1
            if conn[2] <= 0:
                conns[conns.index(conn)] = self._new_conn()
        while pending:
            ts, _, rec = heapq.heappop(pending)
            yield ts, rec

    def _new_conn(self) -> list:
        rng = self.rng
        prefix = f"{rng.randrange(32768, 61000):04x}1f90{rng.getrandbits(32):08x}"
        return [prefix, rng.getrandbits(32), rng.randrange(1, 60), 0]


def write_gor(path: str, n_records: int, seed: int = 7) -> dict:
    """Write the synthetic file; ~1% of records are emitted 1-50 records later than their place."""
    synth = GorSynth(seed)
    rng = random.Random(seed + 1)
    delayed: list[list] = []  # [records still to pass, record]
    moved = 0
    with GorFile(path) as out:
        emit = out.emit
        for _, rec in synth.records(n_records):
            if rng.random() < 0.01:
                delayed.append([rng.randrange(1, 51), rec])
                moved += 1
                continue
            emit(rec)
            if delayed:
                keep = []
                for item in delayed:
                    item[0] -= 1
                    if item[0] <= 0:
                        emit(item[1])
                    else:
                        keep.append(item)
                delayed = keep
        for _, rec in delayed:
            emit(rec)
    return {"records": out.written, "moved": moved}


def gor_baseline(path: str) -> int:
    """The reference loop: split on the separator, parse every record's payload with httptools."""
    import httptools

    class Sink:
        __slots__ = ("url", "headers", "body", "done")

        def __init__(self):
            self.headers = []
            self.body = []
            self.done = False
            self.url = None

        def on_url(self, url):
            self.url = url

        def on_header(self, name, value):
            self.headers.append((name, value))

        def on_body(self, body):
            self.body.append(body)

        def on_message_complete(self):
            self.done = True

    Req, Resp = httptools.HttpRequestParser, httptools.HttpResponseParser
    n = 0
    sep_len = len(SEPARATOR)
    buf = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            buf = buf + chunk if buf else chunk
            start = 0
            while True:
                end = buf.find(SEPARATOR, start)
                if end < 0:
                    break
                record = buf[start:end]
                start = end + sep_len
                nl = record.find(b"\n")
                fields = record[:nl].split(b" ")
                sink = Sink()
                parser = Req(sink) if fields[0] == b"1" else Resp(sink)
                parser.feed_data(record[nl + 1:])
                n += 1
            buf = buf[start:]
    return n


def read_gor(path: str, fast: bool = True) -> tuple[int, int]:
    from pytest_replay.capture.gor import GorReader

    saved, GorReader.fast_path = GorReader.fast_path, fast
    try:
        capture = Capture(path)
        n = 0
        for _ in capture:
            n += 1
    finally:
        GorReader.fast_path = saved
    records = sum(info.get("records", 0) for info in capture.stats.files)
    return n, records


_TIME_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pytest_replay.capture import Capture
import pytest_replay.capture.pcap  # imported before the clock starts
capture = Capture(sys.argv[2])
cpu, wall = time.process_time(), time.perf_counter()
exchanges = complete = 0
for exchange in capture:
    exchanges += 1
    complete += exchange.complete
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
stats = capture.stats
print(json.dumps({"cpu": cpu, "wall": wall, "exchanges": exchanges, "complete": complete, "packets": stats.packets,
                  "records": sum(info.get("records", 0) for info in stats.files), "tree": pytest_replay.__file__}))
"""


def against(tree: str, path: str, repeat: int) -> tuple[dict, dict]:
    """Best of `repeat` (CPU and wall time separately) for `tree`'s reader and this tree's on `path`,
    each run a fresh process, the two trees alternating so that both see the same load."""
    best: dict[str, dict] = {}
    for _ in range(max(2, repeat)):
        for name, root in (("theirs", os.path.abspath(tree)), ("ours", ROOT)):
            out = subprocess.run([sys.executable, "-c", _TIME_CHILD, root, path], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"timing {path} with {root} failed: {out.stderr[-500:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            if not got["tree"].startswith(root):
                raise RuntimeError(f"{root}: imported {got['tree']} instead")
            kept = best.setdefault(name, got)
            kept["cpu"], kept["wall"] = min(kept["cpu"], got["cpu"]), min(kept["wall"], got["wall"])
    return best["theirs"], best["ours"]


def child_memory(path: str) -> dict:
    """Peak memory of a fresh process that only imports the project and reads `path`.

    ru_maxrss of a child is NOT usable here: at exec the kernel folds the old (forked) address space's
    high-water mark into the child's, so the child reports the parent's peak (this process's, after it
    read the 1M-record file). The child reads VmHWM / VmRSS of its own address space instead.
    """
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", path], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ROOT})
    if out.returncode != 0:
        raise RuntimeError(f"child failed on {path}: {out.stderr[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _vm(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _child(path: str) -> None:
    import pytest_replay.capture.pcap  # noqa: F401  (all reader imports done before the baseline)
    base = _vm("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    capture = Capture(path)
    n = sum(1 for _ in capture)
    dt = time.perf_counter() - t0
    peak = _vm("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"import_kb": base, "peak_kb": peak, "exchanges": n, "seconds": dt,
                      "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _git_head(tree: str) -> str:
    out = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "not a git checkout"


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test (< 60 s)")
    ap.add_argument("--pcap", metavar="FILE", help="benchmark this pcap instead of recording one")
    ap.add_argument("--keep", metavar="DIR", help="keep the recorded pcap and the generated .gor files here "
                    "(existing .gor files of the same size are reused)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement, best kept (default 3)")
    ap.add_argument("--against", metavar="DIR", help="also time the reader of this checkout (another commit) on the "
                    "same files, alternately with this tree's, for before/after figures under the same load")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        _child(args._child)
        return 0

    cfg = QUICK if args.quick else FULL
    started = time.perf_counter()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        workdir = os.path.abspath(args.keep)
        tmp_root = None
    else:
        tmp_root = workdir = tempfile.mkdtemp(prefix="bench-capture-")
    rows: list[tuple[str, str, str, str]] = []  # (what, figure, vs reference, target / status)
    verdicts: list[bool] = []
    notes: list[str] = []

    def row(what, figure, ref="", target=""):
        rows.append((what, figure, ref, target))

    def check(ok: bool, text: str) -> str:
        verdicts.append(ok)
        return f"{text} {'PASS' if ok else 'FAIL'}"

    try:
        # ---------------- 1. pcap ----------------
        if args.pcap:
            pcap, rec = args.pcap, None
        else:
            pcap = os.path.join(workdir, "keepalive_nginx.pcap")
            # With --immediate-mode libpcap uses a TPACKET_V2 ring of frame-sized slots (~64 KiB on lo):
            # -B 65536 is ~1000 slots, which wrk at full speed can outrun on 2 cores. Retry with more.
            attempts = []
            for buffer_kib in (65536, 262144, 524288):
                log(f"recording {cfg['packets']:,} packets: nginx + tcpdump -B {buffer_kib} -c + wrk -c 8 -t 1 "
                    f"-d {cfg['wrk_seconds']}s")
                rec = record_pcap(pcap, cfg["packets"], cfg["wrk_seconds"], workdir, buffer_kib)
                attempts.append(f"-B {buffer_kib}: {rec['dropped']} dropped")
                if rec["dropped"] == 0:
                    break
            ok = rec["dropped"] == 0 and rec["captured"] is not None
            row("record: tcpdump packets / dropped", f"{fmt_int(rec['captured'] or 0)} / {rec['dropped']}",
                f"wrk {fmt_int(rec['wrk_rps'] or 0)} req/s; " + ", ".join(attempts), check(ok, "0 drops"))
        log(f"reading {pcap}")
        main_res = bench_pcap(pcap, args.repeat, reference=True)
        pps = main_res["packets"] / main_res["seconds"]
        xps = main_res["exchanges"] / main_res["seconds"]
        ts = main_res["tshark"]
        tshark_ref = ""
        if ts and "error" not in ts:
            tshark_ref = f"tshark {ts['seconds']:.2f} s = {fmt_int(main_res['packets'] / ts['seconds'])} pkt/s; " \
                         f"x{ts['seconds'] / main_res['seconds']:.1f} faster"
        elif ts:
            tshark_ref = f"tshark failed: {ts['error']}"
        else:
            tshark_ref = "tshark not on PATH"
        row(f"pcap {os.path.basename(pcap)} ({main_res['bytes'] / 1e6:.1f} MB, {fmt_int(main_res['packets'])} pkts)",
            f"{main_res['seconds']:.2f} s = {fmt_int(pps)} pkt/s, {fmt_int(xps)} exch/s, "
            f"{main_res['bytes'] / 1e6 / main_res['seconds']:.0f} MB/s", tshark_ref,
            check(pps >= TARGET_PCAP_PPS, f">= {fmt_int(TARGET_PCAP_PPS)} pkt/s"))
        ref = main_res["reference"]
        row("  pcap reference path (pcap.FAST_PATH off)", f"{ref['seconds']:.2f} s = "
            f"{fmt_int(main_res['packets'] / ref['seconds'])} pkt/s", f"fast loop x{ref['seconds'] / main_res['seconds']:.2f}",
            check(ref["same"], "same exchanges"))
        if ts and "error" not in ts:
            ratio = ts["seconds"] / main_res["seconds"]
            row("  pcap vs tshark (same file, same run)", f"x{ratio:.1f}", "",
                check(ratio >= TARGET_TSHARK_RATIO, f">= x{TARGET_TSHARK_RATIO:.0f} tshark"))
        compared = [pcap]
        ng = os.path.join(workdir, os.path.basename(pcap) + "ng") if pcap.endswith(".pcap") else None
        if ng and shutil.which("editcap"):
            # (a kept pcapng is reused only while it is the conversion of this pcap: the pcap is
            # recorded anew each run unless --pcap names one)
            if not (args.keep and os.path.exists(ng) and os.path.getmtime(ng) >= os.path.getmtime(pcap)):
                subprocess.run(["editcap", "-F", "pcapng", pcap, ng], check=True, capture_output=True)
            ng_res = bench_pcap(ng, args.repeat, with_tshark=False, reference=True)
            row(f"pcapng {os.path.basename(ng)} (editcap of the same packets)",
                f"{ng_res['seconds']:.2f} s = {fmt_int(ng_res['packets'] / ng_res['seconds'])} pkt/s",
                f"{main_res['seconds'] / ng_res['seconds']:.2f}x the pcap's rate; requests "
                f"{fmt_int(ng_res['exchanges'])}" + (" agree" if ng_res["exchanges"] == main_res["exchanges"] else " DIFFER"),
                check(ng_res["exchanges"] == main_res["exchanges"], "same requests"))
            ref = ng_res["reference"]
            row("  pcapng reference path (pcap.FAST_PATH off)", f"{ref['seconds']:.2f} s = "
                f"{fmt_int(ng_res['packets'] / ref['seconds'])} pkt/s", f"fast loop x{ref['seconds'] / ng_res['seconds']:.2f}",
                check(ref["same"], "same exchanges"))
            compared.append(ng)
        if ts and "error" not in ts:
            same = ts["uris"] == main_res["exchanges"]
            row("  requests: ours / tshark", f"{fmt_int(main_res['exchanges'])} / {fmt_int(ts['uris'])}"
                + (f" ({fmt_int(ts['lines'])} frames)" if ts["lines"] != ts["uris"] else ""),
                f"{fmt_int(main_res['complete'])} complete", check(same, "agree"))
        for extra in ("fixtures/captures/recorded/many_2000_nginx.pcap", "fixtures/captures/demo/demo.pcap"):
            p = os.path.join(ROOT, extra)
            if not os.path.exists(p):
                continue
            r = bench_pcap(p, args.repeat)
            t = r["tshark"]
            ref = ""
            if t and "error" not in t:
                ref = f"tshark {t['seconds']:.2f} s (x{t['seconds'] / r['seconds']:.0f}); requests " \
                      f"{fmt_int(r['exchanges'])} / {fmt_int(t['uris'])}" + (" agree" if t["uris"] == r["exchanges"]
                                                                            else " DIFFER")
            row(f"pcap {os.path.basename(p)} ({fmt_int(r['packets'])} pkts, small)",
                f"{r['seconds'] * 1000:.0f} ms = {fmt_int(r['packets'] / r['seconds'])} pkt/s", ref, "(info)")

        # ---------------- 2. .gor ----------------
        gor_files = {}
        for n in cfg["gor_sizes"]:
            path = os.path.join(workdir, f"synthetic_{n}.gor")
            if args.keep and os.path.exists(path):
                log(f"reusing {path}")
            else:
                log(f"writing {n:,}-record .gor")
                write_gor(path, n)
            gor_files[n] = path
        gz = gor_files[cfg["gz_size"]] + ".gz"
        if not (args.keep and os.path.exists(gz)):
            log(f"compressing {os.path.basename(gz)}")
            with open(gor_files[cfg["gz_size"]], "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

        mem = {}
        min_rps = None
        for n, path in gor_files.items():
            size = os.path.getsize(path)
            log(f"reading {os.path.basename(path)}")
            dt, (exchanges, records) = best_of(lambda: read_gor(path), args.repeat)
            bdt, brecs = best_of(lambda: gor_baseline(path), args.repeat)
            rps, brps = records / dt, brecs / bdt
            min_rps = rps if min_rps is None else min(min_rps, rps)
            mem[n] = child_memory(path)
            row(f".gor {n:,} rec ({size / 1e6:.0f} MB)",
                f"{dt:.2f} s = {fmt_int(rps)} rec/s, {size / 1e6 / dt:.0f} MB/s",
                f"split+httptools {fmt_int(brps)} rec/s, {size / 1e6 / bdt:.0f} MB/s; ours x{rps / brps:.2f}",
                check(rps >= TARGET_GOR_RPS, f">= {fmt_int(TARGET_GOR_RPS)} rec/s"))
            if n == cfg["gor_sizes"][0]:
                rdt, (rex, _) = best_of(lambda: read_gor(path, fast=False), args.repeat)
                row("  .gor reference path (GorReader(fast=False))", f"{rdt:.2f} s = {fmt_int(records / rdt)} rec/s",
                    f"fast path x{rdt / dt:.2f} faster", check(rex == exchanges, "same exchanges"))
            if exchanges * 2 != records:
                notes.append(f"{os.path.basename(path)}: {exchanges:,} exchanges from {records:,} records "
                             "(expected records / 2)")
        dt, (exchanges, records) = best_of(lambda: read_gor(gz), args.repeat)
        row(f".gor.gz {cfg['gz_size']:,} rec ({os.path.getsize(gz) / 1e6:.0f} MB gz)",
            f"{dt:.2f} s = {fmt_int(records / dt)} rec/s", f"uncompressed {os.path.getsize(gor_files[cfg['gz_size']]) / 1e6 / dt:.0f} MB/s", "(info)")
        if args.against:
            for path in compared + [gor_files[cfg["gor_sizes"][0]], gor_files[cfg["gor_sizes"][-1]]]:
                log(f"timing {os.path.basename(path)}: {args.against} vs this tree, alternately")
                theirs, ours = against(args.against, path, args.repeat)
                unit = "pkt" if "packets" in ours and ours["packets"] else "rec"
                count = ours["packets"] or ours["records"]
                same = (theirs["exchanges"], theirs["complete"]) == (ours["exchanges"], ours["complete"])
                row(f"  before/after: {os.path.basename(path)}",
                    f"{fmt_int(count / ours['cpu'])} {unit}/s CPU, {fmt_int(count / ours['wall'])} wall",
                    f"{os.path.basename(args.against.rstrip('/'))}: {fmt_int(count / theirs['cpu'])} {unit}/s CPU, "
                    f"{fmt_int(count / theirs['wall'])} wall; x{theirs['cpu'] / ours['cpu']:.2f} (CPU)",
                    check(same and ours["cpu"] <= theirs["cpu"] * 1.05, "not slower, same exchanges"))
        sizes = sorted(mem)
        lo, hi = mem[sizes[0]], mem[sizes[-1]]
        ratio = hi["peak_kb"] / lo["peak_kb"]
        row("peak RSS, VmHWM (fresh child) " + " / ".join(f"{s // 1000}k" for s in sizes),
            " / ".join(f"{mem[s]['peak_kb'] / 1024:.0f}" for s in sizes) + " MB",
            f"after imports {lo['import_kb'] / 1024:.0f} MB; {sizes[-1] // 1000}k/{sizes[0] // 1000}k = x{ratio:.2f}; "
            f"above imports x{(hi['peak_kb'] - hi['import_kb']) / max(1, lo['peak_kb'] - lo['import_kb']):.2f}",
            check(ratio <= TARGET_MEM_RATIO, f"<= x{TARGET_MEM_RATIO}"))
    finally:
        if tmp_root:
            shutil.rmtree(tmp_root, ignore_errors=True)

    # ---------------- 3. report ----------------
    print("pytest-traffic-replay capture benchmark")
    print(f"command : {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"machine : nproc={os.cpu_count()} ({cpu_model()}), Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")
    print(f"tools   : {tool_version(['tshark', '--version'])}; {tool_version(['nginx', '-v'])}; "
          f"{tool_version(['wrk', '--version'])}")
    if rec:
        print(f"recorded: nginx 127.0.0.1:{rec['port']} files {rec['small_bytes']} B + {rec['big_bytes']} B (1 in 10), "
              f"wrk -c 8 -t 1 -d {cfg['wrk_seconds']}s: {fmt_int(rec['wrk_requests'] or 0)} requests; tcpdump: {rec['tcpdump']}")
    if args.against:
        print(f"against : {os.path.abspath(args.against)} ({_git_head(args.against)}) vs this tree ({_git_head(ROOT)})")
    print(f"mode    : {'quick' if args.quick else 'full'}, best of {args.repeat}; design.md refs: tshark {DESIGN_TSHARK}, "
          f"split+httptools {DESIGN_GOR_BASELINE}")
    widths = [max(len(r[i]) for r in rows + [("what", "figure", "reference (same run)", "target")]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(line(("what", "figure", "reference (same run)", "target")))
    print(line(tuple("-" * w for w in widths)))
    for r in rows:
        print(line(r))
    for note in notes:
        print(f"note: {note}")
    print(f"result  : {sum(verdicts)}/{len(verdicts)} checks pass; {time.perf_counter() - started:.0f} s"
          + (f"; files kept in {workdir}" if args.keep else ""))
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
