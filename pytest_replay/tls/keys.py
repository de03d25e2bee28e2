"""Cipher suites and key schedules: TLS 1.3 (HKDF-Expand-Label on the logged traffic secrets) and
TLS 1.2 (the PRF on the logged master secret), and the record protection they give.

Primitives (AES-GCM, ChaCha20-Poly1305, AES-CBC, HMAC) come from `cryptography` and hmac; the
schedules and record formats are here, checked against RFC 8448's traces in tests/test_tls.py.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

AEAD_GCM, AEAD_CHACHA, CBC = "gcm", "chacha20-poly1305", "cbc"


@dataclass(frozen=True)
class Suite:
    code: int
    name: str
    cipher: str  # AEAD_GCM, AEAD_CHACHA or CBC
    key_len: int
    hash: str  # PRF / HKDF hash: "sha256" or "sha384"
    mac: str | None = None  # CBC only: the record MAC hash ("sha1", "sha256", "sha384")
    tls13: bool = False


def _suites() -> dict[int, Suite]:
    table = [
        Suite(0x1301, "TLS_AES_128_GCM_SHA256", AEAD_GCM, 16, "sha256", tls13=True),
        Suite(0x1302, "TLS_AES_256_GCM_SHA384", AEAD_GCM, 32, "sha384", tls13=True),
        Suite(0x1303, "TLS_CHACHA20_POLY1305_SHA256", AEAD_CHACHA, 32, "sha256", tls13=True),
    ]
    for kx, codes in (("ECDHE_RSA", (0xC02F, 0xC030)), ("ECDHE_ECDSA", (0xC02B, 0xC02C)),
                      ("RSA", (0x009C, 0x009D)), ("DHE_RSA", (0x009E, 0x009F))):
        table.append(Suite(codes[0], f"TLS_{kx}_WITH_AES_128_GCM_SHA256", AEAD_GCM, 16, "sha256"))
        table.append(Suite(codes[1], f"TLS_{kx}_WITH_AES_256_GCM_SHA384", AEAD_GCM, 32, "sha384"))
    for kx, code in (("ECDHE_RSA", 0xCCA8), ("ECDHE_ECDSA", 0xCCA9), ("DHE_RSA", 0xCCAA)):
        table.append(Suite(code, f"TLS_{kx}_WITH_CHACHA20_POLY1305_SHA256", AEAD_CHACHA, 32, "sha256"))
    cbc = [  # (code, key exchange, AES bits, MAC)
        (0xC013, "ECDHE_RSA", 128, "SHA"), (0xC014, "ECDHE_RSA", 256, "SHA"),
        (0xC027, "ECDHE_RSA", 128, "SHA256"), (0xC028, "ECDHE_RSA", 256, "SHA384"),
        (0xC009, "ECDHE_ECDSA", 128, "SHA"), (0xC00A, "ECDHE_ECDSA", 256, "SHA"),
        (0xC023, "ECDHE_ECDSA", 128, "SHA256"), (0xC024, "ECDHE_ECDSA", 256, "SHA384"),
        (0x002F, "RSA", 128, "SHA"), (0x0035, "RSA", 256, "SHA"),
        (0x003C, "RSA", 128, "SHA256"), (0x003D, "RSA", 256, "SHA256"),
        (0x0033, "DHE_RSA", 128, "SHA"), (0x0039, "DHE_RSA", 256, "SHA"),
        (0x0067, "DHE_RSA", 128, "SHA256"), (0x006B, "DHE_RSA", 256, "SHA256"),
    ]
    for code, kx, bits, mac in cbc:
        mac_hash = {"SHA": "sha1", "SHA256": "sha256", "SHA384": "sha384"}[mac]
        table.append(Suite(code, f"TLS_{kx}_WITH_AES_{bits}_CBC_{mac}", CBC, bits // 8,
                           "sha384" if mac == "SHA384" else "sha256", mac_hash))
    return {suite.code: suite for suite in table}


SUITES = _suites()
VERSIONS = {0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2", 0x0304: "TLS 1.3", 0x0300: "SSL 3.0"}


def suite_name(code: int | None) -> str:
    if code is None:
        return "?"
    suite = SUITES.get(code)
    return suite.name if suite is not None else f"cipher suite 0x{code:04x}"


# -- TLS 1.3 ---------------------------------------------------------------------------------
def hkdf_expand(secret: bytes, info: bytes, length: int, hash_name: str) -> bytes:
    """HKDF-Expand (RFC 5869)."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes((counter,)), hash_name).digest()
        out += block
        counter += 1
    return out[:length]


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int, hash_name: str) -> bytes:
    """HKDF-Expand-Label (RFC 8446 section 7.1)."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + bytes((len(context),)) + context
    return hkdf_expand(secret, info, length, hash_name)


def tls13_keys(suite: Suite, secret: bytes) -> tuple[bytes, bytes]:
    """(write key, write iv) of a traffic secret (RFC 8446 section 7.3)."""
    key = hkdf_expand_label(secret, b"key", b"", suite.key_len, suite.hash)
    iv = hkdf_expand_label(secret, b"iv", b"", 12, suite.hash)
    return key, iv


def tls13_next_secret(suite: Suite, secret: bytes) -> bytes:
    """The traffic secret after a KeyUpdate (RFC 8446 section 7.2)."""
    return hkdf_expand_label(secret, b"traffic upd", b"", hashlib.new(suite.hash).digest_size, suite.hash)


# -- TLS 1.2 ---------------------------------------------------------------------------------
def prf12(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """The TLS 1.2 PRF, P_hash(secret, label + seed) (RFC 5246 section 5)."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = hmac.new(secret, a, hash_name).digest()
        out += hmac.new(secret, a + seed, hash_name).digest()
    return out[:length]


