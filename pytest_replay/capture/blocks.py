"""Reading blocks of a capture file that may be compressed, cut or damaged."""

from __future__ import annotations

import zlib

# What reading a (possibly compressed) capture stream can raise when the data is cut or damaged.
STREAM_ERRORS = (EOFError, OSError, zlib.error)


def read_block(stream, size: int) -> tuple[bytes, BaseException | None]:
    """Up to `size` bytes, and the error that stopped reading, if any.

    Reads with read1() where the stream has it, so the bytes a gzip stream decompressed before it
    broke (a file without its trailer, damaged data) are returned instead of being lost with the
    exception that read() would raise.
    """
    read1 = getattr(stream, "read1", None)
    if read1 is None:
        try:
            return stream.read(size), None
        except STREAM_ERRORS as exc:
            return b"", exc
    parts: list[bytes] = []
    got = 0
    while got < size:
        try:
            part = read1(size - got)
        except STREAM_ERRORS as exc:
            return b"".join(parts), exc
        if not part:
            break
        parts.append(part)
        got += len(part)
    return (parts[0] if len(parts) == 1 else b"".join(parts)), None
