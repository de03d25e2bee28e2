"""The evidence package: structure, atomic writes (also when interrupted), shard merging and the merge
command."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

from pytest_replay.http.message import Exchange, Flag, Request, Response, Source
from pytest_replay.report import evidence as evidence_module
from pytest_replay.report.aggregate import Aggregate
from pytest_replay.report.evidence import (FILENAME, SCHEMA, EvidenceError, build_evidence, merge_evidence,
                                           read_evidence, sha256_file, write_evidence)
from pytest_replay.report.merge import main as merge_main
from pytest_replay.schedule.target import Observation
from pytest_replay.verdicts.budgets import evaluate

MS = 1_000_000


def pair(target, *, index, recorded_ms, replayed_ms, status=200, method="GET"):
    request = Request.build(method, target)
    start = 1_700_000_000 * 10**9 + index * 10 * MS
    exchange = Exchange(index, request, Response.build(200), start, start + int(recorded_ms * MS), "c", index,
                        Source("capture.gor", index * 100, record=index))
    sent = 10**9 + index * 10 * MS
    first = sent + int(replayed_ms * MS)
    return exchange, Observation(index, sent, sent, first, first + MS, Response.build(status))


def requests(n=120):
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(pair(f"/api/users/{i}", index=i, recorded_ms=100 + i % 50, replayed_ms=150 + i % 70))
        elif i % 3 == 1:
            out.append(pair("/api/items?page=2", index=i, recorded_ms=20 + i % 10, replayed_ms=21 + i % 10))
        else:
            out.append(pair(f"/api/orders/{i}", method="POST", index=i, recorded_ms=30, replayed_ms=35,
                            status=500 if i % 30 == 2 else 201))
    return out


@pytest.fixture
def capture(tmp_path):
    path = tmp_path / "capture.gor"
    path.write_bytes(b"1 abc 1700000000000000000 0\nGET / HTTP/1.1\r\n\r\n\n\xf0\x9f\x90\xb5\xf0\x9f\x99\x88\n")
    return path


SUMMARY = {"files": [{"path": "PLACEHOLDER", "format": "gor", "bytes": 60, "records": {"1": 1}}],
           "first_ts_ns": 1_700_000_000 * 10**9, "last_ts_ns": 1_700_000_060 * 10**9, "duration_s": 60.0,
           "exchanges": 122, "complete": 121, "incomplete": 1, "incomplete_by_reason": {"no-response": 1},
           "requests_without_response": 1, "gaps": 0, "gap_bytes": 0, "skipped_streams": {},
           "warning_counts": {}, "exchanges_per_s": 2.0}


def evidence_of(pairs, capture, *, shard=None, budgets=("p95<300ms", "5xx<5%"), interrupted=False, skipped=()):
    aggregate = Aggregate()
    for exchange, observation in pairs:
        aggregate.add(exchange, observation)
    summary = {**SUMMARY, "files": [{**SUMMARY["files"][0], "path": str(capture)}]}
    incomplete = Exchange(999, Request.build("GET", "/api/users/5?token=s3cret"), None, 0, None, "c", 0,
                          Source("capture.gor", 9999, record=999), (Flag("no-response", "response"),))
    return build_evidence(
        aggregate=aggregate, captures=[capture], capture_summary=summary, target="http://127.0.0.1:8000",
        pace={"speed": 1.0, "rate": None}, filters=["include ^GET /api/"], rewrites=["host -> staging"],
        redaction=["header:authorization"], sample={"size": len(pairs), "of": 122}, write_policy="mock",
        budgets=evaluate(budgets, aggregate), skipped=skipped,
        incomplete=[incomplete] if shard in (None, (1, 2)) else [],  # each shard lists its own
        interrupted=interrupted, planned=len(pairs), shard=shard, outcomes={"passed": len(pairs)},
        notes=["pcap timestamps are microseconds"])


# -- structure --------------------------------------------------------------------------------------
def test_sha256_file(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(os.urandom(3 << 20))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_evidence_has_every_documented_part(capture):
    exchange, _ = pair("/api/orders/1", method="POST", index=500, recorded_ms=1, replayed_ms=1)
    data = evidence_of(requests(), capture, skipped=[(exchange, "write-policy")])
    json.dumps(data, allow_nan=False)
    assert data["schema"] == SCHEMA and data["run"]["id"] and data["run"]["shard"] is None
    files = data["captures"]["files"]
    assert files == [{"path": str(capture), "name": "capture.gor", "bytes": capture.stat().st_size,
                      "sha256": sha256_file(capture), "format": "gor", "records": {"1": 1}}]
    assert data["captures"]["first"].startswith("2023-11-14T22:13:20") and data["captures"]["duration_s"] == 60.0
    assert data["selection"] == {"filters": ["include ^GET /api/"], "sample": {"size": 120, "of": 122},
                                 "rewrites": ["host -> staging"], "redaction": ["header:authorization"]}
    assert data["pace"]["speed"] == 1.0 and data["target"] == "http://127.0.0.1:8000"
    assert data["write_policy"] == {"policy": "mock", "mocked": 0, "passed": 0, "skipped": 0, "flagged": 0}
    endpoints = {row["endpoint"]: row for row in data["endpoints"]}
    assert set(endpoints) == {"GET /api/users/{id}", "GET /api/items", "POST /api/orders/{id}"}
    users = endpoints["GET /api/users/{id}"]
    assert users["requests"] == 40 and users["recorded_ms"]["p50"] < users["replayed_ms"]["p50"]
    assert endpoints["POST /api/orders/{id}"]["5xx_pct"] == 10.0
    assert data["totals"]["requests"] == 120 and data["errors"]["rates_pct"]["5xx"] == pytest.approx(3.3333)
    assert data["lateness"]["max_ms"] == 0.0 and data["diff"]["judged"] == 0
    assert [b["budget"] for b in data["budgets"]] == ["p95<300ms", "5xx<5%"]
    assert all(b["passed"] for b in data["budgets"])
    assert data["skipped"] == {"total": 1, "by_reason": {"write-policy": 1}, "examples": [
        {"index": 500, "exchange": "POST /api/orders/1", "source": "capture.gor (record 500, byte 50000)",
         "reason": "write-policy"}]}
    incomplete = data["incomplete"]
    assert incomplete["by_reason"] == {"no-response": 1} and "s3cret" not in json.dumps(data)
    assert any("incomplete exchanges" in gap for gap in data["known_gaps"])
    assert "pcap timestamps are microseconds" in data["known_gaps"]
    assert data["notes"] == ["pcap timestamps are microseconds"]
    assert Aggregate.from_dict(data["aggregate"]).overall.requests == 120
    assert "latency" in data["method"]


def test_interrupted_run_is_said_so(capture):
    data = evidence_of(requests(30), capture, interrupted=True)
    data2 = build_evidence(aggregate=Aggregate(), interrupted=True, planned=100)
    assert data["run"]["interrupted"]
    assert data2["known_gaps"][0] == "the run was interrupted: 0 requests of 100 planned were replayed"
    assert data2["endpoints"] == [] and data2["totals"]["requests"] == 0 and data2["captures"]["files"] == []


# -- atomic writes ----------------------------------------------------------------------------------
def test_write_is_atomic_and_named_by_shard(tmp_path, capture, monkeypatch):
    data = evidence_of(requests(30), capture)
    seen = []
    real_replace = os.replace

    def replace(src, dst):  # at the moment of the rename: the target absent, the temp file complete
        seen.append((Path(dst).exists(), json.loads(Path(src).read_text())["schema"], Path(src).parent))
        return real_replace(src, dst)

    monkeypatch.setattr(evidence_module.os, "replace", replace)
    path = write_evidence(tmp_path / "out", data)
    assert path == tmp_path / "out" / FILENAME
    assert seen == [(False, SCHEMA, tmp_path / "out")]
    assert read_evidence(path) == json.loads(json.dumps(data))
    shard = evidence_of(requests(30), capture, shard=(2, 3))
    assert write_evidence(tmp_path / "out", shard).name == "replay-evidence-shard-2-of-3.json"
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted([FILENAME, "replay-evidence-shard-2-of-3.json"])


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, capture, monkeypatch, failure):
    out = tmp_path / "out"
    old = write_evidence(out, evidence_of(requests(3), capture))
    before = old.read_bytes()

    def fsync(fd):
        raise failure

    monkeypatch.setattr(evidence_module.os, "fsync", fsync)
    with pytest.raises(type(failure)):
        write_evidence(out, evidence_of(requests(30), capture))
    assert old.read_bytes() == before
    assert [p.name for p in out.iterdir()] == [FILENAME]  # no temporary file left behind
    monkeypatch.undo()
    empty = tmp_path / "empty"
    monkeypatch.setattr(evidence_module.os, "fsync", fsync)
    with pytest.raises(type(failure)):
        write_evidence(empty, evidence_of(requests(3), capture))
    assert list(empty.iterdir()) == []


def test_ctrl_c_during_the_write_is_delivered_after_the_file_is_complete(tmp_path, capture, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C while an interrupted run writes its evidence
        return real_fsync(fd)

    monkeypatch.setattr(evidence_module.os, "fsync", fsync)
    # Python's own Ctrl-C handler, also where this suite runs with SIGINT ignored (a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_evidence(tmp_path, evidence_of(requests(30), capture, interrupted=True))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the write
    finally:
        signal.signal(signal.SIGINT, previous)
    data = read_evidence(tmp_path / FILENAME)
    assert data["run"]["interrupted"] and data["totals"]["requests"] == 30


def test_interrupted_process_still_writes_its_evidence(tmp_path):
    """A run stopped by Ctrl-C reaches session finish, which writes the evidence (as the plugin does)."""
    script = tmp_path / "run.py"
    script.write_text(f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from pytest_replay.report.aggregate import Aggregate
from pytest_replay.report.evidence import build_evidence, write_evidence
aggregate = Aggregate()
signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
try:
    os.kill(os.getpid(), signal.SIGINT)
    signal.pause()
except KeyboardInterrupt:
    interrupted = True
finally:
    write_evidence({str(tmp_path / "ev")!r}, build_evidence(aggregate=aggregate, interrupted=True, planned=5))
    raise SystemExit(2)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert read_evidence(tmp_path / "ev" / FILENAME)["run"]["interrupted"]


# -- merging ----------------------------------------------------------------------------------------
def shards(capture, tmp_path, pairs=None, n=2, **kw):
    pairs = pairs if pairs is not None else requests()
    paths = []
    for k in range(1, n + 1):
        data = evidence_of(pairs[k - 1::n], capture, shard=(k, n), **kw)
        paths.append(str(write_evidence(tmp_path / "shards", data)))
    return paths


def test_merge_of_shards_equals_one_full_run(tmp_path, capture):
    full = evidence_of(requests(), capture)
    paths = shards(capture, tmp_path)
    merged, warnings = merge_evidence([(p, read_evidence(p)) for p in paths], budgets=evaluate(
        ["p95<300ms", "5xx<5%"], Aggregate.from_dict(json.loads(json.dumps(full["aggregate"])))))
    assert warnings == []
    assert Aggregate.from_dict(merged["aggregate"]) == Aggregate.from_dict(full["aggregate"])
    for key in ("endpoints", "totals", "errors", "lateness", "diff", "budgets", "captures", "selection",
                "write_policy", "incomplete"):
        assert merged[key] == full[key], key
    assert merged["run"]["shard"] is None and [m["shard"]["index"] for m in merged["run"]["merged_from"]] == [1, 2]
    assert merged["run"]["planned"] == 120 and merged["run"]["outcomes"] == {"passed": 120}
    assert merged["known_gaps"] == full["known_gaps"]


def test_merge_refuses_other_captures_schemas_and_duplicates(tmp_path, capture):
    paths = shards(capture, tmp_path)
    docs = [(p, read_evidence(p)) for p in paths]
    other = json.loads(json.dumps(docs[1][1]))
    other["captures"]["files"][0]["sha256"] = "0" * 64
    with pytest.raises(EvidenceError, match="different captures"):
        merge_evidence([docs[0], ("other.json", other)])
    with pytest.raises(EvidenceError, match="same run"):
        merge_evidence([docs[0], docs[1], ("copy.json", docs[0][1])])
    again = evidence_of(requests()[::2], capture, shard=(1, 2))  # shard 1 run again
    with pytest.raises(EvidenceError, match="both shard 1 of 2"):
        merge_evidence([docs[0], ("again.json", again)])
    third = evidence_of(requests()[::3], capture, shard=(1, 3))
    with pytest.raises(EvidenceError, match="different splits"):
        merge_evidence([docs[1], ("third.json", third)])
    whole = [("a.json", evidence_of(requests(), capture)), ("b.json", evidence_of(requests(), capture))]
    with pytest.raises(EvidenceError, match="whole run"):
        merge_evidence(whole)
    old = json.loads(json.dumps(docs[1][1]))
    old["schema"] = "pytest-replay-evidence/0"
    with pytest.raises(EvidenceError, match="schema"):
        merge_evidence([docs[0], ("old.json", old)])
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    with pytest.raises(EvidenceError, match="same version"):
        read_evidence(path)
    _, warnings = merge_evidence(docs[:1])
    assert warnings == ["shard(s) 2 of 2 missing: the merge covers 1 of 2 shards"]


# -- the merge command ------------------------------------------------------------------------------
def test_merge_command_prints_table_and_budgets_and_exit_codes(tmp_path, capture, capsys):
    paths = shards(capture, tmp_path)
    assert merge_main(paths) == 0  # the shards' own budgets, evaluated over the whole
    out = capsys.readouterr().out
    assert out.startswith("merged 2 evidence file(s): 120 requests, 3 endpoints")
    assert "p95 rec/rep ms" in out and "GET /api/users/{id}" in out and "(all)" in out
    assert "budgets: 2 passed, 0 failed" in out and "PASS p95<300ms: " in out and "PASS 5xx<5%: " in out

    code = merge_main([*paths, "--budget", "GET /api/users/*: p99<150ms", "--budget", "5xx<1%",
                       "--budget", "GET /api/items: p95<1.2x", "--report", str(tmp_path / "merged")])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL GET /api/users/*: p99<150ms: " in out and "worst: GET /api/users/{id}" in out
    assert "FAIL 5xx<1%: 3.33% (recorded 0.00%); worst: POST /api/orders/{id} 10.00% (4 of 40)" in out
    assert "PASS GET /api/items: p95<1.2x" in out
    merged = read_evidence(tmp_path / "merged" / FILENAME)
    assert [b["passed"] for b in merged["budgets"]] == [False, False, True]
    assert merged["totals"]["requests"] == 120


def test_merge_command_refusals_are_exit_4(tmp_path, capture, capsys):
    paths = shards(capture, tmp_path)
    assert merge_main([paths[0], paths[0]]) == 4
    assert "merge: " in capsys.readouterr().err
    assert merge_main([*paths, "--budget", "p95<fast"]) == 4
    assert "accepted forms" in capsys.readouterr().err
    assert merge_main([str(tmp_path / "missing.json")]) == 4
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert merge_main([str(bad)]) == 4
    assert "not a JSON evidence file" in capsys.readouterr().err
    assert merge_main([paths[0]]) == 2  # half the shards: incomplete, whatever the half says
    captured = capsys.readouterr()
    assert "warning: shard(s) 2 of 2 missing" in captured.err
    assert captured.out.splitlines()[-1].startswith("INCOMPLETE: shard(s) 2 missing; ")
    assert "5xx<5%" in captured.out.splitlines()[-1]  # half the requests: 5xx 6.67% > 5%, said too
    assert merge_main(["--help"]) == 0
    assert "exit status (as pytest's)" in capsys.readouterr().out


def test_merge_gate_carries_shard_outcomes(tmp_path, capture, capsys):
    """Each shard's outcomes, interrupted shards and failed items are carried and gate the exit status."""
    paths = []
    for k, outcomes, interrupted in ((1, {"passed": 50, "failed": 10, "deselected": 60}, False),
                                     (2, {"passed": 60, "deselected": 60}, False)):
        data = evidence_of(requests()[k - 1::2], capture, shard=(k, 2), interrupted=interrupted)
        data["run"]["outcomes"] = outcomes
        data["run"]["exit_status"] = 1 if outcomes.get("failed") else 0
        paths.append(str(write_evidence(tmp_path / "shards", data)))
    assert merge_main([*paths, "--report", str(tmp_path / "merged")]) == 1
    out = capsys.readouterr().out
    assert "shard 1 of 2: 50 passed, 10 failed, 0 skipped, 0 errors, 60 deselected; pytest exit status 1" in out
    assert "shard 2 of 2: 60 passed, 0 failed, 0 skipped, 0 errors, 60 deselected; pytest exit status 0" in out
    assert "total: 110 passed, 10 failed, 0 skipped, 0 errors, 120 deselected" in out
    assert out.splitlines()[-1] == "FAILED: 10 failed (exit status 1)"
    merged = read_evidence(tmp_path / "merged" / FILENAME)
    assert merged["run"]["verdict"] == {"passed": False, "exit_code": 1, "reasons": ["10 failed"]}
    assert [row["outcomes"]["failed"] for row in merged["run"]["merged_from"] if "failed" in row["outcomes"]] == [10]

    data = read_evidence(paths[1])
    data["run"]["interrupted"] = True
    data["run"]["exit_status"] = 2
    (tmp_path / "interrupted").mkdir()
    interrupted = str(write_evidence(tmp_path / "interrupted", data))
    assert merge_main([paths[0], interrupted]) == 2  # incomplete wins over failed, as in pytest
    out = capsys.readouterr().out
    assert "shard 2 of 2: 60 passed, 0 failed, 0 skipped, 0 errors, 60 deselected INTERRUPTED" in out
    assert out.splitlines()[-1] == "INCOMPLETE: shard 2 of 2 was interrupted; 10 failed (exit status 2)"

    clean = [str(write_evidence(tmp_path / "clean", {**read_evidence(p), "run": {
        **read_evidence(p)["run"], "outcomes": {"passed": 60}, "exit_status": 0}})) for p in paths]
    assert merge_main(clean) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "PASSED: 120 passed (exit status 0)"


