"""The plugin end to end, as a user runs it: pytester runs pytest with --replay on real captures."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from support import DEMO, FIXTURES



def replay(pytester: pytest.Pytester, *args: str):
    """Run pytest in a subprocess (the engine owns a thread and an event loop)."""
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def test_demo_capture_replays_and_passes(pytester: pytest.Pytester) -> None:
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", "-q")
    result.assert_outcomes(passed=259)
    assert result.ret == 0
    text = result.stdout.str()
    assert "replayed: 259 of 259 requests" in text
    assert "verdicts: 259 passed, 0 failed" in text


def test_deliberate_regression_fails_with_readable_diffs(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import pytest
        from pytest_replay.demo import make_app

        @pytest.fixture(scope="session")
        def replay_target():
            return make_app(regression="bug")
    """)
    result = replay(pytester, "--replay", str(DEMO), "--speed", "0", "-q", "-rf")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 5 and outcomes["passed"] == 254
    text = result.stdout.str()
    assert "GET /api/orders/1001" in text
    assert "500" in text
    assert "display_name" in text  # the renamed field, by its path
    assert result.ret == 1


def test_items_have_stable_readable_ids_selectable_with_k_and_markers(pytester: pytest.Pytester) -> None:
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", "--collect-only", "-q")
    ids = [line for line in result.stdout.lines if "::" in line]
    assert len(ids) == len(set(ids)) == 259
    assert any(line.endswith("demo.pcap::GET /health #0") for line in ids), ids[:3]
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", "-q",
                    "-k", "api/users")
    result.assert_outcomes(passed=5, deselected=254)
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", "-q",
                    "-m", "http_post and endpoint_api_login")
    result.assert_outcomes(passed=6, deselected=253)


def test_include_exclude_filters(pytester: pytest.Pytester) -> None:
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", "-q",
                    "--replay-include", "^GET /api/products", "--replay-exclude", "image$")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 58 + 14 + 2 + 1 and outcomes["deselected"] == 259 - 75


def test_group_by_endpoint(pytester: pytest.Pytester) -> None:
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", "-q",
                    "--replay-group", "endpoint")
    result.assert_outcomes(passed=15)


ANY_ITEM_APP = """
import pytest

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["method"] == "DELETE":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    status = 404 if scope["path"] == "/missing" else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})

@pytest.fixture(scope="session")
def replay_target():
    return app
"""


def test_incomplete_exchanges_are_skipped_or_judged_on_what_was_captured(pytester: pytest.Pytester) -> None:
    # tcpdump -s 128: every message head is cut after its start line, except the 204 to DELETE.
    capture = FIXTURES / "recorded" / "snaplen128_heads_cut.pcap"
    pytester.makeconftest(ANY_ITEM_APP)
    result = replay(pytester, "--replay", str(capture), "--speed", "0", "-rs", "-v")
    text = result.stdout.str()
    assert "INTERNALERROR" not in text and "Traceback" not in text
    # The POST and the PUT lost their heads: they cannot be sent again, and say why.
    skipped = [line for line in text.splitlines() if line.startswith("SKIPPED")]
    assert sum("incomplete in the capture: truncated (request): the message head is cut after" in line
               for line in skipped) == 2, skipped
    assert all("snaplen128_heads_cut.pcap" in line and "pytest_replay" not in line for line in skipped), skipped
    # The GETs and the HEAD were sent whole; their recorded responses are cut after the status line,
    # so only the status is compared (the app's body differs from anything recorded): they pass, as
    # does the DELETE (whole on both sides; an in-process app receives writes).
    result.assert_outcomes(passed=5, skipped=2)


RECORDED_BODY_APP = """
import json, pytest
from pathlib import Path

BODIES = json.loads(Path(__file__).with_name("bodies.json").read_text())  # path -> recorded body

async def app(scope, receive, send):
    if scope["type"] == "http":
        body = BODIES[scope["path"]].encode("latin-1")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

@pytest.fixture(scope="session")
def replay_target():
    return app
"""


