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
from collections import Counter
from pathlib import Path

import pytest
from support import free_port, wait_listening

from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.policy.guard import server_address
from pytest_replay.report.run import RunResults
from pytest_replay.verdicts.diff import DiffConfig, compare
from pytest_replay.verdicts.origin import (
    OriginResolver,
    Origins,
    make_origin,
    recorded_origins,
)

APPS = Path(__file__).resolve().parent / "apps"
SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
HOST = "shop.example.com"
TARGETS = ["/api/", "/api/items/", "/api/items/?page=2", "/api/items/?page=3", "/api/items/?page=4",
           "/api/items/?page=5", "/api/items/3/", "/api/items/7/", "/latest", "/"]
PAGES = 5  # the paginated list items among TARGETS
COMPARE = ("--replay-diff", "status,headers,body", "--replay-headers", "location,link,content-location")


# -- the normalisation, sans-IO ---------------------------------------------------------------------------
SHOP = Origins(("http://shop.example.com",), ("http://127.0.0.1:8000",))
TREATED = "origin http://shop.example.com treated as http://127.0.0.1:8000"


def same(origins: Origins, text: str) -> tuple[str, int]:
    counts: Counter = Counter()
    return origins.text(text, counts), sum(counts.values())


@pytest.mark.parametrize("text, expected", [
    ("http://shop.example.com/api/items/?page=3", "http://127.0.0.1:8000/api/items/?page=3"),
    ("HTTP://Shop.Example.COM/x", "http://127.0.0.1:8000/x"),  # scheme and host are case-insensitive
    ("http://shop.example.com:80/x", "http://127.0.0.1:8000/x"),  # the default port, written
    ("http://shop.example.com", "http://127.0.0.1:8000"),
    ("http://shop.example.com?q=1#top", "http://127.0.0.1:8000?q=1#top"),
    ('<link href="//shop.example.com/s.css">', '<link href="//127.0.0.1:8000/s.css">'),  # protocol-relative
    ("<http://shop.example.com/api/>; rel=\"next\"", "<http://127.0.0.1:8000/api/>; rel=\"next\""),  # Link
    ("0; url=http://shop.example.com/login", "0; url=http://127.0.0.1:8000/login"),  # Refresh
    ("see http://shop.example.com.", "see http://127.0.0.1:8000."),  # a sentence's full stop
    ("a http://shop.example.com/1 b http://shop.example.com/2", "a http://127.0.0.1:8000/1 b http://127.0.0.1:8000/2"),
])
def test_the_recorded_origin_becomes_the_replayed_one(text, expected) -> None:
    assert same(SHOP, text)[0] == expected


@pytest.mark.parametrize("text", [
    "http://shop.example.com:8080/x",  # another port
    "https://shop.example.com/x",  # another scheme
    "http://shop.example.com.evil.org/x",  # a longer host
    "http://www.shop.example.com/x",
    "http://other.example.com/x",  # a link to another service
    "http://user@shop.example.com/x",
    "http://shop.example.com@evil.org/x",
    "xhttp://shop.example.com/x",
    "http://cdn.example.net//shop.example.com/x",  # a path, not a protocol-relative URL
    "shop.example.com/x",  # no scheme, no //: not a URL
    "/api/items/?next=shop.example.com",
])
def test_anything_but_the_exact_origin_at_url_boundaries_stays(text) -> None:
    assert same(SHOP, text) == (text, 0)


def test_a_longer_port_is_another_origin() -> None:
    origins = Origins(("http://127.0.0.1:8000",), ("http://127.0.0.1:9000",))
    assert same(origins, "http://127.0.0.1:80001/x") == ("http://127.0.0.1:80001/x", 0)
    assert same(origins, "http://127.0.0.1:8000/x") == ("http://127.0.0.1:9000/x", 1)


def test_ipv6_origins_and_default_https_port() -> None:
    origins = Origins(("https://[2001:db8::1]",), ("https://[::1]:8443",))
    assert same(origins, "https://[2001:db8::1]:443/a https://[2001:db8::1]/b //[2001:db8::1]/c") == (
        "https://[::1]:8443/a https://[::1]:8443/b //[::1]:8443/c", 3)
    assert same(origins, "https://[2001:db8::10]/a")[1] == 0


def test_json_string_values_only_and_counts_by_origin() -> None:
    counts: Counter = Counter()
    doc = {"next": "http://shop.example.com/p?page=2", "http://shop.example.com/": 1, "n": 3,
           "links": [{"self": "//shop.example.com/a"}, None, True], "docs": "https://docs.example.org/"}
    assert SHOP.json(doc, counts) == {"next": "http://127.0.0.1:8000/p?page=2", "http://shop.example.com/": 1, "n": 3,
                                      "links": [{"self": "//127.0.0.1:8000/a"}, None, True],
                                      "docs": "https://docs.example.org/"}
    assert counts == {TREATED: 2}


