"""TCP connections: which side is the server, both directions reassembled and framed, responses
paired with their requests (sans-IO).

Pairing is first-in-first-out on a connection, corrected by TCP acknowledgements where the capture
lost data: a response's first segment acknowledges the request bytes the server had received, so a
response that follows a capture gap is paired with the request the server had actually seen, and a
response whose request fell into a gap is reported as an orphan instead of being paired wrongly.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from heapq import heappush

from .draft import Draft, Reorder, flags_of
from .stats import CaptureStats
from ..http.message import (CAPTURE_ENDED, CLOSED, EVENT_STREAM, GAP, MALFORMED, NO_RESPONSE, NOT_REPLAYED, STREAMED,
                            TRUNCATED, UNPARSABLE, WEBSOCKET, Flag, Request, Response, build_head, header_value)
from ..http.parser import MAX_KEPT
from ..http.h2 import H2Session, H2Stream, looks_like_frames
from ..http.parser import _MAX_REMEMBERED as MAX_REMEMBERED, _WHOLE, BODY_FRAMING_METHODS, HEAD, Framer, Lost, Parsed, Stop
from ..tls.records import looks_like_client_hello
from .tcp import Stream

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
DEFAULT_SERVER_PORTS = frozenset({80, 81, 591, 3000, 4000, 5000, 5984, 8000, 8008, 8080, 8081, 8088, 8443, 8888,
                                  9000, 9080, 9200, 443})
MAX_TLS_LISTED = 1000  # TLS connections described one by one in the stats (all are counted)
STREAMED_NS = 10 * 10**9  # a response whose body (no Content-Length) took longer than this is a stream
TOMBSTONES = 4096  # recently closed connections whose stray packets are ignored


def format_address(addr: bytes, port: int) -> str:
    if len(addr) == 4:
        return f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}:{port}"
    return f"[{ipaddress.IPv6Address(addr).compressed}]:{port}"


class LostSpan:
    """Request-stream bytes the capture lost: they may have held whole requests."""

    __slots__ = ("start", "end")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end


class H2Sink:
    """Stands in for a side's Framer once the connection speaks HTTP/2: the side's Stream feeds it,
    and Connection.packet()'s fast-path checks see a framer with nothing to drain."""

    _state = -1  # never parser.HEAD: packet() calls feed()
    _buf = b""
    _pending = ()
    _closing = False
    _first = False
    stopped = None

    def __init__(self, session: H2Session, from_client: bool) -> None:
        self.session = session
        self.from_client = from_client

    def feed(self, data: bytes, ts_ns: int, frame: int = 0, ack: int | None = None, where: int = 0) -> None:
        self.session.feed(self.from_client, data, ts_ns, frame, where)

    def gap(self, nbytes: int, code: str = GAP, detail: str = "") -> None:
        self.session.gap(self.from_client, nbytes, code, detail)

    def close(self, code: str | None = None, detail: str = "") -> None:
        self.session.close(self.from_client, code, detail)

    def next_event(self) -> None:
        return None

    def stop(self, code: str, detail: str) -> None:
        pass


