"""The HTML report: one self-contained file rendered from the evidence dict (report/evidence.py).

Written by ``--replay-html FILE`` at the end of a run (also an interrupted one, marked so) and by
``python -m pytest_replay merge ... --html FILE`` for shards, so it is built from the evidence data
alone, never from live objects. Self-contained: the CSS (report/report.css) and a few lines of
JavaScript (sortable tables) are inlined, charts are inline SVG drawn here; opening it needs no
network. Charts: latency distributions (recorded vs replayed, log scale) overall and per endpoint,
status classes, and, from the aggregate's per-second timeline (report/timeline.py), requests,
latency, lateness and status classes over the capture's time. Secrets: the evidence is already
masked (request targets by the Redactor, failure examples rendered as the terminal shows them), and
nothing else reaches the page. Bounded: huge diffs are cut with a note, the charts are downsampled,
so 100 endpoints of 100k requests stay far under 2 MB.

Sans-IO apart from `write_html` (atomic: a temporary file beside the target, then os.replace).
"""

from __future__ import annotations

import math
import os
import tempfile
from html import escape
from pathlib import Path

from .aggregate import ALL, LATENESS_CAUSES, Histogram, _highest
from .timeline import coarsen

MAX_ENDPOINT_CHARTS = 100  # latency-distribution charts drawn (endpoints with most requests first)
MAX_CURVE_POINTS = 120  # points per distribution curve
MAX_DIFF_LINES = 60  # lines shown per failure example
MAX_LINE_CHARS = 400  # characters shown per diff line
MAX_EXAMPLE_CHARS = 8_000  # characters shown per failure example
MAX_DIFF_CHARS = 600_000  # characters of failure examples in the whole report (keeps it well under 2 MB)
MAX_TIME_POINTS = 300  # buckets drawn in the charts over time (the timeline is folded to fit)
MAX_LISTED = 50  # skipped / incomplete examples listed
SCHEDULED = ("queueing behind the target included (its connection busy, a write barrier, a concurrency slot), "
             "the replayer's own lateness left out: what the stop conditions and 'scheduled' budgets judge")
SCHEDULED_NOTE = ("sched = response time from schedule: from the instant a request would have been sent had the "
                  f"replayer been on time to its first response byte, {SCHEDULED}; rep, the latency from send, "
                  "leaves that queueing out.")
CSS = Path(__file__).with_name("report.css")  # package data, inlined into every report

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var desc = th.getAttribute('aria-sort') !== 'descending';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', desc ? 'descending' : 'ascending');
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute('data-v');
        if (v === null) { return cell.textContent.toLowerCase(); }
        return v === '' ? -Infinity : parseFloat(v);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), r = x < y ? -1 : x > y ? 1 : 0;
        return desc ? -r : r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


# -- small helpers ---------------------------------------------------------------------------------
def _e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def _num(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.1f}"
    else:
        text = f"{value:,}"
    return text + unit


def _cell(value, unit: str = "", cls: str = "") -> str:
    """A numeric table cell carrying its raw value for sorting."""
    raw = "" if value is None else repr(float(value))
    klass = f' class="{cls}"' if cls else ""
    return f'<td data-v="{raw}"{klass}>{_e(_num(value, unit))}</td>'


