#!/usr/bin/env python3
"""A middleware that drops POST requests: echoes every other record (requests and responses) unchanged.
With argv[1] == "requests-only" it echoes requests only (like token_modifier.go: responses not echoed)."""

import sys

requests_only = len(sys.argv) > 1 and sys.argv[1] == "requests-only"
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    record = bytes.fromhex(line)
    kind = record[:1]
    payload = record.split(b"\n", 1)[1]
    if kind == b"1" and payload.startswith(b"POST "):
        print("drop_posts.py: dropped", record.split(b"\n", 1)[0].decode(), file=sys.stderr, flush=True)
        continue
    if kind != b"1" and requests_only:
        continue
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
