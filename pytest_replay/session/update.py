"""--replay-update: accept the replayed responses as the new recording (like a snapshot tool's
--snapshot-update).

Each process keeps the responses its judged exchanges received (`Updates`); an xdist worker ships
them to the controller inside `RunResults` (base64, at most `MAX_SHIPPED_BYTES` of responses per
worker: beyond it the worker says so and the update counts as partial). Only the process that
reports writes: per capture, a new file in the same format (pcap stays pcap, pcapng stays pcapng,
.gor stays .gor, gzip stays gzip) with, for every exchange that ran, the replayed response (status,
headers, body as received) of every exchange that ran and differed from the recording, with a
response timestamp of request timestamp + replayed latency (so the recorded latency is the replayed
one); requests, their timestamps and the other exchanges are kept as recorded. Exchanges that
matched keep their recorded response, as a snapshot tool leaves a matching snapshot alone: their
recorded responses hold what noise learning learns from (a clock-valued field, such as a
`generated_at`, varies between identical requests recorded at different times; replayed at --speed 0
they would all be produced in the same second, and the noise would no longer be learned). The file is written to a temporary name and renamed (capture.writer._Output).
"""

from __future__ import annotations

import base64
import os
import time
from collections import Counter
from dataclasses import dataclass

from ..http.message import Exchange, Response

MAX_SHIPPED_BYTES = 64 << 20  # replayed response bytes an xdist worker sends to the controller


@dataclass(frozen=True)
class Replayed:
    """A judged exchange's replayed response: its raw bytes, latency, the wall-clock instant its first
    byte arrived (ns since 1970) and whether it matched the recording."""

    index: int
    response: Response | None  # None when it matched: only failing responses are kept (and shipped)
    latency_ns: int
    wall_ns: int
    matched: bool

    def to_dict(self) -> dict:
        response = self.response
        return {"index": self.index, "latency_ns": self.latency_ns, "wall_ns": self.wall_ns, "matched": self.matched,
                "raw": None if response is None else base64.b64encode(response.raw).decode("ascii"),
                "status": None if response is None else response.status}

    @classmethod
    def from_dict(cls, data: dict) -> Replayed:
        raw = data["raw"]
        response = None if raw is None else parse_response(base64.b64decode(raw), data["status"])
        return cls(data["index"], response, data["latency_ns"], data["wall_ns"], data["matched"])


def parse_response(raw: bytes, status: int) -> Response:
    """A Response from bytes as received (head, then the body as framed: chunked stays chunked;
    only `raw` is written, by the capture writers)."""
    from ..http.message import split_head

    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    head = head + sep
    line = head.split(b"\n", 1)[0].strip().decode("latin-1")
    parts = line.split(" ", 2)
    version = parts[0].removeprefix("HTTP/") if parts else "1.1"
    reason = parts[2] if len(parts) > 2 else ""
    return Response(status, reason, version, head, body, raw, (), (), False, split_head(head))


class Updates:
    """The replayed responses of this process's judged exchanges."""

    def __init__(self) -> None:
        self.by_index: dict[int, Replayed] = {}
        self.truncated = False  # a worker had more than MAX_SHIPPED_BYTES to send

    def add(self, exchange: Exchange, observation, verdict, engine) -> None:
        response = observation.response
        if response is None or observation.latency_ns is None:
            return
        first = observation.first_byte_ns if observation.first_byte_ns is not None else observation.done_ns
        clock = getattr(engine, "clock", None)
        now = clock.now_ns() if clock is not None else first
        wall = time.time_ns() - (now - first)  # the engine clock is monotonic: read the wall clock now
        matched = bool(verdict.passed)
        kept = None if matched else framed(response, exchange.request.method)
        self.by_index[exchange.index] = Replayed(exchange.index, kept,
                                                 observation.latency_ns, wall, matched)

    def to_dicts(self) -> tuple[list[dict], bool]:
        """(what fits in MAX_SHIPPED_BYTES, whether some was left out)."""
        shipped, size = [], 0
        for replayed in self.by_index.values():
            size += len(replayed.response.raw) if replayed.response is not None else 64
            if size > MAX_SHIPPED_BYTES:
                return shipped, True
            shipped.append(replayed.to_dict())
        return shipped, self.truncated

    def merge_dicts(self, data: list[dict], truncated: bool) -> None:
        for item in data:
            replayed = Replayed.from_dict(item)
            self.by_index[replayed.index] = replayed
        self.truncated = self.truncated or truncated


def updated_path(path: str) -> str:
    """Where `--replay-update` writes for `path`: NAME.updated.EXT (x.gor.gz -> x.updated.gor.gz)."""
    directory, name = os.path.split(path)
    gz = ".gz" if name.endswith(".gz") else ""
    base = name[:len(name) - len(gz)]
    stem, dot, ext = base.rpartition(".")
    updated = f"{stem}.updated.{ext}" if dot and stem else f"{base}.updated"
    return os.path.join(directory, updated + gz)


