"""The HTML report (--replay-html, merge --html), the GitHub job summary and the JUnit properties.

End to end: a real replay (pytest in a subprocess, as a user runs it) against a server on 127.0.0.1
that regresses a few endpoints, with a secret planted in a request header and in a response body;
the report is then opened in headless Chromium (selenium): no console error, charts drawn, the
endpoint table sorts on a click, a screenshot saved. Without Chromium the browser test skips, but
under CI (CI set) it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import CI_FLAG, interrupt_after_collection, pytest_to_interrupt, skip_or_fail

from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.report.aggregate import ALL, Aggregate, Stats
from pytest_replay.report.evidence import build_evidence, read_evidence, write_evidence
from pytest_replay.report.html import (MAX_DIFF_CHARS, check_writable, distribution, outcome, render_html,
                                       write_html)
from pytest_replay.report.merge import main as merge_main
from pytest_replay.report.summary import append_step_summary, markdown
from pytest_replay.schedule.target import Observation
from pytest_replay.verdicts.budgets import evaluate

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "captures" / "demo" / "demo.pcap"
SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
MS = 1_000_000
HEADER_SECRET = "Bearer hdr-PLANTED-7f3a9c2e51"
BODY_SECRET = "body-PLANTED-4d8e0b6a77"
SERVER_SECRET = "srv-PLANTED-1c5f9e3d20"
SCREENSHOT = Path("/tmp/replay-html-screenshot.png")


# -- a capture and a server that regresses some endpoints --------------------------------------------
def _response(body: bytes, status: str = "200 OK") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def write_capture(path: Path) -> Path:
    """40 exchanges, 200 ms apart: fast, slow (regresses), broken (500 now), changed (a field changed)
    and account (a secret in the body, requested with a secret header)."""
    records = []
    kinds = ("fast", "slow", "broken", "changed", "account")
    for i in range(40):
        kind = kinds[i % len(kinds)]
        rid = f"{i + 1:016x}00000000"
        ts = T0 + i * 200 * MS  # 8 s of capture, replayed at --speed 4 in 2 s
        headers = f"Host: shop\r\nAuthorization: {HEADER_SECRET}\r\n" if kind == "account" else "Host: shop\r\n"
        request = f"GET /api/{kind}/{i} HTTP/1.1\r\n{headers}\r\n".encode()
        if kind == "account":
            body = json.dumps({"id": i, "sessionToken": BODY_SECRET, "plan": "gold"}).encode()
        elif kind == "changed":
            body = json.dumps({"id": i, "price": 10, "currency": "EUR"}).encode()
        else:
            body = json.dumps({"id": i, "ok": True}).encode()
        records.append(f"1 {rid} {ts} -1\n".encode() + request)
        records.append(f"2 {rid} {ts + MS} -1\n".encode() + _response(body))
    path.write_bytes(b"".join(record + SEP for record in records))
    return path


SERVER = r'''
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        kind, ident = parts[1], int(parts[2])
        status = 200
        if kind == "slow":
            time.sleep(0.04)
            body = {"id": ident, "ok": True}
        elif kind == "broken":
            status, body = 500, {"error": "boom"}
        elif kind == "changed":
            body = {"id": ident, "price": "10.00", "currency": "EUR"}
        elif kind == "account":
            body = {"id": ident, "sessionToken": "%s", "plan": "silver"}
        else:
            body = {"id": ident, "ok": True}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
''' % SERVER_SECRET


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    script = tmp_path_factory.mktemp("server") / "server.py"
    script.write_text(SERVER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(script), str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the test server did not start")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def replayed(server: int, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One real replay writing the HTML report, the evidence, JUnit XML and a job summary."""
    root = tmp_path_factory.mktemp("replayed")
    capture = write_capture(root / "shop.gor")
    out = SimpleNamespace(root=root, html=root / "out" / "report.html", junit=root / "junit.xml",
                          summary=root / "step-summary.md", evidence=root / "evidence")
    out.summary.write_text("# earlier step\n")
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(out.summary)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--replay", str(capture),
         "--replay-target", f"http://127.0.0.1:{server}", "--speed", "4", "--replay-budget", "p95<1.2x",
         "--replay-budget", "5xx<50%", "--replay-html", str(out.html), "--replay-report", str(out.evidence),
         f"--junitxml={out.junit}", "--replay-headers", "*", f"--html={root / 'pytest-html.html'}",
         "--self-contained-html"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    out.stdout = done.stdout + done.stderr
    out.returncode = done.returncode
    return out


