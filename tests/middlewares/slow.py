#!/usr/bin/env python3
"""A middleware that echoes each request after sleeping argv[1] seconds (responses are not echoed)."""

import sys
import time

delay = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
for line in sys.stdin:
    line = line.strip()
    if line and line.startswith("31"):  # hex of "1": a request
        time.sleep(delay)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
