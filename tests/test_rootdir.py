"""A capture outside the project: pytest finds its rootdir, ini file and first conftest.py files before
it loads plugins, so it reads the value of `--replay /elsewhere/incident.gor` as a test path and takes
its configuration from next to the capture. The project's ini file (its budgets) and conftest.py (its
replay_target fixture) were then silently ignored: a gate that should fail passed. End to end, in a
project directory with the capture elsewhere, as a CI job has it (the capture an artifact, not in the
repository)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import DEMO

INI = "[pytest]\nreplay_target = demo\nreplay_budget = p95<1us\n"  # a budget no service meets: the run fails
CONFTEST = ("import pytest\n\n@pytest.fixture(scope='session')\ndef replay_target():\n"
            "    return 'demo'\n")


def _layout(root: Path, **project_files: str) -> tuple[Path, Path]:
    project, elsewhere = root / "project", root / "artifacts"
    project.mkdir()
    elsewhere.mkdir()
    for name, text in project_files.items():
        (project / name).write_text(text)
    capture = elsewhere / "incident.pcap"
    capture.write_bytes(DEMO.read_bytes())
    return project, capture


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--speed", "0", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_projects_ini_file_is_not_silently_ignored(tmp_path: Path) -> None:
    project, capture = _layout(tmp_path, **{"pytest.ini": INI})
    spaced = _pytest(project, "--replay", str(capture))
    assert spaced.returncode == pytest.ExitCode.USAGE_ERROR, spaced.stdout + spaced.stderr  # was 0: budget ignored
    assert spaced.stderr.strip() == (
        f"ERROR: pytest read `--replay {capture}` as a test path when it looked for its configuration (it does "
        f"that before it loads plugins) and took rootdir {tmp_path} and no ini file: this run would ignore the "
        f"ini file {project / 'pytest.ini'}, with the replay settings there (target, budgets, noise rules, "
        f"hooks). Write the value with '=' (--replay={capture}): pytest leaves that form alone")
    joined = _pytest(project, f"--replay={capture}")  # the form the message gives: the budget applies
    assert joined.returncode == 1, joined.stdout
    assert f"rootdir: {project}" in joined.stdout and "FAIL p95<1us: " in joined.stdout
    assert "259 passed" in joined.stdout


def test_the_projects_conftest_fixture_is_not_silently_ignored(tmp_path: Path) -> None:
    project, capture = _layout(tmp_path, **{"conftest.py": CONFTEST})
    spaced = _pytest(project, "--replay", str(capture), "--replay-report", str(tmp_path))  # two paths taken
    assert spaced.returncode == pytest.ExitCode.USAGE_ERROR
    assert (f"pytest read `--replay {capture} --replay-report {tmp_path}` as a test path" in spaced.stderr
            and f"this run would ignore the fixtures of {project / 'conftest.py'}, with" in spaced.stderr
            and f"(--replay={capture} --replay-report={tmp_path})" in spaced.stderr), spaced.stderr
    joined = _pytest(project, f"--replay={capture}", f"--replay-report={tmp_path}")
    assert joined.returncode == 0 and "259 passed" in joined.stdout, joined.stdout + joined.stderr


def test_nothing_to_ignore_and_a_capture_inside_the_project_replay_as_before(tmp_path: Path) -> None:
    bare, capture = _layout(tmp_path)  # no ini file, no conftest.py: only the rootdir moves
    alone = _pytest(bare, "--replay", str(capture), "--replay-target", "demo")
    assert alone.returncode == 0 and "259 passed" in alone.stdout, alone.stdout + alone.stderr
    inside = bare / "captures"
    inside.mkdir()
    (inside / "incident.pcap").write_bytes(DEMO.read_bytes())
    (bare / "pytest.ini").write_text(INI)
    gated = _pytest(bare, "--replay", "captures/incident.pcap")  # the README's form: pytest finds the same ini
    assert gated.returncode == 1 and "FAIL p95<1us: " in gated.stdout, gated.stdout + gated.stderr