class Connection:
    __slots__ = ("name", "table", "client", "server", "requests", "responses", "queue", "answering",
                 "heads", "position", "client_isn", "stopped", "finished", "_server_gaps", "_client_gaps",
                 "file", "key", "first_frame", "first_where", "h2", "h2_upgrade", "mid_stream", "undecided",
                 "tls", "malformed", "not_http", "unpushed")

    def __init__(self, table: FlowTable, name: str, key: tuple, mid_stream: bool, frame: int = 0,
                 where: int = 0) -> None:
        self.table = table
        self.name = name
        self.key = key
        self.file = table.file
        self.first_frame = frame  # where the connection starts: its first packet's frame number
        self.first_where = where  # and that packet's byte offset in the file
        self.requests = self._request_framer(mid_stream)
        self.responses = Framer(False, on_head=self._response_head, on_message=self._response_event,
                                on_answer=self._answer, on_response=self._whole_response, resync=mid_stream)
        self.client = Stream(self.requests)
        self.server = Stream(self.responses)
        self.queue: deque[Draft | LostSpan] = deque()  # requests awaiting their response, in order
        # Heads come out of a framer before their messages (a gap or a close may frame several
        # buffered messages at once), so both are queues:
        self.answering: deque[Draft | None] = deque()  # what each framed response head answers
        self.heads: deque[Draft] = deque()  # requests whose head is framed but message not yet
        self.position = 0
        self.client_isn: int | None = None
        self.stopped = False
        self.finished = False
        self._server_gaps = 0  # server-stream gaps seen at the last response head
        self._client_gaps = 0
        self.h2: H2Session | None = None  # the connection speaks HTTP/2 (on one side or both)
        self.h2_upgrade: Draft | None = None  # a request with Upgrade: h2c awaiting its answer
        self.mid_stream = mid_stream
        self.undecided = True  # no payload seen yet: the first one tells whether this is TLS
        self.tls = None  # a TlsConnection between the TCP streams and the framers, for TLS
        self.malformed: Draft | None = None  # a malformed request still collecting the client's bytes
        self.not_http: Stop | None = None  # the client's first bytes were not HTTP/1.x: why, until answered
        self.unpushed: Draft | None = None  # their malformed request, an exchange once a response answers it

    def _request_framer(self, resync: bool, check_signature: bool = True) -> Framer:
        return Framer(True, on_head=self._request_head, on_message=self._request_event,
                      on_request=self._whole_request, resync=resync, check_signature=check_signature)

    # -- packets -----------------------------------------------------------------------------
    def packet(self, from_client: bool, seq: int, ack: int, flags: int, payload: bytes, missing: int,
               ts_ns: int, frame: int, where: int) -> None:
        if from_client:
            stream, other, framer = self.client, self.server, self.requests
        else:
            stream, other, framer = self.server, self.client, self.responses
        if self.undecided and payload:
            self._classify(from_client, payload)
        if flags & ACK:
            if other.waiting:
                other.acked(ack)
                self._drain(not from_client)
            else:
                other.last_ack = ack
        else:
            ack = None
        if (payload and not flags & 0x07 and not missing and seq == stream.next_seq and not stream.waiting
                and self.tls is None):
            # in order, nothing special: the common case, inlined (with Framer.feed()'s own)
            size = len(payload)
            stream.offset += size
            stream.next_seq = (seq + size) & 0xFFFFFFFF
            if framer._state == HEAD and not framer._buf and not framer._first and framer.fast:
                # Framer._fast(), with its memory of whole messages looked up here first
                known = _WHOLE[from_client].get(payload) if size <= MAX_REMEMBERED and not framer._pending else None
                if known is None:
                    if not framer._fast(payload, ts_ns, frame, ack, where):
                        framer._append(payload, ts_ns, frame, ack, where)
                elif from_client:
                    framer._base = end = framer._base + size
                    framer.messages += 1
                    self._whole_request(known, end, ts_ns, frame, where)
                else:  # Framer._fast_response() for a remembered response, whole when it answers a GET
                    response, head_end, cl, length = known
                    answered = self._answer(ack)
                    if answered in BODY_FRAMING_METHODS or head_end + length != size or framer._pending:
                        framer._fast_response(payload, head_end, None, None, cl, ts_ns, frame, ack, where, response,
                                              answered)
                    else:
                        framer._base = end = framer._base + size
                        framer.messages += 1
                        self._whole_response(response, end, ts_ns, frame)
            else:
                framer.feed(payload, ts_ns, frame, ack, where)
        else:
            if flags & SYN:
                stream.syn(seq)
                seq = (seq + 1) & 0xFFFFFFFF
            if payload or missing or flags & FIN:
                stream.segment(seq, payload, ts_ns, frame, where, ack, missing, bool(flags & FIN))
            if flags & RST:
                for side in (self.client, self.server):
                    side.end(CLOSED, f"connection reset (frame {frame})")
                self._drain(not from_client)
        if framer._pending or framer._buf or framer._closing:
            self._drain(from_client)
        elif from_client and stream.gaps != self._client_gaps:
            self._note_client_gaps()
        if stream.closed and other.closed:
            self.finish("connection closed before a response")

    def _classify(self, from_client: bool, payload: bytes) -> None:
        """The connection's first payload: a ClientHello makes it a TLS connection, whose records
        are decrypted (when the key log has its keys) and whose plaintext goes to the framers. This
        is where streams are classified; other signatures (TLS without its handshake, HTTP/2, SSH)
        are recognised by the framers and skipped."""
        self.undecided = False
        if not (from_client and self.client.offset == 0 and looks_like_client_hello(payload)):
            return
        from ..tls.decrypt import TlsConnection  # here: plain HTTP captures never load it

        self.tls = TlsConnection(self.table.keylog, self.requests, self.responses, self._tls_stop, self._tls_warn,
                                 self._tls_h2)
        self.client.sink = self.tls.client
        self.server.sink = self.tls.server
        self.requests._first = self.responses._first = True  # the plaintext is checked, not the records

    def _tls_stop(self, code: str, detail: str, frame: int | None, where: int | None) -> None:
        """The TLS connection cannot be decrypted (no key, wrong key, unsupported): reported with
        where, and its framers stop."""
        if not self.stopped:
            self.stopped = True
            self.table.skipped(code, f"{self.name}: {detail}", frame if frame is not None else self.first_frame,
                               where if where is not None else self.first_where)
        self.requests.stop(code, detail)
        self.responses.stop(code, detail)

    def _tls_h2(self, tls) -> tuple[H2Sink, H2Sink]:
        """ALPN h2 over TLS: the decrypted streams carry HTTP/2 from their first byte (the client
        preface). Both sides go to the connection's H2Session (protocol "h2"); the returned sinks
        take the plaintext the TLS directions decrypt."""
        self.speak_h2(True, True, protocol="h2")
        return self.requests, self.responses

    def _tls_warn(self, code: str, detail: str, frame: int | None, where: int | None) -> None:
        from .stats import CaptureWarning

        self.table.stats.warn(CaptureWarning(self.file, code, f"{self.name}: {detail}", offset=where, frame=frame))

    def _drain(self, client_side: bool) -> None:
        if client_side:
            framer, handle = self.requests, self._request_event
        else:
            framer, handle = self.responses, self._response_event
        pending = framer._pending
        while True:
            if pending:
                handle(pending.pop(0))
            elif framer._buf or framer._closing:
                event = framer.next_event()
                if event is None:
                    break
                handle(event)
            else:
                break
        if client_side and self.client.gaps != self._client_gaps:
            self._note_client_gaps()

    # -- requests ----------------------------------------------------------------------------
    def _request_head(self, msg: Parsed) -> None:
        draft = Draft(None, msg.ts_ns, self.name, self.position, self.file, msg.where, frames=(msg.frame,))
        draft.end = msg.start  # until the request completes: where it starts
        draft.head = msg
        if self.tls is not None:
            draft.tls = self.tls.server_name or ""
        self.malformed = None  # a request starts: a malformed one before it has all its bytes
        self.position += 1
        self.heads.append(draft)
        self.table.reorder.push(draft)
        self.queue.append(draft)

    def _whole_request(self, request: Request, end: int, ts_ns: int, frame: int, where: int) -> None:
        """A whole request framed from one segment: _request_head() and _request_event() at once."""
        draft = Draft(request, ts_ns, self.name, self.position, self.file, where, None, (frame,))
        draft.end = end
        if self.tls is not None:
            draft.tls = self.tls.server_name or ""
        self.malformed = None
        self.position += 1
        reorder = self.table.reorder
        draft.seq = n = reorder._n  # Reorder.push(), inlined: once per request of a dense capture
        reorder._n = n + 1
        if ts_ns >= reorder.last:
            reorder.run.append((ts_ns, n, draft))
            reorder.last = ts_ns
        else:
            heappush(reorder.late, (ts_ns, n, draft))
        self.queue.append(draft)
        if b"h2c" in request.head and _asks_h2c(request.headers):
            self._wants_h2c(draft)

    def _request_event(self, event) -> None:
        if type(event) is Parsed:
            draft = self.heads.popleft()
            draft.request = Request(event.method, event.target, event.version, event.head, event.body, event.raw,
                                    event.trailers, event.lf_only)
            draft.head = None
            draft.end = event.end
            if b"h2c" in event.head and _asks_h2c(draft.request.headers):
                self._wants_h2c(draft)
            if event.flags:
                draft.flags += flags_of(event, "request")
            if event.lf_only:
                self.table.stats.lf_only += 1
            if draft.response is not None:
                draft.done = True
        elif isinstance(event, Lost):
            if event.code != UNPARSABLE:
                self.table.stats.lost[event.code] += event.nbytes
            elif event.message:
                self._malformed_begin(event.data, event.nbytes, event.ts_ns, event.frame, event.where, event.start,
                                      event.detail)
            else:
                self._malformed_more(event.data, event.nbytes)
        elif isinstance(event, Stop):
            self._stop(event)

    # -- malformed requests ------------------------------------------------------------------
    def _malformed_begin(self, data: bytes, nbytes: int, ts_ns: int, frame: int, where: int, start: int,
                         why: str) -> Draft:
        """Where a request should start the client sent bytes that are not valid HTTP/1.x: they are
        a request flagged malformed-request (kept as sent, replayed as sent), paired with the
        response that follows like any request. Its bytes run until the next request starts or a
        response answers it."""
        draft = Draft(Request.malformed(data), ts_ns, self.name, self.position, self.file, where, frames=(frame,))
        draft.end = start + nbytes
        draft.flags = (Flag(MALFORMED, "bytes", why),)
        if self.tls is not None:
            draft.tls = self.tls.server_name or ""
        if nbytes > len(data):
            self._malformed_cut(draft, nbytes - len(data))
        self.position += 1
        self.malformed = draft
        self.queue.append(draft)
        if self.not_http is None:  # on a connection already speaking HTTP/1.x: an exchange, answered or not
            self.table.reorder.push(draft)
        else:
            self.unpushed = draft
            draft.seq = self.table.reorder.reserve()  # its place among the drafts that follow
        return draft

    def _malformed_more(self, data: bytes, nbytes: int, code: str | None = None) -> None:
        """More bytes of the malformed request being collected (or lost bytes, counted)."""
        draft = self.malformed
        if draft is None:
            self.table.stats.lost[code or UNPARSABLE] += nbytes
            return
        raw = draft.request.raw
        room = max(MAX_KEPT - len(raw), 0)
        if data and room:
            draft.request = Request.malformed(raw + data[:room])
        draft.end += nbytes
        if nbytes > min(len(data), room):
            self._malformed_cut(draft, nbytes - min(len(data), room), code)

    def _malformed_cut(self, draft: Draft, nbytes: int, code: str | None = None) -> None:
        self.table.stats.lost[code or UNPARSABLE] += nbytes
        if not any(flag.part == "request" for flag in draft.flags):
            why = (f"{nbytes} bytes missing" if code else f"longer than {MAX_KEPT} bytes: the rest is not kept")
            draft.flags += (Flag(code or TRUNCATED, "request", why),)

    def _not_http_client(self, event: Stop, framer: Framer) -> None:
        """The client's first bytes are not HTTP/1.x: a malformed request if the server answers it
        with an HTTP/1.x response, not HTTP at all otherwise (decided when the connection ends). A
        new request framer looks for the next request start in what follows (a valid request after
        the garbage is an exchange of its own); what it skips is the malformed request's bytes."""
        self.not_http = event
        leftover, framer.leftover = framer.leftover, []
        ts_ns, frame, where = leftover[0][1:] if leftover else (0, self.first_frame, self.first_where)
        self._malformed_begin(b"", 0, ts_ns, frame, where, 0, event.detail)
        requests = self._request_framer(True, False)
        requests._resync_code = UNPARSABLE  # the bytes it skips are the malformed request's
        self.requests = requests
        if self.tls is not None:
            self.tls.client.sink = requests
        else:
            self.client.sink = requests
        for data, ts, fr, wh in leftover:
            requests.feed(data, ts, fr, None, wh)
        self._drain(True)

    def _note_client_gaps(self) -> None:
        """Request bytes were lost: remember where, since they may have held whole requests."""
        self._client_gaps = self.client.gaps
        end = self.client.offset
        span = LostSpan(end - 1, end)
        queue = self.queue
        # The span goes after the requests that started before it.
        index = len(queue)
        while index and isinstance(queue[index - 1], Draft) and queue[index - 1].end >= end:
            index -= 1
        queue.insert(index, span)

    # -- responses ---------------------------------------------------------------------------
    def _response_head(self, msg: Parsed) -> str | None:
        return self._answer(msg.ack)

    def _answer(self, ack: int | None) -> str | None:
        """A final response starts (its first segment carried `ack`): find the request it
        answers, and return its method."""
        client = self.client
        if client.last_ack != client.next_seq and client.last_ack is not None:
            client.flush_acked()  # request bytes the server acknowledged but the capture lacks
        requests = self.requests
        if requests._pending or requests._buf or client.gaps != self._client_gaps:
            self._drain(True)
        queue = self.queue
        if queue and type(queue[0]) is Draft and self.server.gaps == self._server_gaps:
            draft = queue.popleft()  # the common case: first in, first out
            if not draft.done:
                self.answering.append(draft)
                if draft is self.malformed or draft is self.unpushed:
                    self._malformed_answered(draft)
                request = draft.request
                return request.method if request is not None else draft.method
            queue.appendleft(draft)
        ack_off = client.offset_of(ack) if ack is not None else None
        if self.server.gaps != self._server_gaps and ack_off is not None:
            # Responses may have been lost in this gap: skip requests the server had answered,
            # i.e. all but the newest request that started before what the server acknowledged.
            newest = None
            for item in queue:
                if isinstance(item, Draft) and _received(item, ack_off):
                    newest = item
            while newest is not None and queue[0] is not newest:
                item = queue.popleft()
                if isinstance(item, Draft):
                    self._no_response(item, "its response was lost in a capture gap")
        self._server_gaps = self.server.gaps
        while queue and isinstance(queue[0], LostSpan):
            following = next((item for item in queue if isinstance(item, Draft)), None)
            if following is not None and (ack_off is None or _received(following, ack_off)):
                queue.popleft()  # the lost bytes held no request this response answers
                continue
            return self._orphan("its request was lost in a capture gap")
        if not queue:
            return self._orphan("no request was seen for it on this connection")
        draft = queue.popleft()
        if draft.done:  # released already (its response window passed)
            return self._orphan("it came after its request had been given up on")
        self.answering.append(draft)
        return draft.method

    def _orphan(self, why: str) -> None:
        self.answering.append(None)
        self.table.orphan(why)

    def _whole_response(self, response: Response, end: int, ts_ns: int, frame: int) -> None:
        """A whole final response (not 101) framed from one segment: _response_event() for it."""
        draft = self.answering.popleft() if self.answering else None
        if draft is None:
            return
        draft.response = response
        draft.resp_ts = ts_ns
        draft.frames = (draft.frames[0], frame)
        request = draft.request
        # done when the request is complete too (it may still be arriving: a server can answer early)
        draft.done = request is not None
        if b"event-stream" in response.head:
            _not_replayed(draft, response.head, 0, response.status)
        if request is not None and request.method == "CONNECT" and response.status < 300:
            self._stop(Stop("tunnel", "CONNECT established a tunnel", end))

    def _response_event(self, event) -> None:
        if type(event) is Parsed:
            status = event.status
            if status < 200 and status != 101:
                head = next((item for item in self.queue if isinstance(item, Draft)), None)
                if head is not None:
                    head.interim += (status,)
                return
            if status == 101:
                self._response_head(event)  # final, but the framer treats it as interim
            draft = self.answering.popleft() if self.answering else None
            if draft is None:
                return
            if status == 101 and draft is self.h2_upgrade and (event_header(event, b"upgrade") or b"").strip().lower() \
                    == b"h2c":
                self._upgraded_h2c(draft, event)
                return
            draft.response = Response(status, event.reason, event.version, event.head, event.body, event.raw,
                                      event.trailers, (), event.lf_only)
            draft.resp_ts = event.ts_ns
            draft.frames = (draft.frames[0], event.frame)
            if event.flags:
                draft.flags += flags_of(event, "response")
            if event.lf_only:
                self.table.stats.lf_only += 1
            # done when the request is complete too (it may still be arriving: a server can answer early)
            draft.done = draft.request is not None
            if status == 101 or b"event-stream" in event.head or event.end_ts_ns - event.ts_ns > STREAMED_NS:
                _not_replayed(draft, event.head, event.end_ts_ns - event.ts_ns, status)
            if status == 101:
                self._stop(Stop("upgraded", f"101 Switching Protocols to "
                                f"{(event_header(event, b'upgrade') or b'?').decode('latin-1')}", event.end))
            elif draft.request is not None and draft.request.method == "CONNECT" and status < 300:
                self._stop(Stop("tunnel", "CONNECT established a tunnel", event.end))
        elif isinstance(event, Lost):
            self.table.stats.lost[event.code] += event.nbytes
            if event.message:
                self._unparsable_response(event)
        elif isinstance(event, Stop):
            self._stop(event)

    def _unparsable_response(self, event: Lost) -> None:
        """Where a response should start, the server sent something that is not a valid HTTP/1.x
        head (an impossible Content-Length, say): the oldest request waiting gets that reason
        rather than "no response"."""
        queue = self.queue
        if queue and type(queue[0]) is Draft and not queue[0].done and self.server.gaps == self._server_gaps:
            draft = queue.popleft()
            draft.flags += (Flag(UNPARSABLE, "response", f"the response is not valid HTTP/1.x: {event.detail}"),)
            self.table.settled(draft)

    # -- ends --------------------------------------------------------------------------------
    def _malformed_answered(self, draft: Draft) -> None:
        """A response answers the malformed request: its bytes are complete, and if the client's
        first bytes were not HTTP/1.x, the server's answer makes it an exchange after all."""
        self.malformed = None
        if draft is self.unpushed:
            self.not_http = self.unpushed = None
            self.table.reorder.insert(draft.seq, draft)

    def _not_http_after_all(self) -> None:
        """Nothing answered the client's first bytes in HTTP/1.x: they were not a malformed request
        (the connection is skipped as not HTTP, as if it had never been collected)."""
        self.queue.clear()
        if self.unpushed is not None:
            self.position -= 1
        self.malformed = self.unpushed = None

    def _stop(self, event: Stop) -> None:
        """The connection stops being HTTP/1.x (not HTTP at all, or upgraded)."""
        if event.code == "http2" and self.requests.stopped is event:
            # the client preface: prior knowledge, or after asking for Upgrade: h2c
            self.speak_h2(True, self.h2_upgrade is None)
            return
        if event.code == "not-http":
            if self.h2 is not None:
                return  # the server's frames, its side already handed over (or about to be)
            framer = self.requests if self.requests.stopped is event else self.responses
            if framer.leftover and looks_like_frames(framer.leftover[0][0]):
                self.speak_h2(True, True, preface=framer is self.responses and not self.mid_stream,
                              known=not self.mid_stream)
                return
            if framer is self.requests and not self.mid_stream and self.position == 0 and not self.stopped:
                self._not_http_client(event, framer)
                return
            if self.not_http is not None:  # the server does not speak HTTP/1.x either
                self._not_http_after_all()
                event = self.not_http
                self.not_http = None
        if not self.stopped:
            self.stopped = True
            if self.position == 0 and self.h2 is None:  # nothing was read as HTTP/1.x on it
                protocols = self.table.stats.protocols
                protocols["http/1"] -= 1
                if protocols["http/1"] <= 0:
                    del protocols["http/1"]
            self.table.skipped(event.code, f"{self.name}: {event.detail}", self.first_frame, self.first_where)
        self.requests.stop(event.code, event.detail)
        self.responses.stop(event.code, event.detail)

    def _no_response(self, draft: Draft, why: str) -> None:
        draft.flags += (Flag(NO_RESPONSE, "response", why),)
        self.table.settled(draft)

    def finish(self, why: str, code: str | None = None) -> None:
        """Both directions ended (or the capture did): settle every request still waiting."""
        if self.finished:
            return
        if code is not None:
            self.client.end(code, "")
            self.server.end(code, "")
        self._drain(True)
        self._drain(False)
        if self.not_http is not None:  # the client's first bytes were not HTTP/1.x, and nothing answered them
            self._not_http_after_all()
            stop, self.not_http = self.not_http, None
            self._stop(stop)
        self.finished = True
        if self.h2 is not None:
            self.h2.finish(why, code or CLOSED)
            stats = self.table.stats
            for text in self.h2.warnings[:3]:
                if stats.warning_counts["http2"] < 20:
                    from .stats import CaptureWarning
                    stats.warn(CaptureWarning(self.file, "http2", f"{self.name}: HTTP/2 {text}",
                                              offset=self.first_where, frame=self.first_frame))
        for draft in self.heads:  # their framer stopped mid-message
            draft.settle_request()
        self.heads.clear()
        for item in self.queue:
            if isinstance(item, Draft):
                self._no_response(item, why)
        self.queue.clear()
        for draft in self.answering:
            if draft is not None:
                self._no_response(draft, why)
        self.answering.clear()
        stats = self.table.stats
        if self.tls is not None:
            self.table.tls_finished(self)
        for side in (self.client, self.server):
            stats.gaps += side.gaps
            stats.gap_bytes += side.gap_bytes
            stats.retransmitted_bytes += side.retransmitted
        self.table.closed(self)


    # -- HTTP/2 ------------------------------------------------------------------------------
    def speak_h2(self, client: bool, server: bool, *, preface: bool = True, known: bool = True,
                 protocol: str = "h2c") -> H2Session:
        """From here on, these sides carry HTTP/2 frames: their framers stop and what they had not
        framed goes to the connection's :class:`H2Session`, whose streams become exchanges. The hook
        for decrypted TLS with ALPN h2 (both sides, protocol "h2"); the client side starts with the
        preface unless `preface` is False (a connection the capture joined mid-way, with `known`
        False: the HPACK tables are not known)."""
        if self.h2 is None:
            self.h2 = H2Session(self._h2_open, self._h2_close, preface=preface, known=known, protocol=protocol)
            protocols = self.table.stats.protocols
            protocols[protocol] += 1
            if protocols["http/1"] > 1:
                protocols["http/1"] -= 1
            else:
                del protocols["http/1"]
        for from_client, wanted in ((True, client), (False, server)):
            framer = self.requests if from_client else self.responses
            if not wanted or isinstance(framer, H2Sink):
                continue
            framer.stop("http2", "HTTP/2")
            sink = H2Sink(self.h2, from_client)
            # over TLS the TCP streams feed the TLS directions, which feed the sink plaintext
            feeds = (self.tls.client if from_client else self.tls.server) if self.tls is not None else None
            if from_client:
                self.requests = sink
                (feeds or self.client).sink = sink
            else:
                self.responses = sink
                (feeds or self.server).sink = sink
            for data, ts_ns, frame, where in framer.leftover:
                self.h2.feed(from_client, data, ts_ns, frame, where)
            framer.leftover = []
        return self.h2

    def _wants_h2c(self, draft: Draft) -> None:
        """A request asked for Upgrade: h2c: the client's preface may follow it at once."""
        self.h2_upgrade = draft
        self.requests._first = True  # the next bytes are checked for the HTTP/2 preface

    def _upgraded_h2c(self, draft: Draft, event: Parsed) -> None:
        """101 to h2c: the upgrade request is stream 1's request; its response comes in frames."""
        self.h2_upgrade = None
        draft.interim += (101,)
        session = self.speak_h2(False, False)  # stream 1 must exist before the server's frames go in
        session.upgraded(draft.request, draft, draft.ts, draft.frames[0] if draft.frames else 0, draft.offset)
        draft.request = _without_upgrade(draft.request)
        self.speak_h2(False, True)

    def _h2_open(self, stream: H2Stream) -> None:
        draft = Draft(stream.request(self.h2.protocol), stream.req_ts, self.name, self.position, self.file,
                      stream.req_where, frames=(stream.req_frame,))
        if self.tls is not None:
            draft.tls = self.tls.server_name or ""
        self.position += 1
        stream.opaque = draft
        self.table.reorder.push(draft)

    def _h2_close(self, stream: H2Stream) -> None:
        draft = stream.opaque
        if stream.req_headers is None or draft is None:
            self.table.orphan("its HTTP/2 stream started before the capture (or its request was lost)")
            return
        protocol = self.h2.protocol
        request = draft.request
        if request is None or (request.protocol != "http/1" and (stream.req_data or stream.req_trailers)):
            draft.request = stream.request(protocol)  # built at _h2_open() from the headers alone
        response = stream.response(protocol)
        if response is not None and b"event-stream" in response.head:
            _not_replayed(draft, response.head, 0, response.status)
        if response is not None:
            draft.interim += response.interim  # Capture puts the draft's interim statuses on the response
            draft.response = response
            draft.resp_ts = stream.resp_ts
            draft.frames = (draft.frames[0] if draft.frames else stream.req_frame, stream.resp_frame)
        for code, part, detail in stream.flags:
            draft.flags += (Flag(code, part, detail),)
        if response is None and not any(flag.part == "response" for flag in draft.flags):
            draft.flags += (Flag(NO_RESPONSE, "response", f"HTTP/2 stream {stream.id} had no response"),)
        draft.done = True


