"""Command line: ``python -m pytest_replay inspect|convert CAPTURE...`` (no pytest import).

    inspect CAPTURE...            the capture health summary
    inspect --json CAPTURE...     one JSON object per exchange, then {"summary": {...}}
    convert IN... OUT.gor[.gz]    GoReplay's format (types 1 and 2) from any capture

Exit status: 0 success, 1 a capture could not be read (the message says which file, where and
why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
from collections.abc import Sequence

from .capture import Capture, CaptureError
from .capture.gor import SEPARATOR
from .capture.summary import render_summary, summary_data
from .http.message import Exchange
from .policy.redact import DEFAULT as REDACT


def _server_ports(text: str) -> list[int]:
    try:
        ports = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated port numbers, got {text!r}") from None
    if not ports or not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"expected port numbers between 1 and 65535, got {text!r}")
    return ports


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytest_replay",
                                     description="Inspect and convert HTTP traffic captures (.gor, pcap, pcapng).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = sub.add_parser("inspect", help="summarise captures: counts, gaps, skipped streams, endpoint mix")
    inspect.add_argument("captures", nargs="+", metavar="CAPTURE", help="files, globs or directories")
    inspect.add_argument("--json", action="store_true", help="JSON Lines: one object per exchange, then the summary")
    inspect.add_argument("--server-ports", type=_server_ports, metavar="P1,P2",
                         help="ports that are servers (for connections captured without their SYN)")
    convert = sub.add_parser("convert", help="write GoReplay's .gor format (types 1 and 2) from any capture")
    convert.add_argument("paths", nargs="+", metavar="PATH", help="input captures..., then the output .gor (or .gor.gz)")
    convert.add_argument("--server-ports", type=_server_ports, metavar="P1,P2",
                         help="ports that are servers (for connections captured without their SYN)")
    return parser


def exchange_json(exchange: Exchange) -> dict:
    response = exchange.response
    return {
        "index": exchange.index,
        "connection": exchange.connection,
        "position": exchange.position,
        "method": exchange.request.method,
        "target": REDACT.target(exchange.request.target),
        "status": response.status if response is not None else None,
        "request_body_bytes": len(exchange.request.body),
        "response_body_bytes": len(response.body) if response is not None else None,
        "request_ts_ns": exchange.request_ts_ns,
        "response_ts_ns": exchange.response_ts_ns,
        "recorded_latency_ns": exchange.recorded_latency_ns,
        "complete": exchange.complete,
        "reasons": list(exchange.reasons),
        "source": {"file": exchange.source.file, "offset": exchange.source.offset,
                   "record": exchange.source.record, "frames": list(exchange.source.frames)},
    }


def cmd_inspect(args: argparse.Namespace, out) -> int:
    capture = Capture(args.captures, server_ports=args.server_ports)
    if args.json:
        for exchange in capture:
            out.write(json.dumps(exchange_json(exchange)) + "\n")
        out.write(json.dumps({"summary": summary_data(capture.stats)}) + "\n")
    else:
        for _ in capture:
            pass
        out.write(render_summary(summary_data(capture.stats)) + "\n")
    return 0


def gor_id(connection: str, position: int) -> str:
    """A 24-hex id like current GoReplay's: 16 hex naming the connection, 8 for the request."""
    return hashlib.sha1(connection.encode()).hexdigest()[:16] + f"{position & 0xFFFFFFFF:08x}"


def gor_records(exchange: Exchange) -> list[bytes]:
    """Type 1 (and 2, when the response was captured whole) records for one exchange."""
    rid = gor_id(exchange.connection, exchange.position)
    records = [f"1 {rid} {exchange.request_ts_ns} -1\n".encode() + exchange.request.raw]
    response = exchange.response
    if response is not None and not any(flag.part == "response" for flag in exchange.flags):
        records.append(f"2 {rid} {exchange.response_ts_ns} -1\n".encode() + response.raw)
    return records


def cmd_convert(args: argparse.Namespace, out, err) -> int:
    if len(args.paths) < 2:
        err.write("convert: give the input capture(s), then the output .gor file\n")
        return 2
    *inputs, target = args.paths
    if not target.endswith((".gor", ".gor.gz")):
        err.write(f"convert: the output must end with .gor or .gor.gz, got {target!r}\n")
        return 2
    capture = Capture(inputs, server_ports=args.server_ports)
    written = skipped_incomplete = skipped_separator = 0
    partial = target + ".partial"
    opener = gzip.open if target.endswith(".gz") else open
    try:
        with opener(partial, "wb") as sink:
            for exchange in capture:
                if not exchange.replayable:
                    skipped_incomplete += 1
                    continue
                records = gor_records(exchange)
                if any(SEPARATOR in record for record in records):
                    skipped_separator += 1  # .gor cannot represent a payload holding its separator
                    continue
                for record in records:
                    sink.write(record + SEPARATOR)
                written += 1
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    stats = capture.stats
    out.write(f"wrote {target}: {written} exchanges ({stats.exchanges} read)\n")
    if skipped_incomplete:
        out.write(f"  skipped {skipped_incomplete} exchanges whose request is incomplete (not replayable)\n")
    if skipped_separator:
        out.write(f"  skipped {skipped_separator} exchanges whose bytes contain the .gor separator line\n")
    orphans = sum(stats.orphan_responses.values())
    if orphans:
        out.write(f"  not written: {orphans} responses without their request\n")
    return 0


def main(argv: Sequence[str] | None = None, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "inspect":
            return cmd_inspect(args, out)
        return cmd_convert(args, out, err)
    except CaptureError as exc:
        err.write(f"error: {exc}\n")
        return 1
    except BrokenPipeError:  # `inspect --json ... | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
