"""The pcap fast path: one loop over an uncompressed classic pcap for steady keep-alive connections.

read_pcap()'s reference path (pcap.py) costs, per packet, a frame tuple from a generator, a decode,
a flow lookup and Connection.packet() with its Stream and Framer objects, and per exchange a Draft,
then an Exchange and a Source. A dense capture (a load generator against a server: two packets per
small exchange) spends most of its time there. This loop, for the common case only:

- reads the file through mmap, one unpack for the record header and one for the Ethernet, IPv4 and
  TCP fields, straight from the mapping (no frame tuple, no copy of the packet);
- keeps a steady connection's state in one list (`_Fast`'s fields: sequence numbers, stream offsets,
  last ACKs, position, requests awaiting their response) keyed by the 12 address and port bytes
  of the packet, in both directions;
- builds one object per exchange: an Exchange filled in place (Exchange._builder, the same slots),
  pushed on the Reorder like a Draft and made an Exchange when Capture hands it out; its Source
  is built on first use from the plain values in `_at` (message.py's _Located).

A connection starts on the reference path (its handshake, its first messages, checked for TLS,
HTTP/2 and garbage) and is taken up here ("promoted") once it is steady: both directions in order
and idle between messages, nothing pending, plain HTTP/1.x on the framers' fast path. Anything
else on it, a packet this loop does not take (SYN, FIN, RST, no ACK, out of order or retransmitted,
a message not whole in its segment, HEAD and CONNECT, 1xx, h2c, event streams, an ACK for request
bytes the capture lacks), hands it back ("demoted"): its state is written back into its Connection,
its waiting requests become Drafts, and the reference path reads the packet. Packets that are not
Ethernet/IPv4/TCP without options, cut packets, and the file's damaged or cut end go the reference
way too. So the exchanges, counts and warnings are the reference path's (tests/test_pcap_paths.py
compares the two on random captures; tests/test_real_captures_unchanged.py on the real ones).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import deque
from heapq import heappop, heappush
from typing import BinaryIO, Iterator

from ..http.message import NO_RESPONSE, Exchange, Flag
from ..http.parser import _MAX_REMEMBERED, _WHOLE, BODY_FRAMING_METHODS, HEAD, Framer, whole_request, whole_response
from ..reassembly.draft import Draft
from ..reassembly.flows import Connection
from ..reassembly.stats import CaptureStats, CaptureWarning
from .limits import MAX_PACKET
from . import pcapng
from .pcap import (RELEASE_EVERY, RELEASE_LAG_NS, RESPONSE_WINDOW_NS, Reading, _classic_frames, _classic_header,
                   _secrets_block, finish, packets)

_new = object.__new__
_Builder = Exchange._builder  # an Exchange's slots, plainly stored; becomes an Exchange in Capture
# The mapping's pages read so far are handed back every FORGET_EVERY bytes (madvise DONTNEED): a
# mapped page counts in the process's RSS until it is unmapped, so a 232 MB capture read to its end
# otherwise peaks at its own size (the reference reads it in chunks: 30 MB). The bytes stay in the page
# cache; nothing here keeps a view into the mapping (payloads are copied out).
FORGET_EVERY = 8 << 20
_PAGE_MASK = ~(mmap.PAGESIZE - 1)
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_RECORD = {"<": struct.Struct("<IIII").unpack_from, ">": struct.Struct(">IIII").unpack_from}
# Ethernet type, IPv4 version/IHL, total length, fragment field, protocol; the 12 bytes of addresses and
# ports (the flow key); TCP sequence and acknowledgement numbers, data offset, flags.
_ETH_IPV4_TCP_KEY = struct.Struct("!12xHBxH2xHxB2x12sIIBB").unpack_from
_PORTS = struct.Struct("!HH").pack

# A steady connection's fields (one list per connection, both directions' dictionary entries share it):
# next sequence number, stream offset and last ACK seen of each direction (client, server), the next
# request's position, the requests awaiting their response (in-place Exchanges), the Connection, its
# name, its position when it was taken up (the messages framed here are counted from it).
C_NEXT, C_OFFSET, C_ACK, S_NEXT, S_OFFSET, S_ACK, POSITION, WAITING, CONN, NAME, PROMOTED = range(11)


def read_fast(name: str, stream: BinaryIO, size: int, stats: CaptureStats, info: dict, server_ports: frozenset[int],
              max_record_size: int, keylog) -> Iterator[list]:
    """read_pcap() for an uncompressed classic pcap or pcapng: Drafts and in-place Exchanges, in lists."""
    reading = Reading(name, stats, info, server_ports, keylog)
    if info.get("format") == "pcapng":
        yield from _read_pcapng(name, stream, size, stats, info, max_record_size, reading)
        return
    header = _classic_header(name, stream)
    limit = min(MAX_PACKET, max_record_size)
    if header.linktype != 1 or size < 24 + 16:
        yield from packets(_classic_frames(name, header, size, stats, info, limit), reading)
        yield from finish(reading)
        return
    info["format"] = "pcap (nanosecond)" if header.nano else "pcap"
    with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = yield from _loop(buf, stream.fileno(), min(size, len(buf)), header, limit, reading)
    # The file's end (or a damaged record): the reference reads the rest, every connection on it.
    stream.seek(pos)
    yield from packets(_classic_frames(name, header, size, stats, info, limit, pos, reading.frame), reading)
    yield from finish(reading)


def _read_pcapng(name: str, stream: BinaryIO, size: int, stats: CaptureStats, info: dict, limit: int,
                 reading: Reading) -> Iterator[list]:
    """The loop over a pcapng's Enhanced Packet Blocks, once a plain first section header and the
    interface descriptions after it are read; pcapng.read_frames() (the reference) reads everything
    else: the whole file when it starts otherwise, the rest from the first block the loop does not take."""
    secrets = _secrets_block(name, reading.table, stats)
    info["format"] = "pcapng"
    with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        size = min(size, len(buf))
        start = _pcapng_start(buf, size, limit)
        if start is None:
            resume = None
        else:
            pos, structs, interfaces = start
            header = (structs, [(i.linktype, i.scale, i.offset_ns) for i in interfaces])
            pos = yield from _loop(buf, stream.fileno(), size, header, limit, reading, pos)
            resume = (pos, reading.frame, structs, interfaces, reading.now_block)
    if resume is not None:
        stream.seek(resume[0])
    yield from packets(pcapng.read_frames(name, stream, size, stats, info, limit, secrets, resume=resume), reading)
    yield from finish(reading)


def _pcapng_start(buf, size: int, limit: int):
    """(offset of the first block after them, _Structs, interfaces) when the file starts with a
    well-formed version 1 section header and interface descriptions; else None."""
    if size < 28 or buf[:4] != pcapng.SHB_BYTES:
        return None
    endian = pcapng._BYTE_ORDER.get(buf[8:12])
    if endian is None:
        return None
    structs = pcapng._Structs(endian)
    pos = 0
    interfaces = []
    while pos + 12 <= size:
        kind, length = structs.head(buf, pos)
        if pos == 0:
            if length < 28 or length % 4 or length > limit or length > size or structs.short(buf, 12)[0] != 1:
                return None
        elif kind != pcapng.IDB:
            return pos, structs, interfaces
        elif length < 20 or length % 4 or length > limit or pos + length > size:
            return None
        if structs.word(buf, pos + length - 4)[0] != length:
            return None
        if kind == pcapng.IDB:
            interfaces.append(pcapng._interface(buf[pos + 8:pos + length - 4], structs))
        pos += length
    return None


def _loop(buf, fd: int, size: int, header, limit: int, reading: Reading, pos: int = 24):
    """The packet loop over the mapped file (`fd`) from `pos`; returns where it stopped (the reference
    reads from there). `header`: a classic pcap's, or for pcapng (_Structs, [(link type, ns per unit or
    None, offset ns) per interface]).

    Every read of the mapping stays below `size`. A mapped page past the end of a file that shrank
    after it was mapped is SIGBUS when touched: the process dies (no report, no evidence). So after
    each wait (the exchanges handed out: a streamed run reads its capture for as long as the replay
    lasts) the file's size is looked at again (_shrunk), and the loop stops at its new end."""
    file = reading.name
    reorder, table, decoder = reading.reorder, reading.table, reading.decoder
    run, late = reorder.run, reorder.late
    flows = table.flows
    new_packet = table.packet
    decode = decoder.decode
    fast: dict[bytes, tuple[list, bool]] = {}  # 12 address and port bytes -> (connection's list, from client)
    steady = fast.get
    ng = type(header) is tuple
    if ng:
        structs, interfaces = header
        block, word = structs.epb_block, structs.word
        record = scale = None
        described = len(interfaces)
        # the first interface's values in locals (most captures have one); units None: not taken here
        units0, offset0 = (interfaces[0][1], interfaces[0][2]) if interfaces and interfaces[0][0] == 1 else (None, 0)
    else:
        record = _RECORD[header.endian]
        scale = 1 if header.nano else 1000
    unpack = _ETH_IPV4_TCP_KEY
    requests_known, responses_known = _WHOLE[True].get, _WHOLE[False].get
    builder = _Builder
    link_counts = reading.link_counts
    frame = now = nbytes = last_ts = 0
    first = None
    plain_request = plain_response = None  # the last messages that passed the checks below
    waited = False  # the exchanges were handed out since the file's size was last looked at
    rn, rlast = reorder._n, reorder.last  # the Reorder's counter and last timestamp (written back around
    try:                                    # the reference's calls, which push Drafts)
        forget_at = pos + FORGET_EVERY if _DONTNEED is not None else 1 << 62  # (never, without madvise)
        forgotten = 0
        while True:
            if waited:
                waited = False
                size = _shrunk(fd, size, reading, pos, frame)
            if pos >= forget_at:
                upto = pos & _PAGE_MASK
                buf.madvise(_DONTNEED, forgotten, upto - forgotten)
                forgotten, forget_at = upto, pos + FORGET_EVERY
            if ng:  # an Enhanced Packet Block, whole, of a described Ethernet interface; lengths agree
                if pos + 32 > size:
                    break
                kind, length, intid, high, low, caplen, wirelen = block(buf, pos)
                if (kind != 6 or caplen > length - 32 or length > size - pos or length > limit or length & 3
                        or intid >= described or word(buf, pos + length - 4)[0] != length):
                    break
                if intid:
                    linktype, units, offset_ns = interfaces[intid]
                    if linktype != 1:
                        break
                else:
                    units, offset_ns = units0, offset0
                if units is None:
                    break
                ts = last_ts = ((high << 32) | low) * units + offset_ns
                where = pos
                start = pos + 28
                end = start + caplen
                pos += length
                nbytes += caplen
            else:
                if pos + 16 > size:
                    break
                sec, frac, caplen, wirelen = record(buf, pos)
                end = pos + 16 + caplen
                if caplen > limit or end > size:
                    break  # a damaged record, or the file ends inside this one: the reference says so
                where = pos
                start = pos + 16
                pos = end
                ts = sec * 1_000_000_000 + frac * scale
            frame += 1
            if ts > now:
                now = ts
                if first is None:
                    first = ts
            if wirelen <= caplen and caplen >= 54:
                etype, ver_ihl, total, fragment, proto, key, seq, ack, doff, flags = unpack(buf, start)
                if etype == 0x0800 and ver_ihl == 0x45 and proto == 6 and not fragment & 0x3FFF and doff >= 0x50:
                    p_end = start + 14 + total
                    p_start = start + 34 + ((doff >> 4) << 2)
                    if p_start <= p_end <= end:
                        entry = steady(key)
                        if entry is not None:
                            state, from_client = entry
                            # -- a steady connection: in order, ACK set, no SYN, FIN or RST ---------------
                            if flags & 0x17 == 0x10 and seq == state[C_NEXT if from_client else S_NEXT]:
                                if p_start == p_end:  # an ACK alone
                                    state[S_ACK if from_client else C_ACK] = ack
                                    if frame % RELEASE_EVERY == 0 and (out := _release(reorder, now)):
                                        yield out
                                        waited = True
                                    continue
                                payload = buf[p_start:p_end]
                                length = p_end - p_start
                                if from_client:
                                    request = requests_known(payload) if length <= _MAX_REMEMBERED else None
                                    if request is None:
                                        request = whole_request(payload)
                                    if request is not None and (request is plain_request or (
                                            b"h2c" not in request.head and request.method not in BODY_FRAMING_METHODS)):
                                        # not HEAD or CONNECT (their responses' framing is the reference's
                                        # to decide), no Upgrade: h2c; the last request that passed is kept:
                                        # a dense capture repeats the same (remembered) request object
                                        plain_request = request
                                        state[S_ACK] = ack
                                        state[C_NEXT] = (seq + length) & 0xFFFFFFFF
                                        state[C_OFFSET] = offset = state[C_OFFSET] + length
                                        x = _new(builder)
                                        x.request = request
                                        x.response = x.response_ts_ns = x.server_name = None
                                        x.request_ts_ns = ts
                                        x.connection = state[NAME]
                                        x.position = position = state[POSITION]
                                        state[POSITION] = position + 1
                                        x.flags = x.replayed = ()
                                        x.scheme = "http"
                                        x._at = (file, where, offset, frame)  # offset: the Draft's `end`
                                        state[WAITING].append(x)
                                        if ts >= rlast:  # Reorder.push()
                                            run.append((ts, rn, x))
                                            rlast = ts
                                        else:
                                            heappush(late, (ts, rn, x))
                                        rn += 1
                                        if frame % RELEASE_EVERY == 0 and (out := _release(reorder, now)):
                                            yield out
                                            waited = True
                                        continue
                                else:
                                    waiting = state[WAITING]
                                    if waiting and (ack - state[C_NEXT] - 1) & 0xFFFFFFFF >= 0x7FFFFFFF:
                                        # it answers the oldest request (not given up), and acknowledges
                                        # no request byte the capture lacks
                                        x = waiting[0]
                                        if not x.flags:
                                            response = None
                                            if length <= _MAX_REMEMBERED:
                                                known = responses_known(payload)
                                                if known is not None and known[1] + known[3] == length:
                                                    response = known[0]
                                            if response is None:
                                                response = whole_response(payload)
                                            if response is not None and (response is plain_response
                                                                         or b"event-stream" not in response.head):
                                                plain_response = response
                                                state[C_ACK] = ack
                                                state[S_NEXT] = (seq + length) & 0xFFFFFFFF
                                                state[S_OFFSET] += length
                                                waiting.popleft()
                                                x.response = response
                                                x.response_ts_ns = ts
                                                x._at += (frame,)
                                                if frame % RELEASE_EVERY == 0 and (out := _release(reorder, now)):
                                                    yield out
                                                    waited = True
                                                continue
                            _demote(state, fast, reorder)
                        # -- the reference: Connection.packet() ----------------------------------------
                        reorder._n, reorder.last = rn, rlast
                        src, dst, sport, dport = key[:4], key[4:8], *_ports(key)
                        entry = flows.get((src, sport, dst, dport))
                        payload = buf[p_start:p_end] if p_start < p_end else b""
                        if entry is not None and flags & 0x02 == 0:
                            entry[0].packet(entry[1], seq, ack, flags, payload, 0, ts, frame, where)
                        else:
                            new_packet(src, sport, dst, dport, seq, ack, flags, payload, 0, ts, frame, where)
                            entry = flows.get((src, sport, dst, dport))
                        rn, rlast = reorder._n, reorder.last
                        if entry is not None and (payload or flags & 0x10):
                            _promote(entry[0], fast)
                        if frame % RELEASE_EVERY == 0 and (out := _release(reorder, now)):
                            yield out
                            waited = True
                        continue
            # -- anything else: the decoder tables (link.py), then the reference --------------------
            seg = decode(1, buf[start:end], ts)
            if seg is not None:
                if len(seg[0]) == 4 and fast:
                    entry = steady(seg[0] + seg[2] + _PORTS(seg[1], seg[3]))
                    if entry is not None:
                        _demote(entry[0], fast, reorder)
                reorder._n, reorder.last = rn, rlast
                new_packet(*seg, decoder.ts_ns, frame, where)
                rn, rlast = reorder._n, reorder.last
            if frame % RELEASE_EVERY == 0 and (out := _release(reorder, now)):
                yield out
                waited = True
        return pos
    finally:
        reorder._n, reorder.last = rn, rlast
        for state in {id(s): s for s, _ in fast.values()}.values():
            _demote(state, fast, reorder)
        if frame:
            link_counts.setdefault(1, 0)  # (the reference's packets() adds it at its first Ethernet frame)
        reading.ethernet += frame  # every frame here is Ethernet (and a classic pcap's records are contiguous)
        reading.frame, reading.now, reading.first = frame, now, first
        reading.nbytes = nbytes if ng else pos - 24 - 16 * frame
        reading.now_block = last_ts  # pcapng: the timestamp a Simple Packet Block after these would take


