"""The 16 real captures from ../shared/captures/real/ (files published by others, copied unchanged
into fixtures/captures/real/ so a clean clone tests them too).

Counts are checked against tshark's (from that folder's README) and, where tshark is not the truth,
the test says why. A few exchanges are checked by value.
"""

from __future__ import annotations

import gzip

import pytest
from support import REAL

from pytest_replay.capture import load

# the .gor reader's fast and reference paths, the framer's too: both must give the counts below
pytestmark = pytest.mark.usefixtures("both_reader_paths", "both_framer_paths")


# file -> (exchanges, complete, orphan responses, skipped streams)
COUNTS = {
    "arkime_http-no-length_close-delimited.pcap": (1, 1, 0, {}),
    "gor_etg-mapmaker_requests_with_responses.gor": (1, 1, 0, {}),
    "gor_isucon5_requests.gor": (1051, 0, 0, {}),  # requests only: every exchange lacks a response
    "gor_orcid-log-to-gor_requests_converted.gor": (2, 0, 0, {}),
    "gor_traffic-analyzer_real_LF.gor": (4, 0, 0, {}),
    "learngit_http_sll_port85.cap": (1, 1, 0, {}),
    "ppa3_http_ip4and6.pcapng": (2, 2, 0, {}),
    "ppa3_http_post.pcapng": (2, 2, 0, {}),
    "scapy_http2_h2c.pcap": (2, 2, 0, {}),
    "scapy_http_content_length.pcap": (2, 2, 0, {}),
    "scapy_http_head.pcapng": (1, 1, 0, {}),
    "wireshark-http-chunked-gzip_via-mikekap-pcap2har.pcap": (1, 1, 0, {}),
    "wireshark-http.cap_via-pcap2har.pcap": (2, 2, 0, {}),
    "zeek_http-vlan-0.pcap": (1, 1, 0, {}),
    "zeek_http_basic-auth-with-colon_rawip4.pcap": (1, 1, 0, {}),
    # tshark counts 7 requests and 8 responses. The truth: 7 exchanges, all complete; one more
    # request was lost in a capture gap and its response is here without it (an orphan); another
    # exchange is missing in both directions. The 3 gaps add up to 3091 bytes.
    "zeek_http_zero-length-bodies-with-drops.pcap": (7, 7, 1, {}),
}


def test_every_real_capture_is_covered() -> None:
    assert sorted(COUNTS) == sorted(p.name for p in REAL.iterdir() if p.name != "README.md")


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_capture_counts(name: str) -> None:
    exchanges, stats = load(str(REAL / name))
    count, complete, orphans, skipped = COUNTS[name]
    assert len(exchanges) == count
    assert sum(e.complete for e in exchanges) == complete
    assert sum(stats.orphan_responses.values()) == orphans
    assert dict(stats.skipped_streams) == skipped
    assert [e.index for e in exchanges] == list(range(count))
    assert [e.request_ts_ns for e in exchanges] == sorted(e.request_ts_ns for e in exchanges)
    assert not [w for w in stats.warnings if w.kind not in ("skipped-upgraded",)], stats.warnings


def _one(name: str, index: int = 0):
    exchanges, stats = load(str(REAL / name))
    return exchanges[index], exchanges, stats


def test_close_delimited_body_ends_at_fin() -> None:
    exchange, _, _ = _one("arkime_http-no-length_close-delimited.pcap")
    assert (exchange.label, exchange.response.status, exchange.response.version) == ("GET /js/xxxxxx.js", 200, "1.0")
    assert exchange.response.header("content-length") is None
    assert len(exchange.response.body) == 165
    assert exchange.response.body.startswith(b"document.write(")


def test_old_gor_response_stamped_with_request_time_uses_latency_field() -> None:
    exchange, _, stats = _one("gor_etg-mapmaker_requests_with_responses.gor")
    assert exchange.label == "GET /api/mapmaker"
    assert (exchange.response.status, exchange.response.reason) == (418, "I'm a teapot")
    assert len(exchange.response.body) == 1337
    assert exchange.request_ts_ns == 1499932720871971000
    assert exchange.recorded_latency_ns == 352870697  # the record's latency field
    assert any("latency field" in note for note in stats.notes)


