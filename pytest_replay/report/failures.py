"""Failed exchanges grouped by the cause of their failure: a diff signature.

A signature is the endpoint template and what changed with the values left out
(verdicts.diff.Difference.signature): "GET /api/rows/{id} body $.rows[*][3] number changed",
"GET /api/orders/{id} status 200 -> 500". One regression across a field gives one signature
however many exchanges it fails, so thousands of failures read as their few causes. An exchange
counts once under each signature its differences show.

`FailureGroups` counts exchanges per signature and keeps, per signature, the failing exchanges
with the smallest capture indexes (their rendered failure, masked as the terminal shows it), so
that merging the groups of xdist workers or shards keeps exactly the examples one process would
have kept. Bounded: at most MAX_SIGNATURES signatures (the rest counted under OTHER, without
examples) and EXAMPLES examples each. Sans-IO.
"""

from __future__ import annotations

from bisect import insort
from collections import Counter

MAX_SIGNATURES = 500
EXAMPLES = 3  # failing exchanges kept per signature
SHOWN = 100  # examples an evidence file shows in all
OTHER = "(other signatures)"
NO_DIFFERENCE = "(failed, no difference shown)"


class FailureGroups:
    """Failures per signature: counts and bounded examples; mergeable, JSON-safe."""

    __slots__ = ("counts", "examples")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[tuple[int, tuple[str, ...]]]] = {}  # signature -> [(index, lines)]

    def add(self, endpoint: str, verdict, index: int, text: str = "") -> None:
        """Count one failed exchange (its index in the capture) under each of its signatures;
        `text`: its failure as rendered for the terminal (secrets already masked)."""
        signatures = dict.fromkeys(f"{endpoint} {d.signature}" for d in verdict.differences)
        lines = tuple(text.splitlines()) if text else tuple(str(d) for d in verdict.differences)
        for signature in signatures or (f"{endpoint} {NO_DIFFERENCE}",):
            self._count(signature, 1, [(index, lines)])

    def _count(self, signature: str, count: int, examples: list) -> None:
        if signature not in self.counts and len(self.counts) >= MAX_SIGNATURES:
            signature = OTHER
        self.counts[signature] += count
        if signature == OTHER:
            return
        kept = self.examples.setdefault(signature, [])
        for example in examples:
            if len(kept) < EXAMPLES or example[0] < kept[-1][0]:
                insort(kept, example)
                del kept[EXAMPLES:]

    def merge(self, other: FailureGroups) -> FailureGroups:
        for signature, count in other.counts.items():
            self._count(signature, count, other.examples.get(signature, ()))
        return self

    def __bool__(self) -> bool:
        return bool(self.counts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FailureGroups) and (+self.counts, self.examples) == (+other.counts, other.examples)

    def most_common(self, n: int | None = None) -> list[tuple[str, int]]:
        """(signature, exchanges), most exchanges first (then by signature: a stable order)."""
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return ranked if n is None else ranked[:n]

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts),
                "examples": {s: [{"index": i, "diff": list(lines)} for i, lines in kept]
                             for s, kept in sorted(self.examples.items())}}

    @classmethod
    def from_dict(cls, data: dict | None) -> FailureGroups:
        groups = cls()
        data = data or {}
        groups.counts = Counter({k: int(v) for k, v in (data.get("counts") or {}).items()})
        groups.examples = {s: [(int(e["index"]), tuple(e["diff"])) for e in kept]
                           for s, kept in (data.get("examples") or {}).items()}
        return groups

    def section(self, failed: int, shown: int = SHOWN) -> dict:
        """The evidence's "failures": groups by signature, most exchanges first, with their first
        failing exchanges until `shown` examples in all; what was left out is counted."""
        groups, left = [], shown
        for signature, count in self.most_common():
            kept = self.examples.get(signature, [])[:max(left, 0)]
            left -= len(kept)
            groups.append({"signature": signature, "exchanges": count,
                           "examples": [{"index": i, "diff": list(lines)} for i, lines in kept],
                           "omitted": count - len(kept)})
        return {"failed": failed, "signatures": len(groups), "groups": groups,
                "examples_shown": shown - max(left, 0), "examples_omitted": sum(g["omitted"] for g in groups),
                "limits": {"examples_per_signature": EXAMPLES, "examples": shown, "signatures": MAX_SIGNATURES}}


__all__ = ["EXAMPLES", "MAX_SIGNATURES", "OTHER", "SHOWN", "FailureGroups"]
