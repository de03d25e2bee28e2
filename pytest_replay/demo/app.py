"""A small in-memory "shop" JSON API as a plain ASGI 3 application (stdlib only).

It is the embedded demo service: the README's first command replays a real capture
(fixtures/captures/demo/demo.pcap) against it in-process through ``httpx.ASGITransport``;
it also runs under uvicorn (``uvicorn pytest_replay.demo.app:app``).

Endpoints (ids are integers)::

    GET    /health                      {"status": "ok"}
    GET    /api/products?limit=&offset= product page; gzip when Accept-Encoding allows it
    GET    /api/products/{id}           product, or 404 JSON
    GET    /api/products/{id}/image     image/png bytes (a real 16x16 PNG)
    GET    /api/products.txt            text/plain, one product per line
    GET    /api/products/stream         NDJSON streamed in chunks (chunked under uvicorn)
    GET    /api/users/{id}              public profile, or 404
    POST   /api/login                   {"username","password"} -> token + Set-Cookie: session=
    GET    /api/cart                    needs auth: ``Authorization: Bearer <token>`` or the cookie
    POST   /api/cart/items              {"product_id","quantity"} -> 201 + cart      (write)
    DELETE /api/cart/items/{product_id} -> cart                                    (write)
    POST   /api/orders                  {"card": {"number", ...}} -> 201 + order  (write: "charges a card")
    GET    /api/orders/{id}             own orders only
    GET    /api/search?q=               results + volatile "request_id" and "generated_at"

Determinism: tokens and cookies are HMACs of the username under a fixed key, order ids are
``user_id * 1000 + n`` per user, and all state is per user, so the same per-user request order
gives the same responses whatever the interleaving between users. The only volatile parts are
the ``X-Request-Id`` header on every response and the two fields of ``/api/search``.

Regressions, for the "what failures look like" demo (``make_app(regression=...)`` or the
``DEMO_REGRESSION`` environment variable for the module-level ``app``):

* ``slow``: ``GET /api/products/{id}`` sleeps 50 ms first.
* ``bug``: ``GET /api/users/{id}`` renames ``display_name`` to ``displayName``, and
  ``GET /api/orders/1001`` (alice's first order) answers 500.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import os
import re
import struct
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

__all__ = ["REGRESSIONS", "DemoShop", "app", "make_app", "session_for", "token_for"]

REGRESSIONS: dict[str, str] = {
    "slow": "GET /api/products/{id} sleeps 50 ms",
    "bug": "users: display_name renamed to displayName; GET /api/orders/1001 answers 500",
}
SECRET_KEY = b"pytest-replay-demo-key"  # fixed on purpose: a replay must see the same tokens
SLOW_DELAY_S = 0.05
BUGGY_ORDER_ID = 1001

# (id, name, price_cents, tags)
PRODUCTS: tuple[tuple[int, str, int, tuple[str, ...]], ...] = (
    (1, "Espresso Beans 1kg", 2490, ("coffee", "beans")),
    (2, "Filter Coffee 500g", 1190, ("coffee", "ground")),
    (3, "Ceramic Mug", 1450, ("mug", "kitchen")),
    (4, "Travel Mug", 2200, ("mug", "travel")),
    (5, "Pour-Over Kettle", 5900, ("kettle", "kitchen")),
    (6, "Burr Grinder", 12900, ("grinder", "coffee")),
    (7, "Paper Filters x100", 450, ("filter", "paper")),
    (8, "Green Tea 250g", 890, ("tea", "green")),
    (9, "Earl Grey 250g", 790, ("tea", "black")),
    (10, "Tea Infuser", 650, ("tea", "kitchen")),
    (11, "Milk Frother", 3490, ("milk", "kitchen")),
    (12, "Gift Card 50", 5000, ("gift",)),
)
# (id, username, display_name, member_since); the password is f"{username}-pw"
USERS: tuple[tuple[int, str, str, str], ...] = (
    (1, "alice", "Alice Martin", "2019-03-02"),
    (2, "bob", "Bob Chen", "2020-11-17"),
    (3, "carol", "Carol Diaz", "2021-06-30"),
    (4, "dave", "Dave Okafor", "2022-01-09"),
    (5, "erin", "Erin Novak", "2023-08-21"),
)


def _sign(purpose: str, username: str) -> str:
    return hmac.new(SECRET_KEY, f"{purpose}:{username}".encode(), hashlib.sha256).hexdigest()


def token_for(username: str) -> str:
    """The bearer token ``POST /api/login`` returns for ``username`` (deterministic)."""
    return "tok_" + _sign("token", username)[:32]


def session_for(username: str) -> str:
    """The ``session`` cookie value ``POST /api/login`` sets for ``username`` (deterministic)."""
    return _sign("session", username)[:24]


def _png(product_id: int, size: int = 16) -> bytes:
    """A valid RGB PNG: a gradient whose base colour depends on the product id."""
    base = ((product_id * 53) % 256, (product_id * 97) % 256, (product_id * 151) % 256)
    raw = b"".join(b"\x00" + b"".join(bytes(((base[0] + 16 * x) % 256, (base[1] + 16 * y) % 256, base[2]))
                                       for x in range(size)) for y in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes

    def arg(self, name: str, default: str = "") -> str:
        return self.query.get(name, [default])[0]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    chunks: tuple[bytes, ...] | None = None  # set for a streamed (chunked) body


class HTTPError(Exception):
    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(detail or error)
        self.status, self.error, self.detail = status, error, detail


def _json(status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(data, separators=(",", ":")).encode(), headers=headers)


def _accepts_gzip(req: Request) -> bool:
    for item in req.headers.get("accept-encoding", "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


Handler = Callable[..., Awaitable[Response]]


class DemoShop:
    """The ASGI application. Call :meth:`reset` to forget carts and orders."""

    def __init__(self, regression: str | None = None) -> None:
        if regression is not None and regression not in REGRESSIONS:
            raise ValueError(f"unknown regression {regression!r}; accepted: {sorted(REGRESSIONS)} or None")
        self.regression = regression
        self.carts: dict[int, dict[int, int]] = {}  # user id -> product id -> quantity
        self.orders: dict[int, dict[str, Any]] = {}
        self.order_counts: dict[int, int] = {}
        self.products = {p[0]: {"id": p[0], "name": p[1], "price_cents": p[2], "tags": list(p[3])} for p in PRODUCTS}
        self.users = {u[0]: {"id": u[0], "username": u[1], "display_name": u[2], "member_since": u[3]} for u in USERS}
        self.by_credential = {c: u[0] for u in USERS for c in (token_for(u[1]), session_for(u[1]))}
        self.routes: tuple[tuple[str, re.Pattern[str], Handler], ...] = tuple(
            (method, re.compile(pattern + r"\Z"), handler)
            for method, pattern, handler in (
                ("GET", r"/health", self.health),
                ("GET", r"/api/products", self.list_products),
                ("GET", r"/api/products\.txt", self.products_text),
                ("GET", r"/api/products/stream", self.products_stream),
                ("GET", r"/api/products/(\d+)", self.get_product),
                ("GET", r"/api/products/(\d+)/image", self.product_image),
                ("GET", r"/api/users/(\d+)", self.get_user),
                ("POST", r"/api/login", self.login),
                ("GET", r"/api/cart", self.get_cart),
                ("POST", r"/api/cart/items", self.add_item),
                ("DELETE", r"/api/cart/items/(\d+)", self.remove_item),
                ("POST", r"/api/orders", self.create_order),
                ("GET", r"/api/orders/(\d+)", self.get_order),
                ("GET", r"/api/search", self.search),
            )
        )

    def reset(self) -> None:
        self.carts.clear()
        self.orders.clear()
        self.order_counts.clear()

    # -- ASGI plumbing ---------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            raise RuntimeError(f"unsupported ASGI scope type {scope['type']!r}")
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}" if key in headers else value.decode("latin-1")
        req = Request(scope["method"], scope["path"], parse_qs(scope.get("query_string", b"").decode("latin-1")),
                      headers, bytes(body))
        try:
            response = await self.dispatch(req)
        except HTTPError as exc:
            response = _json(exc.status, {"error": exc.error, "detail": exc.detail})
        await self.send_response(send, response)

    async def dispatch(self, req: Request) -> Response:
        allowed = []
        for method, pattern, handler in self.routes:
            if match := pattern.match(req.path):
                if method == req.method:
                    return await handler(req, *match.groups())
                allowed.append(method)
        if allowed:
            return _json(405, {"error": "method_not_allowed", "detail": req.method}, (("allow", ", ".join(allowed)),))
        raise HTTPError(404, "not_found", f"no route for {req.path}")

    @staticmethod
    async def send_response(send: Callable[..., Any], response: Response) -> None:
        headers = [(b"content-type", response.content_type.encode())]
        if response.chunks is None:
            headers.append((b"content-length", str(len(response.body)).encode()))
        headers += [(k.encode(), v.encode()) for k, v in response.headers]
        headers.append((b"x-request-id", str(uuid.uuid4()).encode()))  # volatile on purpose
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        for chunk in response.chunks or ():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": response.body if response.chunks is None else b""})

    # -- helpers ---------------------------------------------------------------------------
    def user_id(self, req: Request) -> int:
        auth = req.headers.get("authorization", "")
        credential = auth[7:] if auth[:7].lower() == "bearer " else ""
        if not credential:
            cookies = (c.strip().partition("=") for c in req.headers.get("cookie", "").split(";"))
            credential = next((v for k, _, v in cookies if k == "session"), "")
        if credential not in self.by_credential:
            raise HTTPError(401, "unauthorized", "missing or invalid credentials")
        return self.by_credential[credential]

    @staticmethod
    def json_body(req: Request) -> dict[str, Any]:
        try:
            data = json.loads(req.body or b"null")
        except ValueError as exc:
            raise HTTPError(400, "bad_request", f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "bad_request", "expected a JSON object")
        return data

    def product(self, product_id: str | int) -> dict[str, Any]:
        if int(product_id) not in self.products:
            raise HTTPError(404, "not_found", f"product {product_id} not found")
        return self.products[int(product_id)]

    def cart_view(self, uid: int) -> dict[str, Any]:
        items = [{"product_id": pid, "name": self.products[pid]["name"], "quantity": qty,
                  "unit_price_cents": self.products[pid]["price_cents"]}
                 for pid, qty in self.carts.get(uid, {}).items()]
        return {"items": items, "total_cents": sum(i["quantity"] * i["unit_price_cents"] for i in items)}

    # -- handlers --------------------------------------------------------------------------
    async def health(self, req: Request) -> Response:
        return _json(200, {"status": "ok"}, (("cache-control", "no-store"),))

    async def list_products(self, req: Request) -> Response:
        try:
            limit, offset = int(req.arg("limit", "10")), int(req.arg("offset", "0"))
        except ValueError:
            raise HTTPError(400, "bad_request", "limit and offset must be integers") from None
        if not (1 <= limit <= 50 and offset >= 0):
            raise HTTPError(400, "bad_request", "limit must be 1..50 and offset >= 0")
        items = list(self.products.values())[offset:offset + limit]
        page = {"items": items, "total": len(self.products), "limit": limit, "offset": offset}
        body = json.dumps(page, separators=(",", ":")).encode()
        if _accepts_gzip(req):  # mtime=0 keeps the compressed bytes deterministic
            body = gzip.compress(body, mtime=0)
            return Response(200, body, headers=(("content-encoding", "gzip"), ("vary", "Accept-Encoding")))
        return Response(200, body, headers=(("vary", "Accept-Encoding"),))

    async def products_text(self, req: Request) -> Response:
        lines = [f"{p['id']}\t{p['name']}\t{p['price_cents'] / 100:.2f}" for p in self.products.values()]
        return Response(200, ("id\tname\tprice\n" + "\n".join(lines) + "\n").encode(), "text/plain; charset=utf-8")

    async def products_stream(self, req: Request) -> Response:
        chunks = tuple(json.dumps(p, separators=(",", ":")).encode() + b"\n" for p in self.products.values())
        return Response(200, content_type="application/x-ndjson", chunks=chunks)

    async def get_product(self, req: Request, product_id: str) -> Response:
        if self.regression == "slow":
            await asyncio.sleep(SLOW_DELAY_S)
        return _json(200, self.product(product_id))

    async def product_image(self, req: Request, product_id: str) -> Response:
        self.product(product_id)
        return Response(200, _png(int(product_id)), "image/png", (("cache-control", "public, max-age=86400"),))

    async def get_user(self, req: Request, user_id: str) -> Response:
        if int(user_id) not in self.users:
            raise HTTPError(404, "not_found", f"user {user_id} not found")
        user = dict(self.users[int(user_id)])
        if self.regression == "bug":
            user["displayName"] = user.pop("display_name")
        return _json(200, user)

    async def login(self, req: Request) -> Response:
        data = self.json_body(req)
        username, password = str(data.get("username", "")), str(data.get("password", ""))
        uid = next((u for u, row in self.users.items() if row["username"] == username), None)
        if uid is None or not hmac.compare_digest(password, f"{username}-pw"):
            raise HTTPError(401, "invalid_credentials", "wrong username or password")
        cookie = f"session={session_for(username)}; Path=/; HttpOnly; SameSite=Lax"
        return _json(200, {"token": token_for(username), "user_id": uid}, (("set-cookie", cookie),))

    async def get_cart(self, req: Request) -> Response:
        return _json(200, self.cart_view(self.user_id(req)))

    async def add_item(self, req: Request) -> Response:
        uid, data = self.user_id(req), self.json_body(req)
        quantity = data.get("quantity", 1)
        if not isinstance(quantity, int) or not 1 <= quantity <= 99 or not isinstance(data.get("product_id"), int):
            raise HTTPError(400, "bad_request", "product_id must be an integer and quantity 1..99")
        product_id = self.product(data["product_id"])["id"]
        cart = self.carts.setdefault(uid, {})
        cart[product_id] = cart.get(product_id, 0) + quantity
        return _json(201, self.cart_view(uid))

    async def remove_item(self, req: Request, product_id: str) -> Response:
        uid = self.user_id(req)
        if self.carts.get(uid, {}).pop(int(product_id), None) is None:
            raise HTTPError(404, "not_found", f"product {product_id} is not in the cart")
        return _json(200, self.cart_view(uid))

    async def create_order(self, req: Request) -> Response:
        uid, data = self.user_id(req), self.json_body(req)
        number = str((data.get("card") or {}).get("number", "")).replace(" ", "")
        if not (number.isdigit() and 12 <= len(number) <= 19):
            raise HTTPError(400, "bad_request", "card.number must be 12-19 digits")
        cart = self.cart_view(uid)
        if not cart["items"]:
            raise HTTPError(409, "empty_cart", "add items before ordering")
        self.order_counts[uid] = self.order_counts.get(uid, 0) + 1
        order_id = uid * 1000 + self.order_counts[uid]
        self.orders[order_id] = {"id": order_id, "user_id": uid, "status": "paid", "card_last4": number[-4:], **cart}
        self.carts.pop(uid, None)
        return _json(201, self.orders[order_id], (("location", f"/api/orders/{order_id}"),))

    async def get_order(self, req: Request, order_id: str) -> Response:
        uid = self.user_id(req)
        order = self.orders.get(int(order_id))
        if order is None or order["user_id"] != uid:
            raise HTTPError(404, "not_found", f"order {order_id} not found")
        if self.regression == "bug" and order["id"] == BUGGY_ORDER_ID:
            raise HTTPError(500, "internal_error", "KeyError: 'shipping_address'")
        return _json(200, order)

    async def search(self, req: Request) -> Response:
        q = req.arg("q").strip().lower()
        if not q:
            raise HTTPError(400, "bad_request", "q is required")
        hits = [p for p in self.products.values() if q in p["name"].lower() or q in p["tags"]]
        return _json(200, {"query": q, "count": len(hits), "results": hits, "request_id": str(uuid.uuid4()),
                           "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def make_app(regression: str | None = None) -> DemoShop:
    """A fresh shop with empty carts and orders; ``regression`` is None or a key of REGRESSIONS."""
    return DemoShop(regression=regression)


app = make_app(os.environ.get("DEMO_REGRESSION") or None)
