"""TLS decryption: the key schedules and record layer against RFC 8448's example handshake, the
recorded nginx/curl/python fixtures (TLS 1.2 and 1.3, key logs and pcapng Decryption Secrets
Blocks), what is reported when keys are missing or wrong or records are corrupted, records cut at
random points, and a replay of decrypted traffic end to end."""

from __future__ import annotations

import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_replay.capture import CaptureError, load
from pytest_replay.tls.decrypt import TlsConnection
from pytest_replay.tls.keylog import KeyLog
from pytest_replay.tls.keys import SUITES, DecryptError, Tls13Protection, hkdf_expand_label, prf12, tls13_keys
from pytest_replay.tls.records import parse_client_hello

RECORDED = Path(__file__).resolve().parent.parent / "fixtures" / "captures" / "recorded"
TLS13, TLS12, INJECTED, H2 = (RECORDED / n for n in ("tls13.pcap", "tls12.pcap", "tls13_injected.pcapng",
                                                     "tls_h2.pcap"))
KEYS13, KEYS12, KEYS_H2 = RECORDED / "tls13.keys.log", RECORDED / "tls12.keys.log", RECORDED / "tls_h2.keys.log"
EARLY, KEYS_EARLY = RECORDED / "tls13_early.pcap", RECORDED / "tls13_early.keys.log"
REJECTED, KEYS_REJECTED = RECORDED / "tls13_early_rejected.pcap", RECORDED / "tls13_early_rejected.keys.log"


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# -- RFC 8448 section 3, "Simple 1-RTT Handshake" (public test vectors) -------------------------
S_HS_TRAFFIC = h("b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38")
C_HS_TRAFFIC = h("b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e 2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a 21")
C_AP_TRAFFIC = h("9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5")
S_AP_TRAFFIC = h("a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43")
C_FINISHED_RECORD = h("""17 03 03 00 35 75 ec 4d c2 38 cc e6 0b 29 80 44 a7 1e 21 9c 56 cc 77 b0 51 7f e9 b9 3c
    7a 4b fc 44 d8 7f 38 f8 03 38 ac 98 fc 46 de b3 84 bd 1c ae ac ab 68 67 d7 26 c4 05 46""")
C_APP_RECORD = h("""17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea 42 f9 14 aa 66 bc ab
    3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb
    21 69 49 15 e4""")
S_APP_RECORD = h("""17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc 32 25 d0 5f 82 aa 1b
    36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32
    e1 67 c2 95 5d""")
RFC_PAYLOAD = bytes(range(50))  # 00 01 02 ... 31
AES128 = SUITES[0x1301]


def test_rfc8448_traffic_key_and_iv() -> None:
    key, iv = tls13_keys(AES128, S_HS_TRAFFIC)
    assert key == h("3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc")
    assert iv == h("5d 31 3e b2 67 12 76 ee 13 00 0b 30")
    assert tls13_keys(AES128, C_AP_TRAFFIC) == (h("17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51"),
                                                h("5b 78 92 3d ee 08 57 90 33 e5 23 d9"))
    # the label as RFC 8448 prints it: "key info (13 octets): 00 10 09 74 6c 73 31 33 20 6b 65 79 00"
    assert hkdf_expand_label(S_HS_TRAFFIC, b"key", b"", 16, "sha256") == key


def test_rfc8448_application_records_decrypt() -> None:
    # the server's NewSessionTicket went first under its application keys: its data record is seq 1
    for secret, record, seq in ((C_AP_TRAFFIC, C_APP_RECORD, 0), (S_AP_TRAFFIC, S_APP_RECORD, 1)):
        protection = Tls13Protection(AES128, secret)
        protection.seq = seq
        inner, content = protection.open(record[:5], record[5:])
        assert (inner, content) == (23, RFC_PAYLOAD)


def test_rfc8448_client_finished_is_an_inner_handshake_record() -> None:
    inner, content = Tls13Protection(AES128, C_HS_TRAFFIC).open(C_FINISHED_RECORD[:5], C_FINISHED_RECORD[5:])
    assert inner == 22 and content[:4] == b"\x14\x00\x00\x20" and len(content) == 36