@pytest.mark.parametrize("judge", ["after", "during"])
def test_ipv6_connections_grouped_under_xdist_run_on_the_worker_that_planned_them(
        pytester: pytest.Pytester, judge: str) -> None:
    # An IPv6 connection's name holds "::" ("[::1]:35010 -> [::1]:8080"), like pytest's node ids.
    from pytest_replay.capture import load

    capture = FIXTURES / "recorded" / "ipv6_nginx.pcap"
    exchanges, _ = load(str(capture))
    assert "::" in exchanges[0].connection and {e.response.status for e in exchanges} == {200}
    bodies = {e.request.path: e.response.body.decode("latin-1") for e in exchanges}
    (pytester.path / "bodies.json").write_text(json.dumps(bodies))
    pytester.makeconftest(RECORDED_BODY_APP)
    result = replay(pytester, "--replay", str(capture), "--speed", "0", "-n", "2", "--replay-group", "connection",
                    "--replay-judge", judge)
    assert "not in the replay plan" not in result.stdout.str()
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["1 process", "-n 2"])
def test_a_shard_with_no_connection_passes_and_says_so(pytester: pytest.Pytester, workers: list[str]) -> None:
    # One job of a CI matrix whose shard holds none of a small capture's connections has nothing to
    # do: that is not a failure (pytest would exit 5, "no tests collected").
    from pytest_replay.capture import load
    from pytest_replay.distribute import partition

    capture = FIXTURES / "recorded" / "concurrent_4x5.pcap"
    lanes = {e.connection for e in load(str(capture))[0]}
    n = 8
    empty = next(k for k in range(1, n + 1) if all(partition(lane, n) != k - 1 for lane in lanes))
    result = replay(pytester, "--replay", str(capture), "--replay-target", "demo", "--speed", "0",
                    "--replay-shard", f"{empty}/{n}", "--replay-report", "evidence", *workers)
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"note: shard {empty}/{n} holds none of the capture's {len(lanes)} connection(s)*"])
    assert (pytester.path / "evidence" / f"replay-evidence-shard-{empty}-of-{n}.json").exists()


def _run_on_a_terminal(cwd: Path, *args: str) -> str:
    """pytest in a pseudo-terminal (its output is a TTY, as in a developer's shell): all it printed."""
    import os
    import pty
    import subprocess

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=120)
    os.close(master)
    return out.decode("utf-8", "replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_live_progress_on_a_terminal_quiet_under_q(tmp_path: Path) -> None:
    # The demo replays in ~2 s at --speed 4: progress lines every 0.5 s.
    import re

    fast = ("--speed", "4", "--replay-progress-every", "0.5")
    text = _run_on_a_terminal(tmp_path, "--replay", str(DEMO), "--replay-target", "demo", *fast)
    assert re.search(r"\[replay\] \d+/259 sent \([\d.]+/s\), \d+ done, 0 errors, p95 so far [\d.]+ ms, "
                     r"lateness p99 [\d.]+ ms", text), text[-2000:]
    assert "259 passed" in text
    quiet = _run_on_a_terminal(tmp_path, "--replay", str(DEMO), "--replay-target", "demo", "-q", *fast)
    assert "259 passed" in quiet and "[replay]" not in quiet


def test_nothing_to_replay_is_a_collection_error_saying_why(pytester: pytest.Pytester) -> None:
    capture = FIXTURES / "crafted" / "link_unknown_user0.pcap"
    result = replay(pytester, "--replay", str(capture), "--replay-target", "demo")
    assert result.ret == 2
    text = result.stdout.str()
    assert "nothing to replay" in text and "unknown link type 147" in text


def test_damaged_capture_is_a_clear_collection_error(pytester: pytest.Pytester) -> None:
    bad = pytester.path / "bad.pcap"
    bad.write_bytes(b"\x00garbage" * 20)
    result = replay(pytester, "--replay", str(bad), "--replay-target", "demo")
    assert result.ret == 2
    assert "not a capture file" in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize("args, message", [
    (["--speed", "fast"], "--speed: expected 0 (no waiting) or a number from 1e-06 to 1e+06"),
    (["--rate", "0"], "--rate: expected a number from 1e-06 to 1e+09"),
    (["--replay-concurrency", "0"], "--replay-concurrency: expected a number from 1 to 100000"),
    (["--replay-include", "("], "is not a valid regular expression"),
    (["--replay-diff", "status,colour"], "--replay-diff: expected a comma-separated subset"),
    (["--replay-group", "day"], "--replay-group: expected one of exchange, endpoint, connection"),
    (["--rate", "10", "--speed", "2"], "--rate and --speed exclude each other"),
    (["--replay-ignore", "nonsense"], "--replay-ignore"),
])
def test_bad_option_values_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", *args) \
        if "--speed" not in args else replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", *args)
    assert result.ret == 4, result.stdout.str()
    assert message in result.stderr.str() + result.stdout.str()


def test_an_evidence_directory_that_cannot_be_created_is_a_usage_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "a-file").write_text("")
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", "--replay-report", "a-file/evidence")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --replay-report a-file/evidence: cannot create the directory (Not a directory)"])


def test_no_target_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = replay(pytester, "--replay", str(DEMO))
    assert result.ret == 4
    assert "no replay target" in result.stderr.str()


