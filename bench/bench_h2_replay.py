#!/usr/bin/env python
"""HTTP/2 replay benchmark: the HTTP/2 target (targets/h2.py) against the HTTP/1.1 one (targets/raw.py),
same engine, same nginx, same run.

    python bench/bench_h2_replay.py [--quick] [--requests N] [--seconds S]

Starts one nginx on 127.0.0.1 with two servers on free ports serving the same small JSON file: one
speaking HTTP/1.1, one h2c with prior knowledge (`listen PORT http2;`), keep-alive for the whole run,
access_log off. Stopped in `finally`.

(a) Dispatch rate at speed 0, concurrency 64, a synthetic plan of GETs (50k; 20k with --quick):
    HTTP/1.1 over 32 connections (one request at a time each: RawTarget); HTTP/2 over 32 connections,
    one stream at a time each (the same shape); HTTP/2 over 32 connections with 4 streams in flight
    each (what a capture of multiplexed streams becomes: 4 slot lanes per connection). The ratio
    HTTP/2 / HTTP/1.1 is the figure the issue asks for.
(b) Lateness at a fixed 2,000 requests/s for 30 s (10 s with --quick), 16 lanes, pytest's thread
    wait()ing for every key: HTTP/1.1 and HTTP/2 one after the other.
(c) Where the HTTP/2 time goes, per exchange, in-process: the `h2` package's client state machine
    (send_headers, data_to_send, receive_data of the server's HEADERS+DATA, acknowledge), our frame
    walker on the same bytes (targets/h2.py _Connection, the default engine; the Response built too),
    and the HTTP/1.1 fast path's parse of a response (httptools via the project's Framer).

Needs nginx (with the http_v2 module) on PATH. Loopback only. Figures on a shared machine are ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402

from pytest_replay.http.h2 import to_request  # noqa: E402
from pytest_replay.http.message import Request  # noqa: E402
from pytest_replay.http.parser import Framer  # noqa: E402
from pytest_replay.schedule.engine import Engine  # noqa: E402
from pytest_replay.schedule.plan import SLOT, PlannedRequest  # noqa: E402
from pytest_replay.targets.h2 import H2Target  # noqa: E402
from pytest_replay.targets.raw import RawTarget  # noqa: E402
from _common import free_port, spawn, stop  # noqa: E402
from bench_replay import SMALL_JSON, check, lateness_stats, rate_of  # noqa: E402

FULL = {"requests": 50_000, "seconds": 30.0, "micro": 20_000}
QUICK = {"requests": 20_000, "seconds": 10.0, "micro": 5_000}
LANES = 32
LANES_FIDELITY = 16
RATE = 2_000

CONF = """
worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    types {{ application/json json; }}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{ listen 127.0.0.1:{port1}; root {dir}/www; }}
    server {{ listen 127.0.0.1:{port2} http2; root {dir}/www; }}
}}
"""


def start(workdir: str) -> tuple[subprocess.Popen, str, str]:
    os.makedirs(os.path.join(workdir, "www"))
    with open(os.path.join(workdir, "www", "small.json"), "wb") as f:
        f.write(SMALL_JSON)
    port1, port2 = free_port(), free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(CONF.format(dir=workdir, port1=port1, port2=port2))
    proc = spawn(["nginx", "-c", conf, "-p", workdir, "-e", os.path.join(workdir, "error.log")], port1)
    return proc, f"http://127.0.0.1:{port1}", f"http://127.0.0.1:{port2}"


def h1_request() -> Request:
    return Request.build("GET", "/small.json", ((b"Host", b"shop.example"), (b"User-Agent", b"bench"),
                                                (b"Accept", b"application/json")))


def h2_request() -> Request:
    return to_request([(b":method", b"GET"), (b":path", b"/small.json"), (b":authority", b"shop.example"),
                       (b"user-agent", b"bench"), (b"accept", b"application/json")], b"", (), "h2c")


def plan_for(target, request: Request, n: int, lanes: int, step_ns: int, streams: int = 1) -> list[PlannedRequest]:
    wire = target.wire(request)
    out = []
    for i in range(n):
        conn = f"conn{i % lanes}"
        lane = conn if streams == 1 else f"{conn}{SLOT}{(i // lanes) % streams}/{streams}"
        out.append(PlannedRequest(i, i * step_ns, lane, request, wire))
    return out


def run(target, plan: list[PlannedRequest], *, wait: bool) -> Engine:
    engine = Engine(plan, target, concurrency=64)
    engine.start()
    if wait:
        for p in plan:
            engine.wait(p.key)
    engine.stop()
    return engine


# -- (c) the state machines alone --------------------------------------------------------------------------
def h2_state_machine_us(n: int) -> float:
    """Per exchange: the client H2Connection sends HEADERS, takes the server's HEADERS+DATA+END_STREAM."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"shop.example"),
               (b":path", b"/small.json"), (b"user-agent", b"bench"), (b"accept", b"application/json")]
    reply = [(b":status", b"200"), (b"server", b"nginx"), (b"content-type", b"application/json"),
             (b"content-length", str(len(SMALL_JSON)).encode())]
    # the server's bytes for each stream, made once per stream id before timing
    frames = []
    for _ in range(n):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, headers, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, reply)
        server.send_data(sid, SMALL_JSON, end_stream=True)
        data = server.data_to_send()
        frames.append((sid, data))
        for event in client.receive_data(data):  # closes the stream (at most 100 open)
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        server.receive_data(client.data_to_send())
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.data_to_send()
    server2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server2.initiate_connection()
    client.receive_data(server2.data_to_send())
    start = time.perf_counter()
    for sid, data in frames:
        client.send_headers(client.get_next_available_stream_id(), headers, end_stream=True)
        client.data_to_send()
        for event in client.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        client.data_to_send()
    return (time.perf_counter() - start) / n * 1e6