def test_rfc8448_wrong_sequence_number_or_key_fails() -> None:
    protection = Tls13Protection(AES128, C_AP_TRAFFIC)
    protection.seq = 1
    with pytest.raises(DecryptError):
        protection.open(C_APP_RECORD[:5], C_APP_RECORD[5:])
    with pytest.raises(DecryptError):
        Tls13Protection(AES128, S_AP_TRAFFIC).open(C_APP_RECORD[:5], C_APP_RECORD[5:])


def test_tls12_prf_known_answer() -> None:
    # The widely used TLS 1.2 PRF-SHA256 test vector (IETF TLS list, from Chris Hawk's set).
    out = prf12(h("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35"), b"test label",
                h("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c"), 100, "sha256")
    assert out[:16] == h("e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53")


# -- key logs ---------------------------------------------------------------------------------
def test_keylog_parsing_counts_and_never_shows_secrets() -> None:
    random = "ab" * 32
    text = (f"# comment\n\nCLIENT_RANDOM {random} {'11' * 48}\n"
            f"CLIENT_TRAFFIC_SECRET_0 {random} {'22' * 32}\nRSA deadbeef {'33' * 48}\n"
            f"CLIENT_RANDOM {random[:10]} {'44' * 48}\nnot a line\n")
    keylog = KeyLog()
    assert keylog.add_text(text, "keys.log") == 2
    assert keylog.get(bytes.fromhex(random)) == {"CLIENT_RANDOM": b"\x11" * 48, "CLIENT_TRAFFIC_SECRET_0": b"\x22" * 32}
    assert keylog.counts["ignored"] == 2 and keylog.counts["malformed"] == 1  # RSA and "not a line"; the short random
    assert "11" not in repr(keylog) and "22" not in repr(keylog)


def test_missing_keylog_file_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot read the TLS key log"):
        load(str(TLS13), keylog=[str(tmp_path / "absent.log")])


# -- recorded fixtures ------------------------------------------------------------------------
def _truth(capture: Path) -> dict:
    return json.loads(capture.with_name(capture.name + ".expect.json").read_text())


@pytest.mark.parametrize("capture, keys", [(TLS13, KEYS13), (TLS12, KEYS12), (INJECTED, None)],
                         ids=["tls13", "tls12", "pcapng-secrets"])
def test_recorded_tls_decrypts_to_the_ground_truth(capture: Path, keys: Path | None) -> None:
    truth = _truth(capture)
    exchanges, stats = load(str(capture), keylog=[str(keys)] if keys else None)
    got = [(e.request.method, e.request.target, e.response.status, len(e.request.body), len(e.response.body))
           for e in exchanges]
    want = [(x["method"], x["target"], x["status"], x["request_body"], x["response_body"]) for x in truth["exchanges"]]
    assert got == want
    assert truth["tshark"]["requests"] == len(want)  # tshark with the key log agrees
    assert all(e.complete and e.scheme == "https" for e in exchanges)
    assert stats.tls == {"decrypted": truth["tls"]["connections"]}
    assert stats.skipped_streams == {}
    by_suite = {c["cipher_suite"] for c in stats.tls_connections}
    assert {x["cipher"] for x in truth["exchanges"] if "cipher" in x} <= by_suite
    assert {c["version"] for c in stats.tls_connections} == {truth["tls"]["version"]}


def test_sni_is_the_server_name_and_host_stands_in_without_sni() -> None:
    exchanges, _ = load(str(TLS13), keylog=[str(KEYS13)])
    curl = [e for e in exchanges if (e.request.header("user-agent") or b"").startswith(b"curl")]
    python = [e for e in exchanges if e not in curl]
    assert {e.server_name for e in curl} == {"tls.test"}
    assert python and all(e.server_name == e.request.host for e in python)  # http.client to an IP: no SNI


def test_tls12_cbc_connections_and_session_resumption() -> None:
    exchanges, stats = load(str(TLS12), keylog=[str(KEYS12)])
    suites = [c["cipher_suite"] for c in stats.tls_connections]
    assert "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA" in suites and "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384" in suites
    assert "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" in suites
    # the Python client's second connection resumed the first one's session: decrypted by its own random
    assert stats.tls_connections[-1]["decrypted"]
    assert [e.request.method for e in exchanges[-3:]] == ["GET", "POST", "GET"]


