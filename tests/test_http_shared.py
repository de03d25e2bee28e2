"""The HTTP knowledge that lives once in http/ (design.md, "Knowledge in one place"): header walking
with folded lines, chunked detection, the RFC 9110 token, and the places that use them."""

from __future__ import annotations

import pytest

from pytest_replay.http.message import (codings, field_value, head_lines, header_fields,
                                        is_chunked, is_http_token, split_head)
from pytest_replay.http.parser import parse_single
from pytest_replay.policy.correlate import ReplayState, rebuild_request
from pytest_replay.policy.middleware import parse_request
from pytest_replay.policy.redact import Redactor
from pytest_replay.policy.rewrite import Rewrites
from pytest_replay.targets.raw import wire_bytes

FOLDED = (b"POST /p HTTP/1.1\r\nHost: old\r\n  continued\r\nX-Long: a\r\n\tb\r\n  c\r\n"
          b"Content-Length: 3\r\n\r\n")


# -- header walking ---------------------------------------------------------------------------------------
def test_head_lines_keep_each_ending_and_end_with_the_empty_line() -> None:
    assert head_lines(b"GET / HTTP/1.1\r\nA: 1\nB: 2\r\n\r\n") == [
        (b"GET / HTTP/1.1", b"\r\n"), (b"A: 1", b"\n"), (b"B: 2", b"\r\n"), (b"", b"\r\n")]
    assert head_lines(b"GET / HTTP/1.1\r\nA: 1") == [(b"GET / HTTP/1.1", b"\r\n"), (b"A: 1", b""), (b"", b"")]


def test_header_fields_unfold_obs_fold_lines_and_keep_them_with_their_field() -> None:
    fields = header_fields(head_lines(FOLDED)[1:])
    assert [(name, value) for name, value, _ in fields] == [
        (b"Host", b"old continued"), (b"X-Long", b"a b c"), (b"Content-Length", b"3")]
    assert fields[1][2] == [(b"X-Long: a", b"\r\n"), (b"\tb", b"\r\n"), (b"  c", b"\r\n")]
    assert split_head(FOLDED) == tuple((name, value) for name, value, _ in fields)


def test_split_head_bare_lf_and_odd_spacing() -> None:
    assert split_head(b"HTTP/1.1 200 OK\nA :  x \t\nB:y\n z\n\n") == ((b"A", b"x"), (b"B", b"y z"))


def test_field_value_joins_repeated_fields() -> None:
    headers = ((b"Transfer-Encoding", b"gzip"), (b"X", b"1"), (b"transfer-encoding", b"chunked"))
    assert field_value(headers, b"transfer-encoding") == b"gzip, chunked"
    assert field_value(headers, b"absent") is None


def test_editors_keep_or_drop_a_folded_field_whole() -> None:
    request = parse_request(FOLDED + b"abc")
    sent = wire_bytes(request, "new")
    assert sent.startswith(b"POST /p HTTP/1.1\r\nHost: new\r\nX-Long: a\r\n\tb\r\n  c\r\nContent-Length: 3\r\n\r\n")
    rewritten = Rewrites(set_headers=["X-Long: short"]).apply(request)
    assert rewritten.head == (b"POST /p HTTP/1.1\r\nHost: old\r\n  continued\r\nX-Long: short\r\n"
                              b"Content-Length: 3\r\n\r\n")
    redacted = Redactor().message(request)
    assert redacted.head == FOLDED  # nothing secret: every line as it was


# -- chunked detection ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "chunked"), [
    (b"chunked", True), (b"Chunked", True), (b"gzip, chunked", True), (b"gzip,chunked", True),
    ("gzip , CHUNKED ", True), (b"chunked, gzip", False), (b"gzip", False), (b"", False), (None, False)])
def test_is_chunked_only_when_chunked_is_the_last_coding(value, chunked: bool) -> None:
    assert is_chunked(value) is chunked


def test_codings_in_the_order_applied() -> None:
    assert codings(b"gzip, Chunked") == ["gzip", "chunked"] and codings(None) == [] and codings(" , ") == []


