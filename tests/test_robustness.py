"""Damaged captures: load() returns exchanges and stats, or raises CaptureError naming the file.

Real captures (fixtures/captures/real/) and crafted fixtures are truncated, overwritten, and have
bytes inserted or deleted at random. Nothing else may escape, and every read must be quick.
"""

from __future__ import annotations

import gzip
import random
import signal
import socket
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import FIXTURES, REAL
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pytest_replay.capture import CaptureError, load


SMALL_REAL = [
    "arkime_http-no-length_close-delimited.pcap",
    "gor_etg-mapmaker_requests_with_responses.gor",
    "gor_orcid-log-to-gor_requests_converted.gor",
    "gor_traffic-analyzer_real_LF.gor",
    "learngit_http_sll_port85.cap",
    "ppa3_http_ip4and6.pcapng",
    "scapy_http2_h2c.pcap",
    "scapy_http_head.pcapng",
    "scapy_http_content_length.pcap",
    "zeek_http_basic-auth-with-colon_rawip4.pcap",
    "zeek_http-vlan-0.pcap",
]
SMALL_FIXTURES = [
    "crafted/tcp_reorder_retrans.pcap",
    "crafted/seq_wrap.pcap",
    "crafted/pcapng_two_interfaces.pcapng",
    "crafted/ipv4_fragments.pcap",
    "crafted/link_sll2.pcap",
    "crafted/pcap_be_usec.pcap",
    "crafted/pcap_nsec.pcap",
    "recorded/expect_100_continue.pcap",
]
SOURCES = [REAL / n for n in SMALL_REAL if (REAL / n).is_file()] + \
          [FIXTURES / n for n in SMALL_FIXTURES if (FIXTURES / n).is_file()]
ORIGINALS = {p.name: p.read_bytes() for p in SOURCES}
NAMES = sorted(ORIGINALS)
TIME_LIMIT_S = 10