def test_pcapng_secrets_are_noted_and_used_without_a_keylog() -> None:
    _, stats = load(str(INJECTED))
    assert any("Decryption Secrets Block" in note for note in stats.notes)


def test_alpn_h2_streams_are_exchanges_over_https() -> None:
    truth = _truth(H2)
    exchanges, stats = load(str(H2), keylog=[str(KEYS_H2)])
    got = [(e.request.method, e.request.target, e.response.status, len(e.request.body), len(e.response.body))
           for e in exchanges]
    want = [(x["method"], x["target"], x["status"], x["request_body"], x["response_body"]) for x in truth["exchanges"]]
    assert got == want
    assert truth["tshark"]["requests"] == truth["tshark"]["responses"] == len(want)  # tshark with the key log agrees
    assert all(e.complete and e.scheme == "https" and e.server_name == "tls.test" for e in exchanges)
    assert {e.request.protocol for e in exchanges} == {"h2"}
    assert [e.request.host for e in exchanges[3:]] == ["tls.test:" + exchanges[3].request.host.split(":")[1]] * 3
    assert stats.skipped_streams == {} and stats.protocols == {"h2": 3} and stats.tls == {"decrypted": 3}
    described = [(c["protocol"], c["version"], c["cipher_suite"], c["alpn"]) for c in stats.tls_connections]
    assert described == [("TLS+h2", "TLS 1.3", "TLS_AES_256_GCM_SHA384", "h2"),
                         ("TLS+h2", "TLS 1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "h2"),
                         ("TLS+h2", "TLS 1.3", "TLS_AES_256_GCM_SHA384", "h2")]


def test_alpn_h2_without_keys_is_reported_per_connection() -> None:
    exchanges, stats = load(str(H2))
    assert exchanges == [] and stats.tls == {"no-key": 3} and stats.skipped_streams == {"tls": 3}
    assert {c["protocol"] for c in stats.tls_connections} == {"TLS undecrypted"}


def test_inspect_says_tls_h2_with_version_and_cipher(capsys) -> None:
    from pytest_replay.cli import main

    assert main(["inspect", str(H2), "--keylog", str(KEYS_H2)]) == 0
    text = capsys.readouterr().out
    assert "connections: 3 (h2: 3)" in text and "exchanges: 6 (6 complete" in text
    assert "TLS+h2, TLS 1.2, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, SNI tls.test, ALPN h2: decrypted" in text
    assert main(["inspect", str(TLS13), "--keylog", str(KEYS13)]) == 0
    assert "TLS+HTTP/1.1, TLS 1.3, TLS_AES_256_GCM_SHA384" in capsys.readouterr().out


# -- TLS 1.3 early data (0-RTT) ------------------------------------------------------------------
def test_early_data_is_decrypted_with_the_client_early_traffic_secret() -> None:
    truth = _truth(EARLY)
    exchanges, stats = load(str(EARLY), keylog=[str(KEYS_EARLY)])
    got = [(e.request.method, e.request.target, e.response.status, len(e.response.body)) for e in exchanges]
    assert got == [(x["method"], x["target"], x["status"], x["response_body"]) for x in truth["exchanges"]]
    assert truth["tshark"]["requests"] == 2 and all(e.complete and e.scheme == "https" for e in exchanges)
    assert [c["early_data"] for c in stats.tls_connections] == [
        None, {"offered": True, "accepted": True, "records": 1, "decrypted": 1, "reason": ""}]
    early = exchanges[1]
    # the request left in the 0-RTT record, the packet right after the ClientHello's
    assert early.source.frames[0] == stats.tls_connections[1]["frame"] + 3
    assert stats.warnings == [] and stats.tls == {"decrypted": 2}


def test_missing_early_secret_is_reported_per_connection_and_the_rest_decrypts() -> None:
    keylog = KeyLog()
    keylog.add_text("\n".join(line for line in KEYS_EARLY.read_text().splitlines()
                              if not line.startswith("CLIENT_EARLY_TRAFFIC_SECRET")), "no early secret")
    exchanges, stats = load(str(EARLY), keylog=keylog)
    assert len(exchanges) == 1 and stats.tls == {"decrypted": 2}  # the handshake and the response decrypt
    (warning,) = [w for w in stats.warnings if w.kind == "tls-early"]
    random = KEYS_EARLY.read_text().split("CLIENT_EARLY_TRAFFIC_SECRET ")[1].split()[0]
    assert f"no CLIENT_EARLY_TRAFFIC_SECRET for client random {random} in the key log" in str(warning)
    assert warning.frame == stats.tls_connections[1]["frame"] + 3  # the 0-RTT record's packet
    assert stats.tls_connections[1]["early_data"]["reason"] == "no CLIENT_EARLY_TRAFFIC_SECRET line in the key log"
    assert sum(stats.orphan_responses.values()) == 1  # its response, whose request could not be read


def test_early_data_without_handshake_secrets_is_opened_all_the_same() -> None:
    """Only the traffic and early secrets: the server's EncryptedExtensions cannot be read, so whether
    it accepted the early data is not known; the 0-RTT request opens with its secret and is kept."""
    keylog = KeyLog()
    keylog.add_text("\n".join(line for line in KEYS_EARLY.read_text().splitlines() if "HANDSHAKE" not in line), "x")
    exchanges, stats = load(str(EARLY), keylog=keylog)
    assert [(e.request.target, e.response.status) for e in exchanges] == [("/data.json", 200)] * 2
    assert stats.tls_connections[1]["early_data"] == {"offered": True, "accepted": None, "records": 1,
                                                      "decrypted": 1, "reason": ""}
    assert stats.warnings == []


def test_inspect_reports_early_data(capsys) -> None:
    from pytest_replay.cli import main

    assert main(["inspect", str(EARLY), "--keylog", str(KEYS_EARLY)]) == 0
    assert "0-RTT early data: 1 records decrypted" in capsys.readouterr().out


def test_rejected_early_data_is_skipped_and_reported_and_the_rest_decrypts() -> None:
    """tls13_early_rejected.pcap: two resumed sessions whose GET travelled as 0-RTT data that nginx
    rejected (the key log has the early secret, so the records would decrypt). Neither early GET is an
    exchange: the first client sent nothing more (its connection has none), the second sent the GET
    again after the handshake, and that request, from its own packet, is the exchange."""
    truth = _truth(REJECTED)
    exchanges, stats = load(str(REJECTED), keylog=[str(KEYS_REJECTED)])
    got = [(e.request.method, e.request.target, e.response.status, len(e.response.body)) for e in exchanges]
    assert got == [(x["method"], x["target"], x["status"], x["response_body"]) for x in truth["exchanges"]]
    assert truth["tshark"]["requests"] == len(got) == 2  # tshark, leaving out the 0-RTT records, agrees
    assert truth["tshark"]["requests_with_rejected_early_data"] == 4  # ... which it decrypts all the same
    assert stats.tls == {"decrypted": 3} and stats.warnings == [] and not stats.orphan_responses
    early = [c["early_data"] for c in stats.tls_connections]
    assert early[0] is None and [e and e["accepted"] for e in early] == [None, False, False]
    for info, connection in zip(early[1:], stats.tls_connections[1:]):
        assert (info["records"], info["decrypted"]) == (1, 0)
        # the 0-RTT record rides in the ClientHello's packet, the third of the connection (after the SYNs)
        assert info["reason"].startswith("rejected by the server: 1 record (") and \
            f"bytes, from frame {connection['frame'] + 3}) skipped" in info["reason"]
    resent = exchanges[1]
    # the resent GET is the one after the handshake (its own packet), not the rejected 0-RTT one
    assert resent.source.frames[0] > stats.tls_connections[2]["frame"] + 3
    assert resent.complete and resent.scheme == "https" and resent.server_name == "tls.test"


def test_rejected_early_data_that_comes_after_the_servers_answer_is_skipped_and_counted() -> None:
    """The client's 0-RTT record arriving after the server's EncryptedExtensions (a client still
    sending early data when the rejection comes): skipped with the handshake keys, counted, and the
    request sent again after the handshake decrypts."""
    segments = _segments(REJECTED)[2]
    hello_and_early = segments[0][1]
    assert segments[0][0] and not segments[1][0]
    cut = 5 + int.from_bytes(hello_and_early[3:5], "big")  # the ClientHello record, then the 0-RTT one
    late = [(True, hello_and_early[:cut]), segments[1], (True, hello_and_early[cut:]), *segments[2:]]
    for order in (segments, late):
        client, server, reports = _Sink(), _Sink(), []
        report = lambda *args, out=reports: out.append(args)  # noqa: E731
        conn = TlsConnection(KeyLog.from_files([KEYS_REJECTED]), client, server, report, report)
        for index, (from_client, payload) in enumerate(order):
            (conn.client if from_client else conn.server).feed(payload, 0, index + 1)
        assert bytes(client.data) == b"GET /data.json HTTP/1.1\r\nHost: tls.test\r\nConnection: close\r\n\r\n"
        assert bytes(server.data).startswith(b"HTTP/1.1 200 OK") and reports == []
        assert conn.early["accepted"] is False and (conn.early["records"], conn.early["decrypted"]) == (1, 0)
        assert conn.early["reason"].startswith("rejected by the server: 1 record (") and conn.status == "decrypted"


def test_inspect_reports_rejected_early_data(capsys) -> None:
    from pytest_replay.cli import main

    assert main(["inspect", str(REJECTED), "--keylog", str(KEYS_REJECTED)]) == 0
    out = capsys.readouterr().out
    assert out.count("0-RTT early data rejected by the server: 1 record (") == 2 and "exchanges: 2 (2 complete" in out


def test_replay_of_rejected_early_data_sends_only_the_resent_request(pytester: pytest.Pytester) -> None:
    """End to end: the replay sends the two GETs the server answered, not the two it rejected as 0-RTT data."""
    result, _, seen = replay_decrypted(pytester, REJECTED, KEYS_REJECTED)
    result.assert_outcomes(passed=2)
    assert seen == ["GET /data.json", "GET /data.json"]


# -- missing, wrong keys, corrupted records: reports, never exceptions ------------------------
def _keylog_without(keys: Path, random: bytes) -> KeyLog:
    lines = [line for line in keys.read_text().splitlines() if random.hex() not in line]
    keylog = KeyLog()
    keylog.add_text("\n".join(lines), "filtered")
    return keylog


def _first_client_random(capture: Path) -> bytes:
    _, stats = load(str(capture))
    reason = stats.tls_connections[0]["reason"]
    return bytes.fromhex(reason.split("client random ")[1].split()[0])


def test_connection_without_its_key_is_reported_others_decrypt() -> None:
    random = _first_client_random(TLS13)
    exchanges, stats = load(str(TLS13), keylog=_keylog_without(KEYS13, random))
    assert len(exchanges) == len(_truth(TLS13)["exchanges"]) - 2  # the first curl run had 2 requests
    assert stats.tls == {"decrypted": 3, "no-key": 1}
    assert stats.skipped_streams == {"tls": 1}
    (warning,) = [w for w in stats.warnings if w.kind == "skipped-tls"]
    assert f"no key for client random {random.hex()}" in str(warning) and warning.frame is not None


def test_tls13_traffic_secrets_alone_suffice_and_handshake_secrets_alone_are_reported() -> None:
    lines = KEYS13.read_text().splitlines()
    only_traffic, only_handshake = KeyLog(), KeyLog()
    only_traffic.add_text("\n".join(line for line in lines if "HANDSHAKE" not in line), "traffic")
    only_handshake.add_text("\n".join(line for line in lines if "TRAFFIC_SECRET_0" not in line), "handshake")
    exchanges, stats = load(str(TLS13), keylog=only_traffic)  # handshake records skipped by trial
    assert len(exchanges) == len(_truth(TLS13)["exchanges"]) and stats.tls == {"decrypted": 4}
    exchanges, stats = load(str(TLS13), keylog=only_handshake)
    assert exchanges == [] and stats.tls == {"no-key": 4}
    assert all("no SERVER_TRAFFIC_SECRET_0 line in the key log" in c["reason"] for c in stats.tls_connections)


def test_no_keylog_at_all_reports_every_connection() -> None:
    exchanges, stats = load(str(TLS12))
    assert exchanges == [] and stats.tls == {"no-key": 7} and stats.skipped_streams == {"tls": 7}
    assert all("no key log given" in c["reason"] for c in stats.tls_connections)


@pytest.mark.parametrize("keys, capture", [(KEYS13, TLS13), (KEYS12, TLS12)], ids=["tls13", "tls12"])
def test_wrong_keys_are_reported_with_the_frame(keys: Path, capture: Path) -> None:
    wrong = KeyLog()
    for line in keys.read_text().splitlines():
        label, random, secret = line.split()
        wrong.add_text(f"{label} {random} {secret[:-2]}{(int(secret[-2:], 16) ^ 1):02x}", "wrong")
    exchanges, stats = load(str(capture), keylog=wrong)
    assert exchanges == []
    assert set(stats.tls) == {"failed"} and stats.skipped_streams == {"tls-failed": stats.tls["failed"]}
    warnings = [w for w in stats.warnings if w.kind == "skipped-tls-failed"]
    assert warnings and all(w.frame is not None and f"record in frame {w.frame}: " in str(w) for w in warnings)


def _packets(capture: Path) -> list[tuple[int, bytes]]:
    """(pcap record offset, bytes) of each packet of a classic pcap."""
    data = capture.read_bytes()
    out, at = [], 24
    while at < len(data):
        length = struct.unpack_from("<I", data, at + 8)[0]
        out.append((at, data[at + 16:at + 16 + length]))
        at += 16 + length
    return out


def _corrupt_app_record(capture: Path, tmp_path: Path, nth: int) -> tuple[Path, int]:
    """A copy of the capture with one byte flipped inside the `nth` client application data record
    (TCP checksums are not checked); returns (path, frame number)."""
    data = bytearray(capture.read_bytes())
    seen = 0
    for frame, (at, packet) in enumerate(_packets(capture), 1):
        payload = packet[14 + 20 + ((packet[46] >> 4) * 4):]
        if payload[:3] == b"\x17\x03\x03" and len(payload) > 40 and struct.unpack_from("!H", packet, 36)[0] != 443:
            seen += 1
            if seen == nth:
                data[at + 16 + len(packet) - 20] ^= 0xFF
                path = tmp_path / capture.name
                path.write_bytes(bytes(data))
                return path, frame
    raise AssertionError("no such record")


def test_a_corrupted_record_is_reported_with_its_frame(tmp_path: Path) -> None:
    path, frame = _corrupt_app_record(TLS12, tmp_path, 3)
    exchanges, stats = load(str(path), keylog=[str(KEYS12)])
    reports = [w for w in stats.warnings if w.kind in ("tls-record", "skipped-tls-failed")]
    assert reports and any(w.frame == frame for w in reports), [str(w) for w in stats.warnings]
    assert len(exchanges) >= len(_truth(TLS12)["exchanges"]) - 4  # the rest is still read


# -- records cut at random points -------------------------------------------------------------
class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.gaps = 0

    def feed(self, data, ts_ns, frame=0, ack=None, where=0) -> None:
        self.data += data

    def gap(self, nbytes, code="gap", detail="") -> None:
        self.gaps += 1

    def close(self, code=None, detail="") -> None:
        pass


def _segments(capture: Path) -> list[list[tuple[bool, bytes]]]:
    """Each TCP connection's payloads in capture order (loopback: no loss, no reordering; a
    retransmission, seen by its sequence number, is dropped)."""
    conns: dict[tuple, list] = {}
    sent: dict[tuple, int] = {}  # (source port, destination port) -> next sequence number
    for _, packet in _packets(capture):
        ihl = (packet[14] & 0x0F) * 4
        sport, dport, seq = struct.unpack_from("!HHI", packet, 14 + ihl)
        payload = packet[14 + ihl + ((packet[14 + ihl + 12] >> 4) * 4):14 + struct.unpack_from("!H", packet, 16)[0]]
        if not payload or sent.get((sport, dport), seq) > seq:
            continue
        sent[sport, dport] = seq + len(payload)
        key = tuple(sorted((sport, dport)))
        conns.setdefault(key, [])
        from_client = not conns[key] or conns[key][0][2] == sport
        conns[key].append((from_client, payload, sport))
    return [[(c, p) for c, p, _ in v] for v in conns.values()]


def _decrypt(segments, keylog, cuts=None) -> tuple[bytes, bytes, list]:
    client, server, reports = _Sink(), _Sink(), []
    conn = TlsConnection(keylog, client, server, lambda *a: reports.append(a), lambda *a: reports.append(a))
    for index, (from_client, payload) in enumerate(segments):
        side = conn.client if from_client else conn.server
        points = sorted({c % (len(payload) + 1) for c in (cuts[index % len(cuts)] if cuts else [])})
        start = 0
        for point in [*points, len(payload)]:
            side.feed(payload[start:point], 0, index + 1)
            start = point
    return bytes(client.data), bytes(server.data), reports


CONNECTIONS = {name: _segments(capture) for name, capture in (("tls13", TLS13), ("tls12", TLS12),
                                                               ("tls13_early", EARLY))}
CONNECTIONS["tls13_early_rejected"] = [c for i, c in enumerate(_segments(REJECTED)) if i != 1]  # (1: no request)
KEYLOGS = {"tls13": KeyLog.from_files([KEYS13]), "tls12": KeyLog.from_files([KEYS12]),
           "tls13_early": KeyLog.from_files([KEYS_EARLY]), "tls13_early_rejected": KeyLog.from_files([KEYS_REJECTED])}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CONNECTIONS)), which=st.integers(0, 6),
       cuts=st.lists(st.lists(st.integers(0, 5000), max_size=6), min_size=1, max_size=8))
