"""The 16 real captures read exactly as before the reader work of issues 9.4 and 13.6.

DIGESTS was computed with the readers of commit 0e7ebd4 (scapy's pcapng reader, the .gor reader
before its reference path, the parser before remembered heads): for each file, the SHA-256 of every
exchange's observable values (index, start line, raw bytes and body hashes, first headers, status,
interim statuses, timestamps, connection, position, source, flags, replayed responses) and the
counts. Both .gor reader paths and both framer paths must reproduce them. The classic pcaps among
them are also converted to pcapng here (an Enhanced Packet Block per record) and must give the same
exchanges through capture/pcapng.py.
"""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from support import FIXTURES, REAL

from pytest_replay.capture import load

pytestmark = pytest.mark.usefixtures("both_reader_paths", "both_framer_paths")

# file -> (packets, exchanges, orphan responses, warnings, sha256 of the exchanges' values)
DIGESTS: dict[str, tuple[int, int, int, int, str]] = {
    'arkime_http-no-length_close-delimited.pcap': (10, 1, 0, 0, '93ded92692bbd800606745a399eafcc46c667af78a2d5181ca43df94287949b7'),
    'gor_etg-mapmaker_requests_with_responses.gor': (0, 1, 0, 0, '69aab95d1b3629e006360697841088951781520d3550c402b5a0c954cab1b32a'),
    'gor_isucon5_requests.gor': (0, 1051, 0, 0, '5a5cc439fea3ddbd6f8847e718847f84b5ea7e0e153fea9bfb08583578c23a30'),
    'gor_orcid-log-to-gor_requests_converted.gor': (0, 2, 0, 0, 'a897d908527876866b966d548d6c1372ec463716378c5c385a1f205a29e7b47a'),
    'gor_traffic-analyzer_real_LF.gor': (0, 4, 0, 0, '597538362f1319bf4dc670889c24903e25195358e20b84865331c3df87a6a52b'),
    'learngit_http_sll_port85.cap': (13, 1, 0, 0, 'c5886f7d2bca22423accc2232f4a91433a1d262b32e538809bf6b88d2ba3c643'),
    'ppa3_http_ip4and6.pcapng': (20, 2, 0, 0, '204db7878485c929a36c1d334ff33f4db8a1443acb2b15a5844095f40d477c19'),
    'ppa3_http_post.pcapng': (21, 2, 0, 0, '3fa5d8c767aa68730b02a5d7d6962318b42af143cc165a4e81812e80a2e1e88b'),
    'scapy_http2_h2c.pcap': (10, 2, 0, 0, 'd33a9e21e2a7d1f186f0bfec0bc8d8e75cc4c31de597f1eb7538ffc2af275583'),
    'scapy_http_content_length.pcap': (18, 2, 0, 0, '13e7cdd31919d40b420d6f65dbf925f978e7dda103964458c4f9aa7c8ee44206'),
    'scapy_http_head.pcapng': (10, 1, 0, 0, '41daab792db80ff8da273aaf9dde001eebd2b52e787381fbfa0cc4feca21cfa4'),
    'wireshark-http-chunked-gzip_via-mikekap-pcap2har.pcap': (28, 1, 0, 0, 'f313357e76ffa9f2dfc6573ea13e38ae4d52c00b8620ae19e2e59a2a8ca28194'),
    'wireshark-http.cap_via-pcap2har.pcap': (43, 2, 0, 0, 'de35db7a0e46d73ab08691231598e63aafe6499bf77e9bcf6e4381254781d1d3'),
    'zeek_http-vlan-0.pcap': (14, 1, 0, 0, 'a3fc285ffe767bba93899102c61087264293e5c6d712a313058889a6330801c4'),
    'zeek_http_basic-auth-with-colon_rawip4.pcap': (12, 1, 0, 0, '7b064225459e60f9c20acbe0faf0a44394775ef21cb80b4b84476321d4840d88'),
    'zeek_http_zero-length-bodies-with-drops.pcap': (44, 7, 1, 0, '300e4cfc227b8980c89c6e9d70ae9eacaff7ba15932b7577b5e16411706bbf02'),
}


