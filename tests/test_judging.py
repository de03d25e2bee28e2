"""Judging in other processes (issue 13.1, --replay-judge-workers), end to end: pytest --replay against a
uvicorn app serving large JSON pages whose links name the Host they were sent (so every replayed body
differs in bytes from the recorded one and is parsed and walked), some with a changed value.

The same run judged in the run's process (--replay-judge-workers 0) and in a judging process gives the
same outcomes, failure texts and evidence counts, streamed or not, with or without xdist; Ctrl-C leaves no
process behind; a judging process that dies fails the exchange it was judging, naming it, and the run."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from support import ROOT, pytest_to_interrupt, uvicorn

from pytest_replay.session.judging import JudgePool, workers_for

sys.path.insert(0, str(ROOT / "tests" / "apps"))
from big_json import document  # noqa: E402

SEP = "\n🐵🙈🙉\n".encode()
T0 = 1_700_000_000_000_000_000
RECORDED_ORIGIN = "http://shop.example.com"

# Written down in each process that replays: how many exchanges its judging processes judged.
PROBE = """
import json, os
from pytest_replay.plugin import RUN


def pytest_sessionfinish(session):
    run = session.config.stash.get(RUN, None)
    if run is None or run.engine is None:
        return
    pool = run.judging
    name = getattr(session.config, "workerinput", {}).get("workerid", "main")
    with open(f"probe-{name}.json", "w") as f:
        json.dump({"judged": pool.judged if pool is not None else None,
                   "streamed": run.stream is not None}, f)
"""


@pytest.fixture(scope="module")
def server() -> str:
    with uvicorn("big_json:app", app_dir=ROOT / "tests" / "apps") as url:
        yield url


def recorded_body(path: str, i: int) -> bytes:
    """The recorded answer: the app's page as the recorded origin saw it; a value changed in large page i
    when i % 8 == 2 (half of them an e-mail address, masked in the failure text) and in small page i when
    i % 3 == 0 (an e-mail address: the stand-ins of one run are the same in every process)."""
    large = path == "item"
    doc = document(i, RECORDED_ORIGIN, 300 if large else 2)
    if large and i % 8 == 2:
        doc["items"][i % 300]["name"] = "renamed" if i % 16 == 2 else "bob@example.com"
    if not large and i % 3 == 0:
        doc["items"][1]["name"] = "bob@example.com"
    return json.dumps(doc).encode()


def capture(path: Path, n: int, connections: int = 4) -> Path:
    """n GETs, alternately of a large page (~67 KB) and a small one, on keep-alive connections."""
    records = []
    for i in range(n):
        kind = "item" if i % 2 == 0 else "small"
        rid = f"{i % connections + 1:016x}{i:08x}"
        head = f"GET /{kind}/{i} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n"
        body = recorded_body(kind, i)
        answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                  + body)
        records.append(f"1 {rid} {T0 + i * 1_000_000} -1\n".encode() + head.encode())
        records.append(f"2 {rid} {T0 + i * 1_000_000 + 500_000} -1\n".encode() + answer)
    path.write_bytes(b"".join(r + SEP for r in records))
    return path


def replay(pytester: pytest.Pytester, gor: Path, server: str, *args: str, report: str = "evidence",
           pace: tuple[str, str] = ("--rate", "20")):
    """(At a pace: exchanges judged once the engine is done are judged in the run's process.)"""
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-rf", *pace, "--replay", str(gor), "--replay-target", server,
        "--replay-report", str(pytester.path / report), *args, timeout=300)


def probes(pytester: pytest.Pytester) -> dict:
    found = {p.stem.removeprefix("probe-"): json.loads(p.read_text()) for p in pytester.path.glob("probe-*.json")}
    for p in pytester.path.glob("probe-*.json"):
        p.unlink()
    return found


STAND_IN = re.compile(r"(REDACTED-[A-Z]+)-[0-9a-f]{8}")  # keyed with a key of the run: differs run to run


def normal(text: str) -> str:
    """Without timings and stand-in hashes (which differ from run to run)."""
    return STAND_IN.sub(r"\1", re.sub(r"\d+(\.\d+)? ms", "<ms>", text))


