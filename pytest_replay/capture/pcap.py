"""pcap and pcapng files: frames, then decode, reassembly and framing.

Classic pcap records are read here (_classic_frames: both byte orders, micro- and nanosecond) and
pcapng blocks by pcapng.py; neither needs scapy. scapy's RawPcapReader/RawPcapNgReader remain as
the reference the tests compare with (open_reader, _pcapng_frames): they stop quietly at the first
damaged record, so with them this module watches the file position and scapy's log to report where
a file breaks off and why, and guards against absurd record lengths.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from heapq import heappop
from typing import BinaryIO

from ..http.message import NO_RESPONSE, Flag
from ..http.parser import Framer
from ..reassembly.flows import DEFAULT_SERVER_PORTS, FlowTable
from ..reassembly.draft import Draft, Reorder
from .link import LINKTYPE_NAMES, Decoder
from .limits import DEFAULT_MAX_RECORD, MAX_PACKET, format_size
from ..reassembly.stats import CaptureError, CaptureStats, CaptureWarning
from .blocks import read_block
from . import pcapng

RELEASE_LAG_NS = 100_000_000  # a finished exchange waits this long (capture time) for earlier ones to appear
RESPONSE_WINDOW_NS = 120 * 10**9  # a request without a response start this long after it has none
RELEASE_EVERY = 256  # packets between releases
BLOCK = 1 << 20  # classic pcap is read in blocks of this size


class _Refused(EOFError):
    """A read longer than the limit was asked for (a length field claiming gigabytes)."""


class _Bounded(io.RawIOBase):
    """The stream scapy's readers see: a read longer than `limit` is refused before anything is
    allocated (raising _Refused, an EOFError to scapy, and remembered in `refused`), and a long read
    is never longer than what the file has left, when its size is known (uncompressed)."""

    def __init__(self, raw: BinaryIO, size: int | None, name: str, limit: int) -> None:
        self._raw = raw
        self._size = size
        self.name = name
        self.limit = limit
        self.refused: tuple[int, int] | None = None  # (stream offset, bytes asked for)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = self.limit
        elif n > self.limit:
            self.refused = (self._raw.tell(), n)
            raise _Refused(f"a read of {n} bytes refused")
        if self._size is not None and n > BLOCK:  # small reads (most) need no look at the position
            n = min(n, max(0, self._size - self._raw.tell()))
        return self._raw.read(n)

    def tell(self) -> int:
        return self._raw.tell()

    def readable(self) -> bool:
        return True

    # close() (also called when this wrapper is collected) leaves the stream open: its opener closes it


@contextmanager
def _scapy_log(messages: list[str]):
    """Collect what scapy's readers log (why they stopped) instead of printing it."""
    logger = logging.getLogger("scapy.runtime")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def open_reader(name: str, stream: BinaryIO, size: int | None, limit: int = DEFAULT_MAX_RECORD):
    """scapy's raw reader for the stream (pcap or pcapng, chosen by its magic number).

    scapy reads pcapng block lengths before checking them, so it reads through a _Bounded stream,
    from the section header on; a classic pcap's records are read here (_classic_frames), from the
    stream itself (read1() keeps what a broken gzip stream decompressed)."""
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader, RawPcapReader

    bounded = _Bounded(stream, size, name, limit)
    log: list[str] = []
    with _scapy_log(log):
        try:
            reader = RawPcapReader(bounded)
        except (Scapy_Exception, EOFError, OSError, ValueError) as exc:
            if bounded.refused is not None:
                at, asked = bounded.refused
                raise CaptureError(name, f"the section header block claims a body of {asked} bytes, more than "
                                   f"the {format_size(limit)} limit on a block: the file is damaged, or "
                                   f"{_RAISE_LIMIT}", offset=0) from None
            raise CaptureError(name, f"not a readable pcap or pcapng file: {exc}"
                               + (f" ({log[-1]})" if log else ""), offset=0) from None
    if not isinstance(reader, RawPcapNgReader):
        reader.f = stream
    return reader


class _ClassicHeader:
    """What the 24-byte file header of a classic pcap says (the attributes _classic_frames reads of
    scapy's RawPcapReader, which is not needed, nor imported, to read one)."""

    __slots__ = ("f", "endian", "nano", "linktype", "snaplen")

    _MAGICS = {b"\xa1\xb2\xc3\xd4": (">", False), b"\xd4\xc3\xb2\xa1": ("<", False),
               b"\xa1\xb2\x3c\x4d": (">", True), b"\x4d\x3c\xb2\xa1": ("<", True)}


