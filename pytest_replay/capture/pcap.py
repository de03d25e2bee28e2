"""pcap and pcapng files: frames from scapy's raw readers, then decode, reassembly and framing.

scapy's RawPcapReader/RawPcapNgReader parse the containers (both byte orders, micro- and
nanosecond pcap, pcapng with several interfaces, link types and timestamp resolutions). They stop
quietly at the first damaged record, so this module watches the file position and scapy's log to
report where a file breaks off and why, and guards against absurd record lengths.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from ..reassembly.flows import DEFAULT_SERVER_PORTS, FlowTable
from .draft import Draft, Reorder
from .link import LINKTYPE_NAMES, Decoder
from .stats import CaptureError, CaptureStats, CaptureWarning

PCAP_MAGICS = (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1")
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
MAX_READ = 16 << 20  # no sane capture record is larger; bigger reads are capped to what the file has
SCAPY_MAX_CAPLEN = 0xFFFF * 4  # scapy's RawPcapReader keeps at most this much of a record
RELEASE_LAG_NS = 10**9  # a finished exchange waits this long (capture time) for earlier ones to appear
RESPONSE_WINDOW_NS = 120 * 10**9  # a request without a response start this long after it has none
RELEASE_EVERY = 256  # packets between releases


class _Guarded(io.RawIOBase):
    """A file wrapper that never asks the OS for more bytes than the file has left."""

    def __init__(self, raw: BinaryIO, size: int | None, name: str) -> None:
        self._raw = raw
        self._size = size
        self.name = name

    def read(self, n: int = -1) -> bytes:
        if self._size is not None and (n is None or n < 0 or n > MAX_READ):
            n = max(0, self._size - self._raw.tell())
        return self._raw.read(n)

    def tell(self) -> int:
        return self._raw.tell()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()


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


def read_frames(name: str, stream: BinaryIO, size: int | None, stats: CaptureStats, info: dict
                ) -> Iterator[tuple[int, int, int, bytes, int, int]]:
    """Yield (frame number, ts_ns, link type, data, bytes cut off, file offset) per packet."""
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader, RawPcapReader

    guarded = _Guarded(stream, size, name)
    log: list[str] = []
    with _scapy_log(log):
        try:
            reader = RawPcapReader(guarded)
        except (Scapy_Exception, EOFError, OSError, ValueError) as exc:
            raise CaptureError(name, f"not a readable pcap or pcapng file: {exc}"
                               + (f" ({log[-1]})" if log else ""), offset=0) from None
        ng = isinstance(reader, RawPcapNgReader)
        fmt = "pcapng" if ng else ("pcap (nanosecond)" if reader.nano else "pcap")
        info["format"] = fmt
        nano = getattr(reader, "nano", False)
        pcap_linktype = getattr(reader, "linktype", None)
        frame = 0
        last_ts = 0
        link_names = stats.link_types
        while True:
            where = guarded.tell()
            try:
                data, meta = reader._read_packet()
            except EOFError:
                break
            except (Scapy_Exception, OSError, ValueError, MemoryError) as exc:
                log.append(str(exc))
                break
            frame += 1
            if ng:
                linktype = meta.linktype
                if meta.tshigh is None:  # simple packet block: no timestamp
                    ts = last_ts
                else:
                    ts = ((meta.tshigh << 32) | meta.tslow) * 10**9 // meta.tsresol
                wirelen = meta.wirelen
                caplen = len(data)
            else:
                linktype = pcap_linktype
                ts = meta.sec * 10**9 + (meta.usec if nano else meta.usec * 1000)
                wirelen = meta.wirelen
                caplen = meta.caplen
                if len(data) < min(caplen, SCAPY_MAX_CAPLEN):
                    stats.warn(CaptureWarning(name, "truncated-file", f"the file ends inside this packet: "
                                              f"{len(data)} of {caplen} captured bytes present", offset=where,
                                              frame=frame))
            last_ts = ts
            link_names[LINKTYPE_NAMES.get(linktype, f"link type {linktype}")] += 1
            yield frame, ts, linktype, data, max(0, wirelen - len(data)) if wirelen >= caplen else 0, where
        end = guarded.tell()
        if size is not None and where < size and (end < size or log):
            why = f": {log[-1]}" if log else ""
            stats.warn(CaptureWarning(name, "truncated-file", f"reading stopped at a damaged or incomplete "
                                      f"record{why}; {size - where} bytes from here on were not read",
                                      offset=where, frame=frame + 1))
        elif log and any("truncated" in line.lower() or "invalid" in line.lower() for line in log):
            stats.warn(CaptureWarning(name, "damaged-record", "; ".join(log[-3:]), offset=where))


def read_pcap(name: str, stream: BinaryIO, size: int | None, stats: CaptureStats, info: dict,
              server_ports: frozenset[int] = DEFAULT_SERVER_PORTS) -> Iterator[Draft]:
    """Drafts of one pcap/pcapng file, released in request-timestamp order."""
    decoder = Decoder(stats.not_decoded, stats.fragments)
    reorder = Reorder()
    table = FlowTable(name, stats, reorder, server_ports)
    packet = table.packet
    decode = decoder.decode
    now = 0
    frames = 0

    def ready(draft: Draft) -> bool:
        if draft.request is None:
            return False
        if draft.done:
            return draft.ts <= now - RELEASE_LAG_NS
        if draft.ts < now - RESPONSE_WINDOW_NS:
            draft.flags.append(_no_response_in_window())
            draft.done = True
            return True
        return False

    for frame, ts, linktype, data, cut, where in read_frames(name, stream, size, stats, info):
        frames = frame
        stats.bytes += len(data)
        if ts > now:
            now = ts
        seg = decode(linktype, data, ts)
        if seg is not None:
            if cut and not seg.missing:
                seg.missing = 0  # cut bytes beyond the IP datagram (link trailer): nothing lost
            packet(seg, ts, frame, where)
        if frame % RELEASE_EVERY == 0:
            yield from reorder.pop_ready(ready)
    stats.packets += frames
    info["packets"] = frames
    table.finish()
    decoder.finish()
    for key in [k for k in stats.not_decoded if k.startswith("unknown link type")]:
        stats.note(f"{name}: {stats.not_decoded[key]} packets with {key}: not decoded")
    yield from reorder.drain()


def _no_response_in_window():
    from ..http.message import NO_RESPONSE, Flag

    return Flag(NO_RESPONSE, "response", f"no response within {RESPONSE_WINDOW_NS // 10**9} s of capture time")
