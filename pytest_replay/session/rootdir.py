"""pytest finds its rootdir, its ini file and its first conftest.py files before it loads plugins, so
it reads the value of `--replay /elsewhere/incident.gor` (and of any of our `--flag VALUE` naming an
existing path) as a test path: a capture outside the project moves the configuration next to the
capture. The project's ini file (budgets, noise rules, the target) and its conftest.py (a replay_target
fixture, hooks) are then silently ignored, and a gate that should fail passes. This module finds that
case and stops the run, saying how to write the value so pytest leaves it alone (`--replay=PATH`)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

from .. import options


def check(config: pytest.Config) -> None:
    """Raise a UsageError when pytest's ini file differs from the one it would have found without
    reading our options' values as test paths, or its rootdir does so that a conftest.py's fixtures no
    longer reach the capture's items."""
    taken = _values_taken_for_paths(config)
    if not taken:
        return
    expected = _expected_setup(config)
    if expected is None:  # a pytest whose determine_setup we cannot call: no check rather than a wrong one
        return
    rootpath, inipath = expected
    ignored = [f"the ini file {inipath}"] if inipath and inipath != config.inipath else []
    if rootpath != config.rootpath:
        # a conftest.py's fixtures (a replay_target) reach only the items under its directory when that
        # directory lies below the rootdir (at it or outside it, they reach every item): a conftest.py
        # here or above, up to the rootdir pytest should have taken, that the rootdir it took puts below
        # it, no longer reaches the captures' items unless a capture lies under it
        where = Path(config.invocation_params.dir)
        captures = [Path(os.path.abspath(where / value)) for flag, value in taken if flag == "--replay"]
        for path in _conftests(where, rootpath):
            scope = path.parent
            if config.rootpath in scope.parents and not any(scope in capture.parents for capture in captures):
                ignored.append(f"the fixtures of {path}")
    if not ignored:  # at most the rootdir moved (item ids are relative to it), or the capture's own
        return       # project's ini is read where this directory has none: nothing of this project ignored
    flags = " ".join(f"{flag} {value}" for flag, value in taken)
    fixed = " ".join(f"{flag}={value}" for flag, value in taken)
    took = f"rootdir {config.rootpath} and " + (f"the ini file {config.inipath}" if config.inipath else "no ini file")
    raise pytest.UsageError(
        f"pytest read `{flags}` as a test path when it looked for its configuration (it does that before it "
        f"loads plugins) and took {took}: this run would ignore {' and '.join(ignored)}, with the replay "
        f"settings there (target, budgets, noise rules, hooks). Write the value with '=' ({fixed}): pytest "
        f"leaves that form alone")


def _values_taken_for_paths(config: pytest.Config) -> list[tuple[str, str]]:
    """Our `--flag VALUE` pairs (space form) whose value names an existing path, as given."""
    flags = {option.flag for option in options.OPTIONS if not option.flag_only}
    args = list(config.invocation_params.args)
    where = Path(config.invocation_params.dir)
    return [(flag, value) for flag, value in zip(args, args[1:])
            if flag in flags and not value.startswith("-") and _exists(where / value)]


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a permission: not a path pytest would have taken
        return False


def _expected_setup(config: pytest.Config) -> tuple[Path, Path | None] | None:
    """(rootpath, inipath) as pytest finds them from the test paths it was really given."""
    from _pytest.config import findpaths

    given = {"inifile": config.option.inifilename, "override_ini": config.option.override_ini,
             "args": [str(arg) for arg in config.option.file_or_dir or []],
             "rootdir_cmd_arg": config.option.rootdir or None,
             "invocation_dir": Path(config.invocation_params.dir)}
    try:
        accepted = inspect.signature(findpaths.determine_setup).parameters
        found = findpaths.determine_setup(**{name: value for name, value in given.items() if name in accepted})
    except Exception:  # noqa: BLE001 (pytest's internals changed: skip the check, never stop a run on it)
        return None
    return Path(found[0]), (Path(found[1]) if found[1] else None)


def _conftests(start: Path, root: Path) -> list[Path]:
    """conftest.py files in `start` and its parents up to `root` (the rootdir pytest would have had)."""
    found = []
    for directory in (start, *start.parents):
        if (directory / "conftest.py").is_file():
            found.append(directory / "conftest.py")
        if directory == root or root not in directory.parents:
            break
    return found