def _classic_header(name: str, stream: BinaryIO) -> _ClassicHeader:
    data, error = read_block(stream, 24)
    header = _ClassicHeader()
    magic = _ClassicHeader._MAGICS.get(data[:4])
    if magic is None:
        raise CaptureError(name, f"not a pcap file: bad magic number {data[:4].hex()}", offset=0)
    if len(data) < 24:
        why = f"the compressed stream breaks off ({error})" if error is not None else "the file ends"
        raise CaptureError(name, f"not a readable pcap file: {why} inside the 24-byte file header "
                           f"({len(data)} bytes)", offset=0)
    header.f = stream
    header.endian, header.nano = magic
    header.snaplen, header.linktype = struct.unpack_from(header.endian + "II", data, 16)
    return header


_RAISE_LIMIT = ("if the block is genuine, raise the limit with --replay-max-record-size (pytest) or "
                "--max-record-size (inspect, convert, redact)")


FAST_PATH = True  # read_pcap()'s default: capture/fast.py for uncompressed classic pcaps (tests run both ways)


def read_pcap(name: str, stream: BinaryIO, size: int | None, stats: CaptureStats, info: dict,
              server_ports: frozenset[int] = DEFAULT_SERVER_PORTS,
              max_record_size: int = DEFAULT_MAX_RECORD, keylog=None, fast: bool | None = None
              ) -> Iterator[list]:
    """Drafts of one pcap/pcapng file, released in request-timestamp order, in lists.

    `fast` (default FAST_PATH, and only with the framer's fast path, Framer.fast_path): an
    uncompressed classic pcap or pcapng is read by capture/fast.py, whose packet loop keeps steady keep-alive
    connections in plain lists and builds one object per exchange (an Exchange filled in place, not
    a Draft); everything else, and every connection or packet it does not take, goes through the
    reference below (`_read_reference`), which tests compare it with."""
    fast = FAST_PATH if fast is None else fast
    if fast and Framer.fast_path and size and info.get("format") in ("pcap", "pcapng") and hasattr(stream, "fileno"):
        from .fast import read_fast

        return read_fast(name, stream, size, stats, info, server_ports, max_record_size, keylog)
    return _read_reference(name, stream, size, stats, info, server_ports, max_record_size, keylog)


class Reading:
    """One pcap file being read: the reassembly state and the loop's counters (read_pcap's reference
    loop, `packets()`, and capture/fast.py's loop hand it to each other)."""

    __slots__ = ("name", "stats", "info", "decoder", "reorder", "table", "link_counts", "ethernet", "now", "frame",
                 "first", "nbytes", "now_block")

    def __init__(self, name: str, stats: CaptureStats, info: dict, server_ports: frozenset[int], keylog) -> None:
        self.name = name
        self.stats = stats
        self.info = info
        self.decoder = Decoder(stats.not_decoded, stats.fragments)
        self.reorder = Reorder()
        self.table = FlowTable(name, stats, self.reorder, server_ports, keylog)
        self.link_counts: dict[int, int] = {}
        self.ethernet = 0  # link type 1 is counted apart (a local is cheaper) and added to link_counts at the end
        self.now = self.frame = 0
        self.first: int | None = None
        self.nbytes = 0
        self.now_block = 0  # capture/fast.py: the last pcapng packet block's timestamp


def _read_reference(name: str, stream: BinaryIO, size: int | None, stats: CaptureStats, info: dict,
                    server_ports: frozenset[int] = DEFAULT_SERVER_PORTS,
                    max_record_size: int = DEFAULT_MAX_RECORD, keylog=None) -> Iterator[list[Draft]]:
    """read_pcap()'s reference path: frames from the container readers, then packets()."""
    reading = Reading(name, stats, info, server_ports, keylog)
    table = reading.table
    if info.get("format") == "pcapng":  # recognised by its magic number (capture.open_capture)
        frames = pcapng.read_frames(name, stream, size, stats, info, max_record_size, _secrets_block(name, table, stats))
    elif info.get("format") == "pcap":
        frames = _classic_frames(name, _classic_header(name, stream), size, stats, info,
                                 min(MAX_PACKET, max_record_size))
    else:  # not recognised by the caller: scapy's readers (the reference of tests/test_pcapng.py)
        reader = open_reader(name, stream, size, max_record_size)
        frames = _classic_frames(name, reader, size, stats, info, min(MAX_PACKET, max_record_size)) \
            if hasattr(reader, "nano") else _pcapng_frames(name, reader, size, stats, info)
    yield from packets(frames, reading)
    yield from finish(reading)