def test_a_gzip_chunked_request_is_reframed_by_correlation_and_redaction() -> None:
    wire = (b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"7\r\nold-val\r\n0\r\n\r\n")
    request = parse_request(wire)
    assert request is not None and request.body == b"old-val"
    state = ReplayState()
    state.learn(b"old-val", b"new-value")
    new = state.substitute(request)
    assert new.raw.endswith(b"\r\n\r\n9\r\nnew-value\r\n0\r\n\r\n") and b"Content-Length" not in new.head
    again = rebuild_request(request, request.head, b"x")
    assert parse_single(again.raw, True)[0].body == b"x"
    sent = wire_bytes(request, None)
    assert sent.endswith(b"Transfer-Encoding: gzip, chunked\r\n\r\n7\r\nold-val\r\n0\r\n\r\n")


# -- the RFC 9110 token -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "ok"), [
    ("X-Replay", True), (b"GET", True), ("a!#$%&'*+.^_`|~9", True), ("", False), ("a b", False),
    ("a:b", False), (b"a\n", False), ("é", False), ("\u20ac", False)])
def test_is_http_token(text, ok: bool) -> None:
    assert is_http_token(text) is ok


def test_header_names_are_checked_as_tokens_by_rewrites_and_filters() -> None:
    from pytest_replay.policy.rules import parse_header_filter

    with pytest.raises(ValueError, match="not a header name"):
        Rewrites(set_headers=["X Bad: 1"])
    with pytest.raises(ValueError, match="not a header name"):
        parse_header_filter("X(bad): .*")


# -- content codings --------------------------------------------------------------------------------------
def _encoders():
    import gzip
    import zlib

    import brotli
    import zstandard

    def raw_deflate(data: bytes) -> bytes:
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()

    def zstd_frame(part: bytes) -> bytes:  # as a streaming compressor writes it: no decoded size
        packer = zstandard.ZstdCompressor(write_content_size=False).compressobj()
        return packer.compress(part) + packer.flush()

    def zstd_streamed(data: bytes) -> bytes:  # two such frames
        half = len(data) // 2
        return zstd_frame(data[:half]) + zstd_frame(data[half:])

    return {"gzip": lambda d: gzip.compress(d, mtime=0), "x-gzip": lambda d: gzip.compress(d, mtime=0),
            "deflate": zlib.compress, "raw-deflate": raw_deflate, "br": brotli.compress,
            "zstd": zstandard.ZstdCompressor().compress, "zstd-streamed": zstd_streamed,
            "identity": lambda d: d}


BODY = b'{"access_token": "tok-recorded-1", "items": [1, 2, 3]}'


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "raw-deflate", "br", "zstd", "zstd-streamed",
                                    "identity"])
def test_every_content_coding_is_undone(coding: str) -> None:
    from pytest_replay.http.content import decode, undo

    name = {"raw-deflate": "deflate", "zstd-streamed": "zstd"}.get(coding, coding)
    encoded = _encoders()[coding](BODY)
    assert undo(encoded, name.upper()) == BODY and decode(encoded, name.encode()) == (BODY, None)


@pytest.mark.parametrize("stack", ["gzip, br", "br, zstd", "deflate,gzip", "zstd, identity, deflate"])
def test_stacked_content_codings_are_undone_last_first(stack: str) -> None:
    from pytest_replay.http.content import undo

    encoders = _encoders()
    encoded = BODY
    for coding in codings(stack):
        encoded = encoders[coding](encoded)
    assert undo(encoded, stack) == BODY


