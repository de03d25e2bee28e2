"""pytest hooks: each a few lines, routing to the role objects of session/ (the run is kept in
config.stash; the reporting, controller and worker roles are registered as plugins of their own).

Installed but unused (no --replay), the plugin imports nothing heavy: session/ and everything
below it are imported when replay is on."""

from __future__ import annotations

import sys

import pytest

from . import options
from .options import clashing_plugin

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .session import ReplayRun

RUN: pytest.StashKey[ReplayRun] = pytest.StashKey()  # not StashKey["ReplayRun"](): subscripting costs 60 us


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
    if settings is None:  # no --replay
        return
    from .session import start

    config.stash[RUN] = start(config, settings)


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


def pytest_report_collectionfinish(config: pytest.Config, items: list) -> list[str] | None:
    run = _run(config)
    return run.http_version_lines(items) if run else None


@pytest.fixture(scope="session")
def replay_target(request: pytest.FixtureRequest):
    """Where captured requests go: the --replay-target option (or the ini's replay_target) by
    default. Override it in conftest.py to return a URL, an ASGI or WSGI app, or an
    httpx.AsyncClient (for example a client bound to your app with extra headers)."""
    return request.config.stash[RUN].settings.target


@pytest.fixture(scope="session")
def replay_baseline(request: pytest.FixtureRequest):
    """The live baseline to judge against (a known-good version, e.g. the last release): the
    --replay-baseline option (or the ini's replay_baseline) by default, None to judge against the
    recording. Override it in conftest.py like replay_target."""
    return request.config.stash[RUN].settings.baseline


@pytest.fixture(scope="session")
def replay_server():
    """Start ASGI/WSGI apps in subprocess servers on 127.0.0.1 for the session (e.g. the baseline,
    when it is another version of the target's own package): `replay_server("asgi:shop.asgi:application",
    path=["../release"], env={"DJANGO_SETTINGS_MODULE": "shop.settings"})` returns its URL once it
    answers; a clear error with the app's output if it does not start; stopped at the session's end::

        @pytest.fixture(scope="session")
        def replay_baseline(replay_server):
            return replay_server("asgi:shop.asgi:application", path=["../release"])
    """
    from .serving import ServeError, Servers

    with Servers() as servers:
        def start(app: str, **options):
            try:
                return servers.start(app, **options)
            except ServeError as exc:  # the app's own output, without this fixture's traceback
                pytest.fail(str(exc), pytrace=False)
        yield start


@pytest.fixture(scope="session")
def replay_outbound():
    """The respx router answering an in-process app's own outbound httpx calls during the replay.
    Extend it in conftest.py (a call without a route, to a host not allowed with --replay-allow-host,
    fails the exchange that made it, and nothing leaves the process; other libraries' calls are
    blocked at socket level)::

        @pytest.fixture(scope="session")
        def replay_outbound(replay_outbound):
            replay_outbound.post("https://payments.example/charge").respond(201, json={"id": "ch_1"})
            return replay_outbound
    """
    import respx

    return respx.MockRouter(assert_all_called=False, assert_all_mocked=True)


@pytest.fixture(scope="session")
def replay_engine(request: pytest.FixtureRequest, replay_target, replay_baseline):
    """The running replay: started once, before the first replay item, with every selected item's
    exchange on its schedule; items wait for their own observation."""
    run = request.config.stash[RUN]
    cli_target = request.config.getoption("replay_target")  # the command line wins over a conftest fixture
    cli_baseline = request.config.getoption("replay_baseline")
    engine = run.start_engine(cli_target if cli_target is not None else replay_target, request.session.items,
                              outbound=lambda: request.getfixturevalue("replay_outbound"),
                              baseline=cli_baseline if cli_baseline is not None else replay_baseline)
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
    run_module = sys.modules.get("pytest_replay.session.run")  # not imported: no replay is running
    for run in run_module.ReplayRun.running() if run_module else ():
        run.stop_engine(cancel=True)