def failure_texts(result) -> list[str]:
    """The failure sections, in their order."""
    text = normal(result.stdout.str().split("= traffic replay =")[0])
    return sorted(block.split("\n====")[0] for block in text.split("____") if "body $." in block)


COUNTED = ("requests", "judged", "failed", "failures", "ignored", "status", "recorded_status", "skipped", "writes",
           "error_pct", "transport_errors")


def counts(pytester: pytest.Pytester, report: str) -> dict:
    """What the evidence counts, without times: totals, per endpoint outcomes and failure causes, what
    the origins and the noise rules hid."""
    evidence = json.loads((pytester.path / report / "replay-evidence.json").read_text())
    totals = {k: evidence["totals"].get(k) for k in COUNTED}
    endpoints = [{k: row.get(k) for k in ("endpoint", *COUNTED)} for row in evidence["endpoints"]]
    return json.loads(normal(json.dumps({"totals": totals, "endpoints": endpoints,
                                                       "diff": evidence.get("diff"),
                                                       "failures": evidence.get("failures")})))


@pytest.mark.parametrize("stream", ["auto", "off"])
def test_judging_processes_give_the_verdicts_of_the_run_s_process(pytester: pytest.Pytester, server: str,
                                                                 stream: str) -> None:
    pytester.makeconftest(PROBE)
    gor = capture(pytester.path / "pages.gor", 48)
    args = ("--replay-stream", stream, "--replay-group", "exchange", "--replay-judge", "during")
    here = replay(pytester, gor, server, *args, "--replay-judge-workers", "0", report="here")
    assert probes(pytester) == {"main": {"judged": None, "streamed": stream == "auto"}}
    pooled = replay(pytester, gor, server, *args, "--replay-judge-workers", "1", report="pooled")
    probe = probes(pytester)["main"]
    assert probe["streamed"] is (stream == "auto")
    assert probe["judged"] > 0, probe  # large pages judged in the pool (a backlog left when the engine is
    # done is judged in the run's process)
    outcomes = here.parseoutcomes()
    assert outcomes == {"failed": 6 + 8, "passed": 48 - 14}, here.stdout.str()[-3000:]
    assert pooled.parseoutcomes() == outcomes
    assert failure_texts(pooled) == failure_texts(here)
    assert counts(pytester, "pooled") == counts(pytester, "here")
    assert "bob@example.com" not in pooled.stdout.str()
    # the e-mail address of large pages (judged in the pool) and of small ones (here): one stand-in
    assert len(set(re.findall(r"REDACTED-EMAIL-[0-9a-f]{8}", pooled.stdout.str()))) == 1
    assert "origin http://shop.example.com treated as" in json.dumps(counts(pytester, "pooled"))


@pytest.mark.parametrize("workers", ["auto", "2"])
def test_grouped_items(pytester: pytest.Pytester, server: str, workers: str) -> None:
    """Items of a connection (streamed): the same failures counted; 'auto' (the default) starts a judging
    process when a core is left for it."""
    pytester.makeconftest(PROBE)
    gor = capture(pytester.path / "pages.gor", 40)
    args = ("--replay-group", "connection")
    here = replay(pytester, gor, server, *args, "--replay-judge-workers", "0", report="here")
    probes(pytester)
    pooled = replay(pytester, gor, server, *args, *(("--replay-judge-workers", workers) if workers != "auto" else ()),
                    report="pooled")
    judged = probes(pytester)["main"]["judged"]
    if workers_for(workers if workers == "auto" else int(workers)) == 0:  # (auto, on a single core)
        assert judged is None
    else:
        assert judged > 0
    assert pooled.parseoutcomes() == here.parseoutcomes() == {"failed": 3, "passed": 1}
    assert re.findall(r"\d+ of 10 exchanges failed", pooled.stdout.str()) == \
        re.findall(r"\d+ of 10 exchanges failed", here.stdout.str())
    assert counts(pytester, "pooled") == counts(pytester, "here")


