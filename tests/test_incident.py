"""Reproducing an incident locally: --replay-window, --replay-connection, `show`, and --pdb with the
exchange's values at hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pytest_replay.capture import Capture
from pytest_replay.policy.filters import parse_window

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "captures" / "demo" / "demo.pcap"


def replay(pytester: pytest.Pytester, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(DEMO), "--replay-target", "demo",
                                         "--speed", "0", "-q", *args, timeout=300)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_replay", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def exchanges():
    return list(Capture([str(DEMO)]))


def _iso(ns: int) -> str:  # as inspect prints times
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def test_window_by_offsets_and_by_absolute_times(pytester: pytest.Pytester, exchanges) -> None:
    first = min(e.request_ts_ns for e in exchanges)
    inside = [e for e in exchanges if first + 2_000_000_000 <= e.request_ts_ns < first + 3_000_000_000]
    assert 0 < len(inside) < len(exchanges)
    result = replay(pytester, "--replay-window", "+2s..+3s")
    result.assert_outcomes(passed=len(inside), deselected=len(exchanges) - len(inside))
    start, end = first + 2_000_000_000, first + 3_000_000_000
    result = replay(pytester, "--replay-window", f"{_iso(start)}..{_iso(end)}")
    result.assert_outcomes(passed=len(inside), deselected=len(exchanges) - len(inside))
    later = [e for e in exchanges if e.request_ts_ns >= first + 7_000_000_000]
    result = replay(pytester, "--replay-window", "+7000ms..")
    assert result.parseoutcomes()["deselected"] == len(exchanges) - len(later)


@pytest.mark.parametrize("text", ["+2s", "yesterday..+3s", "+3s..+2s", "..", "+2x..+3s"])
def test_window_usage_error_names_the_accepted_forms(pytester: pytest.Pytester, text: str) -> None:
    result = replay(pytester, "--replay-window", text)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--replay-window" in err and ("+600s..+660s" in err or "ends before it starts" in err)


def test_window_parses_both_forms() -> None:
    window = parse_window("+600s..+660s")
    assert window.bounds(1_000) == (1_000 + 600 * 10**9, 1_000 + 660 * 10**9)
    start, end = parse_window("2026-11-27T10:44:45.300+00:00..2026-11-27T10:44:46").bounds(0)
    assert start == 1795776285_300_000_000 and end == 1795776286_000_000_000


def test_connection_selects_its_exchanges(pytester: pytest.Pytester, exchanges) -> None:
    out = cli("inspect", "--json", str(DEMO)).stdout.splitlines()
    rows = [json.loads(line) for line in out if '"index"' in line]
    names = sorted({row["connection"] for row in rows})
    chosen = names[:2]
    mine = [row for row in rows if row["connection"] in chosen]
    args = [arg for name in chosen for arg in ("--replay-connection", name)]
    result = replay(pytester, *args)
    result.assert_outcomes(passed=len(mine), deselected=len(rows) - len(mine))


def test_show_prints_one_exchange_whole_and_masked() -> None:
    result = cli("show", str(DEMO), "#105")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("#105 GET /api/orders/1001\n")
    assert "--- request ---\nGET /api/orders/1001 HTTP/1.1" in text
    assert "Authorization: Bearer REDACTED-" in text and "Cookie: session=REDACTED-" in text
    assert "--- response ---\nHTTP/1.1 200 OK" in text and '"status": "paid"' in text
    login = cli("show", str(DEMO), "7").stdout
    assert '"password": "REDACTED-' in login and '"username": "erin"' in login


def test_show_an_index_that_does_not_exist_is_a_one_line_error() -> None:
    result = cli("show", str(DEMO), "#999")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"show: no exchange #999 in {DEMO} (it holds exchanges #0 to #258)"]


def test_pdb_stops_with_the_exchange_values_as_locals(tmp_path: Path) -> None:
    commands = "p request.target\np recorded.status\np replayed.status\np type(diff).__name__\nc\n"
    env = {**os.environ, "DEMO_REGRESSION": "bug"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--replay", str(DEMO),
                             "--replay-target", "demo", "--speed", "0", "-q", "--pdb", "-k", "orders/1001"],
                            input=commands, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    out = result.stdout
    assert "(Pdb) '/api/orders/1001'\n(Pdb) 200\n(Pdb) 404\n(Pdb) 'tuple'" in out, out[-3000:]
    assert result.returncode == 1


def test_an_empty_selection_says_why(pytester: pytest.Pytester) -> None:
    result = replay(pytester, "--replay-window", "+100s..", "--replay-connection", "1.2.3.4:5 -> 6.7.8.9:80")
    result.stdout.fnmatch_lines([
        "note: --replay-connection: '1.2.3.4:5 -> 6.7.8.9:80' not in the capture*inspect --json*",
        "note: --replay-window +100s.. selects no exchange: the capture spans 2026-11-27T10:44:45.300+00:00 .. *"])
