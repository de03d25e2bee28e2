"""The run in Markdown for GitHub Actions' job summary: appended to the file $GITHUB_STEP_SUMMARY
names, when it is set (a run's or a merge's evidence: outcome, budgets, the endpoints and causes that
failed most, where the HTML report is). Rendered from the evidence dict, like the HTML report, so the
secrets it holds are already masked. Sans-IO apart from `append_step_summary`."""

from __future__ import annotations

import os

from .html import outcome

TOP = 10  # failing endpoints and causes listed
ICON = {"PASSED": ":white_check_mark:", "FAILED": ":x:", "INTERRUPTED": ":warning:", "INCOMPLETE": ":warning:"}


def _cell(text) -> str:
    """A Markdown table cell: pipes escaped, one line, bounded."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= 160 else text[:159] + "…"


def markdown(data: dict, html: str | None = None) -> str:
    state, reasons = outcome(data)
    totals = data.get("totals") or {}
    diff = data.get("diff") or {}
    lines = [f"## {ICON.get(state, '')} Traffic replay: {state}", ""]
    if reasons:
        lines += [f"- {_cell(r)}" for r in reasons] + [""]
    rep, rec = totals.get("replayed_ms") or {}, totals.get("recorded_ms") or {}
    lines.append(f"{totals.get('requests', 0):,} requests to `{_cell(data.get('target'))}`; "
                 f"{diff.get('failed', 0):,} of {diff.get('judged', 0):,} judged exchanges failed; "
                 f"p95 {rep.get('p95', '-')} ms replayed vs {rec.get('p95', '-')} ms recorded.")
    lines.append("")
    budgets = data.get("budgets") or []
    if budgets:
        lines += ["| budget | result | measured | threshold |", "|---|---|---|---|"]
        lines += [f"| `{_cell(b.get('budget'))}` | {'pass' if b.get('passed') else '**FAIL**'} | "
                  f"{_cell(b.get('measured'))} | {_cell(b.get('threshold'))} |" for b in budgets]
        lines.append("")
    failing = sorted((r for r in data.get("endpoints") or [] if r.get("failed")), key=lambda r: -r["failed"])
    if failing:
        lines += ["| endpoint | failed | requests | p95 recorded -> replayed ms | errors % |", "|---|---|---|---|---|"]
        for r in failing[:TOP]:
            rec = (r.get("recorded_ms") or {}).get("p95", "-")
            rep = (r.get("replayed_ms") or {}).get("p95", "-")
            errors = "-" if r.get("error_pct") is None else r["error_pct"]
            lines.append(f"| `{_cell(r['endpoint'])}` | {r['failed']:,} | {r.get('requests', 0):,} | {rec} -> {rep}"
                         f" | {errors} |")
        lines.append("")
    groups = (data.get("failures") or {}).get("groups") or []
    if groups:
        lines.append("Top causes:")
        lines += [f"- {g['exchanges']:,} exchanges: `{_cell(g['signature'])}`" for g in groups[:TOP]]
        if len(groups) > TOP:
            lines.append(f"- ... {len(groups) - TOP} more causes")
        lines.append("")
    if html:
        lines += [f"HTML report: `{_cell(os.path.abspath(html))}`", ""]
    return "\n".join(lines) + "\n"


def append_step_summary(data: dict, html: str | None = None, environ=os.environ) -> str | None:
    """Append the summary to $GITHUB_STEP_SUMMARY if set; a note saying what happened (or None)."""
    path = environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(markdown(data, html))
    except OSError as exc:
        return f"job summary NOT appended to {path}: {exc.strerror or exc}"
    return None


__all__ = ["append_step_summary", "markdown"]
