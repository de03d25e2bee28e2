"""One exchange judged: its verdict and the failure text its item shows, here or in another process.

`judge` is what a run does for each replayed exchange (compare, then render and mask the failure);
`Task` is the same call as plain data, built in the run's process and carried to a judging process
(session/judging.py) by pickling: the messages without their raw bytes (judging reads the head and
the body, never `raw`), the exchange's provenance, the replayed response, the transport error, the
latency and the exchange's origins. A judging process runs `init_worker` once (the run's DiffConfig
and Redactor) and `run_task` per exchange: both sides call the one `judge`, so a verdict judged in
another process is the verdict judged here, its failure text and ignored counts included.

Sans-IO: values in, (Verdict, text) out; nothing is written anywhere.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from ..http.message import Exchange, Request, Response, Source
from ..policy.redact import Redactor
from .diff import DiffConfig, Verdict, compare, render_failure
from .origin import Origins


def judge(exchange: Exchange, replayed: Response | None, config: DiffConfig, redactor: Redactor, *,
          error: str | None, latency_ns: int | None, origins: Origins | None) -> tuple[Verdict, str]:
    """The verdict on one replayed exchange and its failure text ("" when it passed), masked."""
    verdict = compare(exchange.response, replayed, config, exchange=exchange, error=error, latency_ns=latency_ns,
                      recorded_latency_ns=exchange.recorded_latency_ns, origins=origins)
    if verdict.passed:
        return verdict, ""
    text = render_failure(
        exchange, verdict, recorded_latency_ns=exchange.recorded_latency_ns, replayed_latency_ns=latency_ns,
        replayed_status=replayed.status if replayed is not None else None, redactor=redactor)
    return verdict, redactor.mask_pii(text)  # e-mails, card and phone numbers in bodies shown in a diff


def body_bytes(exchange: Exchange, replayed: Response | None) -> int:
    """What judging this exchange may have to parse and walk: the bytes of its two bodies when they
    differ (equal bodies are compared with one memcmp, whatever their size), else 0."""
    recorded = exchange.response
    if recorded is None or replayed is None or recorded.body == replayed.body:
        return 0
    return len(recorded.body) + len(replayed.body)


# -- plain data across a process boundary ------------------------------------------------------------
def _request(request: Request) -> tuple:
    return (request.method, request.target, request.version, request.head, request.trailers, request.lf_only,
            request.headers, request.protocol)


def _response(response: Response | None) -> tuple | None:
    if response is None:
        return None
    return (response.status, response.reason, response.version, response.head, response.body, response.trailers,
            response.interim, response.lf_only, response.headers, response.protocol)


def _unpack_request(fields: tuple) -> Request:
    method, target, version, head, trailers, lf_only, headers, protocol = fields
    return Request(method, target, version, head, b"", b"", trailers, lf_only, headers, protocol)


def _unpack_response(fields: tuple | None) -> Response | None:
    if fields is None:
        return None
    status, reason, version, head, body, trailers, interim, lf_only, headers, protocol = fields
    return Response(status, reason, version, head, body, b"", trailers, interim, lf_only, headers, protocol)


@dataclass(frozen=True, slots=True)
class Task:
    """One exchange to judge, as plain data (tuples, bytes, numbers, strings)."""

    exchange: tuple  # index, request, recorded response, timestamps, connection, position, source, flags, ...
    replayed: tuple | None
    error: str | None
    latency_ns: int | None
    origins: Origins | None

    @classmethod
    def of(cls, exchange: Exchange, replayed: Response | None, *, error: str | None, latency_ns: int | None,
           origins: Origins | None) -> Task:
        source = exchange.source
        fields = (exchange.index, _request(exchange.request), _response(exchange.response), exchange.request_ts_ns,
                  exchange.response_ts_ns, exchange.connection, exchange.position,
                  (source.file, source.offset, source.record, source.frames), exchange.flags, exchange.scheme,
                  exchange.server_name)
        return cls(fields, _response(replayed), error, latency_ns, origins)

    def rebuild(self) -> Exchange:
        index, request, recorded, request_ts, response_ts, connection, position, source, flags, scheme, sni = \
            self.exchange
        return Exchange(index, _unpack_request(request), _unpack_response(recorded), request_ts, response_ts,
                        connection, position, Source(*source), flags, (), scheme, sni)

    def run(self, config: DiffConfig, redactor: Redactor) -> tuple[Verdict, str]:
        return judge(self.rebuild(), _unpack_response(self.replayed), config, redactor, error=self.error,
                     latency_ns=self.latency_ns, origins=self.origins)


# -- a judging process -------------------------------------------------------------------------------
_worker: dict = {}  # this judging process's DiffConfig and Redactor (set once, by init_worker)
NICENESS = 10  # a judging process yields the CPU to the engine (and to a target on this machine)


def init_worker(config: DiffConfig, redactor: Redactor) -> None:
    """A judging process starts: Ctrl-C is for the run's process, which shuts the pool down; it runs at a
    lower priority (judging is throughput work, the engine's sends are not: on a busy machine the engine
    gets the CPU first, and judging catches up)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(NICENESS)
    except (AttributeError, OSError):  # (no nice on this platform)
        pass
    _worker["config"], _worker["redactor"] = config, redactor


def run_task(task: Task) -> tuple[Verdict, str]:
    return task.run(_worker["config"], _worker["redactor"])


def ready() -> bool:
    """A no-op the pool runs first: the process is up and its imports done."""
    return True
