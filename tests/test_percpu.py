"""The streamed path's per-exchange fast paths (issue 13.1, CPU per exchange) against their references.

- targets/raw.py `wire_bytes()`: the plain case cut from the head's bytes (`_plain_wire`) against the
  reference, which splits the head into lines and fields, on random request heads;
- verdicts/lookup.py `headers()`: several fields from one lowered head, against `Message.header()`;
- report/aggregate.py: a histogram of small values counted in one C call, and the lateness causes of an
  observation without waits taken without their dict, against the references (values, evidence JSON);
- end to end: a streamed `pytest --replay` of a pcap against nginx gives the same evidence with the fast
  paths as with the references.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_judgefast import WANTED, heads  # (the judge's lookups are tested on these heads)

from pytest_replay.http.message import Request
from pytest_replay.targets import raw

START = [b"GET / HTTP/1.1", b"POST /x?host:=1 HTTP/1.1", b"GET /hostile HTTP/1.0", b"", b"host: GET / HTTP/1.1"]
NAMES = [b"Host", b"host", b"HOST", b"Host ", b" Host", b"\x0bHost", b"Hostile", b"X-Host", b"Content-Length",
         b"content-length", b"Transfer-Encoding", b"User-Agent", b"Accept", b"X-Forwarded-Host", b"\rHost"]
VALUES = [b"shop.example", b"localhost:8080", b"", b"chunked", b"gzip, chunked", b"3", b"0", b"x\rhost: y",
          b"a\x0cb", b"wrk", b"*/*", b"  spaced  "]


@st.composite
def requests(draw) -> Request:
    """A captured request as the fast reader makes them: a head (any case, duplicates, folded lines,
    bare LF, odd names and separators, no empty line at its end) and a body after it."""
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    lines = [draw(st.sampled_from(START))]
    for _ in range(draw(st.integers(0, 6))):
        if lines[1:] and draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from([b" folded", b"\tmore"])))
            continue
        sep = draw(st.sampled_from([b": ", b":", b":\t", b" : "]))
        lines.append(draw(st.sampled_from(NAMES)) + sep + draw(st.sampled_from(VALUES)))
    head = eol.join(lines) + draw(st.sampled_from([eol + eol, eol + eol, eol, b"", b"\r\n\r\n"]))
    body = draw(st.sampled_from([b"", b"", b"abc", b"0\r\n\r\n"]))
    return Request("GET", "/", "1.1", head, body, head + body)


def reference_wire(request: Request, host) -> bytes:
    old, raw.FAST_WIRE = raw.FAST_WIRE, False
    try:
        return raw.wire_bytes(request, host)
    finally:
        raw.FAST_WIRE = old


@settings(max_examples=1500, deadline=None)
@given(request=requests(), host=st.sampled_from([None, "127.0.0.1:8080", "shop.example"]))
def test_plain_wire_bytes_are_the_references(request: Request, host) -> None:
    assert raw.FAST_WIRE
    assert raw.wire_bytes(request, host) == reference_wire(request, host)


def test_plain_wire_bytes_take_the_fast_path_for_the_plain_case_only() -> None:
    plain = b"GET /item.json HTTP/1.1\r\nHost: localhost:9\r\nUser-Agent: wrk\r\n\r\n"
    request = Request("GET", "/item.json", "1.1", plain, b"", plain)
    assert raw._plain_wire(request, "127.0.0.1:80") == \
        b"GET /item.json HTTP/1.1\r\nHost: 127.0.0.1:80\r\nUser-Agent: wrk\r\n\r\n"
    assert raw._plain_wire(request, None) == plain
    hostless = b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"
    assert raw._plain_wire(Request("GET", "/", "1.1", hostless, b"", hostless), "h:1") == \
        b"GET / HTTP/1.1\r\nHost: h:1\r\nAccept: */*\r\n\r\n"
    for head in (b"GET / HTTP/1.1\nHost: a\n\n", b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                 b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"):
        assert raw._plain_wire(Request("GET", "/", "1.1", head, b"", head), "h:1") is None, head
    assert raw._plain_wire(Request("GET", "/", "1.1", plain, b"x", plain + b"x"), "h:1") is None


# -- lookup.headers: several fields from one lowered head ---------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_headers_looked_up_together_are_the_references(data) -> None:
    from pytest_replay.http.message import Response
    from pytest_replay.verdicts import lookup
    head = data.draw(heads())
    names = tuple(data.draw(st.lists(st.sampled_from(WANTED), min_size=1, max_size=4)))
    fresh = lambda: Response(200, "OK", "1.1", head, b"", head)  # noqa: E731 - its headers not parsed yet
    assert lookup.headers(fresh(), names) == tuple(fresh().header(name.decode()) for name in names)
    parsed = fresh()
    parsed.headers  # noqa: B018 - parsed first: the pairs are walked
    assert lookup.headers(parsed, names) == tuple(parsed.header(name.decode()) for name in names)


# -- the report's histograms and lateness causes ----------------------------------------------------------
def test_a_value_in_hdrs_first_bucket_is_its_own_index() -> None:
    from pytest_replay.report import aggregate
    assert aggregate._FIRST_BUCKET_TOP == 2047
    assert [aggregate._index(v) for v in range(aggregate._FIRST_BUCKET_TOP + 1)] == \
        list(range(aggregate._FIRST_BUCKET_TOP + 1))


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.integers(-50, 2100), max_size=300), pending=st.sampled_from([1, 7, 4096]))
def test_small_values_counted_in_bulk_are_the_immediate_ones(values, pending) -> None:
    from pytest_replay.report import aggregate
    old, aggregate.PENDING = aggregate.PENDING, pending
    try:
        deferred, immediate = aggregate.Histogram(), aggregate.Histogram()
        for us in values:
            deferred.record(us)
            immediate.record_now(us)
    finally:
        aggregate.PENDING = old
    assert deferred == immediate and deferred.to_dict() == immediate.to_dict()


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 200))
def test_lateness_causes_split_without_their_dict_are_the_references(seed: int, n: int) -> None:
    """Aggregate.add's split of lateness by cause against Observation.lateness_causes (FAST_CAUSES=False):
    the evidence's JSON text equal, over early, on-time and late requests, each kind of wait (and none,
    negative and larger than the lateness), baselines' observations without waits."""
    from types import SimpleNamespace

    from pytest_replay.http.message import Exchange, Response, Source
    from pytest_replay.report import aggregate
    from pytest_replay.schedule.target import Observation

    rng = random.Random(seed)
    waits = [0, 0, 0, 1, 400, 499, 500, 10**6, 3 * 10**9, -1000]
    rows = []
    for i in range(n):
        request = Request.build("GET", f"/item/{i % 3}", ((b"Host", b"h"),))
        e = Exchange(i, request, Response.build(200, "", (), b""), 10**18 + i, 10**18 + i + 5000, "c", i,
                     Source("f", 0, i, ()))
        deadline = i * 10**6
        sent = deadline + rng.choice([-10**5, 0, 1, 499, 500, 10**6, 2 * 10**9, rng.randint(-10**6, 10**9)])
        if rng.random() < 0.1:  # a baseline's observation: no waits, no causes
            o = SimpleNamespace(deadline_ns=deadline, sent_ns=sent, response=None, error_kind=None,
                                latency_ns=None)
        else:
            o = Observation(i, deadline, sent, sent + 1000, sent + 2000, Response.build(200, "", (), b""),
                            lane_wait_ns=rng.choice(waits), barrier_wait_ns=rng.choice(waits[:4] + [0] * 6),
                            slot_wait_ns=rng.choice(waits[:4] + [0] * 6))
        rows.append((e, o))
    out = []
    for fast in (True, False):
        old, aggregate.FAST_CAUSES = aggregate.FAST_CAUSES, fast
        try:
            agg = aggregate.Aggregate()
            for e, o in rows:
                agg.add(e, o, None)
            out.append(json.dumps(agg.to_dict()))
        finally:
            aggregate.FAST_CAUSES = old
    assert out[0] == out[1]
    assert '"late_causes"' in out[0]