def test_unknown_or_damaged_codings_name_the_coding() -> None:
    from pytest_replay.http.content import Undecodable, decode, undo

    with pytest.raises(Undecodable) as unknown:
        undo(b"x", "gzip, compress")
    assert unknown.value.coding == "compress" and "unknown content-encoding 'compress'" in str(unknown.value)
    with pytest.raises(Undecodable) as damaged:
        undo(b"\x28\xb5\x2f\xfd", "zstd")
    assert damaged.value.coding == "zstd"
    body, why = decode(b"not gzip", "gzip")
    assert body == b"not gzip" and why.startswith("undecodable gzip body")
    assert undo(b"", "br") == b"" and undo(b"plain", None) == b"plain"


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, br"])
def test_correlation_finds_a_token_in_a_brotli_or_zstd_body(coding: str) -> None:
    from pytest_replay.http.message import Response
    from pytest_replay.policy.correlate import correlate_json_field

    encoders = _encoders()

    def response(body: bytes) -> Response:
        for name in codings(coding):
            body = encoders[name](body)
        return Response.build(200, "OK", ((b"Content-Encoding", coding.encode()),), body)

    state = ReplayState()
    recorded = response(BODY)
    replayed = response(BODY.replace(b"tok-recorded-1", b"tok-replayed-2"))
    assert correlate_json_field(state, recorded, replayed, "access_token") == (b"tok-recorded-1", b"tok-replayed-2")


@pytest.mark.parametrize("coding", ["br", "zstd", "deflate, zstd"])
def test_redaction_reads_every_content_coding(coding: str) -> None:
    from collections import Counter

    from pytest_replay.http.message import Response

    encoders = _encoders()
    body = b'{"password": "hunter2-secret", "n": 1}'
    for name in codings(coding):
        body = encoders[name](body)
    response = Response.build(200, "OK", ((b"Content-Encoding", coding.encode()),
                                          (b"Content-Length", b"%d" % len(body))), body)
    counts: Counter = Counter()
    out = Redactor().message(response, counts)
    assert b"hunter2" not in out.raw and out.header("content-encoding") is None
    assert counts["body", "content-encoded, rewritten identity-encoded"] == 1


# -- milliseconds -----------------------------------------------------------------------------------------
def test_fmt_ms_keeps_about_four_significant_digits() -> None:
    from pytest_replay.http.units import fmt_ms

    assert [fmt_ms(v) for v in (143.21, 100.0, 99.999, 3.412, 1.0, 0.4123, 0.0)] == [
        "143.2", "100.0", "100.00", "3.41", "1.00", "0.412", "0.000"]
    assert fmt_ms(-20.5) == "-20.50" and fmt_ms(None) == "-" and fmt_ms(None, "?") == "?"


def test_ms_shows_nanoseconds_as_each_caller_wants_them() -> None:
    from pytest_replay.http.units import ms

    assert ms(12_345_678) == "12.3 ms" and ms(None) == "?"  # verdicts, baseline, differential
    assert ms(12_345_678, missing="", unit="") == "12.3" and ms(None, missing="", unit="") == ""  # JUnit
    assert ms(412_345, None, missing="-") == "0.412 ms" and ms(None, None, missing="-") == "-"  # the summary
    assert ms(2_500_000, 3, sign="+") == "+2.500 ms" and ms(-2_500_000, 3, sign="+") == "-2.500 ms"  # clocks
    assert ms(1_234_567, 2) == "1.23 ms"  # progress


def test_ms_number_for_data() -> None:
    from pytest_replay.http.units import US_PER_MS, ms_number

    assert ms_number(1234, US_PER_MS) == 1.234 and ms_number(1_234_567) == 1.235
    assert ms_number(1_234_567, digits=4) == 1.2346 and ms_number(None) is None


# -- tokens by shape ----------------------------------------------------------------------------------------
def test_sub_tokens_replaces_token_runs_with_their_padding_only() -> None:
    from pytest_replay.http.sensitive import is_token, sub_tokens

    text = "sig=a1B2c3D4e5F6g7H8i9== id=troubleshooting2016 uuid=123e4567-e89b-12d3-a456-426614174000"
    assert is_token("a1B2c3D4e5F6g7H8i9") and not is_token("troubleshooting2016")
    shown = sub_tokens(lambda m: "<" + m[0] + ">", text)
    assert shown == text.replace("a1B2c3D4e5F6g7H8i9==", "<a1B2c3D4e5F6g7H8i9==>")
    masked = Redactor().text("see a1B2c3D4e5F6g7H8i9== here")
    assert "a1B2c3D4e5F6g7H8i9" not in masked and masked.endswith(" here")