# -- the Evidence dataclass: round trips, merge algebra, the separate mergeability check ---------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_replay.report.evidence import Evidence, Listing, RunInfo, check_mergeable  # noqa: E402

_names = st.text("abcdefgh-", min_size=1, max_size=6)
_counts = st.dictionaries(_names, st.integers(0, 10**6), max_size=4)
_plain = st.none() | st.booleans() | st.integers(-5, 10**9) | st.text(max_size=8)


@given(id=st.text(max_size=8), interrupted=st.booleans(), planned=st.none() | st.integers(0, 10**6),
       shard=st.none() | st.tuples(st.integers(1, 9), st.integers(1, 9)), outcomes=_counts,
       more=st.dictionaries(st.sampled_from(["environment", "owner", "links", "future_key"]), _plain, max_size=3))
def test_run_info_round_trips(id, interrupted, planned, shard, outcomes, more):
    data = {"id": id, "interrupted": interrupted, "planned": planned, "outcomes": outcomes,
            "shard": {"index": shard[0], "count": shard[1]} if shard else None, **more}
    run = RunInfo.from_dict(data)
    assert RunInfo.from_dict(run.to_dict()) == run
    assert {k: v for k, v in run.to_dict().items() if k in data} == data  # nothing lost, nothing renamed


@given(total=st.integers(0, 100), by_reason=_counts, examples=st.lists(st.dictionaries(_names, _plain), max_size=3))
def test_listing_round_trips(total, by_reason, examples):
    listing = Listing(total, by_reason, examples)
    assert Listing.from_dict(listing.to_dict()) == listing


