"""In-process targets through httpx: ASGI and WSGI apps, and a user's own httpx.AsyncClient.

The response is read raw (no content decoding): a gzip body stays gzip bytes as in the capture, so
the same decoding applies to both sides when they are compared. The response head is made from the
headers the app gave: an in-process app adds no Content-Length/Transfer-Encoding/Date of its own
(a server would), which the comparison should ignore.

respx patches httpx's HTTP transports process-wide; ASGITransport and WSGITransport are not
affected (a user's client with a network transport is, by the user's choice).
"""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

from ..http.h2 import is_grpc
from ..http.message import Request, Response
from ..schedule.plan import PlannedRequest
from ..schedule.target import APP_ERROR, REFUSED, RESET, TIMEOUT, UNPARSABLE, TargetError, describe
from .outbound import CURRENT_EXCHANGE

# Not passed on: hop-by-hop headers, and the framing and Host headers httpx sets itself.
SKIPPED_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
                             b"transfer-encoding", b"content-length", b"host"})
_HTTPX_DEFAULTS = {b"accept": b"*/*", b"accept-encoding": httpx._client.ACCEPT_ENCODING.encode("ascii"),
                   b"connection": b"keep-alive", b"user-agent": httpx._client.USER_AGENT.encode("ascii")}
# httpx errors of a user's client (a real network underneath) -> error kind. First match wins.
_HTTPX_ERRORS: tuple[tuple[type, str], ...] = (
    (httpx.ConnectError, REFUSED),
    (httpx.ConnectTimeout, REFUSED),
    (httpx.TimeoutException, TIMEOUT),
    (httpx.RemoteProtocolError, UNPARSABLE),
    (httpx.ReadError, RESET),
    (httpx.WriteError, RESET),
    (httpx.TransportError, RESET),
)


def _path(target: str) -> str:
    """origin-form of a captured request target ('/p?q'; absolute-form is reduced to its path)."""
    if target.startswith("/"):
        return target
    if "://" in target:
        parts = urlsplit(target)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return "/"  # '*' (OPTIONS *) or authority-form: nothing an in-process app can route


def _headers(request: Request) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in request.headers if name.lower() not in SKIPPED_HEADERS]


def _response(status: int, reason: str, raw_headers, body: bytes) -> Response:
    return Response.build(status, reason, tuple(raw_headers), body)


def _build(method: str, url: str, headers, body: bytes) -> httpx.Request:
    try:
        return httpx.Request(method, url, headers=headers, content=body)
    except Exception as exc:  # an InvalidURL, a header httpx refuses
        raise TargetError(APP_ERROR, f"the request can not be built for an in-process target: {describe(exc)}") \
            from None


# Short enough to be shown whole in a failure (httpx speaks HTTP/2 only over the network, and gRPC's
# status travels in trailers, which an HTTP/1.1-semantics call does not carry).
NO_GRPC = "gRPC needs HTTP/2; httpx calls in-process apps over HTTP/1.1: serve the app, replay to its URL"


def _refuse_grpc(request: Request) -> None:
    """A gRPC call captured over HTTP/2 can not go to an in-process app: a per-exchange error."""
    if is_grpc(request.headers):
        raise TargetError(APP_ERROR, NO_GRPC)


class _AppTarget:
    """Shared by the ASGI and WSGI targets: the URL carries the captured Host, so the app sees it."""

    DEFAULT_HOST = "testserver"

    def wire(self, request: Request) -> bytes:
        """Nothing goes on a wire in-process: the plan keeps the captured bytes (no copy)."""
        return request.raw

    def sent_host(self, request: Request) -> str:
        """The Host the app sees: the request's own (captured, or set with --replay-set-header)."""
        host = request.host
        if not host or any(c in host for c in " /?#@\\"):
            host = self.DEFAULT_HOST
        return host

    def _url(self, request: Request) -> str:
        return f"http://{self.sent_host(request)}{_path(request.target)}"

    def close_lane(self, lane: str) -> None:
        pass


