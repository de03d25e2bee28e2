"""Judging against a live baseline (issue 12), end to end through pytester.

A small service in two versions and two data sets (in-process ASGI apps with distinct module names):
the capture is written from real responses of v1 on data set A; the sandbox holds data set B. Each
response carries a per-response timestamp and a random id (noise the second baseline send measures).
v2 has injected regressions: a field renamed, a number turned into a string, 5xx on a subset of one
endpoint, 4x latency on one endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import httpx
import pytest
from support import json_gets_gor, uvicorn

SEP = "\n🐵🙈🙉\n".encode()

SERVICE = '''
import asyncio, json, time, uuid

DATA = {"A": {1: ("ada", 36), 2: ("bob", 41), 3: ("cyd", 29)},
        "B": {1: ("ann", 50), 2: ("ben", 22), 3: ("cat", 33)}}


def make_app(version, data, dead=False, delay=0.0):
    users = DATA[data]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if dead:
            raise RuntimeError("this instance is down")
        if delay:
            await asyncio.sleep(delay)
        path, status = scope["path"], 200
        stamp = {"served_at": time.time_ns(), "request_id": uuid.uuid4().hex}
        if path.startswith("/users/"):
            uid = int(path.rsplit("/", 1)[1])
            name, age = users.get(uid, ("?", 0))
            body = {"id": uid, "name": name, "age": age, **stamp}
            if version == 2:
                body["full_name"] = body.pop("name")  # regression: a field renamed
        elif path == "/orders":
            base = len(users) * (7 if data == "A" else 11)
            body = {"orders": [{"id": i, "total": base + i} for i in range(3)], **stamp}
            if version == 2:
                for order in body["orders"]:
                    order["total"] = str(order["total"])  # regression: a number turned into a string
        elif path.startswith("/items/"):
            iid = int(path.rsplit("/", 1)[1])
            if version == 2 and iid % 2 == 0:
                status, body = 503, {"error": "unavailable"}  # regression: 5xx on a subset
            else:
                body = {"item": iid, "stock": iid * (3 if data == "A" else 5), **stamp}
        elif path == "/slow":
            await asyncio.sleep(0.03 if version == 1 else 0.12)  # regression: 4x latency
            body = {"ok": True, **stamp}
        else:
            status, body = 404, {"error": "no such path"}
        data_ = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data_)).encode())]})
        await send({"type": "http.response.body", "body": data_})

    return app
'''

MODULES = {"v1a": "app = make_app(1, 'A')", "v1b": "app = make_app(1, 'B')", "v1b_again": "app = make_app(1, 'B')",
           "v2b": "app = make_app(2, 'B')", "deadb": "app = make_app(1, 'B', dead=True)",
           "slowb": "app = make_app(1, 'B', delay=3.0)"}
PATHS = ["/users/1", "/users/2", "/users/3", "/orders", "/orders", "/items/1", "/items/2", "/items/3", "/items/4",
         "/slow", "/slow", "/slow", "/slow", "/users/1", "/orders", "/items/5", "/items/6", "/slow", "/slow", "/slow"]
REGRESSED = {"/users/1", "/users/2", "/users/3", "/orders", "/items/2", "/items/4", "/items/6"}  # by body/status


def record(path_list: list[str]) -> bytes:
    """A .gor capture of real responses of v1 on data set A, timestamps 10 ms apart."""
    namespace: dict = {}
    exec(SERVICE, namespace)  # noqa: S102 - the test's own service
    app = namespace["make_app"](1, "A")

    async def run() -> list[tuple[bytes, bytes, int]]:
        out = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shop") as client:
            for path in path_list:
                started = time.perf_counter_ns()
                response = await client.get(path)
                latency = time.perf_counter_ns() - started
                head = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n" + "".join(
                    f"{k.decode()}: {v.decode()}\r\n" for k, v in response.headers.raw) + "\r\n"
                request = f"GET {path} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n".encode()
                out.append((request, head.encode() + response.content, latency))
        return out

    t0 = time.time_ns() - 3600 * 10**9
    records = []
    for i, (request, response, latency) in enumerate(asyncio.run(run())):
        rid = f"{i + 1:016x}{0:08x}"
        ts = t0 + i * 10_000_000
        records.append(f"1 {rid} {ts} 0\n".encode() + request + SEP)
        records.append(f"2 {rid} {ts + latency} {latency}\n".encode() + response + SEP)
    return b"".join(records)


@pytest.fixture
def service(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    (pytester.path / "svc.py").write_text(SERVICE)
    for name, line in MODULES.items():
        (pytester.path / f"{name}.py").write_text(f"from svc import make_app\n{line}\n")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    capture = pytester.path / "shop.gor"
    capture.write_bytes(record(PATHS))
    return capture


def replay(pytester: pytest.Pytester, capture: Path, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--speed", "1",
                                         "-rf", *args, timeout=300)


def failed_paths(result) -> list[str]:
    """The request paths of the failing items (from -rf's short summary lines)."""
    out = []
    for line in result.stdout.lines:
        if line.startswith("FAILED shop.gor::"):
            out.append(line.split("GET ", 1)[1].split()[0].rstrip("]"))
    return sorted(out)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["1 process", "-n 2"])
