"""pytest start-up with the plugin installed but unused (no --replay), beside the same pytest with the
plugin disabled (-p no:traffic_replay) in the same run; and `python -X importtime` of the plugin module.

    python bench/bench_startup.py [--runs N]

Target (issue 13.5): the plugin costs pytest's start-up at most 5 ms when replay is off.
Exits non-zero when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_MS = 5.0


def _pytest_ms(cwd: str, extra: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *extra],
                   cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - start) * 1000


def _importtime_us(env: dict) -> int:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pytest; import pytest_replay.plugin"],
                         env=env, capture_output=True, text=True, check=True).stderr
    line = next(line for line in out.splitlines() if line.rstrip().endswith("| pytest_replay.plugin"))
    return int(line.split("|")[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="pytest start-ups of each kind (interleaved)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": ""}  # users' installs have bytecode: measure with it
    env.pop("PYTEST_ADDOPTS", None)
    with tempfile.TemporaryDirectory() as cwd:
        with open(os.path.join(cwd, "test_one.py"), "w") as f:
            f.write("def test_one():\n    pass\n")
        _pytest_ms(cwd, [], env)  # write bytecode, warm the file cache
        with_plugin, without = [], []
        for _ in range(args.runs):  # interleaved: both see the same machine load
            with_plugin.append(_pytest_ms(cwd, [], env))
            without.append(_pytest_ms(cwd, ["-p", "no:traffic_replay"], env))
    imports = sorted(_importtime_us(env) for _ in range(9))
    cost = statistics.median(with_plugin) - statistics.median(without)
    print(f"pytest --collect-only, 1 test, median of {args.runs}: with the plugin {statistics.median(with_plugin):.1f} ms, "
          f"-p no:traffic_replay {statistics.median(without):.1f} ms (reference, same run)")
    print(f"plugin cost at start-up: {cost:+.1f} ms (target <= {TARGET_MS:g} ms): {'PASS' if cost <= TARGET_MS else 'FAIL'}")
    print(f"python -X importtime pytest_replay.plugin (cumulative, after pytest): median {imports[4] / 1000:.2f} ms")
    return 0 if cost <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
