"""The pcap fast loop (capture/fast.py) against the reference path (pcap.read_pcap(fast=False)),
on classic pcap and pcapng files.

The fast loop takes steady keep-alive connections off the reference path and hands them back at
anything unusual; whatever happens on a connection, it must give exactly the reference's exchanges,
counts and warnings. Random captures here reorder, duplicate (retransmit), drop and split packets,
pipeline requests, close and reset connections, send packets the loop does not decode itself (IPv4
with options) in the middle of steady connections, and cut the file anywhere.
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
from test_pcap_paths import CLIENT, REQUESTS, RESPONSES, SERVER, _pcap, _pcapng, conversation, summary

from pytest_replay.capture import Capture, fast, load, pcap
from pytest_replay.http.message import Exchange, Source
from pytest_replay.http.parser import Framer

PIPELINED = (REQUESTS[0] + REQUESTS[3], RESPONSES[0] + RESPONSES[3])  # two requests in one segment


def read(path: Path, fast_loop: bool, framer: bool = True) -> tuple[list, dict]:
    saved = pcap.FAST_PATH, Framer.fast_path
    pcap.FAST_PATH, Framer.fast_path = fast_loop, framer
    try:
        exchanges, stats = load(str(path))
    finally:
        pcap.FAST_PATH, Framer.fast_path = saved
    counts = {"packets": stats.packets, "bytes": stats.bytes, "complete": stats.complete, "gaps": stats.gaps,
              "gap_bytes": stats.gap_bytes, "retransmitted": stats.retransmitted_bytes, "lost": dict(stats.lost),
              "orphans": dict(stats.orphan_responses), "warnings": [str(w) for w in stats.warnings],
              "endpoints": dict(stats.endpoints), "incomplete": dict(stats.incomplete),
              "no_response": stats.no_response, "links": dict(stats.link_types), "notes": list(stats.notes),
              "connections": stats.connections, "protocols": dict(stats.protocols), "files": stats.files}
    return [summary(e) for e in exchanges], counts


def with_ip_options(frame: bytes) -> bytes:
    """The same packet with a 4-byte IPv4 option (NOPs): the loop's one unpack does not take it."""
    ip = frame[14:34]
    total = struct.unpack("!H", ip[2:4])[0] + 4
    ip = bytes([0x46]) + ip[1:2] + struct.pack("!H", total) + ip[4:]
    return frame[:14] + ip + b"\x01\x01\x01\x01" + frame[34:]


def closing(port: int, ts_us: int, frames: list[tuple[int, bytes]], reset: bool) -> list[tuple[int, bytes]]:
    """FIN (or RST) from the client after its conversation, at the sequence numbers it reached."""
    cseq = sseq = None
    for _, data in frames:
        sport, dport, seq, ack = struct.unpack("!HHII", data[34:46])
        length = len(data) - 54
        if sport == port:
            cseq = seq + length
            sseq = ack
    if cseq is None:
        return []
    flags = 0x14 if reset else 0x11
    tcp = struct.pack("!HHIIBBHHH", port, 80, cseq & 0xFFFFFFFF, sseq & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, CLIENT, SERVER)
    return [(ts_us, b"\x00" * 12 + b"\x08\x00" + ip + tcp)]


