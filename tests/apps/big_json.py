"""An ASGI app answering GET /item/{i} with a large JSON page whose links name the Host it was sent."""
import json


def document(i: int, origin: str, items: int = 300) -> dict:
    return {
        "page": i, "next": f"{origin}/item/{i + 1}",
        "items": [{"id": k, "sku": f"SKU-{k:06d}", "name": f"Item number {k}", "price": round(9.99 + k * 0.37, 2),
                   "in_stock": k % 3 != 0, "tags": ["sale", "new"] if k % 2 else ["core"],
                   "links": {"self": f"{origin}/api/items/{k}", "image": f"{origin}/img/{k}.png"}}
                  for k in range(items)],
    }


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    host = dict(scope["headers"]).get(b"host", b"").decode()
    path = scope["path"]
    i = int(path.rsplit("/", 1)[1])
    items = 300 if path.startswith("/item/") else 2
    body = json.dumps(document(i, f"http://{host}", items)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
