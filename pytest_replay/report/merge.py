"""``python -m pytest_replay merge A.json B.json ... [--budget B]... [--report DIR]``

Merges the evidence files of the shards of one run: histograms add bucket by bucket, so the merged
percentiles are exactly those of one run over all requests. Prints the per-endpoint table and one
line per budget, evaluated over the whole. Without --budget, the budgets recorded in the shards are
evaluated again over the whole. Refuses files of different captures (sha256), of another schema,
duplicate shards and shards of different splits.

Exit status: 0 every budget passed (or none), 1 a budget failed, 2 bad usage or files refused.
No pytest import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..verdicts.budgets import evaluate, parse_budget, render_results
from .aggregate import Aggregate, render_table
from .evidence import EvidenceError, merge_evidence, read_evidence, write_evidence
from .run import render_causes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_replay merge",
        description="Merge the evidence files of replay shards and evaluate budgets over the whole.")
    parser.add_argument("files", nargs="+", metavar="EVIDENCE.json", help="evidence files written by the shards")
    parser.add_argument("--budget", action="append", default=[], metavar="BUDGET", type=_budget,
                        help="latency or error budget, e.g. 'p95<200ms', 'GET /api/users/*: p99<300ms', '5xx<1%%', "
                             "'p95<1.2x', '5xx<=recorded+0.5%%' (repeatable). Default: the shards' budgets.")
    parser.add_argument("--report", metavar="DIR", help="write the merged evidence to DIR/replay-evidence.json")
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
    except SystemExit as exc:  # argparse printed the message
        return int(exc.code or 0)
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
        return 2
    aggregate = Aggregate.from_dict(merged["aggregate"])
    results = evaluate(budgets, aggregate)
    merged["budgets"] = [r.to_dict() for r in results]
    for warning in warnings:
        print(f"warning: {warning}", file=err)
    lines = [f"merged {len(named)} evidence file(s): {aggregate.overall.requests} requests, "
             f"{len(aggregate.endpoints)} endpoints" + (" (INTERRUPTED)" if merged["run"]["interrupted"] else "")]
    lines += render_table(merged["endpoints"] + [merged["totals"]], limit=args.rows)
    lines += render_causes(aggregate.failure_groups.most_common())
    lines += render_results(results)
    print("\n".join(lines), file=out)
    if args.report:
        path = write_evidence(args.report, merged)
        print(f"evidence: {path}", file=out)
    return 1 if any(not r.passed for r in results) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
