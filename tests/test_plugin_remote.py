"""Workers on other machines (pytest-xdist `--tx ssh=...`): a real OpenSSH server started on
127.0.0.1 stands in for the other hosts. Also the pure parts: the clock offset estimator (with a fake
clock) and the command line handed to remote workers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import CI_FLAG, DEMO, free_port, pythonpath_env, skip_or_fail, uvicorn, wait_listening

from pytest_replay.distribute import (
    ClockSample,
    estimate_offset,
    measure_offset,
    spec_host,
    worker_args,
)

HOST = "replay-remote"  # the ssh_config alias of the test's sshd


# -- the clock offset estimator ------------------------------------------------------------------
class FakeNetwork:
    """A controller clock, a worker clock `offset_ns` ahead, and a network whose delays (out, back)
    are given per round trip; each ping advances the controller's clock by the round trip."""

    def __init__(self, offset_ns: int, delays: list[tuple[int, int]]) -> None:
        self.now = 1_700_000_000_000_000_000
        self.offset_ns = offset_ns
        self.delays = list(delays)

    def clock(self) -> int:
        return self.now

    def ping(self) -> int:
        out, back = self.delays.pop(0)
        self.now += out
        answer = self.now + self.offset_ns  # the worker reads its clock on arrival
        self.now += back
        return answer


def test_offset_comes_from_the_sample_with_the_smallest_round_trip() -> None:
    # asymmetric and slow round trips first; the fourth is the shortest (and symmetric)
    delays = [(9_000_000, 1_000_000), (500_000, 4_000_000), (3_000_000, 3_000_000), (40_000, 40_000),
              (2_000_000, 100_000)]
    net = FakeNetwork(offset_ns=-2_500_000_000, delays=delays)
    clock = measure_offset(net.ping, clock=net.clock, samples=len(delays))
    assert clock.samples == 5
    assert clock.uncertainty_ns == 40_000  # half the smallest round trip
    assert clock.offset_ns == -2_500_000_000  # symmetric delays: exact


def test_offset_error_stays_within_its_uncertainty_when_the_path_is_asymmetric() -> None:
    net = FakeNetwork(offset_ns=123_456_789, delays=[(1_000_000, 200_000), (300_000, 700_000)])
    clock = measure_offset(net.ping, clock=net.clock, samples=2)
    assert clock.uncertainty_ns == 500_000  # the second round trip (1.0 ms) is the shorter
    assert abs(clock.offset_ns - 123_456_789) <= clock.uncertainty_ns
    assert clock.offset_ns - 123_456_789 == -200_000  # off by (out - back) / 2


def test_estimator_needs_a_sample_and_reports_in_milliseconds() -> None:
    with pytest.raises(ValueError, match="no clock sample"):
        estimate_offset([])
    clock = estimate_offset([ClockSample(sent_ns=0, remote_ns=5_000_000, received_ns=2_000_000)])
    assert clock.to_dict() == {"offset_ms": 4.0, "uncertainty_ms": 1.0, "samples": 1}


def test_an_offset_known_to_worse_than_a_millisecond_gets_a_note() -> None:
    from pytest_replay.distribute import ClockOffset
    from pytest_replay.session.xdist import clock_note

    assert clock_note("gw0", "ssh box7", ClockOffset(offset_ns=-3_000_000, uncertainty_ns=1_000_000, samples=8)) is None
    note = clock_note("gw1", "ssh box8", ClockOffset(offset_ns=2_500_000, uncertainty_ns=1_200_000, samples=8))
    assert note is not None and note.startswith("worker gw1 (ssh box8): clock offset +2.500 ms known only to "
                                                "within +/-1.200 ms (over 1 ms)")


def test_a_worker_ready_after_the_start_says_how_late() -> None:
    from pytest_replay.session.xdist import late_note

    assert late_note("gw0", -0.5) is None
    assert late_note("gw3", 2.345).startswith("worker gw3 was ready 2.35 s after the shared start")


# -- the command line handed to remote workers ---------------------------------------------------
def test_worker_args_join_our_options_and_make_captures_absolute() -> None:
    args = ["--replay", "cap.gor", "--replay=b/c.pcap", "--replay", "/abs/d.gor", "--replay-report", "evidence",
            "--tx", "2*ssh=-F cfg host", "-q", "tests/test_x.py", "--replay-target=http://x"]
    out = worker_args(args, ["--replay", "--replay-report", "--replay-target"], ["--replay"], "/work/here")
    assert out == ["--replay=/work/here/cap.gor", "--replay=/work/here/b/c.pcap", "--replay=/abs/d.gor",
                   "--replay-report=evidence", "--tx", "2*ssh=-F cfg host", "-q", "tests/test_x.py",
                   "--replay-target=http://x"]


