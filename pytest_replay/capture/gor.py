"""GoReplay .gor files: records split on the separator line, paired into exchanges.

See ../shared/docs/gor-format.md. A record is ``<type> <id> <timestamp> [<latency>]\\n<payload>`` and
records are separated by ``\\n🐵🙈🙉\\n``. Requests (type 1) pair first-in-first-out with original
responses (type 2) of the same id; responses of an earlier GoReplay replay (type 3) are kept apart.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

from ..http.message import NO_RESPONSE, TRUNCATED, Flag
from ..http.parser import Parsed, parse_single
from .draft import Draft, Reorder, flags_of, to_request, to_response
from .stats import CaptureStats, CaptureWarning

SEPARATOR = "\n🐵🙈🙉\n".encode()
_HEADER = re.compile(rb"([123]) ([0-9A-Za-z]{1,64}) (\d{1,20})(?: (-?\d{1,20}))?\r?\Z")
_LOOKS_LIKE_GOR = re.compile(rb"[123] [0-9A-Za-z]{1,64} \d{1,20}(?: -?\d{1,20})?\r?\n")
REORDER_RECORDS = 1000  # GoReplay reorders within 100 records; wait ten times that before releasing
RESPONSE_WINDOW_NS = 120 * 10**9  # a request with no response this long after it (capture time) has none
CHUNK = 1 << 20


def looks_like_gor(head: bytes) -> bool:
    return _LOOKS_LIKE_GOR.match(head) is not None


def split_records(stream: BinaryIO, on_truncated) -> Iterator[tuple[int, bytes, bool]]:
    """Yield (offset, record bytes, ended_by_separator) from a binary stream, reading in chunks.

    `on_truncated(offset, exc)` is called when the stream breaks (corrupt or truncated gzip); the
    records before the break are kept.
    """
    buf = b""
    base = 0  # stream offset of buf[0]
    sep_len = len(SEPARATOR)
    while True:
        try:
            chunk = stream.read(CHUNK)
        except (EOFError, OSError) as exc:  # gzip without trailer, corrupt deflate data
            on_truncated(base + len(buf), exc)
            chunk = b""
        if not chunk:
            break
        buf = buf + chunk if buf else chunk
        start = 0
        while True:
            end = buf.find(SEPARATOR, start)
            if end < 0:
                break
            yield base + start, buf[start:end], True
            start = end + sep_len
        buf = buf[start:]
        base += start
    if buf.strip(b"\r\n"):
        yield base, buf, False


class GorReader:
    """Reads one .gor stream into drafts released in request-timestamp order."""

    def __init__(self, name: str, stats: CaptureStats) -> None:
        self.name = name
        self.stats = stats
        self.reorder = Reorder()
        self.waiting: dict[bytes, deque[Draft]] = {}  # id -> requests awaiting their original response
        self.awaiting_replay: dict[bytes, deque[Draft]] = {}  # id -> requests awaiting a type 3
        self.early: dict[bytes, deque[tuple[int, int, int, bytes, int]]] = {}  # responses read before their request
        self.early_order: deque[tuple[int, bytes]] = deque()  # (record index, id) of early responses
        self.positions: dict[str, int] = {}
        self.records = 0
        self.max_ts = 0
        self.has_responses = False
        self.request_start_latency = 0  # type 2 records stamped with their request's start (old GoReplay)
        self.first_ts: int | None = None

    def read(self, stream: BinaryIO) -> Iterator[Draft]:
        stats = self.stats
        for offset, record, separated in split_records(stream, self._truncated):
            index = self.records
            self.records += 1
            stats.bytes += len(record)
            if not separated:
                self._warn("no-separator", "the last record is not followed by the separator line; GoReplay "
                           "would drop it, it is kept here", offset, index)
            nl = record.find(b"\n")
            header = record[:nl] if nl >= 0 else record
            match = _HEADER.match(header)
            if match is None:
                stats.records["bad"] += 1
                self._warn("bad-record", f"expected a '<type> <id> <timestamp> [<latency>]' header line, "
                           f"got {header[:60]!r}", offset, index)
                continue
            kind, rid, ts = match.group(1), match.group(2), int(match.group(3))
            latency = int(match.group(4)) if match.group(4) is not None else None
            payload = record[nl + 1:]
            stats.records[kind.decode()] += 1
            if self.first_ts is None or ts < self.first_ts:
                self.first_ts = ts
            if ts > self.max_ts:
                self.max_ts = ts
            if kind == b"1":
                self._request(rid, ts, payload, offset, index)
            else:
                self.has_responses = True
                self._response(kind, rid, ts, latency, payload, offset, index)
            if self.records % 64 == 0:
                self._expire_early()
                yield from self.reorder.pop_ready(self._ready)
        for queue in self.early.values():
            for _, _, offset, _, index in queue:
                self._orphan(offset, index)
        for draft in self.reorder.drain():
            self._settle(draft)
            yield draft

    # -- records -----------------------------------------------------------------------------
    def _request(self, rid: bytes, ts: int, payload: bytes, offset: int, index: int) -> None:
        msg, error, extra = parse_single(payload, True, ts_ns=ts)
        if msg is None:
            self.stats.records["unparsable"] += 1
            self._warn("unparsable", f"request record is not an HTTP/1.x request: {error}", offset, index)
            return
        self._note_message(msg, extra, offset, index)
        connection = "gor:" + (rid[:16] if len(rid) == 24 else rid).decode()
        position = self.positions.get(connection, 0)
        self.positions[connection] = position + 1
        draft = Draft(to_request(msg), ts, connection, position, self.name, offset, record=index)
        if msg.flags:
            draft.flags += flags_of(msg, "request")
        draft.end = self.records
        draft.key = rid
        self.reorder.push(draft)
        self.waiting.setdefault(rid, deque()).append(draft)
        self.awaiting_replay.setdefault(rid, deque()).append(draft)
        early = self.early.get(rid)
        if early:  # a response that came earlier in the file than its request
            resp_ts, latency, r_offset, r_payload, r_index = early.popleft()
            if not early:
                del self.early[rid]
            self._response(b"2", rid, resp_ts, latency, r_payload, r_offset, r_index)

    def _response(self, kind: bytes, rid: bytes, ts: int, latency: int | None, payload: bytes, offset: int,
                  index: int) -> None:
        queues = self.waiting if kind == b"2" else self.awaiting_replay
        queue = queues.get(rid)
        if not queue:
            if kind == b"2":
                self.early.setdefault(rid, deque()).append((ts, latency or 0, offset, payload, index))
                self.early_order.append((index, rid))
            else:
                self.stats.orphan_responses["replayed response (type 3) without its request"] += 1
            return
        draft = queue.popleft()
        if not queue:
            del queues[rid]
        msg, error, extra = parse_single(payload, False, method=draft.request.method, ts_ns=ts)
        if msg is None:
            self.stats.records["unparsable"] += 1
            self._warn("unparsable", f"response record is not an HTTP/1.x response: {error}", offset, index)
            if kind == b"2":
                draft.flags += (Flag("unparsable", "response", f"record {index}: {error}"),)
                draft.done = True
            return
        self._note_message(msg, extra, offset, index)
        if kind == b"3":
            draft.replayed.append(to_response(msg))
            return
        draft.response = to_response(msg)
        if ts == draft.ts and latency and latency > 0:
            # Some GoReplay versions stamp the original response with its request's start time and
            # put (response end - request start) in the latency field.
            ts = draft.ts + latency
            self.request_start_latency += 1
        draft.resp_ts = ts
        if msg.flags:
            draft.flags += flags_of(msg, "response")
        draft.done = True

    # -- release -----------------------------------------------------------------------------
    def _ready(self, draft: Draft) -> bool:
        if self.records - draft.end < REORDER_RECORDS:
            return False  # a record with an earlier timestamp may still come
        if draft.done or self.max_ts - draft.ts > RESPONSE_WINDOW_NS or not self.has_responses:
            self._settle(draft)
            return True
        return False

    def _settle(self, draft: Draft) -> None:
        """A draft leaves the reader: stop waiting for its responses and say what is missing."""
        for queues in (self.waiting, self.awaiting_replay):
            queue = queues.get(draft.key)
            if queue and draft in queue:
                queue.remove(draft)
                if not queue:
                    del queues[draft.key]
        if draft.response is None and not any(flag.part == "response" for flag in draft.flags):
            draft.flags += (Flag(NO_RESPONSE, "response", "no original response (type 2) record for this request"
                                 if self.has_responses else "the file holds requests only"),)

    def _expire_early(self) -> None:
        """Responses that waited REORDER_RECORDS records for their request have none."""
        order = self.early_order
        while order and self.records - order[0][0] > REORDER_RECORDS:
            index, rid = order.popleft()
            queue = self.early.get(rid)
            if queue and queue[0][4] == index:
                _, _, offset, _, _ = queue.popleft()
                if not queue:
                    del self.early[rid]
                self._orphan(offset, index)

    def _orphan(self, offset: int, index: int) -> None:
        self.stats.orphan_responses["response (type 2) without its request"] += 1
        self._warn("orphan-response", "response record without a request of the same id", offset, index)

    def _note_message(self, msg: Parsed, extra: int, offset: int, index: int) -> None:
        if msg.lf_only:
            self.stats.lf_only += 1
        if extra:
            self._warn("trailing-bytes", f"{extra} bytes after the end of the HTTP message in the record "
                       "(kept in the raw bytes, not part of the message)", offset, index)
        if any(code == TRUNCATED for code, _ in msg.flags):
            self._warn("truncated-record", "the record ends before its message does", offset, index)

    def _truncated(self, offset: int, exc: BaseException) -> None:
        self._warn("truncated-file", f"the compressed stream breaks off ({exc}); the records before "
                   "this point are kept", offset, None)

    def _warn(self, kind: str, message: str, offset: int | None, index: int | None) -> None:
        self.stats.warn(CaptureWarning(self.name, kind, message, offset=offset, record=index))

    def finish_notes(self, info: dict) -> None:
        info["records"] = self.records
        if self.first_ts is not None:
            self.stats.see_ts(self.first_ts)
            self.stats.see_ts(self.max_ts)
            info["first_ts_ns"], info["last_ts_ns"] = self.first_ts, self.max_ts
        if self.request_start_latency:
            self.stats.note(f"{self.name}: {self.request_start_latency} original responses carry their "
                            "request's timestamp; their latency field (response end - request start) was used")
        if self.stats.lf_only:
            self.stats.note(f"{self.stats.lf_only} messages use bare LF line endings (a hand-edited or "
                            "converted file); they are sent with CRLF")
