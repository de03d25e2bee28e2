"""pytest hooks: each a few lines, routing to the ReplaySession kept in config.stash (see session.py)."""

from __future__ import annotations

import pytest

from . import options
from .items import ReplayItem
from .session import ReplaySession, clashing_plugin

SESSION = pytest.StashKey[ReplaySession]()
CLASH = pytest.StashKey[str]()


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
    if settings.enabled:
        config.stash[SESSION] = ReplaySession(config, settings)


def _session(config: pytest.Config) -> ReplaySession | None:
    return config.stash.get(SESSION, None)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    session = _session(config)
    return session.header_lines() if session else None


def pytest_collect_file(file_path, parent):
    session = _session(parent.config)
    return session.collect_file(file_path, parent) if session else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    replay = _session(config)
    if replay:
        replay.filter_items(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    replay = _session(session.config)
    if replay:
        replay.check_target(session)


@pytest.fixture(scope="session")
def replay_target(request: pytest.FixtureRequest):
    """Where captured requests go: the --replay-target option (or the ini's replay_target) by
    default. Override it in conftest.py to return a URL, an ASGI or WSGI app, or an
    httpx.AsyncClient (for example a client bound to your app with extra headers)."""
    return request.config.stash[SESSION].settings.target


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
def replay_engine(request: pytest.FixtureRequest, replay_target):
    """The running replay: started once, before the first replay item, with every selected item's
    exchange on its schedule; items wait for their own observation."""
    session = request.config.stash[SESSION]
    cli_target = request.config.getoption("replay_target")  # the command line wins over a conftest fixture
    engine = session.start_engine(cli_target if cli_target is not None else replay_target, request.session.items,
                                  outbound=lambda: request.getfixturevalue("replay_outbound"))
    if session.settings.judge == "after":
        session.wait_for_replay(engine)
    yield engine
    # -x / --maxfail: pytest tears the session down after the failing item; the rest is not replayed
    stopping = bool(request.session.shouldfail or request.session.shouldstop)
    session.stop_engine(cancel=stopping)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session):
    try:
        return (yield)
    finally:
        replay = _session(session.config)
        if replay:
            replay.stop_engine(cancel=True)


def pytest_keyboard_interrupt(excinfo) -> None:
    for replay in ReplaySession.running():
        replay.stop_engine(cancel=True)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    replay = _session(session.config)
    if replay:
        replay.finish(session, exitstatus)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    replay = _session(node.config)
    if replay:
        replay.configure_node(node)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    replay = _session(config)
    return replay.make_scheduler(log) if replay else None


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    replay = _session(node.config)
    if replay:
        replay.node_down(node)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    session = _session(config)
    if session:
        session.terminal_summary(terminalreporter)


__all__ = ["ReplayItem"]