def test_every_recorded_and_replayed_origin_is_one_value() -> None:
    origins = Origins(("http://shop.example.com", "http://10.0.0.2:8080"),
                      ("http://api.sandbox.test", "http://127.0.0.1:8000"))
    counts: Counter = Counter()
    text = "http://shop.example.com/a http://10.0.0.2:8080/b http://127.0.0.1:8000/c http://api.sandbox.test/d"
    assert origins.text(text, counts) == ("http://api.sandbox.test/a http://api.sandbox.test/b "
                                          "http://api.sandbox.test/c http://api.sandbox.test/d")
    assert counts == {"origin http://shop.example.com treated as http://api.sandbox.test": 1,
                      "origin http://10.0.0.2:8080 treated as http://api.sandbox.test": 1,
                      "origin http://127.0.0.1:8000 treated as http://api.sandbox.test": 1}


@pytest.mark.parametrize("scheme, authority, origin", [
    ("http", "Shop.Example.com", "http://shop.example.com"),
    ("HTTPS", "h:8443", "https://h:8443"),
    ("http", "[::1]:8000", "http://[::1]:8000"),
    ("http", "", None), ("http", None, None), ("http", "h/path", None), ("http", "u@h", None), ("http", "a b", None),
])
def test_make_origin(scheme, authority, origin) -> None:
    assert make_origin(scheme, authority) == origin


# -- which origins an exchange has ------------------------------------------------------------------------------
def exchange(host: bytes | None = b"shop.example.com", connection: str = "10.0.0.1:5000 -> 10.0.0.2:8080",
             headers=(), index=0) -> Exchange:
    pairs = (((b"Host", host),) if host is not None else ()) + tuple(headers)
    return Exchange(index, Request.build("GET", "/api/items/", pairs), Response.build(200), 0, 1, connection, 0,
                    Source("t.pcap", 0))


def test_recorded_origins_are_the_captured_host_with_the_capture_scheme_and_the_server_address() -> None:
    assert recorded_origins(exchange()) == ("http://shop.example.com", "http://10.0.0.2:8080")
    assert recorded_origins(exchange(connection="gor:1f90c1a2")) == ("http://shop.example.com",)
    assert recorded_origins(exchange(headers=((b"X-Forwarded-Proto", b"https"),))) == (
        "https://shop.example.com", "https://10.0.0.2:8080")
    assert recorded_origins(exchange(headers=((b"Forwarded", b"for=1.2.3.4;proto=https"),)))[0] == \
        "https://shop.example.com"
    assert recorded_origins(exchange(host=None, connection="[::1]:5 -> [2001:db8::1]:80 #2")) == (
        "http://[2001:db8::1]:80",)
    assert server_address("10.0.0.1:5000 -> 10.0.0.2:8080") == "10.0.0.2:8080"
    assert server_address("gor:1f90c1a2") is None


def test_replayed_origins_are_the_host_sent_and_the_target_url() -> None:
    resolver = OriginResolver(lambda request: "127.0.0.1:8000", "http://127.0.0.1:8000")
    origins = resolver(exchange())
    assert origins.recorded == ("http://shop.example.com", "http://10.0.0.2:8080")
    assert origins.replayed == ("http://127.0.0.1:8000",)
    assert resolver(exchange(index=1)) is origins  # one per distinct Host, scheme and server address
    https = OriginResolver(lambda request: "staging:8443", "https://staging:8443/")
    assert https(exchange()).replayed == ("https://staging:8443",)


def test_a_set_host_is_the_replayed_origin_and_the_original_host_needs_no_treatment() -> None:
    resolver = OriginResolver(lambda request: "127.0.0.1:8000", "http://127.0.0.1:8000",
                              set_headers=((b"HOST", b"api.sandbox.test"),))
    assert resolver(exchange()).replayed == ("http://api.sandbox.test", "http://127.0.0.1:8000")
    original = OriginResolver(lambda request: request.host, "http://127.0.0.1:8000")
    origins = original(exchange(connection="gor:1"))
    assert origins.replayed[0] == origins.recorded[0] == "http://shop.example.com"
    assert same(origins, "http://shop.example.com/a") == ("http://shop.example.com/a", 0)
    in_process = OriginResolver(lambda request: request.host)  # the app sees the captured Host
    assert in_process(exchange(connection="gor:1")) is None


def test_forwarded_scheme_is_kept_on_the_replayed_side() -> None:
    resolver = OriginResolver(lambda request: "127.0.0.1:8000", "http://127.0.0.1:8000")
    origins = resolver(exchange(connection="gor:1", headers=((b"X-Forwarded-Proto", b"https"),)))
    assert origins.recorded == ("https://shop.example.com",)
    assert origins.replayed == ("https://127.0.0.1:8000", "http://127.0.0.1:8000")


# -- in a verdict ---------------------------------------------------------------------------------------------
JSON = ((b"Content-Type", b"application/json"),)
PAGE = {"count": 23, "next": "http://shop.example.com/api/items/?page=3",
        "previous": "http://shop.example.com/api/items/", "results": [{"id": 6, "url": "http://shop.example.com/6"}]}


def page(origin: str, **changes) -> Response:
    body = {k: v.replace("http://shop.example.com", origin) if isinstance(v, str) else v for k, v in PAGE.items()}
    body["results"] = [{"id": 6, "url": f"{origin}/6"}]
    body.update(changes)
    return Response.build(200, "OK", JSON, json.dumps(body).encode())