@st.composite
def captures(draw) -> bytes:
    frames = []
    pool = [*zip(REQUESTS, RESPONSES), (REQUESTS[0], RESPONSES[3]), PIPELINED]
    for conn in range(draw(st.integers(1, 3))):
        pairs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=10))
        cuts = draw(st.dictionaries(st.integers(0, 2 * len(pairs) - 1), st.lists(st.integers(1, 1600), max_size=2),
                                    max_size=2))
        port = 40000 + conn
        mine = conversation(pairs, port=port, start_us=1_700_000_000_000_000 + conn * 7, cuts=cuts,
                            handshake=draw(st.booleans()))
        end = draw(st.sampled_from(["open", "open", "fin", "rst"]))
        if end != "open":
            mine += closing(port, mine[-1][0] + 5, mine, end == "rst")
        frames += mine
    frames.sort(key=lambda item: item[0])
    for i in sorted(draw(st.sets(st.integers(0, len(frames) - 1), max_size=3)), reverse=True):
        frames.insert(draw(st.integers(i, len(frames))), frames[i])  # a retransmission, now or later
    for i in draw(st.sets(st.integers(0, len(frames) - 2), max_size=2)):
        frames[i], frames[i + 1] = frames[i + 1], frames[i]  # out of order
    for i in draw(st.sets(st.integers(0, len(frames) - 1), max_size=2)):
        frames[i] = (frames[i][0], with_ip_options(frames[i][1]))
    lost = draw(st.sets(st.integers(0, len(frames) - 1), max_size=2))
    frames = [f for i, f in enumerate(frames) if i not in lost]
    data = (_pcapng if draw(st.booleans()) else _pcap)(frames)
    if draw(st.integers(0, 3)) == 0:
        data = data[:draw(st.integers(24, len(data)))]
    return data


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=captures())
def test_the_fast_loop_reads_what_the_reference_reads(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "random.pcap"
    path.write_bytes(data)
    reference = read(path, fast_loop=False)
    assert read(path, fast_loop=True) == reference
    assert read(path, fast_loop=True) == reference  # again, with the messages now remembered
    assert read(path, fast_loop=False, framer=False) == reference


def dense(tmp_path: Path, name: str = "dense.pcap", connections: int = 3, exchanges: int = 40, ng: bool = False
          ) -> Path:
    frames = []
    for conn in range(connections):
        pairs = [(REQUESTS[0], RESPONSES[0]), (REQUESTS[1], RESPONSES[1]), (REQUESTS[3], RESPONSES[3])] * exchanges
        frames += conversation(pairs[:exchanges], port=41000 + conn, start_us=1_700_000_000_000_000 + conn * 3)
    frames.sort(key=lambda item: item[0])
    path = tmp_path / name
    path.write_bytes((_pcapng if ng else _pcap)(frames))
    return path


def _in_place(exchange: Exchange) -> bool:
    """Built by the fast loop: its Source is made on first use from `_at`."""
    try:
        object.__getattribute__(exchange, "_at")
    except AttributeError:
        return False
    return True


@pytest.mark.parametrize("ng", [False, True], ids=["pcap", "pcapng"])
def test_steady_connections_take_the_fast_loop(tmp_path: Path, ng: bool) -> None:
    """On a dense keep-alive capture all but each connection's first exchanges are built in place by
    the fast loop (one object per exchange), and they are the reference's exchanges."""
    path = dense(tmp_path, ng=ng)
    exchanges = list(Capture(str(path)))
    built = [e for e in exchanges if _in_place(e)]
    assert len(exchanges) == 120 and len(built) == 117  # each connection's first on the reference path
    assert all(type(e) is Exchange for e in exchanges)
    assert read(path, fast_loop=True) == read(path, fast_loop=False)
    saved = pcap.FAST_PATH
    pcap.FAST_PATH = False
    try:
        assert not any(_in_place(e) for e in Capture(str(path)))
    finally:
        pcap.FAST_PATH = saved


def test_an_exchange_built_in_place_is_an_exchange(tmp_path: Path) -> None:
    """Its lazily made Source, equality, hash, repr, replace, copy and pickle are those of an
    Exchange built with all its fields."""
    path = dense(tmp_path, connections=1, exchanges=6)
    x = list(Capture(str(path)))[4]
    assert _in_place(x)
    eager = Exchange(x.index, x.request, x.response, x.request_ts_ns, x.response_ts_ns, x.connection, x.position,
                     Source(str(path), x.source.offset, None, x.source.frames), x.flags, x.replayed, x.scheme,
                     x.server_name)
    x = list(Capture(str(path)))[4]  # its source not read yet
    assert x == eager and hash(x) == hash(eager) and repr(x) == repr(eager)
    assert len(x.source.frames) == 2 and x.source.frames[0] < x.source.frames[1] and x.source.record is None
    for twin in (copy.copy(x), pickle.loads(pickle.dumps(x)), dataclasses.replace(x, position=x.position)):
        assert twin == eager and twin.source == eager.source
    with pytest.raises(dataclasses.FrozenInstanceError):
        x.index = 9
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        x.nope  # noqa: B018


def test_requests_waiting_when_a_connection_is_handed_back(tmp_path: Path) -> None:
    """Pipelined requests wait on a steady connection when a retransmission hands it back: they become
    Drafts in their place, answered in order by the reference; the capture ends with one unanswered."""
    frames = conversation([(REQUESTS[0], RESPONSES[0])] * 4, port=42000)
    cseq = struct.unpack("!I", frames[-1][1][42:46])[0]  # the server's last segment acknowledges this
    sseq = struct.unpack("!I", frames[-1][1][38:42])[0] + len(frames[-1][1]) - 54
    ts = frames[-1][0]
    for n, request in enumerate(REQUESTS[:2] + REQUESTS[:1]):
        tcp = struct.pack("!HHIIBBHHH", 42000, 80, cseq, sseq, 0x50, 0x18, 65535, 0, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(request), 0, 0x4000, 64, 6, 0, CLIENT, SERVER)
        frames.append((ts + 10 + n, b"\x00" * 12 + b"\x08\x00" + ip + tcp + request))
        cseq += len(request)
    frames.append((ts + 20, frames[-2][1]))  # the second request again: a retransmission
    for n, response in enumerate(RESPONSES[:2]):
        tcp = struct.pack("!HHIIBBHHH", 80, 42000, sseq, cseq, 0x50, 0x18, 65535, 0, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(response), 0, 0x4000, 64, 6, 0, SERVER, CLIENT)
        frames.append((ts + 30 + n, b"\x00" * 12 + b"\x08\x00" + ip + tcp + response))
        sseq += len(response)
    path = tmp_path / "waiting.pcap"
    path.write_bytes(_pcap(frames))
    got = read(path, fast_loop=True)
    assert got == read(path, fast_loop=False)
    exchanges = list(Capture(str(path)))
    assert [e.response.status if e.response else None for e in exchanges[4:]] == [200, 200, None]
    assert got[1]["retransmitted"] > 0 and got[1]["no_response"] == 1


def test_a_request_given_up_on_then_answered(tmp_path: Path) -> None:
    """A request on a steady connection left without an answer for longer than the response window is
    released flagged; the late answer is an orphan, as on the reference path."""
    frames = conversation([(REQUESTS[0], RESPONSES[0])] * 3, port=43000)
    late = conversation([(REQUESTS[0], RESPONSES[0])] * 4, port=43000)[-2:]  # the fourth exchange's packets
    late = [(late[0][0], late[0][1]), (late[0][0] + 2 * (pcap.RESPONSE_WINDOW_NS // 1000) + 10**6, late[1][1])]
    filler = conversation([(REQUESTS[0], RESPONSES[0])] * 300, port=43001,
                          start_us=late[0][0] + 10)  # packets in between, so that releases happen
    step = (late[1][0] - late[0][0]) // len(filler)
    filler = [(late[0][0] + 1 + i * step, data) for i, (_, data) in enumerate(filler)]
    path = tmp_path / "late.pcap"
    path.write_bytes(_pcap(sorted(frames + late + filler, key=lambda item: item[0])))
    got = read(path, fast_loop=True)
    assert got == read(path, fast_loop=False)
    assert got[1]["no_response"] == 1 and got[1]["orphans"]


def test_several_files_merge_as_before(tmp_path: Path) -> None:
    """Files read together are merged by timestamp, ties in the order given, on both paths."""
    a, b = dense(tmp_path, "a.pcap", 2, 20), dense(tmp_path, "b.pcap", 1, 30)

    def both(fast_loop: bool) -> list:
        saved = pcap.FAST_PATH
        pcap.FAST_PATH = fast_loop
        try:
            return [summary(e) for e in Capture([str(a), str(b)])]
        finally:
            pcap.FAST_PATH = saved

    merged = both(True)
    assert merged == both(False) and len(merged) == 70
    assert [row[0] for row in merged] == list(range(70))


def test_a_cut_or_damaged_end_is_read_by_the_reference(tmp_path: Path) -> None:
    """The loop stops at a record it cannot read whole; the reference reads (and reports) the rest."""
    ng = dense(tmp_path, "dense.pcapng", connections=2, exchanges=10, ng=True).read_bytes()
    for cut in (len(ng) - 7, len(ng) - 40, 30):
        path = tmp_path / f"cut{cut}.pcapng"
        path.write_bytes(ng[:cut])
        assert read(path, fast_loop=True) == read(path, fast_loop=False)
    data = dense(tmp_path, connections=2, exchanges=10).read_bytes()
    for cut in (len(data) - 7, len(data) - 30, 24 + 5):
        path = tmp_path / f"cut{cut}.pcap"
        path.write_bytes(data[:cut])
        got = read(path, fast_loop=True)
        assert got == read(path, fast_loop=False)
        assert any("the file ends inside" in w for w in got[1]["warnings"])
    damaged = bytearray(data)
    struct.pack_into("<I", damaged, 24 + 8, 10**9)  # the first record claims a gigabyte
    path = tmp_path / "damaged.pcap"
    path.write_bytes(bytes(damaged))
    assert read(path, fast_loop=True) == read(path, fast_loop=False)


def test_the_reference_path_never_runs_the_fast_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = dense(tmp_path, connections=1, exchanges=5)

    def refuse(*args):
        raise AssertionError("the fast loop ran")

    monkeypatch.setattr(fast, "read_fast", refuse)
    assert len(read(path, fast_loop=False)[0]) == 5
    with pytest.raises(AssertionError, match="fast loop ran"):
        read(path, fast_loop=True)


def _segment(from_client: bool, seq: int, ack: int, payload: bytes, port: int) -> bytes:
    sport, dport, src, dst = (port, 80, CLIENT, SERVER) if from_client else (80, port, SERVER, CLIENT)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, 0x18, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload


def test_a_response_acknowledging_request_bytes_not_yet_captured(tmp_path: Path) -> None:
    """The server answers a request and acknowledges the next one, which the capture shows only after
    that answer: the reference declares those bytes missing when the answer starts (the copy seen
    later is a retransmission); the fast loop must hand the connection back rather than pair it."""
    port = 44000
    frames = conversation([(REQUESTS[0], RESPONSES[0])] * 3, port=port)
    cseq = struct.unpack("!I", frames[-1][1][42:46])[0]
    sseq = struct.unpack("!I", frames[-1][1][38:42])[0] + len(frames[-1][1]) - 54
    ts = frames[-1][0]
    a, b = REQUESTS[0], REQUESTS[3]
    frames += [(ts + 10, _segment(True, cseq, sseq, a, port)),
               (ts + 11, _segment(False, sseq, cseq + len(a) + len(b), RESPONSES[0], port)),
               (ts + 12, _segment(True, cseq + len(a), sseq + len(RESPONSES[0]), b, port)),
               (ts + 13, _segment(False, sseq + len(RESPONSES[0]), cseq + len(a) + len(b), RESPONSES[3], port))]
    path = tmp_path / "ahead.pcap"
    path.write_bytes(_pcap(frames))
    got = read(path, fast_loop=True)
    assert got == read(path, fast_loop=False)
    assert got[1]["gaps"] == 1 and len(got[0]) == 4


def test_pcapng_with_two_interfaces(tmp_path: Path) -> None:
    """Packets on a second Ethernet interface (nanosecond timestamps, a time offset) and on a first one
    that is not Ethernet: the loop takes what it can, the reference the rest, with the same result."""
    def block(kind: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", kind, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    def idb(linktype: int, options: bytes = b"") -> bytes:
        return block(1, struct.pack("<HHI", linktype, 0, 0) + options)

    nano_offset = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HHq", 14, 8, 5) + struct.pack("<HH", 0, 0)
    frames = conversation([(REQUESTS[0], RESPONSES[0]), (REQUESTS[3], RESPONSES[3])] * 6, port=45000)
    for first in (1, 101):  # Ethernet, or raw IP (link type 101) on interface 0
        out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)), idb(first), idb(1, nano_offset)]
        for n, (ts_us, data) in enumerate(frames):
            on_first = n % 3 == 2 and first == 1
            ts = ts_us if on_first else ts_us * 1000 - 5 * 10**9  # (the second interface's offset: +5 s)
            out.append(block(6, struct.pack("<IIIII", 0 if on_first else 1, ts >> 32, ts & 0xFFFFFFFF, len(data),
                                            len(data)) + data))
        path = tmp_path / f"two{first}.pcapng"
        path.write_bytes(b"".join(out))
        got = read(path, fast_loop=True)
        assert got == read(path, fast_loop=False)
        assert len(got[0]) == 12 and len({row[3] for row in got[0]}) == 12
        assert sum(_in_place(e) for e in Capture(str(path))) == 11  # all but the connection's first



_PEAK_RSS = """
import sys
from pytest_replay.capture import Capture, pcap
from pytest_replay.capture.fast import FORGET_EVERY
pcap.FAST_PATH = sys.argv[2] != "reference"
if sys.argv[2] == "fast, pages kept":  # (the loop as it was: what the test must catch)
    import pytest_replay.capture.fast as fast
    fast._DONTNEED = None
def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
before = peak()
count = in_place = 0
for exchange in Capture([sys.argv[1]]):  # each dropped once counted: what stays is what the reader holds
    count += 1
    try:
        object.__getattribute__(exchange, "_at")
        in_place += 1
    except AttributeError:
        pass
print(count, in_place, peak() - before, FORGET_EVERY)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
@pytest.mark.parametrize("ng", [False, True], ids=["pcap", "pcapng"])
def test_the_mapped_file_does_not_stay_in_memory(tmp_path: Path, ng: bool) -> None:
    """The fast loop reads the file through mmap, and a mapped page counts in the process's RSS until it
    is unmapped: a 232 MB capture read to its end peaked at 250 MB (the reference, reading in chunks:
    30 MB). Pages read are handed back as the loop goes (FORGET_EVERY): the peak does not grow with the
    file. A ~40 MB capture of 60 KB responses, each in one segment (the loop takes them)."""
    import subprocess
    import sys

    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 60000\r\n\r\n" + b"x" * 60_000
    frames = []
    for conn in range(2):
        frames += conversation([(REQUESTS[0], response)] * 330, port=42000 + conn,
                               start_us=1_700_000_000_000_000 + conn)
    # 10 ms between packets (the conversation's 10 us, x1000): read exchanges are released as the
    # capture's clock moves on, so what stays is what the reader holds, not the exchanges
    start = 1_700_000_000_000_000
    frames = sorted((start + (ts - start) * 1000, data) for ts, data in frames)
    path = tmp_path / ("big.pcapng" if ng else "big.pcap")
    path.write_bytes((_pcapng if ng else _pcap)(frames))
    size = path.stat().st_size
    assert size > 39_000_000
    script = tmp_path / "peak.py"
    script.write_text(_PEAK_RSS)
    grown = {}
    for mode in ("fast", "reference", "fast, pages kept"):
        run = subprocess.run([sys.executable, str(script), str(path), mode], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        count, in_place, grown[mode], forget_every = map(int, run.stdout.split())
        assert count == 660 and (in_place > 600) == (mode != "reference")  # the fast loop read them
    # the reference's own growth (its buffers, the 60 KB messages, imports) plus at most the pages not
    # yet handed back; with the pages kept, the whole file stays mapped
    assert grown["fast"] < grown["reference"] + forget_every + 4_000_000, (grown, size)
    assert grown["fast, pages kept"] > grown["reference"] + size * 0.8, (grown, size)


# -- container variants: byte orders, precisions, interface options, cut packets, blocks between packets -----
def _classic(frames: list[tuple[int, bytes]], endian: str = "<", nano: bool = False, snap: int = 0) -> bytes:
    """A classic pcap; `snap`: packets longer than that are cut to it (their wire length kept)."""
    out = [struct.pack(endian + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts_us, data in frames:
        kept = data[:snap] if snap else data
        frac = ts_us % 1_000_000 * (1000 if nano else 1)
        out.append(struct.pack(endian + "IIII", ts_us // 1_000_000, frac, len(kept), len(data)) + kept)
    return b"".join(out)


def _block(endian: str, kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(endian + "II", kind, len(body) + 12) + body + struct.pack(endian + "I", len(body) + 12)


def _ng(frames: list[tuple[int, bytes]], endian: str = "<", tsresol: int | None = None, offset_s: int = 0,
        snap: int = 0, between: bytes = b"", two: bool = False) -> bytes:
    """A pcapng of one Ethernet interface: if_tsresol (10^-n, or 2^-n with the high bit) and if_tsoffset
    (seconds) as given, the timestamps written so that they read back as the frames' microseconds;
    `between`: blocks put before the packet in the middle of the file; `two`: every other packet on a
    second Ethernet interface (nanoseconds, +7 s offset)."""
    options = b""
    if tsresol is not None:
        options += struct.pack(endian + "HHB3x", 9, 1, tsresol)
    if offset_s:
        options += struct.pack(endian + "HHq", 14, 8, offset_s)
    if options:
        options += struct.pack(endian + "HH", 0, 0)
    power = 6 if tsresol is None else tsresol & 0x7F
    per_s = (2 if tsresol is not None and tsresol & 0x80 else 10) ** power
    out = [_block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1)),
           _block(endian, 1, struct.pack(endian + "HHI", 1, 0, 0) + options)]
    if two:
        out.append(_block(endian, 1, struct.pack(endian + "HHI", 1, 0, 0) + struct.pack(endian + "HHB3x", 9, 1, 9)
                          + struct.pack(endian + "HHq", 14, 8, 7) + struct.pack(endian + "HH", 0, 0)))
    for n, (ts_us, data) in enumerate(frames):
        if n == len(frames) // 2:
            out.append(between)
        second = two and n % 2
        units = ts_us * 1000 - 7 * 10**9 if second else ts_us * per_s // 1_000_000 - offset_s * per_s
        kept = data[:snap] if snap else data
        out.append(_block(endian, 6, struct.pack(endian + "IIIII", int(second), units >> 32, units & 0xFFFFFFFF,
                                                 len(kept), len(data)) + kept))
    return b"".join(out)


STOPPED = 24  # (see _variants)


def _variants(frames: list[tuple[int, bytes]]) -> dict[str, tuple[bytes, int, int]]:
    """name -> (file, exchanges the fast loop builds in place, timestamp units per second). All but each
    connection's first are built in place (57 of 60) where the loop takes every packet; none where it
    takes none (cut packets, units that are no whole number of ns); the first half's 24 where a block
    in the middle stops it (the reference reads the rest: the loop does not start again)."""
    middle = frames[len(frames) // 2][1]
    arp = b"\xff" * 6 + b"\x00" * 6 + b"\x08\x06" + b"\x00" * 28  # (a packet of no connection)
    shb = _block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    return {
        "pcap, big-endian": (_classic(frames, ">"), 57),
        "pcap, nanosecond": (_classic(frames, nano=True), 57),
        "pcap, big-endian nanosecond": (_classic(frames, ">", nano=True), 57),
        "pcap, packets cut to 80 bytes": (_classic(frames, snap=80), 0),
        "pcapng, big-endian": (_ng(frames, ">"), 57),
        "pcapng, ns, +5 s offset": (_ng(frames, tsresol=9, offset_s=5), 57),
        "pcapng, ns, -5 s offset": (_ng(frames, tsresol=9, offset_s=-5), 57),
        "pcapng, big-endian, us, +100 s offset": (_ng(frames, ">", tsresol=6, offset_s=100), 57),
        "pcapng, 2^-9 s units": (_ng(frames, tsresol=0x80 | 9), 57, 2**9),
        "pcapng, 2^-20 s units (not a whole ns)": (_ng(frames, tsresol=0x80 | 20), 0, 2**20),
        "pcapng, packets cut to 80 bytes": (_ng(frames, snap=80), 0),
        "pcapng, a simple packet block between": (
            _ng(frames, between=_block("<", 3, struct.pack("<I", len(arp)) + arp)), STOPPED),
        "pcapng, the next packet in a simple packet block before it": (
            _ng(frames, between=_block("<", 3, struct.pack("<I", len(middle)) + middle)), STOPPED),
        "pcapng, a decryption secrets block between": (
            _ng(frames, between=_block("<", 10, struct.pack("<II", 0x544C534B, 4) + b"abcd")), STOPPED),
        "pcapng, an interface description between": (_ng(frames, between=_block("<", 1, struct.pack("<HHI", 1, 0, 0))),
                                                     STOPPED),
        "pcapng, two interfaces": (_ng(frames, two=True), 57),
        "pcapng, two interfaces, a decryption secrets block between": (
            _ng(frames, two=True, between=_block("<", 10, struct.pack("<II", 0x544C534B, 4) + b"abcd")), STOPPED),
        "pcapng, a new section between": (_ng(frames, between=shb + _block("<", 1, struct.pack("<HHI", 1, 0, 0))),
                                          STOPPED),
    }


def test_container_variants_read_as_the_reference_and_at_the_right_times(tmp_path: Path) -> None:
    """Both byte orders of both containers, nanosecond pcap, snaplen-cut packets, interfaces with
    if_tsresol (decimal, binary, and one whose unit is no whole number of ns) and if_tsoffset (either
    sign), and blocks the loop does not take (SPB, DSB, IDB, SHB) in the middle of the file, where the
    reference resumes pcapng.read_frames(): the same exchanges, counts and warnings as the reference,
    at the capture's own times (not only the same as each other), and the loop takes what it should."""
    frames = []
    for conn in range(3):
        pairs = [(REQUESTS[0], RESPONSES[0]), (REQUESTS[3], RESPONSES[3])] * 10
        frames += conversation(pairs, port=46000 + conn, start_us=1_700_000_000_000_000 + conn * 3)
    frames.sort(key=lambda item: item[0])
    plain = tmp_path / "plain.pcap"
    plain.write_bytes(_classic(frames))
    times = [(row[3], row[4]) for row in read(plain, fast_loop=False)[0]]
    assert len(times) == 60 and times[0][0] == (1_700_000_000_000_000 + 10) * 1000
    for n, (name, (data, in_place, *units)) in enumerate(_variants(frames).items()):
        path = tmp_path / f"variant{n}"
        path.write_bytes(data)
        got = read(path, fast_loop=True)
        assert got == read(path, fast_loop=False), name
        per_s = units[0] if units else 10**6  # (binary units: the capture's time, rounded down to a unit)
        expected = [tuple((t // 1000 * per_s // 10**6) * 10**9 // per_s for t in pair) for pair in times]
        if "the next packet" in name:  # its copy came first, at the time of the block before (resume's last_ts)
            moved, to = (frames[len(frames) // 2][0] * 1000, frames[len(frames) // 2 - 1][0] * 1000)
            assert sum(t == moved for pair in expected for t in pair) == 1
            expected = [tuple(to if t == moved else t for t in pair) for pair in expected]
        assert [(row[3], row[4]) for row in got[0]] == expected, name
        built = sum(_in_place(e) for e in Capture(str(path)))
        assert built == in_place, name
        if "cut to 80" in name:  # the responses (longer than 80 bytes on the wire) are flagged truncated
            assert got[1]["incomplete"] == {"truncated": 60}, (name, got[1])



_SHRINKS = """
import os, sys
from pytest_replay.capture import Capture, pcap
pcap.FAST_PATH = sys.argv[2] == "fast"
capture = Capture(sys.argv[1])
count = 0
for exchange in capture:
    count += 1
    if count == 10:  # another process rewrites the file (tcpdump -w started again on the same name)
        os.truncate(sys.argv[1], int(sys.argv[3]))
print(count)
for warning in capture.stats.warnings:
    print(warning)
"""


@pytest.mark.parametrize("cut", [8192, 2_000_000], ids=["behind the loop", "ahead of the loop"])
@pytest.mark.parametrize("ng", [False, True], ids=["pcap", "pcapng"])
def test_a_capture_cut_short_while_it_is_read(tmp_path: Path, ng: bool, cut: int) -> None:
    """The fast loop reads the file through mmap: touching a mapped page past the end of a file that
    shrank after it was mapped kills the process with SIGBUS (no report, no evidence). A streamed run
    reads its capture for as long as the replay lasts. The reference, reading with read(), sees the
    file end. The loop looks at the file's size again whenever it may have waited (each time it hands
    exchanges out), says that the file shrank, and reads it to its new end (or stops where it is, if
    the new end is behind it)."""
    import subprocess
    import sys

    response = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
    start = 1_700_000_000_000_000
    frames = conversation([(REQUESTS[0], response)] * 3000, port=47000, start_us=start)
    # ~1 ms between exchanges (the conversation's ~21 us, x50): exchanges are handed out as the loop
    # goes, and 3.3 MB: more than the reference's first 1 MiB read
    frames = [(start + (ts - start) * 50, data) for ts, data in frames]
    path = tmp_path / ("shrinks.pcapng" if ng else "shrinks.pcap")
    script = tmp_path / "shrinks.py"
    script.write_text(_SHRINKS)
    for mode in ("reference", "fast"):
        path.write_bytes((_pcapng if ng else _pcap)(frames))
        run = subprocess.run([sys.executable, str(script), str(path), mode, str(cut)], capture_output=True,
                             text=True)
        assert run.returncode == 0, (mode, run.returncode, run.stderr[-2000:])
        count, *warnings = run.stdout.splitlines()
        assert 10 <= int(count) < 3000, (mode, run.stdout)
    shrank = [w for w in warnings if "shrank" in w]
    assert len(shrank) == 1 and shrank[0].startswith(f"{path} (frame "), warnings
    assert f"the file shrank to {cut} bytes while it was read" in shrank[0], shrank
    if cut > 1_000_000:  # read on to the new end, which cuts a packet: the reference says so
        assert shrank[0].endswith("it is read to its new end") and len(warnings) == 2, warnings
        assert "the file ends inside" in warnings[1] and int(count) > 1500, (count, warnings)
    else:
        assert shrank[0].endswith("the packets from here on were not read") and warnings == shrank, warnings
