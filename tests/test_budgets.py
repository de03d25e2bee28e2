"""Budgets (k6 threshold syntax) and the HDR aggregates they are evaluated over."""

from __future__ import annotations

import json
import random

import pytest
from hdrh.histogram import HdrHistogram

from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.report.aggregate import (ALL, HIGHEST_US, OTHER, Aggregate, Histogram, _index, _TEMPLATE,
                                            render_table)
from pytest_replay.schedule.target import Observation
from pytest_replay.verdicts.budgets import ACCEPTED_FORMS, Scope, evaluate, parse_budget, parse_budgets, render_results
from pytest_replay.verdicts.diff import Difference, Verdict

MS = 1_000_000


def pair(target="/api/users/1", *, method="GET", recorded_ms=10.0, replayed_ms=10.0, status=200,
         recorded_status=200, index=0, error=None, late_ms=0.0, recorded=True):
    """An exchange and its observation with the given recorded and replayed latency."""
    request = Request.build(method, target)
    start = 1_000 * MS + index * MS
    response = Response.build(recorded_status) if recorded else None
    exchange = Exchange(index, request, response, start, start + int(recorded_ms * MS) if recorded else None,
                        "c1", index, Source("t.gor", 0, record=index))
    deadline = 5_000 * MS + index * MS
    sent = deadline + int(late_ms * MS)
    if error:
        return exchange, Observation(index, deadline, sent, None, sent + MS, None, error, "boom")
    first = sent + int(replayed_ms * MS)
    return exchange, Observation(index, deadline, sent, first, first + MS, Response.build(status))


def fill(aggregate, pairs, verdict=None):
    for exchange, observation in pairs:
        aggregate.add(exchange, observation, verdict)
    return aggregate


