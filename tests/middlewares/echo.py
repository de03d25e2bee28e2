#!/usr/bin/env python3
"""GoReplay's examples/middleware/echo.py, in Python 3: decode each record, log it to stderr, re-encode
it and echo it (every type: requests, original and replayed responses).

Like the original it does not flush stdout: it relies on being run unbuffered (pytest_replay's Middleware
sets PYTHONUNBUFFERED=1; with GoReplay use `python3 -u`). Unlike the original it accepts a payload
without an empty line (the original raises ValueError there), and it has no line-length limit.
"""

import binascii
import sys

EMPTY_LINE = b"\r\n\r\n"  # end of the header section


def log(msg):
    """Log to stderr: stdout and stdin carry the data."""
    try:
        msg = str(msg) + "\n"
    except Exception:
        pass
    sys.stderr.write(msg)
    sys.stderr.flush()


def find_end_of_headers(byte_data):
    position = byte_data.find(EMPTY_LINE)
    return len(byte_data) if position < 0 else position + 4


def process_stdin():
    for raw_line in sys.stdin:
        line = raw_line.rstrip()
        if not line:
            continue
        decoded = bytes.fromhex(line)
        # metadata (the header line) and payload (headers + body)
        raw_metadata, payload = decoded.split(b"\n", 1)
        headers_pos = find_end_of_headers(payload)
        raw_headers = payload[:headers_pos]
        raw_content = payload[headers_pos:]

        log("===================================")
        request_type_id = int(raw_metadata.split(b" ")[0])
        log("Request type: {}".format({1: "Request", 2: "Original Response", 3: "Replayed Response"}[request_type_id]))
        log("===================================")
        log("Original data:")
        log(line)
        log("Decoded request:")
        log(decoded)

        encoded = binascii.hexlify(raw_metadata + b"\n" + raw_headers + raw_content).decode("ascii")
        log("Encoded data:")
        log(encoded)
        sys.stdout.write(encoded + "\n")


if __name__ == "__main__":
    process_stdin()
