"""pcapng files read block by block, without scapy (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng).

The blocks a capture of HTTP traffic holds are read here: Section Header (byte order, a new list of
interfaces), Interface Description (link type, snapshot length, timestamp resolution and offset),
Enhanced, Simple and (obsolete) Packet Blocks, and Decryption Secrets (handed to a callback). Other
blocks (statistics, name resolution, custom, process information) are skipped whole.

Why not scapy's RawPcapNgReader, which read these files before: it makes four reads, a namedtuple
and an options dict per packet, which cost more than decoding and reassembling the packet itself
(dense captures read ~1.5x faster through this module), it cuts packets longer than 65,535 bytes
to that length without saying so, and it stops quietly where a file is damaged (pcap.py had to watch
its log and the file position to say where and why). Here the file is read in 1 MiB pieces, every
length is checked before it is used, and a damaged or cut block is reported with its frame number
and file offset; the packets before it are kept.

tests/test_pcapng.py checks that this reader gives scapy's frames (data, timestamps, link types,
lengths) on every pcapng fixture and on random valid files.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..reassembly.stats import CaptureError, CaptureStats, CaptureWarning
from .blocks import read_block
from .limits import format_size

BLOCK = 1 << 20  # the file is read in pieces of this size
SHB, IDB, PB, SPB, EPB, DSB = 0x0A0D0D0A, 1, 2, 3, 6, 10
SHB_BYTES = b"\x0a\x0d\x0d\x0a"  # the same in both byte orders
_BYTE_ORDER = {b"\x1a\x2b\x3c\x4d": ">", b"\x4d\x3c\x2b\x1a": "<"}
RAISE_LIMIT = ("if the block is genuine, raise the limit with --replay-max-record-size (pytest) or "
               "--max-record-size (inspect, convert, redact)")


class _Structs:
    """The struct formats of one byte order, made once per section."""

    def __init__(self, endian: str) -> None:
        self.endian = endian
        self.word = struct.Struct(endian + "I").unpack_from
        self.head = struct.Struct(endian + "II").unpack_from  # block type, total length
        self.epb = struct.Struct(endian + "IIIII").unpack_from  # interface, ts high, ts low, caplen, wirelen
        self.epb_block = struct.Struct(endian + "IIIIIII").unpack_from  # block type and length, then as epb
        self.pb = struct.Struct(endian + "HHIIII").unpack_from  # interface, drops, ts high, ts low, caplen, wirelen
        self.idb = struct.Struct(endian + "HxxI").unpack_from  # link type, snapshot length
        self.option = struct.Struct(endian + "HH").unpack_from  # code, length
        self.short = struct.Struct(endian + "H").unpack_from
        self.offset = struct.Struct(endian + "q").unpack_from


class Interface:
    """What an Interface Description Block says about the packets captured on it."""

    __slots__ = ("linktype", "snaplen", "resolution", "offset_ns", "scale")

    def __init__(self, linktype: int, snaplen: int, resolution: int, offset_ns: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen  # 0: no limit
        self.resolution = resolution  # timestamp units per second
        self.offset_ns = offset_ns  # if_tsoffset, in nanoseconds
        # nanoseconds per unit when a whole number (read_frames' common block), else None: ts_ns()
        self.scale = 1_000_000_000 // resolution if 1_000_000_000 % resolution == 0 else None

    def ts_ns(self, high: int, low: int) -> int:
        units = (high << 32) | low
        resolution = self.resolution
        if resolution == 1_000_000:
            return units * 1000 + self.offset_ns
        if resolution == 1_000_000_000:
            return units + self.offset_ns
        return units * 1_000_000_000 // resolution + self.offset_ns


def _interface(body: bytes, s: _Structs) -> Interface:
    linktype, snaplen = s.idb(body, 0)
    resolution, offset_ns = 1_000_000, 0
    at = 8
    while at + 4 <= len(body):
        code, length = s.option(body, at)
        value = body[at + 4:at + 4 + length]
        if code == 0 or len(value) < length:
            break
        if code == 9 and length == 1:  # if_tsresol: 10^-n, or 2^-n with the high bit set
            power = value[0] & 0x7F
            resolution = (2 if value[0] & 0x80 else 10) ** power
        elif code == 14 and length == 8:  # if_tsoffset: seconds added to every timestamp
            offset_ns = s.offset(value, 0)[0] * 1_000_000_000
        at += 4 + length + (-length % 4)
    return Interface(linktype, snaplen, max(1, resolution), offset_ns)


FAST_PATH = True  # read_frames()' default: whole Enhanced Packet Blocks read at once (tests run both ways)


def read_frames(name: str, stream: BinaryIO, size: int | None, stats: CaptureStats, info: dict, limit: int,
                on_secrets: Callable[[bytes, str], None] | None = None, fast: bool | None = None,
                resume: tuple | None = None) -> Iterator[tuple[int, int, bytes, int, int]]:
    """(ts_ns, link type, data, bytes cut off, file offset of the block) of each packet block.

    `fast` (default FAST_PATH): a whole Enhanced Packet Block of a described interface, with lengths
    that agree, is read with one unpack (most blocks of a capture); the general path below, which
    checks each thing in turn and says what is wrong, is the reference and reads everything else.

    A block longer than `limit` bytes, a length that is not a multiple of 4 or disagrees with the
    block's trailing copy, a packet longer than its block, and a file that ends inside a block are
    reported (stats warnings with the frame number and offset) and reading stops there; the packets
    before are kept. A damaged first section header is a CaptureError: nothing can be read.

    `resume`: (file offset, frames read, _Structs, interfaces, last timestamp) where another reader
    (capture/fast.py) stopped, the stream positioned at that offset.
    """
    info["format"] = "pcapng"
    broken: list[BaseException] = []
    buf = b""
    pos = 0  # where the next block starts in buf
    base = 0  # file offset of buf[0]
    frame = 0
    s: _Structs | None = None
    interfaces: list[Interface] = []
    last_ts = 0  # a Simple Packet Block has no timestamp: the previous packet's is used
    fast = FAST_PATH if fast is None else fast
    if resume is not None:
        base, frame, s, interfaces, last_ts = resume

    def warn(kind: str, message: str) -> None:
        stats.warn(CaptureWarning(name, kind, message, offset=base + pos, frame=frame + 1))

    def more(need: int) -> bool:
        """Read until buf holds `need` bytes from pos; False at the end of the data."""
        nonlocal buf, base, pos
        if broken:
            return False
        parts = [buf[pos:]]
        have = len(parts[0])
        while have < need:
            data, error = read_block(stream, max(BLOCK, need - have))
            if data:
                parts.append(data)
                have += len(data)
            if error is not None:
                broken.append(error)
                stats.warn(CaptureWarning(name, "truncated-file", f"the compressed stream breaks off ({error}); "
                                          "the packets before this point are kept", offset=base + pos + have,
                                          frame=frame + 1))
                break
            if not data:
                break
        base += pos
        pos = 0
        buf = b"".join(parts)
        return have >= need

    while True:
        if fast and s is not None and len(buf) - pos >= 32:
            # The common block, read at once: a whole Enhanced Packet Block of a described interface
            # whose lengths agree. Anything else (or any doubt) goes the general way below.
            kind, length, intid, high, low, caplen, wirelen = s.epb_block(buf, pos)
            if (kind == EPB and caplen <= length - 32 and length <= len(buf) - pos and length <= limit
                    and not length & 3 and intid < len(interfaces) and s.word(buf, pos + length - 4)[0] == length):
                iface = interfaces[intid]
                last_ts = iface.ts_ns(high, low) if iface.scale is None else \
                    ((high << 32) | low) * iface.scale + iface.offset_ns
                frame += 1
                yield last_ts, iface.linktype, buf[pos + 28:pos + 28 + caplen], \
                    wirelen - caplen if wirelen > caplen else 0, base + pos
                pos += length
                continue
        if len(buf) - pos < 12 and not more(12):
            left = len(buf) - pos
            if left and not broken:
                warn("truncated-file", f"the file ends inside a block header ({left} of 12 bytes)")
            break
        if buf[pos:pos + 4] == SHB_BYTES:
            endian = _BYTE_ORDER.get(buf[pos + 8:pos + 12])
            if endian is None:
                if s is None:
                    raise CaptureError(name, f"the section header block has no byte-order magic "
                                       f"(1a2b3c4d, either byte order): {buf[pos + 8:pos + 12].hex()}", offset=base + pos)
                warn("damaged-record", f"a section header block without its byte-order magic "
                     f"({buf[pos + 8:pos + 12].hex()}); the rest of the file was not read")
                break
            if s is None or s.endian != endian:
                s = _Structs(endian)
            kind, length = SHB, s.word(buf, pos + 4)[0]
        else:
            if s is None:
                raise CaptureError(name, "not a pcapng file: it does not start with a section header block",
                                   offset=0)
            kind, length = s.head(buf, pos)
        if length > limit:
            body = length - (28 if kind == SHB else 12)
            if s is not None and kind == SHB and base + pos == 0:
                raise CaptureError(name, f"the section header block claims a body of {body} bytes, more than "
                                   f"the {format_size(limit)} limit on a block: the file is damaged, or {RAISE_LIMIT}",
                                   offset=0)
            rest = "the rest of the file was" if size is None else f"{max(0, size - base - pos)} bytes from here on were"
            warn("damaged-record", f"a block claims a body of {body} bytes, more than the {format_size(limit)} "
                 f"limit on a block; {rest} not read ({RAISE_LIMIT})")
            break
        if length < (28 if kind == SHB else 12) or length % 4:
            if kind == SHB and base + pos == 0:
                raise CaptureError(name, f"the section header block's length ({length}) is impossible "
                                   "(at least 28, a multiple of 4)", offset=0)
            warn("damaged-record", f"block length {length} is impossible (at least 12, a multiple of 4); "
                 "the rest of the file was not read")
            break
        if len(buf) - pos < length and not more(length):
            if not broken:
                warn("truncated-file", f"the file ends inside a block: {len(buf) - pos} of its {length} bytes "
                     "are present")
            break
        if s.word(buf, pos + length - 4)[0] != length:
            warn("damaged-record", f"the block's trailing length ({s.word(buf, pos + length - 4)[0]}) differs "
                 f"from its leading length ({length}); the rest of the file was not read")
            break
        if kind == EPB or kind == PB:
            if length < 32:
                warn("damaged-record", f"a packet block of {length} bytes is too short for its fields; "
                     "the rest of the file was not read")
                break
            if kind == EPB:
                intid, high, low, caplen, wirelen = s.epb(buf, pos + 8)
            else:
                intid, _, high, low, caplen, wirelen = s.pb(buf, pos + 8)
            if caplen > length - 32:
                warn("damaged-record", f"a packet block claims {caplen} captured bytes, more than its "
                     f"{length}-byte block holds; the rest of the file was not read")
                break
            if intid >= len(interfaces):
                warn("damaged-record", f"a packet of interface {intid}, which no interface description "
                     f"block before it describes ({len(interfaces)} described); the packet is skipped")
                pos += length
                continue
            iface = interfaces[intid]
            last_ts = iface.ts_ns(high, low)
            frame += 1
            start = pos + 28
            yield last_ts, iface.linktype, buf[start:start + caplen], wirelen - caplen if wirelen > caplen else 0, \
                base + pos
        elif kind == SPB:
            if not interfaces:
                warn("damaged-record", "a simple packet block before any interface description block; "
                     "the packet is skipped")
                pos += length
                continue
            iface = interfaces[0]
            wirelen = s.word(buf, pos + 8)[0]
            caplen = min(wirelen, length - 16)
            if iface.snaplen:
                caplen = min(caplen, iface.snaplen)
            frame += 1
            yield last_ts, iface.linktype, buf[pos + 12:pos + 12 + caplen], wirelen - caplen, base + pos
        elif kind == IDB:
            if length < 20:
                warn("damaged-record", f"an interface description block of {length} bytes is too short; "
                     "the rest of the file was not read")
                break
            interfaces.append(_interface(buf[pos + 8:pos + length - 4], s))
        elif kind == SHB:
            if s.short(buf, pos + 12)[0] != 1:
                message = f"pcapng major version {s.short(buf, pos + 12)[0]} is not supported (1 is)"
                if base + pos == 0:
                    raise CaptureError(name, message, offset=0)
                warn("damaged-record", message + "; the rest of the file was not read")
                break
            interfaces = []  # a new section describes its own interfaces
        elif kind == DSB and on_secrets is not None:
            on_secrets(buf[pos + 8:pos + length - 4], s.endian)
        pos += length
    info["packets"] = frame