# -- end to end: a streamed run against nginx, fast paths and references --------------------------------------
ITEM = b'{"id": 7, "name": "shoe", "tags": ["a", "b"], "price": 12.5}'
SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
REFERENCES = """
import pytest_replay.report.aggregate as aggregate
import pytest_replay.targets.raw as raw
aggregate.FAST_CAUSES = False
raw.FAST_WIRE = False
"""
HEADS = [  # plain (the fast paths), and heads the references decide
    b"GET /item.json HTTP/1.1\r\nHost: 127.0.0.1:40123\r\n\r\n",
    b"GET /item.json HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n",
    b"GET /item.json HTTP/1.1\r\nUser-Agent: no-host\r\n\r\n",
    b"GET /item.json HTTP/1.1\r\nHost: shop.example\r\nX-Note: a\r\n folded\r\n\r\n",
    b"GET /item.json HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 0\r\n\r\n",
    b"GET /other.json HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: https\r\n\r\n",
]


@pytest.fixture
def nginx(tmp_path):
    """nginx serving /item.json and /other.json (another body), logging what each request it received
    said: request line, Host, Content-Length, X-Note."""
    import getpass
    import os

    from support import free_port, require, serving
    require("nginx")
    www = tmp_path / "www"
    www.mkdir()
    (www / "item.json").write_bytes(ITEM)
    (www / "other.json").write_bytes(ITEM.replace(b"12.5", b"13.5"))
    for name in ("item.json", "other.json"):
        os.utime(www / name, (1_700_000_000, 1_700_000_000))
    (tmp_path / "logs").mkdir()
    port = free_port()
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; master_process off; user {getpass.getuser()}; pid {tmp_path}/nginx.pid; "
        f"error_log {tmp_path}/logs/error.log;\nevents {{ worker_connections 64; }}\n"
        "http { types { application/json json; } log_format seen '$request|$http_host|$http_content_length|"
        f"$http_x_note'; access_log {tmp_path}/logs/access.log seen; keepalive_requests 100000; "
        f"server {{ listen 127.0.0.1:{port}; root {www}; }} }}\n")
    with serving(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], port, "nginx"):
        yield port, tmp_path / "logs" / "access.log"


