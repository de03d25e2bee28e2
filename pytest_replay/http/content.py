"""Content codings (RFC 9110 8.4): undoing Content-Encoding, once for everyone (verdicts, redaction,
correlation helpers). Sans-IO: bytes in, bytes out.

gzip and deflate come with Python. br and zstd come from the same libraries httpx decodes them with
(`brotli`, or `brotlicffi` off CPython; `zstandard`), which are dependencies of this package: a
capture of a browser's traffic holds br and zstd bodies, and without a decoder they could only be
compared byte for byte (two compressors, or two levels of one, give different bytes for one body).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

from .message import codings

try:
    import brotli  # CPython: the C bindings
except ImportError:  # pragma: no cover - depends on the platform
    try:
        import brotlicffi as brotli  # PyPy and others
    except ImportError:
        brotli = None

try:
    import zstandard
except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
    zstandard = None


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)  # RFC 9110 deflate: zlib-wrapped
    except zlib.error:
        return zlib.decompress(data, -zlib.MAX_WBITS)  # what some servers send: raw deflate


def _unbrotli(data: bytes) -> bytes:
    if brotli is None:
        raise ValueError("br: neither brotli nor brotlicffi is installed")
    return brotli.decompress(data)


def _unzstd(data: bytes) -> bytes:
    """Every frame of a zstd body, also frames that do not state their decoded size (as a streaming
    compressor writes them)."""
    if zstandard is None:
        raise ValueError("zstd: zstandard is not installed")
    parts = []
    while data:
        frame = zstandard.ZstdDecompressor().decompressobj()
        parts.append(frame.decompress(data))
        if not frame.eof:
            raise ValueError("zstd: the body ends inside a frame")
        data = frame.unused_data
    return b"".join(parts)


# coding name (lower case) -> decoder; a decoder raises on a damaged body
DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress, "x-gzip": gzip.decompress, "deflate": _inflate, "br": _unbrotli, "zstd": _unzstd,
    "identity": lambda data: data,
}


def decode(body: bytes, value: bytes | str | None) -> tuple[bytes, str | None]:
    """(body with the Content-Encoding `value` undone, None), or (body as given, why it could not be)."""
    if not body:
        return body, None
    decoded = body
    for coding in reversed(codings(value)):  # the last applied is undone first
        decoder = DECODERS.get(coding)
        if decoder is None:
            return body, f"unknown content-encoding {coding!r}"
        try:
            decoded = decoder(decoded)
        except Exception as exc:  # zlib.error, OSError, EOFError, brotli.error, zstd.ZstdError...
            return body, f"undecodable {coding} body ({exc})"
    return decoded, None


__all__ = ["DECODERS", "codings", "decode"]