def test_same_version_on_other_data_fails_against_the_recording_and_passes_against_a_baseline(
        pytester: pytest.Pytester, service: Path, workers: list[str]) -> None:
    alone = replay(pytester, service, "--replay-target", "asgi:v1b:app", *workers)
    assert alone.ret == 1
    assert len(failed_paths(alone)) >= 10  # users, orders, items: data set B is not A

    result = replay(pytester, service, "--replay-target", "asgi:v1b:app", "--replay-baseline", "asgi:v1b_again:app",
                    *workers)
    text = result.stdout.str()
    assert result.ret == 0, text
    result.assert_outcomes(passed=len(PATHS))
    # the timestamp and the random id differ on every send: measured noise, shown in the table
    assert "$.served_at" in text and "$.request_id" in text
    assert "| noise" in text and "| regression" not in text
    assert "differ between the recording and the baseline" in text


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["1 process", "-n 2"])
def test_regressions_fail_exactly_the_regressed_requests(pytester: pytest.Pytester, service: Path,
                                                         workers: list[str]) -> None:
    report_dir = pytester.path / "evidence"
    result = replay(pytester, service, "--replay-target", "asgi:v2b:app", "--replay-baseline", "asgi:v1b:app",
                    "--replay-report", str(report_dir), "--replay-budget", "p95<2x",
                    "--replay-budget", "GET /slow: p95<2x", "--replay-budget", "5xx<=baseline+0.5%",
                    "--replay-budget", "GET /users/*: 5xx<=baseline", *workers)
    text = result.stdout.str()
    assert result.ret == 1
    expected = sorted(p for p in PATHS if p in REGRESSED)
    assert failed_paths(result) == expected, text
    # the failure says what changed, baseline -> target, and why it is not noise
    assert "$.name: " in text and "never noise: field or element added or removed" in text
    assert "type changed (number -> string)" in text
    assert "status: 200 -> 503" in text
    assert "baseline (asgi:v1b:app): 200" in text
    # fields failing across the run: summary entries, merged across workers
    assert "FAILED replay-baseline::GET /users/{id} $.name" in text
    assert "FAILED replay-baseline::GET /orders $.orders[*].total" in text
    assert "FAILED replay-baseline::GET /items/{id} status" in text
    assert not any("served_at" in line or "request_id" in line for line in result.stdout.lines
                   if line.startswith("FAILED"))
    # latency against the baseline's, measured in the same run on the same requests: the slowed
    # endpoint only
    budgets = [line for line in result.stdout.lines if line.startswith("FAILED replay-budgets::")]
    assert len(budgets) == 3, text
    assert "worst: GET /slow " in text and "x baseline =" not in text.split("worst: GET /slow")[1].split("\n")[0]
    assert "FAILED replay-budgets::GET /slow: p95<2x" in text
    assert "FAILED replay-budgets::5xx<=baseline+0.5%" in text
    assert "PASS GET /users/*: 5xx<=baseline" in text
    assert "(baseline " in text
    evidence = json.loads(next(report_dir.glob("*.json")).read_text())
    fields = {(f["endpoint"], f["field"]): f for f in evidence["baseline"]["fields"]}
    assert fields[("GET /users/{id}", "$.name")]["raw"] == 4
    assert fields[("GET /users/{id}", "$.served_at")]["verdict"] == "noise"
    assert fields[("GET /orders", "$.orders[*].total")]["verdict"] == "changed"
    assert evidence["baseline"]["counts"]["GET /slow"]["judged"] == 7


