"""The plugin's state for one pytest run: one object per role, routed to by plugin.py's hooks.

- `Collection` (collection.py): captures -> test items: loading, filters, shards, markers, the
  target check. Its items (items.py) are the exchanges, or groups of them.
- `ReplayRun` (run.py): the engine's lifecycle, each item's wait and verdict, what the run did
  (`RunResults`), with the progress line (progress.py) while items wait.
- `Reporting` (reporting.py): budgets, the evidence package and the terminal summary; registered in
  the process that reports (a single process, or the xdist controller), never in a worker.
- `Controller` and `Worker` (xdist.py): registered only under pytest-xdist. The controller hands out
  partitions (scheduler.py) and merges the workers' `RunResults`; a worker starts at the shared
  instant and ships its results. What crosses between them is `WorkerSetup` and `RunResults`.
"""

from __future__ import annotations

from .collection import Collection, clashing_plugin
from .run import ReplayRun

__all__ = ["Collection", "ReplayRun", "clashing_plugin"]
