#!/usr/bin/env python3
"""A middleware that dies: reads one record, complains on stderr, exits with code 3."""

import sys

sys.stdin.readline()
print("crash.py: cannot handle this record, giving up", file=sys.stderr, flush=True)
sys.exit(3)
