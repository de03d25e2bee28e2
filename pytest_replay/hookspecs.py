"""Hooks a conftest.py (or a plugin) implements to change or drop requests and to see replayed responses.

Registered by the plugin with ``pluginmanager.add_hookspecs(hookspecs)`` (in ``pytest_addhooks``). Both
hooks run in the replay engine's thread, inside its event loop, right before a request is sent and right
after its response arrives: keep them quick and do not block (no network calls, no sleeping).

Example (a conftest.py): the replayed login gets a new token; later requests must carry it::

    from pytest_replay.policy.correlate import correlate_json_field

    def pytest_replay_response(exchange, response, state):
        if exchange.request.path == "/login":
            correlate_json_field(state, exchange.response, response, "access_token")

Learned values are substituted in every later request automatically (request line, headers, body,
Content-Length fixed), before ``pytest_replay_request`` sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .http.message import Exchange, Request, Response
    from .policy.correlate import DROP, ReplayState


def __getattr__(name: str):
    """DROP and ReplayState, imported when first asked for: pytest registers these hook specs at
    every start-up, replay or not, and the policy modules are not needed for that."""
    if name in ("DROP", "ReplayState"):
        from .policy import correlate

        return getattr(correlate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

hookspec = pluggy.HookspecMarker("pytest")

__all__ = ["DROP", "ReplayState", "pytest_replay_budgets", "pytest_replay_request", "pytest_replay_response"]


@hookspec(firstresult=True)
def pytest_replay_request(request: Request, exchange: Exchange, state: ReplayState) -> Request | object | None:
    """Called before each request is sent, with the request about to go (the captured one after the
    replay's rewrites and the learned substitutions), its exchange (the recorded request and response)
    and the run's shared state.

    Return None to leave it as it is, a :class:`~pytest_replay.http.message.Request` to send that instead
    (``Request.build(...)``, or ``state.substitute(...)``; fix Content-Length yourself when you build the
    bytes), or ``DROP`` to not send it (its test item is reported as dropped, not failed).

    First result wins: the first implementation that returns something other than None decides.
    """


@hookspec
def pytest_replay_response(exchange: Exchange, response: Response, state: ReplayState) -> None:
    """Called with each replayed response (not for requests that failed or were dropped): the place to
    learn values for later requests, e.g. ``state.learn(recorded_token, replayed_token)`` or
    ``correlate_json_field(state, exchange.response, response, "token")``. Every implementation runs; the
    return value is ignored."""


@hookspec
def pytest_replay_budgets(config) -> list:
    """Latency and error budgets for the run, as strings in the --replay-budget syntax (or parsed
    budgets), added to those of the command line and the ini file. Every implementation's list
    counts. Example (conftest.py)::

        def pytest_replay_budgets(config):
            return ["p95<1.2x", "GET /api/users/{id}: p99<300ms", "5xx<=recorded+0.5%"]
    """