def _not_replayed(draft: Draft, head: bytes, span_ns: int, status: int) -> None:
    """Traffic read but not replayed, flagged with why (part NOT_REPLAYED; the items say it when
    they skip): a WebSocket handshake, a server-sent events stream, a response streamed over more
    than STREAMED_NS (long-poll or chunked streaming: the time is the stream's, not a latency)."""
    headers = Response(status, "", "1.1", head, b"", head).headers
    ctype = (header_value(headers, b"content-type") or b"").split(b";")[0].strip().lower()
    if status == 101:
        protocol = (header_value(headers, b"upgrade") or b"").strip().lower()
        if protocol != b"websocket":
            return
        flag = Flag(WEBSOCKET, NOT_REPLAYED, "a WebSocket handshake: the frames after it are not parsed "
                    "(the connection is skipped 'upgraded')")
    elif ctype == b"text/event-stream":
        flag = Flag(EVENT_STREAM, NOT_REPLAYED, "a server-sent events stream (text/event-stream), not a response "
                    "to compare")
    elif span_ns > STREAMED_NS and header_value(headers, b"content-length") is None:
        flag = Flag(STREAMED, NOT_REPLAYED, f"a response streamed over {span_ns / 1e9:.1f} s (long-poll or "
                    "chunked streaming), not a response to compare")
    else:
        return
    draft.flags += (flag,)