def _table(headers: list[str], rows: list[str], cls: str = "", tid: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    ident = f' id="{tid}"' if tid else ""
    return (f'<table class="{cls}"{ident}><thead><tr>{head}</tr></thead><tbody>' + "".join(rows)
            + "</tbody></table>")


def _kv(pairs: list[tuple[str, str]]) -> str:
    """A two-column table of (label, HTML already escaped)."""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _cut(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    return line[:MAX_LINE_CHARS] + f" … [{len(line) - MAX_LINE_CHARS:,} more characters not shown]"


def _scheduled(data: dict) -> bool:
    """A run on a schedule (at --speed 0 everything is due at once: no response time from schedule)."""
    return data.get("lateness") is not None


def _queued(rep: dict | None, sched: dict | None, q: str = "p99") -> bool:
    """Queueing behind the target made the response time from schedule differ from the latency from send
    (by more than 1% at `q`: the terminal's rule, report/run.py scheduled_line)."""
    a, b = (rep or {}).get(q), (sched or {}).get(q)
    return a is not None and b is not None and b > a * 1.01


def _quantiles(figures: dict | None) -> str:
    figures = figures or {}
    return ", ".join(f"{q} {_num(figures.get(q), ' ms')}" for q in ("p50", "p95", "p99"))


# -- the outcome -------------------------------------------------------------------------------------
def outcome(data: dict) -> tuple[str, list[str]]:
    """("PASSED" | "FAILED" | "INTERRUPTED" | "INCOMPLETE", reasons) of a run's or a merge's evidence."""
    run = data.get("run") or {}
    verdict = run.get("verdict")
    if verdict:
        state = {0: "PASSED", 1: "FAILED", 2: "INCOMPLETE"}.get(verdict.get("exit_code"), "FAILED")
        if run.get("interrupted") and state != "PASSED":
            state = "INTERRUPTED"
        return state, list(verdict.get("reasons") or [])
    reasons = []
    outcomes = run.get("outcomes") or {}
    if outcomes.get("failed"):
        reasons.append(f"{outcomes['failed']} items failed")
    if outcomes.get("error"):
        reasons.append(f"{outcomes['error']} errors")
    failed_budgets = [b.get("budget") for b in data.get("budgets") or [] if not b.get("passed")]
    if failed_budgets:
        reasons.append("budgets failed: " + ", ".join(map(str, failed_budgets)))
    exchanges = (data.get("diff") or {}).get("failed")
    if exchanges and not outcomes.get("failed"):
        reasons.append(f"{exchanges} exchanges failed")
    if run.get("interrupted"):
        return "INTERRUPTED", ["the run was interrupted", *reasons]
    status = run.get("exit_status")
    if status not in (None, 0) and not reasons:
        reasons.append(f"pytest exit status {status}")
    return ("FAILED" if reasons else "PASSED"), reasons


# -- charts (inline SVG) -----------------------------------------------------------------------------
def distribution(hist_data: dict | None, points: int = MAX_CURVE_POINTS) -> list[tuple[float, float]]:
    """(latency ms, cumulative percent) points of a histogram dict, downsampled to about `points`."""
    hist = Histogram.from_dict(hist_data)
    if not hist.total:
        return []
    out: list[tuple[float, float]] = []
    seen, last = 0, -1.0
    step = 100.0 / points
    indexes = sorted(hist.counts)
    for n, index in enumerate(indexes):
        seen += hist.counts[index]
        percent = 100.0 * seen / hist.total
        if percent - last >= step or n == len(indexes) - 1 or (percent > 99 and percent - last >= step / 10):
            value = min(_highest(index), hist.max or 0)
            out.append((max(value, 1) / 1000.0, percent))
            last = percent
    return out


def _log_ticks(low: float, high: float) -> list[float]:
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    return [10.0 ** k for k in range(first, last + 1)]


def _tick_label(ms: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"


def latency_chart(title: str, curves: list[tuple[str, str, list[tuple[float, float]]]], width: int = 330,
                  height: int = 180) -> str:
    """Cumulative distribution of latency (x: ms, log scale; y: percent of requests at or below)."""
    values = [x for _, _, pts in curves for x, _ in pts]
    if not values:
        return ""
    left, right, top, bottom = 38, 20, 20, 28
    low, high = _log_ticks(min(values), max(values))[0], _log_ticks(min(values), max(values))[-1]
    if high <= low:
        high = low * 10
    span = math.log10(high) - math.log10(low)
    w, h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + w * (math.log10(x) - math.log10(low)) / span

    def py(y: float) -> float:
        return top + h * (1 - y / 100)

    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f"<title>{_e(title)}</title>",
             f'<text x="{left}" y="13" class="ct">{_e(title if len(title) <= 48 else title[:47] + "…")}</text>',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="frame"/>']
    for tick in _log_ticks(low, high):
        x = px(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" class="grid"/>'
                     f'<text x="{x:.1f}" y="{height - 14}" class="tk" text-anchor="middle">{_tick_label(tick)}</text>')
    for pct in (0, 50, 90, 100):
        y = py(pct)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 3}" y="{y + 3:.1f}" class="tk" text-anchor="end">{pct}%</text>')
    for n, (name, cls, pts) in enumerate(curves):
        if not pts:
            continue
        path = f"M{px(pts[0][0]):.1f},{py(0):.1f}" + "".join(f"L{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<path d="{path}" class="{cls}"><title>{_e(name)}</title></path>')
        lx = left + 4 + n * 90
        parts.append(f'<line x1="{lx}" y1="{height - 4}" x2="{lx + 14}" y2="{height - 4}" class="{cls}"/>'
                     f'<text x="{lx + 18}" y="{height - 1}" class="tk">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, groups: list[str], series: list[tuple[str, str, dict]], width: int = 420,
              height: int = 190) -> str:
    """Grouped bars: one group per label, one bar per series (name, css class, {label: value})."""
    peak = max([v for _, _, values in series for v in values.values()] + [0])
    if not peak or not groups:
        return ""
    left, right, top, bottom = 44, 8, 20, 34
    w, h = width - left - right, height - top - bottom
    slot = w / len(groups)
    bar = slot * 0.8 / max(len(series), 1)
    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f"<title>{_e(title)}</title>", f'<text x="{left}" y="13" class="ct">{_e(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="frame"/>',
             f'<text x="{left - 3}" y="{top + 4}" class="tk" text-anchor="end">{_num(peak)}</text>']
    for g, label in enumerate(groups):
        x0 = left + g * slot + slot * 0.1
        for s, (name, cls, values) in enumerate(series):
            value = values.get(label, 0)
            bh = h * value / peak
            parts.append(f'<rect x="{x0 + s * bar:.1f}" y="{top + h - bh:.1f}" width="{bar * 0.9:.1f}" '
                         f'height="{bh:.1f}" class="{cls}"><title>{_e(name)} {_e(label)}: {value:,}</title></rect>')
        parts.append(f'<text x="{left + (g + 0.5) * slot:.1f}" y="{top + h + 12}" class="tk" '
                     f'text-anchor="middle">{_e(label)}</text>')
    for s, (name, cls, _) in enumerate(series):
        lx = left + 4 + s * 90
        parts.append(f'<rect x="{lx}" y="{height - 10}" width="10" height="8" class="{cls}"/>'
                     f'<text x="{lx + 14}" y="{height - 2}" class="tk">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def time_chart(title: str, xs: list[float], series: list[tuple[str, str, list[float | None]]], unit: str,
               width: int = 560, height: int = 200) -> str:
    """Lines over time (x: seconds into the capture; y: linear from 0)."""
    values = [v for _, _, ys in series for v in ys if v is not None]
    if not xs or not values:
        return ""
    left, right, top, bottom = 60, 20, 20, 40
    w, h = width - left - right, height - top - bottom
    x0, x1 = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1
    peak = max(values) or 1.0

    def px(x: float) -> float:
        return left + w * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + h * (1 - y / peak)

    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f"<title>{_e(title)}</title>", f'<text x="{left}" y="13" class="ct">{_e(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="frame"/>']
    for frac in (0, 0.5, 1):
        y = py(peak * frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 3}" y="{y + 3:.1f}" class="tk" text-anchor="end">{peak * frac:.3g}'
                     f"{_e(unit)}</text>")
    for frac in (0, 0.25, 0.5, 0.75, 1):
        x = x0 + (x1 - x0) * frac
        parts.append(f'<text x="{px(x):.1f}" y="{top + h + 12}" class="tk" text-anchor="middle">{x:g} s</text>')
    for n, (name, cls, ys) in enumerate(series):
        path, pen = [], "M"
        for x, y in zip(xs, ys):
            if y is None:
                pen = "M"
                continue
            path.append(f"{pen}{px(x):.1f},{py(y):.1f}")
            pen = "L"
        if len(path) == 1:  # one point: a dot-sized line, still visible
            path.append("l1,0")
        if path:
            parts.append(f'<path d="{"".join(path)}" class="{cls}"><title>{_e(name)}</title></path>')
        lx = left + 4 + n * 95
        parts.append(f'<line x1="{lx}" y1="{height - 6}" x2="{lx + 14}" y2="{height - 6}" class="{cls}"/>'
                     f'<text x="{lx + 18}" y="{height - 3}" class="tk">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _schedule_curve(data: dict, row: dict | None, hists: dict, points: int = MAX_CURVE_POINTS) -> list:
    """The response time from schedule as a curve, where queueing made it differ from the latency."""
    row = row or {}
    if not _scheduled(data) or not _queued(row.get("replayed_ms"), row.get("scheduled_ms")):
        return []
    return [("sched", "sch", distribution(hists.get("response"), points))]


def _time_charts(data: dict) -> str:
    timeline = (data.get("aggregate") or {}).get("timeline")
    if not timeline or not timeline.get("rows"):
        return ('<p class="missing">Not drawn: requests, latency, lateness and status classes over time (this '
                "evidence has no per-second series).</p>")
    width, starts, rows = coarsen(timeline, MAX_TIME_POINTS)
    origin = starts[0]
    xs = [k - origin for k in starts]
    per_s = [r["requests"] / width for r in rows]
    mean = [r["latency_sum_us"] / r["latency_n"] / 1000 if r["latency_n"] else None for r in rows]
    peak = [r["latency_max_us"] / 1000 if r["latency_n"] else None for r in rows]
    unit = "1 s" if width == 1 else f"{width} s"
    charts = [time_chart(f"requests per second (buckets of {unit})", xs, [("requests/s", "rep", per_s)], ""),
              time_chart("replayed latency over time", xs, [("mean", "rep", mean), ("max", "mx", peak)], " ms")]
    if data.get("lateness") is not None:
        late_mean = [r["lateness_sum_us"] / r["requests"] / 1000 if r["requests"] else None for r in rows]
        late_max = [r["lateness_max_us"] / 1000 if r["requests"] else None for r in rows]
        charts.append(time_chart("lateness (send time - deadline) over time", xs,
                                 [("mean", "rep", late_mean), ("max", "mx", late_max)], " ms"))
    classes = [(name, f"s{name[0]}", [r[name] for r in rows]) for name in ("2xx", "3xx", "4xx", "5xx")
               if any(r[name] for r in rows)]
    if any(r["errors"] for r in rows):
        classes.append(("errors", "s6", [r["errors"] for r in rows]))
    charts.append(time_chart(f"status classes over time (responses per {unit} bucket)", xs, classes, ""))
    pace = data.get("pace") or {}
    how = (f"at speed {pace.get('speed')} the replay ran each second of the capture in 1/{pace.get('speed')} s"
           if pace.get("speed") and not pace.get("rate") else
           "the replay did not follow the capture's pace (--rate or --speed 0): the time axis is the capture's")
    return (f"<h3>Over time</h3><p>Seconds into the capture (the recorded requests' timestamps; {_e(how)}).</p>"
            f'<div class="charts">{"".join(c for c in charts if c)}</div>')


# -- sections ----------------------------------------------------------------------------------------
def _header(data: dict) -> str:
    state, reasons = outcome(data)
    run = data.get("run") or {}
    captures = data.get("captures") or {}
    files = "".join(f"<li><code>{_e(f.get('name') or f.get('path'))}</code> {_num(f.get('bytes'))} bytes, sha256 "
                    f"<code>{_e(f.get('sha256'))}</code></li>" for f in captures.get("files") or [])
    pace = data.get("pace") or {}
    pace_text = ", ".join(f"{k} {v}" for k, v in pace.items() if v is not None) or "-"
    policy = data.get("write_policy") or {}
    policy_text = f"{policy.get('policy') or '-'}: " + ", ".join(
        f"{policy.get(k, 0)} {k}" for k in ("mocked", "passed", "skipped", "flagged"))
    outcomes = ", ".join(f"{n} {k}" for k, n in (run.get("outcomes") or {}).items()) or "-"
    shard = run.get("shard")
    baseline = data.get("baseline")
    pairs = [("outcome", f'<span class="badge {state.lower()}">{state}</span> ' + _e("; ".join(reasons))),
             ("captures", f"<ul>{files}</ul>" if files else "-"),
             ("exchanges", _e(f"{captures.get('exchanges')} ({captures.get('complete')} complete, "
                              f"{captures.get('incomplete')} incomplete), recorded {captures.get('first')} .. "
                              f"{captures.get('last')}")),
             ("target", f"<code>{_e(data.get('target'))}</code>"),
             ("baseline", _e(_baseline_text(baseline)) if baseline else "none (judged against the recording)"),
             ("pace", _e(pace_text)), ("write policy", _e(policy_text)), ("test items", _e(outcomes)),
             ("replay", _e(f"{run.get('planned')} planned, wall time {_num(run.get('wall_s'), ' s')}, "
                           f"{_num((data.get('throughput') or {}).get('requests_per_s'))} requests/s")),
             *_latency_headline(data),
             ("run", _e(f"id {run.get('id')}, {run.get('started')} .. {run.get('finished')}"
                        + (f", shard {shard['index']} of {shard['count']}" if shard else "")))]
    if run.get("merged_from"):
        shards = "; ".join(f"{(r.get('shard') or {}).get('index', '?')}: {r.get('file')}"
                           + (" INTERRUPTED" if r.get("interrupted") else "") for r in run["merged_from"])
        missing = run.get("missing_shards")
        pairs.append(("merged shards", _e(shards + (f"; MISSING {missing}" if missing else ""))))
    tool = data.get("tool") or {}
    title = f"Traffic replay: {state}"
    return (f"<header><h1>{_e(title)}</h1><p class=\"sub\">{_e(tool.get('name'))} {_e(tool.get('version'))}, "
            f"evidence built {_e(data.get('created'))}</p></header><section id=\"run\"><h2>Run</h2>{_kv(pairs)}"
            "</section>")


def _latency_headline(data: dict) -> list[tuple[str, str]]:
    """The run's latency from send and, when queueing behind the target made it differ, its response time
    from schedule beside it, with what that means."""
    totals = data.get("totals") or {}
    rep, sched = totals.get("replayed_ms"), totals.get("scheduled_ms")
    if not rep or rep.get("p50") is None:
        return []
    pairs = [("latency", _e(f"from send (service): {_quantiles(rep)}"))]
    if _scheduled(data) and _queued(rep, sched):
        pairs.append(("response time from schedule",
                      f'<b class="sched">{_e(_quantiles(sched))}</b> <span class="note">({_e(SCHEDULED)})'
                      "</span>"))
    return pairs


def _capacity(data: dict) -> str:
    """A capacity run's stages (--replay-stages): per stage the latency from send and the response time
    from schedule at p99, and the stop, when a condition stopped it."""
    capacity = data.get("capacity") or {}
    stages = capacity.get("stages") or []
    if not stages:
        return ""
    rows = []
    for row in stages:
        service, sched = row.get("service_p99_ms"), row.get("scheduled_p99_ms")
        queued = service is not None and sched is not None and sched > 1.5 * service
        rows.append(f"<tr>{_cell(row.get('stage'))}<td>{_e(row.get('pace'))}</td>{_cell(row.get('duration_s'))}"
                    f"{_cell(row.get('target_rate'))}{_cell(row.get('sent'))}{_cell(row.get('planned'))}"
                    f"{_cell(row.get('errors'))}{_cell(service)}{_cell(sched, cls='bad' if queued else '')}"
                    f"{_cell(row.get('lateness_p99_ms'))}</tr>")
    table = _table(["stage", "pace", "duration s", "target req/s", "sent", "planned", "errors", "service p99 ms",
                    "sched p99 ms", "lateness p99 ms"], rows, "", "stages")
    stop = capacity.get("stopped")
    said = ""
    if stop:
        offered = stop.get("offered_rate")
        said = (f'<p class="stopped">STOPPED at stage {_e(stop.get("stage"))}, {_num(stop.get("into_stage_s"), " s")} '
                f"into it{_e(f', offered {offered:.1f} req/s' if offered is not None else '')}: "
                f"<code>{_e(stop.get('condition'))}</code> tripped (measured {_e(stop.get('measures') or '')} "
                f"{_e(stop.get('measured'))} over the last {_num(stop.get('window_s'), ' s')}, "
                f"{_num(stop.get('requests_in_window'))} requests).</p>")
    return (f'<section id="capacity"><h2>Capacity stages</h2><p class="note">service = latency from send; sched = '
            f"response time from schedule, {_e(SCHEDULED)}.</p>{table}{said}</section>")


def _baseline_text(baseline: dict) -> str:
    counts = baseline.get("counts") or {}
    fields = baseline.get("fields") or []
    failing = sum(1 for f in fields if f.get("verdict") not in (None, "", "ok", "noise"))
    where = f"{baseline['target']}: " if baseline.get("target") else ""
    return (f"{where}live baseline; noise thresholds relative {baseline.get('relative_percent')}%, absolute "
            f"{baseline.get('absolute_percent')}%; {len(fields)} fields compared, {failing} beyond noise"
            + (f"; counts {counts}" if counts and len(str(counts)) < 300 else ""))


def _budgets(data: dict) -> str:
    budgets = data.get("budgets") or []
    if not budgets:
        return '<section id="budgets"><h2>Budgets</h2><p>No budgets were set.</p></section>'
    rows = []
    for b in budgets:
        ok = b.get("passed")
        worst = ", ".join(f"{w.get('endpoint')}: {w.get('value')}" for w in (b.get("worst") or [])[:5])
        rows.append(f'<tr class="{"pass" if ok else "fail"}"><td><code>{_e(b.get("budget"))}</code></td>'
                    f'<td>{"pass" if ok else "FAIL"}</td><td>{_e(b.get("measured"))}</td>'
                    f'<td>{_e(b.get("recorded"))}</td><td>{_e(b.get("threshold"))}</td>'
                    f'<td>{_e(b.get("reason"))}{"<br>worst: " + _e(worst) if worst else ""}'
                    + "".join(f"<br><i>{_e(c)}</i>" for c in b.get("caveats") or []) + "</td></tr>")
    table = _table(["budget", "result", "measured", "recorded", "threshold", "why"], rows, "sortable")
    return f'<section id="budgets"><h2>Budgets</h2>{table}</section>'


def _endpoints(data: dict) -> str:
    rows_data = list(data.get("endpoints") or [])
    totals = data.get("totals")
    lateness = data.get("lateness") is not None
    headers = ["endpoint", "requests", "failed"]
    for q in ("p50", "p95", "p99", "max"):
        headers += [f"rec {q} ms", f"rep {q} ms"]
    if lateness:  # (on a schedule: at --speed 0 every request is due at once)
        headers += ["sched p95 ms", "sched p99 ms"]
    headers += ["errors %", "5xx %", "rec 5xx %", "4xx %"] + (
        ["late p99 ms", "late max ms", "lateness mostly"] if lateness else [])

    def cells(r: dict) -> str:
        rec, rep = r.get("recorded_ms") or {}, r.get("replayed_ms") or {}
        out = [f"<td><code>{_e(r.get('endpoint'))}</code></td>", _cell(r.get("requests")), _cell(r.get("failed"),
               cls="bad" if r.get("failed") else "")]
        for q in ("p50", "p95", "p99", "max"):
            worse = rec.get(q) is not None and rep.get(q) is not None and rep[q] > 1.5 * rec[q]
            out += [_cell(rec.get(q)), _cell(rep.get(q), cls="bad" if worse else "")]
        if lateness:
            sched = r.get("scheduled_ms") or {}
            for q in ("p95", "p99"):
                queued = rep.get(q) is not None and sched.get(q) is not None and sched[q] > 1.5 * rep[q]
                out.append(_cell(sched.get(q), cls="bad" if queued else ""))
        out += [_cell(r.get("error_pct"), cls="bad" if r.get("error_pct") else ""), _cell(r.get("5xx_pct")),
                _cell(r.get("recorded_5xx_pct")), _cell(r.get("4xx_pct"))]
        if lateness:
            late = r.get("lateness_ms") or {}
            out += [_cell(late.get("p99")), _cell(late.get("max")), f"<td>{_e(_main_cause(r))}</td>"]
        return "".join(out)

    body = [f"<tr>{cells(r)}</tr>" for r in rows_data]
    table = _table(headers, body, "sortable", "endpoints")
    if totals:
        table = table.replace("</tbody></table>", f'</tbody><tfoot><tr class="total">{cells(totals)}</tr></tfoot>'
                              "</table>")
    note = (f'<p class="note">{_e(SCHEDULED_NOTE)}</p>' if lateness else
            "<p>Lateness and the response time from schedule are not shown: at --speed 0 nothing is scheduled.</p>")
    return (f'<section id="endpoint-table"><h2>Endpoints</h2><p>Click a column header to sort. rec = recorded '
            f"in the capture, rep = replayed; latency is time to the first response byte.</p>{note}"
            f'<div class="scroll">{table}</div>{_lateness_causes(data)}</section>')


def _main_cause(row: dict) -> str:
    """The cause with the largest share of a row's lateness ('' when nothing was late)."""
    causes = row.get("lateness_causes") or {}
    if not causes:
        return ""
    cause, figures = max(causes.items(), key=lambda kv: kv[1].get("share_pct") or 0)
    return f"{cause} ({figures.get('share_pct')}%)"


def _lateness_causes(data: dict) -> str:
    """Why requests were late, for the whole run (the evidence's lateness.causes)."""
    lateness = data.get("lateness") or {}
    causes = lateness.get("causes") or {}
    if not causes:
        return ""
    rows = [f"<tr><td>{_e(cause)}</td><td>{_e(LATENESS_CAUSES.get(cause, ''))}</td>{_cell(c.get('requests'))}"
            f"{_cell(c.get('share_pct'))}{_cell(c.get('p50_ms'))}{_cell(c.get('p99_ms'))}{_cell(c.get('max_ms'))}</tr>"
            for cause, c in causes.items()]
    table = _table(["cause", "meaning", "requests late for it", "share of lateness %", "p50 ms", "p99 ms", "max ms"],
                   rows, "", "lateness-causes")
    spilled = lateness.get("spilled")
    note = (f"<p>{_e(spilled)} requests were sent on an extra connection (--replay-connections spill).</p>"
            if spilled else "")
    return f'<h3 id="lateness-by-cause">Lateness by cause</h3>{table}{note}'


def _charts(data: dict) -> str:
    aggregate = data.get("aggregate") or {}
    endpoints = aggregate.get("endpoints") or {}
    overall = aggregate.get("overall") or {}
    parts = ['<section id="charts"><h2>Charts</h2>']
    totals = data.get("totals") or {}
    main = latency_chart("all requests: latency distribution", [
        ("recorded", "rec", distribution(overall.get("recorded"))),
        ("replayed", "rep", distribution(overall.get("latency"))),
        *_schedule_curve(data, totals, overall)], width=520, height=240)
    errors = data.get("errors") or {}
    classes = ("1xx", "2xx", "3xx", "4xx", "5xx")
    transport = {k: v for k, v in (errors.get("transport") or {}).items() if k != "cancelled"}
    replayed = {**(errors.get("status") or {}), "errors": sum(transport.values())}
    groups = [c for c in classes if (errors.get("status") or {}).get(c) or (errors.get("recorded_status") or {}).get(c)]
    groups += ["errors"] if replayed["errors"] else []
    status = bar_chart("status classes, recorded vs replayed", groups,
                       [("recorded", "rec", errors.get("recorded_status") or {}), ("replayed", "rep", replayed)])
    parts.append(f'<div class="charts">{main}{status}</div>')
    ranked = sorted(endpoints, key=lambda k: (-(endpoints[k].get("requests") or 0), k))
    shown = ranked[:MAX_ENDPOINT_CHARTS]
    rows = {r.get("endpoint"): r for r in data.get("endpoints") or []}
    small = [latency_chart(key, [("recorded", "rec", distribution(endpoints[key].get("recorded"), 60)),
                                 ("replayed", "rep", distribution(endpoints[key].get("latency"), 60)),
                                 *_schedule_curve(data, rows.get(key), endpoints[key], 60)])
             for key in shown]
    small = [chart for chart in small if chart]
    parts.append("<h3>Latency distribution per endpoint</h3><p>Cumulative percent of requests at or below a "
                 "latency (log scale); a curve to the right of the recorded one is slower. Where queueing behind "
                 "the target made them differ, a third curve (sched) is the response time from schedule.</p>")
    parts.append(f'<div class="charts">{"".join(small)}</div>' if small else "<p>No latency was measured.</p>")
    if len(ranked) > len(shown):
        parts.append(f"<p>{len(ranked) - len(shown)} endpoints with fewer requests are not drawn "
                     "(they are in the table).</p>")
    parts.append(_time_charts(data))
    parts.append("</section>")
    return "".join(parts)


def _failures(data: dict) -> str:
    section = data.get("failures") or {}
    groups = section.get("groups") or []
    if not groups:
        return '<section id="failures"><h2>Failures</h2><p>No exchange failed.</p></section>'
    parts = [f'<section id="failures"><h2>Failures by cause</h2><p>{_num(section.get("failed"))} failed '
             f"exchanges, {_num(section.get('signatures'))} causes (an exchange counts under each of its causes); "
             f"{_num(section.get('examples_shown'))} examples shown, {_num(section.get('examples_omitted'))} left "
             "out. Secrets are masked as in the terminal.</p>"]
    budget = MAX_DIFF_CHARS
    for n, group in enumerate(groups):
        examples = []
        for example in group.get("examples") or []:
            if budget <= 0:
                examples.append(f"<p>exchange #{_e(example.get('index'))}: diff not shown (the report's size "
                                "limit for diffs was reached; the evidence JSON holds it)</p>")
                continue
            text = _example(example.get("diff") or [])
            budget -= len(text)
            examples.append(f"<p>exchange #{_e(example.get('index'))}</p><pre>{_e(text)}</pre>")
        omitted = group.get("omitted")
        more = f"<p>{omitted:,} more exchanges of this cause not shown.</p>" if omitted else ""
        opened = " open" if n < 3 else ""
        parts.append(f"<details{opened}><summary><b>{_num(group.get('exchanges'))}</b> exchanges: "
                     f"<code>{_e(group.get('signature'))}</code></summary>{''.join(examples)}{more}</details>")
    parts.append("</section>")
    return "".join(parts)


def _example(lines: list) -> str:
    """A failure's diff, cut to MAX_DIFF_LINES lines of MAX_LINE_CHARS and MAX_EXAMPLE_CHARS in all."""
    shown, size = [], 0
    for line in lines[:MAX_DIFF_LINES]:
        line = _cut(str(line))
        if size + len(line) > MAX_EXAMPLE_CHARS:
            break
        shown.append(line)
        size += len(line) + 1
    if len(lines) > len(shown):
        shown.append(f"… [{len(lines) - len(shown):,} more lines not shown: the diff is too long]")
    return "\n".join(shown)


def _noise(data: dict) -> str:
    diff = data.get("diff") or {}
    noise = diff.get("noise") or {}
    rules = noise.get("rules") or []
    ignored = diff.get("ignored") or {}
    parts = ['<section id="noise"><h2>Noise and ignored differences</h2>']
    if noise.get("summary"):
        parts.append(f"<p>{_e(noise['summary'])}</p>")
    if rules:
        rows = [f"<tr><td><code>{_e(r.get('rule'))}</code></td><td>{_e(r.get('learned'))}</td>{_cell(r.get('hid'))}"
                "</tr>" for r in rules]
        parts.append(_table(["learned rule", "why", "differences hidden"], rows, "sortable"))
    else:
        parts.append("<p>No noise was learned.</p>")
    if noise.get("not_used"):
        parts.append(f"<p>Not used: {_e(', '.join(map(str, noise['not_used'][:50])))}</p>")
    if ignored:
        rows = [f"<tr><td>{_e(why)}</td>{_cell(n)}</tr>"
                for why, n in sorted(ignored.items(), key=lambda kv: -kv[1])[:200]]
        parts.append("<h3>Differences ignored, by reason</h3>" + _table(["reason", "differences"], rows, "sortable"))
    parts.append("</section>")
    return "".join(parts)


def _listing(title: str, ident: str, listing: dict | None) -> str:
    listing = listing or {}
    if not listing.get("total"):
        return f'<section id="{ident}"><h2>{_e(title)}</h2><p>None.</p></section>'
    reasons = "".join(f"<li>{_e(k)}: {v:,}</li>" for k, v in sorted((listing.get("by_reason") or {}).items(),
                                                                     key=lambda kv: -kv[1]))
    rows = [f"<tr><td>{_e(x.get('index'))}</td><td><code>{_e(x.get('exchange'))}</code></td><td>{_e(x.get('source'))}"
            f"</td><td>{_e(x.get('reason'))}</td></tr>" for x in (listing.get("examples") or [])[:MAX_LISTED]]
    return (f'<section id="{ident}"><h2>{_e(title)}: {listing["total"]:,}</h2><ul>{reasons}</ul>'
            + _table(["#", "exchange", "source", "reason"], rows) + "</section>")


def _gaps(data: dict) -> str:
    gaps = data.get("known_gaps") or []
    method = data.get("method") or {}
    items = "".join(f"<li>{_e(g)}</li>" for g in gaps) or "<li>none</li>"
    how = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in method.items())
    return (f'<section id="gaps"><h2>What this report does not show</h2><ul>{items}</ul><h3>How the numbers were '
            f"measured</h3><ul>{how}</ul></section>")