def test_a_dead_baseline_fails_every_item_naming_the_baseline(pytester: pytest.Pytester, service: Path) -> None:
    result = replay(pytester, service, "--replay-target", "asgi:v1b:app", "--replay-baseline", "asgi:deadb:app")
    text = result.stdout.str()
    assert result.ret == 1
    result.assert_outcomes(failed=len(PATHS))
    assert "the baseline failed (app-error" in text and "this instance is down" in text
    assert "side failures: baseline: 20" in text


def test_a_slow_baseline_fails_the_items_naming_the_baseline(pytester: pytest.Pytester, service: Path) -> None:
    result = replay(pytester, service, "--replay-target", "asgi:v1b:app", "--replay-baseline", "asgi:slowb:app",
                    "--replay-timeout", "1", "--replay-include", "^GET /users/")
    text = result.stdout.str()
    result.assert_outcomes(failed=4)
    assert "the baseline failed (timeout: no complete response from the baseline within 0.9 s)" in text
    assert "target: 200" in text


def test_a_dead_target_fails_naming_the_target(pytester: pytest.Pytester, service: Path) -> None:
    result = replay(pytester, service, "--replay-target", "asgi:deadb:app", "--replay-baseline", "asgi:v1b:app")
    text = result.stdout.str()
    result.assert_outcomes(failed=len(PATHS))
    assert "the target failed (app-error" in text and "the baseline answered 200" in text


def test_baseline_equal_to_the_target_is_a_usage_error(pytester: pytest.Pytester, service: Path) -> None:
    result = replay(pytester, service, "--replay-target", "asgi:v1b:app", "--replay-baseline", "asgi:v1b:app")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "is the target itself" in result.stdout.str() + result.stderr.str()


def test_a_budget_relative_to_the_baseline_needs_a_baseline(pytester: pytest.Pytester, service: Path) -> None:
    result = replay(pytester, service, "--replay-target", "asgi:v1b:app", "--replay-budget", "p95<1.2x baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "relative to the baseline" in result.stdout.str() + result.stderr.str()


def test_what_noise_can_never_hide_and_the_thresholds() -> None:
    from pytest_replay.verdicts.baseline import DiffCounts, Judgement, structural
    from pytest_replay.verdicts.diff import Difference, Verdict

    assert structural(Difference("status", "status", "200", "500")) == "status changed"
    assert structural(Difference("body", "$.a", '"x"', "(absent)")) == "field or element added or removed"
    assert structural(Difference("body", "$.a[3]", "(absent)", "{}")) == "field or element added or removed"
    assert structural(Difference("body", "$.n", "1", '"1"')) == "type changed (number -> string)"
    assert structural(Difference("body", "$.at", "1700", "1800")) is None
    assert structural(Difference("body", "$.id", '"a1"', '"b2"')) is None

    ok = Verdict(True, (), (), "same")
    counts = DiffCounts()
    for i in range(100):  # a timestamp differing everywhere, a field regressed on 1 of 100, noise on 1 of 100
        counts.add(Judgement(ok, "GET /x", raw=("$.at",) + (("$.total",) if i == 0 else ()) + (
            ("$.rank",) if i == 1 else ()), noise=("$.at",) + (("$.rank",) if i == 1 else ()), probed=True))
    other = DiffCounts().merge(counts.to_dict())  # as from an xdist worker
    merged = DiffCounts().merge(counts).merge(other)
    verdicts = {row.field: row for row in merged.fields()}
    assert verdicts["$.at"].verdict == "noise" and verdicts["$.at"].raw == 200
    assert verdicts["$.total"].verdict == "regression" and verdicts["$.total"].raw == 2
    assert verdicts["$.rank"].verdict == "noise"
    # an absolute threshold above the share of requests lets a rare difference pass
    assert {row.field: row.verdict for row in merged.fields(absolute=5.0)}["$.total"] == "noise"


def test_the_production_guard_applies_to_the_baseline(pytester: pytest.Pytester, service: Path) -> None:
    result = replay(pytester, service, "--replay-target", "asgi:v1b:app",
                    "--replay-baseline", "http://shop.example.com")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "replay baseline:" in result.stdout.str() + result.stderr.str()


def test_the_replay_baseline_fixture_gives_the_baseline(pytester: pytest.Pytester, service: Path) -> None:
    pytester.makeconftest("""
import pytest
import v1b

@pytest.fixture(scope="session")
def replay_baseline():
    return v1b.app
""")
    result = replay(pytester, service, "--replay-target", "asgi:v2b:app")
    assert failed_paths(result) == sorted(p for p in PATHS if p in REGRESSED)


# -- network targets: uvicorn servers on 127.0.0.1 ----------------------------------------------------------
@pytest.fixture
def servers(pytester: pytest.Pytester, service: Path):
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(uvicorn(f"{name}:app", app_dir=pytester.path, cwd=pytester.path))
               for name in ("v1b", "v1b_again", "v2b")}


