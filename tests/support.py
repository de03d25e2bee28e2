"""What the test modules share: paths into the repository, and servers they start on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "captures"
REAL = FIXTURES / "real"  # copies of ../shared/captures/real/, in the repository
DEMO = FIXTURES / "demo" / "demo.pcap"


GOR_SEP = "\n🐵🙈🙉\n".encode()  # GoReplay's record separator


def json_gets_gor(path: Path, targets: Sequence[str], header: str, *, gap_ms: int = 10) -> Path:
    """A .gor of GET requests (one connection each, `header` sent with every one) answered 200 `{}`,
    recorded an hour ago, `gap_ms` apart; each response 1 ms after its request."""
    records = []
    t0 = time.time_ns() - 3600 * 10**9
    for i, target in enumerate(targets):
        rid, at = f"{i + 1:016x}{0:08x}", t0 + i * gap_ms * 10**6
        request = f"GET {target} HTTP/1.1\r\nHost: shop.example.com\r\n{header}\r\n\r\n".encode()
        response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        records.append(f"1 {rid} {at} 0\n".encode() + request + GOR_SEP)
        records.append(f"2 {rid} {at + 10**6} 1000000\n".encode() + response + GOR_SEP)
    path.write_bytes(b"".join(records))
    return path


def feed_turns(client_turns: Sequence[bytes], server_turns: Sequence[bytes], *, cuts: Sequence[int] = (),
               close: bool = False):
    """One TCP connection built packet by packet and fed to a FlowTable: a handshake, then the turns
    (client then server, each turn's bytes cut at `cuts`, offsets modulo its length), then FIN both
    ways when `close`. Returns (drafts, stats)."""
    from pytest_replay.reassembly.draft import Reorder
    from pytest_replay.reassembly.flows import ACK, FIN, SYN, FlowTable
    from pytest_replay.reassembly.stats import CaptureStats

    reorder, stats = Reorder(), CaptureStats()
    table = FlowTable("mem", stats, reorder)
    cli, srv = (b"\x0a\x00\x00\x01", 40000), (b"\x0a\x00\x00\x02", 80)
    seq = {True: 1000, False: 5000}
    frame = 0

    def packet(from_client: bool, flags: int, payload: bytes = b"") -> None:
        nonlocal frame
        frame += 1
        src, dst = (cli, srv) if from_client else (srv, cli)
        table.packet(src[0], src[1], dst[0], dst[1], seq[from_client], seq[not from_client], flags, payload, 0,
                     frame * 1000, frame, frame * 100)
        seq[from_client] += len(payload) + bool(flags & (SYN | FIN))

    packet(True, SYN)
    packet(False, SYN | ACK)
    for turn in range(max(len(client_turns), len(server_turns))):
        for from_client, turns in ((True, client_turns), (False, server_turns)):
            if turn < len(turns):
                data = turns[turn]
                points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
                for a, b in zip(points, points[1:]):
                    packet(from_client, ACK, data[a:b])
    if close:
        packet(True, FIN | ACK)
        packet(False, FIN | ACK)
    table.finish()
    return list(reorder.drain()), stats


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pythonpath_env(**extra: str) -> dict[str, str]:
    """An environment for a child Python that imports what this one does (and little else)."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **extra}


def wait_listening(port: int, proc: subprocess.Popen, what: str, *, timeout: float = 30,
                   log: Path | None = None) -> None:
    """Until `proc` listens on 127.0.0.1:port; the test fails early (saying so) if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode})" + (f": {log.read_text()}" if log else ""))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port}" + (f": {log.read_text()}" if log else ""))


@contextlib.contextmanager
def serving(argv: Sequence[str], port: int, what: str, **popen) -> Iterator[str]:
    """A server process listening on 127.0.0.1:port (its URL while it runs), stopped afterwards."""
    proc = subprocess.Popen(list(argv), **popen)
    try:
        wait_listening(port, proc, what)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()



_KEEP_ALIVE = r"""
import asyncio, sys
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0  # seconds before each answer (a slow target)

class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.data = transport, b""

    def data_received(self, data):
        self.data += data
        while b"\r\n\r\n" in self.data:
            head, self.data = self.data.split(b"\r\n\r\n", 1)
            response = answer(head)
            if response is None:  # (no answer: the connection closes)
                self.transport.close()
                return
            if DELAY:
                asyncio.get_running_loop().call_later(DELAY, self.transport.write, response)
            else:
                self.transport.write(response)

async def main():
    server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()

asyncio.run(main())
"""


def keep_alive_server(answer: str) -> str:
    """The source of a keep-alive HTTP/1.1 server for `python -c SOURCE PORT [DELAY]` (for `serving`): each
    request head (bodies are not read) is answered with `answer(head)`, bytes, defined by `answer`'s source;
    None closes the connection. DELAY: seconds before each answer."""
    return answer + _KEEP_ALIVE

def uvicorn(app: str, *, app_dir: Path | None = None, **popen) -> contextlib.AbstractContextManager[str]:
    """`app` ('module:attribute') under uvicorn on a free port of 127.0.0.1."""
    port = free_port()
    where = ["--app-dir", str(app_dir)] if app_dir is not None else []
    return serving([sys.executable, "-m", "uvicorn", app, *where, "--host", "127.0.0.1", "--port", str(port),
                    "--log-level", "warning"], port, "uvicorn", **popen)


CI_FLAG = "REPLAY_TESTS_IN_CI"  # CI as this suite started (tests/conftest.py hides CI itself from the tests)


def in_ci() -> bool:
    return os.environ.get(CI_FLAG, os.environ.get("CI", "")).lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """A test that needs a tool this machine lacks: skipped on a developer's machine, a failure under
    CI (CI set), so a test that needs nginx, Chromium or sshd can never silently not run there."""
    if in_ci():
        pytest.fail(f"CI is set, and this test cannot run: {reason}")
    pytest.skip(reason)


def require(*tools: str) -> None:
    """skip_or_fail() unless every tool is on PATH (or in /usr/sbin, where Debian puts daemons)."""
    missing = [t for t in tools if not shutil.which(t) and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        skip_or_fail(f"{', '.join(missing)} not installed (.ci/run installs it)")


def pytest_to_interrupt(args: Sequence[str], cwd: Path) -> subprocess.Popen:
    """`python -m pytest ARGS` in a child whose Ctrl-C acts as in a terminal (even where this suite runs
    with SIGINT ignored), output unbuffered so that `interrupt_after_collection` sees it as it comes."""
    import signal

    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def interrupt_after_collection(proc: subprocess.Popen, seconds: float, *,
                               timeout: float = 60) -> tuple[str, float]:
    """Ctrl-C `seconds` after the replay's first item started (collection alone takes seconds on a loaded
    machine, so a fixed delay from the start interrupts collection instead); returns the whole output and
    the seconds pytest took to end after Ctrl-C."""
    import signal

    seen = ""
    while ".pcap " not in seen and ".gor " not in seen:  # the first item's progress line: the replay runs
        char = proc.stdout.read(1)
        assert char, f"pytest ended before its first item:\n{seen}"
        seen += char
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    pressed = time.monotonic()
    out, _ = proc.communicate(timeout=timeout)
    return seen + out, time.monotonic() - pressed