def tls12_key_block(suite: Suite, master: bytes, client_random: bytes, server_random: bytes
                    ) -> tuple[tuple[bytes, bytes, bytes], tuple[bytes, bytes, bytes]]:
    """((client mac key, key, iv), (server mac key, key, iv)) from the master secret (RFC 5246 6.3)."""
    mac_len = hashlib.new(suite.mac).digest_size if suite.cipher == CBC else 0
    iv_len = {AEAD_GCM: 4, AEAD_CHACHA: 12, CBC: 0}[suite.cipher]  # CBC: explicit IV per record
    size = 2 * (mac_len + suite.key_len + iv_len)
    block = prf12(master, b"key expansion", server_random + client_random, size, suite.hash)
    parts, at = [], 0
    for length in (mac_len, mac_len, suite.key_len, suite.key_len, iv_len, iv_len):
        parts.append(block[at:at + length])
        at += length
    cmac, smac, ckey, skey, civ, siv = parts
    return (cmac, ckey, civ), (smac, skey, siv)


# -- record protection -----------------------------------------------------------------------
class DecryptError(Exception):
    """A record did not authenticate (wrong key, corrupted or cut record)."""


def _aead(cipher: str, key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    return AESGCM(key) if cipher == AEAD_GCM else ChaCha20Poly1305(key)


def _xor_nonce(iv: bytes, seq: int) -> bytes:
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(len(iv), "big")


class Tls13Protection:
    """Opens TLS 1.3 records of one direction under one traffic secret."""

    def __init__(self, suite: Suite, secret: bytes) -> None:
        self.suite, self.secret = suite, secret
        key, self.iv = tls13_keys(suite, secret)
        self.aead = _aead(suite.cipher, key)
        self.seq = 0

    def open(self, header: bytes, body: bytes) -> tuple[int, bytes]:
        """(inner content type, content) of a protected record (RFC 8446 section 5.2)."""
        from cryptography.exceptions import InvalidTag

        try:
            inner = self.aead.decrypt(_xor_nonce(self.iv, self.seq), body, header)
        except (InvalidTag, ValueError) as exc:
            raise DecryptError("the record did not authenticate") from exc
        self.seq += 1
        end = len(inner)
        while end and inner[end - 1] == 0:  # zero padding after the content type
            end -= 1
        if not end:
            raise DecryptError("the record holds only padding, no content type")
        return inner[end - 1], inner[:end - 1]

    def updated(self) -> Tls13Protection:
        return Tls13Protection(self.suite, tls13_next_secret(self.suite, self.secret))


class Tls12Protection:
    """Opens TLS 1.2 records of one direction: AES-GCM (explicit nonce), ChaCha20-Poly1305
    (RFC 7905) or AES-CBC with MAC-then-encrypt, or encrypt-then-MAC (RFC 7366) when negotiated."""

    def __init__(self, suite: Suite, mac_key: bytes, key: bytes, iv: bytes, etm: bool = False) -> None:
        self.suite, self.mac_key, self.iv, self.etm = suite, mac_key, iv, etm
        self.seq = 0
        if suite.cipher == CBC:
            self.key = key
            self.aead = None
        else:
            self.aead = _aead(suite.cipher, key)

    def open(self, header: bytes, body: bytes) -> tuple[int, bytes]:
        ctype, version = header[0], header[1:3]
        if self.aead is None:
            content = self._open_cbc(ctype, version, body)
        else:
            content = self._open_aead(ctype, version, body)
        self.seq += 1
        return ctype, content

    def _open_aead(self, ctype: int, version: bytes, body: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        if self.suite.cipher == AEAD_GCM:
            if len(body) < 24:
                raise DecryptError("the record is shorter than its nonce and tag")
            nonce, body = self.iv + body[:8], body[8:]
        else:
            nonce = _xor_nonce(self.iv, self.seq)
        aad = struct.pack("!QB2sH", self.seq, ctype, version, len(body) - 16)
        try:
            return self.aead.decrypt(nonce, body, aad)
        except (InvalidTag, ValueError) as exc:
            raise DecryptError("the record did not authenticate") from exc

    def _mac(self, ctype: int, version: bytes, data: bytes) -> bytes:
        head = struct.pack("!QB2sH", self.seq, ctype, version, len(data))
        return hmac.new(self.mac_key, head + data, self.suite.mac).digest()

    def _open_cbc(self, ctype: int, version: bytes, body: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        mac_len = len(self.mac_key)
        if self.etm:
            body, tag = body[:-mac_len], body[-mac_len:]
            if not hmac.compare_digest(self._mac(ctype, version, body), tag):
                raise DecryptError("the record's MAC does not match")
        if len(body) < 32 or len(body) % 16:
            raise DecryptError("the record is not a whole number of AES blocks")
        decryptor = Cipher(algorithms.AES(self.key), modes.CBC(body[:16])).decryptor()
        plain = decryptor.update(body[16:]) + decryptor.finalize()
        pad = plain[-1]
        if pad + 1 > len(plain) or plain[-pad - 1:] != bytes((pad,)) * (pad + 1):
            raise DecryptError("the record's padding is wrong (wrong key?)")
        plain = plain[:-pad - 1]
        if self.etm:
            return plain
        if len(plain) < mac_len:
            raise DecryptError("the record is shorter than its MAC")
        content, tag = plain[:-mac_len], plain[-mac_len:]
        if not hmac.compare_digest(self._mac(ctype, version, content), tag):
            raise DecryptError("the record's MAC does not match")
        return content