class TooSlow(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise TooSlow(f"reading took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="replay-robust-") as d:
        yield Path(d)


# Bugs already reproduced by the strict xfails below: (exception type, function it is raised in, label).
# A mutation that runs into one of them makes the test xfail (it is not a new finding); anything
# else fails. Hypothesis draws also depend on the constants of the modules imported so far (its
# "local constants"), so whether a property test meets a known bug can change with the test selection.
KNOWN_BUGS: list[tuple[type, str, str]] = []  # all found so far are fixed; their tests stay below


def _functions(exc: BaseException) -> list[str]:
    """Names of the functions the exception went through, innermost last."""
    tb, out = exc.__traceback__, []
    while tb is not None:
        out.append(f"{tb.tb_frame.f_code.co_name}")
        tb = tb.tb_next
    return out


def _where(exc: BaseException) -> str:
    tb, out = exc.__traceback__, []
    while tb is not None:
        out.append(f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno} {tb.tb_frame.f_code.co_name}")
        tb = tb.tb_next
    return " <- ".join(reversed(out[-3:]))


def known_bug(exc: BaseException) -> str | None:
    functions = _functions(exc)
    for kind, function, label in KNOWN_BUGS:
        if isinstance(exc, kind) and function in functions[-3:] + (functions if kind is RecursionError else []):
            return label
    return None


def check_read(path: Path) -> None:
    """load() gives (exchanges, stats) or a CaptureError that names the file; quickly."""
    error: str | None = None
    known: str | None = None
    try:
        with time_limit(TIME_LIMIT_S):
            exchanges, stats = load(str(path))
    except CaptureError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
        assert exc.file == str(path)
        return
    except TooSlow:
        error = f"reading took more than {TIME_LIMIT_S} s"
    except Exception as exc:  # noqa: BLE001 - the point of the test
        # only text leaves the handler: pytest renders a chained 1000-frame RecursionError very slowly
        error = f"load() raised {type(exc).__name__}: {str(exc)[:200]} (at {_where(exc)})"
        known = known_bug(exc)
    if known is not None:
        pytest.xfail(f"{path.name}: known bug: {known}")
    if error is not None:
        raise AssertionError(f"{path.name}: {error}")
    # what came back is consistent
    assert [e.index for e in exchanges] == list(range(len(exchanges)))
    assert [e.request_ts_ns for e in exchanges] == sorted(e.request_ts_ns for e in exchanges)
    assert stats.exchanges == len(exchanges)
    for warning in stats.warnings:
        assert warning.file == str(path)
    for exchange in exchanges:
        assert exchange.source.file == str(path)


def write(workdir: Path, name: str, data: bytes) -> Path:
    path = workdir / f"mutated-{name}"
    path.write_bytes(data)
    return path


SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("name", NAMES)
def test_originals_read_cleanly(name: str, workdir: Path) -> None:
    check_read(write(workdir, name, ORIGINALS[name]))


@SETTINGS
@given(data=st.data())
def test_truncated_anywhere(data, workdir: Path) -> None:
    name = data.draw(st.sampled_from(NAMES), label="file")
    original = ORIGINALS[name]
    cut = data.draw(st.integers(0, len(original) - 1), label="cut")
    check_read(write(workdir, name, original[:cut]))


@SETTINGS
@given(data=st.data())
def test_truncated_every_few_bytes_of_one_file(data, workdir: Path) -> None:
    """Dense truncation of the start of a file: headers and first records are where readers break."""
    name = data.draw(st.sampled_from(NAMES), label="file")
    original = ORIGINALS[name]
    cut = data.draw(st.integers(0, min(len(original) - 1, 200)), label="cut")
    check_read(write(workdir, name, original[:cut]))


def _overwrite(data, original: bytes) -> bytes:
    buf = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        start = data.draw(st.integers(0, len(buf) - 1), label="at")
        if data.draw(st.booleans(), label="range"):
            length = data.draw(st.integers(1, 64), label="length")
            value = data.draw(st.one_of(st.binary(min_size=length, max_size=length),
                                        st.sampled_from([b"\xff" * length, b"\x00" * length])), label="bytes")
        else:
            value = bytes([data.draw(st.integers(0, 255), label="byte")])
        buf[start:start + len(value)] = value
        del buf[len(original):]
    return bytes(buf)


@SETTINGS
@given(data=st.data())
def test_overwritten_bytes(data, workdir: Path) -> None:
    name = data.draw(st.sampled_from(NAMES), label="file")
    check_read(write(workdir, name, _overwrite(data, ORIGINALS[name])))


@SETTINGS
@given(data=st.data())
def test_overwritten_lengths_and_headers(data, workdir: Path) -> None:
    """Overwrite inside the first 64 bytes (file headers, first record header) with extreme values."""
    name = data.draw(st.sampled_from(NAMES), label="file")
    buf = bytearray(ORIGINALS[name])
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        at = data.draw(st.integers(0, min(63, len(buf) - 4)), label="at")
        buf[at:at + 4] = data.draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                                    b"\x00\x00\x01\x00", b"\xff\xff\x00\x00"]), label="value")
    check_read(write(workdir, name, bytes(buf)))


@SETTINGS
@given(data=st.data())
def test_inserted_and_deleted_bytes(data, workdir: Path) -> None:
    name = data.draw(st.sampled_from(NAMES), label="file")
    buf = bytearray(ORIGINALS[name])
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        at = data.draw(st.integers(0, len(buf)), label="at")
        if data.draw(st.booleans(), label="insert"):
            buf[at:at] = data.draw(st.one_of(st.binary(min_size=1, max_size=40),
                                             st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", "\n🐵🙈🙉\n".encode(),
                                                              b"HTTP/1.1 200 OK\r\n", b"GET / HTTP/1.1\r\n"])),
                                   label="inserted")
        else:
            del buf[at:at + data.draw(st.integers(1, 40), label="deleted")]
    check_read(write(workdir, name, bytes(buf)))


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_of_the_first_128_bytes(name: str, workdir: Path) -> None:
    original = ORIGINALS[name]
    for cut in range(0, min(len(original), 128)):
        check_read(write(workdir, name, original[:cut]))