def packets(frames, reading: Reading) -> Iterator[list[Draft]]:
    """Decode, reassemble and frame each frame; the drafts released on the way, in lists.

    This loop runs once per packet, so it is written for speed: locals instead of attribute
    lookups, and Ethernet/IPv4/TCP (most captures) decoded inline; everything else goes through
    the decoder tables in link.py. Its counters start from `reading`'s and are stored back there.
    """
    decoder, reorder, table = reading.decoder, reading.reorder, reading.table
    flows = table.flows
    new_packet = table.packet
    decode = decoder.decode
    unpack_ipv4_tcp = _ETH_IPV4_TCP.unpack_from
    link_counts = reading.link_counts
    ethernet = reading.ethernet
    now, frame, first, nbytes = reading.now, reading.frame, reading.first, reading.nbytes
    for ts, linktype, data, cut, where in frames:
        frame += 1
        captured = len(data)
        nbytes += captured
        if ts > now:
            now = ts
            if first is None:
                first = ts
        if linktype == 1:
            if not ethernet:
                link_counts.setdefault(1, 0)  # keeps the order in which link types were first seen
            ethernet += 1
            if cut == 0 and captured >= 54:
                # One unpack for the Ethernet, IPv4 and TCP fields, then the checks: Ethernet,
                # IPv4 without options, TCP, not a fragment, nothing cut off.
                etype, ver_ihl, total, fragment, proto, src, dst, sport, dport, seq, ack, doff, flags = \
                    unpack_ipv4_tcp(data)
                if etype == 0x0800 and ver_ihl == 0x45 and proto == 6 and not fragment & 0x3FFF:
                    end = 14 + total
                    start = 34 + ((doff >> 4) << 2)
                    if start <= end <= captured and doff >= 0x50:
                        entry = flows.get((src, sport, dst, dport))
                        payload = data[start:end] if start < end else b""
                        if entry is not None and flags & 0x02 == 0:
                            entry[0].packet(entry[1], seq, ack, flags, payload, 0, ts, frame, where)
                        else:
                            new_packet(src, sport, dst, dport, seq, ack, flags, payload, 0, ts, frame, where)
                        if frame % RELEASE_EVERY == 0 and (out := _release(reorder, now)):
                            yield out
                        continue
        else:
            link_counts[linktype] = link_counts.get(linktype, 0) + 1
        seg = decode(linktype, data, ts)
        if seg is not None:
            if cut < 0:  # the file ends inside this packet: what is missing is the capture's end
                seg = seg[:-1] + (0,)
            new_packet(*seg, decoder.ts_ns, frame, where)
        if frame % RELEASE_EVERY == 0 and (out := _release(reorder, now)):
            yield out
    reading.ethernet = ethernet
    reading.now, reading.frame, reading.first, reading.nbytes = now, frame, first, nbytes


def finish(reading: Reading) -> Iterator[list[Draft]]:
    """The file ended: the counts, every connection settled, the drafts still held released."""
    stats, info, name = reading.stats, reading.info, reading.name
    link_counts = reading.link_counts
    if reading.ethernet:
        link_counts[1] += reading.ethernet
    stats.packets += reading.frame
    stats.bytes += reading.nbytes
    info["packets"] = reading.frame
    if reading.first is not None:
        stats.see_ts(reading.first)
        stats.see_ts(reading.now)
        info["first_ts_ns"], info["last_ts_ns"] = reading.first, reading.now
    for linktype, count in link_counts.items():
        stats.link_types[LINKTYPE_NAMES.get(linktype, f"link type {linktype}")] += count
    reading.table.finish()
    reading.decoder.finish()
    for key in [k for k in stats.not_decoded if k.startswith("unknown link type")]:
        stats.note(f"{name}: {stats.not_decoded[key]} packets with {key}: not decoded")
    out = reading.reorder.drain()
    for draft in out:
        if type(draft) is Draft:
            draft.settle_request()
    if out:
        yield out