def assert_no_secret(text: str, where: str) -> None:
    for secret in (HEADER_SECRET, HEADER_SECRET.split()[1], BODY_SECRET, SERVER_SECRET):
        assert secret not in text, f"{secret!r} found in {where}"


# -- the real run ----------------------------------------------------------------------------------------
def test_real_replay_writes_a_self_contained_report(replayed: SimpleNamespace) -> None:
    assert replayed.returncode == 1, replayed.stdout  # regressions fail the run
    assert f"HTML report written to {replayed.html}" in replayed.stdout
    text = replayed.html.read_text(encoding="utf-8")
    assert_no_secret(text, "the HTML report")
    assert_no_secret(replayed.stdout, "the terminal")
    assert "REDACTED" in text  # the secret field's diff is there, masked
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing loaded from elsewhere
    assert "<script src" not in text and "<link" not in text
    assert "requests per second" in text and "status classes over time" in text and "lateness (send time" in text
    for part in ("Traffic replay: FAILED", "sha256", "GET /api/slow/{id}", "GET /api/broken/{id}",
                 "p95&lt;1.2x", "Failures by cause", "status 200 -&gt; 500", "<svg", "Skipped exchanges"):
        assert part in text, part
    evidence = read_evidence(replayed.evidence / "replay-evidence.json")
    assert evidence["run"]["interrupted"] is False
    assert [f["sha256"] for f in evidence["captures"]["files"]][0] in text


def test_junit_cases_carry_endpoint_and_latencies(replayed: SimpleNamespace) -> None:
    cases = [case for case in ET.parse(replayed.junit).iter("testcase") if "replay-budgets" not in
             (case.get("classname") or "")]
    assert len(cases) == 40
    slow = []
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["replay_endpoint"].startswith("GET /api/"), props
        assert float(props["recorded_latency_ms"]) == pytest.approx(1.0, abs=0.01)
        assert float(props["replayed_latency_ms"]) >= 0
        if props["replay_endpoint"] == "GET /api/slow/{id}":
            slow.append(float(props["replayed_latency_ms"]))
    assert len(slow) == 8 and min(slow) >= 35  # the server sleeps 40 ms there
    assert_no_secret(replayed.junit.read_text(), "the JUnit XML")


def test_github_step_summary_is_appended(replayed: SimpleNamespace) -> None:
    text = replayed.summary.read_text()
    assert text.startswith("# earlier step\n")  # appended, not overwritten
    assert "Traffic replay: FAILED" in text
    assert "| `p95<1.2x` | **FAIL** |" in text and "| `5xx<50%` | pass |" in text
    assert "`GET /api/broken/{id}`" in text and "Top causes:" in text
    assert f"HTML report: `{replayed.html}`" in text
    assert_no_secret(text, "the job summary")


def test_pytest_html_report_gets_extras_and_the_summary(replayed: SimpleNamespace) -> None:
    text = (replayed.root / "pytest-html.html").read_text(encoding="utf-8")
    assert "Traffic replay: FAILED" in text  # the run's summary, in pytest-html's summary section
    assert "Full replay report" in text and "rep p95 ms" in text and "p95&lt;1.2x" in text
    assert "replay diff" in text  # a failed item's diff as a text extra
    assert "replayed_latency_ms" in text and "GET /api/slow/{id}" in text  # latencies as an HTML extra
    assert_no_secret(text, "the pytest-html report")


