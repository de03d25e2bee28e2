"""TLS 1.3 + HTTP/2 reading speed (issue 14, "Speed"): decrypting and parsing a capture of N requests
against reading the same requests captured as cleartext HTTP/1.1, and against tshark with the same
key log on the same file.

    sudo python bench/bench_tls_h2.py [--requests N] [--keep DIR] [--quick]

Recording (real traffic, tcpdump -i lo): nginx with `listen ... ssl http2` (TLS 1.3, AES-128-GCM,
self-signed certificate made by openssl) and a python-hyper h2 client over `ssl` logging its keys
(SSLContext.keylog_filename), 4 connections, 100 streams in flight; then the same requests (3 GET
for 1 POST with a body, the same paths and headers) as HTTP/1.1 keep-alive over 4 plain connections,
pipelined 100 at a time. `--keep DIR` keeps (and reuses) the captures and the key log.

Targets: TLS+h2 exchanges/s >= 40% of the cleartext HTTP/1.1 exchanges/s; faster than tshark
(`tshark -r F -o tls.keylog_file:K -Y http2.headers.method`, counted the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, free_port, log, spawn, stop, tool_version  # noqa: E402

CONNECTIONS = 4
IN_FLIGHT = 100
BODY = b'{"id": 1, "ok": true, "items": [1, 2, 3], "pad": "' + b"x" * 120 + b'"}\n'
HEADERS = [("user-agent", "bench/1.0"), ("accept", "application/json"), ("cookie", "session=abcdef0123456789")]

NGINX = """
worker_processes 1; daemon off; master_process off; pid {dir}/nginx.pid; error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off; default_type application/json; keepalive_requests 10000000; keepalive_timeout 300s;
    http2_max_concurrent_streams 256;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    server {{ listen 127.0.0.1:{tls_port} ssl http2; ssl_certificate {dir}/cert.pem; ssl_certificate_key {dir}/key.pem;
             ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
             root {dir}/www; location = /api/echo {{ return 200 "posted\\n"; }} }}
    server {{ listen 127.0.0.1:{port}; root {dir}/www; location = /api/echo {{ return 200 "posted\\n"; }} }}
}}
"""


def request_plan(n: int) -> list[tuple[str, str, bytes]]:
    out = []
    for i in range(n):
        if i % 4 == 3:
            out.append(("POST", "/api/echo", b'{"name": "item %d"}' % i))
        else:
            out.append(("GET", f"/api/items/{i % 50}.json", b""))
    return out


def start_nginx(work: Path) -> tuple[subprocess.Popen, int, int]:
    (work / "www" / "api" / "items").mkdir(parents=True)
    (work / "tmp").mkdir()
    for i in range(50):
        (work / "www" / "api" / "items" / f"{i}.json").write_bytes(BODY)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench.test",
                    "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")], check=True, capture_output=True)
    tls_port, port = free_port(), free_port()
    (work / "nginx.conf").write_text(NGINX.format(dir=work, tls_port=tls_port, port=port))
    proc = spawn(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], tls_port)
    return proc, tls_port, port


class Tcpdump:
    def __init__(self, out: Path, port: int) -> None:
        self.proc = subprocess.Popen(["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-B", "262144", "-n", "-w",
                                      str(out), f"tcp port {port}"], stderr=subprocess.PIPE)
        time.sleep(1.0)

    def stop(self) -> str:
        time.sleep(0.5)
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        text = err.decode(errors="replace")
        if "\n0 packets dropped by kernel" not in "\n" + text:
            raise RuntimeError(f"tcpdump dropped packets: {text.strip()}")
        return text


def h2_client(port: int, keys: Path, plan: list) -> int:
    """One TLS 1.3 connection (ALPN h2) sending `plan` with IN_FLIGHT streams open: responses read."""
    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.keylog_filename = str(keys)
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="bench.test")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.increment_flow_control_window(1 << 30)
    sock.sendall(conn.data_to_send())
    done = 0
    for start in range(0, len(plan), IN_FLIGHT):
        batch = plan[start:start + IN_FLIGHT]
        open_ids = set()
        for method, path, body in batch:
            sid = conn.get_next_available_stream_id()
            open_ids.add(sid)
            headers = [(":method", method), (":path", path), (":scheme", "https"), (":authority", "bench.test"),
                       *HEADERS]
            if body:
                headers.append(("content-type", "application/json"))
            conn.send_headers(sid, headers, end_stream=not body)
            if body:
                conn.send_data(sid, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        while open_ids:
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError("the server closed the connection")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    open_ids.discard(event.stream_id)
                    done += 1
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()
    return done


def h1_client(port: int, plan: list) -> int:
    """The same requests over one HTTP/1.1 keep-alive connection, IN_FLIGHT pipelined at a time."""
    sock = socket.create_connection(("127.0.0.1", port))
    extra = "".join(f"{name}: {value}\r\n" for name, value in HEADERS)
    done = 0
    for start in range(0, len(plan), IN_FLIGHT):
        batch = plan[start:start + IN_FLIGHT]
        wire = []
        for method, path, body in batch:
            head = f"{method} {path} HTTP/1.1\r\nHost: bench.test\r\n{extra}"
            if body:
                head += f"content-type: application/json\r\nContent-Length: {len(body)}\r\n"
            wire.append(head.encode() + b"\r\n" + body)
        sock.sendall(b"".join(wire))
        buf = b""
        want = len(batch)
        while buf.count(b"HTTP/1.1 200 OK\r\n") < want or not buf.endswith((BODY, b"posted\n")):
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError("the server closed the connection")
            buf += data
        done += want
    sock.close()
    return done


def record(work: Path, out: Path, n: int) -> None:
    nginx, tls_port, port = start_nginx(work)
    plan = request_plan(n)
    parts = [plan[i::CONNECTIONS] for i in range(CONNECTIONS)]
    keys = out / "tls_h2.keys.log"
    keys.unlink(missing_ok=True)
    try:
        dump = Tcpdump(out / "tls_h2.pcap", tls_port)
        t0 = time.perf_counter()
        try:
            sent = sum(h2_client(tls_port, keys, part) for part in parts)
        finally:
            dump.stop()
        log(f"recorded {sent} TLS 1.3 + HTTP/2 requests in {time.perf_counter() - t0:.1f} s")
        dump = Tcpdump(out / "http1.pcap", port)
        try:
            sent1 = sum(h1_client(port, part) for part in parts)
        finally:
            dump.stop()
        log(f"recorded {sent1} HTTP/1.1 requests")
        if sent != n or sent1 != n:
            raise RuntimeError(f"sent {sent} / {sent1} of {n}")
        (out / "meta.json").write_text(json.dumps({"requests": n}))
    finally:
        stop(nginx)


def ours(capture: Path, keys: Path | None) -> tuple[float, int]:
    """Best of 2 runs of pytest_replay.capture.load on the file: (seconds, complete exchanges)."""
    from pytest_replay.capture import load

    best, count = None, 0
    for _ in range(2):
        t0 = time.perf_counter()
        exchanges, stats = load(str(capture), keylog=[str(keys)] if keys else None)
        seconds = time.perf_counter() - t0
        count = sum(1 for e in exchanges if e.complete)
        best = seconds if best is None else min(best, seconds)
        if stats.skipped_streams:
            raise RuntimeError(f"streams skipped: {dict(stats.skipped_streams)}")
    return best, count


def tshark(capture: Path, keys: Path) -> tuple[float, int] | None:
    if shutil.which("tshark") is None:
        return None
    t0 = time.perf_counter()
    out = subprocess.run(["tshark", "-n", "-r", str(capture), "-o", f"tls.keylog_file:{keys}", "-Y",
                          "http2.headers.method", "-T", "fields", "-e", "http2.headers.method"],
                         capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - t0
    return seconds, sum(len(line.split(",")) for line in out.splitlines() if line.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 requests")
    parser.add_argument("--keep", metavar="DIR", help="keep the captures here (and reuse them if present)")
    args = parser.parse_args()
    n = 10_000 if args.quick else args.requests
    tmp = None
    if args.keep:
        out = Path(args.keep)
        out.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        out = Path(tmp.name)
    try:
        meta = out / "meta.json"
        if not meta.exists() or json.loads(meta.read_text())["requests"] != n:
            for tool in ("nginx", "tcpdump", "openssl"):
                if shutil.which(tool) is None:
                    print(f"{tool} not found: cannot record", file=sys.stderr)
                    return 2
            with tempfile.TemporaryDirectory() as work:
                record(Path(work), out, n)
        tls_pcap, keys, h1_pcap = out / "tls_h2.pcap", out / "tls_h2.keys.log", out / "http1.pcap"
        print(f"machine: {os.cpu_count()} cores, {cpu_model()}; load average {os.getloadavg()[0]:.2f}; "
              f"{tool_version(['tshark', '-v'])}")
        print(f"captures: TLS 1.3 + HTTP/2 {tls_pcap.stat().st_size / 1e6:.1f} MB, HTTP/1.1 "
              f"{h1_pcap.stat().st_size / 1e6:.1f} MB, {n} requests each")
        t_h1, c_h1 = ours(h1_pcap, None)
        t_h2, c_h2 = ours(tls_pcap, keys)
        rate_h1, rate_h2 = c_h1 / t_h1, c_h2 / t_h2
        print(f"ours, cleartext HTTP/1.1: {c_h1} exchanges in {t_h1:.2f} s = {rate_h1:,.0f} exchanges/s")
        print(f"ours, TLS 1.3 + HTTP/2 (decrypt + parse): {c_h2} exchanges in {t_h2:.2f} s = {rate_h2:,.0f} "
              f"exchanges/s")
        ratio = rate_h2 / rate_h1
        ok = c_h1 == n and c_h2 == n
        verdict = "PASS" if ratio >= 0.40 else "FAIL"
        ok = ok and ratio >= 0.40
        print(f"  TLS+h2 / cleartext = {ratio:.2f} (target >= 0.40): {verdict}")
        shark = tshark(tls_pcap, keys)
        if shark is not None:
            t_ts, c_ts = shark
            print(f"tshark with the key log: {c_ts} requests in {t_ts:.2f} s = {c_ts / t_ts:,.0f} requests/s")
            faster = t_h2 < t_ts
            print(f"  ours / tshark = x{t_ts / t_h2:.1f} faster (target > x1): {'PASS' if faster else 'FAIL'}; "
                  f"requests agree: {c_ts == c_h2}")
            ok = ok and faster and c_ts == c_h2
        return 0 if ok else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
