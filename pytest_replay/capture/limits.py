"""How much of a capture one record may hold: the bound that keeps a damaged or hostile file (a
gzip bomb, a length field claiming gigabytes) from exhausting memory (sans-IO values).

The bound is on one record (a .gor record, a pcap packet record, a pcapng block), never on the
compression ratio: real keep-alive captures compress 100:1 and more.
"""

from __future__ import annotations

import math
import re

DEFAULT_MAX_RECORD = 64 << 20  # bytes; --replay-max-record-size, inspect/convert/redact --max-record-size
MIN_MAX_RECORD = 1 << 10  # a record header and a request line need more than a few bytes
MAX_PACKET = 16 << 20  # no link layer carries a packet this large: a pcap record beyond it is damaged

SIZE_FORMS = "bytes, or a number with K, M or G (KiB, MiB, GiB), e.g. 64M"
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE)
_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """'64M', '64MiB', '512k', '1048576' -> bytes. ValueError names the accepted forms."""
    match = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    value = None
    if match is not None:
        number = float(match.group(1))
        value = number * _UNITS[match.group(2).lower() if match.group(2) else None]
    if value is None or not math.isfinite(value) or value < MIN_MAX_RECORD:
        raise ValueError(f"expected a size of at least {MIN_MAX_RECORD} bytes ({SIZE_FORMS}), got {text!r}")
    return int(value)


def format_size(size: int) -> str:
    """64 MiB, 100 KiB, 1500 bytes: as a user would write the limit."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"
