"""The judge's fast paths (issue 13.1) against their references.

- verdicts/lookup.py `header()` against `Message.header()` on random heads;
- compare()'s fast path for a response the same as the recording against the full path (`fast=False`):
  the same Verdict (passed, differences, ignored counts, summary) and the same failure text, on random
  statuses, header lists, bodies, encodings, rules, learned noise, latency caps and flags;
- the origin resolver's memo against `OriginResolver.resolve`;
- the report's deferred histogram updates against recording each value at once;
- end to end: a streamed `pytest --replay` against a real server gives the same outcomes, failure
  texts and evidence counts with the fast paths as with the references.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import free_port, keep_alive_server, serving

from pytest_replay.http.message import Exchange, Flag, Request, Response, Source
from pytest_replay.http.parser import fast_message
from pytest_replay.policy.redact import Redactor
from pytest_replay.verdicts import diff, lookup
from pytest_replay.verdicts.diff import DiffConfig, compare, learn_noise
from pytest_replay.verdicts.judge import judge
from pytest_replay.verdicts.origin import OriginResolver, Origins

NAMES = [b"Content-Encoding", b"content-encoding", b"CONTENT-ENCODING", b"Content-Encoding ", b"Content-Type",
         b"Host", b"X-Forwarded-Proto", b"Forwarded", b"X-Content-Encoding", b"Content-Encodings", b"Vary",
         b"Date", b"Server", b"host", b" Host", b"Content-Length"]
VALUES = [b"gzip", b"br", b"identity", b"gzip, br", b"application/json", b"text/plain; charset=latin-1",
          b"shop.example", b"https", b"proto=https;for=1.2.3.4", b"Content-Encoding", b"", b"  spaced  ",
          b"x\rcontent-encoding: y"]
WANTED = [b"content-encoding", b"content-type", b"host", b"x-forwarded-proto", b"forwarded"]


@st.composite
def heads(draw) -> bytes:
    """A message head as a capture may hold it: any case, duplicates, folded lines, bare LF, odd names;
    and heads a capture's framer never makes but a lookup must still answer as the reference does: no
    empty line at the end, no line ending at all after the last field, an empty start line."""
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    start = draw(st.sampled_from([b"HTTP/1.1 200 OK", b"GET / HTTP/1.1", b"GET /content-encoding: HTTP/1.1", b""]))
    lines = [start]
    for _ in range(draw(st.integers(0, 8))):
        if lines[1:] and draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from([b" folded", b"\tmore"])))
            continue
        sep = draw(st.sampled_from([b": ", b":", b":\t", b" : "]))
        lines.append(draw(st.sampled_from(NAMES)) + sep + draw(st.sampled_from(VALUES)))
    return eol.join(lines) + draw(st.sampled_from([eol + eol, eol + eol, eol, b""]))


@settings(max_examples=400, deadline=None)
@given(head=heads(), name=st.sampled_from(WANTED))
def test_a_header_looked_up_in_the_head_is_the_reference(head: bytes, name: bytes) -> None:
    fresh = lambda: Response(200, "OK", "1.1", head, b"", head)  # noqa: E731 - its headers not parsed yet
    assert lookup.header(fresh(), name) == fresh().header(name.decode())
    parsed = fresh()
    parsed.headers  # noqa: B018 - parsed first: the pairs are walked
    assert lookup.header(parsed, name) == parsed.header(name.decode())


def test_the_lookup_answers_plain_heads_without_splitting_them() -> None:
    response = fast_message(b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 2\r\n\r\n{}", False, "GET")
    assert lookup.header(response, b"content-type") == b"application/json"
    assert lookup.header(response, b"content-encoding") is None
    assert response._headers is None  # nothing split


# -- compare(): fast path against the full path -------------------------------------------------------------
BODIES = [b"", b'{"a": 1}', b'{"a": 2}', b'{"a": 1, "id": "x"}', b"plain text\n", b"\x00\x01binary",
          gzip.compress(b'{"a": 1}', mtime=0), gzip.compress(b'{"a": 2}', mtime=0), b"not gzip at all"]
# the recorded and replayed origins treated as one (verdicts/origin.py): the full path rewrites bodies and
# headers with them, and counts each rewrite as ignored; bodies that name them, alike or differing by origin
ORIGINS = [None, Origins(("http://shop.example",), ("http://127.0.0.1:9",))]
ORIGIN_BODIES = [(b'{"next": "http://shop.example/p/2"}', b'{"next": "http://127.0.0.1:9/p/2"}'),
                 (b'{"next": "http://127.0.0.1:9/p/2"}', b'{"next": "http://127.0.0.1:9/p/2"}'),
                 (b"see http://shop.example/", b"see http://127.0.0.1:9/")]
HEADER_SETS = [
    [(b"Content-Type", b"application/json")],
    [(b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")],
    [(b"Content-Type", b"text/plain")],
    [(b"Content-Type", b"application/json"), (b"Content-Encoding", b"br")],
    [(b"content-encoding", b"GZIP"), (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT")],
    [(b"Content-Type", b"application/json"), (b"X-Request-Id", b"abc"), (b"Date", b"Tue, 02 Jan 2024 00:00:00 GMT")],
    [(b"Content-Type", b"application/json"), (b"Set-Cookie", b"s=1; Max-Age=3")],
    [],
]
CONFIGS = [
    DiffConfig(),
    DiffConfig(parts=("status", "headers", "body"), headers=("*",)),
    DiffConfig(parts=("status", "headers", "body"), headers=("x-request-id",)),
    DiffConfig(rules=("json:$.a",)),
    DiffConfig(rules=("regex:text",)),
    DiffConfig(parts=("body",)),
    DiffConfig(parts=("status",)),
    DiffConfig(max_latency_ns=1_000_000),
]


def _noise_config() -> DiffConfig:
    request = Request.build("GET", "/n", ((b"Host", b"shop.example"),))
    recorded = [Exchange(i, request, Response.build(200, "OK", ((b"Content-Type", b"application/json"),),
                                                    json.dumps({"a": i, "b": 1}).encode()), i, i + 1, "c", i,
                         Source("f", 0, i, ())) for i in range(3)]
    return DiffConfig(noise=learn_noise(recorded))


CONFIGS.append(_noise_config())


def _message(status: int, headers: list, body: bytes, parsed_form: bool) -> Response:
    built = Response.build(status, "OK", tuple(headers), body)
    if parsed_form:  # as read from a capture: header pairs not given, split from the head on demand
        return Response(built.status, built.reason, built.version, built.head, built.body, built.raw)
    return built


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statuses=st.tuples(st.sampled_from([200, 404, 500]), st.sampled_from([200, 404, 500])),
       headers=st.tuples(st.sampled_from(HEADER_SETS), st.sampled_from(HEADER_SETS)),
       bodies=st.one_of(st.tuples(st.sampled_from(BODIES), st.sampled_from(BODIES)), st.sampled_from(ORIGIN_BODIES)),
       same_body=st.booleans(),
       config=st.sampled_from(CONFIGS), latency_ns=st.sampled_from([None, 10, 5_000_000]),
       flagged=st.booleans(), parsed_form=st.booleans(), path=st.sampled_from(["/n", "/other?x=1"]),
       origins=st.sampled_from(ORIGINS))
def test_the_fast_path_gives_the_full_paths_verdict_and_text(statuses, headers, bodies, same_body, config,
                                                             latency_ns, flagged, parsed_form, path, origins) -> None:
    body_a, body_b = bodies[0], bodies[0] if same_body else bodies[1]
    flags = (Flag("cut", "response", "by a gap"),) if flagged else ()
    request = Request.build("GET", path, ((b"Host", b"shop.example"),))

    def exchange():  # fresh messages for each path (nothing cached by the other)
        recorded = _message(statuses[0], headers[0], body_a, parsed_form)
        return Exchange(1, request, recorded, 1, 2, "c", 0, Source("f", 0, 0, ()), flags)

    def replayed():
        return _message(statuses[1], headers[1], body_b, parsed_form)

    verdicts = {}
    for fast in (True, False):
        e = exchange()
        verdicts[fast] = compare(e.response, replayed(), config, exchange=e, latency_ns=latency_ns,
                                 recorded_latency_ns=1, origins=origins, fast=fast)
    assert verdicts[True] == verdicts[False]
    texts = []
    for fast in (True, False):
        old, diff.FAST_PATH = diff.FAST_PATH, fast
        try:
            texts.append(judge(exchange(), replayed(), config, Redactor(key="k"), error=None, latency_ns=latency_ns,
                               origins=origins))
        finally:
            diff.FAST_PATH = old
    assert texts[0] == texts[1]


def test_the_fast_path_is_taken_for_the_plain_case_only() -> None:
    headers = ((b"Content-Type", b"application/json"),)
    request = Request.build("GET", "/n", ((b"Host", b"shop.example"),))
    recorded = Response.build(200, "OK", headers + ((b"Date", b"a"),), b'{"a": 1}')
    e = Exchange(1, request, recorded, 1, 2, "c", 0, Source("f", 0, 0, ()))
    same = Response.build(200, "OK", headers + ((b"Date", b"b"),), b'{"a": 1}')
    assert compare(recorded, same, DiffConfig(), exchange=e) is diff.SAME  # taken
    assert compare(recorded, same, DiffConfig(), exchange=e, fast=False) is not diff.SAME  # the reference
    gzipped = Response.build(200, "OK", headers + ((b"Content-Encoding", b"gzip"),), b'{"a": 1}')
    assert compare(recorded, gzipped, DiffConfig(), exchange=e) is not diff.SAME  # another coding: full path
    assert compare(recorded, same, DiffConfig(parts=("status", "headers", "body"), headers=("*",)),
                   exchange=e) is not diff.SAME


# -- origins ------------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(hosts=st.lists(st.tuples(st.sampled_from([None, b"shop.example", b"Shop.Example:8080", b"127.0.0.1:9"]),
                                st.sampled_from([None, b"https", b"http"]),
                                st.sampled_from([None, b"proto=https", b"for=1.2.3.4"]),
                                st.sampled_from(["10.0.0.1:5 -> 10.0.0.2:80", "10.0.0.1:6 -> 10.0.0.3:8080", "c"])),
                      min_size=1, max_size=12),
       keep_host=st.booleans())
def test_memoised_origins_are_the_references(hosts, keep_host) -> None:
    resolver = OriginResolver(lambda r: r.host if keep_host else "127.0.0.1:8080", "http://127.0.0.1:8080")
    reference = OriginResolver(lambda r: r.host if keep_host else "127.0.0.1:8080", "http://127.0.0.1:8080")
    for host, proto, forwarded, connection in hosts:
        headers = tuple((name, value) for name, value in ((b"Host", host), (b"X-Forwarded-Proto", proto),
                                                            (b"Forwarded", forwarded)) if value is not None)
        built = Request.build("GET", "/", headers)
        request = Request(built.method, built.target, built.version, built.head, b"", built.raw)  # as captured
        e = Exchange(0, request, None, 1, None, connection, 0, Source("f", 0, 0, ()))
        assert resolver(e) == reference.resolve(e)


def test_origins_remembered_per_head_stay_few_whatever_the_capture() -> None:
    """A capture of distinct targets (an id in every path) repeats no head: the memo of whole heads stays
    within MEMO_HEADS, and every answer is still the reference's."""
    from pytest_replay.verdicts import origin

    resolver = OriginResolver(lambda r: "127.0.0.1:8080", "http://127.0.0.1:8080")
    for i in range(3 * origin.MEMO_HEADS):
        head = b"GET /item/%d HTTP/1.1\r\nHost: shop.example\r\n\r\n" % i
        e = Exchange(i, Request("GET", "/item/%d" % i, "1.1", head, b"", head), None, 1, None, "c", 0,
                     Source("f", 0, 0, ()))
        assert resolver(e) == resolver.resolve(e)
        assert len(resolver._heads) <= origin.MEMO_HEADS
    assert len(resolver._cache) == 1  # (one host: one key of headers)


