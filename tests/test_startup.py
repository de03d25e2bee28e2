"""pytest start-up with the plugin installed but unused (issue 13.5): importing the plugin imports
pytest_replay, its options and its hooks, nothing else of ours and nothing heavy (httpx, hdrh, the
capture readers, the xdist roles, the vocabularies' StrEnums: each imported once replay is on); and
`pytest --help` still shows every option of options.OPTIONS as declared there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import DEMO

from pytest_replay import options

# What importing the plugin may import: the package, the plugin module and the options it registers;
# a pytest run adds the hook specifications (pytest_addhooks), which conftest.py files may implement.
PLUGIN_IMPORTS = ["pytest_replay", "pytest_replay.options", "pytest_replay.plugin"]
RUN_IMPORTS = sorted([*PLUGIN_IMPORTS, "pytest_replay.hookspecs"])
PRELOADED = "import pytest, json, _pytest.cacheprovider"  # as a pytest start-up has them first


def test_importing_the_plugin_imports_only_its_options() -> None:
    code = (f"import sys; {PRELOADED}; before = set(sys.modules); import pytest_replay.plugin; "
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == PLUGIN_IMPORTS


CONFTEST = """
import json, sys

def pytest_unconfigure(config):
    with open(config.rootpath / "modules-{tag}.json", "w") as f:
        json.dump(sorted(sys.modules), f)
"""


INI = """[pytest]
replay_speed = 2
replay_concurrency = 8
replay_budget =
    p95<200ms
    GET /api/users/*: 5xx<1%
replay_abort_on = p99>2s
replay_group = endpoint
replay_ignore = {ignore}
replay_sample = header:X-User-Id:10%
"""


def _modules_of_a_run(pytester: pytest.Pytester, tag: str, *args: str) -> set[str]:
    pytester.makeconftest(CONFTEST.format(tag=tag))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)
    return set(json.loads((pytester.path / f"modules-{tag}.json").read_text()))


def test_a_run_without_replay_imports_nothing_more_than_the_plugin_module(pytester: pytest.Pytester) -> None:
    """End to end: a whole pytest run (options registered and loaded, every hook called) with the
    plugin installed but unused imports the same modules as with the plugin disabled, but the three
    of RUN_IMPORTS."""
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    # a project's ini holding its gate's settings, replay off in this run: their parsers (budgets,
    # stages, noise rules, samplers; ~15 modules of ours, tens of ms) wait for a run with --replay
    pytester.makeini(INI.format(ignore="json:$.meta.now"))
    with_plugin = _modules_of_a_run(pytester, "with")
    without = _modules_of_a_run(pytester, "without", "-p", "no:traffic_replay")
    assert "pytest_replay.plugin" in with_plugin and "pytest_replay" not in without
    assert sorted(with_plugin - without) == RUN_IMPORTS


def test_a_bad_ini_value_stops_the_runs_that_replay_and_a_bad_flag_stops_any(pytester: pytest.Pytester) -> None:
    """With replay off the ini's values are not parsed (above), so a bad one stops only the runs that
    replay, naming the option and what it accepts; a value given on the command line is always checked."""
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    pytester.makeini(INI.format(ignore="nonsense"))
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    capture = pytester.path / "demo.pcap"  # inside the rootdir: pytest takes it from the paths it is given
    capture.write_bytes(DEMO.read_bytes())
    replaying = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture))
    assert replaying.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --replay-ignore: invalid ignore rule 'nonsense': no rule kind; accepted forms:" in replaying.stderr.str()
    flag = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay-budget", "p95<fast")
    assert flag.ret == pytest.ExitCode.USAGE_ERROR
    assert "ERROR: --replay-budget: invalid budget 'p95<fast'" in flag.stderr.str()


def test_a_run_with_replay_imports_the_vocabularies_and_the_session() -> None:
    """The other side of the lazy imports: a value that needs the vocabularies gets their member."""
    code = (f"{PRELOADED}; import sys; from pytest_replay import options; "
            "value = options.BY_DEST['replay_group'].convert('endpoint'); "
            "print(type(value).__name__, value, 'pytest_replay.vocab' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Group", "endpoint", "True"]


def _flag_line(option: options.Option) -> str:
    if option.flag_only:
        return option.flag
    return f"{option.flag}={option.metavar or option.dest.upper()}"


def test_help_shows_every_option_as_declared(pytester: pytest.Pytester) -> None:
    """Every flag with its metavar and its help, and every ini twin with its type and the same help,
    word for word (a wide terminal: argparse does not wrap). pytest shows the ini twin's help as given
    ('5xx>5%%' stays doubled there)."""
    env = {**os.environ, "COLUMNS": "100000"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--help"], cwd=pytester.path,
                         env=env, capture_output=True, text=True, check=True).stdout
    text = " ".join(out.split())
    for option in options.OPTIONS:
        help_text = " ".join(option.help.split())
        assert f" {_flag_line(option)} {help_text.replace('%%', '%')}" in text, option.flag  # argparse's %-format
        kind = "bool" if option.flag_only else "linelist" if option.many else "string"
        assert f" {option.ini} ({kind}): {help_text}" in text, option.ini
    assert text.count(" --replay") + text.count(" --speed=") + text.count(" --rate=") >= len(options.OPTIONS)


def test_options_are_frozen_and_compare_by_value() -> None:
    option = options.BY_DEST["replay_speed"]
    with pytest.raises(AttributeError):
        option.flag = "--pace"  # type: ignore[misc]
    assert option == options.Option(option.dest, option.flag, option.help, option.default, option.convert,
                                    metavar=option.metavar)
    assert hash(option) == hash(options.Option(option.dest, option.flag, option.help, option.default,
                                               option.convert, metavar=option.metavar))
    assert repr(option).startswith("Option(dest='replay_speed', flag='--speed', ")


def test_noise_thresholds_are_checked_percentages(pytester: pytest.Pytester) -> None:
    """--replay-noise-relative / --replay-noise-absolute were an INTERNALERROR (their converter
    called _number with arguments it does not take) for every value, good or bad."""
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    good = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay-noise-relative", "10",
                                         "--replay-noise-absolute", "0.5%")
    good.assert_outcomes(passed=1)
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay-noise-relative", "x")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    err = bad.stderr.str()
    assert "--replay-noise-relative: expected a number from 0 to 100 (a percentage, e.g. 20 or 0.03%), got 'x'" in err
    assert "Traceback" not in err and "INTERNALERROR" not in bad.stdout.str() + err
    assert options.BY_DEST["replay_noise_absolute"].convert(" 0.03% ") == 0.03


def test_bench_startup_measures_against_a_base_tree(tmp_path: Path) -> None:
    """bench/bench_startup.py --against DIR runs a base tree (a `git archive`) with PYTHONPATH in the
    same run; a directory that is not such a tree is refused before anything is measured."""
    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_startup.py"
    out = subprocess.run([sys.executable, str(bench), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--against DIR" in out
    done = subprocess.run([sys.executable, str(bench), "--against", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert f"--against {tmp_path}: expected a tree with pytest_replay/plugin.py" in done.stderr
