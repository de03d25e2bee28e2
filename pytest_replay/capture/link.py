"""Link, network and transport decoding of captured frames, table-driven (sans-IO).

A frame goes: link type -> link decoder -> (ethertype, offset) -> IPv4/IPv6 -> TCP segment. The
common link types are decoded here with plain slicing (scapy's dissectors are ~100x slower);
rare ones go through scapy's dissector as a slow path; unknown ones are counted and reported.
IPv4 and IPv6 fragments are reassembled; what cannot be is counted.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
VLAN_TAGS = (0x8100, 0x88A8, 0x9100, 0x9200)
PROTO_TCP = 6
_IPV6_EXTENSIONS = {0, 43, 60, 51, 135, 139, 140}  # hop-by-hop, routing, dst opts, AH, mobility, HIP, shim6
_IPV6_FRAGMENT = 44

LINKTYPE_NAMES = {
    0: "BSD loopback (NULL)", 1: "Ethernet", 12: "raw IP", 14: "raw IP", 101: "raw IP",
    108: "OpenBSD loopback", 113: "Linux cooked (SLL)", 127: "802.11 radiotap", 105: "802.11",
    228: "raw IPv4", 229: "raw IPv6", 239: "NFLOG", 276: "Linux cooked v2 (SLL2)",
}
_NULL_FAMILIES = {2: ETH_IPV4, 24: ETH_IPV6, 28: ETH_IPV6, 30: ETH_IPV6, 10: ETH_IPV6}

# A link decoder takes the frame and returns (ethertype, offset of the network header) or None.
LinkDecoder = Callable[[bytes], "tuple[int, int] | None"]


def _ethernet(data: bytes) -> tuple[int, int] | None:
    if len(data) < 14:
        return None
    etype = (data[12] << 8) | data[13]
    off = 14
    while etype in VLAN_TAGS:  # 802.1Q, QinQ (802.1ad) and the old QinQ tags
        if len(data) < off + 4:
            return None
        etype = (data[off + 2] << 8) | data[off + 3]
        off += 4
    if etype <= 1500:  # 802.3 length field: LLC/SNAP
        if data[off:off + 3] == b"\xaa\xaa\x03" and len(data) >= off + 8:
            return (data[off + 6] << 8) | data[off + 7], off + 8
        return None
    return etype, off


def _sll(data: bytes) -> tuple[int, int] | None:
    return ((data[14] << 8) | data[15], 16) if len(data) >= 16 else None


def _sll2(data: bytes) -> tuple[int, int] | None:
    return ((data[0] << 8) | data[1], 20) if len(data) >= 20 else None


def _null_host_order(data: bytes) -> tuple[int, int] | None:
    # The family is in the capturing host's byte order: try both.
    if len(data) < 4:
        return None
    family = struct.unpack_from("<I", data)[0]
    if family not in _NULL_FAMILIES:
        family = struct.unpack_from(">I", data)[0]
    etype = _NULL_FAMILIES.get(family)
    return (etype, 4) if etype else None


def _loop(data: bytes) -> tuple[int, int] | None:
    if len(data) < 4:
        return None
    etype = _NULL_FAMILIES.get(struct.unpack_from(">I", data)[0])
    return (etype, 4) if etype else None


def _raw_ip(data: bytes) -> tuple[int, int] | None:
    if not data:
        return None
    version = data[0] >> 4
    return (ETH_IPV4, 0) if version == 4 else (ETH_IPV6, 0) if version == 6 else None


def _raw_ipv4(data: bytes) -> tuple[int, int] | None:
    return ETH_IPV4, 0


def _raw_ipv6(data: bytes) -> tuple[int, int] | None:
    return ETH_IPV6, 0


_NFLOG_FAMILIES = {2: ETH_IPV4, 10: ETH_IPV6}  # AF_INET, AF_INET6 (Linux)
_NFULA_PAYLOAD = 9


def _nflog(data: bytes) -> tuple[int, int] | None:
    """Linux NFLOG (239): family, version, resource id (4 bytes), then TLVs (16-bit length including
    its 4-byte header, 16-bit type; both in the capturing host's byte order, each TLV padded to 4
    bytes). The packet is the value of the NFULA_PAYLOAD TLV (type 9)."""
    if len(data) < 4 or data[1] != 0:
        return None
    etype = _NFLOG_FAMILIES.get(data[0])
    if etype is None:
        return None
    for order in ("<", ">"):
        off = 4
        while off + 4 <= len(data):
            length, kind = struct.unpack_from(order + "HH", data, off)
            if length < 4 or off + length > len(data):
                break  # not this byte order (or a damaged TLV)
            if kind & 0x7FFF == _NFULA_PAYLOAD:
                return etype, off + 4
            off += (length + 3) & ~3
    return None


QUIC = "QUIC (UDP port 443, HTTP/3): not replayed"


def _quic(proto: int, data: bytes, off: int, otherwise: str) -> str:
    """Why a non-TCP packet is not decoded: QUIC (HTTP/3) when it is UDP on port 443 with the QUIC
    fixed bit set, else `otherwise`."""
    if proto == 17 and len(data) >= off + 9:
        sport, dport = (data[off] << 8) | data[off + 1], (data[off + 2] << 8) | data[off + 3]
        if 443 in (sport, dport) and data[off + 8] & 0x40:
            return QUIC
    return otherwise


LINK_DECODERS: dict[int, LinkDecoder] = {
    1: _ethernet, 113: _sll, 276: _sll2, 0: _null_host_order, 108: _loop,
    12: _raw_ip, 14: _raw_ip, 101: _raw_ip, 228: _raw_ipv4, 229: _raw_ipv6, 239: _nflog,
}


def scapy_link_decoder(linktype: int) -> LinkDecoder | None:
    """A slow-path decoder for a link type scapy knows (802.11 radiotap, NFLOG, PPP, ...)."""
    import scapy.layers.all  # noqa: F401  (registers every link type scapy can dissect; ~0.4 s, once)
    from scapy.config import conf

    try:
        layer = conf.l2types[linktype]
    except KeyError:
        return None
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    def decode(data: bytes) -> tuple[int, int] | None:
        try:
            packet = layer(data)
        except Exception:  # scapy dissectors raise anything on odd bytes
            return None
        for cls, etype in ((IP, ETH_IPV4), (IPv6, ETH_IPV6)):
            ip = packet.getlayer(cls)
            if ip is not None:
                # scapy keeps the bytes each layer was dissected from: the IP header's offset
                # is where they start in the frame (trailers such as an FCS may follow).
                original = getattr(ip, "original", b"") or bytes(ip)
                at = data.find(original)
                return (etype, at) if at >= 0 else None
        return None

    return decode


# A decoded TCP segment: (src, sport, dst, dport, seq, ack, flags, payload, missing) where `missing`
# counts payload bytes the snapshot length cut off. A plain tuple: one is built per packet.
Segment = tuple

_TCP = struct.Struct("!HHIIBB")


class Decoder:
    """Frames to TCP segments. Counts every frame that does not end as a TCP segment, by reason."""

    def __init__(self, not_decoded: Counter, fragments: Counter) -> None:
        self.not_decoded = not_decoded
        self.fragments = fragments
        self._frags: dict[tuple, _Fragments] = {}
        self.ts_ns = 0
        self._link: dict[int, LinkDecoder | None] = dict(LINK_DECODERS)

    def link_decoder(self, linktype: int) -> LinkDecoder | None:
        try:
            return self._link[linktype]
        except KeyError:
            decoder = self._link[linktype] = scapy_link_decoder(linktype)
            return decoder

    def decode(self, linktype: int, data: bytes, ts_ns: int) -> Segment | None:
        """The TCP segment in a frame, or None (counted by reason). After a fragmented datagram is
        put back together, `self.ts_ns` is the time of its first fragment, else of this frame."""
        self.ts_ns = ts_ns
        decoder = self.link_decoder(linktype)
        if decoder is None:
            self.not_decoded[f"unknown link type {linktype}"] += 1
            return None
        found = decoder(data)
        if found is None:
            self.not_decoded["link header not decoded"] += 1
            return None
        etype, off = found
        if etype == ETH_IPV4:
            return self._ipv4(data, off, ts_ns)
        if etype == ETH_IPV6:
            return self._ipv6(data, off, ts_ns)
        self.not_decoded[f"not IP (ethertype 0x{etype:04x})"] += 1
        return None

    def _ipv4(self, data: bytes, off: int, ts_ns: int) -> Segment | None:
        if len(data) < off + 20 or data[off] >> 4 != 4:
            self.not_decoded["bad IPv4 header"] += 1
            return None
        ihl = (data[off] & 15) * 4
        total = (data[off + 2] << 8) | data[off + 3]
        proto = data[off + 9]
        src, dst = data[off + 12:off + 16], data[off + 16:off + 20]
        frag = ((data[off + 6] << 8) | data[off + 7])
        if total < ihl or ihl < 20:
            self.not_decoded["bad IPv4 header"] += 1
            return None
        end = off + total
        if frag & 0x3FFF:  # more fragments, or a non-zero offset
            if len(data) < end:
                self.fragments["truncated fragment"] += 1
                return None
            key = (src, dst, data[off + 4:off + 6], proto)
            datagram = self._fragment(key, (frag & 0x1FFF) * 8, bool(frag & 0x2000), data[off + ihl:end], ts_ns)
            if datagram is None:
                return None
            if proto != PROTO_TCP:
                self.not_decoded[f"not TCP (IP protocol {proto})"] += 1
                return None
            return self._tcp(src, dst, datagram, 0, len(datagram), 0)
        if proto != PROTO_TCP:
            self.not_decoded[_quic(proto, data, off + ihl, f"not TCP (IP protocol {proto})")] += 1
            return None
        missing = end - len(data) if end > len(data) else 0
        return self._tcp(src, dst, data, off + ihl, min(end, len(data)), missing)

    def _ipv6(self, data: bytes, off: int, ts_ns: int) -> Segment | None:
        if len(data) < off + 40 or data[off] >> 4 != 6:
            self.not_decoded["bad IPv6 header"] += 1
            return None
        plen = (data[off + 4] << 8) | data[off + 5]
        nxt = data[off + 6]
        src, dst = data[off + 8:off + 24], data[off + 24:off + 40]
        end = off + 40 + plen
        pos = off + 40
        while nxt in _IPV6_EXTENSIONS or nxt == _IPV6_FRAGMENT:
            if len(data) < pos + 8:
                self.not_decoded["bad IPv6 extension header"] += 1
                return None
            if nxt == _IPV6_FRAGMENT:
                fo = (data[pos + 2] << 8) | data[pos + 3]
                key = (src, dst, data[pos + 4:pos + 8], data[pos])
                if len(data) < end:
                    self.fragments["truncated fragment"] += 1
                    return None
                datagram = self._fragment(key, fo & 0xFFF8, bool(fo & 1), data[pos + 8:end], ts_ns)
                if datagram is None:
                    return None
                if data[pos] != PROTO_TCP:
                    self.not_decoded[f"not TCP (IPv6 next header {data[pos]})"] += 1
                    return None
                return self._tcp(src, dst, datagram, 0, len(datagram), 0)
            size = (data[pos + 1] + 2) * 4 if nxt == 51 else (data[pos + 1] + 1) * 8
            nxt = data[pos]
            pos += size
        if nxt != PROTO_TCP:
            self.not_decoded[_quic(nxt, data, pos, f"not TCP (IPv6 next header {nxt})")] += 1
            return None
        missing = end - len(data) if end > len(data) else 0
        return self._tcp(src, dst, data, pos, min(end, len(data)), missing)

    def _tcp(self, src: bytes, dst: bytes, data: bytes, off: int, end: int, missing: int) -> Segment | None:
        if end - off < 20:
            self.not_decoded["TCP header cut by the snapshot length"] += 1
            return None
        sport, dport, seq, ack, doff, flags = _TCP.unpack_from(data, off)
        hlen = (doff >> 4) * 4
        if hlen < 20 or off + hlen > end:
            if off + hlen > end and missing:
                self.not_decoded["TCP header cut by the snapshot length"] += 1
            else:
                self.not_decoded["bad TCP header"] += 1
            return None
        return (src, sport, dst, dport, seq, ack, flags, data[off + hlen:end], missing)

    # -- fragments ---------------------------------------------------------------------------
    def _fragment(self, key: tuple, offset: int, more: bool, payload: bytes, ts_ns: int) -> bytes | None:
        frags = self._frags.get(key)
        if frags is None:
            frags = self._frags[key] = _Fragments(ts_ns)
            if len(self._frags) > 1024:  # expire datagrams whose fragments never all came
                self._expire(ts_ns)
        frags.add(offset, more, payload, ts_ns)
        datagram = frags.datagram()
        if datagram is not None:
            del self._frags[key]
            self.fragments["reassembled datagrams"] += 1
            self.ts_ns = frags.start_ts  # the datagram starts when its first bytes were sent
        return datagram

    def _expire(self, now_ns: int) -> None:
        for key, frags in list(self._frags.items()):
            if now_ns - frags.first_ts > 30 * 10**9:
                del self._frags[key]
                self.fragments["incomplete datagrams (fragments missing)"] += 1

    def finish(self) -> None:
        if self._frags:
            self.fragments["incomplete datagrams (fragments missing)"] += len(self._frags)
            self._frags.clear()


class _Fragments:
    __slots__ = ("pieces", "total", "first_ts", "start_ts")

    def __init__(self, ts_ns: int) -> None:
        self.pieces: dict[int, bytes] = {}
        self.total: int | None = None
        self.first_ts = ts_ns  # first fragment seen (for expiry)
        self.start_ts = ts_ns  # the fragment at offset 0

    def add(self, offset: int, more: bool, payload: bytes, ts_ns: int) -> None:
        if offset not in self.pieces:
            self.pieces[offset] = payload
            if offset == 0:
                self.start_ts = ts_ns
        if not more:
            self.total = offset + len(payload)

    def datagram(self) -> bytes | None:
        if self.total is None:
            return None
        out = bytearray(self.total)
        covered = 0
        for offset in sorted(self.pieces):
            if offset > covered:
                return None  # a hole
            piece = self.pieces[offset][:max(0, self.total - offset)]
            out[offset:offset + len(piece)] = piece
            covered = max(covered, offset + len(piece))
        return bytes(out) if covered >= self.total else None