def test_evidence_round_trips_through_json(capture):
    exchange, _ = pair("/api/orders/1", method="POST", index=500, recorded_ms=1, replayed_ms=1)
    data = evidence_of(requests(), capture, skipped=[(exchange, "write-policy")], shard=(1, 2))
    data["capacity"] = {"stages": [], "stopped": None}
    data["run"]["environment"] = "staging"
    evidence = Evidence.from_dict(json.loads(json.dumps(data)))
    assert isinstance(evidence.run, RunInfo) and evidence.run.shard.count == 2 and evidence.skipped.total == 1
    assert evidence.more == {"capacity": {"stages": [], "stopped": None}}
    assert Evidence.from_dict(evidence.to_dict()) == evidence
    assert evidence.to_dict() == json.loads(json.dumps(data))  # the JSON's shape is unchanged
    assert list(evidence.to_dict()) == list(data)  # and so is its key order


def _counts_of(evidence: Evidence) -> dict:
    aggregate = Aggregate.from_dict(evidence.aggregate)
    return {"outcomes": evidence.run.outcomes, "planned": evidence.run.planned, "requests": aggregate.overall.requests,
            "status": evidence.errors.status, "transport": evidence.errors.transport,
            "skipped": evidence.skipped.by_reason, "incomplete": evidence.incomplete.by_reason,
            "ignored": evidence.diff.ignored, "origins": evidence.diff.origins, "sample": evidence.selection.sample,
            "throughput": evidence.throughput.requests, "writes": evidence.write_policy.to_dict(),
            "endpoints": {row["endpoint"]: row["requests"] for row in evidence.endpoints},
            "p99": evidence.totals and evidence.totals["replayed_ms"]["p99"]}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.tuples(st.integers(0, 60), st.integers(0, 60)), reasons=st.lists(st.sampled_from("abc"), max_size=6))