def test_missing_capture_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = replay(pytester, "--replay", "nope/*.gor", "--replay-target", "demo")
    assert result.ret == 4
    assert "no file matches this pattern" in result.stderr.str()


def test_ini_twins(pytester: pytest.Pytester) -> None:
    pytester.makeini(f"""
        [pytest]
        replay = {DEMO}
        replay_target = demo
        replay_speed = 0
        replay_include = ^GET /health
    """)
    result = replay(pytester, "-q")
    result.assert_outcomes(passed=16, deselected=243)


def test_help_states_defaults(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    text = result.stdout.str()
    for flag in ("--replay=PATH", "--speed=FACTOR", "--rate=RPS", "--replay-target=URL", "--replay-concurrency=N",
                 "--replay-max-wait=SECONDS", "--replay-timeout=SECONDS", "--replay-include=REGEX",
                 "--replay-exclude=REGEX", "--replay-diff=PARTS", "--replay-ignore=RULE"):
        assert flag in text, flag
    assert text.count("Default:") >= 15


def test_clash_with_esss_pytest_replay_is_explained(pytester: pytest.Pytester, monkeypatch) -> None:
    # A fake installed distribution named pytest-replay whose plugin defines --replay, as ESSS's does.
    site = pytester.mkdir("site")
    dist = site / "pytest_replay-1.6.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pytest-replay\nVersion: 1.6.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nreplay = esss_fake_replay\n")
    (site / "esss_fake_replay.py").write_text(
        "def pytest_addoption(parser):\n    parser.addoption('--replay', help='replay a test run file')\n")
    monkeypatch.setenv("PYTHONPATH", str(site), prepend=":")
    result = pytester.runpytest_subprocess("--replay", str(DEMO), "--replay-target", "demo")
    err = result.stderr.str()
    assert result.ret == 4
    assert "cannot run beside the 'pytest-replay' plugin" in err and "pip uninstall pytest-replay" in err
    assert "argparse" not in err and "conflicting option" not in err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_target_refusing_connections_fails_items_and_completes(pytester: pytest.Pytester) -> None:
    port = _closed_port()
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", f"http://127.0.0.1:{port}", "--speed", "0",
                    "-q", "--replay-include", "^GET /health")
    result.assert_outcomes(failed=16, deselected=243)
    assert "refused" in result.stdout.str()


def test_wsgi_app_and_httpx_client_targets(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import json
        import pytest

        def app(environ, start_response):
            body = json.dumps({"status": "ok"}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        @pytest.fixture(scope="session")
        def replay_target():
            return app
    """)
    result = replay(pytester, "--replay", str(DEMO), "--speed", "0", "-q", "--replay-include", "^GET /health")
    result.assert_outcomes(passed=16, deselected=243)
    pytester.makeconftest("""
        import httpx
        import pytest
        from pytest_replay.demo import make_app

        @pytest.fixture(scope="session")
        def replay_target():
            return httpx.AsyncClient(transport=httpx.ASGITransport(make_app()), base_url="http://demo")
    """)
    result = replay(pytester, "--replay", str(DEMO), "--speed", "0", "-q")
    result.assert_outcomes(passed=259)


def test_junit_xml_has_properties_and_no_secrets(pytester: pytest.Pytester) -> None:
    xml = pytester.path / "junit.xml"
    pytester.makeconftest("""
        import pytest
        from pytest_replay.demo import make_app

        @pytest.fixture(scope="session")
        def replay_target():
            return make_app(regression="bug")
    """)
    result = replay(pytester, "--replay", str(DEMO), "--speed", "0", "-q", f"--junitxml={xml}")
    assert result.ret == 1
    text = xml.read_text()
    assert 'name="replayed_status"' in text and 'name="recorded_latency_ms"' in text
    from pytest_replay.capture import load
    from pytest_replay.policy.redact import SECRET_HEADERS

    exchanges, _ = load(str(DEMO))
    secrets = {value.decode() for e in exchanges for name, value in e.request.headers
               if name.decode().lower() in SECRET_HEADERS}
    assert secrets
    output = text + result.stdout.str() + result.stderr.str()
    leaked = [s for s in secrets if s in output or s.split()[-1] in output]
    assert not leaked


def test_xdist_run_leaves_no_temporary_directory_behind(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The controller makes a directory where local workers meet to agree on the start instant; every
    # `-n` run left one in /tmp (517 of them on a developer's machine after a day).
    tmp = pytester.path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    result = replay(pytester, "--replay", str(DEMO), "--replay-target", "demo", "--speed", "0", "-n", "2", "-q")
    result.assert_outcomes(passed=259)
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("pytest-replay-start-")]