def nginx_capture(path, port: int, n: int, connections: int):
    """n of HEADS in turn on `connections` connections, each recorded with what nginx answers for
    /item.json (the replay's answers differ in their Date; /other.json's in their body too)."""
    answer = nginx_answer(port)
    assert b"ETag:" in answer and b"Last-Modified:" in answer
    records = []
    for i in range(n):
        rid = f"{i % connections + 1:016x}{i:08x}"
        records.append(f"1 {rid} {T0 + i * 1000} -1\n".encode() + HEADS[i % len(HEADS)])
        records.append(f"2 {rid} {T0 + i * 1000 + 500} -1\n".encode() + answer)
    path.write_bytes(b"".join(r + SEP for r in records))
    return path


def nginx_answer(port: int) -> bytes:
    """What nginx answers for /item.json (recorded as the capture's response: the replay differs in Date)."""
    import socket
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /item.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_streamed_run_against_nginx_is_the_same_with_the_fast_paths_as_with_the_references(
        pytester: pytest.Pytester, nginx) -> None:
    port, log = nginx
    gor = nginx_capture(pytester.path / "nginx.gor", port, 400, 4)
    results = {}
    for name in ("fast", "reference"):
        work = pytester.mkdir(name)
        if name == "reference":
            (work / "conftest.py").write_text(REFERENCES)
        log.write_text("")
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-q", "--speed", "0", "--replay", str(gor), "--replay-target",
            f"http://127.0.0.1:{port}", "--replay-group", "connection", "--replay-report", str(work / "report"),
            f"--rootdir={work}", str(work), timeout=300)
        evidence = json.loads((work / "report" / "replay-evidence.json").read_text())
        totals = evidence["totals"]
        results[name] = (result.parseoutcomes(), sorted(log.read_text().splitlines()), evidence["diff"],
                         evidence["errors"]["requests"], sorted(totals.get("lateness_causes") or {}),
                         [(row["endpoint"], row.get("requests")) for row in evidence["endpoints"]])
    assert results["fast"] == results["reference"]
    outcomes, seen, diff, requests, causes, _ = results["fast"]
    assert requests == 400 and diff["failed"] and len(seen) == 400
    assert "GET /item.json HTTP/1.1|127.0.0.1:%d|-|-" % port in seen  # the Host set by the fast path
    assert {f"GET /item.json HTTP/1.1|127.0.0.1:{port}|{length}|{note}" for length, note in
            (("-", "a"), ("0", "-"))} <= set(seen)  # (the references': a folded field, a Content-Length)


def test_a_streamed_run_sends_its_rewrites(pytester: pytest.Pytester, nginx) -> None:
    """The reader plans each request once with the run's rewrites (asked once per run, not per request)."""
    port, log = nginx
    gor = nginx_capture(pytester.path / "nginx.gor", port, 60, 2)
    log.write_text("")  # (nginx_capture's own request)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-q", "--speed", "0", "--replay", str(gor), "--replay-target",
        f"http://127.0.0.1:{port}", "--replay-group", "connection", "--replay-set-header", "X-Note: set",
        "--replay-rewrite-url", "^/other.json:/item.json", "--replay-report", "report", timeout=300)
    result.assert_outcomes(passed=2)  # /other.json's requests went to /item.json: the recorded body again
    seen = log.read_text().splitlines()
    assert len(seen) == 60 and all(line.startswith("GET /item.json ") and line.endswith("|set") for line in seen), seen


def test_plain_wire_bytes_are_remembered_per_head_within_a_bound(monkeypatch) -> None:
    monkeypatch.setattr(raw, "_PLAIN", {})
    monkeypatch.setattr(raw, "PLAIN_MEMO", 50)
    for i in range(400):
        head = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % (i % 120)
        request = Request("GET", "/", "1.1", head, b"", head)
        assert raw.wire_bytes(request, "h:%d" % (i % 3)) == reference_wire(request, "h:%d" % (i % 3))
        assert len(raw._PLAIN) <= 50
    long_head = b"GET / HTTP/1.1\r\nX: " + b"x" * raw.PLAIN_MEMO_HEAD + b"\r\n\r\n"
    before = dict(raw._PLAIN)
    raw.wire_bytes(Request("GET", "/", "1.1", long_head, b"", long_head), "h")
    assert raw._PLAIN == before  # (a long head is not remembered)
