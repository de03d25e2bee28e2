"""A misbehaving target, end to end: each fault fails its own items with a clear reason, the run
completes and never hangs; Ctrl-C stops the replay promptly and reports what was done."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from support import DEMO, interrupt_after_collection, pytest_to_interrupt

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
OK_BODY = b'{"ok": true}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(OK_BODY) + OK_BODY
PATHS = ("/fine", "/reset", "/garbage", "/truncated", "/slow", "/close-early")


class FaultServer:
    """A raw socket server on 127.0.0.1 answering each path with one fault."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1].decode()
            if path == "/fine":
                conn.sendall(OK)
            elif path == "/reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            elif path == "/garbage":
                conn.sendall(b"\x00\x01\x02 this is not HTTP at all\r\n\r\n")
            elif path == "/truncated":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":")
            elif path == "/slow":
                time.sleep(3)
                conn.sendall(OK)
            elif path == "/close-early":
                conn.sendall(b"HTTP/1.1 200 OK\r\n")

    def close(self) -> None:
        self.stop = True
        self.sock.close()


@pytest.fixture
def fault_server():
    server = FaultServer()
    yield f"http://127.0.0.1:{server.port}"
    server.close()


def fault_capture(path: Path) -> Path:
    records = []
    for i, target in enumerate(PATHS):
        rid = f"{i + 1:016x}" + "00000001"  # one connection each
        records.append(f"1 {rid} {T0 + i * 1000} -1\n".encode() + f"GET {target} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
        records.append(f"2 {rid} {T0 + i * 1000 + 500} -1\n".encode() + OK)
    path.write_bytes(b"".join(r + SEP for r in records))
    return path


def test_each_fault_fails_its_item_with_a_clear_reason(pytester: pytest.Pytester, fault_server: str) -> None:
    capture = fault_capture(pytester.path / "faults.gor")
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--replay-target",
                                           fault_server, "--speed", "0", "--replay-timeout", "1", "-rf", timeout=60)
    assert time.monotonic() - started < 30  # the 3 s /slow answer is cut at the 1 s timeout
    result.assert_outcomes(passed=1, failed=5)
    text = result.stdout.str()
    for path, reason in (("/reset", "reset"), ("/garbage", "unparsable"), ("/truncated", "truncated"),
                         ("/slow", "timeout"), ("/close-early", "reset")):
        block = text.split(f"GET {path} HTTP/1.1", 1)[1].split("____", 1)[0]
        assert reason in block, (path, block)
    assert "Traceback" not in text


def test_ctrl_c_stops_the_replay_promptly_and_reports(tmp_path: Path) -> None:
    report = tmp_path / "evidence"
    proc = pytest_to_interrupt(["--replay", str(DEMO), "--replay-target", "demo", "--speed", "0.2",
                                "--replay-report", str(report)], tmp_path)
    out, stop_s = interrupt_after_collection(proc, 2, timeout=30)  # at a fifth of the recorded pace: ~40 s
    assert stop_s < 10, "Ctrl-C did not stop the run promptly"
    assert proc.returncode == 2  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out
    assert "(INTERRUPTED)" in out and "replayed: " in out
    import json

    evidence = json.loads((report / "replay-evidence.json").read_text())
    assert evidence["run"]["interrupted"] is True
    assert 0 < evidence["totals"]["requests"] < 259


def test_exitfirst_stops_the_replay_instead_of_waiting_for_it(pytester: pytest.Pytester) -> None:
    # The first difference (GET /api/users/3, #51) comes ~2 s into a ~15 s replay at speed 0.5.
    import re

    pytester.makeconftest("""
        import pytest
        from pytest_replay.demo import make_app

        @pytest.fixture(scope="session")
        def replay_target():
            return make_app(regression="bug")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(DEMO), "--speed", "0.5",
                                           "--replay-judge", "during", "-x", "-q", timeout=120)
    result.assert_outcomes(failed=1, passed=51)
    sent = int(re.search(r"replayed: (\d+) of 259 requests", result.stdout.str()).group(1))
    assert sent < 200 and "(INTERRUPTED)" in result.stdout.str()


def test_budgets_from_a_conftest_hook(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        def pytest_replay_budgets(config):
            return ["p99<10s", "GET /api/nothing/*: p99<1ms"]
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(DEMO), "--replay-target", "demo",
                                           "--speed", "0", "-q", "--replay-include", "^GET /health")
    text = result.stdout.str()
    assert "PASS p99<10s" in text
    assert "FAIL GET /api/nothing/*: p99<1ms: matched no replayed request" in text
    assert result.ret == 1
