"""Side effects and secrets end to end (pytester): what a replay may send, and what it may print."""

from __future__ import annotations

from pathlib import Path

import pytest

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000


def gor(*records: tuple[int, str, int, bytes]) -> bytes:
    return b"".join(f"{kind} {rid} {ts} -1\n".encode() + payload + SEP for kind, rid, ts, payload in records)


CHECKOUT_APP = '''
import httpx, json, pytest

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    async with httpx.AsyncClient() as client:
        try:
            charge = await client.post("https://payments.example/charge", json={"amount": 42})
            status, body = 200, {"charged": charge.json()["id"]}
        except httpx.HTTPError as exc:
            status, body = 502, {"error": "payment provider unreachable"}
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})

@pytest.fixture(scope="session")
def replay_target():
    return app
'''


def checkout_capture(path: Path) -> Path:
    body = b'{"charged": "ch_1"}'
    path.write_bytes(gor(
        (1, "a" * 24, T0, b"POST /checkout HTTP/1.1\r\nHost: shop\r\nContent-Length: 2\r\n\r\n{}"),
        (2, "a" * 24, T0 + 1_000_000, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
         + str(len(body)).encode() + b"\r\n\r\n" + body)))
    return path


def test_app_outbound_calls_are_answered_by_replay_outbound_routes(pytester: pytest.Pytester) -> None:
    capture = checkout_capture(pytester.path / "checkout.gor")
    pytester.makeconftest(CHECKOUT_APP + '''
@pytest.fixture(scope="session")
def replay_outbound(replay_outbound):
    replay_outbound.post("https://payments.example/charge").respond(201, json={"id": "ch_1"})
    return replay_outbound
''')
    result = pytester.runpytest_subprocess("--replay", str(capture), "--speed", "0", "-q")
    result.assert_outcomes(passed=1)


def test_app_outbound_call_without_route_fails_the_exchange_and_leaves_nothing(pytester: pytest.Pytester) -> None:
    capture = checkout_capture(pytester.path / "checkout.gor")
    pytester.makeconftest(CHECKOUT_APP)
    result = pytester.runpytest_subprocess("--replay", str(capture), "--speed", "0", "-q")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "outbound call without a replay_outbound route" in text
    assert "POST https://payments.example/charge" in text


ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "captures" / "demo" / "demo.pcap"

COUNTING_SERVER = '''
import sys
from pytest_replay.demo import make_app

shop = make_app()
log = open(sys.argv[1], "a", buffering=1)

async def app(scope, receive, send):
    if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
        log.write(f"{scope['method']} {scope['path']}\\n")
    await shop(scope, receive, send)

if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
'''


@pytest.fixture
def counting_server(tmp_path: Path):
    """The demo service under uvicorn (a real server on 127.0.0.1) logging every write it receives."""
    import socket
    import subprocess
    import sys
    import time

    script = tmp_path / "counting_server.py"
    script.write_text(COUNTING_SERVER)
    writes = tmp_path / "writes.log"
    writes.write_text("")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(script), str(writes), str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the counting server did not start")
    yield f"http://127.0.0.1:{port}", writes
    proc.terminate()
    proc.wait(timeout=10)


def test_default_replay_sends_no_writes_to_a_network_target(pytester: pytest.Pytester, counting_server) -> None:
    url, writes = counting_server
    result = pytester.runpytest_subprocess("--replay", str(DEMO), "--replay-target", url, "--speed", "0", "-q",
                                           "-p", "no:cacheprovider")
    assert writes.read_text() == ""  # the server saw no write at all
    outcomes = result.parseoutcomes()
    assert outcomes["skipped"] == 64  # 36 cart adds, 8 cart deletes, 14 orders, 6 logins: answered from the capture
    text = result.stdout.str()
    assert "writes (mock): 64 mocked (answered from the recording), 0 sent, 0 skipped" in text
    assert "POST /api/orders: 14 mocked, 0 sent, 0 skipped" in text


def test_allowlisted_writes_and_only_they_reach_the_server(pytester: pytest.Pytester, counting_server) -> None:
    url, writes = counting_server
    result = pytester.runpytest_subprocess("--replay", str(DEMO), "--replay-target", url, "--speed", "0", "-q",
                                           "-p", "no:cacheprovider", "--replay-allow-write", "POST ^/api/login$",
                                           "--replay-allow-write", "PUT ^/nothing/here$",
                                           "--replay-dry-run-header", "X-Dry-Run: 1")
    sent = writes.read_text().splitlines()
    assert sent == ["POST /api/login"] * 6
    text = result.stdout.str()
    assert "POST /api/login: 0 mocked, 6 sent, 0 skipped" in text
    assert "--replay-allow-write 'PUT ^/nothing/here$' matches no write in the capture" in text


def test_writes_skip_mode_and_pass_mode(pytester: pytest.Pytester, counting_server) -> None:
    url, writes = counting_server
    result = pytester.runpytest_subprocess("--replay", str(DEMO), "--replay-target", url, "--speed", "0", "-q",
                                           "-p", "no:cacheprovider", "--replay-writes", "skip", "-rs")
    assert writes.read_text() == ""
    assert "write not replayed (--replay-writes skip)" in result.stdout.str()
    pytester.runpytest_subprocess("--replay", str(DEMO), "--replay-target", url, "--speed", "0", "-q",
                                  "-p", "no:cacheprovider", "--replay-writes", "pass")
    assert len(writes.read_text().splitlines()) == 64


def test_production_guard_refuses_the_recorded_host(pytester: pytest.Pytester) -> None:
    # demo.pcap was recorded against 127.0.0.1:18765 (server address and Host header)
    result = pytester.runpytest_subprocess("--replay", str(DEMO), "--replay-target", "http://127.0.0.1:18765",
                                           "--speed", "0", "-p", "no:cacheprovider")
    assert result.ret == 4
    text = result.stdout.str() + result.stderr.str()
    assert "refusing to replay against http://127.0.0.1:18765" in text
    assert "--replay-force-production" in text