def _shrunk(fd: int, size: int, reading: Reading, pos: int, frame: int) -> int:
    """The bytes of the mapping the loop may read: `size`, or the file's new size if it has shrunk
    (said once per shrink, where the loop is)."""
    now = os.fstat(fd).st_size
    if now >= size:
        return size
    rest = "the packets from here on were not read" if pos >= now else "it is read to its new end"
    reading.stats.warn(CaptureWarning(reading.name, "truncated-file", f"the file shrank to {now} bytes while it "
                                      f"was read (from {size}): another program rewrote or cut it; {rest}",
                                      offset=pos, frame=frame + 1))
    return now


def _ports(key: bytes) -> tuple[int, int]:
    return (key[8] << 8 | key[9], key[10] << 8 | key[11])


def _promote(conn: Connection, fast: dict) -> None:
    """Take a connection up on the fast path if it is steady (see the module docstring); else nothing."""
    if conn.tls is not None or conn.h2 is not None or conn.queue or conn.answering or conn.heads or conn.stopped \
            or conn.finished or conn.undecided or conn.malformed is not None or conn.not_http is not None \
            or conn.unpushed is not None or conn.h2_upgrade is not None:
        return
    requests, responses, client, server = conn.requests, conn.responses, conn.client, conn.server
    for framer, stream in ((requests, client), (responses, server)):
        if (type(framer) is not Framer or framer._state != HEAD or framer._buf or framer._pending or framer._closing
                or framer._first or not framer.fast or framer.stopped is not None or stream.waiting or stream.closed
                or stream.next_seq is None or stream.sink is not framer or framer._base != stream.offset):
            return
    if client.gaps != conn._client_gaps or server.gaps != conn._server_gaps or len(conn.key[0]) != 4:
        return
    src, sport, dst, dport = conn.key
    state = [client.next_seq, client.offset, client.last_ack, server.next_seq, server.offset, server.last_ack,
             conn.position, deque(), conn, conn.name, conn.position]
    fast[src + dst + _PORTS(sport, dport)] = (state, True)
    fast[dst + src + _PORTS(dport, sport)] = (state, False)


