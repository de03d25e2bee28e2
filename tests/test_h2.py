"""HTTP/2 in captures (pytest_replay/http/h2.py and its hook in reassembly/flows.py): HPACK, frames
cut anywhere, corruption, gRPC, the entry point for decrypted streams, and the h2c fixtures."""

from __future__ import annotations

import getpass
import socket
import subprocess
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from support import feed_turns, require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_replay.capture import load
from pytest_replay.http.h2 import (PREFACE, H2Error, H2Session, HpackDecoder, exchanges_from_streams, grpc_messages,
                                   grpc_status, is_grpc, looks_like_frames)
from pytest_replay.policy.writes import WritePolicy

CRAFTED = Path(__file__).resolve().parent.parent / "fixtures" / "captures" / "crafted"
RECORDED = CRAFTED.parent / "recorded"


def conversation(n: int = 3, body: bytes = b"hello", big: int = 0) -> tuple[bytes, bytes]:
    """Client and server bytes of an h2c prior-knowledge connection made by python-hyper h2: n POSTs,
    each answered with headers, data (`big` extra bytes) and trailers."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    cbytes = client.data_to_send()
    server.receive_data(cbytes)
    sbytes = server.data_to_send()
    client.receive_data(sbytes)
    for i in range(n):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(":method", "POST"), (":path", f"/item/{i}"), (":scheme", "http"),
                                  (":authority", "example.test"), ("content-type", "text/plain"), ("x-n", str(i))])
        client.send_data(sid, body, end_stream=True)
        data = client.data_to_send()
        cbytes += data
        for event in server.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                server.send_headers(event.stream_id, [(":status", "200"), ("content-type", "text/plain"),
                                                      ("x-i", str(i))])
                server.send_data(event.stream_id, b"resp%d" % i + b"z" * big)
                server.send_headers(event.stream_id, [("grpc-status", "0")], end_stream=True)
        data = server.data_to_send()
        sbytes += data
        for event in client.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        cbytes += client.data_to_send()
        server.receive_data(b"")
    return cbytes, sbytes


def summary(streams) -> list[tuple]:
    return [(s.id, s.request().raw, s.response().raw if s.response() else None, s.response() and s.response().trailers,
             tuple(s.flags)) for s in streams]


def run(client: bytes, server: bytes, cuts_c=(), cuts_s=()) -> list:
    out: list = []
    session = H2Session(on_close=out.append)
    for side, data, cuts in ((True, client, cuts_c), (False, server, cuts_s)):
        points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        for a, b in zip(points, points[1:]):
            session.feed(side, data[a:b], ts_ns=a)
    session.finish()
    return out


def test_exchanges_from_streams() -> None:
    client, server = conversation(3)
    streams = exchanges_from_streams(client, server, "h2")
    assert [s.id for s in streams] == [1, 3, 5]
    first = streams[0]
    request, response = first.request("h2"), first.response("h2")
    assert request.raw == (b"POST /item/0 HTTP/1.1\r\nhost: example.test\r\ncontent-type: text/plain\r\nx-n: 0\r\n"
                           b"content-length: 5\r\n\r\nhello")
    assert (request.method, request.target, request.host, request.protocol) == ("POST", "/item/0", "example.test", "h2")
    assert (response.status, response.reason, response.body, response.protocol) == (200, "OK", b"resp0", "h2")
    assert response.trailers == ((b"grpc-status", b"0"),) and not first.flags


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 10**6), max_size=12), st.lists(st.integers(0, 10**6), max_size=12))
def test_cut_anywhere_same_exchanges(cuts_c, cuts_s) -> None:
    """Reassembly hands the framer arbitrary segments: the exchanges do not depend on the cuts."""
    client, server = conversation(3, body=b"x" * 300, big=200)
    assert summary(run(client, server, cuts_c, cuts_s)) == summary(run(client, server))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       st.booleans(), st.lists(st.integers(0, 10**6), max_size=4))
def test_corruption_never_raises(flips, server_side, cuts) -> None:
    """Corrupted frames or header blocks become flags and warnings, never exceptions."""
    client, server = conversation(2)
    data = bytearray(server if server_side else client)
    for where, value in flips:
        data[where % len(data)] = value
    if server_side:
        streams = run(client, bytes(data), cuts_s=cuts)
    else:
        streams = run(bytes(data), server, cuts_c=cuts)
    for stream in streams:
        if stream.req_headers is not None:
            stream.request()
        stream.response()


def test_hpack_roundtrip_and_unknown_entries() -> None:
    encoder = hpack.Encoder()
    before = [(":method", "GET"), (":path", "/a"), ("x-token", "secret")]
    encoder.encode(before)  # the capture never sees this block
    block = encoder.encode([(":method", "GET"), (":path", "/b"), ("x-token", "secret"), ("x-new", "v")])
    decoder = HpackDecoder(known=False)
    headers, unknown = decoder.decode(block)
    assert unknown == 1 and headers[:2] == [(b":method", b"GET"), (b":path", b"/b")] and headers[3] == (b"x-new", b"v")
    # the entries the capture did see stay at their true indices
    headers, unknown = decoder.decode(encoder.encode([(":path", "/b"), ("x-new", "v")]))
    assert (headers, unknown) == ([(b":path", b"/b"), (b"x-new", b"v")], 0)
    with pytest.raises(H2Error):  # with a known table, such an index is corrupt data
        HpackDecoder(known=True).decode(b"\xff\x20")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["x-a", "x-b", "cookie", "accept"]),
                                   st.text(min_size=0, max_size=20)), max_size=6), max_size=5))
def test_hpack_agrees_with_hpack_package(blocks) -> None:
    """Our decoder against hpack's own, on blocks its encoder made (dynamic table and Huffman)."""
    encoder, ours, theirs = hpack.Encoder(), HpackDecoder(), hpack.Decoder()
    for headers in blocks:
        block = encoder.encode(headers)
        assert ours.decode(block) == ([(bytes(n), bytes(v)) for n, v in theirs.decode(block, raw=True)], 0)