# -- compressed ------------------------------------------------------------------------------------

GOR_NAMES = [n for n in NAMES if n.endswith(".gor")]
PCAP_NAMES = [n for n in NAMES if n.endswith((".pcap", ".cap"))][:4]
PCAPNG_NAMES = [n for n in NAMES if n.endswith(".pcapng")]
NO_SHRINK = settings(SETTINGS, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # for known failures


@SETTINGS
@given(data=st.data())
def test_gzip_gor_truncated_anywhere(data, workdir: Path) -> None:
    name = data.draw(st.sampled_from(GOR_NAMES), label="file")
    z = gzip.compress(ORIGINALS[name])
    cut = data.draw(st.integers(0, len(z) - 1), label="cut")
    check_read(write(workdir, name + ".gz", z[:cut]))


@SETTINGS
@given(data=st.data())
def test_gzip_pcapng_truncated_anywhere(data, workdir: Path) -> None:
    name = data.draw(st.sampled_from(PCAPNG_NAMES), label="file")
    z = gzip.compress(ORIGINALS[name])
    cut = data.draw(st.integers(0, len(z) - 1), label="cut")
    check_read(write(workdir, name + ".gz", z[:cut]))


@NO_SHRINK
@given(data=st.data())
def test_gzip_pcap_truncated_anywhere(data, workdir: Path) -> None:
    name = data.draw(st.sampled_from(PCAP_NAMES), label="file")
    z = gzip.compress(ORIGINALS[name])
    cut = data.draw(st.integers(0, len(z) - 1), label="cut")
    check_read(write(workdir, name + ".gz", z[:cut]))


@NO_SHRINK
@given(data=st.data())
def test_gzip_overwritten_bytes(data, workdir: Path) -> None:
    name = data.draw(st.sampled_from(GOR_NAMES + PCAPNG_NAMES), label="file")
    z = gzip.compress(ORIGINALS[name])
    check_read(write(workdir, name + ".gz", _overwrite(data, z)))


def test_gzip_pcapng_without_trailer_is_reported(workdir: Path) -> None:
    name = PCAPNG_NAMES[0]
    path = write(workdir, name + ".gz", gzip.compress(ORIGINALS[name])[:-8])
    exchanges, stats = load(str(path))
    assert stats.warning_counts["truncated-file"] == 1


# -- crafted reproductions of bugs found by fuzzing ------------------------------------------------


def _pcap(frames: list[bytes], snaplen: int = 65535, linktype: int = 1) -> bytes:
    """A classic little-endian microsecond pcap; frames longer than snaplen are cut (wirelen kept)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)
    for i, frame in enumerate(frames):
        captured = frame[:snaplen]
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, len(captured), len(frame)) + captured
    return out


def _tcp(src: str, sport: int, dst: str, dport: int, payload: bytes, *, seq: int = 1, ack: int = 1,
         flags: int = 0x18) -> bytes:
    """Ethernet + IPv4 + TCP (checksums left zero: the reader does not check them)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    return b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00" + ip + tcp


def test_crafted_pcap_builder_is_read(workdir: Path) -> None:
    frames = [_tcp("10.0.0.1", 40000, "10.0.0.2", 80, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"),
              _tcp("10.0.0.2", 80, "10.0.0.1", 40000, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", ack=28)]
    path = write(workdir, "crafted.pcap", _pcap(frames))
    (ex,), stats = load(str(path))
    assert (ex.label, ex.response.status, ex.response.body, ex.complete) == ("GET /x", 200, b"ok", True)


@pytest.mark.parametrize("frame", [b"", b"\x00" * 10, b"\x00" * 12 + b"\x08\x00",
                                   b"\x00" * 12 + b"\x08\x00\x45" + b"\x00" * 5],
                         ids=["empty", "10-bytes", "ethernet-header-only", "ipv4-first-6-bytes"])
def test_short_ethernet_frame(workdir: Path, frame: bytes) -> None:
    check_read(write(workdir, "short.pcap", _pcap([frame])))


def test_self_connection_with_incomplete_request(workdir: Path) -> None:
    frame = _tcp("127.0.0.1", 80, "127.0.0.1", 80, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    check_read(write(workdir, "self.pcap", _pcap([frame])))


def test_self_connection_is_skipped_and_counted(workdir: Path) -> None:
    # The same address and port on both ends: the two directions cannot be told apart.
    frame = _tcp("127.0.0.1", 80, "127.0.0.1", 80, b"GET / HTTP/1.1\r\n\r\n")
    exchanges, stats = load(str(write(workdir, "self2.pcap", _pcap([frame]))))
    assert exchanges == [] and stats.skipped_streams == {"self-connection": 1}


def test_snaplen_cut_segment_with_pipelined_requests(workdir: Path) -> None:
    payload = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\nX: " + b"y" * 200 + b"\r\n\r\n"
    frame = _tcp("10.0.0.1", 40000, "10.0.0.2", 80, payload)
    check_read(write(workdir, "snap.pcap", _pcap([frame], snaplen=54 + 45)))


def test_cr_without_lf_in_captured_request(workdir: Path) -> None:
    frame = _tcp("10.0.0.1", 40000, "10.0.0.2", 80, b"GET / HTTP/1.1\r\n\rx\r\n\r\n")
    check_read(write(workdir, "cr.pcap", _pcap([frame])))


# -- a denser deterministic fuzz over every small capture ------------------------------------------

FUZZ_NAMES = NAMES + [p.name for p in sorted(FIXTURES.glob("*/*.pcap*"))
                      if not p.name.endswith(".json") and p.stat().st_size < 60_000 and p.name not in ORIGINALS]
FUZZ_DATA = {**ORIGINALS, **{p.name: p.read_bytes() for p in FIXTURES.glob("*/*.pcap*") if p.name in FUZZ_NAMES}}


def _mutate(rng: random.Random, original: bytes) -> bytes:
    buf = bytearray(original)
    if rng.random() < 0.25:
        return bytes(buf[:rng.randrange(len(buf))])
    for _ in range(rng.randint(1, 8)):
        op, at = rng.random(), rng.randrange(len(buf)) if buf else 0
        if op < 0.4:
            n = rng.randint(1, 8)
            buf[at:at + n] = bytes(rng.randrange(256) for _ in range(n))[:len(buf) - at]
        elif op < 0.6:
            buf[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                         b"\x00\x01\x00\x00"])
        elif op < 0.8:
            buf[at:at] = rng.choice([b"\r\n", b"\n", b"\r", b"\r\n\r\n", "\n🐵🙈🙉\n".encode(),
                                     bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))])
        else:
            del buf[at:at + rng.randint(1, 40)]
    return bytes(buf)


def test_dense_seeded_fuzz(workdir: Path) -> None:
    """3000 seeded mutations of every small capture (plain random: independent of Hypothesis)."""
    rng = random.Random(20240601)
    unknown: dict[str, str] = {}
    known: dict[str, str] = {}
    for _ in range(3000):
        name = rng.choice(FUZZ_NAMES)
        path = write(workdir, name, _mutate(rng, FUZZ_DATA[name]))
        try:
            check_read(path)
        except pytest.xfail.Exception as exc:
            known.setdefault(str(exc).split("known bug: ", 1)[-1], name)
        except AssertionError as exc:
            unknown.setdefault(str(exc).split(": ", 1)[-1].split(" (at ")[0][:120], f"{name}: {exc}")
    assert not unknown, unknown
    if known:
        pytest.xfail(f"known bugs met: {sorted(known)}")