def test_isucon_requests_only() -> None:
    _, exchanges, stats = _one("gor_isucon5_requests.gor")
    methods = [e.request.method for e in exchanges]
    assert (methods.count("GET"), methods.count("POST")) == (974, 77)
    assert exchanges[0].label == "GET /initialize"
    assert exchanges[0].request.host == "203.104.208.225"
    assert all(e.response is None and [f.code for f in e.flags] == ["no-response"] for e in exchanges)
    posts = [e for e in exchanges if e.request.method == "POST"]
    assert all(len(e.request.body) == int(e.request.header("content-length")) for e in posts)
    assert stats.records["1"] == 1051
    # 40-hex ids from old GoReplay identify single requests: each is its own connection
    assert len({e.connection for e in exchanges}) == 1051


def test_converted_requests_without_any_header() -> None:
    exchange, exchanges, _ = _one("gor_orcid-log-to-gor_requests_converted.gor")
    assert exchange.request.raw == b"GET / HTTP/1.1\r\n\r\n"
    assert exchange.request.headers == () and exchange.request.host is None
    assert exchanges[1].request.target == "/solr/profile/select?rows=1&q=test&wt=xml&version=2.2"


def test_lf_only_gor_payloads() -> None:
    _, exchanges, stats = _one("gor_traffic-analyzer_real_LF.gor")
    assert [e.label.split("?")[0] for e in exchanges] == [
        "POST /api/auth/login", "GET /api/users/page", "PUT /api/users/52/status", "POST /api/users/52/password/reset"]
    assert all(e.request.lf_only for e in exchanges)
    assert exchanges[0].request.body == b'{\n    "username": "admin",\n    "password": "123456"\n}'
    assert exchanges[1].request.header("authorization").startswith(b"Bearer eyJ")
    assert {e.connection for e in exchanges} == {"gor:f9ad1f9300000001"}  # 24-hex ids: one connection
    assert [e.position for e in exchanges] == [0, 1, 2, 3]
    assert stats.lf_only == 4


def test_linux_cooked_capture_on_port_85() -> None:
    exchange, _, stats = _one("learngit_http_sll_port85.cap")
    assert exchange.label == "GET /xflogin.aspx"
    assert exchange.connection.endswith(":85")
    assert (exchange.response.status, len(exchange.response.body)) == (200, 3962)
    assert stats.link_types["Linux cooked (SLL)"] == 13


def test_ipv4_and_ipv6() -> None:
    _, exchanges, _ = _one("ppa3_http_ip4and6.pcapng")
    assert exchanges[0].connection == "172.16.16.140:53350 -> 172.16.16.139:80"
    assert exchanges[1].connection == "[2001:db8:1:2::1002]:35023 -> [2001:db8:1:2::1000]:80"
    assert [len(e.response.body) for e in exchanges] == [298, 298]


def test_post_then_get_on_one_keepalive_connection() -> None:
    _, exchanges, _ = _one("ppa3_http_post.pcapng")
    post, get = exchanges
    assert (post.label, post.response.status, len(post.request.body)) == ("POST /wp-comments-post.php", 302, 179)
    assert post.request.body.startswith(b"author=Chris+Sanders&email=")
    assert (get.label, get.response.status, len(get.response.body)) == ("GET /?p=310&cpage=1", 200, 8388)
    assert post.connection == get.connection and (post.position, get.position) == (0, 1)


