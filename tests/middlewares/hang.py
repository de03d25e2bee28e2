#!/usr/bin/env python3
"""A middleware that reads every record and never answers (until its stdin ends)."""

import sys

print("hang.py: reading, never answering", file=sys.stderr, flush=True)
for _line in sys.stdin:
    pass
