"""What happens to a planned request between its deadline and the wire, when a run asks for it:
values learned from replayed responses substituted, the `pytest_replay_request` hook, a GoReplay
middleware; and after its response, the `pytest_replay_response` hook and type-3 records for the
middleware. The engine calls `prepare` and `observed` only when a pipeline is configured, so a
plain replay pays nothing for it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

from ..http.message import Exchange, Request
from ..schedule.plan import PlannedRequest
from ..schedule.target import Dropped, Observation
from .correlate import DROP, ReplayState
from .middleware import Middleware, parse_request, record_id


class RequestPipeline:  # implements schedule.target.RequestPipeline
    def __init__(self, exchanges: Mapping[int, Exchange], wire: Callable[[Request], bytes], *,
                 middleware: Middleware | None = None, hook=None, state: ReplayState | None = None) -> None:
        self.exchanges = exchanges
        self.wire = wire
        self.middleware = middleware
        self.hook = hook
        self.state = state if state is not None else ReplayState()
        self.dropped: dict[int, str] = {}

    async def start(self) -> None:
        if self.middleware is not None:
            await self.middleware.start()

    async def close(self) -> None:
        if self.middleware is not None:
            await self.middleware.close()

    @property
    def error(self) -> BaseException | None:
        return self.middleware.error if self.middleware is not None else None

    async def prepare(self, planned: PlannedRequest) -> PlannedRequest:
        """The request to send instead of `planned` (raises Dropped)."""
        exchange = self.exchanges[planned.key]
        request = self.state.substitute(planned.request)
        if self.hook is not None:
            answer = self.hook.pytest_replay_request(request=request, exchange=exchange, state=self.state)
            if answer is DROP:
                self.dropped[planned.key] = "dropped by a pytest_replay_request hook"
                raise Dropped(self.dropped[planned.key])
            if isinstance(answer, Request):
                request = answer
        if self.middleware is not None:
            original = exchange.response
            out = await self.middleware.request(planned.key, None, exchange.request_ts_ns, request.raw,
                                                original=original.raw if original is not None else None,
                                                original_ts_ns=exchange.response_ts_ns)
            if out is None:
                self.dropped[planned.key] = "dropped by the middleware (it did not echo the request)"
                raise Dropped(self.dropped[planned.key])
            if out != request.raw:
                request = parse_request(out)  # ValueError: the middleware sent back something unparsable
        if request is planned.request:
            return planned
        return dataclasses.replace(planned, request=request, wire=self.wire(request))

    async def observed(self, planned: PlannedRequest, observation: Observation) -> None:
        response = observation.response
        if response is None:
            return
        if self.middleware is not None:
            await self.middleware.replayed_response(record_id(planned.key), time.time_ns(),
                                                    observation.done_ns - observation.sent_ns, response.raw)
        if self.hook is not None:
            self.hook.pytest_replay_response(exchange=self.exchanges[planned.key], response=response,
                                             state=self.state)