def service(slow_users=False, orders_5xx=0, n=200, seed=7):
    """A synthetic run: users (optionally slowed 2x), products (unchanged), orders (some 500s)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        base = rng.uniform(100, 220)
        pairs.append(pair(f"/api/users/{i}", recorded_ms=base, replayed_ms=base * (2.0 if slow_users else 1.0),
                          index=len(pairs)))
        base = rng.uniform(20, 60)
        pairs.append(pair("/api/products?page=1", recorded_ms=base, replayed_ms=base, index=len(pairs)))
        pairs.append(pair(f"/api/orders/{i}", method="POST", recorded_ms=30, replayed_ms=31,
                          status=500 if i < orders_5xx else 201, recorded_status=201, index=len(pairs)))
    return fill(Aggregate(), pairs)


# -- parsing ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, metric, op, value, relative, scope", [
    ("p95<200ms", "p95", "<", 200 * MS, False, None),
    ("p50<=150us", "p50", "<=", 150_000, False, None),
    ("p90 < 1.5s", "p90", "<", 1.5e9, False, None),
    ("p99>=2 ms", "p99", ">=", 2 * MS, False, None),
    ("max>10ms", "max", ">", 10 * MS, False, None),
    ("mean<20ms", "mean", "<", 20 * MS, False, None),
    ("avg<20", "mean", "<", 20 * MS, False, None),  # k6: a bare number is milliseconds
    ("med<5ms", "p50", "<", 5 * MS, False, None),
    ("p(95)<200", "p95", "<", 200 * MS, False, None),
    ("p99.9<1s", "p99.9", "<", 1e9, False, None),
    ("p95<1.2x", "p95", "<", 1.2, True, None),
    ("GET /api/users/*: p99<300ms", "p99", "<", 300 * MS, False, ("GET", "/api/users/*")),
    ("GET /api/users/{id}: p99<300ms", "p99", "<", 300 * MS, False, ("GET", "/api/users/{id}")),
    ("get /api/users/{id}:p99<300ms", "p99", "<", 300 * MS, False, ("GET", "/api/users/{id}")),
    ("* /api/*: p50<1ms", "p50", "<", MS, False, (None, "/api/*")),
    ("/api/users/*: max<1s", "max", "<", 1e9, False, (None, "/api/users/*")),
    ("/v1/items:batch: p95<1.1x", "p95", "<", 1.1, True, (None, "/v1/items:batch")),
    ("5xx<1%", "5xx", "<", 1.0, False, None),
    ("4xx < 2 %", "4xx", "<", 2.0, False, None),
    ("errors<0.5%", "errors", "<", 0.5, False, None),
    ("errors<0.5", "errors", "<", 0.5, False, None),
    ("5xx<=recorded+0.5%", "5xx", "<=", 0.5, True, None),
    ("5xx<=recorded", "5xx", "<=", 0.0, True, None),
    ("4xx<recorded-1%", "4xx", "<", -1.0, True, None),
    ("POST /api/orders/{id}: 5xx<1%", "5xx", "<", 1.0, False, ("POST", "/api/orders/{id}")),
])
def test_parse_budget_forms(text, metric, op, value, relative, scope):
    budget = parse_budget(text)
    assert (budget.metric, budget.op, budget.relative) == (metric, op, relative)
    assert budget.value == pytest.approx(value)
    assert (None if budget.scope is None else (budget.scope.method, budget.scope.path)) == scope
    assert budget.kind == ("errors" if metric in ("5xx", "4xx", "errors") else "latency")
    assert str(budget) == " ".join(text.split())


@pytest.mark.parametrize("text", [
    "", "p95", "p95<", "<200ms", "p95<200kb", "p95=200ms", "p95<<200ms", "p101<1s", "p100<1s", "p0<1s",
    "5xx<1ms", "p95<1%", "foo<1", "GET api/users: p99<1s", "GET /a b: p99<1s", "5xx<150%", "p95<recorded",
    "errors<recorded*2", "p95<-1ms", "p95<1.2xx",
])
def test_parse_budget_rejects_bad_forms_naming_accepted_ones(text):
    with pytest.raises(ValueError) as info:
        parse_budget(text)
    assert "accepted forms" in str(info.value) and repr(text) in str(info.value)
    assert "p95<200ms" in ACCEPTED_FORMS and "5xx<=recorded+0.5%" in ACCEPTED_FORMS


def test_parse_budgets_skips_blank_lines_and_comments():
    assert [b.text for b in parse_budgets(["p95<200ms", "", "  # a comment", "5xx<1%"])] == ["p95<200ms", "5xx<1%"]


@pytest.mark.parametrize("scope, endpoint, expected", [
    (Scope("GET", "/api/users/*"), "GET /api/users/{id}", True),
    (Scope("GET", "/api/users/*"), "GET /api/users/{id}/orders", True),
    (Scope("GET", "/api/users/*"), "POST /api/users/{id}", False),
    (Scope(None, "/api/users/*"), "POST /api/users/{id}", True),
    (Scope("GET", "/api/users/{id}"), "GET /api/users/{id}", True),
    (Scope("GET", "/api/users/{user_id}"), "GET /api/users/{id}", True),
    (Scope("GET", "/api/users/{id}"), "GET /api/users/{id}/orders", False),
    (Scope("GET", "/api/users/{id}"), "GET /api/users", False),
    (Scope("GET", "/api/user?"), "GET /api/users", True),
    (Scope("GET", "/api/users"), "GET /api/users/{id}", False),
    (Scope(None, "/v1/items:batch"), "POST /v1/items:batch", True),
])
def test_scope_matches_globs_and_templates(scope, endpoint, expected):
    assert scope.matches(endpoint) is expected


# -- latency budgets ----------------------------------------------------------------------------
def test_slowdown_on_one_endpoint_fails_its_scoped_budget_and_names_it():
    aggregate = service(slow_users=True)
    results = {r.budget: r for r in evaluate([
        "GET /api/users/*: p99<300ms", "GET /api/products: p99<300ms", "GET /api/products: p95<1.2x",
        "GET /api/users/{id}: p95<1.2x", "POST /api/orders/{id}: max<50ms", "p99<300ms"], aggregate)}
    users = results["GET /api/users/*: p99<300ms"]
    assert not users.passed and users.reason is None
    assert users.worst[0][0] == "GET /api/users/{id}" and users.endpoints == 1 and users.requests == 200
    line = users.line()
    assert line.startswith("FAIL GET /api/users/*: p99<300ms: 4") and " ms (recorded 2" in line
    assert "; worst: GET /api/users/{id} 4" in line
    assert users.measured.startswith("p99 ") and users.recorded.startswith("p99 ")
    assert results["GET /api/products: p99<300ms"].passed
    assert results["GET /api/products: p95<1.2x"].passed
    assert results["POST /api/orders/{id}: max<50ms"].passed
    relative = results["GET /api/users/{id}: p95<1.2x"]
    assert not relative.passed and "limit " in relative.line() and "(2.00x)" in relative.worst[0][1]
    overall = results["p99<300ms"]  # global: users contribute every slow request
    assert not overall.passed and overall.worst == (users.worst[0],)  # only endpoints over the limit
    (passing,) = evaluate(["p99<1s"], aggregate)  # nothing over the limit: the slowest endpoints
    assert passing.passed and [e for e, _ in passing.worst] == ["GET /api/users/{id}", "GET /api/products",
                                                                "POST /api/orders/{id}"]


def test_unchanged_service_passes_and_line_format():
    aggregate = fill(Aggregate(), [pair("/a", recorded_ms=120.9, replayed_ms=143.2)])
    (result,) = evaluate(["p95<200ms"], aggregate)
    assert result.passed
    assert result.line() == "PASS p95<200ms: 143.2 ms (recorded 120.9 ms)"
    assert result.threshold == "p95 < 200.0 ms"
    data = result.to_dict()
    assert data["measured_ms"] == pytest.approx(143.2, rel=1e-3) and data["limit_ms"] == 200.0
    json.dumps(data)


def test_scoped_budget_line_matches_the_documented_shape():
    pairs = [pair("/api/users/7", recorded_ms=220.1, replayed_ms=412.0, index=0)]
    (result,) = evaluate(["GET /api/users/*: p99<300ms"], fill(Aggregate(), pairs))
    assert result.line() == ("FAIL GET /api/users/*: p99<300ms: 412.0 ms (recorded 220.1 ms); "
                             "worst: GET /api/users/{id} 412.0 ms")


def test_operators_and_mean():
    aggregate = fill(Aggregate(), [pair("/a", replayed_ms=ms, index=i) for i, ms in enumerate((10, 20, 30, 40))])
    outcome = {r.budget: r.passed for r in evaluate(
        ["mean<26ms", "mean<25ms", "mean<=25ms", "p50>19ms", "p50>=21ms", "max<=40ms", "max<40ms", "p99>100ms"],
        aggregate)}
    assert outcome == {"mean<26ms": True, "mean<25ms": False, "mean<=25ms": True, "p50>19ms": True,
                       "p50>=21ms": False, "max<=40ms": True, "max<40ms": False, "p99>100ms": False}


def test_scope_matching_nothing_is_a_failure_not_a_silent_pass():
    (result,) = evaluate(["GET /nothing/*: p99<300ms"], service())
    assert not result.passed and result.reason == "matched no replayed request"
    assert result.line() == "FAIL GET /nothing/*: p99<300ms: matched no replayed request"
    (empty,) = evaluate(["p99<1s"], Aggregate())
    assert not empty.passed and empty.reason == "no replayed requests"


def test_relative_budget_without_recorded_latency_fails_with_the_reason():
    pairs = [pair("/a", recorded=False, replayed_ms=5, index=i) for i in range(5)]
    latency, errors = evaluate(["p95<1.2x", "5xx<=recorded+1%"], fill(Aggregate(), pairs))
    assert not latency.passed and "no recorded latency" in latency.reason and "relative" in latency.reason
    assert not errors.passed and "no recorded responses" in errors.reason
    (absolute,) = evaluate(["p95<1s"], fill(Aggregate(), pairs))
    assert absolute.passed and "no recorded value" in absolute.line()


def test_no_latency_measured_fails():
    pairs = [pair("/a", error="refused", index=i) for i in range(3)]
    (result,) = evaluate(["p95<1s"], fill(Aggregate(), pairs))
    assert not result.passed and "no response latency measured" in result.reason and "3 transport" in result.reason


# -- error budgets ----------------------------------------------------------------------------------
def test_error_budget_fails_when_5xx_fraction_is_above_it():
    aggregate = service(orders_5xx=10)  # 10 of 600 requests: 1.67%
    results = {r.budget: r for r in evaluate(
        ["5xx<1%", "5xx<2%", "POST /api/orders/*: 5xx<1%", "GET /api/users/*: 5xx<1%", "4xx<2%", "errors<0.5%",
         "5xx<=recorded+0.5%", "5xx<=recorded+5%"], aggregate)}
    failed = results["5xx<1%"]
    assert not failed.passed and failed.measured == "5xx 1.67%" and failed.recorded == "5xx 0.00%"
    assert failed.worst[0] == ("POST /api/orders/{id}", "5.00% (10 of 200)")
    assert failed.line() == "FAIL 5xx<1%: 1.67% (recorded 0.00%); worst: POST /api/orders/{id} 5.00% (10 of 200)"
    assert results["5xx<2%"].passed
    assert not results["POST /api/orders/*: 5xx<1%"].passed
    assert results["GET /api/users/*: 5xx<1%"].passed
    assert results["4xx<2%"].passed
    assert not results["errors<0.5%"].passed
    relative = results["5xx<=recorded+0.5%"]
    assert not relative.passed and relative.threshold == "5xx <= recorded+0.5% = 0.50%"
    assert results["5xx<=recorded+5%"].passed


def test_errors_count_transport_failures_and_relative_to_recorded_5xx():
    pairs = [pair("/a", index=i, status=500 if i < 2 else 200, recorded_status=500 if i < 2 else 200)
             for i in range(100)]
    pairs += [pair("/b", index=100, error="timeout")]
    aggregate = fill(Aggregate(), pairs)
    results = {r.budget: r for r in evaluate(["errors<3%", "errors<2.5%", "5xx<=recorded", "5xx<=recorded+0.1%"],
                                             aggregate)}
    assert results["errors<3%"].passed and results["errors<3%"].measured == "errors 2.97%"
    assert not results["errors<2.5%"].passed
    # replayed 2/101 = 1.98% vs recorded 2/100 = 2%: the timeout has no recorded counterpart
    assert results["5xx<=recorded"].passed
    assert results["errors<2.5%"].worst[0][0] == "GET /a"


def test_mocked_and_cancelled_requests_are_not_measured():
    aggregate = Aggregate()
    exchange, observation = pair("/w", method="POST", index=0, status=500)
    aggregate.add(exchange, observation, write="mocked")
    aggregate.add(*pair("/w", method="POST", index=1), write="send")  # the write policy's decision names too
    aggregate.add(*pair("/r", index=2, error="cancelled"))
    aggregate.skip(pair("/w", method="DELETE", index=3)[0], "write-policy", write=True)
    aggregate.skip(pair("/x", index=4)[0], "incomplete")
    overall = aggregate.overall
    assert overall.requests == 1 and overall.status == {"2xx": 1}
    assert dict(overall.writes) == {"mocked": 1, "passed": 1, "skipped": 1}
    assert overall.errors == {"cancelled": 1} and overall.transport_errors == 0
    assert dict(overall.skipped) == {"write-policy": 1, "incomplete": 1}
    assert evaluate(["5xx<1%"], aggregate)[0].passed


def test_verdict_failures_are_counted_by_part():
    aggregate = Aggregate()
    failing = Verdict(False, (Difference("status", "status", "200", "500"), Difference("body", "$.a", "1", "2"),
                              Difference("body", "$.b", "1", "2")), (), "x")
    aggregate.add(*pair("/a", index=0), failing)
    aggregate.add(*pair("/a", index=1), Verdict(True, (), (), "ok"))
    assert (aggregate.overall.judged, aggregate.overall.failed) == (2, 1)
    assert dict(aggregate.overall.failures) == {"status": 1, "body": 1}


# -- histograms and aggregates ------------------------------------------------------------------
def test_bucket_index_is_hdrs():
    rng = random.Random(1)
    values = [0, 1, 2047, 2048, 2049, 4095, 4096, 10**6, HIGHEST_US] + [rng.randrange(HIGHEST_US) for _ in range(3000)]
    for value in values:
        assert _index(value) == _TEMPLATE._counts_index_for(value)


def test_histogram_percentiles_equal_hdrhistogram_and_encoding_is_hdrs():
    rng = random.Random(3)
    values = [int(rng.lognormvariate(9, 1.5)) for _ in range(20000)]
    ours, reference = Histogram(), HdrHistogram(1, HIGHEST_US, 3)
    for value in values:
        ours.record(value)
        reference.record_value(value)
    for q in (1, 50, 90, 95, 99, 99.9):
        assert ours.percentile(q) == reference.get_value_at_percentile(q)
    assert ours.percentile(100) == max(values) and ours.mean == pytest.approx(sum(values) / len(values))
    assert ours.encode() == reference.encode().decode()
    decoded = HdrHistogram.decode(ours.encode())
    assert decoded.get_total_count() == len(values) and decoded.get_value_at_percentile(99) == ours.percentile(99)
    assert Histogram.from_dict(json.loads(json.dumps(ours.to_dict()))) == ours
    assert Histogram().to_dict() is None and Histogram.from_dict(None) == Histogram()


def test_merged_halves_equal_the_single_aggregate_exactly():
    rng = random.Random(11)
    pairs = [pair(f"/api/{rng.choice(['users', 'items', 'carts'])}/{i}", recorded_ms=rng.uniform(1, 400),
                  replayed_ms=rng.lognormvariate(3, 1), late_ms=rng.uniform(-0.1, 3), index=i,
                  status=rng.choice([200, 200, 200, 404, 503])) for i in range(3000)]
    whole = fill(Aggregate(), pairs)
    first = fill(Aggregate(), pairs[::2])
    second = fill(Aggregate(), pairs[1::2])
    # as xdist workers would ship them: through JSON
    shipped = [Aggregate.from_dict(json.loads(json.dumps(a.to_dict()))) for a in (first, second)]
    merged = Aggregate.merged(shipped)
    assert merged == whole
    for endpoint in [None, *whole.endpoints]:
        for metric in ("latency", "recorded", "lateness"):
            for q in (50, 90, 95, 99, 99.9, 100):
                assert merged.percentile(endpoint, metric, q) == whole.percentile(endpoint, metric, q)
    assert merged.table() == whole.table()
    budgets = ["p95<20ms", "GET /api/users/*: p99<1.2x", "5xx<10%", "errors<=recorded+20%"]
    assert evaluate(budgets, merged) == evaluate(budgets, whole)
    # the single run's values are within HDR's precision (0.1%) of the exact ones
    exact = sorted(round(o.latency_ns / 1000) for _, o in pairs)
    p99 = exact[int(0.99 * len(exact) + 0.5) - 1]
    assert whole.percentile(None, "latency", 99) / 1000 == pytest.approx(p99, rel=1e-3)
    assert whole.overall.early > 0


def test_endpoint_cap_folds_the_rest_into_other():
    aggregate = Aggregate(max_endpoints=3)
    names = ["a", "b", "c", "d", "e"]
    fill(aggregate, [pair(f"/{name}", index=i) for i, name in enumerate(names)])
    assert set(aggregate.endpoints) == {"GET /a", "GET /b", "GET /c", OTHER}
    assert aggregate.endpoints[OTHER].requests == 2 and aggregate.folded == 2 and aggregate.overall.requests == 5
    other = fill(Aggregate(max_endpoints=3), [pair("/z", index=9)])
    aggregate.merge(other)
    assert aggregate.endpoints[OTHER].requests == 3 and aggregate.overall.requests == 6


def test_table_rows_and_rendering():
    aggregate = service(orders_5xx=4, n=50)
    rows = aggregate.table()
    assert rows[-1]["endpoint"] == ALL and rows[-1]["requests"] == 150
    orders = next(r for r in rows if r["endpoint"] == "POST /api/orders/{id}")
    assert orders["error_pct"] == 8.0 and orders["replayed_ms"]["p50"] == pytest.approx(31, rel=1e-3)
    assert orders["recorded_ms"]["max"] == pytest.approx(30, rel=1e-3)
    assert set(orders) >= {"requests", "recorded_ms", "replayed_ms", "error_pct", "lateness_ms", "early"}
    lines = render_table(rows)
    assert "p95 rec/rep ms" in lines[0] and lines[-1].lstrip().startswith(ALL)
    assert any("POST /api/orders/{id}" in line and "8.00" in line for line in lines)
    assert "more endpoints" in render_table(rows, limit=1)[-2]
    out = render_results(evaluate(["5xx<1%", "p99<1s"], aggregate))
    assert out[0] == "budgets: 1 passed, 1 failed" and out[1].startswith("  FAIL 5xx<1%")


def test_aggregate_from_other_schema_is_refused():
    data = Aggregate().to_dict()
    data["schema"] = 99
    with pytest.raises(ValueError, match="schema"):
        Aggregate.from_dict(data)


# -- the worst endpoints of a relative budget, and cautions --------------------------------------------
def test_relative_budget_worst_are_offenders_by_ratio():
    pairs = []
    for path, recorded_ms, replayed_ms, n in (("/slow", 200, 100, 4), ("/b", 1, 60, 30), ("/c", 1, 3, 66)):
        for _ in range(n):
            pairs.append(pair(path, recorded_ms=recorded_ms, replayed_ms=replayed_ms, index=len(pairs)))
    result, = evaluate(["p95<1.2x"], fill(Aggregate(), pairs))
    assert not result.passed
    assert [endpoint for endpoint, _ in result.worst] == ["GET /b", "GET /c"]  # by ratio; /slow is 0.5x
    assert result.worst[0][1].endswith("(60.00x)")


def test_cautions_go_on_relative_latency_budgets_only():
    from pytest_replay.capture.summary import closed_loop
    from pytest_replay.verdicts.budgets import shares_cores, with_caveats

    assert shares_cores("http://127.0.0.1:8000", False) == "127.0.0.1"
    assert shares_cores("http://[::1]:8000", False) == "::1"
    assert shares_cores("http://localhost:8000", False) == "localhost"
    assert shares_cores("https://staging.example", False) is None
    assert shares_cores(None, True) == "in-process"
    back_to_back = [Exchange(i, Request.build("GET", "/x"), None, i * 3 * MS, i * 3 * MS + 2 * MS, "c1", i,
                             Source("t.gor", 0)) for i in range(30)]  # 1 ms after the previous response
    assert closed_loop(back_to_back) == {"requests": 30, "of": 30, "connections": 1, "gap_ms": 1.0, "run": 10}
    thinking = [Exchange(i, Request.build("GET", "/x"), None, i * 50 * MS, i * 50 * MS + 2 * MS, "c1", i,
                         Source("t.gor", 0)) for i in range(30)]
    assert closed_loop(thinking) is None
    results = with_caveats(evaluate(["p95<1.2x", "p95<1s", "5xx<=recorded"], service()),
                           {"shared_cores": "in-process", "closed_loop": closed_loop(back_to_back)})
    assert [len(r.caveats) for r in results] == [2, 0, 0]
    assert "CAUTION: the capture is closed-loop (30 of 30 requests" in results[0].line()
    assert results[0].to_dict()["caveats"] == list(results[0].caveats)


# -- what latency budgets judge (issue 16): service latency by default, 'scheduled' from the schedule ----------
def _queued_aggregate():
    from pytest_replay.report.aggregate import Aggregate

    aggregate = Aggregate()
    exchange, _ = pair("/work")
    for i in range(100):  # answered in 20 ms once sent, after up to 2 s queued behind its connection
        deadline = i * 10_000_000
        queued = i * 20_000_000
        sent = deadline + queued
        aggregate.add(exchange, Observation(i, deadline, sent, sent + 20_000_000, sent + 21_000_000,
                                            Response.build(200), lane_wait_ns=queued))
    return aggregate


def test_latency_budgets_judge_the_service_latency_and_say_when_queueing_breaks_them():
    from pytest_replay.verdicts.budgets import evaluate, parse_budget

    aggregate = _queued_aggregate()
    service, scheduled = evaluate(["p99<250ms", "scheduled p99<250ms"], aggregate)
    assert service.passed and service.measured.startswith("p99 20")
    assert "the response time from schedule breaks it (p99 1" in service.line()
    assert not scheduled.passed and float(scheduled.measured.split()[1]) > 1900
    assert parse_budget("scheduled p99<1s").basis == "scheduled" and parse_budget("p99<1s").basis == "service"
    for bad in ("scheduled p99<1.2x", "scheduled 5xx<1%"):
        with pytest.raises(ValueError, match="'scheduled' goes with an absolute latency"):
            parse_budget(bad)
    row = aggregate.table()[-1]
    assert row["replayed_ms"]["p99"] < 25 and row["scheduled_ms"]["p99"] > 1900