def test_items_judged_after_a_held_replay_start_no_judging_process(pytester: pytest.Pytester, server: str) -> None:
    """--replay-judge after (the default) in a run that holds the capture: judging starts when the engine
    is done, there is no lateness to save, and the pool's round trips would only cost time."""
    pytester.makeconftest(PROBE)
    gor = capture(pytester.path / "pages.gor", 12)
    result = replay(pytester, gor, server, "--replay-stream", "off", "--replay-judge-workers", "1")
    assert probes(pytester) == {"main": {"judged": None, "streamed": False}}
    assert result.parseoutcomes() == {"failed": 4, "passed": 8}


def test_each_xdist_worker_judges_with_its_own_pool(pytester: pytest.Pytester, server: str) -> None:
    pytest.importorskip("xdist")
    pytester.makeconftest(PROBE)
    gor = capture(pytester.path / "pages.gor", 40)
    args = ("--replay-group", "exchange", "-n", "2", "--replay-judge", "during")
    here = replay(pytester, gor, server, *args, "--replay-judge-workers", "0", report="here")
    probes(pytester)
    pooled = replay(pytester, gor, server, *args, "--replay-judge-workers", "1", report="pooled")
    found = probes(pytester)
    assert set(found) == {"gw0", "gw1"}, found
    assert all(p["judged"] is not None for p in found.values())  # each worker had a pool
    assert sum(p["judged"] for p in found.values()) > 0
    assert pooled.parseoutcomes() == here.parseoutcomes() == {"failed": 5 + 7, "passed": 40 - 12}
    assert failure_texts(pooled) == failure_texts(here)
    assert counts(pytester, "pooled") == counts(pytester, "here")


def _descendants(pid: int) -> set[int]:
    """The processes under `pid`, from /proc (their parent ids)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_shuts_the_pool_down_and_leaves_no_process(tmp_path: Path, server: str) -> None:
    gor = capture(tmp_path / "pages.gor", 400)
    # (hypothesis's plugin imports hypothesis in its terminal summary: seconds on a loaded machine, not ours)
    proc = pytest_to_interrupt(["-p", "no:hypothesispytest", "--replay", str(gor), "--replay-target", server, "--rate", "40",
                                "--replay-judge-workers", "1", "--replay-report", str(tmp_path / "evidence")],
                               tmp_path)
    seen = ""
    while ".gor " not in seen:  # the replay runs: the judging process was started with the engine
        char = proc.stdout.read(1)
        assert char, seen
        seen += char
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(_descendants(proc.pid)) < 2:  # the forkserver, a judging process
        time.sleep(0.1)
    time.sleep(1)  # (the replay runs, large pages are judged)
    children = _descendants(proc.pid)
    assert len(children) >= 2, f"no judging process was started: {children}"
    proc.send_signal(signal.SIGINT)
    pressed = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    out, stop_s = seen + out, time.monotonic() - pressed
    assert stop_s < 10, f"Ctrl-C did not stop the run promptly ({stop_s:.1f} s): {out[-3000:]}"
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out.split("KeyboardInterrupt")[0], out[-3000:]
    deadline = time.monotonic() + 5
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)], "processes left behind after Ctrl-C"
    evidence = json.loads((tmp_path / "evidence" / "replay-evidence.json").read_text())
    assert evidence["run"]["interrupted"] is True


KILLER = """
import os, signal, time
from pytest_replay.plugin import RUN
from pytest_replay.verdicts import judge

CONFIG = []


def pytest_configure(config):
    CONFIG.append(config)


of = judge.Task.of


def killing(exchange, replayed, **kwargs):
    pool = CONFIG[0].stash[RUN].judging
    if not os.path.exists("killed"):
        open("killed", "w").write(str(exchange.index))
        for pid in list(pool._processes):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    return of(exchange, replayed, **kwargs)


