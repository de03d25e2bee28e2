"""Capacity runs split over processes (issue 16.5): CI shards run each rate stage at their share of the
rate and stop on their own, `merge` reports each shard's stop; under xdist a stop on one worker stops
all, through xdist's channels. Against a real uvicorn app where the connections of one part of the
split are slow (so exactly one shard or worker trips)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pytest_replay.distribute import partition, worker_part
from pytest_replay.report.merge import main as merge_main
from tests.test_plugin_capacity import APP, SEP, T0

SLOW_APP = APP.replace('''    if scope["path"] == "/work":''', '''    if scope["path"] == "/slow":
        import asyncio
        await asyncio.sleep(0.4)
    if scope["path"] == "/work":''')
STAGES = "fixed 20/s:4s"  # the whole run: 80 requests
ABORT = ("--replay-abort-on", "p99>200ms", "--replay-abort-window", "1")


def split_capture(path: Path, part_of, n: int = 40) -> Path:
    """n connections of one exchange each, 50 ms apart; those of part 0 ask for /slow, the others /fast."""
    records = []
    for i in range(n):
        ts = T0 + i * 50_000_000
        rid = f"{i + 1:016x}{0:08x}"
        path_ = "/slow" if part_of(f"gor:{i + 1:016x}") == 0 else "/fast"
        records.append(f"1 {rid} {ts} -1\n".encode()
                       + f"GET {path_} HTTP/1.1\r\nHost: shop.example.test\r\n\r\n".encode() + SEP)
        records.append(f"2 {rid} {ts + 2_000_000} -1\n".encode()
                       + b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok" + SEP)
    path.write_bytes(b"".join(records))
    return path


@pytest.fixture
def slow_app(serve, tmp_path):
    import tests.test_plugin_capacity as capacity

    original = capacity.APP
    capacity.APP = SLOW_APP  # the fixture writes the module's APP
    try:
        yield serve()
    finally:
        capacity.APP = original


from tests.test_plugin_capacity import serve  # noqa: E402,F401  (the uvicorn fixture)


def replay(pytester: pytest.Pytester, gor: Path, url: str, *args: str, stages: str = STAGES):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(gor), "--replay-target", url,
                                         "--replay-report", str(pytester.path / "evidence"), "--replay-stages",
                                         stages, *ABORT, *args, timeout=300)


def shard_evidence(pytester: pytest.Pytester, k: int) -> dict:
    return json.loads((pytester.path / "evidence" / f"replay-evidence-shard-{k}-of-2.json").read_text())


def test_shards_run_their_share_of_the_rate_and_stop_on_their_own(pytester: pytest.Pytester, slow_app) -> None:
    gor = split_capture(pytester.path / "split.gor", lambda lane: partition(lane, 2))
    first = replay(pytester, gor, slow_app, "--replay-shard", "1/2")
    second = replay(pytester, gor, slow_app, "--replay-shard", "2/2")
    text = first.stdout.str()
    assert first.ret == 1, text
    assert ("shard 1 of 2: each rate stage at 0.5 of its rate (its 20 of the capture's 40 exchanges), so the 2 "
            "shards together keep it") in text
    assert "STOPPED: no stage held; at fixed 10/s (stage 1" in text and "'p99>200ms' tripped" in text
    assert second.ret == 0, second.stdout.str()
    one, two = shard_evidence(pytester, 1)["capacity"], shard_evidence(pytester, 2)["capacity"]
    for capacity in (one, two):  # each shard: half the rate, half the requests of the stage
        assert capacity["stages"][0]["target_rate"] == 10 and capacity["stages"][0]["planned"] == 40
        assert capacity["shard"]["count"] == 2
    assert one["stopped"]["condition"] == "p99>200ms" and one["stages"][0]["not_sent"] > 0
    assert two["stopped"] is None and two["stages"][0]["sent"] == 40  # shard 2 did not stop: its own stop only

    out, err = io.StringIO(), io.StringIO()
    files = [str(p) for p in sorted((pytester.path / "evidence").glob("*.json"))]
    code = merge_main([*files, "--report", str(pytester.path / "merged")], out=out, err=err)
    merged_text = out.getvalue()
    assert code == 1, merged_text + err.getvalue()
    assert "shard 1 of 2 STOPPED: 'p99>200ms' tripped at stage 1" in merged_text, merged_text
    assert "shard 2 of 2 STOPPED" not in merged_text
    assert "shard 1 of 2 was stopped by 'p99>200ms' at stage 1" in merged_text.splitlines()[-1]
    merged = json.loads((pytester.path / "merged" / "replay-evidence.json").read_text())
    stage = merged["capacity"]["stages"][0]
    assert stage["pace"] == "fixed 20/s" and stage["target_rate"] == 20 and stage["planned"] == 80
    assert [s["shard"]["index"] for s in merged["capacity"]["shard_stops"]] == [1]
    assert [row["stopped"] is not None for row in merged["run"]["merged_from"]] == [True, False]


def test_a_stop_on_one_xdist_worker_stops_every_worker(pytester: pytest.Pytester, slow_app) -> None:
    """gw0 holds the slow connections and trips; gw1's own requests are fast (it would never trip by
    itself) and stops too, when gw0's trip reaches it through the controller's execnet channels."""
    gor = split_capture(pytester.path / "split.gor", lambda lane: worker_part(lane, 2))
    result = replay(pytester, gor, slow_app, "-n", "2", stages="fixed 20/s:6s")
    text = result.stdout.str()
    assert result.ret == 1, text
    assert "STOPPED on worker gw0: no stage held; at fixed 20/s (stage 1" in text, text
    assert "worker gw1 stopped too: gw0's 'p99>200ms' reached it through xdist's channels" in text
    capacity = json.loads((pytester.path / "evidence" / "replay-evidence.json").read_text())["capacity"]
    stop = capacity["stopped"]
    assert stop["tripped_on"] == "gw0" and stop["worker"] == "gw0" and not stop["relayed"]
    (relayed,) = capacity["other_stops"]
    assert relayed["worker"] == "gw1" and relayed["tripped_on"] == "gw0" and relayed["relayed"]
    assert relayed["condition"] == "p99>200ms" and relayed["stage"] == stop["stage"]
    row = capacity["stages"][0]
    assert row["planned"] == 120 and row["sent"] < 90  # both halves stopped (gw1's alone is 60)
    assert row["not_sent"] == row["planned"] - row["sent"]


# -- shards share a rate by their traffic (issue 16.3) ----------------------------------------------------------
def uneven_capture(path: Path, n: int = 80, gap_ms: int = 25) -> tuple[Path, int]:
    """n exchanges `gap_ms` apart, round robin over four connections: three of shard 1 (partition 0) and
    one of shard 2, so shard 1 holds 3/4 of the traffic. Returns the path and shard 1's exchanges."""
    ids = {0: [], 1: []}
    cid = 1
    while len(ids[0]) < 3 or len(ids[1]) < 1:
        ids[partition(f"gor:{cid:016x}", 2)].append(cid)
        cid += 1
    connections = ids[0][:3] + ids[1][:1]
    records = []
    for i in range(n):
        ts = T0 + i * gap_ms * 1_000_000
        rid = f"{connections[i % 4]:016x}{i:08x}"
        records.append(f"1 {rid} {ts} -1\n".encode() + b"GET /fast HTTP/1.1\r\nHost: shop.example.test\r\n\r\n" + SEP)
        records.append(f"2 {rid} {ts + 2_000_000} -1\n".encode()
                       + b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok" + SEP)
    path.write_bytes(b"".join(records))
    return path, sum(1 for i in range(n) if i % 4 < 3)


def shards(pytester: pytest.Pytester, gor: Path, url: str, *args: str) -> list[dict]:
    out = []
    for k in (1, 2):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(gor), "--replay-target", url,
                                               "--replay-report", str(pytester.path / "evidence"), "--replay-shard",
                                               f"{k}/2", *args, timeout=300)
        assert result.ret == 0, result.stdout.str()
        out.append(shard_evidence(pytester, k))
    return out


