"""Exchanges under construction, and their release in request-timestamp order.

Readers build a :class:`Draft` per request, attach the response when it is framed, and mark it
done. :class:`Reorder` holds drafts until they are done and nothing earlier can still arrive, so a
reader's output is ordered by request start while memory holds only in-flight exchanges.
"""

from __future__ import annotations

import heapq
from collections import deque

from ..http.message import CLOSED, Flag, Request, Response
from ..http.parser import Parsed


class Draft:
    """An exchange under construction; Capture turns it into an :class:`Exchange` (source, flags,
    interim statuses folded into the response) when it leaves the reader."""

    __slots__ = ("request", "response", "ts", "resp_ts", "connection", "position", "file", "offset",
                 "record", "frames", "flags", "replayed", "interim", "done", "seq", "end", "key", "head", "tls")

    def __init__(self, request: Request | None, ts: int, connection: str, position: int, file: str, offset: int,
                 record: int | None = None, frames: tuple[int, ...] = ()) -> None:
        self.request = request
        self.response: Response | None = None
        self.ts = ts
        self.resp_ts: int | None = None
        self.connection = connection
        self.position = position
        self.file = file
        self.offset = offset
        self.record = record
        self.frames = frames
        self.flags: tuple[Flag, ...] = ()
        # Tuples, not lists: most drafts never get any, and () is shared (no object per draft).
        self.replayed: tuple[Response, ...] = ()
        self.interim: tuple[int, ...] = ()
        self.done = False
        self.seq = 0
        self.end = 0  # pcap: stream offset just past the request; gor: records read when it was read
        self.key: object = None  # gor: the record id
        self.head: Parsed | None = None  # pcap: the request head, until the whole request is framed
        self.tls: str | None = None  # decrypted from TLS: the SNI server name ("" without SNI)

    @property
    def method(self) -> str | None:
        return self.request.method if self.request is not None else self.head.method if self.head else None

    def settle_request(self) -> None:
        """A request whose head was framed but whose message never was (its stream stopped):
        it leaves with what is known of it, flagged."""
        if self.request is None:
            head = self.head
            self.request = Request(head.method, head.target, head.version, head.head, b"", head.head)
            self.flags += (Flag(CLOSED, "request", "the request was never completed"),)
            self.head = None
            self.done = True


def to_request(msg: Parsed) -> Request:
    return Request(msg.method, msg.target, msg.version, msg.head, msg.body, msg.raw, msg.trailers, msg.lf_only)


def to_response(msg: Parsed) -> Response:
    return Response(msg.status, msg.reason, msg.version, msg.head, msg.body, msg.raw, msg.trailers, (),
                    msg.lf_only)


def flags_of(msg: Parsed, part: str) -> tuple[Flag, ...]:
    return tuple(Flag(code, part, detail) for code, detail in msg.flags)


class Reorder:
    """Drafts in (request timestamp, arrival order) order, for input that is nearly in that order
    already: an item not earlier than the last one queued in order goes to the end of `run` (a
    deque, sorted by construction), one that comes late into the `late` heap. Cheaper than a single
    heap, whose every pop costs log(n) tuple comparisons. Items are (ts, order, draft) with a
    unique, increasing order; the first item is the smaller of run[0] and late[0] (see first()).
    Readers inline first() and pop() in their release loops."""

    __slots__ = ("run", "late", "last", "_n")

    def __init__(self) -> None:
        self.run: deque[tuple[int, int, Draft]] = deque()
        self.late: list[tuple[int, int, Draft]] = []
        self.last = -(1 << 64)  # timestamp of the last item put in `run`
        self._n = 0

    def push(self, draft: Draft) -> None:
        """Queue a draft in arrival order (its seq)."""
        draft.seq = n = self._n
        self._n = n + 1
        ts = draft.ts
        if ts >= self.last:  # add(), inlined: one per captured request
            self.run.append((ts, n, draft))
            self.last = ts
        else:
            heapq.heappush(self.late, (ts, n, draft))

    def add(self, ts: int, order: int, draft: Draft) -> None:
        """Queue a draft with its own order (increasing with each call)."""
        if ts >= self.last:
            self.run.append((ts, order, draft))
            self.last = ts
        else:
            heapq.heappush(self.late, (ts, order, draft))

    def reserve(self) -> int:
        """An arrival order for a draft queued later with insert() (a malformed request, known to
        be an exchange only when its answer comes): it keeps its place among the drafts after it."""
        n = self._n
        self._n = n + 1
        return n

    def insert(self, order: int, draft: Draft) -> None:
        """Queue a draft with an order reserved earlier (out of arrival order: into the heap)."""
        draft.seq = order
        heapq.heappush(self.late, (draft.ts, order, draft))

    def first(self) -> tuple[int, int, Draft] | None:
        run, late = self.run, self.late
        if late and (not run or late[0] < run[0]):
            return late[0]
        return run[0] if run else None

    def pop(self) -> tuple[int, int, Draft]:
        run, late = self.run, self.late
        if late and (not run or late[0] < run[0]):
            return heapq.heappop(late)
        return run.popleft()

    def drain(self) -> list[Draft]:
        """Everything still queued, in order; the queue is left empty."""
        items = sorted([*self.run, *self.late])
        self.run.clear()
        self.late.clear()
        return [item[2] for item in items]

    def head(self) -> Draft | None:
        item = self.first()
        return item[2] if item is not None else None

    def __len__(self) -> int:
        return len(self.run) + len(self.late)
