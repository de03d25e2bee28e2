"""The TLS record layer and the cleartext handshake messages we read (sans-IO).

Records: a 5-byte header (content type, version, length) and a body. Hellos: the ClientHello
gives the client random (the key log's index), SNI and ALPN offered; the ServerHello gives the
server random, the version (supported_versions for TLS 1.3), the cipher suite, ALPN chosen and
whether encrypt-then-MAC was negotiated.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
CONTENT_TYPES = (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA)
CLIENT_HELLO, SERVER_HELLO, NEW_SESSION_TICKET, END_OF_EARLY_DATA, ENCRYPTED_EXTENSIONS, FINISHED, KEY_UPDATE = (
    1, 2, 4, 5, 8, 20, 24)
HEADER = 5
MAX_RECORD = (1 << 14) + 2048  # the largest ciphertext a record may carry (RFC 5246 6.2.3)
EXT_SERVER_NAME, EXT_ALPN, EXT_ETM, EXT_EARLY_DATA, EXT_SUPPORTED_VERSIONS = 0, 16, 22, 42, 43
HELLO_RETRY_RANDOM = hashlib.sha256(b"HelloRetryRequest").digest()


class NotTls(ValueError):
    """Bytes that cannot be a TLS record header."""


def record_header(data: bytes | bytearray, at: int = 0) -> tuple[int, int, int]:
    """(content type, version, body length) of the record header at `at`."""
    ctype, version, length = struct.unpack_from("!BHH", data, at)
    if ctype not in CONTENT_TYPES or version >> 8 != 3 or length > MAX_RECORD:
        raise NotTls(f"not a TLS record header: {bytes(data[at:at + HEADER]).hex()}")
    return ctype, version, length


def looks_like_client_hello(payload: bytes) -> bool:
    """The first bytes of a connection: a handshake record starting a ClientHello."""
    return len(payload) >= 6 and payload[0] == HANDSHAKE and payload[1] == 3 and payload[5] == CLIENT_HELLO


def handshake_messages(buf: bytearray) -> list[tuple[int, bytes]]:
    """Whole handshake messages (type, body) taken from the front of `buf` (the rest stays)."""
    out = []
    while len(buf) >= 4:
        length = int.from_bytes(buf[1:4], "big")
        if len(buf) < 4 + length:
            break
        out.append((buf[0], bytes(buf[4:4 + length])))
        del buf[:4 + length]
    return out


@dataclass
class ClientHello:
    random: bytes
    server_name: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]
    early_data: bool = False  # TLS 1.3 0-RTT: application data may follow the ClientHello at once


@dataclass
class ServerHello:
    random: bytes
    version: int  # the negotiated version (supported_versions when present)
    suite: int
    alpn: str | None
    etm: bool

    @property
    def retry(self) -> bool:
        """A HelloRetryRequest (RFC 8446 4.1.3): another ClientHello and ServerHello follow."""
        return self.random == HELLO_RETRY_RANDOM


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("handshake message cut short")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, n: int) -> bytes:
        return self.take(self.int(n))

    @property
    def left(self) -> int:
        return len(self.data) - self.at


def _extensions(r: _Reader) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    if r.left < 2:
        return out
    block = _Reader(r.vector(2))
    while block.left >= 4:
        kind = block.int(2)
        out[kind] = block.vector(2)
    return out


def _alpn_list(data: bytes) -> tuple[str, ...]:
    r = _Reader(data)
    names = _Reader(r.vector(2))
    out = []
    while names.left:
        out.append(names.vector(1).decode("latin-1"))
    return tuple(out)


def parse_client_hello(body: bytes) -> ClientHello:
    r = _Reader(body)
    r.take(2)
    random = r.take(32)
    r.vector(1)  # session id
    r.vector(2)  # cipher suites
    r.vector(1)  # compression methods
    ext = _extensions(r)
    name = None
    if EXT_SERVER_NAME in ext:
        names = _Reader(_Reader(ext[EXT_SERVER_NAME]).vector(2))
        while names.left:
            kind, value = names.int(1), names.vector(2)
            if kind == 0:
                name = value.decode("ascii", "replace")
                break
    versions: tuple[int, ...] = ()
    if EXT_SUPPORTED_VERSIONS in ext:
        data = _Reader(ext[EXT_SUPPORTED_VERSIONS]).vector(1)
        versions = tuple(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data) - 1, 2))
    alpn = _alpn_list(ext[EXT_ALPN]) if EXT_ALPN in ext else ()
    return ClientHello(random, name, alpn, versions, EXT_EARLY_DATA in ext)


def parse_server_hello(body: bytes) -> ServerHello:
    r = _Reader(body)
    version = r.int(2)
    random = r.take(32)
    r.vector(1)  # session id
    suite = r.int(2)
    r.take(1)  # compression
    ext = _extensions(r)
    if EXT_SUPPORTED_VERSIONS in ext and len(ext[EXT_SUPPORTED_VERSIONS]) == 2:
        version = int.from_bytes(ext[EXT_SUPPORTED_VERSIONS], "big")
    alpn = _alpn_list(ext[EXT_ALPN])[0] if EXT_ALPN in ext and ext[EXT_ALPN][2:] else None
    return ServerHello(random, version, suite, alpn, EXT_ETM in ext)


def parse_encrypted_extensions(body: bytes) -> tuple[str | None, bool]:
    """TLS 1.3: the ALPN protocol the server chose (it is in EncryptedExtensions, not ServerHello),
    and whether it accepted the client's early data (0-RTT)."""
    ext = _extensions(_Reader(body))
    alpn = _alpn_list(ext[EXT_ALPN])[0] if EXT_ALPN in ext and ext[EXT_ALPN][2:] else None
    return alpn, EXT_EARLY_DATA in ext