def test_records_cut_at_random_points_give_the_same_plaintext(name, which, cuts) -> None:
    segments = CONNECTIONS[name][which % len(CONNECTIONS[name])]
    whole = _decrypt(segments, KEYLOGS[name])
    assert whole[0].startswith((b"GET ", b"POST ")) and whole[2] == []
    assert _decrypt(segments, KEYLOGS[name], cuts) == whole


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CONNECTIONS)), which=st.integers(0, 6), flips=st.lists(
    st.tuples(st.integers(0, 100), st.integers(0, 4000), st.integers(1, 255)), max_size=4),
    drop_keys=st.booleans())
def test_damaged_streams_and_missing_keys_give_reports_not_exceptions(name, which, flips, drop_keys) -> None:
    segments = list(CONNECTIONS[name][which % len(CONNECTIONS[name])])
    for index, at, mask in flips:
        index %= len(segments)
        from_client, payload = segments[index]
        payload = bytearray(payload)
        payload[at % len(payload)] ^= mask
        segments[index] = (from_client, bytes(payload))
    keylog = KeyLog() if drop_keys else KEYLOGS[name]
    client, server, reports = _decrypt(segments, keylog)
    if drop_keys:
        assert reports and not client and not server
    if not flips and not drop_keys:
        assert not reports