def _without_upgrade(request: Request) -> Request:
    """The Upgrade: h2c request as it is replayed (over HTTP/1.1): without Upgrade, HTTP2-Settings and
    their Connection tokens, which would ask the target to switch protocols."""
    kept = []
    for name, value in request.headers:
        lname = name.lower()
        if lname in (b"upgrade", b"http2-settings"):
            continue
        if lname == b"connection":
            tokens = [t.strip() for t in value.split(b",") if t.strip().lower() not in (b"upgrade", b"http2-settings")]
            if not tokens:
                continue
            value = b", ".join(tokens)
        kept.append((name, value))
    start = request.head.split(b"\n", 1)[0].rstrip(b"\r")
    head = build_head(start, tuple(kept))
    return Request(request.method, request.target, request.version, head, request.body, head + request.body,
                   request.trailers, False, tuple(kept))


def _asks_h2c(headers) -> bool:
    return (header_value(headers, b"upgrade") or b"").strip().lower() == b"h2c" or any(
        name.lower() == b"upgrade" and b"h2c" in value.lower() for name, value in headers)


def _received(draft: Draft, ack_off: int) -> bool:
    """Had the server received this request (all of it, or the part captured so far) at `ack_off`?"""
    return draft.end <= ack_off if draft.request is not None else draft.end < ack_off


