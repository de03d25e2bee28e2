"""Origins end to end: a Django REST Framework app under gunicorn builds absolute URLs from the Host
header (pagination `next`/`previous`, item URLs, a redirect's Location, HTML links). Recorded with
`Host: shop.example.com` on one port and replayed to another, those URLs differ although the app is
the same; the recorded origin is treated as the replayed one by default (`--replay-origins same`),
and a real regression in the same responses still fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parent / "apps"
SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
HOST = "shop.example.com"
TARGETS = ["/api/", "/api/items/", "/api/items/?page=2", "/api/items/?page=3", "/api/items/?page=4",
           "/api/items/?page=5", "/api/items/3/", "/api/items/7/", "/latest", "/"]
PAGES = 5  # the paginated list items among TARGETS
COMPARE = ("--replay-diff", "status,headers,body", "--replay-headers", "location,link,content-location")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gunicorn exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("gunicorn did not start")


@contextlib.contextmanager
def gunicorn(ports: list[int], log: Path, regression: bool = False):
    """The DRF shop under gunicorn on 127.0.0.1, logging the Host header of every request it serves."""
    binds = [arg for port in ports for arg in ("-b", f"127.0.0.1:{port}")]
    env = {**os.environ, "SHOP_REGRESSION": "1" if regression else "0"}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--chdir", str(APPS), "drf_shop:application",
                             *binds, "-w", "1", "--threads", "4", "--log-level", "warning",
                             "--access-logfile", str(log), "--access-logformat", "%({host}i)s %(U)s"], env=env)
    try:
        for port in ports:
            _wait_listening(proc, port)
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def fetch(port: int, target: str, host: str) -> tuple[bytes, bytes]:
    """One GET over a raw socket: the request and response bytes exactly as they went over the wire."""
    request = (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json, text/html\r\n"
               "User-Agent: shop-client/1.0\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return request, b"".join(chunks)


def record(port: int, path: Path) -> Path:
    """A .gor capture of real answers of the app on `port`, asked with a production Host header."""
    records = []
    for i, target in enumerate(TARGETS):
        request, response = fetch(port, target, HOST)
        rid = f"{i + 1:016x}00000001"
        ts = T0 + i * 1_000_000
        records.append(f"1 {rid} {ts} -1\n".encode() + request + SEP)
        records.append(f"2 {rid} {ts + 500_000} -1\n".encode() + response + SEP)
    path.write_bytes(b"".join(records))
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The shop listening on two ports (recorded on the first, replayed to the second), its capture,
    and its access log."""
    tmp = tmp_path_factory.mktemp("shop")
    log = tmp / "access.log"
    recording, replay = _free_port(), _free_port()
    with gunicorn([recording, replay], log) as urls:
        capture = record(recording, tmp / "shop.gor")
        yield {"capture": capture, "url": urls[1], "log": log}


def hosts_seen(log: Path, since: int) -> list[str]:
    time.sleep(0.2)  # gunicorn writes its access log line after the response
    return [line.split(" ", 1)[0] for line in log.read_text()[since:].splitlines()]


def replay(pytester: pytest.Pytester, capture: Path, url: str, *args: str) -> pytest.RunResult:
    """A replay of a copy of `capture` in pytester's directory (so its ini file applies)."""
    shutil.copy(capture, pytester.path / capture.name)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", capture.name, "--replay-target",
                                         url, "--speed", "0", *COMPARE, *args)


def test_capture_holds_absolute_urls_of_the_production_host(shop) -> None:
    text = shop["capture"].read_bytes()
    assert b'"next":"http://shop.example.com/api/items/?page=3"' in text
    assert b"Location: http://shop.example.com/api/items/23/" in text
    assert b'href="//shop.example.com/static/shop.css"' in text


def test_recorded_origin_is_treated_as_the_target_origin_by_default(pytester, shop) -> None:
    url = shop["url"]
    result = replay(pytester, shop["capture"], url, "--replay-report", "evidence")
    result.assert_outcomes(passed=len(TARGETS))
    result.stdout.fnmatch_lines([f"*origin http://{HOST} treated as {url} in {len(TARGETS)} responses*"])
    evidence = json.loads((pytester.path / "evidence" / "replay-evidence.json").read_text())
    assert evidence["diff"]["origins"] == {f"origin http://{HOST} treated as {url}": len(TARGETS)}


def test_strict_origins_compare_as_captured_and_every_item_fails(pytester, shop) -> None:
    url = shop["url"]
    result = replay(pytester, shop["capture"], url, "--replay-origins", "strict", "-rf")
    result.assert_outcomes(failed=len(TARGETS))
    result.stdout.fnmatch_lines([
        f'*$.next: "http://{HOST}/api/items/?page=3" -> "{url}/api/items/?page=3"*',
        f"*header location: http://{HOST}/api/items/23/ -> {url}/api/items/23/*",
    ])
    assert "treated as" not in result.stdout.str()


def test_strict_origins_from_the_ini_file(pytester, shop) -> None:
    pytester.makeini("[pytest]\nreplay_origins = strict\n")
    result = replay(pytester, shop["capture"], shop["url"])
    result.assert_outcomes(failed=len(TARGETS))


def test_a_real_regression_in_the_same_responses_still_fails(pytester, shop, tmp_path) -> None:
    with gunicorn([_free_port()], tmp_path / "access.log", regression=True) as (url,):
        result = replay(pytester, shop["capture"], url, "-rf")
    # Pages 1-4 have a `next` link (it now skips a page); page 2 and item 7 hold the renamed item.
    failing = {"/api/items/", "/api/items/?page=2", "/api/items/?page=3", "/api/items/?page=4", "/api/items/7/"}
    result.assert_outcomes(passed=len(TARGETS) - len(failing), failed=len(failing))
    text = result.stdout.str()
    assert f'$.next: "{url}/api/items/?page=3" -> "{url}/api/items/?page=4"' in text
    assert '$.results[1].name: "Widget 7" -> "Widget seven"' in text
    assert "$.previous" not in text and "$.results[0].url" not in text  # the origin alone is no difference
    assert f"ignored: origin http://{HOST} treated as {url}" in text


def test_original_host_sends_the_captured_host(pytester, shop) -> None:
    since = len(shop["log"].read_text())
    result = replay(pytester, shop["capture"], shop["url"], "--replay-original-host", "-rA")
    result.assert_outcomes(passed=len(TARGETS))
    assert hosts_seen(shop["log"], since) == [HOST] * len(TARGETS)
    assert "treated as" not in result.stdout.str()  # the app built the recorded URLs itself


def test_original_host_from_the_ini_file(pytester, shop) -> None:
    pytester.makeini("[pytest]\nreplay_original_host = true\n")
    since = len(shop["log"].read_text())
    result = replay(pytester, shop["capture"], shop["url"])
    result.assert_outcomes(passed=len(TARGETS))
    assert hosts_seen(shop["log"], since) == [HOST] * len(TARGETS)


def test_set_header_host_wins_over_the_target_host(pytester, shop) -> None:
    since = len(shop["log"].read_text())
    result = replay(pytester, shop["capture"], shop["url"], "--replay-set-header", "Host: api.sandbox.test")
    assert hosts_seen(shop["log"], since) == ["api.sandbox.test"] * len(TARGETS)
    result.assert_outcomes(passed=len(TARGETS))
    result.stdout.fnmatch_lines([f"*origin http://{HOST} treated as http://api.sandbox.test in {len(TARGETS)} "
                                 "responses*"])
