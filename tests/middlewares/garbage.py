#!/usr/bin/env python3
"""A middleware that answers nonsense. Mode (argv[1]):
  nothex     (default) a line that is not hex
  badheader  valid hex of bytes without a '<type> <id> <ts>' header line
  unknownid  a well-formed request record with an id that was never sent
  twice      echoes each request twice
"""

import sys

mode = sys.argv[1] if len(sys.argv) > 1 else "nothex"
for line in sys.stdin:
    record = bytes.fromhex(line.strip())
    if mode == "nothex":
        out = "this is not hex at all, it is a log line printed to stdout by mistake\n"
    elif mode == "badheader":
        out = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".hex() + "\n"
    elif mode == "unknownid":
        out = (b"1 ffffffffffffffffffffffff 0 0\n" + record.split(b"\n", 1)[1]).hex() + "\n"
    else:
        out = (line.strip() + "\n") * 2
    sys.stdout.write(out)
    sys.stdout.flush()