def test_network_targets_judged_against_a_network_baseline(pytester: pytest.Pytester, service: Path,
                                                            servers: dict) -> None:
    same = replay(pytester, service, "--replay-target", servers["v1b"], "--replay-baseline", servers["v1b_again"])
    assert same.ret == 0, same.stdout.str()
    regressed = replay(pytester, service, "--replay-target", servers["v2b"], "--replay-baseline", servers["v1b"],
                       "--replay-budget", "GET /slow: p95<2x")
    assert failed_paths(regressed) == sorted(p for p in PATHS if p in REGRESSED), regressed.stdout.str()
    assert "FAILED replay-budgets::GET /slow: p95<2x" in regressed.stdout.str()
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    down = replay(pytester, service, "--replay-target", servers["v1b"], "--replay-baseline", dead)
    down.assert_outcomes(failed=len(PATHS))
    assert "the baseline failed (refused" in down.stdout.str()
    same_url = replay(pytester, service, "--replay-target", servers["v1b"], "--replay-baseline", servers["v1b"] + "/")
    assert same_url.ret == pytest.ExitCode.USAGE_ERROR


# -- the composite target on its own -------------------------------------------------------------------------
class _Fake:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.calls: list[tuple[int, str]] = []
        self.closed_lanes: list[str] = []

    async def start(self) -> None:
        pass

    async def send(self, planned, clock):
        from pytest_replay.http.message import Response
        from pytest_replay.schedule.target import REFUSED, TargetError

        self.calls.append((planned.key, planned.lane))
        now = clock.now_ns()
        if self.fail:
            raise TargetError(REFUSED, f"{self.name} refused")
        return Response.build(200, "OK", ((b"content-length", b"2"),), b"{}", "1.1"), now, now + 1, now + 2

    def close_lane(self, lane: str) -> None:
        self.closed_lanes.append(lane)

    async def close(self) -> None:
        pass


def test_writes_go_once_to_each_side_and_never_to_the_noise_probe() -> None:
    from pytest_replay.http.message import Request
    from pytest_replay.schedule.clock import RealClock
    from pytest_replay.schedule.plan import PlannedRequest
    from pytest_replay.targets.differential import DifferentialTarget

    def planned(key: int, method: str) -> PlannedRequest:
        request = Request.build(method, "/orders", ((b"Host", b"shop"),))
        return PlannedRequest(key, 0, "c1", request, request.raw)

    candidate, baseline, probe = _Fake("candidate"), _Fake("baseline", fail=True), _Fake("probe")
    target = DifferentialTarget(candidate, baseline, probe, probe=lambda p: p.request.method == "GET", timeout_s=1)

    async def run():
        clock = RealClock()
        await target.start()
        await target.send(planned(1, "GET"), clock)
        await target.send(planned(2, "POST"), clock)
        target.close_lane("c1")
        await target.close()
    asyncio.run(run())
    assert candidate.calls == [(1, "c1"), (2, "c1")]
    assert baseline.calls == [(1, "c1"), (2, "c1")]
    assert probe.calls == [(1, "c1#noise")]  # the probe's own connections; no write
    assert target.baseline_sides[2].error_kind == "refused" and target.probe_sides[1].ok
    assert 2 not in target.probe_sides
    assert probe.closed_lanes == ["c1#noise"] and baseline.closed_lanes == ["c1"]


# -- settings that differ per side: two real servers, each with its own token and Host ------------------------
GUARDED = '''
import json, os, time

TOKEN, HOST, PREFIX = os.environ["GUARD_TOKEN"], os.environ["GUARD_HOST"], os.environ.get("GUARD_PREFIX", "")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    path, status, extra = scope["path"], 200, []
    if headers.get("authorization") != "Bearer " + TOKEN:
        status, body = 401, {"error": "bad or missing bearer token"}
        extra = [(b"www-authenticate", b"Bearer")]
    elif headers.get("host") != HOST:
        status, body = 421, {"error": "this server is " + HOST}
    elif not path.startswith(PREFIX + "/"):
        status, body = 404, {"error": "no such path"}
    elif path == PREFIX + "/headers":  # echoes what it got, as httpbin's /headers does
        body = {"seen": headers["authorization"].split()[-1], "host": headers["host"]}
    else:
        iid = int(path.rsplit("/", 1)[1])
        # an absolute URL built from the Host it was sent, and a per-response timestamp (noise)
        body = {"id": iid, "name": "item %d" % iid, "self": "http://%s/items/%d" % (headers["host"], iid),
                "served_at": time.time_ns()}
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": data})
'''
CANDIDATE_TOKEN, BASELINE_TOKEN = "candidate-secret-one", "baseline-secret-two"
GUARDED_PATHS = ["/items/1", "/items/2", "/items/3", "/items/1", "/items/2", "/headers"]