def _release(reorder: Reorder, now: int) -> list[Draft]:
    """The drafts that may leave, in order: done and old enough (capture time) that nothing earlier
    can still appear, or given up on (no response start within RESPONSE_WINDOW_NS)."""
    run, late = reorder.run, reorder.late
    out = []
    settled_by = now - RELEASE_LAG_NS
    given_up_before = now - RESPONSE_WINDOW_NS
    while run or late:
        from_late = late and (not run or late[0] < run[0])  # Reorder.first(), inlined
        draft = (late if from_late else run)[0][2]
        if draft.request is None:
            break
        if draft.done:
            if draft.ts > settled_by:
                break
        elif draft.ts < given_up_before:
            draft.flags += (Flag(NO_RESPONSE, "response",
                                 f"no response within {RESPONSE_WINDOW_NS // 10**9} s of capture time"),)
            draft.done = True
        else:
            break
        if from_late:
            heappop(late)
        else:
            run.popleft()
        out.append(draft)
    return out


def _classic_frames(name: str, reader, size: int | None, stats: CaptureStats, info: dict, limit: int = MAX_PACKET,
                    base: int = 24, frame: int = 0) -> Iterator[tuple[int, int, bytes, int, int]]:
    """(ts_ns, link type, data, bytes cut off, file offset) of each record of a classic pcap; bytes
    cut off is -1 for a last record the file ends inside. The stream is at file offset `base`, past
    `frame` records (capture/fast.py hands the rest of a file over from where it stops).

    scapy's RawPcapReader has read the file header (magic, byte order, precision, link type); the
    records are read here in 1 MiB blocks, which is three times faster per packet than scapy's
    two reads per record, and a damaged record length is reported instead of skipped over
    (tests check this against scapy's own record loop).
    """
    nano = reader.nano
    info["format"] = "pcap (nanosecond)" if nano else "pcap"
    linktype = reader.linktype
    unpack = struct.Struct(reader.endian + "IIII").unpack_from
    stream = reader.f
    scale = 1 if nano else 1000
    broken: BaseException | None = None

    def read(size: int) -> bytes:
        nonlocal broken
        data, error = read_block(stream, size)
        if error is not None and broken is None:
            broken = error
            stats.warn(CaptureWarning(name, "truncated-file", f"the compressed stream breaks off ({error}); "
                                      "the packets before this point are kept", offset=base + len(buf),
                                      frame=frame + 1))
        return data

    buf = b""
    avail = 0  # len(buf), kept in a local: this loop runs once per packet
    pos = 0  # base: the file offset of buf[0]
    while broken is None or avail - pos >= 16:
        if avail - pos < 16:
            more = read(BLOCK)
            if not more:
                break
            buf = buf[pos:] + more
            avail = len(buf)
            base += pos
            pos = 0
            if avail < 16:
                continue
        sec, frac, caplen, wirelen = unpack(buf, pos)
        if caplen > limit:
            rest = "the rest of the file" if size is None else f"{max(0, size - base - pos)} bytes"
            stats.warn(CaptureWarning(name, "damaged-record", f"packet record claims {caplen} captured bytes, "
                                      f"more than the {format_size(limit)} limit on a packet; the file is damaged "
                                      f"from here ({rest} not read)", offset=base + pos, frame=frame + 1))
            return
        end = pos + 16 + caplen
        where = base + pos
        if end > avail:
            more = read(max(BLOCK, caplen + 16)) if broken is None else b""
            if more:
                buf = buf[pos:] + more
                avail = len(buf)
                base += pos
                pos = 0
                continue
            data = buf[pos + 16:]
            if broken is None:
                stats.warn(CaptureWarning(name, "truncated-file", f"the file ends inside this packet: {len(data)} "
                                          f"of {caplen} captured bytes present", offset=where, frame=frame + 1))
            end = avail
            cut = -1  # marks "the capture ends here" for the packet loop
        else:
            data = buf[pos + 16:end]
            cut = wirelen - caplen if wirelen > caplen else 0
        frame += 1
        yield sec * 1_000_000_000 + frac * scale, linktype, data, cut, where
        pos = end
    if avail - pos > 0 and broken is None:
        stats.warn(CaptureWarning(name, "truncated-file", f"the file ends inside a packet record header "
                                  f"({avail - pos} of 16 bytes)", offset=base + pos, frame=frame + 1))


