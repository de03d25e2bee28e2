"""Errors, warnings and the running tally of what a capture held (sans-IO values)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MAX_WARNINGS = 200  # warnings kept with their location; beyond that they are only counted


class CaptureError(Exception):
    """A capture file cannot be read. The message names the file, where, and what was expected."""

    def __init__(self, file: str, message: str, *, offset: int | None = None, frame: int | None = None,
                 record: int | None = None) -> None:
        self.file, self.offset, self.frame, self.record = file, offset, frame, record
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.file}{_where(self.offset, self.frame, self.record)}: {self.message}"


@dataclass(frozen=True, slots=True)
class CaptureWarning:
    """Part of a capture was skipped or is incomplete; the rest was read."""

    file: str
    kind: str  # short stable code, e.g. "bad-record", "truncated-file", "unknown-linktype"
    message: str
    offset: int | None = None
    frame: int | None = None
    record: int | None = None

    def __str__(self) -> str:
        return f"{self.file}{_where(self.offset, self.frame, self.record)}: {self.message}"


def _where(offset: int | None, frame: int | None, record: int | None) -> str:
    parts = []
    if record is not None:
        parts.append(f"record {record}")
    if frame is not None:
        parts.append(f"frame {frame}")
    if offset is not None:
        parts.append(f"byte {offset}")
    return f" ({', '.join(parts)})" if parts else ""


@dataclass
class CaptureStats:
    """What was read, what was skipped and why: the numbers behind `inspect` and the reports."""

    files: list[dict] = field(default_factory=list)  # {path, format, bytes, records|packets, ...}
    packets: int = 0
    bytes: int = 0  # captured bytes of all packets or records
    records: Counter = field(default_factory=Counter)  # .gor record types: "1", "2", "3", "bad"
    link_types: Counter = field(default_factory=Counter)  # pcap link type name -> packets
    not_decoded: Counter = field(default_factory=Counter)  # why a packet was not TCP: reason -> packets
    fragments: Counter = field(default_factory=Counter)  # "reassembled" / "incomplete" IPv4/IPv6 datagrams
    connections: int = 0
    exchanges: int = 0
    complete: int = 0
    incomplete: Counter = field(default_factory=Counter)  # reason code -> exchanges
    no_response: int = 0
    orphan_responses: Counter = field(default_factory=Counter)  # why -> responses without their request
    skipped_streams: Counter = field(default_factory=Counter)  # reason code -> connections not HTTP/1.x
    protocols: Counter = field(default_factory=Counter)  # "http/1", "h2c", "h2" -> connections parsed as such
    tls: Counter = field(default_factory=Counter)  # TLS connections by outcome: decrypted, no-key, failed, ...
    tls_connections: list[dict] = field(default_factory=list)  # the first TLS connections, described (no keys)
    gaps: int = 0
    gap_bytes: int = 0
    lost: Counter = field(default_factory=Counter)  # reason code -> bytes discarded while framing
    lf_only: int = 0  # messages whose head used bare LF
    retransmitted_bytes: int = 0
    first_ts_ns: int | None = None
    last_ts_ns: int | None = None
    endpoints: Counter = field(default_factory=Counter)  # "METHOD /path/{id}" -> exchanges
    notes: list[str] = field(default_factory=list)  # facts about the capture worth telling the user
    warnings: list[CaptureWarning] = field(default_factory=list)
    warning_counts: Counter = field(default_factory=Counter)

    def warn(self, warning: CaptureWarning) -> None:
        self.warning_counts[warning.kind] += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(warning)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def see_ts(self, ts_ns: int) -> None:
        if self.first_ts_ns is None or ts_ns < self.first_ts_ns:
            self.first_ts_ns = ts_ns
        if self.last_ts_ns is None or ts_ns > self.last_ts_ns:
            self.last_ts_ns = ts_ns
