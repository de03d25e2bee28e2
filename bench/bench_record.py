#!/usr/bin/env python
"""The recording proxy's added latency: requests to nginx directly (the reference) and through
`python -m pytest_replay record` (secrets redacted, the default; and --keep-secrets), in the same run.

    python bench/bench_record.py [--requests N] [--rounds R] [--sustained M]

Starts nginx on 127.0.0.1 (a free port, temp config, a 1 KiB JSON file) and the recorder in front of
it, both stopped in `finally`. One client, one keep-alive connection per path, sequential requests
(a blocking socket, the response read by its Content-Length): the round trip of each request is
timed with perf_counter_ns. The paths take turns in rounds of N/R requests, so that all three see
the same machine load. Prints p50/p99 per path and the added latency (proxy minus direct, at p50
and p99). Target (issue 15.4): under 0.3 ms added at p50 on loopback. Exits non-zero if missed.
Then M requests back to back per path (sustained, after the rounds): requests/s as the client saw
them. A redacting recorder goes at the masker's pace once its writer's backlog (4 MiB) is full.

Needs nginx on PATH. Loopback only. Stdlib plus the project only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from _common import cpu_model, free_port, start_nginx, stop, wait_port  # noqa: E402

TARGET_ADDED_P50_MS = 0.3
BODY = (b'{"items": [' + b", ".join(b'{"id": %d, "name": "item %d"}' % (i, i) for i in range(40)) + b"]}")[:1024]


class Client:
    """One keep-alive connection; request() returns the round trip in ns."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = (b"GET /item.json HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n"
                        b"Authorization: Bearer bench-token-0123456789abcdef\r\n\r\n")
        self.buf = b""

    def once(self) -> int:
        start = time.perf_counter_ns()
        self.sock.sendall(self.request)
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
                total = end + 4 + length
                if len(buf) >= total:
                    break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed the connection")
            buf += chunk
        self.buf = buf[total:]
        return time.perf_counter_ns() - start

    def close(self) -> None:
        self.sock.close()


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


def start_recorder(upstream_port: int, out: str, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pytest_replay", "record", "--listen", f"127.0.0.1:{port}",
                             "--upstream", f"http://127.0.0.1:{upstream_port}", "-o", out, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    wait_port(port, proc)
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per path (default 20000)")
    parser.add_argument("--rounds", type=int, default=20, help="turns the paths take (default 20)")
    parser.add_argument("--sustained", type=int, default=10_000, help="back-to-back requests per path at the "
                        "end (default 10000)")
    args = parser.parse_args()
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        print("nginx is not installed", file=sys.stderr)
        return 2
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "www"))
        with open(os.path.join(work, "www", "item.json"), "wb") as f:
            f.write(BODY)
        try:
            nginx, nginx_port = start_nginx(work)
            procs.append(nginx)
            redacting, redacting_port = start_recorder(nginx_port, os.path.join(work, "redacted.gor"))
            procs.append(redacting)
            keeping, keeping_port = start_recorder(nginx_port, os.path.join(work, "kept.gor"), "--keep-secrets")
            procs.append(keeping)
            paths = {"direct (nginx)": Client(nginx_port), "record (redacting)": Client(redacting_port),
                     "record --keep-secrets": Client(keeping_port)}
            times: dict[str, list[int]] = {name: [] for name in paths}
            for client in paths.values():  # warm up: connections, caches, the recorders' first exchanges
                for _ in range(500):
                    client.once()
            per_round = max(1, args.requests // args.rounds)
            for _ in range(args.rounds):
                for name, client in paths.items():
                    once = client.once
                    times[name] += [once() for _ in range(per_round)]
            rates = {}
            for name, client in paths.items():
                start = time.perf_counter()
                for _ in range(args.sustained):
                    client.once()
                rates[name] = args.sustained / (time.perf_counter() - start)
            for client in paths.values():
                client.close()
        finally:
            summaries = []
            for proc in reversed(procs):
                stop(proc, signal.SIGINT)
                if proc is not procs[0] and proc.stdout is not None:
                    summaries.append(proc.stdout.read().decode(errors="replace").strip().splitlines()[-5:])
    direct = times["direct (nginx)"]
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; {len(direct)} sequential GETs per path "
          f"(1 KiB JSON from nginx, one keep-alive connection each, {args.rounds} interleaved rounds)")
    print(f"{'path':24} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10}")
    base50, base99 = percentile(direct, 0.5), percentile(direct, 0.99)
    added = {}
    for name, values in times.items():
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        added[name] = p50 - base50
        extra = "" if values is direct else f" {p50 - base50:>+10.3f} {p99 - base99:>+10.3f}"
        print(f"{name:24} {p50:>8.3f} {p99:>8.3f}{extra}")
    worst = max(added["record (redacting)"], added["record --keep-secrets"])
    ok = worst < TARGET_ADDED_P50_MS
    print(f"added latency at p50: redacting {added['record (redacting)']:.3f} ms, --keep-secrets "
          f"{added['record --keep-secrets']:.3f} ms (target < {TARGET_ADDED_P50_MS} ms): {'PASS' if ok else 'FAIL'}")
    print(f"sustained, {args.sustained} back-to-back requests per path: "
          + ", ".join(f"{name} {rate:,.0f} req/s" for name, rate in rates.items()))
    for lines in summaries:
        print("  recorder summary: " + " | ".join(line.strip() for line in lines[:3]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
