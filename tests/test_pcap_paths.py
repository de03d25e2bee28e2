"""The pcap reading paths against each other, and what the fast path keeps lazy or shared.

Connection.packet()'s fast path (Framer._fast: whole messages at the start of a segment skip the
buffer; whole messages of at most 1 KiB framed before are taken from memory, parser._WHOLE; larger
bodies are cut out of `raw` on first use, message.lazy_body) must give exactly the exchanges of the
reference path (Framer(fast=False): every byte through the framer's buffer), on random captures of
keep-alive connections that repeat messages, split them across segments, lose packets and end
anywhere; as pcap and as pcapng.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import uvicorn

from pytest_replay.capture import Capture, fast, load, pcap
from pytest_replay.http import parser
from pytest_replay.http.message import Request, Response
from pytest_replay.http.parser import Framer

CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
BIG = b'{"items": "' + b"x" * 1500 + b'"}'  # a body larger than what is remembered (1 KiB)
REQUESTS = [b"GET /item.json HTTP/1.1\r\nHost: shop\r\n\r\n",
            b"GET /big.json HTTP/1.1\r\nHost: shop\r\n\r\n",
            b"HEAD /item.json HTTP/1.1\r\nHost: shop\r\n\r\n",
            b"POST /cart HTTP/1.1\r\nHost: shop\r\nContent-Length: 7\r\n\r\n{\"a\":1}"]
RESPONSES = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"id\": 1}",
             b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BIG), BIG),
             b"HTTP/1.1 204 No Content\r\n\r\n",
             b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"]


def _frame(src_port: int, dst_port: int, seq: int, ack: int, flags: int, payload: bytes, *,
           from_client: bool) -> bytes:
    src, dst = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
    tcp = struct.pack("!HHIIBBHHH", src_port, dst_port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload


def _pcap(frames: list[tuple[int, bytes]]) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts_us, data in frames:
        out.append(struct.pack("<IIII", ts_us // 1_000_000, ts_us % 1_000_000, len(data), len(data)) + data)
    return b"".join(out)


def _pcapng(frames: list[tuple[int, bytes]]) -> bytes:
    def block(kind: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)), block(1, struct.pack("<HHI", 1, 0, 0))]
    for ts_us, data in frames:
        out.append(block(6, struct.pack("<IIIII", 0, ts_us >> 32, ts_us & 0xFFFFFFFF, len(data), len(data)) + data))
    return b"".join(out)


def conversation(exchanges: list[tuple[bytes, bytes]], *, port: int = 40000, start_us: int = 1_700_000_000_000_000,
                 cuts: dict[int, list[int]] | None = None, handshake: bool = True) -> list[tuple[int, bytes]]:
    """Frames of one keep-alive connection: each (request, response) pair in turn, each message in one
    segment unless `cuts` (message number -> offsets) splits it; ACKs carried by the data segments."""
    frames = []
    ts = start_us
    cseq, sseq = 1000, 5000
    if handshake:
        frames += [(ts, _frame(port, 80, cseq - 1, 0, 0x02, b"", from_client=True)),
                   (ts + 1, _frame(80, port, sseq - 1, cseq, 0x12, b"", from_client=False)),
                   (ts + 2, _frame(port, 80, cseq, sseq, 0x10, b"", from_client=True))]
    number = 0
    for request, response in exchanges:
        for from_client, message in ((True, request), (False, response)):
            ts += 10
            at = sorted({c for c in (cuts or {}).get(number, []) if 0 < c < len(message)})
            for piece_start, piece_end in zip([0, *at], [*at, len(message)]):
                piece = message[piece_start:piece_end]
                if from_client:
                    frames.append((ts, _frame(port, 80, cseq, sseq, 0x18, piece, from_client=True)))
                    cseq += len(piece)
                else:
                    frames.append((ts, _frame(80, port, sseq, cseq, 0x18, piece, from_client=False)))
                    sseq += len(piece)
                ts += 1
            number += 1
    return frames


def summary(exchange) -> list:
    """Every value an exchange shows, its messages' fields included (bodies read last)."""
    def message(msg) -> list | None:
        if msg is None:
            return None
        return [(f.name, getattr(msg, f.name)) for f in dataclasses.fields(msg) if f.name != "_headers"] + [msg.headers]
    return [exchange.index, message(exchange.request), message(exchange.response), exchange.request_ts_ns,
            exchange.response_ts_ns, exchange.connection, exchange.position, str(exchange.source),
            [str(flag) for flag in exchange.flags], exchange.replayed, exchange.scheme, exchange.server_name]


