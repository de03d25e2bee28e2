"""One direction of a TCP connection put back in order (sans-IO).

Segments go in with their sequence numbers; in-order bytes come out to a sink (the HTTP framer)
with their timestamps. Retransmissions and overlaps are trimmed (first copy wins), out-of-order
segments wait, sequence numbers wrap at 2**32. A hole is never filled with invented bytes: it is
declared to the sink as a gap when the other side acknowledged past it (the bytes were sent but not
captured), when the stream closes or the capture ends, or when too much waits behind it.
"""

from __future__ import annotations

from ..http.message import GAP, TRUNCATED

MASK = 0xFFFFFFFF
HALF = 0x80000000
MAX_WAITING = 8 << 20  # bytes held behind a hole before it is declared a gap


def seq_diff(a: int, b: int) -> int:
    """a - b in sequence space: signed, wrapping at 2**32."""
    d = (a - b) & MASK
    return d - 0x100000000 if d >= HALF else d


class Stream:
    """Reassembles one direction and feeds the in-order bytes to `sink` (a Framer)."""

    __slots__ = ("sink", "next_seq", "offset", "waiting", "waiting_bytes", "last_ack", "fin_seq", "closed",
                 "gaps", "gap_bytes", "retransmitted", "stats_gap")

    def __init__(self, sink) -> None:
        self.sink = sink
        self.next_seq: int | None = None  # sequence number of the next byte expected
        self.offset = 0  # stream offset of next_seq (bytes delivered plus bytes declared missing)
        self.waiting: dict[int, tuple] = {}  # seq -> (payload, ts_ns, frame, where, ack, missing, fin)
        self.waiting_bytes = 0
        self.last_ack: int | None = None  # highest ACK the other side sent for this direction
        self.fin_seq: int | None = None
        self.closed = False
        self.gaps = 0
        self.gap_bytes = 0
        self.retransmitted = 0

    def syn(self, seq: int) -> None:
        if self.next_seq is None:
            self.next_seq = (seq + 1) & MASK

    def offset_of(self, seq: int) -> int:
        """Stream offset of sequence number `seq` (for ACK-based pairing)."""
        if self.next_seq is None:
            return 0
        return self.offset + seq_diff(seq, self.next_seq)

    def segment(self, seq: int, payload: bytes, ts_ns: int, frame: int, where: int, ack: int | None,
                missing: int, fin: bool) -> None:
        if self.closed:
            return
        if self.next_seq is None:  # the connection was open before the capture started
            self.next_seq = seq
        rel = seq_diff(seq, self.next_seq)
        if rel == 0:
            self._deliver(payload, ts_ns, frame, where, ack, missing, fin)
            if self.waiting:
                self._drain()
        elif rel < 0:
            self._overlap(-rel, payload, ts_ns, frame, where, ack, missing, fin)
            if self.waiting:
                self._drain()
        else:
            old = self.waiting.get(seq)
            if old is None or len(old[0]) + old[5] < len(payload) + missing:
                self.waiting[seq] = (payload, ts_ns, frame, where, ack, missing, fin)
                self.waiting_bytes += len(payload) - (len(old[0]) if old else 0)
            else:
                self.retransmitted += len(payload)
            if self.waiting_bytes > MAX_WAITING:
                self.flush(f"more than {MAX_WAITING} bytes waited behind it")
            elif self.last_ack is not None and seq_diff(self.last_ack, seq) > 0:
                self.flush("acknowledged by the other side but not in the capture")

    def acked(self, ack: int) -> None:
        """The other side acknowledged up to `ack`: bytes before it were sent."""
        if self.last_ack is None or seq_diff(ack, self.last_ack) > 0:
            self.last_ack = ack
            if self.waiting and self.next_seq is not None:
                first = min(self.waiting, key=lambda s: seq_diff(s, self.next_seq))
                if seq_diff(ack, first) > 0:
                    self.flush("acknowledged by the other side but not in the capture")

    def flush_acked(self) -> None:
        """Declare the bytes the other side acknowledged but the capture lacks (before pairing)."""
        if self.last_ack is not None and self.next_seq is not None and not self.closed:
            if seq_diff(self.last_ack, self.next_seq) > 0:
                if self.waiting:
                    self.flush("acknowledged by the other side but not in the capture")
                else:
                    self._gap(seq_diff(self.last_ack, self.next_seq), GAP,
                              "acknowledged by the other side but not in the capture")
                    self.next_seq = self.last_ack

    def flush(self, why: str) -> None:
        """Give up waiting for the holes: declare them gaps and deliver what waits behind them."""
        while self.waiting:
            first = min(self.waiting, key=lambda s: seq_diff(s, self.next_seq))
            hole = seq_diff(first, self.next_seq)
            if hole > 0:
                self._gap(hole, GAP, f"{hole} bytes missing ({why})")
                self.next_seq = first
            self._drain()

    def _drain(self) -> None:
        waiting = self.waiting
        while waiting:
            item = waiting.pop(self.next_seq, None)
            if item is not None:
                self.waiting_bytes -= len(item[0])
                self._deliver(*item)
                continue
            # a waiting segment may now overlap what was delivered
            for seq in list(waiting):
                rel = seq_diff(seq, self.next_seq)
                if rel < 0:
                    item = waiting.pop(seq)
                    self.waiting_bytes -= len(item[0])
                    self._overlap(-rel, *item)
                    break
            else:
                return

    def _overlap(self, already: int, payload: bytes, ts_ns: int, frame: int, where: int, ack: int | None,
                 missing: int, fin: bool) -> None:
        """A segment starting `already` bytes before next_seq: keep only its new bytes."""
        if already < len(payload):
            self.retransmitted += already
            self._deliver(payload[already:], ts_ns, frame, where, ack, missing, fin)
        elif already < len(payload) + missing:
            self.retransmitted += len(payload)
            self._deliver(b"", ts_ns, frame, where, ack, missing - (already - len(payload)), fin)
        else:
            self.retransmitted += len(payload)
            if fin and already == len(payload) + missing:
                self._deliver(b"", ts_ns, frame, where, ack, 0, fin)

    def _deliver(self, payload: bytes, ts_ns: int, frame: int, where: int, ack: int | None, missing: int,
                 fin: bool) -> None:
        if payload:
            self.sink.feed(payload, ts_ns, frame, ack, where)
            self.offset += len(payload)
            self.next_seq = (self.next_seq + len(payload)) & MASK
        if missing:
            self._gap(missing, TRUNCATED, f"{missing} bytes cut by the snapshot length (frame {frame})")
            self.next_seq = (self.next_seq + missing) & MASK
        if fin:
            self.fin_seq = self.next_seq
            self.next_seq = (self.next_seq + 1) & MASK
            self.closed = True
            self.sink.close(None)

    def _gap(self, nbytes: int, code: str, detail: str) -> None:
        self.gaps += 1
        self.gap_bytes += nbytes
        self.offset += nbytes
        self.sink.gap(nbytes, code, detail)

    def end(self, code: str, detail: str) -> None:
        """No more segments will come (reset, or the capture ended)."""
        if self.closed:
            return
        if self.waiting and self.next_seq is not None:
            self.flush("the stream ended before they arrived")
        if not self.closed:
            self.closed = True
            self.sink.close(code, detail)
