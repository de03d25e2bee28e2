"""Writes that leave (issue 10, finding 1), end to end: a real server on 127.0.0.1 logs every request
it receives, and pytester replays captures holding every kind of write the audit found leaving.

Deny by default: only GET, HEAD and OPTIONS are reads. Every other method, known or not, is a write,
and so is a read whose method override (three header names, the `_method` query parameter or form
field) names a write method. None of them may reach the server in any mode unless an allowlist
pattern names it; the write summary says what was sent.
"""

from __future__ import annotations

import socketserver
import threading
from pathlib import Path

import pytest

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
FORM = ("Content-Type", "application/x-www-form-urlencoded")

# (method, target, headers, body): each must stay on this side of the wire unless allowed.
WRITES = [
    ("PURGE", "/cache/a", (), b""),
    ("MKCOL", "/dav/b/", (), b""),
    ("MOVE", "/dav/c", (("Destination", "/dav/c2"),), b""),
    ("PROPPATCH", "/dav/d", (("Content-Type", "application/xml"),), b"<propertyupdate/>"),
    ("LOCK", "/dav/e", (("Content-Type", "application/xml"),), b"<lockinfo/>"),
    ("CONNECT", "internal.example:443", (), b""),
    ("TRACE", "/trace", (), b""),
    ("FOO", "/foo", (), b""),
    ("GET", "/api/items/1", (("X-HTTP-Method-Override", "DELETE"),), b""),
    ("GET", "/api/items/2", (("X-HTTP-Method", "DELETE"),), b""),
    ("GET", "/api/items/3", (("X-Method-Override", "DELETE"),), b""),
    ("GET", "/api/items/4?_method=DELETE", (), b""),
    ("POST", "/api/items/5", (FORM,), b"_method=DELETE"),
]
READS = [
    ("GET", "/api/items", (), b""),
    ("HEAD", "/api/items", (), b""),
    ("OPTIONS", "/api/items", (), b""),
]
GET_WITH_BODY = ("GET", "/api/search", (("Content-Type", "application/json"),), b'{"q": "shoes"}')


def request_bytes(method: str, target: str, headers, body: bytes) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: shop\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def write_capture(path: Path, requests) -> Path:
    """A .gor file: each request on its own connection (so -n 2 splits them), answered 200."""
    records = []
    for i, request in enumerate(requests):
        rid = f"{i + 1:016x}00000001"
        ts = T0 + i * 1_000_000
        records.append(f"1 {rid} {ts} -1\n".encode() + request_bytes(*request) + SEP)
        records.append(f"2 {rid} {ts + 500_000} -1\n".encode() + OK + SEP)
    path.write_bytes(b"".join(records))
    return path


class _Logging(socketserver.StreamRequestHandler):
    """HTTP/1.1 keep-alive, any method: logs each request line, reads the body, answers 200."""

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            if not line.strip():
                continue
            method, target = (line.decode("latin-1").split() + ["", ""])[:2]
            with self.server.lock:
                self.server.seen.append(f"{method} {target}")
            length = 0
            while True:
                header = self.rfile.readline(65536)
                if header in (b"", b"\r\n", b"\n"):
                    break
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                self.rfile.read(length)
            self.wfile.write(OK)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 128  # every lane connects at once: a short backlog costs a 1 s SYN retry
    allow_reuse_address = True


@pytest.fixture
def server():
    """A real server on 127.0.0.1 logging every request it receives: (url, list of 'METHOD target')."""
    srv = _Server(("127.0.0.1", 0), _Logging)
    srv.seen = []
    srv.lock = threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv.seen
    srv.shutdown()
    srv.server_close()


def replay(pytester: pytest.Pytester, capture: Path, url: str, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--replay-target",
                                         url, "--speed", "0", "--replay-timeout", "3", "-q", *args, timeout=120)


def label(request) -> str:
    return f"{request[0]} {request[1]}"


MODES = {
    "default": [],
    "mock": ["--replay-writes", "mock"],
    "skip": ["--replay-writes", "skip"],
    "-n 2": ["-n", "2"],
    "grouped": ["--replay-group", "connection"],
}


