"""An in-process app's own outbound calls, intercepted during a replay.

The replayed request reaches the app (its logic is what is tested); what the app then sends must not
reach the real world:

- through httpx (payments, webhooks, notifications): answered by the routes of a respx router that
  users extend (the `replay_outbound` fixture). respx patches httpx's network transports
  process-wide while it runs; the replay's own in-process transports (ASGI, WSGI) are not network
  transports and are never caught.
- through anything else built on Python's socket module (urllib, http.client, requests/urllib3,
  aiohttp, asyncio streams, raw sockets, UDP): blocked at socket level (targets/blocker.py).

A call is tied to the exchange the app is handling through CURRENT_EXCHANGE, a contextvar the
in-process targets set around each call into the app: ASGI apps run in the engine's loop (tasks
they create inherit it), WSGI apps in a pool thread given a copy of the context (so do anyio's worker
threads, Starlette's sync endpoints). Hosts allowed with --replay-allow-host pass, for httpx too.
A blocked call fails the exchange that made it; one tied to no exchange (a thread the app started,
a call after its exchange was judged) fails the run. pytest's own thread (where the blocker was
installed, outside any exchange) is never checked: fixtures, hooks and other tests keep working.
"""

from __future__ import annotations

import contextvars
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable

import httpx
import respx

from .blocker import OPTION, AllowedHost, Allowlist, SocketBlocker

# The exchange the app is working on (set by in-process targets around each call into the app).
CURRENT_EXCHANGE: contextvars.ContextVar[int | None] = contextvars.ContextVar("replay_exchange", default=None)
UNROUTED = "pytest-replay-unrouted"
ESCAPED_NODEID = "replay-outbound::calls tied to no exchange"
SHOWN = 5  # calls listed in one failure


class Outbound:
    def __init__(self, router: respx.MockRouter, allow: Iterable[AllowedHost] = ()) -> None:
        self.router = router
        self.allowlist = Allowlist(allow)
        self.blocker = SocketBlocker(self.allowlist, exempt=self._exempt, record=self._record)
        self._calls: dict[int | None, list[str]] = defaultdict(list)
        self._judged: set[int] = set()
        self._lock = threading.Lock()
        self._own_thread: int | None = None
        self._started = False

    def _exempt(self) -> bool:
        """pytest's own work: its thread, outside any exchange."""
        return threading.get_ident() == self._own_thread and CURRENT_EXCHANGE.get() is None

    def _record(self, call: str) -> None:
        key = CURRENT_EXCHANGE.get()
        with self._lock:
            if key is not None and key in self._judged:
                call, key = f"{call}, after exchange #{key} was judged", None
            if key is None:
                call = f"{call}, from thread {threading.current_thread().name!r}"
            self._calls[key].append(call)

    def _route(self, request: httpx.Request):
        port = request.url.port or {"http": 80, "https": 443}.get(request.url.scheme, 0)
        if self._exempt() or self.allowlist.allows(request.url.host, port):
            return request  # respx: pass through to the real transport (the socket check still applies)
        call = f"{request.method} {request.url}"
        self._record(f"outbound call without a replay_outbound route (blocked): {call}")
        raise httpx.ConnectError(f"outbound call blocked by pytest-traffic-replay (no replay_outbound route and "
                                 f"not allowed with {OPTION}): {call}", request=request)

    def start(self) -> None:
        """From pytest's thread: that thread stays unchecked while the replay runs."""
        if UNROUTED not in self.router.routes:
            self.router.route(name=UNROUTED).mock(side_effect=self._route)  # last: after the users' routes
        self._own_thread = threading.get_ident()
        self.router.start()
        self._started = True
        self.blocker.install()

    def stop(self) -> None:
        self.blocker.uninstall()
        if self._started:
            self._started = False
            self.router.stop(quiet=True)

    def failure(self, key: int, show: Callable[[str], str] = str) -> str | None:
        """Why exchange `key` fails for its outbound calls, or None. Calls it makes from now on are
        no longer its own: they fail the run (`escaped`)."""
        with self._lock:
            self._judged.add(key)
            calls = list(self._calls.get(key, ()))
        if not calls:
            return None
        return listing(calls, show)  # each call says what was blocked and how to allow it

    def escaped(self) -> list[str]:
        """Blocked calls tied to no exchange (or made after theirs was judged)."""
        with self._lock:
            return list(self._calls.get(None, ()))


def listing(calls: list[str], show: Callable[[str], str] = str) -> str:
    """'a; b (x3); c and 4 more': repeated calls once, with their count."""
    counts = Counter(calls)
    shown = [show(call) + (f" (x{counts[call]})" if counts[call] > 1 else "") for call in list(counts)[:SHOWN]]
    more = len(counts) - SHOWN
    return "; ".join(shown) + (f" and {more} more" if more > 0 else "")


def fail_run(session, calls: list[str], show: Callable[[str], str] = str) -> str:
    """Calls tied to no exchange fail the pytest run: a failed report (terminal, JUnit) and the exit
    status. Returns the sentence for the run's notes (terminal summary, evidence)."""
    import pytest
    from _pytest.reports import TestReport

    text = (f"{len(calls)} outbound call(s) of the in-process app tied to no exchange were blocked "
            f"(nothing left the process): {listing(calls, show)}")
    location = ("replay-outbound", None, "calls tied to no exchange")
    for when in ("setup", "call", "teardown"):
        outcome = "failed" if when == "call" else "passed"
        report = TestReport(ESCAPED_NODEID, location, {"replay_outbound": 1}, outcome,
                            text if when == "call" else None, when)
        session.config.hook.pytest_runtest_logreport(report=report)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return text