_FRAMING = (b"content-length", b"transfer-encoding")


def framed(response: Response, method: str) -> Response:
    """The response as bytes a reader frames again. An in-process app's response is head + body with
    the body already de-chunked (or with no length at all, as a streamed body): such a head gets a
    Content-Length instead of its framing headers; bytes received from the network keep their framing."""
    if response.raw != response.head + response.body or method == "HEAD" or (
            not response.body and (response.status in (204, 304) or response.status < 200)):
        return response
    length = response.header("content-length")
    chunked = b"chunked" in (response.header("transfer-encoding") or b"").lower()
    if length is not None and not chunked and length.strip() == str(len(response.body)).encode():
        return response
    headers = tuple((k, v) for k, v in response.headers if k.lower() not in _FRAMING)
    headers += ((b"Content-Length", str(len(response.body)).encode()),)
    return Response.build(response.status, response.reason, headers, response.body, response.version)


def with_response(exchange: Exchange, replayed: Replayed) -> Exchange:
    """The exchange with its replayed response, stamped request start + replayed latency; the
    flags about the old response are dropped (the new one is whole)."""
    flags = tuple(flag for flag in exchange.flags if flag.part != "response")
    return Exchange(exchange.index, exchange.request, replayed.response, exchange.request_ts_ns,
                    exchange.request_ts_ns + replayed.latency_ns, exchange.connection, exchange.position,
                    exchange.source, flags, exchange.replayed)


_SUFFIXES = {".gor": "gor", ".pcap": "pcap", ".pcapng": "pcapng"}


def format_of(path: str) -> tuple[str, bool] | None:
    """(format, gzip) named by a file's suffix (.gor, .pcap, .pcapng, each optionally .gz), or None."""
    name = path[:-3] if path.endswith(".gz") else path
    fmt = _SUFFIXES.get(os.path.splitext(name)[1].lower())
    return (fmt, path.endswith(".gz")) if fmt else None


@dataclass
class UpdateResult:
    path: str
    source: str
    fmt: str
    counts: Counter
    written: int
    first_wall_ns: int | None = None
    last_wall_ns: int | None = None


def write_updated(source: str, exchanges: list[Exchange], updates: dict[int, Replayed], target: str,
                  mocked: set[int]) -> UpdateResult:
    """Write `exchanges` (those of one capture file) to `target` with the replayed responses in
    `updates`, in the capture's format (or .gor when `target` says so)."""
    from ..capture import open_capture
    from ..capture.writer import write_gor, write_pcap

    stream, _, fmt, compressed = open_capture(source)
    stream.close()
    fmt, compressed = format_of(target) or (fmt, compressed)
    counts: Counter = Counter()
    walls: list[int] = []

    def rows():
        for exchange in exchanges:
            replayed = updates.get(exchange.index)
            if replayed is None:
                counts["mocked" if exchange.index in mocked else "not replayed"] += 1
                yield exchange
                continue
            if replayed.matched:  # kept as recorded, with what noise learning learns from it
                counts["unchanged"] += 1
                yield exchange
                continue
            counts["updated"] += 1
            walls.append(replayed.wall_ns)
            yield with_response(exchange, replayed)

    if fmt == "gor":
        result = write_gor(rows(), target, compress=compressed)
    else:
        result = write_pcap(rows(), target, ng=fmt == "pcapng", compress=compressed)
    return UpdateResult(target, source, fmt, counts, result.written,
                        min(walls) if walls else None, max(walls) if walls else None)


def render_update(result: UpdateResult) -> list[str]:
    """Syrupy-style counts for one written capture."""
    from datetime import datetime, timezone

    c = result.counts
    not_replayed = c["not replayed"] + c["mocked"]
    mocked = f" ({c['mocked']} of them writes not sent: mocked or skipped)" if c["mocked"] else ""
    lines = [f"replay update: {c['updated']} updated, {c['unchanged']} unchanged, {not_replayed} not replayed"
             f"{mocked} -> {result.path}"]
    how = {"gor": "GoReplay .gor", "pcap": "pcap, regenerated by write_pcap",
           "pcapng": "pcapng, regenerated by write_pcap"}.get(result.fmt, result.fmt)
    lines.append(f"  format: {how}; responses stamped request time + replayed latency")
    if result.first_wall_ns is not None:
        def iso(ns: int) -> str:
            return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")
        lines.append(f"  responses produced {iso(result.first_wall_ns)} .. {iso(result.last_wall_ns)} (replay wall clock)")
    return lines