def guarded_capture(path: Path) -> Path:
    return json_gets_gor(path, GUARDED_PATHS, "Authorization: Bearer recorded")


@pytest.fixture
def guarded(pytester: pytest.Pytester):
    """The candidate (token one, Host candidate.test, paths /items/...) and the baseline (token two,
    Host baseline.test, the last release's paths /v1/items/...), each under uvicorn on 127.0.0.1."""
    import os

    (pytester.path / "guarded.py").write_text(GUARDED)
    sides = {"candidate": (CANDIDATE_TOKEN, "candidate.test", ""), "baseline": (BASELINE_TOKEN, "baseline.test", "/v1")}
    with contextlib.ExitStack() as stack:
        urls = {}
        for side, (token, host, prefix) in sides.items():
            env = {**os.environ, "GUARD_TOKEN": token, "GUARD_HOST": host, "GUARD_PREFIX": prefix}
            urls[side] = stack.enter_context(uvicorn("guarded:app", app_dir=pytester.path, cwd=pytester.path, env=env))
        yield guarded_capture(pytester.path / "guarded.gor"), urls


CANDIDATE_SETTINGS = ("--replay-set-header", f"Authorization: Bearer {CANDIDATE_TOKEN}",
                      "--replay-set-header", "Host: candidate.test")


def assert_no_token(pytester: pytest.Pytester, *texts: str) -> None:
    written = [p.read_text(errors="replace") for p in pytester.path.rglob("*") if p.is_file()
               and p.suffix in (".json", ".xml", ".html")]
    for text in (*texts, *written):
        assert CANDIDATE_TOKEN not in text and BASELINE_TOKEN not in text


def test_without_the_baselines_own_settings_the_baseline_refuses_naming_the_baseline(
        pytester: pytest.Pytester, guarded) -> None:
    capture, urls = guarded
    result = replay(pytester, capture, "--replay-target", urls["candidate"], "--replay-baseline", urls["baseline"],
                    *CANDIDATE_SETTINGS, "--replay-exclude", "/headers", "--replay-report", "evidence")
    text = result.stdout.str()
    result.assert_outcomes(failed=5)
    assert text.count("the baseline refused the request (401 Unauthorized) while the target answered 200") == 5
    assert "--replay-baseline-set-header" in text
    assert "side failures: baseline: 5" in text
    assert_no_token(pytester, text, result.stderr.str())


def test_per_side_settings_reach_only_their_side_and_all_pass(pytester: pytest.Pytester, guarded) -> None:
    capture, urls = guarded
    pytester.makeini(f"""[pytest]
replay_baseline_set_header =
    Authorization: Bearer {BASELINE_TOKEN}
    Host: baseline.test
""")
    result = replay(pytester, capture, "--replay-target", urls["candidate"], "--replay-baseline", urls["baseline"],
                    *CANDIDATE_SETTINGS, "--replay-baseline-rewrite-url", "^/items/(.*):/v1/items/\\1",
                    "--replay-exclude", "/headers", "--replay-report", "evidence", "--junitxml", "junit.xml")
    text = result.stdout.str()
    assert result.ret == 0, text
    result.assert_outcomes(passed=5)
    assert "$.served_at" in text and "| noise" in text  # measured on the baseline's own requests
    evidence = json.loads((pytester.path / "evidence" / "replay-evidence.json").read_text())
    rewrites = evidence["selection"]["rewrites"]
    assert "baseline set-header Authorization" in rewrites and "baseline set-header Host" in rewrites
    assert any(r.startswith("baseline rewrite-url ^/items/") for r in rewrites)
    assert_no_token(pytester, text, result.stderr.str())
    # the candidate's own Host is never sent to the baseline: its URLs are the baseline's
    assert "$.self" not in text


