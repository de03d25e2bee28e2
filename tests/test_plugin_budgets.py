"""Budgets, evidence, xdist and shards end to end, against the demo service under a real server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import DEMO, pythonpath_env, uvicorn

BUDGETS = ("GET /api/products/{id}: p99<25ms", "GET /health: p99<25ms", "GET /api/users/{id}: p99<25ms")


def _served(regression: str):
    """The demo service under uvicorn, with the regressions `regression` names (DEMO_REGRESSION)."""
    return uvicorn("pytest_replay.demo.app:app", env=pythonpath_env(DEMO_REGRESSION=regression))


@pytest.fixture
def slow_server():
    """The demo service under uvicorn with 50 ms added to GET /api/products/{id}."""
    with _served("slow") as url:
        yield url


@pytest.fixture
def buggy_server():
    """The demo service under uvicorn answering 500 for GET /api/orders/1001."""
    with _served("bug") as url:
        yield url


def replay(pytester: pytest.Pytester, url: str, *args: str):
    budgets = [arg for budget in BUDGETS for arg in ("--replay-budget", budget)]
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(DEMO), "--replay-target", url,
                                         "--speed", "0", "--replay-writes", "pass", "-q", *budgets, *args,
                                         timeout=300)


def _check_slow_endpoint_named(text: str) -> None:
    assert "FAIL GET /api/products/{id}: p99<25ms" in text
    assert "worst: GET /api/products/{id}" in text
    assert "PASS GET /health: p99<25ms" in text
    assert "PASS GET /api/users/{id}: p99<25ms" in text


def test_slowdown_fails_the_scoped_budget_only(pytester: pytest.Pytester, slow_server: str) -> None:
    result = replay(pytester, slow_server, f"--junitxml={pytester.path / 'junit.xml'}")
    _check_slow_endpoint_named(result.stdout.str())
    assert result.ret == 1  # every exchange passed: the budget alone fails the run
    assert "259 passed" in result.stdout.str() or result.parseoutcomes()["passed"] >= 259
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="GET /api/products/{id}: p99&lt;25ms"' in junit and "<failure" in junit


def test_slowdown_with_two_workers(pytester: pytest.Pytester, slow_server: str) -> None:
    result = replay(pytester, slow_server, "-n", "2", "-vv")  # -q -vv: one line per item
    text = result.stdout.str()
    _check_slow_endpoint_named(text)
    assert result.ret == 1
    # one captured connection never spans workers: group the items by their lane via the capture
    from pytest_replay.capture import load

    lane = {e.index: e.connection for e in load(str(DEMO))[0]}
    worker_of_lane: dict[str, str] = {}
    for line in result.stdout.lines:
        if line.startswith("[gw") and "#" in line and "demo.pcap::" in line:
            worker = line[1:4]
            index = int(line.rsplit("#", 1)[1].split()[0])
            assert worker_of_lane.setdefault(lane[index], worker) == worker, line
    assert len(set(worker_of_lane.values())) == 2


def test_two_shards_merged(pytester: pytest.Pytester, slow_server: str) -> None:
    reports = []
    for k in (1, 2):
        directory = pytester.path / f"shard{k}"
        result = replay(pytester, slow_server, "--replay-shard", f"{k}/2", "--replay-report", str(directory))
        assert result.ret in (0, 1)
        reports.append(directory / f"replay-evidence-shard-{k}-of-2.json")
        assert reports[-1].exists()
    shards = [json.loads(r.read_text()) for r in reports]
    assert sum(s["totals"]["requests"] for s in shards) == 259
    merged = subprocess.run([sys.executable, "-m", "pytest_replay", "merge", *map(str, reports)],
                            capture_output=True, text=True, timeout=60)
    _check_slow_endpoint_named(merged.stdout)
    assert merged.returncode == 1


def test_error_budget(pytester: pytest.Pytester, buggy_server: str) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(DEMO), "--replay-target",
                                           buggy_server, "--speed", "0", "--replay-writes", "pass", "-q",
                                           "--replay-budget", "5xx<0.1%", "--replay-budget",
                                           "GET /api/orders/{id}: 5xx<5%", "--replay-budget",
                                           "GET /api/products/{id}: 5xx<=recorded+0.5%", timeout=300)
    text = result.stdout.str()
    assert "FAIL 5xx<0.1%: 0.39%" in text  # 1 of 259
    assert "FAIL GET /api/orders/{id}: 5xx<5%: 7.69%" in text  # 1 of 13
    assert "PASS GET /api/products/{id}: 5xx<=recorded+0.5%" in text


def test_evidence_package(pytester: pytest.Pytester, slow_server: str) -> None:
    directory = pytester.path / "evidence"
    replay(pytester, slow_server, "--replay-report", str(directory))
    data = json.loads((directory / "replay-evidence.json").read_text())
    assert data["schema"] == "pytest-replay-evidence/2"
    assert data["captures"]["files"][0]["sha256"]
    assert data["totals"]["requests"] == 259
    assert {b["budget"] for b in data["budgets"]} == set(BUDGETS)
    assert data["write_policy"]["passed"] == 64
    text = (directory / "replay-evidence.json").read_text()
    assert "Bearer " not in text and "session=" not in text  # no credentials in the evidence


def _merge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_replay", "merge", *args], capture_output=True, text=True,
                          timeout=60)


def test_merge_of_shards_with_failed_exchanges_fails_the_gate(pytester: pytest.Pytester, buggy_server: str) -> None:
    """Issue 11, finding 3: the merge of two shards, one with failed exchanges, exited 0 and said nothing."""
    reports = []
    outcomes = []
    for k in (1, 2):
        directory = pytester.path / "evidence"
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(DEMO), "--replay-target",
                                               buggy_server, "--speed", "0", "--replay-writes", "pass", "-q",
                                               "--replay-shard", f"{k}/2", "--replay-report", str(directory),
                                               timeout=300)
        outcomes.append(result.parseoutcomes())
        reports.append(directory / f"replay-evidence-shard-{k}-of-2.json")
    failed = sum(o.get("failed", 0) for o in outcomes)
    assert failed > 0
    merged = _merge(*map(str, reports), "--report", str(pytester.path / "merged"))
    assert merged.returncode == 1, merged.stdout + merged.stderr
    out = merged.stdout
    for k, o in zip((1, 2), outcomes):
        assert f"shard {k} of 2: {o.get('passed', 0)} passed, {o.get('failed', 0)} failed" in out
    assert f"FAILED: {failed} failed" in out.splitlines()[-1]
    data = json.loads((pytester.path / "merged" / "replay-evidence.json").read_text())
    assert data["run"]["outcomes"]["failed"] == failed
    assert data["run"]["verdict"]["exit_code"] == 1 and not data["run"]["verdict"]["passed"]
    assert [s["outcomes"].get("failed", 0) for s in data["run"]["merged_from"]] == [o.get("failed", 0)
                                                                                   for o in outcomes]
    # only one shard: the merge is incomplete (2), whatever it holds
    incomplete = _merge(str(reports[0]))
    assert incomplete.returncode == 2 and "INCOMPLETE" in incomplete.stdout
    # bad input is a usage error (4), said in one line: the same shard twice, an older schema
    again = _merge(str(reports[0]), str(reports[0]))
    assert again.returncode == 4 and "given once" in again.stderr
    old = json.loads(reports[1].read_text())
    old["schema"] = "pytest-replay-evidence/1"
    older = pytester.path / "old.json"
    older.write_text(json.dumps(old))
    refused = _merge(str(reports[0]), str(older))
    assert refused.returncode == 4 and "schema" in refused.stderr
