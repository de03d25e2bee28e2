"""The capture health summary: built once as data, rendered as text or JSON.

What `gor stat` should have been: how much was read, how much of it became complete exchanges,
what was skipped and why, where the capture has gaps, its time range and rate, and the endpoint mix
by method and path template, so a user sees at a glance whether the sample is representative.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ..http.units import ms_number
from ..reassembly.stats import CaptureStats

TOP_ENDPOINTS = 15
# Closed-loop bursts: a load tool (wrk, ab, k6 with no sleep) sends each request as soon as the
# previous response on its connection arrived, with no think time. Its latencies were measured under
# its own load, so a replay's ratio to them compares unlike things (verdicts/budgets.py says so).
BURST_GAP_NS = 1_000_000  # a request this soon after its connection's previous response: no think time
BURST_RUN = 10  # this many such requests in a row on one connection make a burst
BURST_SHARE = 0.1  # the capture is called closed-loop when bursts hold this share of its requests


def closed_loop(exchanges) -> dict | None:
    """{requests, of, connections, gap_ms, run} when closed-loop bursts hold at least BURST_SHARE of the
    requests of `exchanges` (Exchanges); None otherwise."""
    lanes: dict[str, list] = {}
    for exchange in exchanges:
        lanes.setdefault(exchange.connection, []).append(exchange)
    total = sum(len(members) for members in lanes.values())
    in_bursts = connections = 0
    for members in lanes.values():
        members.sort(key=lambda e: (e.position, e.index))
        runs = _back_to_back_runs(members)
        bursts = [n for n in runs if n >= BURST_RUN]
        in_bursts += sum(bursts)
        connections += bool(bursts)
    if not total or in_bursts < BURST_SHARE * total:
        return None
    return {"requests": in_bursts, "of": total, "connections": connections, "gap_ms": ms_number(BURST_GAP_NS),
            "run": BURST_RUN}


def _back_to_back_runs(members: list) -> list[int]:
    """Lengths of the runs of requests each sent within BURST_GAP_NS of the previous response."""
    runs, run = [], 1
    for previous, current in zip(members, members[1:]):
        answered = previous.response_ts_ns
        if answered is not None and 0 <= current.request_ts_ns - answered <= BURST_GAP_NS:
            run += 1
        else:
            runs.append(run)
            run = 1
    runs.append(run)
    return runs


PROTOCOL_NAMES = {"http/1": "HTTP/1.x"}  # connections by the protocol their exchanges were read as


def summary_data(stats: CaptureStats) -> dict:
    """Plain data (JSON-ready) describing a capture after it was read."""
    duration = None
    rate = None
    if stats.first_ts_ns is not None and stats.last_ts_ns is not None:
        duration = (stats.last_ts_ns - stats.first_ts_ns) / 1e9
        rate = stats.exchanges / duration if duration > 0 else None
    total = stats.exchanges or 1
    return {
        "files": stats.files,
        "packets": stats.packets,
        "bytes": stats.bytes,
        "records": dict(stats.records),
        "link_types": dict(stats.link_types),
        "connections": stats.connections,
        "exchanges": stats.exchanges,
        "complete": stats.complete,
        "incomplete": stats.exchanges - stats.complete,
        "incomplete_by_reason": dict(stats.incomplete),
        "requests_without_response": stats.no_response,
        "responses_without_request": dict(stats.orphan_responses),
        "skipped_streams": dict(stats.skipped_streams),
        "protocols": {PROTOCOL_NAMES.get(k, k): v for k, v in stats.protocols.items() if v},
        "tls": dict(stats.tls),
        "tls_connections": stats.tls_connections,
        "gaps": stats.gaps,
        "gap_bytes": stats.gap_bytes,
        "bytes_not_framed": dict(stats.lost),
        "retransmitted_bytes": stats.retransmitted_bytes,
        "packets_not_decoded": dict(stats.not_decoded),
        "ip_fragments": dict(stats.fragments),
        "lf_only_messages": stats.lf_only,
        "first_ts_ns": stats.first_ts_ns,
        "last_ts_ns": stats.last_ts_ns,
        "duration_s": duration,
        "exchanges_per_s": rate,
        "endpoints": [{"endpoint": name, "count": count, "share": round(count / total, 4)}
                      for name, count in stats.endpoints.most_common()],
        "notes": stats.notes,
        "warnings": [str(w) for w in stats.warnings],
        "warning_counts": dict(stats.warning_counts),
    }


def _when(ts_ns: int | None) -> str:
    if ts_ns is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts_ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):  # a damaged timestamp: beyond the years 1-9999
        return f"{ts_ns} ns since 1970 (out of the calendar's range)"


def _counts(counter: dict) -> str:
    return ", ".join(f"{key}: {value}" for key, value in sorted(counter.items(), key=lambda kv: -kv[1])) or "none"


def tls_line(conn: dict) -> str:
    """One TLS connection for inspect: version, cipher suite, decrypted or not and why."""
    what = ", ".join(x for x in (conn.get("version"), conn.get("cipher_suite")) if x) or "TLS"
    if conn.get("server_name"):
        what += f", SNI {conn['server_name']}"
    if conn.get("alpn"):
        what += f", ALPN {conn['alpn']}"
    state = f"decrypted ({conn['records']} records)" if conn.get("decrypted") else "not decrypted"
    reason = conn.get("reason") or ""
    if ", no key" in reason:
        state += ": no key" + reason.split(", no key", 1)[1]
    elif reason:
        state += f": {reason}"
    early = conn.get("early_data")
    if early:  # TLS 1.3 0-RTT: what became of the early data
        if early["accepted"] is False:
            state += f"; 0-RTT early data {early['reason']}"
        elif early["reason"]:
            state += f"; 0-RTT early data ({early['records']} records) not decrypted: {early['reason']}"
        else:
            state += f"; 0-RTT early data: {early['decrypted']} records decrypted"
    protocol = f"{conn['protocol']}, " if conn.get("protocol") else ""
    return f"{conn['connection']} (frame {conn['frame']}): {protocol}{what}: {state}"


def render_summary(data: dict) -> str:
    """The summary as text for a terminal."""
    lines = []
    for info in data["files"]:
        extra = []
        for key in ("packets", "records"):
            if key in info:
                extra.append(f"{info[key]} {key}")
        if info.get("compressed"):
            extra.append("gzip")
        if info.get("first_ts_ns") is not None:
            extra.append(f"{_when(info['first_ts_ns'])} .. {_when(info['last_ts_ns'])}")
        lines.append(f"{info['path']}: {info['format']}, {info['bytes']} bytes" + (f", {', '.join(extra)}" if extra else ""))
    if data["packets"]:
        lines.append(f"packets: {data['packets']}; link types: {_counts(data['link_types'])}")
    if data["records"]:
        lines.append(f"records: {_counts(data['records'])}")
    lines.append(f"data read: {data['bytes']} bytes")
    if data["packets_not_decoded"]:
        lines.append(f"packets not decoded to TCP: {_counts(data['packets_not_decoded'])}")
    if data["ip_fragments"]:
        lines.append(f"IP fragments: {_counts(data['ip_fragments'])}")
    if data["packets"]:
        protocols = data.get("protocols") or {}
        lines.append(f"connections: {data['connections']}" + (f" ({_counts(protocols)})" if protocols else ""))
    lines.append(f"exchanges: {data['exchanges']} ({data['complete']} complete, {data['incomplete']} incomplete)")
    if data["incomplete_by_reason"]:
        lines.append(f"  incomplete by reason: {_counts(data['incomplete_by_reason'])}")
    lines.append(f"  requests without a response: {data['requests_without_response']}")
    orphans = sum(data["responses_without_request"].values())
    lines.append(f"  responses without their request: {orphans}"
                 + (f" ({_counts(data['responses_without_request'])})" if orphans else ""))
    if data["packets"] or data["skipped_streams"]:
        lines.append(f"streams skipped (not HTTP/1.x): {_counts(data['skipped_streams'])}")
        lines.append(f"gaps: {data['gaps']} ({data['gap_bytes']} bytes missing)"
                     + (f"; bytes not framed: {_counts(data['bytes_not_framed'])}" if data["bytes_not_framed"] else ""))
    if data.get("tls"):
        lines.append(f"TLS connections: {_counts(data['tls'])}")
        for conn in data.get("tls_connections", [])[:TOP_ENDPOINTS]:
            lines.append("  " + tls_line(conn))
    if data["lf_only_messages"]:
        lines.append(f"messages with bare-LF line endings: {data['lf_only_messages']}")
    duration = data["duration_s"]
    span = f"{duration:.3f} s" if duration is not None else "-"
    rate = f", {data['exchanges_per_s']:.1f} exchanges/s" if data["exchanges_per_s"] else ""
    lines.append(f"time: {_when(data['first_ts_ns'])} .. {_when(data['last_ts_ns'])} ({span}{rate})")
    endpoints = data["endpoints"]
    if endpoints:
        lines.append(f"endpoints ({len(endpoints)}):")
        width = max(len(e["endpoint"]) for e in endpoints[:TOP_ENDPOINTS])
        for entry in endpoints[:TOP_ENDPOINTS]:
            lines.append(f"  {entry['endpoint']:<{width}}  {entry['count']:>8}  {entry['share'] * 100:5.1f}%")
        if len(endpoints) > TOP_ENDPOINTS:
            rest = sum(e["count"] for e in endpoints[TOP_ENDPOINTS:])
            lines.append(f"  ... {len(endpoints) - TOP_ENDPOINTS} more endpoints, {rest} exchanges")
    for note in data["notes"]:
        lines.append(f"note: {note}")
    shown = data["warnings"]
    total = sum(data["warning_counts"].values())
    if total:
        lines.append(f"warnings: {total} ({_counts(data['warning_counts'])})")
        for warning in shown[:20]:
            lines.append(f"  {warning}")
        if total > 20:
            lines.append(f"  ... {total - 20} more")
    return "\n".join(lines)
