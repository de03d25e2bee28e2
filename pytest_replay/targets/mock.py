"""Mocked writes: a write the policy does not send is answered from the recording, through respx.

`RecordedWrites` holds the recorded response of each write and a `respx.MockRouter` whose single
catch-all route answers a request with the recorded response of its exchange. The exchange is named
by an internal header (`x-replay-exchange: <key>`) on the httpx request built for the router, so two
identical writes still get their own recorded answers. A write recorded without a response gets a
502 whose JSON body says so.

The router is reached through `httpx.MockTransport(router.async_handler)`, called directly: no
httpx client and no network. respx's global patching (a user's `respx.mock`) is not involved either
way: with `using="httpcore"` (the default) it patches httpcore, which a MockTransport never calls;
with `using="httpx"` it wraps every httpx client's transport, which is why no client is used here.

`PolicyTarget` wraps the real target and makes the write policy's decision again at send time, on the
request as it leaves (after rewrites, hooks and middleware): "send" goes to it, "mock" to the router;
both are counted per endpoint in a WriteCounts (writes, and flagged reads sent), and the decision is
kept per exchange for whoever judges and counts the exchange.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping

import httpx
import respx

from ..http.message import Request, Response
from ..policy.writes import DEFAULT_RULES, MOCK, SEND, SKIP, Decision, WriteCounts, WritePolicy
from ..schedule.plan import PlannedRequest
from ..schedule.target import APP_ERROR, CANCELLED, TargetError, describe
from .inprocess import SKIPPED_HEADERS, _path

EXCHANGE_HEADER = b"x-replay-exchange"
NO_RECORDING = "no recorded response to answer this mocked write"
_MOCK_HOST = "recorded.invalid"  # only the router sees it: .invalid can never resolve


class _RawBody(httpx.AsyncByteStream, httpx.SyncByteStream):
    """The recorded body as is: not a ByteStream, so respx does not pre-read (and content-decode) it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self):
        yield self.data

    async def __aiter__(self):
        yield self.data


class RecordedWrites:
    """Recorded responses of writes, keyed by exchange index, served by a respx router."""

    def __init__(self, responses: Mapping[int, Response | None]) -> None:
        self.responses = dict(responses)
        self.router = respx.MockRouter(assert_all_called=False, using=None)
        self.route = self.router.route(name="recorded-writes").mock(side_effect=self._answer)
        self.transport = httpx.MockTransport(self.router.async_handler)
        self.answered = 0

    @classmethod
    def from_exchanges(cls, exchanges: Iterable, is_write: Callable | None = None) -> RecordedWrites:
        """Keep the recorded response of each write among `exchanges` (`is_write(exchange)`,
        default: the write rules of policy/writes.py)."""
        if is_write is None:
            def is_write(exchange) -> bool:
                return DEFAULT_RULES.classify(exchange.request).write
        return cls({e.index: e.response for e in exchanges if is_write(e)})

    def _answer(self, request: httpx.Request) -> httpx.Response:
        """The route's side effect: the recorded response of the exchange named in the request."""
        key = request.headers.get(EXCHANGE_HEADER.decode())
        recorded = self.responses.get(int(key)) if key is not None and key.isdigit() else None
        if recorded is None:
            body = json.dumps({"error": NO_RECORDING, "exchange": key,
                               "request": f"{request.method} {request.url.raw_path.decode('ascii', 'replace')}"})
            return httpx.Response(502, headers=[(b"Content-Type", b"application/json")], content=body.encode(),
                                  request=request)
        return httpx.Response(recorded.status, headers=list(recorded.headers), stream=_RawBody(recorded.body),
                              request=request, extensions={
                                  "reason_phrase": recorded.reason.encode("latin-1", "replace"),
                                  "http_version": f"HTTP/{recorded.version}".encode("ascii", "replace")})

    def httpx_request(self, request: Request, key: int) -> httpx.Request:
        """The request the router sees: captured method, target, headers (not framing ones) and body,
        plus the exchange header."""
        headers = [(k, v) for k, v in request.headers
                   if k.lower() not in SKIPPED_HEADERS and k.lower() != EXCHANGE_HEADER]
        headers.append((EXCHANGE_HEADER, str(key).encode()))
        host = request.host or ""
        if not host or any(c in host for c in " /?#@\\"):
            host = _MOCK_HOST
        try:
            return httpx.Request(request.method, f"http://{host}{_path(request.target)}", headers=headers,
                                 content=request.body)
        except Exception:  # an odd Host or target httpx refuses: the router only needs the key
            return httpx.Request(request.method, f"http://{_MOCK_HOST}/", headers=headers, content=request.body)

    async def answer(self, request: Request, key: int) -> httpx.Response:
        """The router's response for exchange `key` (its body still to be read from `.stream`)."""
        try:
            return await self.transport.handle_async_request(self.httpx_request(request, key))
        finally:
            # respx records every call; a long replay must not keep them all.
            self.router.calls.clear()
            self.route.calls.clear()
            self.answered += 1