def _demote(state: list, fast: dict, reorder) -> None:
    """Hand a connection back to the reference path: its fields written back into its Connection, its
    requests awaiting a response made Drafts (in its queue and, in their place, on the Reorder)."""
    conn: Connection = state[CONN]
    client, server = conn.client, conn.server
    client.next_seq, client.offset, client.last_ack = state[C_NEXT], state[C_OFFSET], state[C_ACK]
    server.next_seq, server.offset, server.last_ack = state[S_NEXT], state[S_OFFSET], state[S_ACK]
    conn.requests._base, conn.responses._base = state[C_OFFSET], state[S_OFFSET]
    framed = state[POSITION] - state[PROMOTED]
    conn.requests.messages += framed
    conn.responses.messages += framed - len(state[WAITING])
    conn.position = state[POSITION]
    for x in state[WAITING]:
        file, where, end, frame = x._at
        draft = Draft(x.request, x.request_ts_ns, x.connection, x.position, file, where, None, (frame,))
        draft.end = end
        draft.flags = x.flags
        if x.flags:  # given up on and released already (_release): the reference's Draft is done
            draft.done = True
        else:
            _replace(reorder, x, draft)
        conn.queue.append(draft)
    src, sport, dst, dport = conn.key
    del fast[src + dst + _PORTS(sport, dport)], fast[dst + src + _PORTS(dport, sport)]


