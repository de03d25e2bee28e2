"""An ASGI app for tests/test_h2_replay.py, served by hypercorn over h2c or TLS h2: it answers each
path with the status and body in the JSON file named by $H2_APP_RESPONSES ({path: [status, body]}),
after $H2_APP_DELAY seconds, and appends one line per request to $H2_APP_LOG: the HTTP version, the
client's port (one per connection), the path, start and end (monotonic seconds).

POST /upload answers with the request body's length and sha256 and a body of $H2_APP_BIG bytes:
flow control both ways."""

import asyncio
import hashlib
import json
import os
import time

RESPONSES = json.loads(open(os.environ["H2_APP_RESPONSES"]).read()) if os.environ.get("H2_APP_RESPONSES") else {}
DELAY = float(os.environ.get("H2_APP_DELAY", "0"))
LOG = os.environ.get("H2_APP_LOG")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    start = time.monotonic()
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if DELAY:
        await asyncio.sleep(DELAY)
    if scope["path"] == "/upload":
        status = 200
        payload = f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode() + b"x" * int(os.environ.get("H2_APP_BIG", "0"))
    elif scope["path"] in RESPONSES:
        status, text = RESPONSES[scope["path"]]
        payload = text.encode("latin-1")
    else:
        status, payload = 404, b"not here\n"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
    if LOG:
        with open(LOG, "a") as out:
            out.write(f"{scope['http_version']} {scope['client'][1]} {scope['path']} {start} {time.monotonic()}\n")