def summary(exchange) -> list:
    request, response = exchange.request, exchange.response
    return [exchange.index, request.method, request.target, request.version, _hash(request.raw), len(request.body),
            [[name.hex(), value.hex()] for name, value in request.headers][:3],
            None if response is None else [response.status, response.reason, _hash(response.raw),
                                           _hash(response.body), list(response.interim)],
            exchange.request_ts_ns, exchange.response_ts_ns, exchange.connection, exchange.position,
            str(exchange.source).split(" (", 1)[-1], [str(flag) for flag in exchange.flags], len(exchange.replayed)]


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def digest(path) -> tuple[int, int, int, int, str]:
    exchanges, stats = load(str(path))
    values = json.dumps([summary(e) for e in exchanges], sort_keys=True).encode()
    return (stats.packets, len(exchanges), sum(stats.orphan_responses.values()), len(stats.warnings),
            hashlib.sha256(values).hexdigest())


@pytest.mark.parametrize("name", sorted(p.name for p in REAL.iterdir() if p.name != "README.md"))
def test_real_capture_reads_as_before(name: str) -> None:
    assert digest(REAL / name) == DIGESTS[name]


def to_pcapng(pcap: bytes) -> bytes:
    """A classic pcap as a pcapng: one section, one interface (its link type, snapshot length and
    resolution: if_tsresol 9 for nanosecond files), an Enhanced Packet Block per record."""
    endian = "<" if pcap[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = pcap[:4] in (b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1")
    snaplen, linktype = struct.unpack_from(endian + "II", pcap, 16)

    def block(kind: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack(endian + "II", kind, len(body) + 12) + body + struct.pack(endian + "I", len(body) + 12)

    options = struct.pack(endian + "HH", 9, 1) + bytes([9 if nano else 6]) + b"\0\0\0" + struct.pack(endian + "HH", 0, 0)
    out = block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack(endian + "HHI", linktype, 0, snaplen) + options)
    at = 24
    while at + 16 <= len(pcap):
        sec, frac, caplen, wirelen = struct.unpack_from(endian + "IIII", pcap, at)
        units = sec * (10**9 if nano else 10**6) + frac
        out += block(6, struct.pack(endian + "IIIII", 0, units >> 32, units & 0xFFFFFFFF, caplen, wirelen)
                     + pcap[at + 16:at + 16 + caplen])
        at += 16 + caplen
    return out


def _whole_records(pcap: bytes) -> bool:
    """Does the file end where its last record does (truncated fixtures are tested elsewhere)?"""
    endian = "<" if pcap[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    at = 24
    while at + 16 <= len(pcap):
        at += 16 + struct.unpack_from(endian + "I", pcap, at + 8)[0]
    return at == len(pcap)


CLASSIC = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and p.suffix in (".pcap", ".cap")
                 and p.read_bytes()[:4] in (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d",
                                            b"\x4d\x3c\xb2\xa1") and _whole_records(p.read_bytes()))


def test_most_classic_fixtures_are_converted() -> None:
    assert len(CLASSIC) >= 40


@pytest.mark.parametrize("path", CLASSIC, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_pcap_as_pcapng_gives_the_same_exchanges(path, tmp_path) -> None:
    ng = tmp_path / (path.stem + ".pcapng")
    ng.write_bytes(to_pcapng(path.read_bytes()))
    (exchanges, stats), (ng_exchanges, ng_stats) = load(str(path)), load(str(ng))
    strip = lambda values: values[:12] + values[13:]  # noqa: E731 - the source's byte offsets differ
    assert [strip(summary(e)) for e in ng_exchanges] == [strip(summary(e)) for e in exchanges]
    assert (ng_stats.packets, ng_stats.gaps, dict(ng_stats.skipped_streams)) == \
        (stats.packets, stats.gaps, dict(stats.skipped_streams))
    assert [w.kind for w in ng_stats.warnings] == [w.kind for w in stats.warnings]
