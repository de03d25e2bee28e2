"""python -m pytest_replay inspect | convert, run as a user runs them (a subprocess)."""

from __future__ import annotations

import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
from support import DEMO, FIXTURES, ROOT

from pytest_replay.capture import load



def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_replay", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_inspect_prints_the_health_summary() -> None:
    result = run("inspect", str(DEMO))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "exchanges: 259 (259 complete, 0 incomplete)" in out
    assert "connections: 12" in out
    assert "GET /api/products/{id}" in out  # endpoint mix by path template
    assert "gaps: 0 (0 bytes missing)" in out


def test_inspect_json_lines() -> None:
    result = run("inspect", "--json", str(FIXTURES / "crafted" / "incomplete_endings.pcap"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    *exchanges, last = lines
    required = {"index", "connection", "method", "target", "status", "request_body_bytes", "response_body_bytes",
                "request_ts_ns", "response_ts_ns", "recorded_latency_ns", "complete", "reasons"}
    assert all(required <= set(line) for line in exchanges)
    assert [e["index"] for e in exchanges] == list(range(len(exchanges)))
    assert exchanges[0]["status"] is None and exchanges[0]["recorded_latency_ns"] is None
    assert exchanges[0]["reasons"][0].startswith("no-response")
    summary = last["summary"]
    assert summary["exchanges"] == len(exchanges)
    assert summary["incomplete"] == sum(not e["complete"] for e in exchanges)


def test_inspect_json_masks_token_query_parameters(tmp_path: Path) -> None:
    secret = "s3cr3t-token-value-123"
    gor = tmp_path / "t.gor"
    gor.write_bytes(f"1 {'a' * 24} 1700000000000000000 -1\nGET /cb?access_token={secret}&page=2 HTTP/1.1\r\n"
                    f"Host: x\r\nAuthorization: Bearer {secret}\r\n\r\n".encode() + "\n🐵🙈🙉\n".encode())
    result = run("inspect", "--json", str(gor))
    assert result.returncode == 0
    assert secret not in result.stdout and secret not in result.stderr
    assert json.loads(result.stdout.splitlines()[0])["target"].startswith("/cb?access_token=REDACTED-")
    assert secret not in run("inspect", str(gor)).stdout


@pytest.mark.parametrize("content, expected", [
    (None, "no such file or directory"),
    (b"", "the file is empty"),
    (b"\x00\x01garbage" * 10, "not a capture file"),
    (b"\xa1\xb2\xcd\x34" + bytes(60), "a 'modified' (Kuznetzov) pcap, an old tcpdump variant: convert it with"),
    (lzma.compress(b"x" * 100), "xz-compressed: decompress it first"),
    (b"BZh91AY&SY" + bytes(60), "bzip2-compressed: decompress it first"),
])
def test_inspect_bad_input_is_one_clear_line(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "bad.pcap"
    if content is not None:
        path.write_bytes(content)
    result = run("inspect", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {path}") and expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["convert", "redact"])
def test_an_output_that_cannot_be_written_is_one_clear_line(tmp_path: Path, command: str) -> None:
    out = tmp_path / "missing-directory" / ("out.gor" if command == "convert" else "out.pcap")
    result = run(command, str(DEMO), str(out))
    assert result.returncode == 1
    assert result.stderr == f"error: {out}: cannot write: No such file or directory\n"


@pytest.mark.parametrize("source", [DEMO, FIXTURES / "recorded" / "chunked_uvicorn.pcap",
                                    FIXTURES / "crafted" / "incomplete_endings.pcap"], ids=lambda p: p.name)
@pytest.mark.parametrize("suffix", [".gor", ".gor.gz"])
def test_convert_round_trip(tmp_path: Path, source: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    result = run("convert", str(source), str(out))
    assert result.returncode == 0, result.stderr
    original, _ = load(str(source))
    converted, stats = load(str(out))
    replayable = [e for e in original if e.replayable]
    assert f"{len(replayable)} exchanges" in result.stdout
    assert len(converted) == len(replayable)
    by_conn: dict[str, str] = {}
    for before, after in zip(replayable, converted):
        assert after.request.raw == before.request.raw
        assert after.request_ts_ns == before.request_ts_ns
        assert after.position == before.position
        assert by_conn.setdefault(before.connection, after.connection) == after.connection
        if before.response is not None and not any(f.part == "response" for f in before.flags):
            assert after.response.raw == before.response.raw
            assert after.response.body == before.response.body
            assert after.recorded_latency_ns == before.recorded_latency_ns
        else:
            assert after.response is None
    assert not stats.warnings


def test_convert_needs_an_output(tmp_path: Path) -> None:
    result = run("convert", str(DEMO))
    assert result.returncode == 2 and "output" in result.stderr
