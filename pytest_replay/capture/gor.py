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

from ..http.message import MALFORMED, NO_RESPONSE, TRUNCATED, Flag, Request
from ..http.parser import MAX_KEPT, Completion, Parsed, fast_message, parse_single
from ..reassembly.draft import Draft, Reorder, flags_of, to_request, to_response
from .limits import DEFAULT_MAX_RECORD, format_size
from ..reassembly.stats import CaptureError, CaptureStats, CaptureWarning
from .blocks import read_block

SEPARATOR = "\n🐵🙈🙉\n".encode()
# The header line. Possessive quantifiers (no backtracking) match exactly what the plain ones
# would, since what follows each run cannot be part of it; they are ~20% faster.
_RECORD = re.compile(rb"([123]) ([0-9A-Za-z]{1,64}+) (\d{1,20}+)(?: (-?\d{1,20}+))?+\r?\n")
_LOOKS_LIKE_GOR = re.compile(rb"[123] [0-9A-Za-z]{1,64} \d{1,20}(?: -?\d{1,20})?\r?\n")
REORDER_RECORDS = 1000  # GoReplay reorders within 100 records; wait ten times that before releasing
RESPONSE_WINDOW_NS = 120 * 10**9  # a request with no response this long after it (capture time) has none
CHUNK = 1 << 20
MAX_CONNECTIONS = 1 << 16  # connection position counters kept


def looks_like_gor(head: bytes) -> bool:
    return _LOOKS_LIKE_GOR.match(head) is not None


def record_batches(stream: BinaryIO, on_truncated, limit: int = DEFAULT_MAX_RECORD,
                   on_too_long=None) -> Iterator[tuple[int, list[bytes], bool]]:
    """(stream offset of the first record, records, ended by a separator) read from a binary stream
    in ~1 MiB blocks: one list per block, cut by bytes.split() in C, so the per-record loop has no
    generator step and no search call. The records of a list follow each other, one separator apart.

    `on_truncated(offset, exc)` is called when the stream breaks (a gzip file without its trailer,
    damaged compressed data); the records before the break are kept.

    A record longer than `limit` bytes calls `on_too_long(offset, nth, size, whole)` (nth: its place
    in the list it would have been yielded in; size: its length if whole, else the bytes read of it
    so far), which raises. The bytes of an unfinished record are kept as the pieces read and joined
    once, when its separator comes: a record of many blocks costs linear time, and reading stops at
    `limit` (a decompression bomb without a separator expands no further than that).
    """
    if on_too_long is None:
        on_too_long = _record_too_long
    parts: list[bytes] = []  # the bytes after the last separator, as read
    pending = 0  # their length
    tail = b""  # their last sep_len - 1 bytes: a separator may begin there and end in the next block
    base = 0  # stream offset of parts[0]
    sep_len = len(SEPARATOR)
    while True:
        chunk, error = read_block(stream, CHUNK)
        if error is not None:
            on_truncated(base + pending + len(chunk), error)
        if chunk:
            if chunk.find(SEPARATOR) >= 0 or (tail and SEPARATOR in tail + chunk[:sep_len - 1]):
                parts.append(chunk)
                buf = b"".join(parts) if len(parts) > 1 else chunk
                parts.clear()
                records = buf.split(SEPARATOR)
                rest = records.pop()
                consumed = len(buf) - len(rest)
                del buf  # the records are copies: at most twice a record's bytes are held
                if consumed > limit and max(map(len, records)) > limit:  # only a batch above the limit can
                    _find_too_long(records, base, limit, on_too_long)
                yield base, records, True
                base += consumed
                if rest:
                    parts.append(rest)
                pending = len(rest)
                tail = rest[-(sep_len - 1):]
            else:
                parts.append(chunk)
                pending += len(chunk)
                tail = (tail + chunk)[-(sep_len - 1):] if len(chunk) < sep_len else chunk[-(sep_len - 1):]
                if pending > limit + sep_len - 1:  # longer than the limit, whatever its last bytes are
                    on_too_long(base, 0, pending, False)
        if error is not None or not chunk:
            break
    if pending:
        last = b"".join(parts)
        if last.strip(b"\r\n"):
            if len(last) > limit:
                on_too_long(base, 0, len(last), True)
            yield base, [last], False


def _find_too_long(records: list[bytes], base: int, limit: int, on_too_long) -> None:
    offset = base
    for nth, record in enumerate(records):
        if len(record) > limit:
            on_too_long(offset, nth, len(record), True)
        offset += len(record) + len(SEPARATOR)


