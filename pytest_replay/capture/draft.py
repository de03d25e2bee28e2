"""Exchanges under construction, and their release in request-timestamp order.

Readers build a :class:`Draft` per request, attach the response when it is framed, and mark it
done. :class:`Reorder` holds drafts until they are done and nothing earlier can still arrive, so a
reader's output is ordered by request start while memory holds only in-flight exchanges.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable

from ..http.message import CLOSED, Exchange, Flag, Request, Response, Source
from ..http.parser import Parsed


class Draft:
    __slots__ = ("request", "response", "ts", "resp_ts", "connection", "position", "file", "offset",
                 "record", "frames", "flags", "replayed", "interim", "done", "seq", "end", "key", "head")

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
        self.replayed: list[Response] = []
        self.interim: list[int] = []
        self.done = False
        self.seq = 0
        self.end = 0  # pcap: stream offset just past the request; gor: records read when it was read
        self.key: object = None  # gor: the record id
        self.head: Parsed | None = None  # pcap: the request head, until the whole request is framed

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

    def to_exchange(self, index: int) -> Exchange:
        response = self.response
        if response is not None and self.interim:
            response = dataclasses.replace(response, interim=tuple(self.interim))
        return Exchange(index=index, request=self.request, response=response, request_ts_ns=self.ts,
                        response_ts_ns=self.resp_ts, connection=self.connection, position=self.position,
                        source=Source(self.file, self.offset, self.record, self.frames),
                        flags=self.flags, replayed=tuple(self.replayed))


def to_request(msg: Parsed) -> Request:
    return Request(msg.method, msg.target, msg.version, msg.head, msg.body, msg.raw, msg.trailers, msg.lf_only)


def to_response(msg: Parsed) -> Response:
    return Response(msg.status, msg.reason, msg.version, msg.head, msg.body, msg.raw, msg.trailers, (),
                    msg.lf_only)


def flags_of(msg: Parsed, part: str) -> tuple[Flag, ...]:
    return tuple(Flag(code, part, detail) for code, detail in msg.flags)


class Reorder:
    """A heap of drafts by (request timestamp, arrival)."""

    __slots__ = ("_heap", "_n")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Draft]] = []
        self._n = 0

    def push(self, draft: Draft) -> None:
        draft.seq = self._n
        heapq.heappush(self._heap, (draft.ts, self._n, draft))
        self._n += 1

    def pop_ready(self, ready: Callable[[Draft], bool]) -> list[Draft]:
        heap, out = self._heap, []
        while heap and ready(heap[0][2]):
            out.append(heapq.heappop(heap)[2])
        return out

    def drain(self) -> list[Draft]:
        heap, self._heap = self._heap, []
        return [item[2] for item in sorted(heap)]

    def head(self) -> Draft | None:
        return self._heap[0][2] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
