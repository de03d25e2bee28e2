"""Inputs that would exhaust memory, lose data silently or overflow the schedule (issue 10, 3 and 4).

Every bad input is built here, in tmp_path: a gzip bomb is a few hundred small gzip members (a
concatenation of gzip members is one gzip stream), so nothing large is committed or written.
"""

from __future__ import annotations

import gzip
import math
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import FIXTURES, ROOT

from pytest_replay import options
from pytest_replay.capture import Capture, CaptureError, gor, load

MIB = 1 << 20
MEMORY_LIMIT = 1 << 30  # address space allowed to a CLI child: a bomb must stop well before it


# -- builders ---------------------------------------------------------------------------------------

def _tcp(src: str, sport: int, dst: str, dport: int, payload: bytes, *, seq: int = 1, ack: int = 1,
         flags: int = 0x18) -> bytes:
    """Ethernet + IPv4 + TCP (checksums left zero: the reader does not check them)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    return b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00" + ip + tcp


def _frames() -> list[bytes]:
    """Two GET exchanges on one connection: four packets."""
    req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    client, server = ("10.0.0.1", 40000), ("10.0.0.2", 80)
    return [_tcp(*client, *server, req), _tcp(*server, *client, resp, ack=1 + len(req)),
            _tcp(*client, *server, req, seq=1 + len(req), ack=1 + len(resp)),
            _tcp(*server, *client, resp, seq=1 + len(resp), ack=1 + 2 * len(req))]


def _block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def _pcapng(frames: list[bytes], start_us: int = 1_700_000_000 * 1_000_000) -> tuple[bytes, list[int]]:
    """A little-endian pcapng (one Ethernet interface, microseconds) and the file offset of each
    packet block."""
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += _block(1, struct.pack("<HHI", 1, 0, 65535))
    offsets = []
    for i, frame in enumerate(frames):
        ts = start_us + i * 1_000_000
        offsets.append(len(out))
        out += _block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame)
    return out, offsets


def _pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, frame in enumerate(frames):
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame
    return out


GOR_HEAD = b"1 0123456789abcdef01234567 1700000000000000000 0\n"


def _gor_bomb(path: Path, mebibytes: int) -> int:
    """A .gor.gz whose first record never ends: `mebibytes` MiB of one body, no separator. Returns
    the compressed size (about 1 KiB per MiB)."""
    member = gzip.compress(b"a" * MIB, compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(GOR_HEAD + b"POST /upload HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"))
        for _ in range(mebibytes):
            f.write(member)
    return path.stat().st_size


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float, int]:
    """`python -m pytest_replay ARGS` under a 1 GiB address-space limit: (result, seconds, peak RSS in
    MiB of the child, measured by the child itself)."""
    code = ("import resource, sys\nfrom pytest_replay.cli import main\ntry:\n    rc = main(sys.argv[1:])\n"
            "finally:\n    print('peak-rss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "
            "file=sys.stderr)\nsys.exit(rc)\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                            preexec_fn=_limit_memory, cwd=ROOT)
    elapsed = time.monotonic() - started
    lines = result.stderr.splitlines()
    peak = int(lines.pop().split()[1]) if lines and lines[-1].startswith("peak-rss") else -1
    result.stderr = "\n".join(lines) + ("\n" if lines else "")
    return result, elapsed, peak


# -- 3. a record's size is bounded -------------------------------------------------------------------

def test_gor_gz_bomb_stops_at_the_record_limit(tmp_path: Path) -> None:
    """1.2 MB of gzip expanding to 1.2 GB without a separator: one line naming the file and the
    offset, within seconds, in bounded memory (it ran for over 60 s and grew past 970 MB)."""
    bomb = tmp_path / "bomb.gor.gz"
    _gor_bomb(bomb, 1200)
    result, elapsed, peak = cli("inspect", str(bomb))
    assert result.returncode == 1, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {bomb} (record 0, byte 0): ")
    assert "64 MiB" in line and "--max-record-size" in line
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert 0 < peak < 400, f"peak RSS {peak} MiB"


def test_highly_compressible_real_looking_capture_still_loads(tmp_path: Path) -> None:
    """The bound is on a record, not on the compression ratio: keep-alive captures compress 100:1."""
    record = (GOR_HEAD + b"GET /api/items?page=1 HTTP/1.1\r\nHost: shop\r\n\r\n" + gor.SEPARATOR
              + b"2 0123456789abcdef01234567 1700000000001000000 0\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
              b"ok" + gor.SEPARATOR)
    path = tmp_path / "many.gor.gz"
    path.write_bytes(gzip.compress(record * 20_000, compresslevel=9))
    raw = len(record) * 20_000
    assert raw / path.stat().st_size > 100
    exchanges, stats = load(str(path))
    assert len(exchanges) == 20_000 and not stats.warnings


def test_a_record_longer_than_a_block_is_read_in_linear_time(tmp_path: Path, monkeypatch) -> None:
    """A record spanning many read blocks: the buffer was rebuilt on every block (200 MB: 9.7 s,
    843 MB). With 4 KiB blocks, a 16 MiB record is 4096 blocks."""
    monkeypatch.setattr(gor, "CHUNK", 4096)
    body = b"x" * (16 * MIB)
    data = (GOR_HEAD + b"POST /upload HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body + gor.SEPARATOR)
    path = tmp_path / "big.gor"
    path.write_bytes(data)
    started = time.monotonic()
    (exchange,), stats = load(str(path))
    elapsed = time.monotonic() - started
    assert exchange.request.body == body
    assert elapsed < 3, f"took {elapsed:.1f} s"


def test_record_limit_counts_complete_records_too(tmp_path: Path) -> None:
    """A whole record inside one read block is checked as well, not only one spanning blocks."""
    body = b"x" * 5000
    data = GOR_HEAD + b"POST /a HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + body + gor.SEPARATOR
    path = tmp_path / "small-limit.gor"
    path.write_bytes(GOR_HEAD + b"GET / HTTP/1.1\r\n\r\n" + gor.SEPARATOR + data)
    with pytest.raises(CaptureError) as info:
        list(Capture([str(path)], max_record_size=4096))
    assert (info.value.file, info.value.record, info.value.offset) == (str(path), 1, len(GOR_HEAD) + 18 + 14)
    assert "4 KiB" in info.value.message
    assert len(list(Capture([str(path)], max_record_size=8192))) == 2


@pytest.mark.parametrize("command", ["inspect", "convert", "redact"])
def test_cli_commands_take_max_record_size(tmp_path: Path, command: str) -> None:
    body = b"x" * 300_000
    path = tmp_path / "big.gor"
    path.write_bytes(GOR_HEAD + b"POST /a HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body + gor.SEPARATOR)
    out = str(tmp_path / "out.gor")
    extra = {"inspect": [], "convert": [out], "redact": [out]}[command]
    result, _, _ = cli(command, str(path), *extra, "--max-record-size", "100K")
    assert result.returncode == 1, result.stderr + result.stdout
    assert result.stderr.startswith(f"error: {path} (record 0, byte 0): ")
    assert "100 KiB" in result.stderr
    result, _, _ = cli(command, str(path), *extra)  # under the default
    assert result.returncode == 0, result.stderr + result.stdout
    result, _, _ = cli(command, str(path), *extra, "--max-record-size", "lots")
    assert result.returncode == 2 and "--max-record-size" in result.stderr


def test_replay_max_record_size_option_and_ini(pytester: pytest.Pytester) -> None:
    body = b"x" * 300_000
    path = pytester.path / "big.gor"
    path.write_bytes(GOR_HEAD + b"POST /a HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body + gor.SEPARATOR)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(path),
                                           "--replay-max-record-size", "100K", "--co", "-q")
    text = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED, text
    assert "big.gor (record 0, byte 0): " in text and "100 KiB" in text
    pytester.makeini("[pytest]\nreplay_max_record_size = 100K\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(path), "--co", "-q")
    assert "100 KiB" in result.stdout.str()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(path),
                                           "--replay-max-record-size", "1M", "--co", "-q")
    assert result.ret == 0, result.stdout.str()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(path),
                                           "--replay-max-record-size", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--replay-max-record-size: expected" in result.stderr.str()


@pytest.mark.parametrize("text, value", [("64M", 64 * MIB), ("64MiB", 64 * MIB), ("64mb", 64 * MIB),
                                         ("1048576", MIB), ("1.5K", 1536), ("2G", 2 << 30), (" 100 k ", 102400)])
def test_parse_size(text: str, value: int) -> None:
    from pytest_replay.capture.limits import parse_size

    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1", "0", "1000", "nan", "inf", "1e400", "5T0", "64Q"])
def test_parse_size_refuses(text: str) -> None:
    from pytest_replay.capture.limits import parse_size

    with pytest.raises(ValueError, match="expected a size"):
        parse_size(text)


def test_default_record_limit_is_64_mib() -> None:
    from pytest_replay.capture.limits import DEFAULT_MAX_RECORD

    assert DEFAULT_MAX_RECORD == 64 * MIB


# -- 3. truncations and impossible lengths are reported, compressed or not ---------------------------

@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_pcapng_block_claiming_2gb_is_reported_with_its_offset(tmp_path: Path, compressed: bool) -> None:
    """Uncompressed it warned; gzip-compressed it said "2 packets" and nothing else, exit 0."""
    data, offsets = _pcapng(_frames())
    data = bytearray(data)
    struct.pack_into("<I", data, offsets[2] + 4, 0x7FFFFFF0)
    path = tmp_path / ("third.pcapng" + (".gz" if compressed else ""))
    path.write_bytes(gzip.compress(bytes(data)) if compressed else bytes(data))
    result, _, _ = cli("inspect", str(path))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "2 packets" in text
    assert f"{path} (frame 3, byte {offsets[2]}): " in text, text
    assert "a block claims a body of 2147483620 bytes, more than the 64 MiB limit" in text


def test_pcapng_block_beyond_the_end_of_a_gzip_stream_is_reported(tmp_path: Path) -> None:
    """A length under the limit that runs past the end of the decompressed data."""
    data, offsets = _pcapng(_frames())
    data = bytearray(data)
    struct.pack_into("<I", data, offsets[3] + 4, 4096)
    path = tmp_path / "short.pcapng.gz"
    path.write_bytes(gzip.compress(bytes(data)))
    exchanges, stats = load(str(path))
    (warning,) = stats.warnings
    assert (warning.frame, warning.offset) == (4, offsets[3]), warning
    assert warning.kind == "truncated-file"


def test_pcapng_section_header_claiming_2gb_is_an_error_not_a_memory_error(tmp_path: Path) -> None:
    data, _ = _pcapng(_frames())
    data = bytearray(data)
    struct.pack_into("<I", data, 4, 0x80000000)
    path = tmp_path / "shb.pcapng"
    path.write_bytes(bytes(data))
    result, elapsed, _ = cli("inspect", str(path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {path} (byte 0): ") and "a body of 2147483620 bytes" in line


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_pcap_record_claiming_2gb_is_reported_with_its_offset(tmp_path: Path, compressed: bool) -> None:
    data = bytearray(_pcap(_frames()))
    third = 24 + sum(16 + len(f) for f in _frames()[:2])
    struct.pack_into("<I", data, third + 8, 0x7FFFFFF0)
    path = tmp_path / ("third.pcap" + (".gz" if compressed else ""))
    path.write_bytes(gzip.compress(bytes(data)) if compressed else bytes(data))
    exchanges, stats = load(str(path))
    assert stats.packets == 2
    (warning,) = stats.warnings
    assert (warning.kind, warning.frame, warning.offset) == ("damaged-record", 3, third)
    assert "2147483632" in warning.message


def test_timestamps_beyond_the_calendar_are_shown_not_raised(tmp_path: Path) -> None:
    """Found by tests/test_fuzz.py: a damaged pcapng timestamp (year 38558) made `inspect` raise
    ValueError while printing the time range; the evidence package formats times the same way."""
    from pytest_replay.report.evidence import _iso

    path = tmp_path / "future.pcapng"
    path.write_bytes(_pcapng(_frames(), start_us=0xFFFFFFF0 << 32)[0])
    result, _, _ = cli("inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert "out of the calendar's range" in result.stdout
    assert _iso(1 << 70).endswith("(out of the calendar's range)")


# -- 3. timing options the engine cannot honour are usage errors ------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--speed", "1e-320"], "--speed: expected 0 (no waiting) or a number from 1e-06 to 1e+06"),
    (["--rate", "1e-300"], "--rate: expected a number from 1e-06 to 1e+09"),
    (["--speed", "inf"], "--speed: expected 0 (no waiting) or a number from 1e-06 to 1e+06"),
])
def test_timing_the_engine_cannot_honour_is_a_usage_error(pytester: pytest.Pytester, args: list[str],
                                                          message: str) -> None:
    """--speed 1e-320 and --rate 1e-300 crashed every item with a 94-line traceback."""
    demo = FIXTURES / "demo" / "demo.pcap"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(demo), "--replay-target",
                                           "demo", *args, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert message in result.stderr.str()
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "1e-320", "1e300"]


@pytest.mark.parametrize("dest", ["replay_speed", "replay_rate", "replay_max_wait", "replay_timeout",
                                  "replay_max_latency", "replay_middleware_drop_timeout",
                                  "replay_middleware_timeout", "replay_concurrency"])
@pytest.mark.parametrize("text", BAD_NUMBERS)
def test_numeric_options_refuse_values_out_of_range(dest: str, text: str) -> None:
    option = options.BY_DEST[dest]
    with pytest.raises(pytest.UsageError, match=rf"^{option.flag}: expected .*from .* to .*got {text!r}"):
        option.convert(text)


@pytest.mark.parametrize("dest, text, value", [
    ("replay_speed", "0", 0.0), ("replay_speed", "1e-6", 1e-6), ("replay_speed", "1e6", 1e6),
    ("replay_rate", "1e9", 1e9), ("replay_rate", "0.5", 0.5), ("replay_max_wait", "0.001", 0.001),
    ("replay_timeout", "86400", 86400.0), ("replay_concurrency", "100000", 100000),
])
def test_numeric_options_accept_their_range(dest: str, text: str, value: float) -> None:
    assert options.BY_DEST[dest].convert(text) == value


def test_speed_and_rate_bounds_keep_offsets_finite() -> None:
    """At the bounds, a century-long gap still gives a finite integer deadline."""
    from pytest_replay.schedule.plan import Timing, offsets

    century = 100 * 365 * 86400 * 10**9
    slowest = offsets([0, century], Timing(speed=options.speed("1e-6")))
    assert all(isinstance(o, int) for o in slowest) and math.isfinite(float(slowest[-1]))
    assert offsets([0, 1, 2], Timing(rate=options.rate("1e-6")))[-1] == 2 * 10**15


# -- 4. warnings that name a place ------------------------------------------------------------------

def _pcap_record_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    offsets, at = [], 24
    while at + 16 <= len(data):
        offsets.append(at)
        at += 16 + struct.unpack_from(endian + "I", data, at + 8)[0]
    return offsets


def test_skipped_stream_warnings_name_frame_and_byte() -> None:
    path = FIXTURES / "recorded" / "not_http_mixed.pcap"
    _, stats = load(str(path))
    skipped = [w for w in stats.warnings if w.kind.startswith("skipped-")]
    assert len(skipped) == 3
    records = _pcap_record_offsets(path)
    for warning in skipped:
        assert warning.frame is not None and warning.offset == records[warning.frame - 1], warning
        assert f"(frame {warning.frame}, byte {warning.offset}): stream not parsed: " in str(warning)


def test_inspect_shows_where_a_skipped_stream_starts() -> None:
    result, _, _ = cli("inspect", str(FIXTURES / "crafted" / "upgrade_ws_and_h2.pcapng"))
    lines = [line for line in result.stdout.splitlines() if "stream not parsed" in line]
    assert lines and all("(frame " in line and ", byte " in line for line in lines), result.stdout