def test_spec_host_names_the_machine_without_options() -> None:
    import execnet

    assert spec_host(execnet.XSpec("ssh=-F /tmp/x/ssh_config box7//python=/v/bin/python")) == "ssh box7"
    assert spec_host(execnet.XSpec("socket=10.0.0.2:8888")) == "socket 10.0.0.2:8888"
    assert spec_host(execnet.XSpec("popen")) == "popen (this machine)"


# -- a real sshd ---------------------------------------------------------------------------------
def _missing_sshd() -> str | None:
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    missing = [name for name, path in (("sshd", sshd), ("ssh", shutil.which("ssh")),
                                       ("ssh-keygen", shutil.which("ssh-keygen"))) if not path]
    if missing:
        return (f"OpenSSH not installed here ({', '.join(missing)} missing): install openssh-server and "
                "openssh-client (apt-get install -y openssh-server) to run the remote-worker test")
    return None


def test_without_sshd_the_remote_test_skips_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    reason = _missing_sshd()
    assert reason is not None and "sshd, ssh, ssh-keygen missing" in reason
    monkeypatch.setenv(CI_FLAG, "")
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail(reason)
    monkeypatch.setenv(CI_FLAG, "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        skip_or_fail(reason)


@pytest.fixture
def ssh_config(tmp_path: Path):
    """An OpenSSH server on 127.0.0.1 with its own host key and one authorized key, all in tmp_path;
    yields an ssh_config path whose host `replay-remote` reaches it without questions."""
    reason = _missing_sshd()
    if reason:
        skip_or_fail(reason)
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"  # sshd must be started by its absolute path
    home = tmp_path / "ssh"
    home.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
    port = free_port()
    server = home / "sshd_config"
    server.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {home / 'host_key'}",
        f"AuthorizedKeysFile {home / 'authorized_keys'}", f"PidFile {home / 'sshd.pid'}", "StrictModes no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "UsePAM no",
        "PermitRootLogin prohibit-password", ""]))
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory, as root
    log = home / "sshd.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sshd, "-D", "-f", str(server), "-e"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, "sshd", log=log)
        client = home / "ssh_config"
        client.write_text("\n".join([
            f"Host {HOST}", "  HostName 127.0.0.1", f"  Port {port}", f"  User {_user()}",
            f"  IdentityFile {home / 'client_key'}", "  IdentitiesOnly yes", "  StrictHostKeyChecking no",
            "  UserKnownHostsFile /dev/null", "  BatchMode yes", "  LogLevel ERROR", ""]))
        check = subprocess.run(["ssh", "-F", str(client), HOST, "true"], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            pytest.fail(f"ssh to the test's sshd failed: {check.stderr}\nsshd log: {log.read_text()}")
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _demo_server():
    return uvicorn("pytest_replay.demo.app:app", env=pythonpath_env())


def test_two_ssh_workers_and_a_local_one_replay_every_exchange_once(pytester: pytest.Pytester,
                                                                     ssh_config: Path) -> None:
    shutil.copy(DEMO, pytester.path / "demo.pcap")  # given as a relative path: workers get it absolute
    remote = f"ssh=-F {ssh_config} {HOST}//python={sys.executable}//chdir={pytester.path}"
    with _demo_server() as url:
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--replay", "demo.pcap", "--replay-target", url, "--speed", "0",
            "--replay-writes", "pass", "--replay-report", "evidence", "--dist", "load",
            "--tx", f"2*{remote}", "--tx", "popen", "-vv", timeout=300)
    text = result.stdout.str()
    assert "not relative to an rsync root" not in text + result.stderr.str()
    assert result.ret == 0, text[-3000:]
    # each item ran exactly once, on one worker; one captured connection never spans workers
    ran = re.findall(r"^\[(gw\d+)\] .*?PASSED (demo\.pcap::.+ #(\d+))\s*$", text, re.MULTILINE)
    ids = [nodeid for _, nodeid, _ in ran]
    assert len(ids) == 259 and len(set(ids)) == 259
    from pytest_replay.capture import load

    lane = {e.index: e.connection for e in load(str(DEMO))[0]}
    workers_of_lane: dict[str, set[str]] = {}
    for worker, _, index in ran:
        workers_of_lane.setdefault(lane[int(index)], set()).add(worker)
    assert all(len(workers) == 1 for workers in workers_of_lane.values())
    assert {w for workers in workers_of_lane.values() for w in workers} == {"gw0", "gw1", "gw2"}
    # the evidence, merged on the controller: every exchange counted once, each worker's clock
    [evidence] = (pytester.path / "evidence").glob("*.json")
    data = json.loads(evidence.read_text())
    assert data["run"]["planned"] == 259 and data["errors"]["requests"] == 259
    assert data["diff"]["judged"] == 259 and data["diff"]["failed"] == 0
    workers = {w["worker"]: w for w in data["run"]["workers"]}
    assert sorted(workers) == ["gw0", "gw1", "gw2"]
    assert workers["gw0"]["host"] == workers["gw1"]["host"] == f"ssh {HOST}"
    assert workers["gw2"]["host"] == "popen (this machine)"
    for worker in workers.values():
        assert worker["samples"] == 8 and worker["uncertainty_ms"] >= 0
        assert abs(worker["offset_ms"]) <= worker["uncertainty_ms"] + 5  # one machine: one clock
    assert "worker clocks (offset from the controller's" in text


