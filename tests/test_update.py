"""--replay-update end to end: a server with a deliberate change, the replay fails, --replay-update
writes NAME.updated.EXT, and the replay of the updated capture passes."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pytest_replay.capture import Capture

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "captures" / "demo" / "demo.pcap"


def _response(status: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            .encode() + data)


def _request(method: str, target: str, body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: shop\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


# what the capture recorded: prices at version 1
EXCHANGES = [
    ("GET", "/api/products/1", b"", 200, {"id": 1, "price": 10}),
    ("GET", "/api/products/2", b"", 200, {"id": 2, "price": 20}),
    ("GET", "/api/health", b"", 200, {"ok": True}),
    ("POST", "/api/orders", b'{"product": 1}', 201, {"order": 7}),
]


def write_capture(path: Path) -> Path:
    records = []
    for i, (method, target, body, status, answer) in enumerate(EXCHANGES):
        rid = f"{i + 1:016x}00000001"
        ts = T0 + i * 1_000_000_000
        records.append(f"1 {rid} {ts} -1\n".encode() + _request(method, target, body) + SEP)
        records.append(f"2 {rid} {ts + 2_000_000} -1\n".encode() + _response(status, answer) + SEP)
    path.write_bytes(b"".join(records))
    return path


class _Shop(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/api/health":
            answer = {"ok": True}
        else:
            pid = int(self.path.rsplit("/", 1)[1])
            answer = {"id": pid, "price": pid * 10 * self.server.factor}  # the deliberate change: factor 2
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        self.server.posts += 1
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def shop():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Shop)
    srv.daemon_threads = True
    srv.factor = 2
    srv.posts = 0
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def replay(pytester: pytest.Pytester, capture: Path, url: str, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--replay-target", url,
                                         "--speed", "0", "--replay-timeout", "5", *args, timeout=120)


def test_update_accepts_the_change_and_the_updated_capture_passes(pytester: pytest.Pytester, shop) -> None:
    url = f"http://127.0.0.1:{shop.server_address[1]}"
    capture = write_capture(pytester.path / "shop.gor")
    result = replay(pytester, capture, url)
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    assert not (pytester.path / "shop.updated.gor").exists()

    result = replay(pytester, capture, url, "--replay-update")
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    updated = pytester.path / "shop.updated.gor"
    assert updated.exists()
    result.stdout.fnmatch_lines(["replay update: 2 updated, 1 unchanged, 1 not replayed (1 of them writes not sent: "
                                 "mocked or skipped) -> *shop.updated.gor",
                                 "*responses produced * .. * (replay wall clock)"])
    assert capture.read_bytes() != updated.read_bytes()
    assert shop.posts == 0  # the write was mocked, not sent

    old = {e.request.target: e for e in Capture([str(capture)])}
    new = {e.request.target: e for e in Capture([str(updated)])}
    assert json.loads(new["/api/products/2"].response.body) == {"id": 2, "price": 40}
    assert new["/api/orders"].response.raw == old["/api/orders"].response.raw  # mocked write: kept
    for target, exchange in new.items():
        assert exchange.request.raw == old[target].request.raw
        assert exchange.request_ts_ns == old[target].request_ts_ns  # requests and their timing untouched
    shifted = new["/api/products/1"]
    assert shifted.recorded_latency_ns != old["/api/products/1"].recorded_latency_ns
    assert 0 < shifted.recorded_latency_ns < 5_000_000_000  # the replayed latency, not the wall clock

    result = replay(pytester, updated, url)
    result.assert_outcomes(passed=3, skipped=1)
    assert result.ret == 0


def test_update_to_a_file_and_a_pcap_stays_a_pcap(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import pytest
        from pytest_replay.demo import make_app

        @pytest.fixture(scope="session")
        def replay_target():
            return make_app(regression="bug")
    """)
    out = pytester.path / "accepted.pcap"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(DEMO), "--speed", "0", "-q",
                                           "--replay-update", "--replay-update-to", str(out), timeout=300)
    assert result.parseoutcomes()["failed"] == 5
    result.stdout.fnmatch_lines(["replay update: 5 updated, 254 unchanged, 0 not replayed -> *accepted.pcap",
                                 "*format: pcap*"])
    assert out.read_bytes()[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(out), "--speed", "0", "-q",
                                           timeout=300)
    result.assert_outcomes(passed=259)


def test_no_update_after_an_interrupted_replay_unless_partial(pytester: pytest.Pytester, shop) -> None:
    url = f"http://127.0.0.1:{shop.server_address[1]}"
    capture = write_capture(pytester.path / "shop.gor")
    result = replay(pytester, capture, url, "--replay-update", "-x")
    result.stdout.fnmatch_lines(["replay update: NOT written (the run stopped early*--replay-update-partial*"])
    assert not (pytester.path / "shop.updated.gor").exists()
    result = replay(pytester, capture, url, "--replay-update", "--replay-update-partial", "-x")
    result.stdout.fnmatch_lines(["replay update: partial (the run stopped early*",
                                 "replay update: 1 updated, 0 unchanged, 3 not replayed*"])
    assert (pytester.path / "shop.updated.gor").exists()