def test_the_other_sides_token_echoed_in_a_body_is_masked(pytester: pytest.Pytester, guarded) -> None:
    capture, urls = guarded
    result = replay(pytester, capture, "--replay-target", urls["candidate"], "--replay-baseline", urls["baseline"],
                    *CANDIDATE_SETTINGS, "--replay-baseline-set-header", f"Authorization: Bearer {BASELINE_TOKEN}",
                    "--replay-baseline-set-header", "Host: baseline.test",
                    "--replay-baseline-rewrite-url", "^/(.*):/v1/\\1", "--replay-include", "/headers",
                    "--replay-report", "evidence")
    text = result.stdout.str()
    result.assert_outcomes(failed=3)  # the item, and the fields $.seen and $.host over the run
    assert "$.seen" in text and "REDACTED-" in text
    assert_no_token(pytester, text, result.stderr.str())


def test_baseline_side_settings_without_a_baseline_are_a_usage_error(pytester: pytest.Pytester, guarded) -> None:
    capture, urls = guarded
    result = replay(pytester, capture, "--replay-target", urls["candidate"],
                    "--replay-baseline-set-header", "Host: baseline.test")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--replay-baseline-set-header" in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("head", [
    b"GET /a HTTP/1.1\r\nHost: shop.example.com\r\nAccept: */*\r\n\r\n",
    b"GET /a HTTP/1.1\r\nAccept: */*\r\nHOST: Shop.Example.com\r\nX-Host: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nAccept: */*\r\n\r\n",  # no Host: one is added
    b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # duplicates: the first is set, the rest dropped
    b"GET /a HTTP/1.1\nHost: lf.example\nAccept: x\n\n",  # bare LF, normalised
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhost:",  # a body that looks like a header
    b"GET /a HTTP/1.1\r\nHost: x\r\nX-Note: \r\n host: folded\r\n\r\n",  # obs-fold
])
def test_rehost_makes_the_bytes_the_baseline_would(head: bytes) -> None:
    from pytest_replay.http.message import Request
    from pytest_replay.targets.differential import rehost
    from pytest_replay.targets.raw import RawTarget

    lf_only = b"\r\n" not in head
    end = head.index(b"\n\n" if lf_only else b"\r\n\r\n") + (2 if lf_only else 4)
    line = head.split(b"\n", 1)[0].strip().decode()
    method, target, version = line.split(" ")
    request = Request(method, target, version.removeprefix("HTTP/"), head[:end], head[end:], head, (), lf_only)
    candidate, baseline = RawTarget("http://127.0.0.1:8000"), RawTarget("http://127.0.0.1:18001")
    made = rehost(candidate.wire(request), candidate.host, baseline.host)
    assert made is None or made == baseline.wire(request)
    if b"folded" not in head:
        assert made == baseline.wire(request)  # the fast path is taken


def test_a_target_that_outlasts_the_engine_keeps_the_baselines_answer_and_a_slow_side_times_out() -> None:
    """The baseline sides run beside the target's send: their own time limit (a timer), and what they
    answered is kept when the engine gives up on the target's request."""
    from pytest_replay.http.message import Request, Response
    from pytest_replay.schedule.clock import RealClock
    from pytest_replay.schedule.plan import PlannedRequest
    from pytest_replay.targets.differential import DifferentialTarget

    class Slow(_Fake):
        def __init__(self, name: str, delay: float) -> None:
            super().__init__(name)
            self.delay = delay

        async def send(self, planned, clock):
            await asyncio.sleep(self.delay)
            now = clock.now_ns()
            return Response.build(200, "OK", ((b"content-length", b"2"),), b"{}", "1.1"), now, now, now

    request = Request.build("GET", "/x", ((b"Host", b"shop"),))
    planned = PlannedRequest(1, 0, "c1", request, request.raw)
    target = DifferentialTarget(Slow("candidate", 5), _Fake("baseline"), Slow("probe", 5), timeout_s=0.2)

    async def run():
        clock = RealClock()
        await target.start()
        with pytest.raises(TimeoutError):  # the engine's own limit on the target's request
            await asyncio.wait_for(target.send(planned, clock), 0.5)
    asyncio.run(run())
    assert target.baseline_sides[1].ok  # answered at once: kept
    assert target.probe_sides[1].error_kind == "timeout"  # cut by the sides' timer at 0.2 s
    assert "within 0.2 s" in target.probe_sides[1].error
