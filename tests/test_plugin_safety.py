"""Side effects and secrets end to end (pytester): what a replay may send, and what it may print."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import DEMO, ROOT, free_port, serving

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000


def gor(*records: tuple[int, str, int, bytes]) -> bytes:
    return b"".join(f"{kind} {rid} {ts} -1\n".encode() + payload + SEP for kind, rid, ts, payload in records)


# The end of the in-process apps below: `status` and the JSON `body` sent back, and the fixture that
# makes the app the replay target.
RESPOND = '''    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})

@pytest.fixture(scope="session")
def replay_target():
    return app
'''


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
''' + RESPOND


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
    script = tmp_path / "counting_server.py"
    script.write_text(COUNTING_SERVER)
    writes = tmp_path / "writes.log"
    writes.write_text("")
    port = free_port()
    with serving([sys.executable, str(script), str(writes), str(port)], port, "the counting server") as url:
        yield url, writes


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


TOKEN_APP = '''
import json, secrets, pytest

issued = set()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    if scope["path"] == "/login":
        token = secrets.token_hex(8)  # a new token every time: a replay never gets the recorded one
        issued.add(token)
        status, body = 200, {"token": token}
    else:
        auth = headers.get(b"authorization", b"").decode()
        ok = auth.startswith("Bearer ") and auth[7:] in issued
        status, body = (200, {"me": "alice"}) if ok else (401, {"error": "bad token"})
''' + RESPOND


def token_capture(path: Path) -> Path:
    login = b'{"token": "recordedtoken0001"}'
    me = b'{"me": "alice"}'
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    path.write_bytes(gor(
        (1, "b" * 24, T0, b"POST /login HTTP/1.1\r\nHost: shop\r\nContent-Length: 2\r\n\r\n{}"),
        (2, "b" * 24, T0 + 1_000_000, ok % len(login) + login),
        (1, "c" * 24, T0 + 2_000_000, b"GET /me HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer recordedtoken0001\r\n\r\n"),
        (2, "c" * 24, T0 + 3_000_000, ok % len(me) + me)))
    return path


def test_without_correlation_a_new_token_breaks_later_requests(pytester: pytest.Pytester) -> None:
    capture = token_capture(pytester.path / "token.gor")
    pytester.makeconftest(TOKEN_APP)
    result = pytester.runpytest_subprocess("--replay", str(capture), "--speed", "0", "-q")
    result.assert_outcomes(failed=2)  # the login's token differs, and /me is refused with the recorded one
    assert "status: 200 -> 401" in result.stdout.str()


def test_python_hook_correlates_the_replayed_token(pytester: pytest.Pytester) -> None:
    capture = token_capture(pytester.path / "token.gor")
    pytester.makeconftest(TOKEN_APP + '''
from pytest_replay.policy.correlate import correlate_json_field

def pytest_replay_response(exchange, response, state):
    if exchange.request.path == "/login":
        correlate_json_field(state, exchange.response, response, "token")
''')
    result = pytester.runpytest_subprocess("--replay", str(capture), "--speed", "0", "-q",
                                           "--replay-ignore", "POST /login: json:$.token")
    result.assert_outcomes(passed=2)


GOREPLAY_TOKEN_APP = """
import secrets, pytest
from urllib.parse import parse_qs

issued = set()

async def app(scope, receive, send):
    # GoReplay's examples/middleware/token_modifier.go service: GET /token answers a new token as the
    # whole body; other requests carry it as the `token` query parameter.
    if scope["type"] != "http":
        return
    if scope["path"] == "/token":
        token = secrets.token_hex(8)
        issued.add(token)
        status, body = 200, token.encode()
    else:
        token = parse_qs(scope["query_string"].decode()).get("token", [""])[0]
        status, body = (200, b"secret data") if token in issued else (403, b"forbidden")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

@pytest.fixture(scope="session")
def replay_target():
    return app