def _replace(reorder, x, draft: Draft) -> None:
    """Put `draft` where `x` is on the Reorder (same timestamp and order: the heap stays a heap)."""
    for items in (reorder.run, reorder.late):
        for i in range(len(items) - 1, -1, -1):
            ts, n, item = items[i]
            if item is x:
                draft.seq = n
                items[i] = (ts, n, draft)
                return
    raise AssertionError("a waiting exchange is not on the Reorder")  # pragma: no cover


def _release(reorder, now: int) -> list:
    """pcap._release() for a Reorder that holds in-place Exchanges (done once their response is
    there) beside Drafts."""
    run, late = reorder.run, reorder.late
    out = []
    settled_by = now - RELEASE_LAG_NS
    given_up_before = now - RESPONSE_WINDOW_NS
    while run or late:
        from_late = late and (not run or late[0] < run[0])
        item = (late if from_late else run)[0][2]
        if type(item) is Draft:
            if item.request is None:
                break
            if item.done:
                if item.ts > settled_by:
                    break
            elif item.ts < given_up_before:
                item.flags += (_given_up(),)
                item.done = True
            else:
                break
        elif item.response is not None:
            if item.request_ts_ns > settled_by:
                break
        elif item.request_ts_ns < given_up_before:
            item.flags = (_given_up(),)
        else:
            break
        if from_late:
            heappop(late)
        else:
            run.popleft()
        out.append(item)
    return out


def _given_up() -> Flag:
    return Flag(NO_RESPONSE, "response", f"no response within {RESPONSE_WINDOW_NS // 10**9} s of capture time")