@pytest.mark.parametrize("mode", MODES)
def test_no_write_reaches_the_server_in_any_mode(pytester: pytest.Pytester, server, mode: str) -> None:
    url, seen = server
    capture = write_capture(pytester.path / "writes.gor", WRITES + READS + [GET_WITH_BODY])
    result = replay(pytester, capture, url, *MODES[mode])
    assert sorted(seen) == sorted(label(r) for r in READS + [GET_WITH_BODY])
    text = result.stdout.str()
    n = len(WRITES)
    if mode == "skip":
        assert f"writes (skip): 0 mocked (answered from the recording), 0 sent, {n} skipped, 1 flagged" in text
    else:
        assert f"writes (mock): {n} mocked (answered from the recording), 0 sent, 0 skipped, 1 flagged" in text
    assert "GET /api/search: 0 mocked, 0 sent, 0 skipped, 1 flagged" in text
    assert result.ret == 0, text


def test_summary_says_why_a_request_is_a_write(pytester: pytest.Pytester, server) -> None:
    url, seen = server
    capture = write_capture(pytester.path / "writes.gor", WRITES)
    result = replay(pytester, capture, url, "-rs")
    assert seen == []
    text = result.stdout.str()
    assert "PURGE /cache/a: 1 mocked, 0 sent, 0 skipped (method PURGE)" in text
    assert "X-HTTP-Method-Override: DELETE" in text
    assert "query _method=DELETE" in text
    assert "form field _method=DELETE" in text


def test_markers_use_the_same_decision(pytester: pytest.Pytester, server) -> None:
    url, _ = server
    capture = write_capture(pytester.path / "writes.gor", WRITES + READS + [GET_WITH_BODY])
    result = replay(pytester, capture, url, "--collect-only", "-m", "http_write")
    assert f"{len(WRITES)}/{len(WRITES) + len(READS) + 1} tests collected" in result.stdout.str()
    result = replay(pytester, capture, url, "--collect-only", "-m", "http_read_with_body")
    assert "GET /api/search" in result.stdout.str()
    assert f"1/{len(WRITES) + len(READS) + 1} tests collected" in result.stdout.str()


def test_declared_write_pattern_makes_a_read_a_write(pytester: pytest.Pytester, server) -> None:
    url, seen = server
    capture = write_capture(pytester.path / "delete.gor", [("GET", "/api/delete/7", (), b""),
                                                          ("HEAD", "/api/items", (), b""),
                                                          ("GET", "/api/items", (), b"")])
    pytester.makeini("[pytest]\nreplay_write_pattern =\n    GET ^/api/delete\n")  # the ini twin adds to the flag
    result = replay(pytester, capture, url, "--replay-write-pattern", "HEAD ^/api/items$", "-rs")
    assert seen == ["GET /api/items"]
    text = result.stdout.str()
    assert "writes (mock): 2 mocked (answered from the recording), 0 sent, 0 skipped" in text
    assert "--replay-write-pattern 'GET ^/api/delete'" in text  # the reason, as typed
    assert "--replay-write-pattern 'HEAD ^/api/items$'" in text
    result = replay(pytester, capture, url, "--replay-write-pattern", "HEAD ^/api/items$", "--collect-only",
                    "-m", "http_write")
    assert "2/3 tests collected" in result.stdout.str()


@pytest.mark.parametrize("pattern", ["GET", "GET [unclosed"])
def test_malformed_write_pattern_is_a_usage_error(pytester: pytest.Pytester, server, pattern: str) -> None:
    url, seen = server
    capture = write_capture(pytester.path / "delete.gor", [("GET", "/api/items", (), b"")])
    result = replay(pytester, capture, url, "--replay-write-pattern", pattern)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stderr.str()
    assert "--replay-write-pattern" in text and "accepted forms: 'METHOD PATH_REGEX [@HOST]'" in text
    assert seen == []


