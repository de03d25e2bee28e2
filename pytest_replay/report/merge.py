"""``python -m pytest_replay merge A.json B.json ... [--budget B]... [--report DIR] [--html FILE]``

Merges the evidence files of the shards of one run: histograms add bucket by bucket, so the merged
percentiles are exactly those of one run over all requests. Prints each shard's outcomes and the
totals, the per-endpoint table and one line per budget, evaluated over the whole, then the verdict.
Without --budget, the budgets recorded in the shards are evaluated again over the whole. Refuses
files of different captures (sha256), of another schema, duplicate shards and shards of different
splits.

Exit status, as pytest's: 0 every shard's items and every budget passed; 1 an item or an exchange
failed (or errored) in a shard, or a budget failed over the whole; 2 incomplete: a shard was
interrupted or is missing (this wins over 1: the verdict is not whole); 4 usage error or files
refused. No pytest import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..verdicts.budgets import evaluate, parse_budget, render_results, with_caveats
from .aggregate import Aggregate, render_table
from .evidence import EvidenceError, merge_evidence, read_evidence, write_evidence
from .run import render_causes

OK, FAILED, INCOMPLETE, USAGE = 0, 1, 2, 4  # pytest's ExitCode values for the same meanings
EXIT_STATUS = """exit status (as pytest's):
  0  every item of every shard passed (or was skipped) and every budget passed over the whole
  1  an item or exchange failed or errored in a shard, or a budget failed over the whole
  2  incomplete: a shard was interrupted or is missing (wins over 1: the verdict is not whole)
  4  usage error, or files refused: unreadable, of another evidence schema, of different captures
     (sha256), the same shard twice, shards of different splits (K of N with another N)

Each shard writes DIR/replay-evidence-shard-K-of-N.json (--replay-shard K/N --replay-report DIR); a
run without --replay-shard writes DIR/replay-evidence.json, as --report does here."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_replay merge",
        description="Merge the evidence files of replay shards, judge budgets over the whole, and gate: the "
                    "exit status says whether every shard's items and every budget passed.",
        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", metavar="EVIDENCE.json",
                        help="evidence files written by the shards (replay-evidence-shard-K-of-N.json)")
    parser.add_argument("--budget", action="append", default=[], metavar="BUDGET", type=_budget,
                        help="latency or error budget, e.g. 'p95<200ms', 'GET /api/users/*: p99<300ms', '5xx<1%%', "
                             "'p95<1.2x', '5xx<=recorded+0.5%%' (repeatable). Default: the shards' budgets.")
    parser.add_argument("--report", metavar="DIR", help="write the merged evidence to DIR/replay-evidence.json")
    parser.add_argument("--html", metavar="FILE", help="write the merged run as a self-contained HTML report to FILE")
    parser.add_argument("--rows", type=int, default=50, metavar="N", help="endpoints shown in the table (default 50)")
    return parser


def _budget(text: str):
    try:
        return parse_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the message (or the help: 0)
        return USAGE if exc.code else OK
    if args.html:
        from .html import check_writable

        why = check_writable(args.html)
        if why:
            print(f"merge: --html {args.html}: {why}", file=err)
            return USAGE
    try:
        named = [(path, read_evidence(path)) for path in args.files]
        budgets = list(args.budget)
        if not budgets:  # the shards' own budgets, in order, once each
            seen = []
            for _, data in named:
                for result in data.get("budgets") or []:
                    if result.get("budget") and result["budget"] not in seen:
                        seen.append(result["budget"])
            budgets = [parse_budget(text) for text in seen]
        merged, warnings = merge_evidence(named)
    except (EvidenceError, ValueError, KeyError) as exc:
        message = str(exc) if not isinstance(exc, KeyError) else f"an evidence file lacks the field {exc}"
        print(f"merge: {message}", file=err)
        return USAGE
    aggregate = Aggregate.from_dict(merged["aggregate"])
    results = with_caveats(evaluate(budgets, aggregate), merged.get("latency_caveats"))
    merged["budgets"] = [r.to_dict() for r in results]
    code, reasons = verdict(merged)
    merged["run"]["verdict"] = {"passed": code == OK, "exit_code": code, "reasons": reasons}
    for warning in warnings:
        print(f"warning: {warning}", file=err)
    lines = [f"merged {len(named)} evidence file(s): {aggregate.overall.requests} requests, "
             f"{len(aggregate.endpoints)} endpoints" + (" (INTERRUPTED)" if merged["run"]["interrupted"] else "")]
    lines += shard_lines(merged)
    lines += render_table(merged["endpoints"] + [merged["totals"]], limit=args.rows,
                          lateness=merged["lateness"] is not None)
    lines += render_causes(aggregate.failure_groups.most_common())
    lines += render_results(results)
    print("\n".join(lines), file=out)
    if args.report:
        path = write_evidence(args.report, merged)
        print(f"evidence: {path}", file=out)
    if args.html:
        from .html import write_html

        print(f"HTML report: {write_html(args.html, merged)}", file=out)
    from .summary import append_step_summary

    append_step_summary(merged, html=args.html)
    print(verdict_line(merged), file=out)
    return code


