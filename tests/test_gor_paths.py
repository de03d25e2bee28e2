"""The .gor reader's fast path agrees with its reference path (GorReader(fast=True/False)).

The fast path (GorReader._read_fast) inlines the common cases of the reference's methods; these tests
read random files both ways and compare everything a reader produces: the drafts (requests, responses,
timestamps, connections, positions, sources, flags, replayed responses) in the order they leave, the
warnings and the counts. The random files mix requests, original and replayed responses, repeated
ids of the three id shapes, out-of-order timestamps and records, unparsable and LF-only messages,
and are then cut at a random point or have a separator damaged.
"""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_replay.capture.gor import SEPARATOR, GorReader
from pytest_replay.reassembly.stats import CaptureError, CaptureStats

T0 = 1_700_000_000_000_000_000

REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n",
    b"POST /items HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /lf HTTP/1.1\nHost: a\n\n",  # bare LF: the general parser only
    b"HEAD /h HTTP/1.0\r\n\r\n",
    b"GET /short HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",  # truncated body
    b"GET /extra HTTP/1.1\r\n\r\ntrailing",  # bytes after the message
    b"not http at all",
    b"GET /folded HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n",
]
RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"HTTP/1.1 500 Oops\r\nContent-Length: 9\r\n\r\nshort",  # truncated
    b"HTTP/1.0 200 OK\r\n\r\nclose-delimited body",
    b"HTTP/1.1 404 Not Found\nContent-Length: 0\n\n",  # bare LF
    b"garbage response",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
]
ID_SHAPES = st.sampled_from(["24", "40", "short"])


@st.composite
def records(draw) -> list[bytes]:
    """Random records: a few connections and ids, so that pairing, FIFO repeats and early responses occur."""
    n = draw(st.integers(0, 40))
    ids = []
    for i in range(draw(st.integers(1, 6))):
        shape = draw(ID_SHAPES)
        conn = draw(st.integers(0, 3))
        if shape == "24":
            ids.append(f"{conn:016x}{draw(st.integers(0, 5)):08x}")
        elif shape == "40":
            ids.append(f"{i:040x}")
        else:
            ids.append(f"r{i}")
    out = []
    ts = T0
    requested: dict[str, int] = {}  # id -> timestamp of its last request
    for _ in range(n):
        kind = draw(st.sampled_from([1, 1, 2, 2, 3]))
        rid = draw(st.sampled_from(ids))
        ts += draw(st.integers(-2_000_000, 5_000_000))  # out of order now and then
        stamp = ts
        if kind == 1:
            requested[rid] = ts
        elif rid in requested and draw(st.booleans()):
            stamp = requested[rid]  # stamped with its request's time (old GoReplay): the latency field counts
        latency = draw(st.sampled_from([None, 0, -1, 1234]))
        payload = draw(st.sampled_from(REQUESTS if kind == 1 else RESPONSES))
        header = f"{kind} {rid} {stamp}" + (f" {latency}" if latency is not None else "")
        out.append(header.encode() + b"\n" + payload)
    return out


@st.composite
def gor_files(draw) -> bytes:
    data = SEPARATOR.join(draw(records()))
    data += SEPARATOR if draw(st.booleans()) else b""
    damage = draw(st.sampled_from(["none", "cut", "separator", "byte"]))
    if damage == "cut" and data:
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "separator" and SEPARATOR in data:
        at = data.index(SEPARATOR, draw(st.integers(0, max(0, data.rfind(SEPARATOR)))))
        data = data[:at + 3] + b"X" + data[at + 4:]  # one byte of the emoji changed: two records run together
    elif damage == "byte" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    return data