def _h2_over_tls(segments, keylog, cuts=None) -> list[tuple]:
    """The HTTP/2 streams of one TLS connection fed with its TCP payloads cut at `cuts`."""
    from pytest_replay.http.h2 import H2Session
    from pytest_replay.reassembly.flows import H2Sink

    closed = []
    session = H2Session(None, closed.append, protocol="h2")
    reports: list = []
    conn = TlsConnection(keylog, _Sink(), _Sink(), lambda *a: reports.append(a), lambda *a: reports.append(a),
                         lambda tls: (H2Sink(session, True), H2Sink(session, False)))
    for index, (from_client, payload) in enumerate(segments):
        side = conn.client if from_client else conn.server
        points = sorted({c % (len(payload) + 1) for c in (cuts[index % len(cuts)] if cuts else [])})
        start = 0
        for point in [*points, len(payload)]:
            side.feed(payload[start:point], 0, index + 1)
            start = point
    session.finish()
    out = []
    for stream in closed:
        request, response = stream.request("h2"), stream.response("h2")
        out.append((stream.id, request.method, request.target, request.body, response.status, response.body,
                    tuple(stream.flags)))
    return out + reports


H2_CONNECTIONS = _segments(H2)
H2_KEYS = KeyLog.from_files([KEYS_H2])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 2), cuts=st.lists(st.lists(st.integers(0, 3000), max_size=6), min_size=1, max_size=8))
def test_h2_over_tls_cut_at_random_points_gives_the_same_streams(which, cuts) -> None:
    segments = H2_CONNECTIONS[which]
    whole = _h2_over_tls(segments, H2_KEYS)
    assert whole and all(len(item) == 7 and item[6] == () for item in whole)  # streams, no flags, no reports
    assert _h2_over_tls(segments, H2_KEYS, cuts) == whole