OUTCOMES = ("passed", "failed", "skipped", "error")


def _counts(outcomes: dict) -> str:
    shown = [f"{outcomes.get(key, 0)} {'errors' if key == 'error' else key}" for key in OUTCOMES]
    shown += [f"{n} {key}" for key, n in outcomes.items() if key not in OUTCOMES and key != "warnings" and n]
    return ", ".join(shown)


def shard_lines(merged: dict) -> list[str]:
    """One line per shard (its items' outcomes, interrupted, its exit status), then the totals."""
    run = merged["run"]
    lines = ["shards:"]
    for row in run.get("merged_from") or []:
        shard = row.get("shard")
        name = f"shard {shard['index']} of {shard['count']}" if shard else "whole run"
        state = " INTERRUPTED" if row.get("interrupted") else ""
        status = row.get("exit_status")
        lines.append(f"  {name}: {_counts(row.get('outcomes') or {})}{state}"
                     + (f"; pytest exit status {status}" if status is not None else "") + f" ({row['file']})")
        if row.get("stopped"):
            lines.append(f"    {name} STOPPED: {stop_text(row['stopped'])}")
    for index in run.get("missing_shards") or []:
        count = next(r["shard"]["count"] for r in run["merged_from"] if r.get("shard"))
        lines.append(f"  shard {index} of {count}: MISSING")
    lines.append(f"  total: {_counts(run.get('outcomes') or {})}; {merged['diff']['failed']} of "
                 f"{merged['diff']['judged']} judged exchanges failed")
    return lines


def stop_text(stop: dict) -> str:
    """A shard's own stop (a capacity run's stop condition), in one line."""
    return (f"'{stop['condition']}' tripped at stage {stop['stage']}, {stop['into_stage_s']:.1f} s into it "
            f"(measured {stop['measured']} over {stop['window_s']:g} s, {stop['requests_in_window']} requests)")


def verdict(merged: dict) -> tuple[int, list[str]]:
    """The merge's gate over merged evidence: (exit status, reasons it is not 0)."""
    run = merged["run"]
    outcomes = run.get("outcomes") or {}
    failing, incomplete = [], []
    if outcomes.get("failed"):
        failing.append(f"{outcomes['failed']} failed")
    if outcomes.get("error"):
        failing.append(f"{outcomes['error']} errors")
    exchanges = merged["diff"]["failed"]
    if exchanges and not outcomes.get("failed"):  # judged, but the items' outcomes were not recorded
        failing.append(f"{exchanges} exchanges failed")
    budgets = [b for b in merged.get("budgets") or [] if not b.get("passed")]
    if budgets:
        failing.append(f"{len(budgets)} budget{'s' if len(budgets) > 1 else ''} failed ("
                       + ", ".join(b["budget"] for b in budgets) + ")")
    for row in run.get("merged_from") or []:
        shard = row.get("shard")
        name = f"shard {shard['index']} of {shard['count']}" if shard else row["file"]
        if row.get("interrupted") or row.get("exit_status") == INCOMPLETE:
            incomplete.append(f"{name} was interrupted")
        elif row.get("exit_status") == 3:
            failing.append(f"{name} ended with an internal error (pytest exit status 3)")
        if row.get("stopped"):
            failing.append(f"{name} was stopped by '{row['stopped']['condition']}' at stage {row['stopped']['stage']}")
    if run.get("missing_shards"):
        incomplete.append("shard(s) " + ", ".join(map(str, run["missing_shards"])) + " missing")
    code = INCOMPLETE if incomplete else FAILED if failing else OK
    return code, incomplete + failing


def verdict_line(merged: dict) -> str:
    """The last line, as pytest ends a run: the state, the reasons, the exit status."""
    data = merged["run"]["verdict"]
    code = data["exit_code"]
    state = {OK: "PASSED", FAILED: "FAILED", INCOMPLETE: "INCOMPLETE"}[code]
    outcomes = merged["run"].get("outcomes") or {}
    reasons = data["reasons"] or [f"{outcomes.get('passed', 0)} passed"]
    return f"{state}: {'; '.join(reasons)} (exit status {code})"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