def test_shards_share_a_rate_stage_by_their_traffic(pytester: pytest.Pytester, serve) -> None:
    gor, mine = uneven_capture(pytester.path / "uneven.gor")
    assert mine == 60  # of 80: shard 1 holds 3/4 of the traffic, shard 2 1/4
    one, two = (e["capacity"] for e in shards(pytester, gor, serve(), "--replay-stages", "fixed 40/s:3s"))
    assert one["traffic_share"] == {"share": 0.75, "exchanges": 60, "of": 80}
    assert two["traffic_share"] == {"share": 0.25, "exchanges": 20, "of": 80}
    rates = []
    for capacity, share in ((one, 0.75), (two, 0.25)):
        row = capacity["stages"][0]
        assert row["target_rate"] == 40 * share and row["planned"] == 120 * share
        achieved = row["sent_in_stage"] / row["duration_s"]
        assert abs(achieved / (40 * share) - 1) <= 0.15, (share, row)  # a loaded 2-core machine
        rates.append(achieved)
    assert abs(sum(rates) / 40 - 1) <= 0.1, rates


def test_shards_share_rate_by_their_traffic(pytester: pytest.Pytester, serve) -> None:
    """--rate outside stages: each shard at its traffic's share, not each at the full rate (which made
    N shards send N times the rate)."""
    gor, _ = uneven_capture(pytester.path / "uneven.gor")
    one, two = shards(pytester, gor, serve(), "--rate", "40")
    rates = []
    for evidence_, sent, share in ((one, 60, 0.75), (two, 20, 0.25)):
        assert evidence_["run"]["outcomes"].get("passed")
        wall = evidence_["run"]["wall_s"]  # from the replay's start to its last response: (sent - 1) gaps
        achieved = (sent - 1) / wall
        assert abs(achieved / (40 * share) - 1) <= 0.15, (share, wall)
        rates.append(achieved)
    assert abs(sum(rates) / 40 - 1) <= 0.1, rates
