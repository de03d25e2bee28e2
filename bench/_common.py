"""Helpers the benchmark scripts share: servers on 127.0.0.1, processes, and what the machine is."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import time


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> None:
    """Until something listens on 127.0.0.1:port; fails early if `proc` (the server) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}): {err[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a child process and reap it (killed if it does not exit within `timeout`)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def tool_version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "-"
    text = (p.stdout + p.stderr).strip().splitlines()
    return text[0].strip() if text else "-"


def spawn(cmd: list[str], port: int, timeout: float = 10.0, **popen) -> subprocess.Popen:
    """Start a server process and wait until it listens on 127.0.0.1:port (stopped again if it fails)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)
    try:
        wait_port(port, proc, timeout)
    except RuntimeError:
        stop(proc)
        raise
    return proc


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    types {{ application/json json; text/css css; }}
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
    }}
}}
"""


def start_nginx(workdir: str) -> tuple[subprocess.Popen, int]:
    """nginx serving workdir/www on a free 127.0.0.1 port: one process (its CPU is the server's CPU),
    no access log, keep-alive connections that last the whole benchmark."""
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=workdir, port=port))
    return spawn(["nginx", "-c", conf, "-p", workdir, "-e", os.path.join(workdir, "error.log")], port), port


SEPARATOR = "\n🐵🙈🙉\n".encode()  # between .gor records


class GorFile:
    """A .gor file written record by record (buffered), renamed into place when the block ends
    without an error: `with GorFile(path) as out: out.emit(record)`; `out.written` counts records."""

    def __init__(self, path: str) -> None:
        self.path, self.written, self._chunks = path, 0, []

    def __enter__(self) -> "GorFile":
        self._file = open(self.path + ".part", "wb")
        return self

    def emit(self, record: bytes) -> None:
        chunks = self._chunks
        chunks.append(record)
        chunks.append(SEPARATOR)
        self.written += 1
        if len(chunks) >= 8192:
            self._file.write(b"".join(chunks))
            chunks.clear()

    def __exit__(self, kind, value, tb) -> None:
        self._file.write(b"".join(self._chunks))
        self._file.close()
        if kind is None:
            os.replace(self.path + ".part", self.path)