# -- end to end ---------------------------------------------------------------------------------------------
SERVER = keep_alive_server("""
BODY = b'{"ok": true, "n": 1}'
OTHER = b'{"ok": false, "n": 1}'

def answer(head):
    body = OTHER if b"/bad" in head.split(b"\\r\\n", 1)[0] else BODY
    return (b"HTTP/1.1 200 OK\\r\\nServer: t\\r\\nDate: Sun, 06 Dec 2026 15:00:00 GMT\\r\\n"
            b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
""")
SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
REFERENCE_PATHS = """
import pytest_replay.verdicts.diff as diff
diff.FAST_PATH = False
"""


@pytest.fixture(scope="module")
def server() -> str:
    port = free_port()
    with serving([sys.executable, "-c", SERVER, str(port)], port, "keep-alive server") as url:
        yield url


def capture(path: Path, n: int) -> Path:
    """n GETs on 4 connections; recorded answers the server gives again (another Date), some it does not."""
    rng = random.Random(7)
    records = []
    for i in range(n):
        rid = f"{i % 4 + 1:016x}{i:08x}"
        target = f"/bad/{i}" if i % 9 == 4 else f"/item/{i}"
        records.append(f"1 {rid} {T0 + i * 1000} -1\n".encode()
                       + f"GET {target} HTTP/1.1\r\nHost: shop.example\r\n\r\n".encode())
        body = b'{"ok": true, "n": 1}' if rng.random() < 0.9 else b'{"ok": true, "n": 2}'
        answer = (b"HTTP/1.1 200 OK\r\nServer: t\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        records.append(f"2 {rid} {T0 + i * 1000 + 500} -1\n".encode() + answer)
    path.write_bytes(b"".join(r + SEP for r in records))
    return path


@pytest.mark.parametrize("group", ["connection", "exchange"])
def test_a_streamed_run_judges_the_same_with_the_fast_paths_as_with_the_references(
        pytester: pytest.Pytester, server: str, group: str) -> None:
    gor = capture(pytester.path / "mixed.gor", 300)
    results = {}
    for name in ("fast", "reference"):
        work = pytester.mkdir(name)
        if name == "reference":
            (work / "conftest.py").write_text(REFERENCE_PATHS)
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-q", "--speed", "0", "--replay", str(gor), "--replay-target", server,
            "--replay-group", group, "-rf", "--replay-report", str(work / "report"), f"--rootdir={work}",
            str(work), timeout=300)
        evidence = json.loads((work / "report" / "replay-evidence.json").read_text())
        text = re.sub(r"\d+\.\d+ ms", "", result.stdout.str().split("= traffic replay =")[0])
        failures = sorted(block.split("\n====")[0] for block in text.split("____") if "body $." in block)
        results[name] = (result.parseoutcomes(), failures, evidence["diff"], evidence["errors"]["requests"])
    assert results["fast"] == results["reference"]
    outcomes, failures, counted, requests = results["fast"]
    assert requests == 300 and counted["failed"] > 30 and failures  # both kinds of exchange were judged