def _record_too_long(offset: int, nth: int, size: int, whole: bool) -> None:
    raise ValueError(f"the record at byte {offset} is longer than the limit ({size} bytes or more)")


def split_records(stream: BinaryIO, on_truncated) -> Iterator[tuple[int, bytes, bool]]:
    """(offset, record bytes, ended by a separator) of each record of record_batches()."""
    sep_len = len(SEPARATOR)
    for offset, records, separated in record_batches(stream, on_truncated):
        for record in records:
            yield offset, record, separated
            offset += len(record) + sep_len


class GorReader:
    """Reads one .gor stream into drafts released in request-timestamp order.

    Pairing: a type 2 record answers the oldest unanswered request with its id (ids repeat in
    old versions); a type 3 record is attached to the newest request with its id still buffered.
    A response may come before its request in the file (GoReplay reorders records): it waits up to
    REORDER_RECORDS records for it. Drafts are held until REORDER_RECORDS later records were read
    (nothing earlier can still come) and their response came or will not come.
    """

    fast_path = True  # the default for `fast`: tests flip it to run a suite on the reference path

    def __init__(self, name: str, stats: CaptureStats, max_record_size: int = DEFAULT_MAX_RECORD,
                 fast: bool | None = None) -> None:
        self.fast = self.fast_path if fast is None else fast
        self.name = name
        self.stats = stats
        self.max_record_size = max_record_size
        self.reorder = Reorder()  # (ts, record index, draft)
        self.waiting: dict[bytes, Draft | deque[Draft]] = {}  # id -> request(s) awaiting a type 2
        self.recent: dict[bytes, Draft] = {}  # id -> newest buffered request (for type 3)
        self.early: dict[bytes, deque[tuple[int, int, int, bytes, int]]] = {}  # responses before their request
        self.early_order: deque[tuple[int, bytes]] = deque()  # (record index, id) of early responses
        # connection id -> [connection name, requests seen] (bounded: see _connection). The id is
        # what follows "gor:" in the name, so one name is made per connection, not per request.
        self.connections: dict[bytes, list] = {}
        self.records = 0
        self.counts = {49: 0, 50: 0, 51: 0}  # record types by first byte: "1", "2", "3"
        self.max_ts = 0
        self.first_ts: int | None = None
        self.has_responses = False
        self.request_start_latency = 0  # type 2 records stamped with their request's start (old GoReplay)
        self.completion = Completion()  # reused by fast_message() for every request

    def read(self, stream: BinaryIO) -> Iterator[list[Draft]]:
        """Lists of drafts, in request-timestamp order (a list for each block of records read).

        Two paths behind this one name, like http/parser.py's Framer: the fast path (the default,
        the class attribute `fast_path`) and the readable reference it must agree with."""
        return self._read_fast(stream) if self.fast else self._read_reference(stream)

    def _read_reference(self, stream: BinaryIO) -> Iterator[list[Draft]]:
        """The reference path: one method call per record, every message through the general
        parser (parse_single), drafts released through Reorder's own methods."""
        index = -1
        nbytes = 0
        for offset, records, separated in record_batches(stream, self._truncated, self.max_record_size,
                                                          self._too_long):
            nbytes += sum(map(len, records))
            for record in records:
                index += 1
                self._record(record, offset, index, separated)
                offset += len(record) + len(SEPARATOR)
            self.records = index + 1
            if self.early_order:
                self._expire_early()
            out = self._release(index - REORDER_RECORDS)
            if out:
                yield out
        self.records = index + 1
        self.stats.bytes += nbytes
        yield from self._finish()

    def _record(self, record: bytes, offset: int, index: int, separated: bool) -> None:
        """One record: its header line read, its message parsed and paired."""
        match = _RECORD.match(record)
        if match is None:
            self._bad_record(record, offset, index, separated)
            return
        if not separated:
            self._warn("no-separator", "the last record is not followed by the separator line; "
                       "GoReplay would drop it, it is kept here", offset, index)
        kind = record[0]
        self.counts[kind] += 1
        rid, ts, latency = match.group(2), int(match.group(3)), match.group(4)
        self.max_ts = max(self.max_ts, ts)
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        payload = record[match.end():]
        if kind == 49:
            self._request(rid, ts, payload, offset, index, None)
        else:
            self._response(kind, rid, ts, int(latency) if latency else None, payload, offset, index)

    def _release(self, horizon: int) -> list[Draft]:
        """The drafts that may leave, in order: read more than REORDER_RECORDS records ago (record
        index <= `horizon`) and answered, or unanswerable (a requests-only file), or given up on
        (no response RESPONSE_WINDOW_NS after them)."""
        reorder = self.reorder
        window_start = self.max_ts - RESPONSE_WINDOW_NS
        out = []
        while (first := reorder.first()) is not None:
            _, at, draft = first
            settled = draft.done or not self.has_responses or draft.ts < window_start
            if at > horizon or not settled:
                break
            reorder.pop()
            self._settle(draft)
            out.append(draft)
        return out

    def _finish(self) -> Iterator[list[Draft]]:
        """The stream ended: counts into the stats, early responses are orphans, everything left leaves."""
        for kind, count in self.counts.items():
            if count:
                self.stats.records[chr(kind)] += count
        for queue in self.early.values():
            for _, _, offset, _, index in queue:
                self._orphan(offset, index)
        self.early.clear()
        out = self.reorder.drain()
        for draft in out:
            self._settle(draft)
        if out:
            yield out

    def _read_fast(self, stream: BinaryIO) -> Iterator[list[Draft]]:
        """The fast path of read(): what _read_reference() does, written for speed.

        The loop runs once per record: locals instead of attribute lookups, and the common cases of
        _record(), _request(), _response() and _release() inlined (a current GoReplay id, a message
        fast_message() frames, a response whose request is waiting alone); anything else goes
        through those methods, which handle every case. tests/test_gor_paths.py checks on random
        files that both paths give the same drafts, warnings and counts.
        """
        stats = self.stats
        header = _RECORD.match
        reorder, waiting, recent, early = self.reorder, self.waiting, self.recent, self.early
        run, late = reorder.run, reorder.late
        connections = self.connections
        counts = self.counts
        name = self.name
        heappush, heappop, run_append = heapq.heappush, heapq.heappop, run.append
        sep_len = len(SEPARATOR)
        completion = self.completion
        max_ts, first_ts = self.max_ts, self.first_ts
        has_responses = self.has_responses
        nbytes = 0
        index = -1
        for offset, records, separated in record_batches(stream, self._truncated, self.max_record_size,
                                                          self._too_long):
            nbytes += sum(map(len, records))
            for record in records:
                index += 1
                where = offset
                offset += len(record) + sep_len
                match = header(record)
                if match is None:
                    self._bad_record(record, where, index, separated)
                    continue
                if not separated:
                    self._warn("no-separator", "the last record is not followed by the separator line; "
                               "GoReplay would drop it, it is kept here", where, index)
                kind = record[0]
                counts[kind] += 1
                rid, ts = match.group(2, 3)
                ts = int(ts)
                if ts > max_ts:
                    max_ts = ts
                if first_ts is None or ts < first_ts:
                    first_ts = ts
                payload = record[match.end():]
                if kind == 49:
                    request = fast_message(payload, True, completion=completion)
                    if request is None or len(rid) != 24 or rid in early or rid in waiting:
                        self._request(rid, ts, payload, where, index, request)
                        continue
                    # _request(), inlined for a current GoReplay id: its first 16 hex digits
                    # name the TCP connection.
                    conn = connections.get(rid[:16])
                    if conn is None:
                        conn = self._connection(rid[:16], 0)
                    position = conn[1]
                    conn[1] = position + 1
                    draft = Draft(request, ts, conn[0], position, name, where, index)
                    draft.key = rid
                    if ts >= reorder.last:  # Reorder.add(), inlined
                        run_append((ts, index, draft))
                        reorder.last = ts
                    else:
                        heappush(late, (ts, index, draft))
                    waiting[rid] = recent[rid] = draft
                    continue
                if not has_responses:
                    self.has_responses = has_responses = True
                latency = match.group(4)
                if kind == 50:
                    draft = waiting.get(rid)
                    if type(draft) is Draft:
                        response = fast_message(payload, False, draft.request.method)
                        if response is not None:
                            # _response(), inlined: the original response of a request waiting alone
                            del waiting[rid]
                            draft.response = response
                            if ts == draft.ts and latency is not None and int(latency) > 0:
                                ts = self._request_start_stamp(draft, int(latency))
                            draft.resp_ts = ts
                            draft.done = True
                            continue
                self._response(kind, rid, ts, int(latency) if latency else None, payload, where, index)
            self.records = index + 1
            self.max_ts, self.first_ts = max_ts, first_ts
            if self.early_order:
                self._expire_early()
            # Release, in order, the drafts REORDER_RECORDS records old whose response came, cannot
            # come (requests-only file) or is RESPONSE_WINDOW_NS late; _settle() inlined when answered.
            horizon = index - REORDER_RECORDS
            window_start = max_ts - RESPONSE_WINDOW_NS
            has_responses = self.has_responses
            out = []
            while run or late:
                from_late = late and (not run or late[0] < run[0])  # Reorder.first(), inlined
                _, at, draft = (late if from_late else run)[0]
                if at > horizon or not (draft.done or not has_responses or draft.ts < window_start):
                    break
                if from_late:
                    heappop(late)
                else:
                    run.popleft()
                rid = draft.key
                if recent.get(rid) is draft:
                    del recent[rid]
                if draft.response is None:
                    self._settle(draft)
                out.append(draft)
            if out:
                yield out
        self.records = index + 1
        self.max_ts, self.first_ts = max_ts, first_ts
        stats.bytes += nbytes
        yield from self._finish()

    # -- records -----------------------------------------------------------------------------
    def _request(self, rid: bytes, ts: int, payload: bytes, offset: int, index: int,
                 request: Request | None) -> None:
        """A request record; `request` is what fast_message() made of it (None: the general parse,
        which the reference path always takes)."""
        flags = ()
        if request is None:
            msg, error, extra = parse_single(payload, True, ts_ns=ts)
            if msg is None:  # kept as sent: a malformed request (replayed byte for byte when allowed)
                self.stats.records["unparsable"] += 1
                self._warn("unparsable", f"request record is not an HTTP/1.x request ({error}): kept as a "
                           "malformed request", offset, index)
                request = Request.malformed(payload[:MAX_KEPT])
                flags = (Flag(MALFORMED, "bytes", error),)
                if len(payload) > MAX_KEPT:
                    flags += (Flag(TRUNCATED, "request", f"longer than {MAX_KEPT} bytes: the rest is not kept"),)
            else:
                self._note_message(msg, extra, offset, index)
                request = to_request(msg)
                flags = flags_of(msg, "request")
        if len(rid) == 24:  # current GoReplay: the first 16 hex digits name the TCP connection
            conn = self._connection(rid[:16], 0)
            connection, position = conn
            conn[1] = position + 1
        elif rid in self.recent:  # 40 hex digits: one id per request (or, in v1.2.0, per keep-alive connection)
            conn = self._connection(rid, 1)
            connection, position = conn
            conn[1] = position + 1
        else:
            connection, position = "gor:" + rid.decode(), 0
        draft = Draft(request, ts, connection, position, self.name, offset, index)
        draft.flags = flags
        draft.key = rid
        self.reorder.add(ts, index, draft)
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

    def _connection(self, key: bytes, first: int) -> list:
        """[name, requests seen] of the connection `key` (the id, or its connection part)."""
        connections = self.connections
        conn = connections.get(key)
        if conn is None:
            conn = connections[key] = ["gor:" + key.decode(), first]
            if len(connections) > MAX_CONNECTIONS:  # forget the oldest connections: memory stays flat
                for old in list(connections)[: MAX_CONNECTIONS // 4]:
                    del connections[old]
        return conn

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
        response = fast_message(payload, False, draft.request.method) if self.fast else None
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
            draft.replayed += (response,)
            return
        draft.response = response
        if ts == draft.ts and latency and latency > 0:
            ts = self._request_start_stamp(draft, latency)
        draft.resp_ts = ts
        draft.done = True

    def _request_start_stamp(self, draft: Draft, latency: int) -> int:
        """Some GoReplay versions stamp the original response with its request's start time and
        put (response end - request start) in the latency field: the response's timestamp."""
        self.request_start_latency += 1
        return draft.ts + latency

    # -- release -----------------------------------------------------------------------------
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

    def _too_long(self, offset: int, nth: int, size: int, whole: bool) -> None:
        """A record beyond the limit: the file is not read further (a lost separator or a
        decompression bomb would otherwise take all the memory)."""
        limit = format_size(self.max_record_size)
        what = (f"a record of {size:,} bytes is longer than the {limit} limit" if whole else
                f"a record runs past the {limit} limit without a separator line ({size:,} bytes read of it)")
        raise CaptureError(self.name, f"{what}; if it is genuine, raise the limit with --replay-max-record-size "
                           "(pytest) or --max-record-size (inspect, convert, redact)",
                           offset=offset, record=self.records + nth)

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
