"""GoReplay .gor files: records split on the separator line, paired into exchanges.

See ../shared/docs/gor-format.md. A record is ``<type> <id> <timestamp> [<latency>]\\n<payload>`` and
records are separated by ``\\n🐵🙈🙉\\n``. Requests (type 1) pair first-in-first-out with original
responses (type 2) of the same id; responses of an earlier GoReplay replay (type 3) are kept apart.
"""

from __future__ import annotations

import heapq
import re
from collections import deque
from collections.abc import Iterator
from typing import BinaryIO

from ..http.message import NO_RESPONSE, TRUNCATED, Flag
from ..http.parser import Parsed, fast_message, parse_single
from .draft import Draft, flags_of, to_request, to_response
from .stats import CaptureStats, CaptureWarning, read_block

SEPARATOR = "\n🐵🙈🙉\n".encode()
_RECORD = re.compile(rb"([123]) ([0-9A-Za-z]{1,64}) (\d{1,20})(?: (-?\d{1,20}))?\r?\n")  # header line
_LOOKS_LIKE_GOR = re.compile(rb"[123] [0-9A-Za-z]{1,64} \d{1,20}(?: -?\d{1,20})?\r?\n")
REORDER_RECORDS = 1000  # GoReplay reorders within 100 records; wait ten times that before releasing
RESPONSE_WINDOW_NS = 120 * 10**9  # a request with no response this long after it (capture time) has none
CHUNK = 1 << 20
MAX_CONNECTIONS = 1 << 16  # connection position counters kept


def looks_like_gor(head: bytes) -> bool:
    return _LOOKS_LIKE_GOR.match(head) is not None


def record_batches(stream: BinaryIO, on_truncated) -> Iterator[list[tuple[int, bytes, bool]]]:
    """Lists of (offset, record bytes, ended by a separator) read from a binary stream in ~1 MiB
    blocks: one list per block, so the per-record loop has no generator step.

    `on_truncated(offset, exc)` is called when the stream breaks (a gzip file without its trailer,
    damaged compressed data); the records before the break are kept.
    """
    buf = b""
    base = 0  # stream offset of buf[0]
    sep_len = len(SEPARATOR)
    while True:
        chunk, error = read_block(stream, CHUNK)
        if error is not None:
            on_truncated(base + len(buf) + len(chunk), error)
        if chunk:
            buf = buf + chunk if buf else chunk
            batch = []
            start = 0
            find = buf.find
            while (end := find(SEPARATOR, start)) >= 0:
                batch.append((base + start, buf[start:end], True))
                start = end + sep_len
            buf = buf[start:]
            base += start
            if batch:
                yield batch
        if error is not None or not chunk:
            break
    if buf.strip(b"\r\n"):
        yield [(base, buf, False)]


def split_records(stream: BinaryIO, on_truncated) -> Iterator[tuple[int, bytes, bool]]:
    """The records of record_batches(), one by one."""
    for batch in record_batches(stream, on_truncated):
        yield from batch