class PolicyTarget:
    """A Target applying the write policy: `decide(planned)` -> "send" (to `inner`), "mock" (answered
    by `recorded`) or "skip" (should have been left out of the plan: raises TargetError). `decide`
    may be a WritePolicy (its `decision`), or any callable taking a PlannedRequest and returning a
    policy.writes.Decision or just the action. Writes (and flagged reads sent) are counted per
    endpoint in `counts`; each Decision is stored in `decisions` by exchange key."""

    def __init__(self, inner, decide, recorded: RecordedWrites, *, counts: WriteCounts | None = None,
                 decisions: dict | None = None) -> None:
        self.inner = inner
        self.decide = decide.decision if isinstance(decide, WritePolicy) else decide
        self.recorded = recorded
        self.counts = counts if counts is not None else WriteCounts()
        self.decisions = decisions if decisions is not None else {}
        self.name = inner.name

    def _decision(self, planned: PlannedRequest) -> Decision:
        """The decision for the request as it leaves: the one made for this very request object (when
        the plan was made) or a new one (rewritten by hooks or middleware since)."""
        decision = self.decisions.get(planned.key)
        if decision is not None and decision.on is planned.request:
            return decision
        decision = self.decide(planned)
        if not isinstance(decision, Decision):
            decision = Decision(decision, DEFAULT_RULES.classify(planned.request), planned.request)
        self.decisions[planned.key] = decision
        return decision

    def __repr__(self) -> str:
        return f"PolicyTarget({self.inner!r})"

    def __getattr__(self, name: str):
        """Other attributes (url, host, ...) are the inner target's."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def wire(self, request: Request) -> bytes:
        wire = getattr(self.inner, "wire", None)
        return wire(request) if wire is not None else request.raw

    async def start(self) -> None:
        await self.inner.start()

    async def send(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        decision = self._decision(planned)
        handler = {SEND: self.inner.send, MOCK: self._mock, SKIP: self._skip}.get(decision.action)
        if handler is None:
            raise TargetError(APP_ERROR, f"the write policy answered {decision.action!r} (expected send, mock "
                                         "or skip)")
        column = decision.column
        if column is not None:  # counted before sending: what may have reached the target is counted
            self.counts.add(planned.request, column)
        return await handler(planned, clock)

    @property
    def begins(self) -> bool:
        """Whether `begin` can take requests at all (the engine keeps coroutine lanes otherwise: an
        in-process app, whose every request would go through `send` anyway)."""
        return callable(getattr(type(self.inner), "begin", None))

    def begin(self, planned: PlannedRequest, clock, done) -> bool:
        """The engine's fast path (targets/raw.py's `begin`): a request the policy sends, begun on the
        inner target when it can; False otherwise (mocked, skipped, an inner target without it, or no
        open connection), and the engine awaits `send`, which decides again from the same Decision."""
        begin = getattr(type(self.inner), "begin", None)
        if begin is None:
            return False
        decision = self._decision(planned)
        if decision.action != SEND or not begin(self.inner, planned, clock, done):
            return False
        if decision.column is not None:  # counted once begun: what may have reached the target is counted
            self.counts.add(planned.request, decision.column)
        return True

    def abort_lane(self, lane: str) -> None:
        self.inner.abort_lane(lane)

    async def _skip(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        raise TargetError(CANCELLED, "not sent: the write policy skips this write", sent_ns=clock.now_ns())

    async def _mock(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        now = clock.now_ns
        sent = now()
        try:
            resp = await self.recorded.answer(planned.request, planned.key)
            first = now()
            body = b"".join([chunk async for chunk in resp.stream])
        except (TargetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise TargetError(APP_ERROR, f"mocked write: {describe(exc)}", sent_ns=sent) from None
        version = resp.extensions.get("http_version", b"HTTP/1.1").decode("ascii", "replace").removeprefix("HTTP/")
        response = Response.build(resp.status_code, resp.reason_phrase, tuple(resp.headers.raw), body, version)
        return response, sent, first, now()

    def close_lane(self, lane: str) -> None:
        close_lane = getattr(self.inner, "close_lane", None)
        if close_lane is not None:
            close_lane(lane)

    async def close(self) -> None:
        await self.inner.close()