def read(path: Path, fast: bool) -> tuple[list, dict]:
    saved = Framer.fast_path
    Framer.fast_path = fast
    try:
        exchanges, stats = load(str(path))
    finally:
        Framer.fast_path = saved
    counts = {"packets": stats.packets, "complete": stats.complete, "gaps": stats.gaps, "lost": dict(stats.lost),
              "orphans": dict(stats.orphan_responses), "warnings": [str(w) for w in stats.warnings],
              "endpoints": dict(stats.endpoints), "incomplete": dict(stats.incomplete)}
    return [summary(e) for e in exchanges], counts


@st.composite
def captures(draw) -> bytes:
    """One to three keep-alive connections drawing their exchanges from a small pool (so messages
    repeat), messages sometimes split across segments, packets sometimes lost, the file sometimes
    cut; pcap or pcapng."""
    frames = []
    for conn in range(draw(st.integers(1, 3))):
        pairs = draw(st.lists(st.tuples(st.sampled_from(REQUESTS), st.sampled_from(RESPONSES)), min_size=1,
                              max_size=8))
        cuts = draw(st.dictionaries(st.integers(0, 2 * len(pairs) - 1), st.lists(st.integers(1, 1600), max_size=2),
                                    max_size=3))
        frames += conversation(pairs, port=40000 + conn, start_us=1_700_000_000_000_000 + conn * 7, cuts=cuts,
                               handshake=draw(st.booleans()))
    frames.sort(key=lambda item: item[0])
    lost = draw(st.sets(st.integers(0, len(frames) - 1), max_size=2))
    frames = [f for i, f in enumerate(frames) if i not in lost]
    data = (_pcapng if draw(st.booleans()) else _pcap)(frames)
    if draw(st.integers(0, 4)) == 0:
        data = data[:draw(st.integers(40, len(data)))]
    return data


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=captures())
def test_fast_path_reads_what_the_reference_path_reads(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "random.pcap"
    path.write_bytes(data)
    assert read(path, fast=True) == read(path, fast=False)
    assert read(path, fast=True) == read(path, fast=False)  # again, with the messages now remembered


def test_the_reference_path_never_takes_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Framer(fast=False) is the reference the fast path is tested against: reading a pcap with it
    frames every message through the buffer (Connection.packet() used to call Framer._fast anyway)."""
    path = tmp_path / "dense.pcap"
    path.write_bytes(_pcap(conversation([(REQUESTS[0], RESPONSES[0]), (REQUESTS[1], RESPONSES[1])] * 3)))

    def refuse(*args):
        raise AssertionError("Framer._fast called on the reference path")

    monkeypatch.setattr(Framer, "_fast", refuse)
    monkeypatch.setattr(Framer, "_fast_response", refuse, raising=False)
    monkeypatch.setattr(fast, "whole_request", refuse)
    monkeypatch.setattr(fast, "whole_response", refuse)
    exchanges, _ = read(path, fast=False)
    assert len(exchanges) == 6
    monkeypatch.setattr(pcap, "FAST_PATH", False)  # the framer's fast path, under Connection.packet()
    with pytest.raises(AssertionError, match="reference path"):
        read(path, fast=True)


def test_repeated_small_messages_are_one_shared_message(tmp_path: Path) -> None:
    """A dense capture repeats a load generator's requests and a server's small responses: the fast
    path hands out the same frozen message again (equal to what the reference path builds anew)."""
    path = tmp_path / "dense.pcap"
    pairs = [(REQUESTS[0], RESPONSES[0]), (REQUESTS[3], RESPONSES[3])] * 4
    path.write_bytes(_pcap(conversation(pairs)))
    saved = Framer.fast_path
    try:
        Framer.fast_path = True
        fast = list(Capture(str(path)))
        Framer.fast_path = False
        reference = list(Capture(str(path)))
    finally:
        Framer.fast_path = saved
    # (a connection's first message is checked for other protocols, so the general path frames it;
    # a whole message is remembered when its head was seen before: from the third on, one object)
    assert len({id(e.request) for e in fast[4::2]}) == 1 and len({id(e.response) for e in fast[5::2]}) == 1
    assert len({id(e.request) for e in reference[::2]}) == 4
    assert [(e.request, e.response) for e in fast] == [(e.request, e.response) for e in reference]
    assert fast[2].request.body == b"" and fast[3].request.body == b'{"a":1}' and fast[3].response.body == b"ok"


def test_a_remembered_response_is_framed_by_the_method_it_answers(tmp_path: Path) -> None:
    """The same response bytes answer a GET (remembered whole) and then a HEAD: the HEAD's response
    has no body, so the bytes after its head are the start of the next response, as on the reference path."""
    get, head = REQUESTS[0], REQUESTS[2]
    path = tmp_path / "head.pcap"
    path.write_bytes(_pcap(conversation([(get, RESPONSES[0]), (head, RESPONSES[0]), (get, RESPONSES[0])])))
    fast, reference = read(path, fast=True), read(path, fast=False)
    assert fast == reference
    exchanges = list(Capture(str(path)))
    assert exchanges[1].request.method == "HEAD" and exchanges[1].response.body == b""


def test_the_memory_of_whole_messages_is_bounded() -> None:
    """Unique messages (production traffic) are not remembered (their heads were never seen before),
    repeated ones never grow the memory past parser._MAX_HEADS per direction, and messages longer
    than 1 KiB are not remembered."""
    framer = Framer(True, on_head=lambda msg: None, on_message=lambda msg: None,
                    on_request=lambda *args: None, fast=True, check_signature=False)
    unique = [b"GET /unique/%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(100)]
    for n, message in enumerate(unique):
        framer.feed(message, n)
    assert not set(unique) & set(parser._WHOLE[True])
    for n in range(parser._MAX_HEADS + 50):
        for _ in range(2):
            framer.feed(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n, n)
        assert 0 < len(parser._WHOLE[True]) <= parser._MAX_HEADS
    long = b"GET /long HTTP/1.1\r\nX-Long: " + b"a" * 1100 + b"\r\n\r\n"
    framer.feed(long, 1)
    assert long not in parser._WHOLE[True]


def _unset(message, name: str) -> bool:
    try:
        type(message).__dict__[name].__get__(message)
    except AttributeError:
        return True
    return False


def test_large_bodies_are_cut_out_of_raw_on_first_use(tmp_path: Path) -> None:
    """A body over 1 KiB read from one segment is not copied while reading: it is cut out of `raw`
    when first read, and the message behaves exactly as one built eagerly (equality, hash, repr,
    replace, copy, pickle)."""
    path = tmp_path / "big.pcap"
    path.write_bytes(_pcap(conversation([(REQUESTS[1], RESPONSES[1])] * 3)))
    exchanges = list(Capture(str(path)))[1:]  # (a connection's first message goes the general way)
    response = exchanges[0].response
    assert _unset(response, "body")
    eager = Response(response.status, response.reason, response.version, response.head, BIG, response.raw)
    assert hash(response) == hash(eager)
    assert not _unset(response, "body") and response.body == BIG
    lazy = exchanges[1].response
    assert _unset(lazy, "body")
    assert lazy == eager and repr(lazy) == repr(eager)
    for twin in (copy.copy(exchanges[1].response), pickle.loads(pickle.dumps(lazy)),
                 dataclasses.replace(list(Capture(str(path)))[1].response, reason="OK")):
        assert twin == eager and twin.body == BIG
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lazy.nope  # noqa: B018
    request = Request.build("POST", "/x", ((b"Content-Length", b"2000"),), b"y" * 2000)
    assert request.body == b"y" * 2000 and not _unset(request, "body")


APP = """
BODIES = {"/item.json": b'{"id": 1}', "/big.json": %r}


async def app(scope, receive, send):
    body = BODIES.get(scope["path"], b"not found")
    await send({"type": "http.response.start", "status": 200 if scope["path"] in BODIES else 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%%d" %% len(body))]})
    await send({"type": "http.response.body", "body": body})
""" % BIG


def test_a_dense_capture_replays_grouped_by_connection(pytester: pytest.Pytester) -> None:
    """End to end: a dense keep-alive capture of a real server (its small responses repeated byte for
    byte, a large body left lazy) replayed grouped by connection against that server passes, every
    exchange judged."""
    pytester.makepyfile(dense_app=APP)
    with uvicorn("dense_app:app", app_dir=pytester.path, cwd=pytester.path) as url:
        port = int(url.rsplit(":", 1)[1])
        answers = {name: _fetch(port, b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % name.encode())
                   for name in ("item.json", "big.json")}
        pairs = [answers["item.json"]] * 5 + [answers["big.json"]] + [answers["item.json"]] * 4
        frames = conversation(pairs, port=41000) + conversation(pairs, port=41001, start_us=1_700_000_000_000_003)
        frames.sort(key=lambda item: item[0])
        capture = pytester.path / "dense.pcap"
        capture.write_bytes(_pcap(frames))
        exchanges = list(Capture(str(capture)))
        # a connection's first message goes the general way; a whole message is remembered once its
        # head was seen before (the second time on the fast path)
        later = [e for e in exchanges if e.position > 2]
        assert len({id(e.request) for e in later if e.request.target == "/item.json"}) == 1
        later = [e for e in exchanges if e.position > 0]
        assert all(_unset(e.response, "body") for e in later if e.request.target == "/big.json")
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--replay-target",
                                               url, "--speed", "0", "--replay-group", "connection", "-q",
                                               timeout=300)
    result.assert_outcomes(passed=2)
    assert "verdicts: 20 passed, 0 failed" in result.stdout.str()


def _fetch(port: int, request: bytes) -> tuple[bytes, bytes]:
    """(request, the server's whole response to it), read by its Content-Length."""
    import socket

    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(65536)
    return request, head + b"\r\n\r\n" + body