class GorReader:
    """Reads one .gor stream into drafts released in request-timestamp order.

    Pairing: a type 2 record answers the oldest unanswered request with its id (ids repeat in
    old versions); a type 3 record is attached to the newest request with its id still buffered.
    A response may come before its request in the file (GoReplay reorders records): it waits up to
    REORDER_RECORDS records for it. Drafts are held until REORDER_RECORDS later records were read
    (nothing earlier can still come) and their response came or will not come.
    """

    def __init__(self, name: str, stats: CaptureStats) -> None:
        self.name = name
        self.stats = stats
        self.heap: list[tuple[int, int, Draft]] = []  # (ts, record index, draft)
        self.waiting: dict[bytes, Draft | deque[Draft]] = {}  # id -> request(s) awaiting a type 2
        self.recent: dict[bytes, Draft] = {}  # id -> newest buffered request (for type 3)
        self.early: dict[bytes, deque[tuple[int, int, int, bytes, int]]] = {}  # responses before their request
        self.early_order: deque[tuple[int, bytes]] = deque()  # (record index, id) of early responses
        self.positions: dict[str, int] = {}  # connection -> requests seen (bounded: see _position)
        self.records = 0
        self.counts = {49: 0, 50: 0, 51: 0}  # record types by first byte: "1", "2", "3"
        self.max_ts = 0
        self.first_ts: int | None = None
        self.has_responses = False
        self.request_start_latency = 0  # type 2 records stamped with their request's start (old GoReplay)

    def read(self, stream: BinaryIO) -> Iterator[Draft]:
        """Drafts in request-timestamp order."""
        stats = self.stats
        header = _RECORD.match
        heap = self.heap
        counts = self.counts
        nbytes = 0
        index = -1
        for batch in record_batches(stream, self._truncated):
            for offset, record, separated in batch:
                index += 1
                nbytes += len(record)
                match = header(record)
                if match is None:
                    self._bad_record(record, offset, index, separated)
                    continue
                if not separated:
                    self._warn("no-separator", "the last record is not followed by the separator line; "
                               "GoReplay would drop it, it is kept here", offset, index)
                kind = record[0]
                counts[kind] += 1
                ts = int(match.group(3))
                if ts > self.max_ts:
                    self.max_ts = ts
                if self.first_ts is None or ts < self.first_ts:
                    self.first_ts = ts
                if kind == 49:
                    self._request(match.group(2), ts, record[match.end():], offset, index)
                else:
                    latency = match.group(4)
                    self._response(kind, match.group(2), ts, int(latency) if latency else None,
                                   record[match.end():], offset, index)
            self.records = index + 1
            if self.early_order:
                self._expire_early()
            horizon = index - REORDER_RECORDS
            while heap and heap[0][1] <= horizon and self._ready(heap[0][2]):
                yield heapq.heappop(heap)[2]
        self.records = index + 1
        stats.bytes += nbytes
        for kind, count in counts.items():
            if count:
                stats.records[chr(kind)] += count
        for queue in self.early.values():
            for _, _, offset, _, index in queue:
                self._orphan(offset, index)
        self.early.clear()
        for _, _, draft in sorted(heap):
            self._settle(draft)
            yield draft
        heap.clear()

    # -- records -----------------------------------------------------------------------------
    def _request(self, rid: bytes, ts: int, payload: bytes, offset: int, index: int) -> None:
        request = fast_message(payload, True)
        flags = ()
        if request is None:
            msg, error, extra = parse_single(payload, True, ts_ns=ts)
            if msg is None:
                self.stats.records["unparsable"] += 1
                self._warn("unparsable", f"request record is not an HTTP/1.x request: {error}", offset, index)
                return
            self._note_message(msg, extra, offset, index)
            request = to_request(msg)
            flags = flags_of(msg, "request")
        if len(rid) == 24:  # current GoReplay: the first 16 hex digits name the TCP connection
            connection = "gor:" + rid[:16].decode()
            position = self._position(connection)
        else:  # 40 hex digits: one id per request (or, in v1.2.0, per keep-alive connection)
            connection = "gor:" + rid.decode()
            position = self._position(connection, 1) if rid in self.recent else 0
        draft = Draft(request, ts, connection, position, self.name, offset, record=index)
        draft.flags = flags
        draft.key = rid
        heapq.heappush(self.heap, (ts, index, draft))
        waiting = self.waiting.get(rid)
        if waiting is None:
            self.waiting[rid] = draft
        elif type(waiting) is deque:
            waiting.append(draft)
        else:
            self.waiting[rid] = deque((waiting, draft))
        self.recent[rid] = draft
        if rid in self.early:  # a response that came earlier in the file than its request
            queue = self.early[rid]
            resp_ts, latency, r_offset, r_payload, r_index = queue.popleft()
            if not queue:
                del self.early[rid]
            self._response(50, rid, resp_ts, latency, r_payload, r_offset, r_index)

    def _position(self, connection: str, first: int = 0) -> int:
        positions = self.positions
        position = positions.get(connection, first)
        positions[connection] = position + 1
        if len(positions) > MAX_CONNECTIONS:  # forget the oldest connections: memory stays flat
            for key in list(positions)[: MAX_CONNECTIONS // 4]:
                del positions[key]
        return position

    def _response(self, kind: int, rid: bytes, ts: int, latency: int | None, payload: bytes, offset: int,
                  index: int) -> None:
        self.has_responses = True
        if kind == 51:
            draft = self.recent.get(rid)
            if draft is None:
                self.stats.orphan_responses["replayed response (type 3) without its request"] += 1
                return
        else:
            waiting = self.waiting.get(rid)
            if waiting is None:
                self.early.setdefault(rid, deque()).append((ts, latency or 0, offset, payload, index))
                self.early_order.append((index, rid))
                return
            if type(waiting) is deque:
                draft = waiting.popleft()
                if not waiting:
                    del self.waiting[rid]
            else:
                draft = waiting
                del self.waiting[rid]
        response = fast_message(payload, False, draft.request.method)
        if response is None:
            msg, error, extra = parse_single(payload, False, method=draft.request.method, ts_ns=ts)
            if msg is None:
                self.stats.records["unparsable"] += 1
                self._warn("unparsable", f"response record is not an HTTP/1.x response: {error}", offset, index)
                if kind == 50:
                    draft.flags += (Flag("unparsable", "response", f"record {index}: {error}"),)
                    draft.done = True
                return
            self._note_message(msg, extra, offset, index)
            response = to_response(msg)
            if kind == 50 and msg.flags:
                draft.flags += flags_of(msg, "response")
        if kind == 51:
            draft.replayed.append(response)
            return
        draft.response = response
        if ts == draft.ts and latency and latency > 0:
            # Some GoReplay versions stamp the original response with its request's start time and
            # put (response end - request start) in the latency field.
            ts = draft.ts + latency
            self.request_start_latency += 1
        draft.resp_ts = ts
        draft.done = True

    # -- release -----------------------------------------------------------------------------
    def _ready(self, draft: Draft) -> bool:
        """May this draft leave (REORDER_RECORDS later records were already read)?"""
        if draft.done or not self.has_responses or self.max_ts - draft.ts > RESPONSE_WINDOW_NS:
            self._settle(draft)
            return True
        return False

    def _settle(self, draft: Draft) -> None:
        """A draft leaves the reader: stop waiting for its responses and say what is missing."""
        rid = draft.key
        if self.recent.get(rid) is draft:
            del self.recent[rid]
        if draft.response is None:
            waiting = self.waiting.get(rid)
            if waiting is draft:
                del self.waiting[rid]
            elif type(waiting) is deque and draft in waiting:
                waiting.remove(draft)
                if not waiting:
                    del self.waiting[rid]
            if not any(flag.part == "response" for flag in draft.flags):
                draft.flags += (Flag(NO_RESPONSE, "response", "no original response (type 2) record for this "
                                     "request" if self.has_responses else "the file holds requests only"),)

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

    def _bad_record(self, record: bytes, offset: int, index: int, separated: bool) -> None:
        self.stats.records["bad"] += 1
        first_line = record.split(b"\n", 1)[0]
        self._warn("bad-record", f"expected a '<type> <id> <timestamp> [<latency>]' header line, got "
                   f"{first_line[:60]!r}" + ("" if separated else " (the file's last bytes, no separator)"),
                   offset, index)

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