def test_client_hello_fields() -> None:
    segments = CONNECTIONS["tls13"][0]
    record = segments[0][1]
    hello = parse_client_hello(record[9:5 + struct.unpack_from("!H", record, 3)[0]])
    assert hello.server_name == "tls.test" and 0x0304 in hello.versions and "http/1.1" in hello.alpn


# -- key material never leaves --------------------------------------------------------------
@pytest.mark.parametrize("command", ["convert", "redact"])
def test_outputs_hold_no_key_material(command: str, tmp_path: Path) -> None:
    from pytest_replay.cli import main

    out = tmp_path / ("out.gor" if command == "convert" else "out.pcapng")
    assert main([command, str(INJECTED), str(out)]) == 0
    data = out.read_bytes()
    assert b"GET /data.json" in data  # the decrypted traffic is there
    for line in KEYS13.read_text().splitlines():
        _, random, secret = line.split()
        assert secret.encode() not in data and bytes.fromhex(secret) not in data
    assert b"TLSK" not in data and b"CLIENT_" not in data


def test_inspect_reports_each_tls_connection(capsys) -> None:
    from pytest_replay.cli import main

    assert main(["inspect", str(TLS13), "--keylog", str(KEYS13)]) == 0
    text = capsys.readouterr().out
    assert "TLS connections: decrypted: 4" in text
    assert "TLS 1.3, TLS_CHACHA20_POLY1305_SHA256, SNI tls.test" in text
    assert main(["inspect", str(TLS12)]) == 0
    assert "not decrypted: no key for client random" in capsys.readouterr().out