class ASGITarget(_AppTarget):
    """An ASGI 3 app called in the engine's loop through httpx.ASGITransport."""

    def __init__(self, app, *, name: str | None = None) -> None:
        self.app = app
        self.name = name or f"asgi:{_qualname(app)}"
        self.transport = httpx.ASGITransport(app=app)

    async def start(self) -> None:
        pass

    async def send(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        request = planned.request
        if request.http2:
            _refuse_grpc(request)
        req = _build(request.method, self._url(request), _headers(request), request.body)
        now = clock.now_ns
        token = CURRENT_EXCHANGE.set(planned.key)  # the app's outbound calls are attributed to it
        sent = now()
        try:
            resp = await self.transport.handle_async_request(req)
            first = now()
            body = b"".join([chunk async for chunk in resp.stream])
        except (TargetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise TargetError(APP_ERROR, describe(exc), sent_ns=sent) from None
        finally:
            CURRENT_EXCHANGE.reset(token)
        return _response(resp.status_code, resp.reason_phrase, resp.headers.raw, body), sent, first, now()

    async def close(self) -> None:
        pass


class WSGITarget(_AppTarget):
    """A WSGI app through httpx.WSGITransport, called in a thread pool so lanes run concurrently.
    A timed-out call can not be interrupted: its thread runs on and its result is dropped."""

    def __init__(self, app, *, workers: int = 32, name: str | None = None) -> None:
        self.app = app
        self.name = name or f"wsgi:{_qualname(app)}"
        self.transport = httpx.WSGITransport(app=app)
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pytest-replay-wsgi")

    def _call(self, req: httpx.Request, head_only: bool, now):
        resp = self.transport.handle_request(req)
        first = now()
        stream = resp.stream
        try:
            body = b"".join(stream)
        finally:
            stream.close()
        if head_only:
            body = b""  # a server sends no body for HEAD, whatever the app wrote
        return resp.status_code, resp.reason_phrase, resp.headers.raw, body, first

    async def send(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        request = planned.request
        if request.http2:
            _refuse_grpc(request)
        req = _build(request.method, self._url(request), _headers(request), request.body)
        if self._pool is None:
            await self.start()
        now = clock.now_ns
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the pool thread sees which exchange it works on
        context.run(CURRENT_EXCHANGE.set, planned.key)
        sent = now()
        try:
            status, reason, headers, body, first = await loop.run_in_executor(
                self._pool, context.run, self._call, req, request.method == "HEAD", now)
        except (TargetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise TargetError(APP_ERROR, describe(exc), sent_ns=sent) from None
        return _response(status, reason, headers, body), sent, first, now()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class ClientTarget:
    """A user's httpx.AsyncClient: requests go to the client's base_url + the captured target, with
    the captured headers (plus headers the user configured on the client, e.g. auth; httpx's own
    defaults such as Accept-Encoding are not added). The client's auth, event hooks and transport
    apply; its cookie jar does not (the captured Cookie headers are the truth). Host: the base_url's,
    unless `keep_host` (the request's own: captured, or set with --replay-set-header)."""

    def __init__(self, client: httpx.AsyncClient, *, name: str | None = None, keep_host: bool = False) -> None:
        if not isinstance(client, httpx.AsyncClient):
            raise TypeError(f"ClientTarget needs an httpx.AsyncClient, got {type(client).__name__}")
        base = str(client.base_url)
        if not base:
            raise ValueError("the httpx.AsyncClient given as replay target needs a base_url "
                             "(e.g. httpx.AsyncClient(base_url='http://127.0.0.1:8000'))")
        self.client = client
        self.base = base.rstrip("/")
        self.keep_host = keep_host
        self.name = name or f"client:{self.base}"
        self._extra = [(k, v) for k, v in client.headers.raw if _HTTPX_DEFAULTS.get(k.lower()) != v]
        self._extra_names = {k.lower() for k, _ in self._extra}

    def wire(self, request: Request) -> bytes:
        return request.raw

    def sent_host(self, request: Request) -> str | None:
        return request.host if self.keep_host else self.client.base_url.netloc.decode("ascii")

    async def start(self) -> None:
        pass

    async def send(self, planned: PlannedRequest, clock) -> tuple[Response, int, int, int]:
        request = planned.request
        headers = _headers(request)
        if self.keep_host and request.host:
            headers.insert(0, (b"Host", request.header("host")))
        if self._extra:
            have = {k.lower() for k, _ in headers}
            headers += [(k, v) for k, v in self._extra if k.lower() not in have]
        req = _build(request.method, self.base + _path(request.target), headers, request.body)
        now = clock.now_ns
        token = CURRENT_EXCHANGE.set(planned.key)  # a client on an ASGI/WSGI transport: the app's calls are its own
        sent = now()
        try:
            resp = await self.client.send(req, stream=True)
            first = now()
            try:
                body = b"".join([chunk async for chunk in resp.aiter_raw()])
            finally:
                await resp.aclose()
        except (TargetError, asyncio.CancelledError):
            raise
        except httpx.HTTPError as exc:
            kind = next((k for cls, k in _HTTPX_ERRORS if isinstance(exc, cls)), APP_ERROR)
            raise TargetError(kind, describe(exc), sent_ns=sent) from None
        except Exception as exc:
            raise TargetError(APP_ERROR, describe(exc), sent_ns=sent) from None
        finally:
            CURRENT_EXCHANGE.reset(token)
        if request.method == "HEAD":
            body = b""
        return _response(resp.status_code, resp.reason_phrase, resp.headers.raw, body), sent, first, now()

    def close_lane(self, lane: str) -> None:
        pass

    async def close(self) -> None:
        pass  # the client belongs to the user: they close it


def _qualname(app) -> str:
    cls = app if isinstance(app, type) or callable(app) and hasattr(app, "__qualname__") else type(app)
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', type(app).__name__)}"