def test_compare_treats_the_origins_as_one_and_says_so() -> None:
    recorded, replayed = page("http://shop.example.com"), page("http://127.0.0.1:8000")
    assert not compare(recorded, replayed).passed  # strict: compared as captured
    verdict = compare(recorded, replayed, origins=SHOP)
    assert verdict.passed and verdict.ignored == ((TREATED, 3),)
    assert OriginResolver.treated(verdict.ignored) == [TREATED]


def test_compare_still_fails_a_changed_page_number_field_or_host() -> None:
    recorded = page("http://shop.example.com")
    for change, shown in [({"next": "http://127.0.0.1:8000/api/items/?page=4"},
                           '$.next: "http://127.0.0.1:8000/api/items/?page=3" -> '
                           '"http://127.0.0.1:8000/api/items/?page=4"'),
                          ({"count": 24}, "$.count: 23 -> 24"),
                          ({"previous": "http://other.example.com/api/items/"},
                           '$.previous: "http://127.0.0.1:8000/api/items/" -> "http://other.example.com/api/items/"'),
                          ({"next": "http://127.0.0.1:80001/api/items/?page=3"}, "$.next")]:
        verdict = compare(recorded, page("http://127.0.0.1:8000", **change), origins=SHOP)
        assert not verdict.passed and verdict.total == 1
        assert shown in str(verdict.differences[0])


def test_compare_headers_and_html() -> None:
    config = DiffConfig(parts=frozenset({"status", "headers", "body"}), headers=("location", "link"))
    html = b'<link rel="canonical" href="%s/">\n<a href="//%s/x">x</a>\n'

    def answer(origin: bytes, authority: bytes) -> Response:
        return Response.build(302, "Found", ((b"Location", origin + b"/api/items/23/"),
                                             (b"Link", b"<" + origin + b"/api/>; rel=\"api\""),
                                             (b"Content-Type", b"text/html")), html % (origin, authority))

    recorded = answer(b"http://shop.example.com", b"shop.example.com")
    replayed = answer(b"http://127.0.0.1:8000", b"127.0.0.1:8000")
    assert len(compare(recorded, replayed, config).differences) == 4
    verdict = compare(recorded, replayed, config, origins=SHOP)
    assert verdict.passed and verdict.ignored == ((TREATED, 4),)
    moved = Response.build(302, "Found", ((b"Location", b"http://127.0.0.1:8000/api/items/24/"),
                                          (b"Link", b"<http://127.0.0.1:8000/api/>; rel=\"api\""),
                                          (b"Content-Type", b"text/html")), html % (b"http://127.0.0.1:8000",
                                                                                   b"127.0.0.1:8000"))
    verdict = compare(recorded, moved, config, origins=SHOP)
    assert [str(d) for d in verdict.differences] == [
        "header location: http://127.0.0.1:8000/api/items/23/ -> http://127.0.0.1:8000/api/items/24/"]


def test_run_results_add_up_origins_across_workers() -> None:
    one = RunResults(origins={TREATED: 2})
    two = RunResults.from_dict(RunResults(origins={TREATED: 3, "origin http://a treated as http://b": 1}).to_dict())
    assert one.merge(two).origins == {TREATED: 5, "origin http://a treated as http://b": 1}


# -- end to end: a real app under gunicorn ----------------------------------------------------------------------
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
            wait_listening(port, proc, "gunicorn")
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
    recording, replay = free_port(), free_port()
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
    with gunicorn([free_port()], tmp_path / "access.log", regression=True) as (url,):
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


def test_each_side_of_a_live_baseline_has_its_own_origin(pytester, shop, tmp_path) -> None:
    # Baseline and target listen on different ports, so every absolute URL they build from their Host
    # differs: by default the two origins are one value, and only a real change fails.
    with gunicorn([free_port()], tmp_path / "baseline.log") as (baseline,):
        same = replay(pytester, shop["capture"], shop["url"], "--replay-baseline", baseline, "-rf")
        same.assert_outcomes(passed=len(TARGETS))
        strict = replay(pytester, shop["capture"], shop["url"], "--replay-baseline", baseline,
                        "--replay-origins", "strict", "-rf")
        assert strict.parseoutcomes()["failed"] >= 5  # each page's next/previous/item links
        with gunicorn([free_port()], tmp_path / "candidate.log", regression=True) as (candidate,):
            regressed = replay(pytester, shop["capture"], candidate, "--replay-baseline", baseline, "-rf")
    failing = {"/api/items/", "/api/items/?page=2", "/api/items/?page=3", "/api/items/?page=4", "/api/items/7/"}
    text = regressed.stdout.str()
    failed_items = {line.split("::GET ", 1)[1].split(" #")[0] for line in text.splitlines()
                    if line.startswith("FAILED shop.gor::")}
    assert failed_items == failing
    assert regressed.parseoutcomes()["passed"] == len(TARGETS) - len(failing)
    assert "$.next" in text and "Widget seven" in text
    assert "$.previous" not in text and "$.results[0].url" not in text
