#!/usr/bin/env python3
"""A middleware that never reads its stdin and ignores SIGTERM: only SIGKILL stops it."""

import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("deaf.py: not listening", file=sys.stderr, flush=True)
time.sleep(60)