def test_a_remote_worker_in_another_directory_is_refused_before_it_starts(pytester: pytest.Pytester,
                                                                         ssh_config: Path) -> None:
    shutil.copy(DEMO, pytester.path / "demo.pcap")
    remote = f"ssh=-F {ssh_config} {HOST}//python={sys.executable}//chdir={pytester.path / 'elsewhere'}"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--replay", "demo.pcap", "--replay-target", "http://127.0.0.1:9", "--speed", "0",
        "--dist", "load", "--tx", remote, timeout=120)
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text[-3000:]
    assert f"runs in {pytester.path / 'elsewhere'}" in text and f"//chdir={pytester.path}" in text


KILL_GW1 = """
import os
import signal

sent = []


def pytest_replay_request(request, exchange, state):
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw1":
        sent.append(exchange.index)
        if len(sent) == 10:  # mid-replay: nine requests of its part sent
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_killed_mid_replay_fails_the_run_naming_it_and_its_connections(pytester: pytest.Pytester) -> None:
    from pytest_replay.capture import load
    from pytest_replay.distribute import worker_part

    shutil.copy(DEMO, pytester.path / "demo.pcap")
    pytester.makeconftest(KILL_GW1)
    exchanges = load(str(DEMO))[0]
    held = sorted({e.connection for e in exchanges if worker_part(e.connection, 3) == 1})
    lost = sum(worker_part(e.connection, 3) == 1 for e in exchanges)
    with _demo_server() as url:
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--replay", "demo.pcap", "--replay-target", url, "--speed", "0",
            "--replay-writes", "pass", "--replay-report", "evidence", "-n", "3", timeout=300)
    text = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text[-3000:]
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == lost and outcomes["passed"] == 259 - lost, text[-3000:]
    assert "worker gw1 (popen (this machine)) died during the replay" in text
    assert f"{lost} replay item(s) of the {len(held)} connection(s) it held not judged: {held[0]}" in text
    # the rest of the evidence is written: what the other workers did, and why the rest is missing
    [evidence] = (pytester.path / "evidence").glob("*.json")
    data = json.loads(evidence.read_text())
    assert data["errors"]["requests"] == 259 - lost and data["diff"]["failed"] == 0
    assert data["run"]["planned"] == 259 and data["run"]["interrupted"] is True
    assert any("worker gw1" in note and held[-1] in note for note in data["known_gaps"])


def test_worker_clocks_survive_the_merge_of_shards() -> None:
    from pytest_replay.report.aggregate import Aggregate
    from pytest_replay.report.evidence import build_evidence, merge_evidence

    def shard(k: int) -> dict:
        worker = {"worker": "gw0", "host": f"ssh host{k}", "offset_ms": 0.5 * k, "uncertainty_ms": 0.1, "samples": 8}
        return build_evidence(aggregate=Aggregate(), shard=(k, 2), workers=[worker])

    first, second = shard(1), shard(2)
    assert first["run"]["workers"][0]["host"] == "ssh host1"
    merged, _ = merge_evidence([("a.json", first), ("b.json", second)])
    assert [(w["host"], w["offset_ms"], w["shard"]) for w in merged["run"]["workers"]] == [
        ("ssh host1", 0.5, {"index": 1, "count": 2}), ("ssh host2", 1.0, {"index": 2, "count": 2})]