def _pcapng_frames(name: str, reader, size: int | None, stats: CaptureStats, info: dict
                   ) -> Iterator[tuple[int, int, bytes, int, int]]:
    """(ts_ns, link type, data, bytes cut off, file offset) of each packet block, from scapy's
    RawPcapNgReader (several interfaces, link types and timestamp resolutions)."""
    from scapy.error import Scapy_Exception

    info["format"] = "pcapng"
    read_packet = reader._read_packet
    tell = reader.f.tell
    log: list[str] = []
    frame = 0
    where = tell()
    last = 0
    with _scapy_log(log):
        while True:
            where = tell()
            try:
                data, meta = read_packet()
            except EOFError:
                break
            except (Scapy_Exception, OSError, ValueError) as exc:
                log.append(str(exc))
                break
            frame += 1
            if meta.tshigh is not None:  # a simple packet block has no timestamp
                last = ((meta.tshigh << 32) | meta.tslow) * 10**9 // meta.tsresol
            yield last, meta.linktype, data, max(0, meta.wirelen - len(data)), where
    _report_end(name, stats, reader, size, where, frame, log)


def _secrets_block(name: str, table: FlowTable, stats: CaptureStats):
    """The handler of pcapng Decryption Secrets Blocks (`editcap --inject-secrets tls,keys.log`):
    their TLS key logs are used to decrypt this file's connections, and never copied anywhere."""

    def secrets_block(block: bytes, endian: str) -> None:
        if len(block) < 8:
            return
        kind, length = struct.unpack(endian + "II", block[:8])
        if kind != 0x544C534B:  # "TLSK"; other secrets (WireGuard, ZigBee...) are not ours
            stats.note(f"{name}: a Decryption Secrets Block of type 0x{kind:08x} is not used")
            return
        if table.keylog is None:
            from ..tls.keylog import KeyLog

            table.keylog = KeyLog()
        kept = table.keylog.add_text(block[8:8 + length], f"{name} (pcapng Decryption Secrets Block)")
        stats.note(f"{name}: TLS key log embedded in the capture (Decryption Secrets Block, {kept} secrets) "
                   "used for decryption")

    return secrets_block


def _read_secrets(name: str, reader, table: FlowTable, stats: CaptureStats) -> None:
    """scapy's RawPcapNgReader (the reference reader of tests/test_pcapng.py) with the same handler."""
    handler = _secrets_block(name, table, stats)
    reader.blocktypes = {**reader.blocktypes, 10: lambda block, size: handler(block, reader.endian)}


def _report_end(name: str, stats: CaptureStats, reader, size: int | None, where: int, frames: int,
                log: list[str]) -> None:
    """Say where and why scapy's reader stopped if it did not read the file to its end."""
    why = f": {log[-1]}" if log else ""
    refused = getattr(reader.f, "refused", None)
    if refused is not None:
        rest = "the rest of the file was" if size is None else f"{max(0, size - where)} bytes from here on were"
        stats.warn(CaptureWarning(name, "damaged-record", f"a block claims a body of {refused[1]} bytes, more than "
                                  f"the {format_size(reader.f.limit)} limit on a block; {rest} not read "
                                  f"({_RAISE_LIMIT})", offset=where, frame=frames + 1))
        return
    end = reader.f.tell()
    if size is None:  # compressed: scapy turns a broken stream into a quiet end; look for ourselves
        rest, error = read_block(reader.f, 1)
        if error is not None:
            stats.warn(CaptureWarning(name, "truncated-file", f"the compressed stream breaks off ({error}); the "
                                      "packets before this point are kept", offset=where, frame=frames + 1))
        elif rest:
            stats.warn(CaptureWarning(name, "truncated-file", f"reading stopped at a damaged or incomplete "
                                      f"block{why}; the rest of the file was not read", offset=where, frame=frames + 1))
        elif end > where:  # the last block began but did not end: its length runs past the data
            stats.warn(CaptureWarning(name, "truncated-file", f"the decompressed data ends inside a block{why}; "
                                      f"{end - where} bytes from here on were not read", offset=where,
                                      frame=frames + 1))
        elif log:
            stats.warn(CaptureWarning(name, "damaged-record", "; ".join(log[-3:]), offset=where))
        return
    if where < size and (end < size or log):
        stats.warn(CaptureWarning(name, "truncated-file", f"reading stopped at a damaged or incomplete block"
                                  f"{why}; {size - where} bytes from here on were not read", offset=where,
                                  frame=frames + 1))
    elif log:
        stats.warn(CaptureWarning(name, "damaged-record", "; ".join(log[-3:]), offset=where))


# Ethernet type, IPv4 version/IHL, total length, fragment field, protocol, addresses; TCP ports,
# sequence and acknowledgement numbers, data offset, flags.
_ETH_IPV4_TCP = struct.Struct("!12xHBxH2xHxB2x4s4sHHIIBB")
