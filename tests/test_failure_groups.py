"""Failures grouped by diff signature, ignored differences counted per reason, and learned noise
with what it hid: in the aggregate (merged across workers and shards), the terminal and the evidence
(issue 11, findings 2, 5 and 6)."""

from __future__ import annotations

import json

from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.report import failures
from pytest_replay.report.aggregate import Aggregate
from pytest_replay.report.evidence import build_evidence, merge_evidence
from pytest_replay.report.failures import FailureGroups
from pytest_replay.report.run import RunReport, RunResults, render_terminal
from pytest_replay.schedule.target import Observation
from pytest_replay.verdicts.diff import DiffConfig, compare, learn_noise, render_failure
from pytest_replay.policy.redact import Redactor

MS = 1_000_000
JSON = ((b"Content-Type", b"application/json"),)


def pair(target: str, index: int, body: dict, status: int = 200):
    request = Request.build("GET", target)
    start = 1_700_000_000 * 10**9 + index * 10 * MS
    recorded = Response.build(200, "OK", JSON, json.dumps(body).encode())
    exchange = Exchange(index, request, recorded, start, start + MS, "c", index, Source("t.gor", index, record=index))
    return exchange, Observation(index, index * MS, index * MS, index * MS + MS, index * MS + 2 * MS,
                                 Response.build(status, "OK", JSON, json.dumps(body).encode()))


def judged(aggregate: Aggregate, exchange, observation, replayed_body: dict, config=DiffConfig(), status=200):
    replayed = Response.build(status, "OK", JSON, json.dumps(replayed_body).encode())
    verdict = compare(exchange.response, replayed, config, exchange=exchange)
    text = "" if verdict.passed else render_failure(exchange, verdict, recorded_latency_ns=MS, replayed_latency_ns=MS,
                                                    replayed_status=status, redactor=config.redactor)
    aggregate.add(exchange, observation, verdict, shown=text)
    return verdict


def regression_run(indexes, config=DiffConfig()) -> Aggregate:
    """Rows whose column 3 changed, an api key that changed, and a status of another endpoint."""
    aggregate = Aggregate()
    for i in indexes:
        body = {"rows": [[i, "a", 2.5, i * 10], [i + 1, "b", 2.5, 1]], "api_key": f"sk_live_{i:04d}x",
                "generated_at": i}
        exchange, observation = pair(f"/api/rows/{i}", i, body)
        judged(aggregate, exchange, observation, {**body, "rows": [[i, "a", 2.5, i * 10 + 1], [i + 1, "b", 2.5, 2]],
                                                  "api_key": f"sk_live_{i:04d}y", "generated_at": i + 1}, config)
        if i % 10 == 0:
            exchange, observation = pair(f"/api/orders/{i}", 10_000 + i, {"ok": True})
            judged(aggregate, exchange, observation, {"ok": True}, config, status=500)
    return aggregate


def test_failures_are_grouped_by_signature_with_the_first_examples():
    aggregate = regression_run(range(1, 41))
    groups = aggregate.failure_groups
    assert groups.most_common() == [("GET /api/rows/{id} body $.api_key string changed", 40),
                                    ("GET /api/rows/{id} body $.generated_at number changed", 40),
                                    ("GET /api/rows/{id} body $.rows[*][3] number changed", 40),
                                    ("GET /api/orders/{id} status 200 -> 500", 4)]
    kept = groups.examples["GET /api/rows/{id} body $.rows[*][3] number changed"]
    assert [index for index, _ in kept] == [1, 2, 3]  # the first failing exchanges of the capture
    assert kept[0][1][0].startswith("GET /api/rows/1 HTTP/1.1")
    assert any("$.rows[0][3]: 10 -> 11" in line for line in kept[0][1])
    assert not any("sk_live" in line for _, lines in kept for line in lines)  # masked as in the terminal


def test_groups_merge_exactly_across_workers_and_through_json():
    whole = regression_run(range(1, 41))
    halves = [regression_run(range(1, 41, 2)), regression_run(range(2, 41, 2))]
    shipped = [Aggregate.from_dict(json.loads(json.dumps(a.to_dict()))) for a in reversed(halves)]
    merged = Aggregate.merged(shipped)
    assert merged.failure_groups == whole.failure_groups
    assert merged.overall.ignored == whole.overall.ignored
    assert merged == whole


def test_groups_are_bounded(monkeypatch):
    aggregate = regression_run(range(1, 11))  # three signatures of 10 exchanges, one of 1
    monkeypatch.setattr(failures, "MAX_SIGNATURES", 2)
    groups = FailureGroups().merge(aggregate.failure_groups)
    assert len(groups.counts) == 3 and groups.counts[failures.OTHER] == 10 + 1
    assert failures.OTHER not in groups.examples
    section = aggregate.failure_groups.section(failed=11, shown=4)
    assert section["examples_shown"] == 4 and [len(g["examples"]) for g in section["groups"]] == [3, 1, 0, 0]
    assert section["groups"][0]["omitted"] == 10 - 3
    assert section["examples_omitted"] == sum(g["exchanges"] for g in section["groups"]) - 4


