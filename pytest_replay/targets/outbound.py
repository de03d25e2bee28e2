"""An in-process app's own outbound HTTP, intercepted during a replay.

The replayed request reaches the app (its logic is what is tested); what the app then sends
through httpx (payments, webhooks, notifications) is answered by the routes of a respx router
that users extend (the `replay_outbound` fixture). A call without a route is not sent anywhere: it
fails inside the app as a connection error, and the exchange being replayed fails, showing the
call. respx patches httpx's network transports process-wide while it runs; the replay's own
in-process transports (ASGI, WSGI) are not network transports and are never caught.
"""

from __future__ import annotations

import contextvars
import threading
from collections import defaultdict

import httpx
import respx

# The exchange the app is working on (set by in-process targets around each call into the app).
CURRENT_EXCHANGE: contextvars.ContextVar[int | None] = contextvars.ContextVar("replay_exchange", default=None)
UNROUTED = "pytest-replay-unrouted"


class Outbound:
    def __init__(self, router: respx.MockRouter) -> None:
        self.router = router
        self._unrouted: dict[int | None, list[str]] = defaultdict(list)
        self._lock = threading.Lock()
        self._started = False

    def _block(self, request: httpx.Request):
        call = f"{request.method} {request.url}"
        with self._lock:
            self._unrouted[CURRENT_EXCHANGE.get()].append(call)
        raise httpx.ConnectError(f"outbound call blocked by pytest-traffic-replay (no replay_outbound route): {call}",
                                 request=request)

    def start(self) -> None:
        if UNROUTED not in self.router.routes:
            self.router.route(name=UNROUTED).mock(side_effect=self._block)  # last: after the users' routes
        self.router.start()
        self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.router.stop(quiet=True)

    def unrouted(self, key: int) -> list[str]:
        """The calls the app made without a route while handling exchange `key`."""
        with self._lock:
            return list(self._unrouted.get(key, ()))

    def unattributed(self) -> list[str]:
        with self._lock:
            return list(self._unrouted.get(None, ()))
