"""Capture writers: exchanges out to GoReplay .gor files and to pcap/pcapng files.

    write_gor(exchanges, "out.gor")          # types 1 and 2, as GoReplay writes them (.gz: compressed)
    write_pcap(exchanges, "out.pcap")        # classic pcap, nanosecond timestamps
    write_pcap(exchanges, "out.pcapng", ng=True)

Both stream: exchanges are written as they come (a pcap writer holds only the packets whose time has
not come yet, and one small record per connection). Only requests that are whole are written (the
others cannot be replayed), with their response when it was captured whole; what is left out is
counted in the returned WriteResult.

A pcap is regenerated, not copied: one TCP conversation per connection of the exchanges (addresses
and ports from connection names like ``10.0.0.1:51534 -> 10.0.0.2:80`` or ``[::1]:5 -> [::1]:80``,
synthetic 10.x addresses for others, such as .gor connections), with a handshake, request and
response bytes in segments of at most one MSS (1460 bytes over IPv4, 1440 over IPv6) with correct
sequence and acknowledgement numbers and checksums, and FIN at the end. A message's first segment
carries its timestamp (request_ts_ns / response_ts_ns); its next segments follow 1 us apart. Reading
the file back gives the same messages, order, timestamps, connection grouping and positions.
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import os
import re
import struct
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from heapq import heappop, heappush
from typing import BinaryIO

from ..http.message import Exchange
from .gor import SEPARATOR

__all__ = ["GorAppender", "WriteResult", "gor_id", "gor_record", "gor_records", "write_gor", "write_pcap"]

STEP_NS = 1_000  # between the segments of one message, and the packets of a handshake or a close
HANDSHAKE_NS = 3 * STEP_NS  # SYN, SYN-ACK and ACK end 1 us before the request's first byte
LAG_NS = 10 * STEP_NS  # packets older than (next request - LAG_NS) can no longer be preceded: written
MSS = {4: 1460, 6: 1440}
SNAPLEN = 262_144
LINKTYPE_ETHERNET = 1
CLIENT_MAC, SERVER_MAC = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
SYNTHETIC_SERVER = (bytes([10, 255, 255, 254]), 80)
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
MSS_OPTION = {4: b"\x02\x04" + struct.pack("!H", MSS[4]), 6: b"\x02\x04" + struct.pack("!H", MSS[6])}
_CONNECTION = re.compile(r"^(?P<c>\[[0-9A-Fa-f:.]+\]|\d{1,3}(?:\.\d{1,3}){3}):(?P<cp>\d{1,5}) -> "
                         r"(?P<s>\[[0-9A-Fa-f:.]+\]|\d{1,3}(?:\.\d{1,3}){3}):(?P<sp>\d{1,5})(?: #\d+)?$")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a writer wrote and what it left out (and why)."""

    path: str | None
    written: int  # exchanges written
    skipped_incomplete: int = 0  # requests not captured whole: not replayable, not written
    skipped_separator: int = 0  # .gor: bytes holding the separator line cannot be written
    responses_left_out: int = 0  # responses not captured whole (their request is written)
    connections: int = 0  # pcap: TCP connections written
    packets: int = 0  # pcap: packets written


# -- output files ---------------------------------------------------------------------------------------
class _Output:
    """A path written through `<path>.partial` (renamed when complete; gzip when it ends with .gz),
    or a binary stream the caller owns."""

    def __init__(self, target: str | os.PathLike | BinaryIO, compress: bool | None = None) -> None:
        if isinstance(target, (str, os.PathLike)):
            self.path: str | None = os.fspath(target)
            self.partial = self.path + ".partial"
            if compress is None:
                compress = self.path.endswith(".gz")
            self.stream: BinaryIO = (gzip.open if compress else open)(self.partial, "wb")
        else:
            self.path = None
            self.stream = target

    def __enter__(self) -> BinaryIO:
        return self.stream

    def __exit__(self, kind, exc, tb) -> None:
        if self.path is None:
            self.stream.flush()
            return
        try:
            self.stream.close()
            if kind is None:
                os.replace(self.partial, self.path)
        finally:
            if os.path.exists(self.partial):
                os.unlink(self.partial)


