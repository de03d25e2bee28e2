"""Capture files in, an ordered stream of HTTP exchanges out.

    capture = Capture(["incident.gor", "captures/*.pcap"])
    for exchange in capture:          # streaming, ordered by request timestamp across all files
        ...
    capture.stats                     # what was read, skipped and why (complete after iteration)

Formats are recognised by content, not by name: .gor (optionally gzip-compressed), pcap (both byte
orders, micro/nanosecond) and pcapng, each optionally gzip-compressed.
"""

from __future__ import annotations

import dataclasses
import gc
import glob
import gzip
import heapq
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import BinaryIO

from ..http.message import Exchange, Source
from ..http.normalize import endpoint_of
from ..reassembly.draft import Draft
from .gor import GorReader, looks_like_gor
from .limits import DEFAULT_MAX_RECORD
from ..reassembly.stats import CaptureError, CaptureStats, CaptureWarning
from .blocks import STREAM_ERRORS

__all__ = ["Capture", "CaptureError", "CaptureStats", "CaptureWarning", "expand_paths", "load", "sniff"]

GZIP_MAGIC = b"\x1f\x8b"
PCAP_MAGICS = (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1")
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
SNIFF = 256  # bytes read to recognise a format (a .gor header line with a 40-hex id runs past 64)
CAPTURE_SUFFIXES = (".gor", ".pcap", ".pcapng", ".cap", ".gz", ".dump", ".dmp")


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files, globs and directories (their capture files, recursively, sorted) to file paths."""
    out: list[str] = []
    for spec in paths:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(spec) for name in names
                           if name.lower().endswith(CAPTURE_SUFFIXES))
            if not found:
                raise CaptureError(spec, "the directory holds no capture files (*.gor, *.pcap, *.pcapng, "
                                   "*.cap, optionally .gz)")
            out.extend(found)
        elif os.path.exists(spec):
            out.append(spec)
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise CaptureError(spec, "no file matches this pattern")
            out.extend(found)
        else:
            raise CaptureError(spec, "no such file or directory")
    return list(dict.fromkeys(out))


def sniff(head: bytes) -> str | None:
    """The format of a file from its first bytes: "gor", "pcap", "pcapng" or None."""
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == PCAPNG_MAGIC:
        return "pcapng"
    if looks_like_gor(head):
        return "gor"
    return None


class Capture:
    """One or more capture files read as a single stream of exchanges, merged by timestamp."""

    def __init__(self, paths: Iterable[str] | str, *, server_ports: Iterable[int] | None = None,
                 max_record_size: int | None = None, keylog=None) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = expand_paths(paths)
        self.server_ports = frozenset(server_ports) if server_ports else None
        # the longest .gor record, pcap packet or pcapng block read (limits.py)
        self.max_record_size = max_record_size or DEFAULT_MAX_RECORD
        self.stats = CaptureStats()
        # TLS keys (a tls.KeyLog, or key log paths): pcapng Decryption Secrets Blocks are added to it
        if keylog is not None and not hasattr(keylog, "get"):
            from ..tls.keylog import KeyLog, KeyLogError

            try:
                keylog = KeyLog.from_files([os.fspath(p) for p in keylog])
            except KeyLogError as exc:
                raise CaptureError(str(exc).split(": ", 1)[0], str(exc).split(": ", 1)[-1]) from None
        self.keylog = keylog

    def __iter__(self) -> Iterator[Exchange]:
        if len(self.paths) == 1:
            batches = self._batches(self.paths[0])
        else:
            streams = [self._drafts(order, path) for order, path in enumerate(self.paths)]
            merged = heapq.merge(*streams)  # (timestamp, file order, order in the file, draft)
            batches = iter(lambda: [item[3] for item in islice(merged, 256)], [])
        stats = self.stats
        endpoints = stats.endpoints
        known_endpoints: dict[tuple[str, str], str] = {}  # endpoint_of() without a call per exchange
        last_request = endpoint = None
        index = -1
        # Reading makes many small objects that live until their exchange is released; the default
        # cyclic-GC threshold would rescan them every 700 allocations (~25% of the reading time).
        threshold = gc.get_threshold()
        gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
        try:
            for batch in batches:
                for draft in batch:
                    # Draft to Exchange, and the tally: this runs once per exchange.
                    index += 1
                    if type(draft) is not Draft:  # an Exchange filled in place (capture/fast.py)
                        exchange = draft
                        exchange.index = index
                        exchange.__class__ = Exchange
                        request, response, flags = exchange.request, exchange.response, exchange.flags
                    else:
                        response = draft.response
                        if response is not None and draft.interim:
                            response = dataclasses.replace(response, interim=draft.interim)
                        request = draft.request
                        flags = draft.flags
                        if draft.tls is None:
                            exchange = Exchange(index, request, response, draft.ts, draft.resp_ts, draft.connection,
                                                draft.position, Source(draft.file, draft.offset, draft.record,
                                                                       draft.frames), flags, draft.replayed)
                        else:  # decrypted from TLS: https, and the SNI (the Host header without one)
                            exchange = Exchange(index, request, response, draft.ts, draft.resp_ts,
                                                draft.connection, draft.position,
                                                Source(draft.file, draft.offset, draft.record, draft.frames), flags,
                                                draft.replayed, "https", draft.tls or request.host)
                    stats.exchanges += 1
                    if flags:
                        for code in {flag.code for flag in flags}:
                            stats.incomplete[code] += 1
                        if response is None:
                            stats.no_response += 1
                    else:
                        stats.complete += 1
                    if request is not last_request:  # (dense captures repeat one remembered request object)
                        last_request = request
                        key = (request.method, request.target)
                        endpoint = known_endpoints.get(key)
                        if endpoint is None:
                            if len(known_endpoints) >= 4096:
                                known_endpoints.clear()
                            endpoint = known_endpoints[key] = endpoint_of(request.method, request.target)
                    endpoints[endpoint] += 1
                    yield exchange
        finally:
            gc.set_threshold(*threshold)

    def _batches(self, path: str) -> Iterator[list[Draft]]:
        """The drafts of one file in request-timestamp order, in lists (one per block read)."""
        stats = self.stats
        stream, size, fmt, compressed = open_capture(path)
        info = {"path": path, "format": fmt, "bytes": os.path.getsize(path), "compressed": compressed}
        stats.files.append(info)
        with stream:
            if fmt == "gor":
                reader = GorReader(path, stats, self.max_record_size)
                yield from reader.read(stream)
                reader.finish_notes(info)
            else:
                from .pcap import read_pcap  # here, not at the top: reassembly imports this package

                kwargs = {"server_ports": self.server_ports} if self.server_ports else {}
                yield from read_pcap(path, stream, size, stats, info, max_record_size=self.max_record_size,
                                     keylog=self.keylog, **kwargs)

    def _drafts(self, order: int, path: str) -> Iterator[tuple[int, int, int, Draft | Exchange]]:
        """The drafts of one of several files, one by one, for the merge: ties between files go by
        the order the files were given in."""
        n = 0
        for batch in self._batches(path):
            for draft in batch:
                n += 1
                yield (draft.ts if type(draft) is Draft else draft.request_ts_ns), order, n, draft


def open_capture(path: str) -> tuple[BinaryIO, int | None, str, bool]:
    """Open `path` and recognise its format: (stream, size or None if compressed, format, compressed)."""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise CaptureError(path, f"cannot open: {exc.strerror or exc}") from None
    head = raw.read(SNIFF)
    if not head:
        raw.close()
        raise CaptureError(path, "the file is empty; expected a .gor, pcap or pcapng capture", offset=0)
    raw.seek(0)
    compressed = head[:2] == GZIP_MAGIC
    if compressed:
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb")
        try:
            head = stream.read(SNIFF)
        except STREAM_ERRORS as exc:
            raw.close()
            raise CaptureError(path, f"gzip-compressed, but the compressed data is damaged: {exc}",
                               offset=0) from None
        stream.close()
        raw.seek(0)
        stream = _GzipWithRaw(raw)
        size = None
    else:
        stream = raw
        size = os.fstat(raw.fileno()).st_size
    fmt = sniff(head)
    if fmt is None:
        stream.close()
        shown = head[:24]
        known = next((what for magic, what in OTHER_FORMATS if head.startswith(magic)), None)
        raise CaptureError(path, f"not a capture file: starts with {shown!r}"
                           + (f" ({known})" if known else "")
                           + "; expected a pcap magic number (a1b2c3d4 or a1b23c4d, either byte order), a pcapng "
                           "section header (0a0d0d0a), or a GoReplay record header like '1 <hex id> <timestamp ns>'"
                           + (" (after gzip decompression)" if compressed else ""), offset=0)
    return stream, size, fmt, compressed


_CONVERT = "convert it with Wireshark's `editcap -F pcapng IN OUT`"
# Files people give by mistake, recognised so the error can say what they are and what to do.
OTHER_FORMATS = (
    (b"\xa1\xb2\xcd\x34", f"a 'modified' (Kuznetzov) pcap, an old tcpdump variant: {_CONVERT}"),
    (b"\x34\xcd\xb2\xa1", f"a 'modified' (Kuznetzov) pcap, an old tcpdump variant: {_CONVERT}"),
    (b"snoop\x00\x00\x00", f"a Sun snoop capture: {_CONVERT}"),
    (b"GMBU", f"a Microsoft Network Monitor capture: {_CONVERT}"),
    (b"\xfd7zXZ\x00", "xz-compressed: decompress it first (`xz -d`); gzip is read directly"),
    (b"BZh", "bzip2-compressed: decompress it first (`bunzip2`); gzip is read directly"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed: decompress it first (`zstd -d`); gzip is read directly"),
    (b"\x04\x22\x4d\x18", "lz4-compressed: decompress it first (`lz4 -d`); gzip is read directly"),
    (b"PK\x03\x04", "a zip archive: extract the capture from it first"),
)


class _GzipWithRaw(gzip.GzipFile):
    """A GzipFile that also closes the file it reads from."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw_file = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw_file.close()


def load(paths: Iterable[str] | str, **kwargs) -> tuple[list[Exchange], CaptureStats]:
    """Read whole captures: (exchanges, stats)."""
    capture = Capture(paths, **kwargs)
    return list(capture), capture.stats