def test_h2c_upgrade_yields_both_streams() -> None:
    """As tshark -d tcp.port==80,http2 shows it: the Upgrade: h2c request is answered by stream 1
    (101, then HEADERS :status 200 and 62 bytes of DATA), stream 3 is GET /humans.txt -> 404."""
    exchanges, stats = load(str(REAL / "scapy_http2_h2c.pcap"))
    upgrade, humans = exchanges
    assert (upgrade.label, upgrade.response.status, upgrade.response.interim) == ("GET /robots.txt", 200, (101,))
    # replayed over HTTP/1.1: without the headers that would ask the target to switch protocols
    assert upgrade.request.header("upgrade") is None and upgrade.request.header("http2-settings") is None
    assert upgrade.request.protocol == "http/1" and upgrade.request.header("host") == b"nghttp2.org"
    assert upgrade.response.protocol == "h2c" and len(upgrade.response.body) == 62
    assert upgrade.response.header("server") == b"nghttpx"
    assert upgrade.source.frames == (1, 6)
    assert (humans.label, humans.response.status, humans.response.body) == ("GET /humans.txt", 404, b"not found")
    assert humans.request.protocol == "h2c" and humans.request.header("host") == b"nghttp2.org"
    assert humans.request.head.startswith(b"GET /humans.txt HTTP/1.1\r\nhost: nghttp2.org\r\n")
    assert humans.source.frames == (8, 10) and humans.complete
    assert stats.skipped_streams == {} and stats.protocols == {"h2c": 1}


def test_content_length_then_204() -> None:
    _, exchanges, _ = _one("scapy_http_content_length.pcap")
    assert [(e.response.status, len(e.response.body)) for e in exchanges] == [(200, 5012), (204, 0)]
    assert exchanges[0].response.header("content-encoding") == b"gzip"
    assert gzip.decompress(exchanges[0].response.body).startswith(b"<!doctype html>")


def test_head_response_has_no_body_despite_content_length() -> None:
    exchange, _, _ = _one("scapy_http_head.pcapng")
    assert (exchange.label, exchange.response.status) == ("HEAD /", 301)
    assert exchange.response.header("content-length") == b"219"
    assert exchange.response.body == b""


def test_chunked_and_gzip_response() -> None:
    exchange, _, _ = _one("wireshark-http-chunked-gzip_via-mikekap-pcap2har.pcap")
    assert exchange.response.header("transfer-encoding") == b"chunked"
    assert len(exchange.response.body) == 26375
    assert b"<!DOCTYPE html>" in gzip.decompress(exchange.response.body)


def test_classic_wireshark_sample() -> None:
    _, exchanges, _ = _one("wireshark-http.cap_via-pcap2har.pcap")
    assert exchanges[0].label == "GET /download.html"
    assert exchanges[0].source.frames == (4, 6)  # first frames (tshark names the last one, 38)
    assert (exchanges[0].response.status, len(exchanges[0].response.body)) == (200, 18070)
    assert exchanges[1].request.target.startswith("/pagead/ads?client=ca-pub-2309191948673629")
    assert len(exchanges[1].response.body) == 1272
    assert exchanges[0].connection != exchanges[1].connection


def test_vlan_tagged_frames() -> None:
    exchange, _, _ = _one("zeek_http-vlan-0.pcap")
    assert exchange.label == "GET /download/CHANGES.bro-aux.txt"
    assert len(exchange.response.body) == 4705


def test_raw_ipv4_link_type_and_basic_auth() -> None:
    exchange, _, stats = _one("zeek_http_basic-auth-with-colon_rawip4.pcap")
    assert stats.link_types == {"raw IPv4": 12}
    assert exchange.request.header("authorization").startswith(b"Basic ")
    assert (exchange.response.status, exchange.response.version, len(exchange.response.body)) == (200, "1.0", 643)


def test_capture_drops_pair_by_acknowledgement() -> None:
    _, exchanges, stats = _one("zeek_http_zero-length-bodies-with-drops.pcap")
    assert [e.source.frames for e in exchanges] == [(4, 7), (9, 12), (14, 17), (19, 20), (22, 27), (29, 32), (37, 40)]
    assert [e.response.status for e in exchanges] == [302, 200, 302, 200, 200, 200, 200]
    assert all(e.recorded_latency_ns < 200_000_000 for e in exchanges)  # no response paired with a later request
    assert (stats.gaps, stats.gap_bytes) == (3, 3091)
    assert stats.orphan_responses == {"its request was lost in a capture gap": 1}