def event_header(msg: Parsed, name: bytes) -> bytes | None:
    return header_value(msg.headers, name)


class FlowTable:
    """All connections of one capture file, keyed by (src, sport, dst, dport) in both directions."""

    def __init__(self, file: str, stats: CaptureStats, reorder: Reorder,
                 server_ports: frozenset[int] = DEFAULT_SERVER_PORTS, keylog=None) -> None:
        self.file = file
        self.keylog = keylog  # a tls.KeyLog (TLS connections are decrypted with it), or None
        self.stats = stats
        self.reorder = reorder
        self.server_ports = server_ports
        self.flows: dict[tuple, tuple[Connection, bool]] = {}
        self.tombstones: OrderedDict[tuple, None] = OrderedDict()
        self.generations: dict[tuple, int] = {}
        self.stray = 0

    def packet(self, src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, flags: int,
               payload: bytes, missing: int, ts_ns: int, frame: int, where: int) -> None:
        key = (src, sport, dst, dport)
        entry = self.flows.get(key)
        if entry is None or (flags & (SYN | ACK) == SYN and self._reused(entry[0], seq)):
            entry = self._new(key, flags, seq, payload, frame, where)
            if entry is None:
                return
        entry[0].packet(entry[1], seq, ack, flags, payload, missing, ts_ns, frame, where)

    def _reused(self, conn: Connection, seq: int) -> bool:
        """A SYN on a known 4-tuple: a new connection unless it repeats the first SYN."""
        if conn.client_isn == seq:
            return False
        conn.finish("a new connection reused the same addresses and ports", CLOSED)
        return True

    def _new(self, key: tuple, flags: int, seq: int, payload: bytes, frame: int = 0,
             where: int = 0) -> tuple[Connection, bool] | None:
        if key in self.tombstones and not flags & SYN:
            self.stray += 1
            return None
        if flags & SYN:
            from_client = not flags & ACK
            mid_stream = False
        elif payload:
            from_client = self._client_speaks(payload, key[1], key[3])
            mid_stream = True
        else:
            return None  # an ACK, FIN or RST of a connection that carried nothing here
        reverse = (key[2], key[3], key[0], key[1])
        if reverse == key:  # the same address and port on both ends: directions cannot be told apart
            self.stats.skipped_streams["self-connection"] += 1
            self.tombstones[key] = None
            return None
        ckey = key if from_client else reverse
        generation = self.generations.get(ckey, 0) + 1
        self.generations[ckey] = generation
        name = f"{format_address(ckey[0], ckey[1])} -> {format_address(ckey[2], ckey[3])}"
        if generation > 1:
            name += f" #{generation}"
        conn = Connection(self, name, ckey, mid_stream, frame, where)
        if flags & SYN and from_client:
            conn.client_isn = seq
        self.stats.protocols["http/1"] += 1
        if mid_stream and looks_like_frames(payload):  # joined an HTTP/2 connection mid-way
            conn.speak_h2(True, True, preface=False, known=False)
        self.tombstones.pop(key, None)
        self.tombstones.pop(reverse, None)
        self.flows[ckey] = (conn, True)
        self.flows[(ckey[2], ckey[3], ckey[0], ckey[1])] = (conn, False)
        self.stats.connections += 1
        return (conn, from_client)

    def _client_speaks(self, payload: bytes, sport: int, dport: int) -> bool:
        """No SYN seen: the sender is the client if it speaks a request line, the server if it
        speaks a status line; otherwise the side on a known server port is the server."""
        head = payload[:16]
        if head.startswith(b"HTTP/"):
            return False
        token, space, _ = head.partition(b" ")
        if space and token.isalpha() and token.isupper():
            return True
        if dport in self.server_ports and sport not in self.server_ports:
            return True
        if sport in self.server_ports and dport not in self.server_ports:
            return False
        return dport < sport

    # -- called by connections ---------------------------------------------------------------
    def settled(self, draft: Draft) -> None:
        draft.done = True

    def orphan(self, why: str) -> None:
        self.stats.orphan_responses[why] += 1

    def skipped(self, code: str, detail: str, frame: int | None = None, where: int | None = None) -> None:
        """A connection is not HTTP/1.x (from its start, or after an upgrade): counted, and the first
        ones of each kind named with where the connection starts (frame and file offset)."""
        self.stats.skipped_streams[code] += 1
        if self.stats.warning_counts[f"skipped-{code}"] < 20:
            from .stats import CaptureWarning
            self.stats.warn(CaptureWarning(self.file, f"skipped-{code}", f"stream not parsed: {detail}",
                                           offset=where, frame=frame))

    def tls_finished(self, conn: Connection) -> None:
        """A TLS connection ended: its outcome counted, and described for inspect (no keys)."""
        tls = conn.tls
        if tls.status == "handshake" and tls.reason == "":
            tls.reason = "no encrypted records in the capture"
        self.stats.tls[tls.status] += 1
        if len(self.stats.tls_connections) < MAX_TLS_LISTED:
            self.stats.tls_connections.append({"file": self.file, "connection": conn.name, "frame": conn.first_frame,
                                               **tls.info()})

    def closed(self, conn: Connection) -> None:
        for key in (conn.key, (conn.key[2], conn.key[3], conn.key[0], conn.key[1])):
            entry = self.flows.get(key)
            if entry is not None and entry[0] is conn:
                del self.flows[key]
                self.tombstones[key] = None
        while len(self.tombstones) > TOMBSTONES:
            self.tombstones.popitem(last=False)

    def finish(self) -> None:
        """The capture ended: settle every connection still open."""
        for conn, from_client in list(self.flows.values()):
            if from_client:
                conn.finish("the capture ended before a response", CAPTURE_ENDED)