def _response_whole(exchange: Exchange) -> bool:
    return exchange.response is not None and not any(flag.part == "response" for flag in exchange.flags)


# -- .gor ---------------------------------------------------------------------------------------------
_GOR_CONNECTION = re.compile(r"gor:([0-9A-Fa-f]{16})")


def gor_id(connection: str, position: int) -> str:
    """A 24-hex id like current GoReplay's: 16 hex naming the connection (kept from a .gor file's
    own 24-hex ids, else a hash of the connection name), 8 for the request."""
    match = _GOR_CONNECTION.fullmatch(connection)
    prefix = match[1] if match else hashlib.sha1(connection.encode()).hexdigest()[:16]
    return prefix + f"{position & 0xFFFFFFFF:08x}"


def gor_record(kind: int, rid: str, ts_ns: int, latency_ns: int, raw: bytes) -> bytes:
    """One record without its separator: the header line (type, id, timestamp, latency), then the
    message's bytes."""
    return b"%d %s %d %d\n" % (kind, rid.encode("ascii"), ts_ns, latency_ns) + raw


def gor_records(exchange: Exchange) -> list[bytes]:
    """Type 1 (and 2, when the response was captured whole) records for one exchange."""
    rid = gor_id(exchange.connection, exchange.position)
    records = [gor_record(1, rid, exchange.request_ts_ns, -1, exchange.request.raw)]
    if _response_whole(exchange):
        records.append(gor_record(2, rid, exchange.response_ts_ns, -1, exchange.response.raw))
    return records


