"""Every capture under fixtures/captures/ against the ground truth its generator wrote beside it.

The .expect.json files come from what make_fixtures.py sent or crafted (not from this parser), so
they are an independent oracle: counts, pairing, bodies, timestamps, reasons, skipped streams.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import FIXTURES

from pytest_replay.capture import load

pytestmark = pytest.mark.usefixtures("both_framer_paths")  # fast path and reference path

CASES = sorted(FIXTURES.glob("*/*.expect.json"))


def _body_len(expected: dict, part: str, complete: bool) -> int | None:
    """The body length to compare: the captured bytes when the message is incomplete."""
    captured = expected.get(f"{part}_body_captured")
    if captured is not None:
        return captured
    return expected.get(f"{part}_body") if complete else None


@pytest.mark.parametrize("expect_file", CASES, ids=[str(p.relative_to(FIXTURES)).removesuffix(".expect.json")
                                                    for p in CASES])
def test_fixture_matches_ground_truth(expect_file: Path) -> None:
    truth = json.loads(expect_file.read_text())
    capture = expect_file.with_name(expect_file.name.removesuffix(".expect.json"))
    keylog = [str(expect_file.with_name(truth["keylog"]))] if truth.get("keylog") else None  # TLS fixtures
    exchanges, stats = load(str(capture), keylog=keylog)
    got = [(e.request.method, e.request.target, e.response.status if e.response else None) for e in exchanges]
    want = [(x["method"], x["target"], x["status"]) for x in truth["exchanges"]]
    assert got == want, f"{capture.name}: exchanges differ"
    connections: dict[int, str] = {}
    for exchange, expected in zip(exchanges, truth["exchanges"]):
        where = f"{capture.name} #{exchange.index} {exchange.label}"
        # Same grouping into connections (names differ: ours are addresses, theirs indices).
        assert connections.setdefault(expected["connection"], exchange.connection) == exchange.connection, where
        assert exchange.position == expected["position"], where
        assert exchange.complete == expected["complete"], (where, exchange.reasons)
        assert sorted({flag.code for flag in exchange.flags}) == sorted(expected["reasons"]), (where, exchange.reasons)
        request_len = _body_len(expected, "request", exchange.complete or "request_body_captured" in expected)
        if request_len is not None:
            assert len(exchange.request.body) == request_len, where
        if exchange.response is not None:
            response_len = _body_len(expected, "response", exchange.complete)
            if response_len is not None:
                assert len(exchange.response.body) == response_len, where
            assert list(exchange.response.interim) == expected.get("interim", []), where
        for key, value in (("request_ts_ns", exchange.request_ts_ns), ("response_ts_ns", exchange.response_ts_ns)):
            if key in expected:
                assert value == expected[key], (where, key)
        if "request_trailers" in expected:
            assert [name.decode() for name, _ in exchange.request.trailers] == expected["request_trailers"], where
    assert len(set(connections.values())) == len(connections), "two expected connections merged into one"
    assert sum(stats.orphan_responses.values()) == truth["orphan_responses"], dict(stats.orphan_responses)
    assert dict(stats.skipped_streams) == truth["skipped_streams"]
    if truth.get("file_truncated"):
        assert stats.warning_counts["truncated-file"] >= 1
    if "unknown_linktype" in truth:
        assert stats.not_decoded[f"unknown link type {truth['unknown_linktype']}"] > 0