def test_hpack_matches_reference_decoder() -> None:
    encoder, ours, theirs = hpack.Encoder(), HpackDecoder(), hpack.Decoder()
    for i in range(50):
        headers = [(":method", "GET"), (":path", f"/p/{i % 7}"), ("cookie", f"id={i % 3}"), ("x-long", "v" * (i * 9))]
        block = encoder.encode(headers)
        assert ours.decode(block) == ([(bytes(n), bytes(v)) for n, v in theirs.decode(block, raw=True)], 0)


# Blocks for the remembered-block fast path: made by hand so that they use every HPACK representation,
# and drawn from a few templates so that the same bytes come again (a template that refers to no
# dynamic entry is the same bytes each time: the fast path answers it from _BLOCKS).
_NAMES = [b"content-type", b"date", b"x-a", b"etag", b"cache-control"]
_VALUES = [b"", b"application/json", b"Sun, 06 Dec 2026 12:00:00 GMT", b"v" * 40, b"\x00\xff binary", b"text/html"]
_HUFFMAN = hpack.huffman.HuffmanEncoder(hpack.huffman_constants.REQUEST_CODES,
                                       hpack.huffman_constants.REQUEST_CODES_LENGTH)


def _int(value: int, prefix: int, first: int) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((first | value,))
    out, value = bytearray((first | mask,)), value - mask
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(out + bytes((value,)))


def _str(data: bytes, huffman: bool) -> bytes:
    if huffman:
        data = _HUFFMAN.encode(data)
    return _int(len(data), 7, 0x80 if huffman else 0) + data


_OP = st.one_of(
    st.tuples(st.just("static"), st.integers(1, 61)),
    st.tuples(st.just("dynamic"), st.integers(0, 40)),
    st.tuples(st.just("literal"), st.sampled_from([(0x40, 6), (0x00, 4), (0x10, 4)]),  # incremental, without, never
              st.one_of(st.tuples(st.just("static"), st.integers(1, 61)), st.tuples(st.just("dynamic"), st.integers(0, 40)),
                        st.tuples(st.just("name"), st.sampled_from(_NAMES))),
              st.sampled_from(_VALUES), st.booleans()))
_TEMPLATE = st.tuples(st.one_of(st.none(), st.integers(0, 4096)), st.lists(_OP, min_size=1, max_size=6))