class GorAppender:
    """A .gor file written one exchange at a time (the recorder's output): each exchange's records
    and separators go out in one write, and a write that fails part-way is cut back off, so the file
    holds whole exchanges only, whenever it is read and however the writer stops (Ctrl-C, SIGTERM).
    The file is created (or emptied) readable by its owner only: it may hold credentials."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.size = 0

    def append(self, records: list[bytes]) -> int:
        """Write `records` (each followed by the separator); the bytes written. A record holding
        the separator line cannot be represented: ValueError, and nothing is written."""
        if any(SEPARATOR in record for record in records):
            raise ValueError("the message holds the .gor separator line")
        data = memoryview(b"".join(record + SEPARATOR for record in records))
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError:
            if done:
                os.ftruncate(self.fd, self.size)
                os.lseek(self.fd, self.size, os.SEEK_SET)
            raise
        self.size += done
        return done

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_gor(exchanges: Iterable[Exchange], target: str | os.PathLike | BinaryIO, *,
              compress: bool | None = None) -> WriteResult:
    """Write exchanges as GoReplay records (type 1, and type 2 for a response captured whole), each
    followed by the separator line. A path is gzip-compressed when it ends in .gz (or `compress`
    says so) and is written to `<path>.partial`, renamed when complete. Exchanges whose request is
    incomplete, or whose bytes hold the separator line (a .gor file cannot represent them), are
    skipped and counted."""
    written = incomplete = separator = left_out = 0
    with _Output(target, compress) as sink:
        write = sink.write
        for exchange in exchanges:
            if not exchange.replayable:
                incomplete += 1
                continue
            records = gor_records(exchange)
            if any(SEPARATOR in record for record in records):
                separator += 1
                continue
            for record in records:
                write(record + SEPARATOR)
            written += 1
            left_out += exchange.response is not None and len(records) == 1
    return WriteResult(_path_of(target), written, incomplete, separator, left_out)


def _path_of(target) -> str | None:
    return os.fspath(target) if isinstance(target, (str, os.PathLike)) else None


# -- pcap / pcapng ------------------------------------------------------------------------------------
_LITTLE_ENDIAN = sys.byteorder == "little"


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071), summed in host order (swapped back on little-endian hosts)."""
    if len(data) & 1:
        data += b"\x00"
    total = sum(array("H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    total = ~total & 0xFFFF
    return ((total & 0xFF) << 8) | (total >> 8) if _LITTLE_ENDIAN else total


_TCP_HEADER = struct.Struct("!HHIIBBHHH")
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")


def _address(text: str) -> bytes:
    return ipaddress.ip_address(text.strip("[]")).packed


class _Side:
    """One direction: the next sequence number to give, and how far the file holds it contiguously
    (acknowledgements never run ahead of what a reader has seen)."""

    __slots__ = ("next_seq", "written", "ahead", "ip_id")

    def __init__(self, isn: int) -> None:
        self.next_seq = isn
        self.written = isn
        self.ahead: dict[int, int] = {}
        self.ip_id = isn & 0xFFFF

    def wrote(self, seq: int, length: int) -> None:
        end = (seq + length) & 0xFFFFFFFF
        if seq == self.written:
            self.written = end
            ahead = self.ahead
            while self.written in ahead:
                self.written = ahead.pop(self.written)
        elif ((seq - self.written) & 0xFFFFFFFF) < 0x80000000:
            self.ahead[seq] = end


class _Conn:
    __slots__ = ("client", "cport", "server", "sport", "version", "c", "s", "last_ts", "name", "owes")

    def __init__(self, name: str, client: bytes, cport: int, server: bytes, sport: int, generation: int = 0) -> None:
        self.name = name
        self.client, self.cport, self.server, self.sport = client, cport, server, sport
        self.version = 4 if len(client) == 4 else 6
        digest = hashlib.sha256(f"{name}#{generation}".encode("utf-8", "surrogateescape")).digest()
        self.c = _Side(int.from_bytes(digest[:4], "big"))
        self.s = _Side(int.from_bytes(digest[4:8], "big"))
        self.last_ts = 0
        self.owes = False  # a request was written without its response

    @property
    def key(self) -> tuple:
        return (self.client, self.cport, self.server, self.sport)


class _PcapWriter:
    """Packets built with struct (scapy builds ~100x slower) and written in timestamp order."""

    def __init__(self, sink: BinaryIO, ng: bool) -> None:
        self.sink = sink
        self.ng = ng
        self.heap: list[tuple] = []
        self.order = 0
        self.packets = 0
        self.last_ts = 0
        self.buffer: list[bytes] = []
        self.buffered = 0
        if ng:
            shb_body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
            sink.write(struct.pack("<II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body
                       + struct.pack("<I", 12 + len(shb_body)))
            options = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # if_tsresol = 10^-9
            idb_body = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN) + options
            sink.write(struct.pack("<II", 1, 12 + len(idb_body)) + idb_body + struct.pack("<I", 12 + len(idb_body)))
        else:  # nanosecond-resolution classic pcap
            sink.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))

    def push(self, ts: int, conn: _Conn, from_client: bool, flags: int, payload: bytes = b"") -> None:
        side = conn.c if from_client else conn.s
        seq = side.next_seq
        side.next_seq = (seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        heappush(self.heap, (ts, self.order, conn, from_client, seq, flags, payload))
        self.order += 1
        if ts > conn.last_ts:
            conn.last_ts = ts

    def flush_before(self, ts: int) -> None:
        """Write the packets stamped before `ts` (nothing generated later can come before them)."""
        heap = self.heap
        while heap and heap[0][0] < ts:
            self._write(*heappop(heap))
        self._drain_buffer(force=False)

    def flush_all(self) -> None:
        heap = self.heap
        while heap:
            self._write(*heappop(heap))
        self._drain_buffer(force=True)

    def _write(self, ts: int, _order: int, conn: _Conn, from_client: bool, seq: int, flags: int,
               payload: bytes) -> None:
        me, other = (conn.c, conn.s) if from_client else (conn.s, conn.c)
        ack = other.written if flags & ACK else 0
        me.wrote(seq, len(payload) + (1 if flags & (SYN | FIN) else 0))
        if from_client:
            src, sport, dst, dport = conn.client, conn.cport, conn.server, conn.sport
            src_mac, dst_mac = CLIENT_MAC, SERVER_MAC
        else:
            src, sport, dst, dport = conn.server, conn.sport, conn.client, conn.cport
            src_mac, dst_mac = SERVER_MAC, CLIENT_MAC
        options = MSS_OPTION[conn.version] if flags & SYN else b""
        tcp_len = 20 + len(options) + len(payload)
        header = _TCP_HEADER.pack(sport, dport, seq, ack, (5 + len(options) // 4) << 4, flags, 65535, 0, 0)
        if conn.version == 4:
            pseudo = src + dst + struct.pack("!BBH", 0, 6, tcp_len)
        else:
            pseudo = src + dst + struct.pack("!IxxxB", tcp_len, 6)
        checksum = _checksum(pseudo + header + options + payload)
        tcp = header[:16] + struct.pack("!H", checksum) + header[18:] + options + payload
        if conn.version == 4:
            me.ip_id = (me.ip_id + 1) & 0xFFFF
            ip = _IPV4_HEADER.pack(0x45, 0, 20 + tcp_len, me.ip_id, 0x4000, 64, 6, 0, src, dst)
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            frame = dst_mac + src_mac + b"\x08\x00" + ip + tcp
        else:
            ip = _IPV6_HEADER.pack(0x60000000, tcp_len, 6, 64, src, dst)
            frame = dst_mac + src_mac + b"\x86\xdd" + ip + tcp
        self._record(ts, frame)

    def _record(self, ts: int, frame: bytes) -> None:
        if ts < 0:
            ts = 0
        n = len(frame)
        if self.ng:
            pad = (-n) & 3
            total = 32 + n + pad
            block = (struct.pack("<IIIIIII", 6, total, 0, ts >> 32, ts & 0xFFFFFFFF, n, n) + frame
                     + b"\x00" * pad + struct.pack("<I", total))
        else:
            block = struct.pack("<IIII", ts // 1_000_000_000, ts % 1_000_000_000, n, n) + frame
        self.buffer.append(block)
        self.buffered += len(block)
        self.packets += 1
        if ts > self.last_ts:
            self.last_ts = ts
        if self.buffered >= 1 << 20:
            self._drain_buffer(force=True)

    def _drain_buffer(self, force: bool) -> None:
        if self.buffer and (force or self.buffered >= 1 << 16):
            self.sink.write(b"".join(self.buffer))
            self.buffer.clear()
            self.buffered = 0


class _Connections:
    """Connection names to TCP endpoints, and which 4-tuples are in use."""

    def __init__(self, writer: _PcapWriter) -> None:
        self.writer = writer
        self.by_name: dict[str, _Conn] = {}
        self.by_key: dict[tuple, _Conn] = {}
        self.busy: dict[tuple, int] = {}  # 4-tuple -> when its last connection's close ended
        self.generations: dict[str, int] = {}
        self.synthetic = 0
        self.count = 0

    def get(self, name: str, ts: int) -> _Conn:
        conn = self.by_name.get(name)
        if conn is not None:
            return conn
        client, cport, server, sport = self._endpoints(name)
        key = (client, cport, server, sport)
        start = ts - HANDSHAKE_NS
        old = self.by_key.get(key)
        if old is not None:
            # The same addresses and ports again (a reused port, "... #2"): close the old connection
            # first if there is time before this one starts.
            fin_ts = max(old.last_ts + STEP_NS, start - 6 * STEP_NS)
            if fin_ts + 2 * STEP_NS < start:
                self.close(old, fin_ts)
        # Else, or if the old one closed too late, this one gets another client port.
        while key in self.by_key or self.busy.get(key, start - 1) >= start:
            cport = cport % 65535 + 1
            key = (client, cport, server, sport)
        generation = self.generations.get(name, 0)
        self.generations[name] = generation + 1
        conn = _Conn(name, client, cport, server, sport, generation)
        self.by_name[name] = conn
        self.by_key[key] = conn
        self.count += 1
        writer = self.writer
        writer.push(start, conn, True, SYN)
        writer.push(start + STEP_NS, conn, False, SYN | ACK)
        writer.push(start + 2 * STEP_NS, conn, True, ACK)
        return conn

    def _endpoints(self, name: str) -> tuple[bytes, int, bytes, int]:
        match = _CONNECTION.match(name)
        if match is not None:
            try:
                client, server = _address(match["c"]), _address(match["s"])
                cport, sport = int(match["cp"]), int(match["sp"])
                if len(client) == len(server) and 0 < cport < 65536 and 0 < sport < 65536:
                    return client, cport, server, sport
            except ValueError:
                pass
        self.synthetic += 1
        n = self.synthetic % 0xFFFFFD + 1  # 10.0.0.1 ... 10.255.255.253
        return bytes([10, (n >> 16) & 255, (n >> 8) & 255, n & 255]), 40000 + self.synthetic % 20000, \
            *SYNTHETIC_SERVER

    def close(self, conn: _Conn, ts: int) -> None:
        writer = self.writer
        writer.push(ts, conn, True, FIN | ACK)
        writer.push(ts + STEP_NS, conn, False, FIN | ACK)
        writer.push(ts + 2 * STEP_NS, conn, True, ACK)
        if self.by_name.get(conn.name) is conn:
            del self.by_name[conn.name]
        if self.by_key.get(conn.key) is conn:
            del self.by_key[conn.key]
        self.busy[conn.key] = ts + 2 * STEP_NS  # a new connection on these ports starts after this

    def close_all(self) -> None:
        ts = max([self.writer.last_ts, *(c.last_ts for c in self.by_name.values())], default=0) + STEP_NS
        for conn in list(self.by_name.values()):
            self.close(conn, max(ts, conn.last_ts + STEP_NS))


def _segments(data: bytes, mss: int) -> list[bytes]:
    return [data[i:i + mss] for i in range(0, len(data), mss)] if data else []


def write_pcap(exchanges: Iterable[Exchange], target: str | os.PathLike | BinaryIO, *,
               ng: bool = False, compress: bool | None = None) -> WriteResult:
    """Regenerate a capture from exchanges: classic pcap with nanosecond timestamps (magic a1b23c4d),
    or pcapng with a nanosecond if_tsresol when `ng`. Ethernet, IPv4 or IPv6, TCP. A path is
    gzip-compressed when it ends in .gz (or `compress` says so) and is written to `<path>.partial`,
    renamed when complete.

    Limits: exchanges are expected in request-timestamp order (as Capture gives them). A request
    written without its response ends its connection if a later request on it has a response (a
    reader would otherwise pair that response with it): that later request opens a new connection
    and its position restarts at 0. 1xx responses are written as bare status lines."""
    written = incomplete = left_out = 0
    with _Output(target, compress) as sink:
        writer = _PcapWriter(sink, ng)
        conns = _Connections(writer)
        for exchange in exchanges:
            if not exchange.replayable:
                incomplete += 1
                continue
            ts = exchange.request_ts_ns
            writer.flush_before(ts - LAG_NS)
            conn = conns.get(exchange.connection, ts)
            if conn.owes and _response_whole(exchange):
                # An earlier request on this connection is written without its response. A connection
                # cannot say "no response here" (the original capture had gaps, or ended): a reader
                # would pair this response with that request. So the connection ends there, and this
                # request opens a new one.
                conns.close(conn, max(conn.last_ts + STEP_NS, ts - HANDSHAKE_NS - 6 * STEP_NS))
                conn = conns.get(exchange.connection, ts)
            mss = MSS[conn.version]
            pieces = _segments(exchange.request.raw, mss)
            for i, piece in enumerate(pieces):
                writer.push(ts + i * STEP_NS, conn, True, ACK | (PSH if i == len(pieces) - 1 else 0), piece)
            if _response_whole(exchange):
                response = exchange.response
                resp_ts = max(exchange.response_ts_ns if exchange.response_ts_ns is not None else ts, ts)
                for k, status in enumerate(response.interim):
                    phrase = _phrase(status)
                    line = f"HTTP/{response.version} {status} {phrase}".rstrip().encode("latin-1") + b"\r\n\r\n"
                    at = max(ts, resp_ts - (len(response.interim) - k) * STEP_NS)
                    writer.push(at, conn, False, ACK | PSH, line)
                pieces = _segments(response.raw, mss)
                for i, piece in enumerate(pieces):
                    writer.push(resp_ts + i * STEP_NS, conn, False, ACK | (PSH if i == len(pieces) - 1 else 0),
                                piece)
            else:
                left_out += exchange.response is not None
                conn.owes = True
            written += 1
        writer.flush_all()
        conns.close_all()
        writer.flush_all()
    return WriteResult(_path_of(target), written, incomplete, 0, left_out, conns.count, writer.packets)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""

