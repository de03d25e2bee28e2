"""capture/pcapng.py, the pcapng block reader, against scapy's RawPcapNgReader (the reader it replaced).

Both read every pcapng fixture and random valid files (either byte order, several interfaces and
timestamp resolutions, options, simple and enhanced packet blocks, blocks to skip): the frames
(timestamp, link type, data, bytes cut off) must be the same. Damaged files are read through the
whole pipeline by test_bounds.py, test_robustness.py and test_fuzz.py.
"""

from __future__ import annotations

import gzip
import io
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import FIXTURES

from pytest_replay.capture import load, pcapng
from pytest_replay.capture.limits import DEFAULT_MAX_RECORD
from pytest_replay.capture.pcap import _pcapng_frames, open_reader
from pytest_replay.reassembly.stats import CaptureStats

PCAPNG_FIXTURES = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and p.name.endswith((".pcapng", ".pcapng.gz")))


def ours(data: bytes, fast: bool | None = None) -> tuple[list[tuple], CaptureStats]:
    stats = CaptureStats()
    frames = list(pcapng.read_frames("f.pcapng", io.BytesIO(data), len(data), stats, {}, DEFAULT_MAX_RECORD,
                                     fast=fast))
    return frames, stats


def scapys(data: bytes) -> list[tuple]:
    stats = CaptureStats()
    reader = open_reader("f.pcapng", io.BytesIO(data), len(data))
    return list(_pcapng_frames("f.pcapng", reader, len(data), stats, {}))


def without_offsets(frames: list[tuple]) -> list[tuple]:
    return [frame[:4] for frame in frames]


def test_there_are_pcapng_fixtures() -> None:
    assert len(PCAPNG_FIXTURES) >= 4


@pytest.mark.parametrize("path", PCAPNG_FIXTURES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_fixture_frames_are_scapys(path) -> None:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    frames, stats = ours(data)
    assert frames and not stats.warnings, stats.warnings
    assert without_offsets(frames) == without_offsets(scapys(data))
    for *_, where in frames:  # the offset of the packet's own block (scapy's pointed at any block before it)
        assert struct.unpack_from("<I" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">I", data, where)[0] in (2, 3, 6)


# -- random valid files ------------------------------------------------------------------------------

def _block(endian: str, kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(endian + "II", kind, length) + body + struct.pack(endian + "I", length)


def _options(endian: str, options: list[tuple[int, bytes]]) -> bytes:
    out = b""
    for code, value in options:
        out += struct.pack(endian + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)
    return out + (struct.pack(endian + "HH", 0, 0) if options else b"")


@st.composite
def pcapng_files(draw, tsoffset: bool = False) -> bytes:
    """Random valid files; with `tsoffset`, interfaces may also carry an if_tsoffset (scapy ignores it,
    so only the comparisons of our own paths use it)."""
    endian = draw(st.sampled_from(["<", ">"]))
    shb = struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _options(endian, draw(st.sampled_from(
        [[], [(4, b"test writer")]])))
    out = _block(endian, 0x0A0D0D0A, shb)
    interfaces = []
    for _ in range(draw(st.integers(1, 3))):
        linktype = draw(st.sampled_from([1, 101, 113, 0]))
        snaplen = draw(st.sampled_from([65535, 262144, 96]))
        options = []
        resol = draw(st.sampled_from([None, 6, 9, 3, 0x80 | 10]))
        if resol is not None:
            options.append((9, bytes([resol])))
        if draw(st.booleans()):
            options.append((2, b"eth0"))
        if tsoffset and draw(st.booleans()):
            options.append((14, struct.pack(endian + "q", draw(st.integers(-2**31, 2**31)))))
        interfaces.append((linktype, snaplen))
        out += _block(endian, 1, struct.pack(endian + "HHI", linktype, 0, snaplen) + _options(endian, options))
    for _ in range(draw(st.integers(0, 12))):
        what = draw(st.sampled_from(["epb", "epb", "spb", "skip"]))
        data = draw(st.binary(max_size=200))
        if what == "epb":
            intid = draw(st.integers(0, len(interfaces) - 1))
            ts = draw(st.integers(0, 2**63))
            wirelen = len(data) + draw(st.sampled_from([0, 0, 10]))
            options = _options(endian, draw(st.sampled_from([[], [(1, b"a comment")], [(2, struct.pack(endian + "I", 1))]])))
            out += _block(endian, 6, struct.pack(endian + "IIIII", intid, ts >> 32, ts & 0xFFFFFFFF, len(data), wirelen)
                          + data + b"\0" * (-len(data) % 4) + options)
        elif what == "spb":
            data = data[:interfaces[0][1]]
            out += _block(endian, 3, struct.pack(endian + "I", len(data)) + data)
        else:
            out += _block(endian, draw(st.sampled_from([4, 5, 0x40000BAD])), data)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pcapng_files())
def test_random_files_give_scapys_frames(data: bytes) -> None:
    frames, stats = ours(data)
    assert not stats.warnings
    assert without_offsets(frames) == without_offsets(scapys(data))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pcapng_files(), st.data())