def _block(template, decoder: hpack.Decoder) -> bytes:
    """The template's bytes against the decoder's table as it will be at each field (dynamic indices
    are taken modulo the entries there are then; none: a static one instead)."""
    size, ops = template
    sizes = [len(n) + len(v) + 32 for n, v in decoder.header_table.dynamic_entries]  # newest first
    limit = decoder.header_table.maxsize

    def fit() -> None:
        while sum(sizes) > limit:
            sizes.pop()

    def name_size(kind, which) -> int:
        if kind == "name":
            return len(which)
        if kind == "static":
            return len(hpack.table.HeaderTable.STATIC_TABLE[which - 1][0])
        return -1  # a dynamic entry's name: looked up below

    out = []
    if size is not None:
        out.append(_int(size, 5, 0x20))
        limit = size
        fit()
    entries = list(decoder.header_table.dynamic_entries)
    names = [len(n) for n, _ in entries]
    for op in ops:
        if op[0] == "static":
            out.append(_int(op[1], 7, 0x80))
        elif op[0] == "dynamic":
            if sizes:
                out.append(_int(62 + op[1] % len(sizes), 7, 0x80))
        else:
            (first, prefix), (kind, which), value, huffman = op[1:]
            if kind == "dynamic" and not sizes:
                kind, which = "static", 31
            if kind == "name":
                out.append(bytes((first,)) + _str(which, huffman))
                nlen = len(which)
            elif kind == "static":
                out.append(_int(which, prefix, first))
                nlen = name_size(kind, which)
            else:
                at = which % len(sizes)
                out.append(_int(62 + at, prefix, first))
                nlen = names[at]
            out.append(_str(value, huffman))
            if first == 0x40:
                sizes.insert(0, nlen + len(value) + 32)
                names.insert(0, nlen)
                fit()
                del names[len(sizes):]
    return b"".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(templates=st.lists(_TEMPLATE, min_size=1, max_size=4), order=st.lists(st.integers(0, 3), min_size=1,
                                                                             max_size=16))
def test_remembered_blocks_decode_like_the_reference_and_hpack(templates, order) -> None:
    """The fast path (blocks that refer to no dynamic entry decoded once, their table additions
    replayed, eviction deferred) against our reference path (fast=False) and hpack's Decoder: the same
    header lists and the same dynamic table after every block, blocks coming again and again."""
    fast, slow, theirs = HpackDecoder(), HpackDecoder(), hpack.Decoder()
    for i in order:
        template = templates[i % len(templates)]
        if template[0] is not None and template[0] > theirs.max_allowed_table_size:
            continue
        block = _block(template, theirs)
        expected = [(bytes(n), bytes(v)) for n, v in theirs.decode(block, raw=True)]
        assert fast.decode(block) == slow.decode(block, fast=False) == (expected, 0)
        table = [(bytes(n), bytes(v)) for n, v in theirs.header_table.dynamic_entries]
        assert fast.entries() == slow.entries() == table


def test_remembered_blocks_are_the_state_free_ones() -> None:
    """nginx's response blocks (static name, literal with incremental indexing) are remembered and
    answered from memory the second time; a block that refers to a dynamic entry never is."""
    from pytest_replay.http import h2 as http_h2

    nginx_like = b"\x88" + b"\x61" + _str(b"Sun, 06 Dec 2026 12:00:00 GMT", True) + b"\x5f" + _str(b"application/json", False)
    decoder = HpackDecoder()
    first = decoder.decode(nginx_like)
    assert http_h2._BLOCKS[nginx_like][0] == tuple(first[0]) and len(decoder.entries()) == 2
    assert decoder.decode(nginx_like) == first and len(decoder.entries()) == 4  # the additions replayed
    referring = b"\x88\xbe"  # :status 200, then the newest dynamic entry
    assert decoder.decode(referring) == ([(b":status", b"200"), (b"content-type", b"application/json")], 0)
    assert referring not in http_h2._BLOCKS
    # a literal whose name is the newest dynamic entry's: the same bytes, another name once the
    # table has changed
    named = b"\x7e" + _str(b"v", False)
    assert decoder.decode(named)[0] == [(b"content-type", b"v")] and named not in http_h2._BLOCKS
    decoder.decode(b"\x40" + _str(b"x-other", False) + _str(b"w", False))
    assert decoder.decode(named)[0] == [(b"x-other", b"v")]