def test_report_opens_in_a_real_browser(replayed: SimpleNamespace, tmp_path: Path) -> None:
    driver = chromium(tmp_path)
    try:
        driver.get(replayed.html.as_uri())
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
        assert driver.title == "Traffic replay: FAILED"
        sizes = driver.execute_script(
            "return Array.from(document.querySelectorAll('svg.chart')).map(function (s) {"
            " var r = s.getBoundingClientRect(); return [r.width, r.height, s.querySelectorAll('path').length]; })")
        assert len(sizes) >= 10, sizes  # overall, status classes, one per endpoint (5), 4 over time
        assert all(w > 0 and h > 0 for w, h, _ in sizes), sizes
        curves = driver.execute_script(
            "return Array.from(document.querySelectorAll('svg.chart path')).map(function (p) {"
            " var b = p.getBBox(); return b.width + b.height; })")
        assert curves and all(size > 0 for size in curves)

        def rows():  # (endpoint, rep p95 ms) in the table's order
            return [tuple(r) for r in driver.execute_script(
                "var col = Array.from(document.querySelectorAll('#endpoints thead th')).findIndex("
                "function (th) { return th.textContent === 'rep p95 ms'; });"
                "return Array.from(document.querySelectorAll('#endpoints tbody tr')).map("
                "function (r) { return [r.cells[0].textContent, parseFloat(r.cells[col].getAttribute('data-v'))]; })")]

        before = rows()
        header = driver.execute_script(
            "return Array.from(document.querySelectorAll('#endpoints thead th')).find("
            "function (th) { return th.textContent === 'rep p95 ms'; })")
        header.click()
        after = rows()
        assert sorted(after) == sorted(before)
        # descending on the first click: the slowest first (by the figures: on a loaded machine the 'fast'
        # endpoint's p95 can pass the 40 ms of the 'slow' one)
        assert [p95 for _, p95 in after] == sorted((p95 for _, p95 in before), reverse=True)
        header.click()
        assert rows() == list(reversed(after))
        assert not [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        # Nothing queued behind the target (a connection per request, none busy): the response time from
        # schedule is the latency, so it is in the table but not in the headline nor drawn again.
        labels = driver.execute_script(
            "return Array.from(document.querySelectorAll('#run table.kv th')).map(function (h) { return h.textContent; })")
        assert "latency" in labels and "response time from schedule" not in labels
        assert not driver.execute_script("return document.querySelectorAll('svg.chart path.sch').length")
        screenshot(driver, 2200, tmp_path / "report.png", SCREENSHOT)
    finally:
        driver.quit()


SCHEDULE_SCREENSHOT = Path("/tmp/replay-html-schedule-screenshot.png")


def queueing_capture(path: Path) -> Path:
    """10 requests to the slow endpoint (40 ms) on one connection, 100 ms apart: at 1x each is answered
    before the next is due; at 4x (25 ms apart) each waits for the one before it on the connection."""
    records = []
    for i in range(10):
        rid = f"{1:016x}{i:08x}"  # (the first 16 digits name the connection)
        ts = T0 + i * 100 * MS
        records.append(f"1 {rid} {ts} -1\n".encode() + f"GET /api/slow/{i} HTTP/1.1\r\nHost: shop\r\n\r\n".encode())
        records.append(f"2 {rid} {ts + 40 * MS} -1\n".encode() + _response(json.dumps({"id": i, "ok": True}).encode()))
    path.write_bytes(b"".join(record + SEP for record in records))
    return path


def test_the_report_shows_the_response_time_from_schedule_where_the_latency_is(server: int, tmp_path: Path) -> None:
    # A capacity run against the real server: stage 1 (1x) keeps up, stage 2 (4x) queues behind the slow
    # endpoint on its one connection. The latency from send stays ~40 ms; the response time from schedule
    # (what 'p99>' stop conditions and 'scheduled' budgets judge) grows with the queue. The report shows it
    # per stage, per endpoint, in the headline and as a curve, with what it means.
    capture = queueing_capture(tmp_path / "queue.gor")
    html = tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--replay", str(capture), "--replay-target",
         f"http://127.0.0.1:{server}", "--replay-stages", "1x:1s,4x:0.5s", "--replay-html", str(html)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and html.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    driver = chromium(tmp_path)
    try:
        driver.get(html.as_uri())
        assert not [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        stages = driver.execute_script(
            "var t = document.querySelector('#stages'); var heads = Array.from(t.tHead.rows[0].cells).map("
            "function (c) { return c.textContent; }); return Array.from(t.tBodies[0].rows).map(function (r) {"
            " var row = {}; heads.forEach(function (h, i) { row[h] = r.cells[i].getAttribute('data-v') ||"
            " r.cells[i].textContent; }); row.visible = r.getBoundingClientRect().height > 0; return row; })")
        assert [row["pace"] for row in stages] == ["1x", "4x"] and all(row["visible"] for row in stages)
        service, sched = float(stages[1]["service p99 ms"]), float(stages[1]["sched p99 ms"])
        assert 30 < service < sched / 2, stages  # stage 2 queued: its response time from schedule
        endpoint = driver.execute_script(
            "var t = document.querySelector('#endpoints'); var heads = Array.from(t.tHead.rows[0].cells).map("
            "function (c) { return c.textContent; }); var r = t.tBodies[0].rows[0];"
            " return [heads, Array.from(r.cells).map(function (c) { return c.getAttribute('data-v') ||"
            " c.textContent; })]")
        row = dict(zip(*endpoint))
        assert row["endpoint"] == "GET /api/slow/{id}" and float(row["sched p99 ms"]) > 2 * float(row["rep p99 ms"])
        headline = driver.execute_script(
            "return Array.from(document.querySelectorAll('#run table.kv tr')).map(function (r) {"
            " return [r.cells[0].textContent, r.cells[1].innerText]; })")
        headline = dict(headline)
        assert headline["latency"].startswith("from send (service): p50 ")
        sched_line = headline["response time from schedule"]
        assert sched_line.startswith("p50 ") and "queueing behind the target included" in sched_line
        assert "the replayer's own lateness left out" in sched_line
        notes = driver.execute_script(
            "return Array.from(document.querySelectorAll('#capacity p.note, #endpoint-table p.note')).length")
        assert notes == 2
        curves = driver.execute_script(
            "return Array.from(document.querySelectorAll('svg.chart path.sch')).map(function (p) {"
            " var b = p.getBBox(); return b.width + b.height; })")
        assert len(curves) == 2 and all(size > 0 for size in curves)  # the overall chart, the endpoint's
        screenshot(driver, 1500, tmp_path / "schedule.png", SCHEDULE_SCREENSHOT)
    finally:
        driver.quit()


def test_a_big_report_opens_fast_in_a_real_browser(tmp_path: Path) -> None:
    path = write_html(tmp_path / "big.html", big_evidence())
    driver = chromium(tmp_path)
    try:
        started = time.perf_counter()
        driver.get(path.as_uri())  # returns once the page has loaded
        loaded = time.perf_counter() - started
        assert not [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert driver.execute_script("return document.querySelectorAll('svg.chart').length") == 106
        assert loaded < 10, loaded  # typically well under a second
        header = driver.find_element("xpath", "//table[@id='endpoints']//th[text()='requests']")
        started = time.perf_counter()
        header.click()
        assert time.perf_counter() - started < 5
    finally:
        driver.quit()


def screenshot(driver, height: int, shot: Path, kept: Path) -> None:
    """The page, 1400 px wide, saved (not blank) and kept at `kept` to be looked at."""
    driver.set_window_size(1400, height)
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    shutil.copyfile(shot, kept)


def chromium(tmp_path: Path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install -e '.[test]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    chromedriver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)
    if not browser or not chromedriver:
        skip_or_fail("Chromium or chromedriver is missing (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def test_missing_browser_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CI_FLAG, "")
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail("no chromium")
    monkeypatch.setenv(CI_FLAG, "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        skip_or_fail("no chromium")


# -- start-up and interruption ----------------------------------------------------------------------------
def test_unwritable_report_path_is_a_usage_error_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--replay", str(DEMO),
                           "--replay-target", "demo", "--replay-html", str(blocker / "report.html")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "--replay-html" in done.stderr and "cannot create the directory" in done.stderr
    assert check_writable(tmp_path) is not None  # a directory
    assert check_writable(tmp_path / "new" / "r.html") is None


def test_ctrl_c_still_writes_the_report_marked_interrupted(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    proc = pytest_to_interrupt(["--replay", str(DEMO), "--replay-target", "demo", "--speed", "0.2",
                                "--replay-html", str(html)], tmp_path)
    out, _ = interrupt_after_collection(proc, 2)
    assert proc.returncode == 2, out
    text = html.read_text(encoding="utf-8")
    assert "Traffic replay: INTERRUPTED" in text and "the run was interrupted" in text
    assert not list(tmp_path.glob(".report.html.*.tmp"))  # no temporary file left behind


# -- rendering from evidence data -------------------------------------------------------------------------
def _pair(target: str, index: int, recorded_ms: float, replayed_ms: float, status: int = 200):
    request = Request.build("GET", target)
    start = T0 + index * 10 * MS
    exchange = Exchange(index, request, Response.build(200), start, start + int(recorded_ms * MS), "c", index,
                        Source("capture.gor", index * 100, record=index))
    sent = 10**9 + index * 10 * MS
    first = sent + int(replayed_ms * MS)
    return exchange, Observation(index, sent, sent, first, first + MS, Response.build(status))


def _difference(signature: str):
    return SimpleNamespace(signature=signature, part="body")


def small_evidence(tmp_path: Path, shard=None, pairs=None) -> dict:
    capture = tmp_path / "capture.gor"
    capture.write_bytes(b"x")
    aggregate = Aggregate()
    for exchange, observation in pairs if pairs is not None else [
            _pair(f"/api/users/{i}", i, 10 + i % 7, 12 + i % 9, 500 if i % 10 == 0 else 200) for i in range(60)]:
        aggregate.add(exchange, observation)
    return build_evidence(aggregate=aggregate, captures=[capture], target="http://127.0.0.1:9", shard=shard,
                          budgets=evaluate(("p95<1.5x",), aggregate), outcomes={"passed": 60}, planned=60,
                          pace={"speed": 1.0})


def test_outcome_of_runs_and_merges(tmp_path: Path) -> None:
    data = small_evidence(tmp_path)
    assert outcome(data)[0] == "PASSED"
    data["run"]["outcomes"] = {"passed": 50, "failed": 10}
    assert outcome(data) == ("FAILED", ["10 items failed"])
    data["run"]["interrupted"] = True
    assert outcome(data)[0] == "INTERRUPTED"
    data["run"]["verdict"] = {"exit_code": 2, "reasons": ["shard(s) 2 missing"], "passed": False}
    data["run"]["interrupted"] = False
    assert outcome(data) == ("INCOMPLETE", ["shard(s) 2 missing"])


def test_distribution_is_cumulative_and_bounded(tmp_path: Path) -> None:
    data = small_evidence(tmp_path)
    points = distribution(data["aggregate"]["overall"]["latency"], points=20)
    assert 2 <= len(points) <= 40
    assert points[-1][1] == pytest.approx(100.0)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(points, points[1:]))
    assert distribution(None) == []


def test_huge_diffs_are_cut_with_a_note(tmp_path: Path) -> None:
    data = small_evidence(tmp_path)
    huge = [f"  body $.rows[{i}] " + "x" * 2000 for i in range(5000)]
    data["failures"] = {"failed": 3, "signatures": 1, "examples_shown": 1, "examples_omitted": 2, "groups": [
        {"signature": "GET /api/users/{id} body $.rows[*] changed", "exchanges": 3,
         "examples": [{"index": 7, "diff": huge}], "omitted": 2}]}
    text = render_html(data)
    assert "more lines not shown: the diff is too long" in text and "more characters not shown" in text
    assert len(text) < 100_000


def _synthetic_stats(requests: int, base_us: int, slower: float, failed: int) -> Stats:
    stats = Stats()
    stats.requests = stats.judged = requests
    stats.failed = failed
    stats.status["2xx"] = requests - failed
    stats.status["5xx"] = failed
    stats.recorded_status["2xx"] = requests
    step = max(requests // 400, 1)
    for i in range(0, requests, step):
        value = base_us + (i * 37) % (base_us * 4)
        stats.recorded.record(value, step)
        stats.latency.record(int(value * slower), step)
        stats.lateness.record(i % 5000, step)
    return stats


def big_evidence() -> dict:
    """100 endpoints, 100k requests, 500 failure signatures with long diffs: what a big run holds."""
    aggregate = Aggregate()
    for n in range(100):
        key = f"GET /api/resource-{n:03d}/{{id}}/" + "segment/" * 6
        aggregate.endpoints[key] = _synthetic_stats(1000, 2000 + n * 300, 1.0 + (n % 7) / 10, n % 4)
        # (the overall Stats are the endpoints' summed when read: Aggregate.overall)
    text = "\n".join(f"  body $.items[{k}].field changed: " + "v" * 200 for k in range(100))
    for n in range(520):
        for index in range(3):
            aggregate.failure_groups.add(f"GET /api/resource-{n % 100:03d}/{{id}}",
                                         SimpleNamespace(differences=[_difference(f"body $.f{n} changed")]),
                                         n * 10 + index, text)
    for i in range(100_000):  # two hours of capture: the timeline folds into 4 s buckets
        aggregate.timeline.add(T0 + i * 72 * MS, 500 if i % 100 == 0 else 200, i % 1000 == 0, 2000 + i % 5000, i % 300)
    skipped = [{"index": i, "exchange": f"POST /api/w/{i}", "source": "c.gor", "reason": "write skipped"}
               for i in range(5000)]
    return build_evidence(aggregate=aggregate, target="http://127.0.0.1:9", budgets=evaluate(
        ("p95<1.2x", "5xx<1%", "GET /api/resource-001/*: p99<300ms"), aggregate), skipped=skipped,
        outcomes={"passed": 99_000, "failed": 1000}, planned=100_000, pace={"speed": 1.0})


def test_a_big_run_stays_under_2_mb_and_renders_fast(tmp_path: Path) -> None:
    data = big_evidence()
    assert data["totals"]["requests"] == 100_000 and len(data["endpoints"]) == 100
    started = time.perf_counter()
    path = write_html(tmp_path / "big.html", data)
    elapsed = time.perf_counter() - started
    size = path.stat().st_size
    assert size < 2_000_000, size
    assert elapsed < 20, elapsed  # typically ~1 s; generous for a loaded 2-core machine
    text = path.read_text(encoding="utf-8")
    assert text.count('<svg class="chart"') == 106  # every endpoint, overall, status classes, 4 over time
    assert data["aggregate"]["timeline"]["width_s"] == 4 and len(data["aggregate"]["timeline"]["rows"]) <= 2000
    assert "the report's size limit for diffs was reached" in text
    assert MAX_DIFF_CHARS < 2_000_000


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_evidence(tmp_path)
    target = tmp_path / "r.html"
    target.write_text("old")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        write_html(target, data)
    assert target.read_text() == "old" and not list(tmp_path.glob(".r.html.*"))
    monkeypatch.undo()
    write_html(target, data)
    assert target.read_text().startswith("<!DOCTYPE html>")


def test_merge_writes_the_html_of_the_shards(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = [_pair(f"/api/users/{i}", i, 10, 11) for i in range(40)]
    files = [str(write_evidence(tmp_path / "shards", small_evidence(tmp_path, (k, 2), pairs[k - 1::2])))
             for k in (1, 2)]
    html = tmp_path / "merged" / "report.html"
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code = merge_main([*files, "--html", str(html)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"HTML report: {html}" in out
    text = html.read_text(encoding="utf-8")
    assert "Traffic replay: PASSED" in text and "merged shards" in text
    assert "Traffic replay: PASSED" in summary.read_text()
    assert merge_main([*files, "--html", str(tmp_path)]) == 4  # a directory: refused before merging
    assert "--html" in capsys.readouterr().err


def test_markdown_summary_of_evidence(tmp_path: Path) -> None:
    data = small_evidence(tmp_path)
    text = markdown(data, html="r.html")
    assert text.startswith("## :white_check_mark: Traffic replay: PASSED")
    assert "| `p95<1.5x` |" in text and "HTML report: `" in text
    assert append_step_summary(data, environ={}) is None  # not under GitHub Actions: nothing written
    note = append_step_summary(data, environ={"GITHUB_STEP_SUMMARY": str(tmp_path / "no" / "such" / "f")})
    assert note and "NOT appended" in note


# -- the timeline ---------------------------------------------------------------------------------------
def test_timeline_merges_exactly_and_stays_bounded() -> None:
    from pytest_replay.report.timeline import MAX_BUCKETS, Timeline, coarsen

    events = [(T0 + i * 700 * MS, 500 if i % 9 == 0 else 200, i % 50 == 0, 1000 + i % 777, i % 13) for i in range(9000)]
    whole, parts = Timeline(), [Timeline(), Timeline(), Timeline()]
    for n, event in enumerate(events):
        whole.add(*event)
        parts[n % 3].add(*event)
    merged = Timeline().merge(parts[0]).merge(parts[1]).merge(parts[2])
    assert merged == whole and whole.width == 4 and len(whole.buckets) <= MAX_BUCKETS  # 6300 s of capture
    assert Timeline.from_dict(whole.to_dict()) == whole
    rows = [dict(zip(whole.to_dict()["fields"], row)) for row in whole.to_dict()["rows"]]
    assert sum(r["requests"] for r in rows) == 9000
    assert sum(r["errors"] for r in rows) == 180 and sum(r["5xx"] for r in rows) == 1000 - sum(
        1 for i in range(0, 9000, 9) if i % 50 == 0)
    assert max(r["latency_max_us"] for r in rows) == 1776
    width, starts, drawn = coarsen(whole.to_dict(), 300)
    assert len(drawn) <= 300 and width == 32 and sum(r["requests"] for r in drawn) == 9000


def test_aggregate_carries_the_timeline_through_merges(tmp_path: Path) -> None:
    pairs = [_pair(f"/api/users/{i}", i * 50, 10, 11) for i in range(100)]  # 500 ms apart
    whole, halves = Aggregate(), [Aggregate(), Aggregate()]
    for n, (exchange, observation) in enumerate(pairs):
        whole.add(exchange, observation)
        halves[n % 2].add(exchange, observation)
    merged = Aggregate.merged(Aggregate.from_dict(h.to_dict()) for h in halves)
    assert merged == whole and sum(r[0] for r in whole.timeline.buckets.values()) == 100
    assert len(whole.timeline.buckets) == 50
    assert Aggregate.from_dict({k: v for k, v in whole.to_dict().items() if k != "timeline"}).timeline.buckets == {}


def test_the_schedule_figures_follow_the_evidence_a_stop_and_speed_0() -> None:
    stage = {"stage": 1, "pace": "2x", "duration_s": 5, "target_rate": 10, "sent": 50, "planned": 50, "errors": 0,
             "service_p99_ms": 5, "scheduled_p99_ms": 400, "lateness_p99_ms": 1}
    stop = {"stage": 1, "into_stage_s": 2.5, "offered_rate": 20.0, "condition": "p99>250ms", "window_s": 10,
            "measures": "response time from schedule", "measured": "400 ms", "requests_in_window": 33}
    row = {"endpoint": ALL, "requests": 50, "replayed_ms": {"p50": 1, "p95": 2, "p99": 3},
           "scheduled_ms": {"p50": 10, "p95": 20, "p99": 30}}
    data = {"lateness": {"p50_ms": 1}, "totals": row, "endpoints": [dict(row, endpoint="GET /")],
            "capacity": {"stages": [stage], "stopped": stop}}
    page = render_html(data)
    assert ('<p class="stopped">STOPPED at stage 1, 2.5 s into it, offered 20.0 req/s: <code>p99&gt;250ms</code> '
            "tripped (measured response time from schedule 400 ms over the last 10 s, 33 requests).</p>") in page
    assert "<th>sched p99 ms</th>" in page.split('id="endpoints"')[1]
    assert "<th>response time from schedule</th>" in page
    # --speed 0: nothing is scheduled, so neither the columns nor the headline (the stages keep theirs)
    unscheduled = render_html(dict(data, lateness=None))
    assert "sched p99" not in unscheduled.split('id="endpoints"')[1]
    assert "<th>response time from schedule</th>" not in unscheduled and 'class="stopped"' in unscheduled


def test_the_schedule_parts_escape_what_a_user_wrote_and_take_missing_figures() -> None:
    """The capacity table, the stop line, the sched columns and curves, the headline: a stage's pace, a
    stop condition (both as the user wrote them), what it measured and an endpoint (from the capture)
    are escaped wherever they appear; missing figures show as '-', and a run without stages, without
    figures or with empty sections renders."""
    bad = "<script>alert(1)</script>&\"'"
    stage = {"stage": 1, "pace": bad, "duration_s": None, "target_rate": None, "sent": None, "planned": None,
             "errors": None, "service_p99_ms": None, "scheduled_p99_ms": 3, "lateness_p99_ms": None}
    stop = {"stage": bad, "into_stage_s": None, "offered_rate": None, "condition": bad, "window_s": None,
            "measures": bad, "measured": bad, "requests_in_window": None}
    row = {"endpoint": ALL, "requests": 5, "replayed_ms": {"p50": 1, "p95": 2, "p99": 3},
           "scheduled_ms": {"p50": None, "p95": 20, "p99": 30}}
    data = {"lateness": {"p50_ms": 1}, "totals": row, "endpoints": [dict(row, endpoint="GET /" + bad)],
            "capacity": {"stages": [stage], "stopped": stop}}
    page = render_html(data)
    assert "<script>alert" not in page and "&quot;'" not in page
    shown = "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;"
    stages = page.split('id="stages"')[1].split("</table>")[0]
    assert f"<td>{shown}</td>" in stages
    assert stages.count('<td data-v="">-</td>') == 7  # every missing figure of the stage (all but 2)
    stopped = page.split('class="stopped"')[1].split("</p>")[0]
    assert stopped.count(shown) == 4 and "offered" not in stopped  # stage, condition, measures, measured
    endpoints = page.split('id="endpoints"')[1].split("</table>")[0]
    assert f"GET /{shown}" in endpoints
    for empty in ({}, {"capacity": {}}, {"capacity": {"stages": [], "stopped": None}}, {"lateness": {}, "totals": {}},
                  {"lateness": {}, "totals": {"replayed_ms": {"p50": 1}}}):
        assert 'id="capacity"' not in render_html(empty)