def _css() -> str:
    return CSS.read_text(encoding="utf-8")


def render_html(data: dict) -> str:
    """The whole report as one HTML document (str)."""
    state, _ = outcome(data)
    body = "".join([_header(data), _budgets(data), _capacity(data), _endpoints(data), _charts(data), _failures(data),
                    _noise(data), _listing("Skipped exchanges", "skipped", data.get("skipped")),
                    _listing("Incomplete in the capture (not replayed)", "incomplete", data.get("incomplete")),
                    _gaps(data)])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Traffic replay: {_e(state)}</title><style>{_css()}</style></head>"
            f"<body>{body}<script>{SORT_JS}</script></body></html>\n")


def summary_fragment(data: dict, html_path: str | None = None) -> str:
    """The run's outcome, budgets and per-endpoint table as an HTML fragment (pytest-html's summary)."""
    state, reasons = outcome(data)
    link = (f'<p>Full replay report: <a href="{_e(Path(html_path).resolve().as_uri())}">{_e(html_path)}</a></p>'
            if html_path else "")
    return (f'<div class="replay-summary"><h2>Traffic replay: {_e(state)}</h2><p>{_e("; ".join(reasons))}</p>'
            f"{link}{_budgets(data)}{_endpoints(data)}</div>")


# -- files ---------------------------------------------------------------------------------------------
def check_writable(path: str | os.PathLike) -> str | None:
    """None if a report can be written at `path` (its directory is created), else why not."""
    path = Path(path)
    if path.is_dir():
        return "is a directory; give a file name, e.g. replay-report.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the directory {path.parent} ({exc.strerror or exc})"
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        return f"cannot write in {path.parent} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(temp)
    if path.exists() and not os.access(path, os.W_OK):
        return "the file exists and is not writable"
    return None


def write_html(path: str | os.PathLike, data: dict) -> Path:
    """Render `data` and write it to `path` atomically (temporary file in the same directory, fsync,
    os.replace); Ctrl-C during the write is delivered once the file is complete."""
    from .evidence import write_atomically

    return write_atomically(path, render_html(data))


__all__ = ["ALL", "bar_chart", "check_writable", "distribution", "latency_chart", "outcome", "render_html",
           "write_html"]
