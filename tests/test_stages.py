"""Capacity runs: the stage grammar and the stage plan (schedule/stages.py)."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from pytest_replay.schedule.stages import (FIXED, RATE, SPEED, Stage, loop_stages, parse_stages, period_ns,
                                           stage_plan)


def test_grammar_accepts_the_documented_forms():
    stages = parse_stages("1x:60s, 2x:60s, ramp 2x..5x:120s, 5x:1m")
    assert [(s.kind, s.start, s.end, s.duration_ns) for s in stages] == [
        (SPEED, 1, 1, 60e9), (SPEED, 2, 2, 60e9), (SPEED, 2, 5, 120e9), (SPEED, 5, 5, 60e9)]
    stages = parse_stages("500/s:30s, ramp 500/s..4000/s:60s, fixed 500/s:500ms, fixed ramp 1/s..2/s:2")
    assert [(s.kind, s.start, s.end, s.duration_ns) for s in stages] == [
        (RATE, 500, 500, 30e9), (RATE, 500, 4000, 60e9), (FIXED, 500, 500, 5e8), (FIXED, 1, 2, 2e9)]
    assert stages[1].label == "ramp 500/s..4000/s" and stages[2].label == "fixed 500/s"


@pytest.mark.parametrize("text", ["", "2x", "2:10s", "ramp 2x..5/s:10s", "fixed 2x:10s", "0x:10s", "1x:0s",
                                  "ramp 1x:10s", "1x:10 parsecs", "1x:10s,, banana"])
def test_grammar_refuses_malformed_stages_naming_the_accepted_forms(text):
    with pytest.raises(ValueError, match="accepted forms"):
        parse_stages(text)


def jittered(n, gap_ns, seed):
    rnd = random.Random(seed)
    return [i * gap_ns + rnd.randrange(gap_ns // 2) for i in range(n)]


def test_speed_stages_scale_the_recorded_timing_and_loop_without_a_burst():
    ts = [0, 100, 300, 400]  # ms-ish units in ns; period = 400 * 4/3
    plan = stage_plan([t * 1_000_000 for t in ts], parse_stages("1x:1s, 2x:1s"))
    assert plan.period_ns == round(400e6 * 4 / 3)
    offsets = [s.offset_ns for s in plan.sends]
    assert offsets[:4] == [0, 100e6, 300e6, 400e6]
    assert offsets[4] == plan.period_ns  # the next loop starts one mean gap later
    assert plan.loops > 1 and all(b >= a for a, b in zip(offsets, offsets[1:]))
    assert {s.stage for s in plan.sends} == {0, 1}
    # the second stage (2x) sends twice as many requests per second as the first
    first, second = plan.planned()
    assert second == pytest.approx(2 * first, abs=2)


def test_fixed_stage_spaces_evenly_and_a_rate_stage_keeps_the_bursts():
    ts = [0, 1_000_000, 2_000_000, 500_000_000, 501_000_000]  # two bursts
    plan = stage_plan(ts, parse_stages("fixed 10/s:1s"))
    assert [s.offset_ns for s in plan.sends] == [round(i * 1e8) for i in range(10)]
    plan = stage_plan(ts, parse_stages("100/s:1s"))
    gaps = [b.offset_ns - a.offset_ns for a, b in zip(plan.sends, plan.sends[1:])]
    assert min(gaps) < max(gaps) / 50  # bursts kept, scaled
    assert len(plan.sends) == pytest.approx(100, abs=3)


def test_loop_stage_replays_the_capture_n_times():
    ts = jittered(50, 10_000_000, 1)
    assert len(stage_plan(ts, loop_stages(ts, speed=2.0, rate=None, loops=3, duration_s=None)).sends) == 150
    assert len(stage_plan(ts, loop_stages(ts, speed=1.0, rate=25.0, loops=2, duration_s=None)).sends) == 100


stage_st = st.builds(
    lambda kind, a, b, ramp, d: Stage(kind, a, b if ramp else a, d),
    st.sampled_from([SPEED, RATE, FIXED]), st.floats(0.5, 8), st.floats(0.5, 8), st.booleans(),
    st.integers(200_000_000, 3_000_000_000))


def _scale(stage, base):
    if stage.kind == SPEED:
        return stage
    factor = base / 2  # rates comparable to the capture's own
    return Stage(stage.kind, stage.start * factor, stage.end * factor, stage.duration_ns)


@settings(max_examples=60, deadline=None)
@given(st.lists(stage_st, min_size=1, max_size=4), st.integers(20, 200), st.integers(0, 10_000))
def test_deadlines_are_monotone_per_lane_and_boundaries_make_no_burst(raw, n, seed):
    ts = jittered(n, 5_000_000, seed)
    base = n / (period_ns(ts) / 1e9)
    stages = tuple(_scale(s, base) for s in raw)
    plan = stage_plan(ts, stages)
    lanes = {}
    for send in plan.sends:  # lanes: captured connections (here 7 of them, round robin)
        lane = send.position % 7
        assert send.offset_ns >= lanes.get(lane, -1)
        lanes[lane] = send.offset_ns
    if any(s.kind == FIXED for s in stages):
        return
    # recorded timing only: each replayed gap is at least the recorded gap over the fastest speed
    fastest = max(max(s.start, s.end) / (base if s.kind == RATE else 1) for s in stages)
    for a, b in zip(plan.sends, plan.sends[1:]):
        recorded = (b.loop * plan.period_ns + ts[b.position]) - (a.loop * plan.period_ns + ts[a.position])
        assert b.offset_ns - a.offset_ns >= recorded / fastest - 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([RATE, FIXED]), st.integers(50, 400), st.integers(50, 400),
                          st.booleans()), min_size=1, max_size=3), st.integers(0, 10_000))
def test_each_stage_mean_rate_is_within_2_percent_of_its_target(raw, seed):
    ts = jittered(400, 4_000_000, seed)  # ~250 req/s, uniform with jitter
    stages = tuple(Stage(kind, a, b if ramp else a, 2_000_000_000) for kind, a, b, ramp in raw)
    plan = stage_plan(ts, stages)
    for index, count in enumerate(plan.planned()):
        target = plan.target_rate(index) * 2
        assert abs(count - target) <= max(0.02 * target, 2), (stages[index], count, target)
