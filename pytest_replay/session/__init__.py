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

import os

import pytest

from ..options import Settings
from ..policy.redact import Redactor
from . import rootdir
from .collection import Collection
from .items import ItemDurations
from .progress import Progress
from .reporting import Reporting
from .run import ReplayRun, unscheduled
from .xdist import Controller, Worker, is_controller, worker_setup


def start(config: pytest.Config, settings: Settings) -> ReplayRun:
    """Make the run's objects and register the roles this process plays."""
    setup = worker_setup(config)
    if setup is None:  # (workers are handed `--flag=VALUE` and the controller's rootdir)
        rootdir.check(config)
    # Stand-ins are keyed per run (an unkeyed short hash of a card number can be reversed by trying
    # candidates); xdist workers get the controller's key so they agree.
    key = setup.redaction_key if setup else os.urandom(16).hex()
    redactor = Redactor(settings.secret_headers, settings.secret_params,
                        allow_headers=settings.show_headers or None, allow_fields=settings.show_fields or None,
                        key=key)
    controller = is_controller(config)
    collection = Collection(config, settings, redactor, distributed=controller, worker=setup is not None)
    run = ReplayRun(config, settings, collection, redactor,
                    Progress(config, worker=setup is not None, every_s=settings.progress_every,
                             unscheduled=unscheduled(settings)))
    config.pluginmanager.register(ItemDurations(), "pytest-replay-item-durations")
    from . import html_extras

    extras = html_extras.active(config)  # pytest-html's --html: extras and a summary in its report
    if setup is not None:
        config.pluginmanager.register(Worker(run, setup), "pytest-replay-worker")
        if extras:
            config.pluginmanager.register(html_extras.HtmlExtras(), "pytest-replay-html-extras")
        return run
    reporting = Reporting(run)
    config.pluginmanager.register(reporting, "pytest-replay-reporting")
    if extras:
        config.pluginmanager.register(html_extras.HtmlExtras(reporting), "pytest-replay-html-extras")
    if controller:
        config.pluginmanager.register(Controller(run, redaction_key=key), "pytest-replay-controller")
    return run


__all__ = ["Collection", "ReplayRun", "start"]