def test_ignored_differences_are_counted_per_rule_and_reach_the_evidence(tmp_path):
    config = DiffConfig(rules=("json:$.generated_at", "GET /api/rows/{id}: json:$.api_key"))
    aggregate = regression_run(range(1, 11), config)
    assert aggregate.overall.ignored == {"rule json:$.generated_at": 10, "rule GET /api/rows/{id}: json:$.api_key": 10}
    data = build_evidence(aggregate=aggregate)
    assert data["diff"]["ignored"] == {"rule json:$.generated_at": 10, "rule GET /api/rows/{id}: json:$.api_key": 10}
    assert data["endpoints"][0]["ignored"]["rule json:$.generated_at"] == 10


def test_evidence_failures_section_and_a_merge_of_shards(tmp_path):
    capture = tmp_path / "c.gor"
    capture.write_bytes(b"x")
    shards = [build_evidence(aggregate=regression_run(indexes), captures=[capture], shard=(k, 2))
              for k, indexes in ((1, range(1, 41, 2)), (2, range(2, 41, 2)))]
    for data in shards:
        json.dumps(data, allow_nan=False)
    merged, _ = merge_evidence([("a.json", shards[0]), ("b.json", shards[1])])
    section = merged["failures"]
    assert section["failed"] == 44 and section["signatures"] == 4
    column = next(g for g in section["groups"] if g["signature"].endswith("$.rows[*][3] number changed"))
    assert column["exchanges"] == 40 and [e["index"] for e in column["examples"]] == [1, 2, 3]
    assert column["omitted"] == 37 and "$.rows[0][3]: 10 -> 11" in "\n".join(column["examples"][0]["diff"])


def test_noise_summary_says_what_each_rule_hid_in_the_terminal_and_the_evidence():
    capture = [pair("/api/search?q=x", i, {"total": 3, "request_id": f"r{i}"})[0] for i in range(3)]
    model = learn_noise(capture)
    config = DiffConfig(noise=model)
    aggregate = Aggregate()
    for i in range(3):
        exchange, observation = pair("/api/search?q=x", i, {"total": 3, "request_id": f"r{i}"})
        judged(aggregate, exchange, observation, {"total": 3, "request_id": "new"}, config)
    results = RunResults(aggregate=aggregate, planned=3, sent=3, noise=model.summary())
    results = RunResults.from_dict(json.loads(json.dumps(results.to_dict())))  # as a worker ships it
    report = RunReport.build(RunResults().merge(results), captures={}, target="t", pace="speed 0", budgets=[])
    lines = render_terminal(report)
    assert any("GET /api/search: json:$.request_id hid 3 differences" in line for line in lines), lines
    data = build_evidence(aggregate=aggregate, noise=model.summary())
    assert data["diff"]["noise"]["rules"] == [{"rule": "GET /api/search: json:$.request_id",
                                              "learned": "differed in 1 of 1 groups, 3 responses", "hid": 3}]


def test_terminal_groups_thousands_of_failures_into_their_causes():
    aggregate = regression_run(range(1, 41))
    report = RunReport.build(RunResults(aggregate=aggregate, planned=44, sent=44), captures={}, target="t",
                             pace="speed 0", budgets=[])
    lines = render_terminal(report)
    start = next(i for i, line in enumerate(lines) if line.startswith("failures by cause"))
    assert lines[start + 1:start + 5] == ["  40 exchanges: GET /api/rows/{id} body $.api_key string changed",
                                          "  40 exchanges: GET /api/rows/{id} body $.generated_at number changed",
                                          "  40 exchanges: GET /api/rows/{id} body $.rows[*][3] number changed",
                                          "  4 exchanges: GET /api/orders/{id} status 200 -> 500"]
    groups = FailureGroups()
    groups.counts.update({f"GET /x{i} status 200 -> 500": 1301 for i in range(12)})
    aggregate.failure_groups = groups
    report = RunReport.build(RunResults(aggregate=aggregate, planned=1, sent=1), captures={}, target="t",
                             pace="speed 0", budgets=[])
    lines = render_terminal(report)
    assert "  1,301 exchanges: GET /x0 status 200 -> 500" in lines
    assert "  ... 2 more causes, 2,602 exchanges (-v shows them)" in lines


def test_examples_are_masked_with_the_runs_redactor():
    redactor = Redactor(key=b"k" * 32)
    aggregate = regression_run(range(1, 3), DiffConfig(redactor=redactor))
    [(index, lines), *_] = aggregate.failure_groups.examples["GET /api/rows/{id} body $.api_key string changed"]
    masked = [line for line in lines if "$.api_key" in line][0]
    assert "REDACTED-" in masked and "sk_live" not in masked