def frames_us(n: int) -> float:
    """Per exchange, our frame walker (targets/h2.py _Connection): encode and write HEADERS, take the
    server's HEADERS+DATA (the same bytes h2_state_machine_us feeds the h2 package), build the Response."""
    import asyncio

    from pytest_replay.targets.h2 import _Connection, _FrameStream, encode_headers, h2_headers

    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    server.data_to_send()
    reply = [(b":status", b"200"), (b"server", b"nginx"), (b"content-type", b"application/json"),
             (b"content-length", str(len(SMALL_JSON)).encode())]
    frames = []
    for _ in range(n):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                                  (b":path", b"/")], end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, reply)
        server.send_data(sid, SMALL_JSON, end_stream=True)
        data = server.data_to_send()
        frames.append(data)
        for event in client.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        server.receive_data(client.data_to_send())

    class Sink:
        def write(self, data: bytes) -> None:
            pass

    loop = asyncio.new_event_loop()
    conn = _Connection(loop, time.perf_counter_ns, "h2c")
    conn.transport = Sink()
    block = encode_headers(h2_headers(h2_request(), "http", "shop.example"))  # once per request (H2Target)
    start = time.perf_counter()
    for i, data in enumerate(frames):
        sid = 2 * i + 1
        conn.streams[sid] = stream = _FrameStream(loop.create_future(), 65535)
        conn.transport.write(conn._header_frames(sid, block, True))
        conn.data_received(data)
        stream.waiter.result()
    elapsed = time.perf_counter() - start
    loop.close()
    return elapsed / n * 1e6


def h1_parse_us(n: int) -> float:
    response = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(SMALL_JSON)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + SMALL_JSON)
    framer = Framer(False, on_head=lambda msg: "GET")
    start = time.perf_counter()
    for _ in range(n):
        framer.feed(response, 0)
        while framer.next_event() is not None:
            pass
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    cfg["requests"] = args.requests or cfg["requests"]
    cfg["seconds"] = args.seconds or cfg["seconds"]
    if shutil.which("nginx") is None:
        print("nginx is not on PATH", file=sys.stderr)
        return 2

    def row(what: str, figure: str) -> None:
        print(f"  {what:<64} {figure:>24}", flush=True)

    workdir = tempfile.mkdtemp(prefix="bench-h2-replay-")
    os.chmod(workdir, 0o755)
    nginx = None
    began = time.monotonic()
    try:
        nginx, url1, url2 = start(workdir)
        print(f"nginx HTTP/1.1 on {url1}, h2c on {url2}; python {sys.version.split()[0]}; {os.cpu_count()} cores; "
              f"load average {os.getloadavg()[0]:.2f}")
        n = cfg["requests"]
        print(f"\n(a) dispatch rate, speed 0, {n:,} requests, {LANES} connections")
        h1 = rate_of(check(run(RawTarget(url1), plan_for(RawTarget(url1), h1_request(), n, LANES, 0), wait=False)))
        row("HTTP/1.1: engine + RawTarget, 1 request at a time per connection", f"{h1:,.0f} req/s")
        target = H2Target(url2, version="2")
        h2_one = rate_of(check(run(target, plan_for(target, h2_request(), n, LANES, 0), wait=False)))
        row("HTTP/2: engine + H2Target, 1 stream at a time per connection", f"{h2_one:,.0f} req/s")
        row("  HTTP/2 / HTTP/1.1", f"{h2_one / h1:.2f}")
        target = H2Target(url2, version="2")
        h2_four = rate_of(check(run(target, plan_for(target, h2_request(), n, LANES, 0, streams=4), wait=False)))
        row("HTTP/2: 4 streams in flight per connection (4 slot lanes each)", f"{h2_four:,.0f} req/s")
        row("  HTTP/2 multiplexed / HTTP/1.1", f"{h2_four / h1:.2f}")

        n_fid = int(RATE * cfg["seconds"])
        step = 1_000_000_000 // RATE
        print(f"\n(b) lateness at a fixed {RATE:,} req/s for {cfg['seconds']:g} s, {LANES_FIDELITY} lanes, "
              "pytest's thread wait()ing")
        stats = {}
        for label, target, request in (("HTTP/1.1", RawTarget(url1), h1_request()),
                                       ("HTTP/2", H2Target(url2, version="2"), h2_request())):
            observations = check(run(target, plan_for(target, request, n_fid, LANES_FIDELITY, step), wait=True))
            stats[label] = lateness_stats([o.lateness_ns for o in observations])
            s = stats[label]
            row(f"{label}: lateness p50 / p99 / max (ms)", f"{s['p50']:.3f} / {s['p99']:.3f} / {s['max']:.2f}")
        row("  HTTP/2 / HTTP/1.1 lateness p99", f"{stats['HTTP/2']['p99'] / max(stats['HTTP/1.1']['p99'], 1e-6):.2f}")

        m = cfg["micro"]
        print(f"\n(c) per exchange, in-process ({m:,} exchanges)")
        h2_us = h2_state_machine_us(m)
        ours_us = frames_us(m)
        h1_us = h1_parse_us(m)
        row("h2 package: client send_headers + receive HEADERS/DATA", f"{h2_us:.1f} us")
        row("our frame walker: the same, and the Response built", f"{ours_us:.1f} us")
        row("  h2 package / frame walker", f"{h2_us / ours_us:.1f}x")
        row("HTTP/1.1 fast path: Framer (httptools) parse of the response", f"{h1_us:.1f} us")
    finally:
        stop(nginx)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n({time.monotonic() - began:.0f} s; load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
