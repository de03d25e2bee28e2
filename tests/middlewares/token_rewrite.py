#!/usr/bin/env python3
"""GoReplay's examples/middleware/token_modifier.go, in Python.

The service hands out random tokens at GET /token (the token is the whole response body) and wants them
back as the `token` query parameter. Replayed, the service hands out other tokens, so:
- type 1 (request): a request whose path is exactly "/token" is remembered by id; any other request
  with a `token` query parameter whose value has a known alias gets the alias instead. Every request is
  echoed (changed or not).
- type 2 (original response) of a remembered id: its body is the original token.
- type 3 (replayed response) of a remembered id: its body is the replayed token; the alias
  original -> replayed is stored and the id forgotten.
Responses are not echoed. Debug lines go to stderr unless GOR_TEST is set.
Byte-level helpers follow goreplay's internal/proto (Path, PathParam, SetPathParam, Body).
Unlike the Go program (bufio.Scanner: 64 KB lines at most) it has no line-length limit.
"""

import os
import sys

original_tokens = {}  # request id -> original token
token_aliases = {}  # original token -> replayed token


def debug(*args):
    if not os.environ.get("GOR_TEST"):
        print("[DEBUG][TOKEN-MOD]", *args, file=sys.stderr, flush=True)


def path(payload):
    """Split(firstLine, ' ')[1]: the request target, query included."""
    start = payload.find(b" ") + 1
    end = payload.find(b" ", start)
    if start == 0 or end < 0:
        return None
    return payload[start:end]


def set_path(payload, new_path):
    start = payload.find(b" ") + 1
    end = payload.find(b" ", start)
    return payload[:start] + new_path + payload[end:]


def path_param(payload, name):
    """(value, start, end) of query parameter `name` in the path, start -1 when absent ("&name=" first,
    then "?name=", as goreplay's proto.PathParam)."""
    p = path(payload) or b""
    start = p.find(b"&" + name + b"=")
    if start == -1:
        start = p.find(b"?" + name + b"=")
        if start == -1:
            return b"", -1, -1
    value_start = start + len(name) + 2
    end = p.find(b"&", value_start)
    if end == -1:
        end = len(p)
    return p[value_start:end], value_start, end


def set_path_param(payload, name, value):
    p = path(payload) or b""
    _, vs, ve = path_param(payload, name)
    if vs != -1:
        return set_path(payload, p[:vs] + value + p[ve:])
    return set_path(payload, p + (b"&" if b"?" in p else b"?") + name + b"=" + value)


def body(payload):
    position = payload.find(b"\r\n\r\n")
    if position < 0 or len(payload) <= position + 4:
        return b""
    return payload[position + 4:]


def process(buf):
    payload_type = buf[0:1]
    header_size = buf.find(b"\n") + 1
    header = buf[:header_size - 1]
    meta = header.split(b" ")
    req_id = meta[1]
    payload = buf[header_size:]
    debug("Received payload:", buf[:200])

    if payload_type == b"1":
        if path(payload) == b"/token":
            original_tokens[req_id] = b""
            debug("Found token request:", req_id)
        else:
            token, vs, _ = path_param(payload, b"token")
            if vs != -1 and token in token_aliases:
                payload = set_path_param(payload, b"token", token_aliases[token])
                buf = buf[:header_size] + payload
        sys.stdout.write(buf.hex() + "\n")
        sys.stdout.flush()
    elif payload_type == b"2":
        if req_id in original_tokens:
            original_tokens[req_id] = body(payload)
            debug("Remember original token:", original_tokens[req_id])
    elif payload_type == b"3":
        if req_id in original_tokens:
            original_token = original_tokens.pop(req_id)
            token_aliases[original_token] = body(payload)
            debug("Create alias for new token, was:", original_token, "now:", token_aliases[original_token])


def main():
    for line in sys.stdin:
        line = line.strip()
        if line:
            process(bytes.fromhex(line))


if __name__ == "__main__":
    main()
