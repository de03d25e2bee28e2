"""Requests that are not valid HTTP/1.x but were answered by the server (issue 14.5): exchanges
flagged malformed-request, whose bytes are replayed exactly as captured when the write policy lets
them go; the recorded nginx capture (fixtures/captures/recorded/record_malformed.py) read against its
ground truth, inspect --json, what stays "not HTTP", and the replay end to end against nginx."""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pytest_replay.capture import load
from pytest_replay.http.message import MALFORMED
from pytest_replay.targets.raw import wire_bytes

from support import feed_turns, free_port, require

RECORDED = Path(__file__).resolve().parent.parent / "fixtures" / "captures" / "recorded"
CAPTURE = RECORDED / "malformed_nginx.pcap"
TRUTH = json.loads((RECORDED / "malformed_nginx.pcap.expect.json").read_text())
INDEX = b"<html><body>malformed-request fixture</body></html>\n"  # what record_malformed.py served


def test_recorded_malformed_requests_are_exchanges_with_their_bytes() -> None:
    exchanges, stats = load(str(CAPTURE))
    got = [(e.request.method, e.request.target, e.response.status, e.request.raw, [f.code for f in e.flags])
           for e in exchanges]
    want = [(x["method"], x["target"], x["status"], x["raw"].encode("latin-1"), x["reasons"])
            for x in TRUTH["exchanges"]]
    assert got == want
    assert [len(e.response.body) for e in exchanges] == [x["response_body"] for x in TRUTH["exchanges"]]
    assert all(e.replayable for e in exchanges)  # the flag is not a missing part: they can be sent
    assert stats.skipped_streams == {} and sum(stats.orphan_responses.values()) == 0
    assert stats.incomplete == {MALFORMED: 4}
    malformed = [e for e in exchanges if e.flags]
    assert all(wire_bytes(e.request, "127.0.0.1:1") == e.request.raw for e in malformed)  # sent as captured
    assert wire_bytes(exchanges[0].request, "127.0.0.1:1").startswith(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:1")


def test_inspect_json_shows_the_first_token_as_sent(capsys) -> None:
    from pytest_replay.cli import main

    assert main(["inspect", "--json", str(CAPTURE)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows = lines[:-1]
    assert [row["method"] for row in rows] == ["GET", "G@T", "\x00\x01\x02garbage", "GET", "GET"]
    assert [row["protocol"] for row in rows] == ["http/1"] + ["malformed"] * 4
    assert all(any(r.startswith("malformed-request") for r in row["reasons"]) for row in rows[1:])


# -- built packet by packet: what stays "not HTTP" ----------------------------------------------
def _connection(client_turns: list[bytes], server_turns: list[bytes]):
    """One connection's turns fed to a FlowTable, then closed: (exchanges, stats)."""
    return feed_turns(client_turns, server_turns, close=True)


def test_garbage_the_server_does_not_answer_in_http_stays_not_http() -> None:
    drafts, stats = _connection([b"\x00\x01\x02binary protocol hello\r\n"], [b"\x05\x06 binary answer"])
    assert drafts == [] and stats.skipped_streams == {"not-http": 1} and stats.protocols == {}
    drafts, stats = _connection([b"*1\r\n$4\r\nPING\r\n"], [])  # nothing answered
    assert drafts == [] and stats.skipped_streams == {"not-http": 1} and stats.protocols == {}


def test_garbage_answered_in_http_is_one_exchange_even_in_pieces() -> None:
    drafts, stats = _connection([b"\x16garbage line one\r\n", b"more garbage\r\n\r\n"],
                                [b"", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"])
    (draft,) = drafts
    assert draft.request.raw == b"\x16garbage line one\r\nmore garbage\r\n\r\n"
    assert draft.request.method == "\x16garbage" and draft.response.status == 400 and draft.done
    assert stats.skipped_streams == {}


def test_unanswered_malformed_request_on_an_http_connection_is_kept_flagged() -> None:
    """A garbled request line after a valid exchange and no answer (the service crashed): the
    incident reproduction needs exactly this request."""
    valid = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    drafts, _ = _connection([valid, b"G@T /x HTTP/1.1\r\nHost: a\r\n\r\n"],
                            [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert [d.request.method for d in drafts] == ["GET", "G@T"]
    assert {flag.code for flag in drafts[1].flags} == {MALFORMED, "no-response"}
    assert drafts[1].request.raw == b"G@T /x HTTP/1.1\r\nHost: a\r\n\r\n"


def test_a_valid_request_after_a_malformed_one_is_its_own_exchange() -> None:
    drafts, _ = _connection([b"G@T /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n"],
                            [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert [(d.request.method, d.request.target, d.response.status) for d in drafts] == [("G@T", "/x", 400),
                                                                                         ("GET", "/y", 200)]
    assert drafts[0].request.raw == b"G@T /x HTTP/1.1\r\nHost: a\r\n\r\n"


# -- end to end against nginx --------------------------------------------------------------------
@pytest.fixture
def nginx(tmp_path: Path):
    """nginx serving what the fixture was recorded against, logging each request line it received."""
    require("nginx")
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_bytes(INDEX)
    (tmp_path / "logs").mkdir()
    port = free_port()
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; user {getpass.getuser()}; pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log;\n"
        "events { worker_connections 64; }\n"
        "http { log_format lines '$status $request'; "
        f"access_log {tmp_path}/logs/access.log lines; server {{ listen 127.0.0.1:{port}; root {html}; }} }}\n")
    server = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                              stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", tmp_path / "logs" / "access.log"
    finally:
        server.terminate()
        server.wait(10)


def test_malformed_requests_replay_as_captured_when_writes_are_allowed(pytester: pytest.Pytester, nginx) -> None:
    url, log = nginx
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(CAPTURE), "--replay-target",
                                           url, "--speed", "0", "--replay-writes", "pass", "-q", timeout=300)
    result.assert_outcomes(passed=5)
    lines = log.read_text().splitlines()
    assert len(lines) == 5
    assert "400 G@T /index.html HTTP/1.1" in lines  # the garbled request line reached nginx as captured
    assert "200 GET /index.html HTTP/1.1" in lines
    assert "400 GET /a b HTTP/1.1" in lines
    assert sum(line.startswith("400 ") for line in lines) == 4  # binary garbage and the broken header too


def test_malformed_requests_with_an_unknown_token_are_mocked_by_default(pytester: pytest.Pytester, nginx) -> None:
    url, log = nginx
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(CAPTURE), "--replay-target",
                                           url, "--speed", "0", "-rs", timeout=300)
    result.assert_outcomes(passed=3, skipped=2)  # G@T and the binary token: writes, answered from the recording
    lines = log.read_text().splitlines()
    assert not any("G@T" in line or "garbage" in line for line in lines)
    assert len(lines) == 3  # the valid GET and the two malformed requests whose first token is GET
    # allowed by name: only that one goes out
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(CAPTURE), "--replay-target",
                                           url, "--speed", "0", "--replay-allow-write", "* ^/index", timeout=300)
    result.assert_outcomes(passed=4, skipped=1)  # the binary one has no target: still mocked
    assert "\\x00\\x01\\x02garbage" in result.stdout.str() and "\x00" not in result.stdout.str()
    assert "400 G@T /index.html HTTP/1.1" in log.read_text().splitlines()


def test_in_process_targets_skip_malformed_requests_with_the_reason(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(CAPTURE), "--replay-target",
                                           "demo", "--speed", "0", "--replay-writes", "pass", "-rs", timeout=300)
    result.assert_outcomes(failed=1, skipped=4)  # the valid GET reaches the demo app (which has no /index.html)
    assert result.stdout.str().count("is sent as captured only to a network target") == 1  # -rs groups the 4
    assert "SKIPPED [4]" in result.stdout.str()


def test_malformed_requests_survive_a_gor_round_trip(tmp_path: Path) -> None:
    """convert writes them as .gor request records (their bytes); the .gor reader, which cannot parse
    them either, keeps them as malformed requests paired with their responses (not orphans)."""
    from pytest_replay.cli import main

    out = tmp_path / "malformed.gor"
    assert main(["convert", str(CAPTURE), str(out)]) == 0
    back, stats = load(str(out))
    assert [(e.request.method, e.request.raw, e.response.status, [f.code for f in e.flags]) for e in back] == [
        (x["method"], x["raw"].encode("latin-1"), x["status"], x["reasons"]) for x in TRUTH["exchanges"]]
    assert sum(stats.orphan_responses.values()) == 0