def test_allowlist_still_sends_what_it_names(pytester: pytest.Pytester, server) -> None:
    url, seen = server
    capture = write_capture(pytester.path / "writes.gor", WRITES + READS)
    result = replay(pytester, capture, url, "--replay-allow-write", "PURGE ^/cache/",
                    "--replay-allow-write", "DELETE ^/api/items/1$", "--replay-allow-write", "GET ^/api/items/2$")
    # The override is what the server acts on: allowing DELETE sends #1; allowing GET does not send #2.
    assert sorted(seen) == sorted(["PURGE /cache/a", "GET /api/items/1"] + [label(r) for r in READS])
    text = result.stdout.str()
    n = len(WRITES)
    assert f"writes (mock): {n - 2} mocked (answered from the recording), 2 sent, 0 skipped" in text
    assert "PURGE /cache/a: 0 mocked, 1 sent, 0 skipped" in text
    # #2 is a write because it means DELETE: a GET pattern allows none of the writes
    assert "--replay-allow-write 'GET ^/api/items/2$' matches no write in the capture" in text


def test_post_form_override_needs_both_methods_allowed(pytester: pytest.Pytester, server) -> None:
    url, seen = server
    post = ("POST", "/api/items/5", (FORM,), b"_method=DELETE")
    capture = write_capture(pytester.path / "post.gor", [post])
    replay(pytester, capture, url, "--replay-allow-write", "POST ^/api/items/")
    assert seen == []  # the server would delete: POST alone is not enough
    replay(pytester, capture, url, "--replay-allow-write", "POST,DELETE ^/api/items/")
    assert seen == ["POST /api/items/5"]


def test_pass_mode_sends_every_write_and_counts_them(pytester: pytest.Pytester, server) -> None:
    url, seen = server
    capture = write_capture(pytester.path / "writes.gor", WRITES)
    result = replay(pytester, capture, url, "--replay-writes", "pass")
    assert sorted(seen) == sorted(label(r) for r in WRITES)
    n = len(WRITES)
    assert f"writes (pass): 0 mocked (answered from the recording), {n} sent, 0 skipped" in result.stdout.str()


def test_evidence_counts_writes_per_endpoint(pytester: pytest.Pytester, server) -> None:
    import json

    url, _ = server
    capture = write_capture(pytester.path / "writes.gor", WRITES + [GET_WITH_BODY])
    evidence = pytester.path / "evidence"
    replay(pytester, capture, url, "--replay-report", str(evidence), "--replay-allow-write", "PURGE ^/cache/")
    data = json.loads((evidence / "replay-evidence.json").read_text())
    policy = data["write_policy"]
    assert (policy["mocked"], policy["passed"], policy["skipped"], policy["flagged"]) == (len(WRITES) - 1, 1, 0, 1)
    rows = {row["endpoint"]: row for row in data["endpoints"]}
    assert rows["PURGE /cache/a"]["writes"]["passed"] == 1
    assert rows["GET /api/search"]["writes"]["flagged"] == 1


def test_write_methods_option_still_works_with_a_deprecation_note(pytester: pytest.Pytester, server) -> None:
    url, seen = server
    capture = write_capture(pytester.path / "options.gor", [("OPTIONS", "/api/items", (), b""),
                                                           ("GET", "/api/items", (), b"")])
    result = replay(pytester, capture, url, "--replay-write-methods", "OPTIONS")
    assert seen == ["GET /api/items"]
    assert "--replay-write-methods is deprecated" in result.stdout.str() + result.stderr.str()


def test_a_hook_that_turns_a_read_into_a_write_does_not_send_it(pytester: pytest.Pytester, server) -> None:
    """The decision is made again as the request leaves: a pytest_replay_request hook (or a middleware)
    that makes a write of a read gets the write policy, not the read's."""
    url, seen = server
    capture = write_capture(pytester.path / "reads.gor", [("GET", "/api/items/9", (), b""),
                                                         ("GET", "/api/items", (), b"")])
    pytester.makeconftest('''
from pytest_replay.http.message import Request

def pytest_replay_request(request, exchange, state):
    if request.target == "/api/items/9":
        return Request.build("GET", request.target, ((b"Host", b"shop"), (b"X-HTTP-Method-Override", b"DELETE")))
''')
    result = replay(pytester, capture, url, "-rs")
    assert seen == ["GET /api/items"]
    text = result.stdout.str()
    assert "writes (mock): 1 mocked (answered from the recording), 0 sent, 0 skipped" in text
    assert "write answered from the recording, not sent" in text and "X-HTTP-Method-Override: DELETE" in text
    result.assert_outcomes(passed=1, skipped=1)