# -- the report's histograms: deferred updates against recording at once --------------------------------------
@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.integers(-5_000, 5_000_000_000), max_size=300), pending=st.sampled_from([1, 3, 64, 4096]),
       reads=st.lists(st.integers(0, 300), max_size=4))
def test_deferred_histogram_updates_are_the_immediate_ones(values, pending, reads) -> None:
    from pytest_replay.report import aggregate
    old, aggregate.PENDING = aggregate.PENDING, pending
    try:
        deferred, immediate = aggregate.Histogram(), aggregate.Histogram()
        for i, us in enumerate(values):
            deferred.record(us)
            immediate.record_now(us)
            if i in reads:  # a read in the middle folds what is pending
                assert deferred.percentiles((50, 99, 100)) == immediate.percentiles((50, 99, 100))
    finally:
        aggregate.PENDING = old
    assert deferred == immediate and deferred.to_dict() == immediate.to_dict()
    assert (deferred.total, deferred.sum, deferred.min, deferred.max) == \
        (immediate.total, immediate.sum, immediate.min, immediate.max)


def test_a_streamed_runs_aggregate_is_the_one_recorded_value_by_value(monkeypatch) -> None:
    """Aggregate.add with deferred histograms against the same exchanges recorded at once (the evidence's
    percentiles and counts unchanged), failures, errors and ignored counts included."""
    from pytest_replay.report import aggregate
    from pytest_replay.schedule.target import Observation
    from pytest_replay.verdicts.diff import Difference, Verdict

    rng = random.Random(3)
    rows = []
    for i in range(3000):
        request = Request.build("GET", f"/item/{i % 7}?q={i}", ((b"Host", b"h"),))
        recorded = Response.build(rng.choice([200, 404, 500]), "", (), b"")
        e = Exchange(i, request, recorded if i % 11 else None, 10**18 + i * 10**6, 10**18 + i * 10**6 + rng.randint(1, 10**7),
                     "c", i, Source("f", 0, i, ()))
        kind = rng.choice([None] * 8 + ["reset", "timeout"])
        deadline = i * 10**6
        o = Observation(i, deadline, deadline + rng.randint(-10**5, 10**8), deadline + 10**6, deadline + 2 * 10**6,
                        None if kind else Response.build(rng.choice([200, 503]), "", (), b""), kind,
                        "boom" if kind else None, lane_wait_ns=rng.choice([0, 10**6]), spilled=rng.random() < 0.1)
        passed = rng.random() < 0.8
        verdict = Verdict(passed, () if passed else (Difference("body", "$.a", "1", "2"),),
                          (("volatile header date", 1),) if rng.random() < 0.5 else (), "s")
        rows.append((e, o, verdict if rng.random() < 0.9 else None))
    deferred = aggregate.Aggregate()
    for row in rows:
        deferred.add(*row)
    monkeypatch.setattr(aggregate.Histogram, "record", aggregate.Histogram.record_now)
    immediate = aggregate.Aggregate()
    for row in rows:
        immediate.add(*row)
    assert deferred.to_dict() == immediate.to_dict()
    assert deferred.table() == immediate.table()