"""


def test_goreplay_token_middleware_correlates_the_replayed_token(pytester: pytest.Pytester) -> None:
    import sys

    capture = pytester.path / "token.gor"
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
    # One keep-alive connection (the ids share their first 16 hex digits): /data goes after /token's
    # replayed response, which the middleware sees (type 3) before it sees /data.
    first, second = "d" * 16 + "00000001", "d" * 16 + "00000002"
    capture.write_bytes(gor(
        (1, first, T0, b"GET /token HTTP/1.1\r\nHost: shop\r\n\r\n"),
        (2, first, T0 + 1_000_000, ok % 16 + b"0123456789abcdef"),
        (1, second, T0 + 2_000_000, b"GET /data?token=0123456789abcdef HTTP/1.1\r\nHost: shop\r\n\r\n"),
        (2, second, T0 + 3_000_000, ok % 11 + b"secret data")))
    pytester.makeconftest(GOREPLAY_TOKEN_APP)
    args = ["--replay", str(capture), "--speed", "0", "-q", "--replay-ignore", "GET /token: regex:[0-9a-f]{16}"]
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=1)  # without the middleware: /data is forbidden
    middleware = f"{sys.executable} {ROOT / 'tests' / 'middlewares' / 'token_rewrite.py'}"
    result = pytester.runpytest_subprocess(*args, "--replay-middleware", middleware)
    result.assert_outcomes(passed=2)


def test_echo_middleware_changes_nothing_and_drops_are_skipped(pytester: pytest.Pytester) -> None:
    import sys

    echo = f"{sys.executable} {ROOT / 'tests' / 'middlewares' / 'echo.py'}"
    result = pytester.runpytest_subprocess("--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", "-q",
                                           "-p", "no:cacheprovider", "--replay-middleware", echo)
    result.assert_outcomes(passed=259)
    drop = f"{sys.executable} {ROOT / 'tests' / 'middlewares' / 'drop_posts.py'}"
    result = pytester.runpytest_subprocess("--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", "-q",
                                           "-p", "no:cacheprovider", "--replay-middleware", drop, "-rs",
                                           "--replay-include", "^POST /api/login|^GET /health")
    outcomes = result.parseoutcomes()
    assert outcomes["skipped"] == 6 and outcomes["passed"] == 16
    assert "dropped by the middleware" in result.stdout.str()


def test_crashing_middleware_stops_the_replay_cleanly(pytester: pytest.Pytester) -> None:
    import sys

    crash = f"{sys.executable} {ROOT / 'tests' / 'middlewares' / 'crash.py'}"
    result = pytester.runpytest_subprocess("--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", "-q",
                                           "-p", "no:cacheprovider", "--replay-middleware", crash, timeout=120)
    text = result.stdout.str()
    assert result.ret == 1
    assert "replay stopped:" in text and "exit" in text.lower()
    assert "Traceback" not in text


SECRETS = {
    "bearer": "tokPLANTED1234567890",
    "cookie": "cookiePLANTED4567",
    "set_cookie": "setcookiePLANTED000",
    "query": "qtokPLANTED789",
    "password": "hunter2PLANTED",
    "email": "alice.planted@example.com",
    "card": "4111 1111 1111 1111",
    "phone": "+1 415 555 0132",
    "api_key": "akPLANTED31337",
}

LEAKY_APP = '''
import json, pytest

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    # Answers something different from the recording, so every exchange fails and shows a diff.
    status, body = 500, {"changed": True, "path": scope["path"]}
''' + RESPOND


def secrets_capture(path: Path) -> Path:
    s = SECRETS
    login_body = f'{{"username": "alice", "password": "{s["password"]}"}}'.encode()
    profile = (f'{{"name": "Alice", "email": "{s["email"]}", "card": "{s["card"]}", "phone": "{s["phone"]}", '
               f'"note": "call {s["phone"]} or mail {s["email"]}"}}').encode()
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    path.write_bytes(gor(
        (1, "f" * 16 + "00000001", T0, b"POST /login HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\n"
         b"Authorization: Bearer " + s["bearer"].encode() + b"\r\nX-Api-Key: " + s["api_key"].encode()
         + b"\r\nContent-Length: %d\r\n\r\n" % len(login_body) + login_body),
        (2, "f" * 16 + "00000001", T0 + 1_000_000, ok % 2 + b"Set-Cookie: session=" + s["set_cookie"].encode()
         + b"; Path=/\r\n\r\n{}"),
        (1, "f" * 16 + "00000002", T0 + 2_000_000, b"GET /profile?access_token=" + s["query"].encode()
         + b"&page=1 HTTP/1.1\r\nHost: shop\r\nCookie: session=" + s["cookie"].encode() + b"\r\n\r\n"),
        (2, "f" * 16 + "00000002", T0 + 3_000_000, ok % len(profile) + b"\r\n" + profile)))
    return path


def test_planted_secrets_appear_in_no_artifact(pytester: pytest.Pytester) -> None:
    capture = secrets_capture(pytester.path / "secrets.gor")
    pytester.makeconftest(LEAKY_APP)
    junit = pytester.path / "junit.xml"
    evidence = pytester.path / "evidence"
    result = pytester.runpytest_subprocess("--replay", str(capture), "--speed", "0", "-vv", "-rA",
                                           "--replay-diff", "status,headers,body", "--replay-headers",
                                           "set-cookie,content-type", f"--junitxml={junit}",
                                           "--replay-report", str(evidence), "--replay-budget", "p99<1s")
    result.assert_outcomes(failed=2, passed=1)  # two exchanges fail with diffs; the budget passes
    artifacts = {"stdout": result.stdout.str(), "stderr": result.stderr.str(), "junit": junit.read_text(),
                 "evidence": (evidence / "replay-evidence.json").read_text()}
    assert "REDACTED" in artifacts["stdout"]  # the diffs are there, masked
    import urllib.parse

    for where, text in artifacts.items():
        for name, secret in SECRETS.items():
            for form in {secret, urllib.parse.quote(secret), urllib.parse.quote_plus(secret), secret.replace(" ", "")}:
                assert form not in text, f"{name} ({form!r}) leaked into {where}"
    inspect = pytester.run(sys.executable, "-m", "pytest_replay", "inspect", "--json", str(capture))
    for secret in SECRETS.values():
        assert secret not in inspect.stdout.str()


AUTH_APP = '''
import json, pytest

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    auth = dict(scope["headers"]).get(b"authorization", b"")
    status, body = (200, {"orders": [1, 2]}) if auth == b"Bearer sandbox-credential" else (401, {"error": "no"})
''' + RESPOND


def test_redacted_capture_replays_with_credentials_set_at_replay_time(pytester: pytest.Pytester) -> None:
    body = b'{"orders": [1, 2]}'
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    original = pytester.path / "orders.gor"
    original.write_bytes(gor(*[rec for i in range(3) for rec in (
        (1, "a" * 16 + f"{i:08x}", T0 + i * 10_000_000,
         b"GET /orders HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer production-secret-token\r\n\r\n"),
        (2, "a" * 16 + f"{i:08x}", T0 + i * 10_000_000 + 1_000_000, ok))]))
    redacted = pytester.path / "orders.redacted.gor"
    run = pytester.run(sys.executable, "-m", "pytest_replay", "redact", str(original), str(redacted))
    assert run.ret == 0 and b"production-secret-token" not in redacted.read_bytes()
    pytester.makeconftest(AUTH_APP)
    result = pytester.runpytest_subprocess("--replay", str(redacted), "--speed", "0", "-q")
    result.assert_outcomes(failed=3)  # the masked credential is refused
    result = pytester.runpytest_subprocess("--replay", str(redacted), "--speed", "0", "-q",
                                           "--replay-set-header", "Authorization: Bearer sandbox-credential")
    result.assert_outcomes(passed=3)


SEEN_APP = '''
import json, pytest
from pathlib import Path

SEEN = Path(__file__).with_name("seen.jsonl")

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    with SEEN.open("a") as f:
        f.write(json.dumps({"method": scope["method"], "path": scope["path"], "headers": headers}) + "\\n")
    status, body = 200, {"ok": True}
''' + RESPOND


def habits_capture(path: Path, patch_user: bytes) -> Path:
    ok = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'
    records = []
    for i in range(40):
        agent = b"crawler-bot/1.0" if i % 4 == 3 else b"Mozilla/5.0"
        method, user = (b"PATCH", patch_user) if i % 10 == 8 else (b"GET", b"u%d" % (i % 13))
        rid = f"{i + 1:016x}00000001"
        records.append((1, rid, T0 + i * 1000, method + b" /api/v1/items/%d HTTP/1.1\r\nHost: shop\r\n" % i
                        + b"User-Agent: " + agent + b"\r\nX-User: " + user + b"\r\n\r\n"))
        records.append((2, rid, T0 + i * 1000 + 500, ok))
    path.write_bytes(gor(*records))
    return path


def test_goreplay_habits_reach_the_service(pytester: pytest.Pytester) -> None:
    """--replay-set-header, --replay-rewrite-url, --replay-disallow-header, --replay-sample and
    --replay-write-methods, end to end: what the app receives is what they say."""
    import json

    from pytest_replay.capture import load
    from pytest_replay.http.message import Request
    from pytest_replay.policy.filters import Sampler

    sampler = Sampler.parse("header:X-User:50%")
    kept_user = next(u for u in (b"p%d" % i for i in range(100))
                     if sampler.keep(Request.build("GET", "/", ((b"X-User", u),))))
    capture = habits_capture(pytester.path / "habits.gor", kept_user)
    pytester.makeconftest(SEEN_APP)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--replay", str(capture), "--speed", "0", "-q",
        "--replay-set-header", "X-Env: replay", "--replay-rewrite-url", "^/api/v1/(.*):/api/v2/$1",
        "--replay-disallow-header", "User-Agent: bot", "--replay-sample", "header:X-User:50%",
        "--replay-write-methods", "PATCH")
    expected = [e for e in load(str(capture))[0] if b"bot" not in e.request.header("user-agent") and sampler.keep(e.request)]
    assert 0 < len(expected) < 30  # the filters did something
    seen = [json.loads(line) for line in (pytester.path / "seen.jsonl").read_text().splitlines()]
    # In-process, writes (PATCH, declared one here) reach the app; everything kept was replayed once.
    assert sorted(s["path"] for s in seen) == sorted(e.request.path.replace("/api/v1/", "/api/v2/") for e in expected)
    assert all(s["headers"]["x-env"] == "replay" and "bot" not in s["headers"]["user-agent"] for s in seen)
    result.assert_outcomes(passed=len(expected), deselected=40 - len(expected))
    assert any(s["method"] == "PATCH" for s in seen)
    result.stdout.fnmatch_lines(["*PATCH /api/v1/items/{id}*"])  # counted as a write, by endpoint
