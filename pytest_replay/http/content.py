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


class Undecodable(ValueError):
    """A body whose content coding `coding` could not be undone (unknown or damaged); str() says why."""

    def __init__(self, coding: str, why: str) -> None:
        super().__init__(why)
        self.coding = coding


def undo(body: bytes, value: bytes | str | None) -> bytes:
    """`body` with the Content-Encoding `value` undone (the last applied first); raises Undecodable."""
    decoded = body
    if not body:
        return body
    for coding in reversed(codings(value)):
        decoder = DECODERS.get(coding)
        if decoder is None:
            raise Undecodable(coding, f"unknown content-encoding {coding!r}")
        try:
            decoded = decoder(decoded)
        except Exception as exc:  # zlib.error, OSError, EOFError, brotli.error, zstd.ZstdError...
            raise Undecodable(coding, f"undecodable {coding} body ({exc})") from exc
    return decoded


def decode(body: bytes, value: bytes | str | None) -> tuple[bytes, str | None]:
    """(body with the Content-Encoding `value` undone, None), or (body as given, why it could not be)."""
    try:
        return undo(body, value), None
    except Undecodable as exc:
        return body, str(exc)


__all__ = ["DECODERS", "Undecodable", "codings", "decode", "undo"]