# -- end to end ---------------------------------------------------------------------------------
class _Recorded:
    """A plain HTTP server answering what the decrypted capture recorded (the sandboxed service)."""

    def __init__(self, exchanges) -> None:
        answers = {(e.request.method, e.request.target): e.response for e in exchanges}
        self.seen: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                service.seen.append(f"{self.command} {self.path}")
                response = answers[(self.command, self.path)]
                self.send_response(response.status)
                self.send_header("Content-Type", (response.header("content-type") or b"text/plain").decode())
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def replay_decrypted(pytester: pytest.Pytester, capture, keys):
    """`pytest --replay capture --replay-keylog keys` at speed 0 against a server answering as recorded:
    (the run's result, the decrypted exchanges, the requests the server saw)."""
    exchanges, _ = load(str(capture), keylog=[str(keys)])
    service = _Recorded(exchanges)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--replay-keylog",
                                               str(keys), "--replay-target", service.url, "--speed", "0")
    finally:
        service.close()
    return result, exchanges, service.seen


def test_replay_of_decrypted_tls13_passes(pytester: pytest.Pytester) -> None:
    result, exchanges, seen = replay_decrypted(pytester, TLS13, KEYS13)
    result.assert_outcomes(passed=len(exchanges) - 1, skipped=1)  # the POST: a write, answered from the recording
    assert "GET /data.json" in seen and "POST /echo" not in seen  # writes mocked by default


def test_replay_without_keys_says_why(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(TLS13), "--replay-target",
                                           "http://127.0.0.1:9", "--speed", "0")
    assert "tls 4" in result.stdout.str() or "no key" in result.stdout.str()


def test_replay_of_decrypted_tls_h2_passes(pytester: pytest.Pytester) -> None:
    exchanges, _ = load(str(H2), keylog=[str(KEYS_H2)])
    service = _Recorded(exchanges)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(H2), "--replay-keylog",
                                               str(KEYS_H2), "--replay-target", service.url, "--speed", "0", "-rs")
    finally:
        service.close()
    result.assert_outcomes(passed=5, skipped=1)  # the POST: a write, answered from the recording
    assert sorted(service.seen) == ["GET /data.json", "GET /data.json", "GET /index.html", "GET /index.html",
                                    "GET /missing"]
