"""NSS key log files (the ``SSLKEYLOGFILE`` format), keyed by client random.

Each line is ``LABEL <client random, 64 hex> <secret, hex>``; comments start with ``#``. As in
Wireshark's dissector, a connection's secrets are found by the 32-byte random of its ClientHello,
so each connection (resumed ones too) is keyed by its own client random. Lines with other labels
(``RSA``, unknown ones) are counted, not kept. Secrets are never shown: repr() gives counts only.
"""

from __future__ import annotations

import os
from collections import Counter

# Labels kept; the values are the secret lengths allowed (bytes).
LABELS = {
    "CLIENT_RANDOM": (48,),  # TLS 1.2 and earlier: the master secret
    "CLIENT_EARLY_TRAFFIC_SECRET": (32, 48),
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET": (32, 48),
    "SERVER_HANDSHAKE_TRAFFIC_SECRET": (32, 48),
    "CLIENT_TRAFFIC_SECRET_0": (32, 48),
    "SERVER_TRAFFIC_SECRET_0": (32, 48),
    "EARLY_EXPORTER_SECRET": (32, 48),
    "EXPORTER_SECRET": (32, 48),
}
DSB_TLS_KEY_LOG = 0x544C534B  # "TLSK": a pcapng Decryption Secrets Block holding a key log


class KeyLogError(ValueError):
    """A key log file cannot be read at all (missing, unreadable)."""


class KeyLog:
    """Secrets by client random, from any number of key logs and Decryption Secrets Blocks."""

    def __init__(self) -> None:
        self._secrets: dict[bytes, dict[str, bytes]] = {}
        self.sources: list[str] = []  # file names, or "pcapng DSB in X" (never the contents)
        self.counts: Counter = Counter()  # label -> lines kept; "ignored", "malformed"

    def __len__(self) -> int:
        return len(self._secrets)

    def __bool__(self) -> bool:
        return True  # an empty key log is still one that was given

    def __repr__(self) -> str:
        return f"KeyLog({len(self._secrets)} client randoms from {len(self.sources)} sources)"

    @classmethod
    def from_files(cls, paths) -> KeyLog:
        keylog = cls()
        for path in paths:
            keylog.add_file(path)
        return keylog

    def add_file(self, path: str | os.PathLike) -> None:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise KeyLogError(f"{path}: cannot read the TLS key log: {exc.strerror or exc}") from None
        self.add_text(data, os.fspath(path))

    def add_text(self, data: bytes | str, source: str) -> int:
        """Add the lines of a key log; returns how many were kept."""
        if isinstance(data, str):
            data = data.encode("ascii", "replace")
        self.sources.append(source)
        kept = 0
        for line in data.splitlines():
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            if self._line(line):
                kept += 1
        return kept

    def _line(self, line: bytes) -> bool:
        parts = line.split()
        if len(parts) != 3:
            self.counts["malformed"] += 1
            return False
        label = parts[0].decode("ascii", "replace")
        lengths = LABELS.get(label)
        if lengths is None:
            self.counts["ignored"] += 1
            return False
        try:
            random, secret = bytes.fromhex(parts[1].decode()), bytes.fromhex(parts[2].decode())
        except ValueError:
            self.counts["malformed"] += 1
            return False
        if len(random) != 32 or len(secret) not in lengths:
            self.counts["malformed"] += 1
            return False
        self._secrets.setdefault(random, {})[label] = secret
        self.counts[label] += 1
        return True

    def get(self, client_random: bytes) -> dict[str, bytes] | None:
        """The secrets logged for this client random (label -> secret), or None."""
        return self._secrets.get(client_random)