judge.Task.of = killing
"""


@pytest.mark.parametrize("stream", ["auto", "off"])
def test_a_judging_process_that_dies_fails_its_exchange_and_the_run(pytester: pytest.Pytester, server: str,
                                                                    stream: str) -> None:
    pytester.makeconftest(KILLER)
    gor = capture(pytester.path / "pages.gor", 40)
    result = replay(pytester, gor, server, "--replay-group", "exchange", "--replay-judge-workers", "1",
                    "--replay-stream", stream, "--replay-judge", "during", pace=("--rate", "10"))
    text = result.stdout.str()
    index = int((pytester.path / "killed").read_text())
    section = text.split(f" GET /item/{index} #{index} _")[1].split("\n___")[0]
    assert "error (judge): the judging process died (exit code -9) while judging this exchange: not judged" in section
    assert re.search(rf"note: the judging process died \(exit code -9\) while judging GET /item/{index} #{index} "
                     rf"\[pages\.gor \(record {2 * index}, byte \d+\)\], which failed", text), text[-3000:]
    outcomes = result.parseoutcomes()
    changed = {i for i in range(0, 40, 2) if i % 8 == 2} | {i for i in range(1, 40, 2) if i % 3 == 0}
    assert outcomes["failed"] == len(changed | {index})  # the others judged in the run's process
    assert result.ret == 1 and "Traceback" not in text


def test_auto_leaves_a_core_to_each_engine() -> None:
    assert workers_for("auto", cpus=2, processes=1) == 1
    assert workers_for("auto", cpus=2, processes=2) == 0  # xdist -n 2 on 2 cores: no pool
    assert workers_for("auto", cpus=1, processes=1) == 0
    assert workers_for("auto", cpus=16, processes=1) == 1  # (one judging thread waits for one verdict)
    assert workers_for("auto", cpus=16, processes=4) == 1
    assert workers_for(0) == 0 and workers_for(3) == 3


def test_small_or_equal_bodies_stay_in_the_thread() -> None:
    from pytest_replay.http.message import Exchange, Request, Response, Source
    from pytest_replay.policy.redact import DEFAULT
    from pytest_replay.verdicts.diff import DiffConfig

    pool = JudgePool(1, DiffConfig(), DEFAULT)  # auto: nothing started until a large differing body comes
    headers = [(b"Content-Type", b"application/json")]
    big = json.dumps(document(1, RECORDED_ORIGIN)).encode()

    def exchange(body: bytes) -> Exchange:
        return Exchange(0, Request.build("GET", "/x"), Response.build(200, "OK", headers, body), 0, 1, "c", 0,
                        Source("f", 0))

    try:
        assert not pool.wants(exchange(big), Response.build(200, "OK", headers, big))  # equal: one memcmp
        small = json.dumps(document(1, RECORDED_ORIGIN, 2)).encode()
        assert not pool.wants(exchange(small), Response.build(200, "OK", headers, small.replace(b"1", b"2")))
        changed = Response.build(200, "OK", headers, big.replace(b"Item number 7", b"Item number 8"))
        assert pool.wants(exchange(big), changed)
        assert pool.judge(exchange(big), changed, error=None, latency_ns=1, origins=None) is None  # starting
        assert pool._executor is not None
    finally:
        pool.shutdown()
    assert pool.judge(exchange(big), changed, error=None, latency_ns=1, origins=None) is None  # shut down


def test_processes_that_cannot_start_leave_judging_to_the_run_s_process() -> None:
    from pytest_replay.policy.redact import DEFAULT
    from pytest_replay.verdicts.diff import DiffConfig

    class Unpicklable(DiffConfig):  # (a config that cannot reach a process: a local class)
        pass

    pool = JudgePool(1, Unpicklable(), DEFAULT, eager=True)
    try:
        assert not pool.wait_ready(30)
        assert pool.broken and not pool.ready
        assert len(pool.errors) == 1 and pool.errors[0].startswith("the judging processes could not start (")
        assert pool.errors[0].endswith("every exchange was judged in the run's process")
    finally:
        pool.shutdown()


def test_the_option_is_documented_with_its_default_and_checked(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    assert "--replay-judge-workers" in result.stdout.str()
    assert "Default: auto." in " ".join(result.stdout.str().split())
    gor = capture(pytester.path / "one.gor", 1)
    bad = pytester.runpytest_subprocess("--replay", str(gor), "--replay-judge-workers", "two")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--replay-judge-workers: expected" in bad.stderr.str()
