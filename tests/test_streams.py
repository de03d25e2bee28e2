"""Traffic that is read but not replayed (issue 14.5): a WebSocket handshake (its frames follow on a
connection skipped 'upgraded'), server-sent events, responses streamed over a long time (long-poll,
chunked streaming). Each is detected, counted and its item skipped with the reason; the exchanges
stay in the capture (convert and redact write them)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pytest_replay.capture import load
from pytest_replay.http.message import EVENT_STREAM, STREAMED, WEBSOCKET
from pytest_replay.reassembly.draft import Reorder
from pytest_replay.reassembly.flows import ACK, FIN, SYN, FlowTable
from pytest_replay.reassembly.stats import CaptureStats

CRAFTED = Path(__file__).resolve().parent.parent / "fixtures" / "captures" / "crafted"
WS = CRAFTED / "upgrade_ws_and_h2.pcapng"
SECOND = 10**9


def _connection(turns: list[tuple[bool, bytes, int]]):
    """One connection: (from_client, payload, ts in ns) turns fed to a FlowTable: its drafts."""
    reorder, stats = Reorder(), CaptureStats()
    table = FlowTable("mem", stats, reorder)
    cli, srv = (b"\x0a\x00\x00\x01", 40000), (b"\x0a\x00\x00\x02", 80)
    seq = {True: 1000, False: 5000}
    frame = 0

    def packet(from_client: bool, flags: int, payload: bytes, ts: int) -> None:
        nonlocal frame
        frame += 1
        src, dst = (cli, srv) if from_client else (srv, cli)
        table.packet(src[0], src[1], dst[0], dst[1], seq[from_client], seq[not from_client], flags, payload, 0,
                     ts, frame, frame * 100)
        seq[from_client] += len(payload) + bool(flags & (SYN | FIN))

    packet(True, SYN, b"", 0)
    packet(False, SYN | ACK, b"", 1)
    for from_client, payload, ts in turns:
        packet(from_client, ACK, payload, ts)
    last = turns[-1][2] + 1
    packet(True, FIN | ACK, b"", last)
    packet(False, FIN | ACK, b"", last + 1)
    table.finish()
    return reorder.drain(), stats


GET = b"GET /events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n"


def test_server_sent_events_are_flagged_not_replayed() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
    drafts, _ = _connection([(True, GET, 10), (False, head, 20), (False, b"b\r\ndata: one\n\n\r\n", 30),
                             (False, b"0\r\n\r\n", 40)])
    (draft,) = drafts
    assert [flag.code for flag in draft.flags] == [EVENT_STREAM] and draft.flags[0].part == "replay"
    assert draft.response.body == b"data: one\n\n"  # read whole all the same


def test_a_response_streamed_over_a_long_time_is_flagged_and_a_slow_answer_is_not() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    drafts, _ = _connection([(True, b"GET /poll HTTP/1.1\r\nHost: a\r\n\r\n", 0), (False, head + b"2\r\n{}\r\n", SECOND),
                             (False, b"0\r\n\r\n", 25 * SECOND)])
    assert [flag.code for flag in drafts[0].flags] == [STREAMED]
    assert "streamed over 24.0 s" in drafts[0].flags[0].detail
    # a long-poll answered late, in one piece, is an ordinary exchange (its latency is the recorded one)
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    drafts, _ = _connection([(True, b"GET /poll HTTP/1.1\r\nHost: a\r\n\r\n", 0), (False, whole, 30 * SECOND)])
    assert drafts[0].flags == ()


def test_websocket_handshake_is_flagged_and_counted() -> None:
    exchanges, stats = load(str(WS))
    assert [(e.request.target, e.not_replayed is not None) for e in exchanges] == [("/chat", True), ("/", False)]
    assert exchanges[0].flags[0].code == WEBSOCKET and exchanges[0].replayable  # whole: convert writes it
    assert stats.incomplete == {WEBSOCKET: 1} and stats.skipped_streams == {"upgraded": 1}


def test_replay_skips_the_websocket_handshake_with_its_reason(pytester: pytest.Pytester) -> None:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"hello over h2\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(WS), "--replay-target",
                                               f"http://127.0.0.1:{server.server_address[1]}", "--speed", "0", "-rs")
    finally:
        server.shutdown()
        server.server_close()
    result.assert_outcomes(passed=1, skipped=1)
    assert "not replayed: a WebSocket handshake" in result.stdout.str()
    assert seen == ["/"]