def test_workers_send_their_responses_to_the_controller(pytester: pytest.Pytester, shop) -> None:
    url = f"http://127.0.0.1:{shop.server_address[1]}"
    capture = write_capture(pytester.path / "shop.gor")
    result = replay(pytester, capture, url, "--replay-update", "-n", "2")
    result.stdout.fnmatch_lines(["replay update: 2 updated, 1 unchanged, 1 not replayed*"])
    result = replay(pytester, pytester.path / "shop.updated.gor", url, "-n", "2")
    result.assert_outcomes(passed=3, skipped=1)


def test_update_to_with_several_captures_is_a_usage_error(pytester: pytest.Pytester) -> None:
    a = write_capture(pytester.path / "a.gor")
    b = write_capture(pytester.path / "b.gor")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(a), "--replay", str(b),
                                           "--replay-target", "demo", "--replay-update", "--replay-update-to",
                                           "x.gor", timeout=60)
    result.stderr.fnmatch_lines(["*--replay-update-to FILE takes one capture*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize("path, expected", [
    ("/d/shop.gor", "/d/shop.updated.gor"), ("/d/x.gor.gz", "/d/x.updated.gor.gz"),
    ("demo.pcap", "demo.updated.pcap"), ("/d.v2/traffic.2024-05.pcapng", "/d.v2/traffic.2024-05.updated.pcapng"),
    ("/d/capture", "/d/capture.updated"),
])
def test_updated_path_names(path: str, expected: str) -> None:
    from pytest_replay.session.update import updated_path

    assert updated_path(path) == expected


def test_replayed_responses_cross_from_workers_and_keep_their_bytes() -> None:
    from pytest_replay.http.message import Response
    from pytest_replay.report.run import RunResults
    from pytest_replay.session.update import Replayed, Updates

    response = Response.build(404, "Not Found", ((b"Content-Length", b"2"),), b"no")
    updates = Updates()
    updates.by_index[3] = Replayed(3, response, 1_500_000, 1_700_000_000_000_000_000, False)
    updates.by_index[4] = Replayed(4, None, 900_000, 1_700_000_000_000_000_001, True)
    shipped, truncated = updates.to_dicts()
    results = RunResults(updates=shipped, updates_truncated=truncated)
    merged = RunResults().merge(RunResults.from_dict(results.to_dict()))
    back = Updates()
    back.merge_dicts(merged.updates, merged.updates_truncated)
    assert back.by_index[3].response.raw == response.raw and back.by_index[3].response.status == 404
    assert back.by_index[4].response is None and back.by_index[4].matched
    assert not back.truncated


def test_a_worker_sends_at_most_the_bound_and_says_so(monkeypatch) -> None:
    from pytest_replay.http.message import Response
    from pytest_replay.session import update
    from pytest_replay.session.update import Replayed, Updates

    monkeypatch.setattr(update, "MAX_SHIPPED_BYTES", 100)
    updates = Updates()
    for i in range(3):
        response = Response.build(200, "OK", (), b"x" * 40)
        updates.by_index[i] = Replayed(i, response, 1, 1, False)
    shipped, truncated = updates.to_dicts()
    assert len(shipped) == 1 and truncated


@pytest.mark.parametrize("fmt", ["gor", "pcapng"])
def test_updated_responses_are_framed_so_they_read_back(tmp_path: Path, fmt: str) -> None:
    """A chunked response received from the network keeps its framing; one from an in-process app
    (head + de-chunked body, or no length at all) gets a Content-Length: both read back whole."""
    from pytest_replay.capture.writer import write_pcap
    from pytest_replay.http.message import Response
    from pytest_replay.session.update import Replayed, framed, parse_response, write_updated

    source = write_capture(tmp_path / "shop.gor")
    if fmt == "pcapng":
        write_pcap(Capture([str(source)]), tmp_path / "shop.pcapng", ng=True)
        source = tmp_path / "shop.pcapng"
    exchanges = list(Capture([str(source)]))
    network = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200)
    app = framed(Response.build(200, "OK", ((b"Transfer-Encoding", b"chunked"),), b"world"), "GET")
    streamed = framed(Response.build(200, "OK", ((b"Content-Type", b"application/x-ndjson"),), b"{}\n{}\n"), "GET")
    updates = {}
    for exchange, response in zip(exchanges, (network, app, streamed)):
        replayed = Replayed(exchange.index, response, 3_000_000, 0, False)
        updates[exchange.index] = Replayed.from_dict(replayed.to_dict())  # as it crosses from a worker
    target = tmp_path / f"shop.updated.{fmt}"
    result = write_updated(str(source), exchanges, updates, str(target), mocked={exchanges[3].index})
    assert result.counts == {"updated": 3, "mocked": 1}
    back = list(Capture([str(target)]))
    assert [e.response.body for e in back[:3]] == [b"hello", b"world", b"{}\n{}\n"]
    assert all(e.complete for e in back)
    assert [e.recorded_latency_ns for e in back[:3]] == [3_000_000] * 3
    assert back[3].response.raw == exchanges[3].response.raw


def test_the_target_suffix_chooses_the_format() -> None:
    from pytest_replay.session.update import format_of

    assert format_of("x.gor") == ("gor", False) and format_of("x.gor.gz") == ("gor", True)
    assert format_of("out/x.PCAPNG") == ("pcapng", False) and format_of("x.pcap.gz") == ("pcap", True)
    assert format_of("x.bin") is None