def test_merge_is_associative_and_commutative_on_counts(capture, cuts, reasons):
    pairs = requests(60)
    low, high = sorted(cuts)
    parts = [pairs[:low], pairs[low:high], pairs[high:]]
    evidences = []
    for k, part in enumerate(parts):
        skipped = [(exchange, reasons[i % len(reasons)]) for i, (exchange, _) in enumerate(part[:3])] if reasons else ()
        data = evidence_of(part, capture, shard=(k + 1, 3), skipped=skipped)
        data["diff"]["ignored"] = {f"rule {k}": len(part), "rule x": 1}
        data["diff"]["origins"] = {"o": k}
        evidences.append(Evidence.from_dict(data))
    a, b, c = evidences
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    assert _counts_of(left) == _counts_of(right)
    assert _counts_of(a.merge(b)) == _counts_of(b.merge(a))
    assert _counts_of(left)["outcomes"] == {"passed": 60} and _counts_of(left)["planned"] == 60
    assert _counts_of(left)["ignored"]["rule x"] == 3 and _counts_of(left)["sample"]["size"] == 60


def test_mergeability_is_checked_apart_from_the_merge(tmp_path, capture):
    docs = [(p, read_evidence(p)) for p in shards(capture, tmp_path, n=3)]
    assert check_mergeable(docs) == (3, [], [])
    count, missing, warnings = check_mergeable(docs[:2])
    assert (count, missing) == (3, [3]) and warnings == ["shard(s) 3 of 3 missing: the merge covers 2 of 3 shards"]
    other = json.loads(json.dumps(docs[1][1]))
    other["schema"] = "pytest-replay-evidence/1"
    with pytest.raises(EvidenceError, match="other.json: evidence schema 'pytest-replay-evidence/1', expected"):
        check_mergeable([docs[0], ("other.json", other)])
    # the merge itself does not refuse: a merged evidence merges again with a third shard
    merged = Evidence.from_dict(merge_evidence(docs[:2])[0])
    assert Aggregate.from_dict(merged.merge(Evidence.from_dict(docs[2][1])).aggregate).overall.requests == 120


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(run="x"), "b.json: run (or run.shard) is not an object"),
    (lambda d: d["captures"].pop("files"), "b.json: no captures.files list"),
    (lambda d: d["run"].update(outcomes={"passed": "many"}), "b.json: run.outcomes is malformed"),
    (lambda d: d["diff"].update(ignored=[1]), "b.json: diff.ignored is malformed"),
    (lambda d: d.update(aggregate={"schema": 2, "endpoints": 7}), "b.json: aggregate is malformed"),
])
def test_merge_names_the_file_and_section_of_a_damaged_shard(tmp_path, capture, damage, message, capsys):
    paths = shards(capture, tmp_path)
    data = json.loads(Path(paths[1]).read_text())
    damage(data)
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps(data))
    code = merge_main([paths[0], str(bad)])
    err = capsys.readouterr().err
    assert code == 4 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_capacity_sections_of_shards_merge_in_any_order():
    from pytest_replay.report.evidence import merge_shard_capacity

    def shard(k, sent, stopped=None):
        return {"stages": [{"stage": 1, "pace": "fixed 5/s", "target_rate": 5.0, "planned": 10, "sent": sent,
                            "sent_in_stage": sent, "errors": 0, "not_sent": 10 - sent, "lateness_p99_ms": k}],
                "planned_stages": ["fixed 10/s:2s"], "shard": {"index": k, "count": 3}, "stopped": stopped,
                "sent_after_the_end": 0, "reached": {"stage": 1, "at_s": sent / 10}}

    stop = {"condition": "p99>1s", "stage": 1}
    a, b, c = shard(1, 10), shard(2, 4, stop), shard(3, 10)
    left = merge_shard_capacity(merge_shard_capacity(a, b), c)
    right = merge_shard_capacity(a, merge_shard_capacity(b, c))
    assert left == right
    assert left["stages"][0]["planned"] == 30 and left["stages"][0]["target_rate"] == 15
    assert left["stages"][0]["pace"] == "fixed 10/s" and left["stages"][0]["lateness_p99_ms"] == 3
    assert left["shard_stops"] == [{**stop, "shard": {"index": 2, "count": 3}}] and left["shard"] is None
    alone = merge_shard_capacity(b, None)
    assert alone["shard_stops"] == left["shard_stops"] and alone["stages"][0]["pace"] == "fixed 10/s"