def test_blocks_remembered_for_a_table_state_are_forgotten_when_it_changes() -> None:
    """A block of indices only (b"\\xbe": the newest dynamic entry) is remembered by its decoder for
    the table as it is, and decoded anew after any change: an addition (decoded, or replayed from a
    remembered block) or a size update."""
    decoder = HpackDecoder()
    newest = b"\xbe"
    first = b"\x40" + _str(b"x-a", False) + _str(b"1", False)  # literal with incremental indexing, new name
    second = b"\x40" + _str(b"x-b", False) + _str(b"2", True)
    decoder.decode(first)
    assert decoder.decode(newest) == decoder.decode(newest) == ([(b"x-a", b"1")], 0)
    assert newest in decoder.seen
    decoder.decode(second)
    assert decoder.decode(newest) == ([(b"x-b", b"2")], 0)
    decoder.decode(first)  # from _BLOCKS this time: its addition replayed
    assert decoder.decode(newest) == ([(b"x-a", b"1")], 0)
    decoder.decode(b"\x20")  # size update to 0: the table is emptied
    with pytest.raises(H2Error, match="beyond the dynamic table"):
        decoder.decode(newest)


@settings(max_examples=120, deadline=None)
@given(fields=st.lists(st.tuples(st.sampled_from([b"content-type", b"content-length", b"x-a", b"server", b"host"]),
                                 st.binary(max_size=12)), max_size=5),
       status=st.sampled_from([b"200", b"204", b"404", b"999", b"20", b"abc"]),
       bodies=st.lists(st.binary(max_size=20), min_size=1, max_size=4), trailers=st.booleans(),
       protocol=st.sampled_from(["h2", "h2c"]))
def test_responses_made_from_remembered_blocks_are_to_responses(fields, status, bodies, trailers, protocol) -> None:
    """response_for_block (head and fields made once per remembered block and body length) gives the
    Response to_response gives, field for field, the first time and from memory."""
    from pytest_replay.http.h2 import response_for_block, to_response
    from pytest_replay.targets.h2 import encode_headers

    headers = [(b":status", status), *fields]
    block = encode_headers(headers)  # literals without indexing: a state-free block
    decoded, _ = HpackDecoder().decode(block)
    assert decoded == headers
    extra = ((b"grpc-status", b"0"),) if trailers else ()
    for body in [*bodies, *bodies]:
        ours = response_for_block(block, decoded, body, extra, (100,), protocol)
        reference = to_response(decoded, body, extra, (100,), protocol)
        assert [getattr(ours, f) for f in _RESPONSE_FIELDS] == [getattr(reference, f) for f in _RESPONSE_FIELDS]


_RESPONSE_FIELDS = ("status", "reason", "version", "head", "body", "raw", "trailers", "interim", "lf_only", "headers",
                    "protocol")


def test_grpc_helpers() -> None:
    exchanges, _ = load(str(CRAFTED / "h2c_grpc_cut.pcap"))
    call = exchanges[0]
    assert is_grpc(call.request.headers) and call.request.protocol == "h2c"
    assert grpc_messages(call.request.body) == ([b"\x0a\x03abc", b"\x0a\x05hello"], None)
    assert grpc_messages(call.response.body) == ([b"\x0a\x02ok"], None)
    assert grpc_status(call.response) == (0, "fine")
    assert grpc_messages(b"\x00\x00\x00\x00\x09abc")[1] == "message at byte 0 claims 9 bytes, 3 left"
    # under the write policy a gRPC call is a POST: a write unless the allowlist names it
    policy = WritePolicy()
    assert policy.classify(call.request).write and not policy.allowed(call.request)
    assert WritePolicy(allow=("POST ^/pkg.Service/Get",)).allowed(call.request)


def test_reset_and_cut_streams_are_flagged() -> None:
    exchanges, stats = load(str(CRAFTED / "h2c_grpc_cut.pcap"))
    _, refused, cut = exchanges
    assert refused.response is None and [str(f) for f in refused.flags] == [
        "closed (response): RST_STREAM (error code 7) from the server"]
    assert cut.response.status == 200 and len(cut.response.body) == 100 and not cut.complete
    assert stats.protocols == {"h2c": 1}


