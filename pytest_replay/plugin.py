"""pytest hooks: each a few lines, routing to the role objects of session/ (the run is kept in
config.stash; the reporting, controller and worker roles are registered as plugins of their own)."""

from __future__ import annotations

import os

import pytest

from . import options
from .policy.redact import Redactor
from .session import Collection, ReplayRun, clashing_plugin
from .session.items import ReplayItem
from .session.progress import Progress
from .session.reporting import Reporting
from .session.xdist import Controller, Worker, is_controller, worker_setup

RUN = pytest.StashKey[ReplayRun]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    clash = clashing_plugin()
    # With ESSS's pytest-replay installed, its --replay flag would collide with ours in argparse:
    # register everything else so the command line still parses, then stop in pytest_configure.
    options.register(parser, skip=("--replay",) if clash else ())


def pytest_configure(config: pytest.Config) -> None:
    clash = clashing_plugin()
    if clash:
        raise pytest.UsageError(clash)
    settings = options.load(config)
    if not settings.enabled:
        return
    setup = worker_setup(config)
    # Stand-ins are keyed per run (an unkeyed short hash of a card number can be reversed by trying
    # candidates); xdist workers get the controller's key so they agree.
    key = setup.redaction_key if setup else os.urandom(16).hex()
    redactor = Redactor(settings.secret_headers, settings.secret_params,
                        allow_headers=settings.show_headers or None, allow_fields=settings.show_fields or None,
                        key=key)
    controller = is_controller(config)
    collection = Collection(config, settings, redactor, distributed=controller)
    run = config.stash[RUN] = ReplayRun(config, settings, collection, redactor,
                                        Progress(config, worker=setup is not None,
                                                 unscheduled=settings.speed == 0 and not settings.rate))
    if setup is not None:
        config.pluginmanager.register(Worker(run, setup), "pytest-replay-worker")
        return
    config.pluginmanager.register(Reporting(run), "pytest-replay-reporting")
    if controller:
        config.pluginmanager.register(Controller(run, redaction_key=key), "pytest-replay-controller")


def _run(config: pytest.Config) -> ReplayRun | None:
    return config.stash.get(RUN, None)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    run = _run(config)
    return run.collection.header_lines() if run else None


def pytest_collect_file(file_path, parent):
    run = _run(parent.config)
    return run.collection.collect_file(file_path, parent, run) if run else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    run = _run(config)
    if run:
        run.collection.filter_items(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    run = _run(session.config)
    if run:
        run.collection.check_target(session)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    if isinstance(item, ReplayItem):
        item.own_duration(report)
    return report


@pytest.fixture(scope="session")
def replay_target(request: pytest.FixtureRequest):
    """Where captured requests go: the --replay-target option (or the ini's replay_target) by
    default. Override it in conftest.py to return a URL, an ASGI or WSGI app, or an
    httpx.AsyncClient (for example a client bound to your app with extra headers)."""
    return request.config.stash[RUN].settings.target


@pytest.fixture(scope="session")
def replay_outbound():
    """The respx router answering an in-process app's own outbound httpx calls during the replay.
    Extend it in conftest.py (a call without a route fails the exchange that made it, and nothing
    leaves the process)::

        @pytest.fixture(scope="session")
        def replay_outbound(replay_outbound):
            replay_outbound.post("https://payments.example/charge").respond(201, json={"id": "ch_1"})
            return replay_outbound
    """
    import respx

    return respx.MockRouter(assert_all_called=False, assert_all_mocked=True)


@pytest.fixture(scope="session")
def replay_engine(request: pytest.FixtureRequest, replay_target):
    """The running replay: started once, before the first replay item, with every selected item's
    exchange on its schedule; items wait for their own observation."""
    run = request.config.stash[RUN]
    cli_target = request.config.getoption("replay_target")  # the command line wins over a conftest fixture
    engine = run.start_engine(cli_target if cli_target is not None else replay_target, request.session.items,
                              outbound=lambda: request.getfixturevalue("replay_outbound"))
    if run.settings.judge == "after":
        run.wait_for_replay(engine)
    yield engine
    # -x / --maxfail: pytest tears the session down after the failing item; the rest is not replayed
    stopping = bool(request.session.shouldfail or request.session.shouldstop)
    run.stop_engine(cancel=stopping)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session):
    try:
        return (yield)
    finally:
        run = _run(session.config)
        if run:
            run.stop_engine(cancel=True)


def pytest_keyboard_interrupt(excinfo) -> None:
    for run in ReplayRun.running():
        run.stop_engine(cancel=True)


__all__ = ["ReplayItem"]
