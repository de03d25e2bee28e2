"""HTTP/2 (h2c) reading cost: a large synthetic capture, and the frame/HPACK layers measured against
the hyperframe and hpack packages on the same bytes.

    python bench/bench_h2.py [connections] [streams per connection]

The traffic is made by python-hyper h2 (client and server state machines talking in memory: real
HPACK with dynamic-table reuse and Huffman coding), written to a pcap by pytest_replay's own writer
(each connection's client bytes as one "request", server bytes as one "response", cut into MSS
segments), then read back with pytest_replay.capture.load.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hpack
from hyperframe.frame import Frame

from pytest_replay.capture import load
from pytest_replay.capture.writer import write_pcap
from pytest_replay.http.h2 import PREFACE, H2Session, HpackDecoder
from pytest_replay.http.message import Exchange, Request, Response, Source

HEADERS_COMMON = [("user-agent", "bench/1.0"), ("accept", "application/json"), ("cookie", "session=abcdef0123456789")]


def connection_bytes(streams: int, seed: int) -> tuple[bytes, bytes]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    cbytes = client.data_to_send()
    server.receive_data(cbytes)
    sbytes = server.data_to_send()
    client.receive_data(sbytes)
    for i in range(streams):
        sid = client.get_next_available_stream_id()
        post = i % 4 == 0
        client.send_headers(sid, [(":method", "POST" if post else "GET"), (":path", f"/api/items/{seed}/{i}"),
                                  (":scheme", "http"), (":authority", "bench.test"), *HEADERS_COMMON],
                            end_stream=not post)
        if post:
            client.send_data(sid, b'{"name": "item %d"}' % i, end_stream=True)
        data = client.data_to_send()
        cbytes += data
        for event in server.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                server.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/json"),
                                                      ("cache-control", "no-store"), ("x-request", str(i))])
                server.send_data(event.stream_id, b'{"id": %d, "ok": true, "pad": "%s"}' % (i, b"x" * 200),
                                 end_stream=True)
        data = server.data_to_send()
        sbytes += data
        for event in client.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        cbytes += client.data_to_send()
    return cbytes, sbytes


def walk_ours(data: bytes) -> int:
    pos, n, count = len(PREFACE) if data.startswith(PREFACE) else 0, len(data), 0
    while n - pos >= 9:
        length = int.from_bytes(data[pos:pos + 3], "big")
        _ftype, _flags = data[pos + 3], data[pos + 4]
        _sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        _payload = data[pos + 9:pos + 9 + length]
        pos += 9 + length
        count += 1
    return count


def walk_hyperframe(data: bytes) -> int:
    pos, n, count = len(PREFACE) if data.startswith(PREFACE) else 0, len(data), 0
    view = memoryview(data)
    while n - pos >= 9:
        frame, length = Frame.parse_frame_header(view[pos:pos + 9])
        frame.parse_body(view[pos + 9:pos + 9 + length])
        pos += 9 + length
        count += 1
    return count


def header_blocks(data: bytes) -> list[bytes]:
    """The HEADERS payloads of one direction (h2's encoder does not pad, prioritise or continue)."""
    out = []
    pos = len(PREFACE) if data.startswith(PREFACE) else 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == 1:
            out.append(data[pos + 9:pos + 9 + length])
        pos += 9 + length
    return out


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    conns = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    pairs = [connection_bytes(per, c) for c in range(conns)]
    streams = conns * per
    total = sum(len(c) + len(s) for c, s in pairs)
    fake = []
    for c, (cb, sb) in enumerate(pairs):
        request = Request("GET", "/", "1.1", b"", b"", cb)
        response = Response(200, "OK", "1.1", b"", b"", sb)
        fake.append(Exchange(c, request, response, 10**18 + c * 10**6, 10**18 + c * 10**6 + 1000,
                             f"10.0.{c // 250}.{c % 250 + 1}:{40000 + c} -> 10.1.0.1:80", 0, Source("bench", 0)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "h2c.pcap"
        write_pcap(fake, path)
        size = path.stat().st_size
        start = time.perf_counter()
        exchanges, stats = load(str(path))
        elapsed = time.perf_counter() - start
    assert len(exchanges) == streams and all(e.complete for e in exchanges), (len(exchanges), stats.protocols)
    print(f"capture: {conns} connections, {streams} streams, {total / 1e6:.1f} MB of HTTP/2, pcap {size / 1e6:.1f} MB")
    print(f"load(): {elapsed:.2f} s, {streams / elapsed:,.0f} exchanges/s")

    frames_total = sum(walk_ours(c) + walk_ours(s) for c, s in pairs)
    ours = sum(timed(walk_ours, c) + timed(walk_ours, s) for c, s in pairs)
    theirs = sum(timed(walk_hyperframe, c) + timed(walk_hyperframe, s) for c, s in pairs)
    print(f"frames ({frames_total}): direct walk {ours * 1e9 / frames_total:.0f} ns/frame, "
          f"hyperframe parse_frame_header+parse_body {theirs * 1e9 / frames_total:.0f} ns/frame")

    blocks = [(header_blocks(c), header_blocks(s)) for c, s in pairs]
    nblocks = sum(len(a) + len(b) for a, b in blocks)

    def ours_hpack() -> None:
        for cb, sb in blocks:
            for side in (cb, sb):
                decoder = HpackDecoder()
                for block in side:
                    decoder.decode(block)

    def theirs_hpack() -> None:
        for cb, sb in blocks:
            for side in (cb, sb):
                decoder = hpack.Decoder()
                for block in side:
                    decoder.decode(block, raw=True)

    ours, theirs = timed(ours_hpack), timed(theirs_hpack)
    print(f"HPACK ({nblocks} header blocks): ours {ours * 1e6 / nblocks:.1f} us/block, "
          f"hpack.Decoder {theirs * 1e6 / nblocks:.1f} us/block")

    def session_only() -> None:
        for cb, sb in pairs:
            session = H2Session()
            session.feed(True, cb)
            session.feed(False, sb)
            session.finish()

    t = timed(session_only)
    print(f"H2Session alone (frames, HPACK, streams, HTTP/1.1 heads not built): {streams / t:,.0f} streams/s")


if __name__ == "__main__":
    main()