def test_mid_connection_start_flags_unknown_hpack_entries() -> None:
    exchanges, stats = load(str(CRAFTED / "h2c_mid_connection.pcap"))
    unknown = exchanges[0]
    assert {f.code for f in unknown.flags} == {"hpack-unknown"}
    assert "not guessed" in unknown.flags[0].detail
    assert unknown.request.header("host") is None  # :authority came from an unknown entry: not invented
    assert [e.complete for e in exchanges] == [False, True, True]
    assert exchanges[2].request.host == "other.test"


def test_recorded_nginx_h2c() -> None:
    exchanges, stats = load(str(RECORDED / "nginx_h2c_prior_knowledge.pcap"))
    assert [(e.label, e.response.status) for e in exchanges] == [
        ("GET /", 200), ("GET /items.json", 200), ("GET /missing", 404), ("POST /echo", 201), ("POST /echo", 201)]
    assert exchanges[0].response.body == b"hello from nginx over h2c\n"
    assert exchanges[3].request.body == b"a=1&b=2" and exchanges[3].request.header("content-length") == b"7"
    assert exchanges[4].request.header("user-agent").startswith(b"curl/")
    assert all(e.request.protocol == "h2c" and e.response.protocol == "h2c" for e in exchanges)
    assert stats.protocols == {"h2c": 2}