def test_cut_files_keep_the_frames_before_the_cut_and_say_where(data: bytes, draw) -> None:
    """Cut anywhere after the section header: every whole packet block before the cut is read, and a
    cut inside a block is one truncated-file warning at that block's offset."""
    whole, _ = ours(data)
    cut = draw.draw(st.integers(28, len(data)))
    frames, stats = ours(data[:cut])
    endian = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    before_cut = [f for f in whole if f[4] + struct.unpack_from(endian + "I", data, f[4] + 4)[0] <= cut]
    assert frames == before_cut
    assert all(w.kind == "truncated-file" for w in stats.warnings) and len(stats.warnings) <= 1
    if stats.warnings:
        assert stats.warnings[0].offset < cut


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pcapng_files(tsoffset=True), st.data())
def test_the_fast_block_path_reads_what_the_general_path_reads(data: bytes, draw) -> None:
    """read_frames(fast=True) reads whole Enhanced Packet Blocks with one unpack; on random files, cut
    anywhere or with a byte changed (damaged lengths, interfaces, timestamps), it gives the general
    path's frames, offsets and warnings."""
    if draw.draw(st.booleans(), label="damaged"):
        at = draw.draw(st.integers(28, len(data) - 1), label="at")
        data = data[:at] + bytes([draw.draw(st.integers(0, 255), label="byte")]) + data[at + 1:]
    data = data[:draw.draw(st.integers(28, len(data)), label="cut")]
    fast, fast_stats = ours(data, fast=True)
    general, general_stats = ours(data, fast=False)
    assert fast == general
    assert [str(w) for w in fast_stats.warnings] == [str(w) for w in general_stats.warnings]


def test_a_packet_longer_than_65535_bytes_is_kept_whole(tmp_path) -> None:
    """scapy cut such packets to 65,535 bytes without saying so (loopback captures have them)."""
    endian = "<"
    shb = _block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(endian, 1, struct.pack(endian + "HHI", 1, 0, 262144))
    data = bytes(range(256)) * 300  # 76,800 bytes
    epb = _block(endian, 6, struct.pack(endian + "IIIII", 0, 0, 1, len(data), len(data)) + data)
    frames, stats = ours(shb + idb + epb)
    assert [(len(f[2]), f[3]) for f in frames] == [(len(data), 0)] and not stats.warnings
    assert len(scapys(shb + idb + epb)[0][2]) == 65535


def test_damaged_trailing_length_is_reported_with_frame_and_offset(tmp_path) -> None:
    endian = "<"
    shb = _block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(endian, 1, struct.pack(endian + "HHI", 1, 0, 262144))
    epb = _block(endian, 6, struct.pack(endian + "IIIII", 0, 0, 1, 4, 4) + b"abcd")
    bad = bytearray(epb)
    bad[-4:] = struct.pack("<I", 999)
    path = tmp_path / "bad.pcapng"
    path.write_bytes(shb + idb + epb + bytes(bad) + epb)
    _, stats = load(str(path))
    (warning,) = stats.warnings
    assert (warning.kind, warning.frame, warning.offset) == ("damaged-record", 2, len(shb + idb + epb))
    assert "trailing length (999)" in warning.message
    assert stats.packets == 1


@pytest.mark.parametrize("name", ["recorded/many_2000_nginx.pcap", "crafted/pcapng_two_interfaces.pcapng"])
def test_reading_ethernet_captures_does_not_import_scapy(name: str) -> None:
    """scapy (~0.5 s to import) is needed only for rare link types now: pcap and pcapng containers
    are read without it."""
    import subprocess
    import sys

    from support import pythonpath_env

    code = ("import sys; from pytest_replay.capture import load; exchanges, stats = load(sys.argv[1]); "
            "assert exchanges and not stats.warnings, stats.warnings; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scapy'))")
    out = subprocess.run([sys.executable, "-c", code, str(FIXTURES / name)], capture_output=True, text=True,
                         env=pythonpath_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


BIG_BODY_APP = """
import pytest

async def app(scope, receive, send):
    if scope["type"] == "http":
        body = b"x" * 65417 + b"CHANGED!!!"  # the capture's body ends in ten x's
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

@pytest.fixture(scope="session")
def replay_target():
    return app
"""


def test_a_response_in_one_64k_loopback_packet_is_judged_whole(pytester: pytest.Pytester, monkeypatch) -> None:
    """On loopback (MTU 65536) a response fits one 65,549-byte frame. scapy cut such packets to 65,535
    bytes: the exchange was flagged truncated and only its status was compared, so a change in the
    body's last bytes passed. Read whole, the body is compared and the change fails the item."""
    from pytest_replay.capture import writer
    from pytest_replay.http.message import Exchange, Request, Response, Source

    body = b"x" * 65427  # with its 68-byte head: a 65,495-byte segment, the most an IPv4 packet holds
    request = Request.build("GET", "/big", ((b"Host", b"127.0.0.1"),))
    response = Response.build(200, "OK", ((b"Content-Type", b"text/plain"),
                                          (b"Content-Length", b"%d" % len(body))), body)
    ts = 1_700_000_000 * 10**9
    exchange = Exchange(0, request, response, ts, ts + 10**6, "10.0.0.1:40000 -> 10.0.0.2:80", 0, Source("made", 0))
    monkeypatch.setitem(writer.MSS, 4, 65495)  # one segment per message, as on loopback
    capture = pytester.path / "big.pcapng"
    writer.write_pcap([exchange], capture, ng=True)
    (read,), stats = load(str(capture))
    assert read.complete and read.response.body == body, read.flags
    assert max(len(frame[2]) for frame in ours(capture.read_bytes())[0]) == 14 + 65535  # one frame, whole

    pytester.makeconftest(BIG_BODY_APP)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--speed", "0",
                                           "-q", "-rf", timeout=300)
    result.assert_outcomes(failed=1)
    assert "CHANGED!!!" in result.stdout.str()