def read_with(data: bytes, fast: bool, max_record_size: int = 1 << 20, chunk: int | None = None):
    """Everything the reader produced: the drafts as plain values, in order, and the stats."""
    from pytest_replay.capture import gor

    stats = CaptureStats()
    reader = GorReader("f.gor", stats, max_record_size, fast=fast)
    out, error = [], None
    saved = gor.CHUNK
    if chunk is not None:
        gor.CHUNK = chunk
    try:
        for batch in reader.read(io.BytesIO(data)):
            out.append([_values(draft) for draft in batch])
    except CaptureError as exc:
        error = str(exc)
    finally:
        gor.CHUNK = saved
    info: dict = {}
    reader.finish_notes(info)
    return out, error, info, _stats(stats)


def _values(draft) -> tuple:
    return (draft.request, draft.response, draft.ts, draft.resp_ts, draft.connection, draft.position, draft.file,
            draft.offset, draft.record, draft.frames, draft.flags, draft.replayed, draft.interim)


def _stats(stats: CaptureStats) -> dict:
    return {"warnings": list(stats.warnings), "records": dict(stats.records), "bytes": stats.bytes,
            "orphans": dict(stats.orphan_responses), "notes": list(stats.notes), "lf_only": stats.lf_only,
            "first": stats.first_ts_ns, "last": stats.last_ts_ns}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gor_files())
def test_fast_and_reference_paths_agree(data: bytes) -> None:
    assert read_with(data, True) == read_with(data, False)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gor_files(), st.integers(16, 400))
def test_paths_agree_across_small_read_blocks_and_limits(data: bytes, chunk: int) -> None:
    """Blocks of a few bytes (separators cut between blocks) and a record limit some records exceed."""
    fast = read_with(data, True, max_record_size=120, chunk=chunk)
    assert fast == read_with(data, False, max_record_size=120, chunk=chunk)


def test_paths_agree_past_the_reorder_window() -> None:
    """Enough records that drafts leave before the end (the release loop, not only the final drain),
    with responses before their requests and requests that never get one."""
    recs = []
    for i in range(3000):
        rid = f"{i % 7:016x}{i:08x}"
        req = f"1 {rid} {T0 + i * 1000 - (i % 5) * 3000} 0\n".encode() + REQUESTS[i % 3]
        resp = f"2 {rid} {T0 + i * 1000 + 500} 10\n".encode() + RESPONSES[i % 3]
        if i % 11 == 0:
            recs += [resp, req]  # the response first
        elif i % 13 == 0:
            recs.append(req)  # no response
        else:
            recs += [req, resp]
    data = SEPARATOR.join(recs) + SEPARATOR
    fast = read_with(data, True)
    assert len(fast[0]) > 1  # released in several batches
    assert sum(map(len, fast[0])) == 3000
    assert fast == read_with(data, False, chunk=None)


def test_the_reference_path_does_not_use_the_fast_parser(monkeypatch) -> None:
    """GorReader(fast=False) frames every message with the general parser: fast_message is not called,
    so the agreement tests above compare two independent paths."""
    from pytest_replay.capture import gor

    def refuse(*args, **kwargs):
        raise AssertionError("fast_message called on the reference path")

    monkeypatch.setattr(gor, "fast_message", refuse)
    data = SEPARATOR.join([b"1 " + b"a" * 24 + b" 1 0\n" + REQUESTS[0], b"2 " + b"a" * 24 + b" 2 0\n" + RESPONSES[0]])
    drafts, error, _, _ = read_with(data + SEPARATOR, False)
    assert error is None and drafts[0][0][1].status == 200


def test_paths_agree_on_a_long_requests_only_file() -> None:
    """Without any response record, drafts leave as soon as the reorder window passed them."""
    recs = [f"1 {i % 9:016x}{i:08x} {T0 + i * 1000 - (i % 4) * 2500} 0\n".encode() + REQUESTS[i % 3]
            for i in range(2500)]
    data = SEPARATOR.join(recs) + SEPARATOR
    fast = read_with(data, True, chunk=4096)
    assert len(fast[0]) > 10  # released along the way, not only at the end
    assert fast == read_with(data, False, chunk=4096)