def test_looks_like_frames() -> None:
    client, server = conversation(1)
    assert looks_like_frames(server) and looks_like_frames(client[len(PREFACE):])
    assert not looks_like_frames(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not looks_like_frames(b"HTTP/1.1 200 OK\r\n\r\n")


def test_quic_is_counted_not_decoded(tmp_path) -> None:
    """QUIC (HTTP/3 over UDP 443) cannot be replayed: counted with its reason; other UDP as before."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    mac = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    packets = [Ether(**mac) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=50000, dport=443)
               / Raw(b"\xc3\x00\x00\x00\x01" + bytes(30)),  # long header, Initial
               Ether(**mac) / IPv6(src="::1", dst="::2") / UDP(sport=443, dport=50000) / Raw(b"\x40" + b"\x11" * 20),
               Ether(**mac) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5353, dport=5353) / Raw(bytes(12))]
    wrpcap(str(tmp_path / "quic.pcap"), packets)
    exchanges, stats = load(str(tmp_path / "quic.pcap"))
    assert exchanges == [] and stats.not_decoded == {"QUIC (UDP port 443, HTTP/3): not replayed": 2,
                                                     "not TCP (IP protocol 17)": 1}


def test_inspect_reports_protocols(capsys) -> None:
    import json

    from pytest_replay.cli import main

    assert main(["inspect", str(CRAFTED / "upgrade_ws_and_h2.pcapng")]) == 0
    assert "connections: 2 (HTTP/1.x: 1, h2c: 1)" in capsys.readouterr().out
    assert main(["inspect", "--json", str(RECORDED / "nginx_h2c_prior_knowledge.pcap")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["protocol"] for line in lines[:-1]} == {"h2c"}
    assert lines[-1]["summary"]["protocols"] == {"h2c": 2}


def test_h2c_capture_replays_over_http1(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """The recorded h2c traffic replayed (over HTTP/1.1) against the same content served by nginx over
    HTTP/1.1: the reads pass, the POSTs are writes (mocked unless allowed)."""
    require("nginx")
    html = tmp_path / "html"
    html.mkdir()
    (html / "index.html").write_bytes(b"hello from nginx over h2c\n")
    (html / "items.json").write_bytes(b'{"items": [1, 2, 3]}\n')
    (tmp_path / "logs").mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "nginx.conf").write_text(
        # workers as the same user as the master (root here: pytest's tmp dirs are private)
        f"daemon off; user {getpass.getuser()}; pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {html};\n"
        '  location /echo { return 201 "created\\n"; } } }\n')
    server = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                              stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        capture = str(RECORDED / "nginx_h2c_prior_knowledge.pcap")
        args = ("-p", "no:cacheprovider", "--replay", capture, "--replay-target", f"http://127.0.0.1:{port}",
                "--speed", "0", "-q")
        result = pytester.runpytest_subprocess(*args, timeout=300)
        result.assert_outcomes(passed=3, skipped=2)
        result = pytester.runpytest_subprocess(*args, "--replay-allow-write", "POST ^/echo", timeout=300)
        result.assert_outcomes(passed=5)
    finally:
        server.terminate()
        server.wait(10)


def _flows(client_turns: list[bytes], server_turns: list[bytes], cuts: list[int]) -> list[tuple]:
    """Exchanges of one connection fed to the FlowTable turn by turn (client then server), each
    turn's bytes cut at `cuts` (offsets modulo the turn length)."""
    drafts, _ = feed_turns(client_turns, server_turns, cuts=cuts)
    return [(d.request.raw, d.response.raw if d.response else None, d.interim,
             tuple(str(f) for f in d.flags)) for d in drafts]


def _upgrade_turns(preface_early: bool) -> tuple[list[bytes], list[bytes]]:
    """An Upgrade: h2c made by python-hyper h2 (initiate_upgrade_connection on both sides): the server
    answers stream 1 (the upgrade request) in frames, then the client's stream 3."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    settings_header = client.initiate_upgrade_connection()
    upgrade = (b"GET /up HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: " + settings_header + b"\r\n\r\n")
    switching = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    server.initiate_upgrade_connection(settings_header)
    preface = client.data_to_send()
    server.receive_data(preface)
    server.send_headers(1, [(":status", "200"), ("content-type", "text/plain")])
    server.send_data(1, b"upgraded!", end_stream=True)
    answer1 = server.data_to_send()
    client.receive_data(answer1)
    client.send_headers(3, [(":method", "GET"), (":path", "/next"), (":scheme", "http"),
                            (":authority", "example.test")], end_stream=True)
    request3 = client.data_to_send()
    server.receive_data(request3)
    server.send_headers(3, [(":status", "404")])
    server.send_data(3, b"no", end_stream=True)
    answer3 = server.data_to_send()
    if preface_early:
        return [upgrade + preface, request3], [switching + answer1, answer3]
    return [upgrade, preface + request3], [switching + answer1, answer3]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 10**6), max_size=8), st.booleans())
def test_upgrade_h2c_cut_anywhere(cuts, preface_early) -> None:
    """Upgrade: h2c through the FlowTable, the bytes cut at random points (the preface and frames
    split across segments, with the HTTP/1.1 request or the 101 in the same segment): the same
    exchanges as with whole turns."""
    client_turns, server_turns = _upgrade_turns(preface_early)
    whole = _flows(client_turns, server_turns, [])
    assert len(whole) == 2 and all(not flags for *_, flags in whole), whole
    assert whole[0][0] == b"GET /up HTTP/1.1\r\nHost: example.test\r\n\r\n" and whole[0][2] == (101,)
    assert whole[0][1].endswith(b"\r\n\r\nupgraded!") and whole[1][0].startswith(b"GET /next HTTP/1.1\r\n")
    assert whole[1][1].startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert _flows(client_turns, server_turns, cuts) == whole


# -- Huffman strings: the byte-step decoder against hpack's nibble decoder (the reference) ---------
@settings(max_examples=300, deadline=None)
@given(text=st.binary(max_size=200))
def test_huffman_decoder_agrees_with_hpack_on_encoded_strings(text: bytes) -> None:
    from hpack.huffman import HuffmanEncoder
    from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
    from hpack.huffman_table import decode_huffman

    from pytest_replay.http.h2 import huffman_decode

    encoded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(text)
    assert huffman_decode(encoded) == decode_huffman(encoded) == text


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_huffman_decoder_agrees_with_hpack_on_any_bytes(data: bytes) -> None:
    from hpack.exceptions import HPACKDecodingError
    from hpack.huffman_table import decode_huffman

    from pytest_replay.http.h2 import H2Error, huffman_decode

    try:
        expected = decode_huffman(data)
    except HPACKDecodingError:
        with pytest.raises(H2Error):
            huffman_decode(data)
    else:
        assert huffman_decode(data) == expected
