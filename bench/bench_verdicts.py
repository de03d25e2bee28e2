"""Judging cost per exchange for JSON bodies (issue 13.1): compare() on bodies of ~300 B, ~20 KB and
~200 KB, identical and with one value changed, beside json.loads of the same two bodies (the least
any JSON verdict must do) and beside deepdiff, the reference of the walk (verdicts/jsondiff.py).

    python bench/bench_verdicts.py [--quick]

Judged as a run judges them by default: origins treated as one (the bodies hold absolute URLs of the
recorded origin and of the replayed one), clock noise on. Target: a one-value change in the 200 KB
body judged in under 50 ms (exit 1 when missed). Figures are medians of repeated calls in one
process; the machine's load moves them all alike, the ratios less.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.verdicts import jsondiff
from pytest_replay.verdicts.clock import ClockNoise
from pytest_replay.verdicts.diff import DiffConfig, compare
from pytest_replay.verdicts.origin import Origins

TARGET_MS = 50.0
RECORDED, REPLAYED = "https://shop.example.com", "http://127.0.0.1:8000"
SIZES = (("300 B", 1), ("20 KB", 60), ("200 KB", 600))  # items in the document


def document(items: int, origin: str) -> dict:
    """An API page: items with nested objects, numbers, booleans, times and absolute URLs."""
    return {
        "page": 1, "per_page": items, "next": f"{origin}/api/items?page=2",
        "generated_at": "2026-12-06T10:00:00Z",
        "items": [{
            "id": i, "sku": f"SKU-{i:06d}", "name": f"Item number {i}", "price": round(9.99 + i * 0.37, 2),
            "in_stock": i % 3 != 0, "tags": ["sale", "new"] if i % 2 else ["core"],
            "dimensions": {"w": 10 + i % 7, "h": 20.5, "d": 3},
            "links": {"self": f"{origin}/api/items/{i}", "image": f"{origin}/img/{i}.png"},
            "updated_at": "2026-12-01T08:30:00Z",
        } for i in range(items)],
    }


def responses(items: int, change: bool) -> tuple[Response, Response]:
    headers = [(b"Content-Type", b"application/json")]
    old = document(items, RECORDED)
    new = document(items, REPLAYED)
    if change:
        new["items"][items // 2]["name"] = "renamed"
    encode = lambda doc: json.dumps(doc).encode()  # noqa: E731
    return Response.build(200, "OK", headers, encode(old)), Response.build(200, "OK", headers, encode(new))


def median_ms(fn, rounds: int) -> float:
    fn()  # warm: compiled patterns, imports
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    quick = "--quick" in sys.argv
    now = time.time_ns()
    clock = ClockNoise((now - 10**9, now), now, lambda: now)
    config = DiffConfig(clock=clock)
    origins = Origins((RECORDED,), (REPLAYED,))
    request = Request.build("GET", "/api/items", [(b"Host", b"shop.example.com")])
    failed = False
    print(f"{'body':>8} {'case':>10} {'compare (walk)':>15} {'json.loads x2':>14} {'ratio':>6} {'deepdiff ref':>13}")
    for label, items in SIZES:
        for change in (False, True):
            recorded, replayed = responses(items, change)
            exchange = Exchange(0, request, recorded, 0, 1, "10.0.0.1:5000 -> 10.0.0.2:443", 0, Source("bench", 0))
            judge = lambda: compare(recorded, replayed, config, exchange=exchange, origins=origins)  # noqa: E731
            rounds = 5 if quick else 21
            walk = median_ms(judge, rounds)
            loads = median_ms(lambda: (json.loads(recorded.body), json.loads(replayed.body)), rounds)
            verdict = judge()
            expected = not change
            assert verdict.passed is expected, verdict.summary
            reference = "-"
            if not (quick and items > 60):
                jsondiff.FAST_PATH = False
                try:
                    reference = f"{median_ms(judge, 1 if items > 60 else 3):.1f} ms"
                    assert judge() == verdict, "the walk and deepdiff disagree"
                finally:
                    jsondiff.FAST_PATH = True
            case = "one value" if change else "identical"
            print(f"{label:>8} {case:>10} {walk:>12.2f} ms {loads:>11.2f} ms {walk / loads:>5.1f}x {reference:>13}"
                  f"   ({len(recorded.body):,} / {len(replayed.body):,} bytes)")
            if change and items == SIZES[-1][1]:
                ok = walk < TARGET_MS
                failed |= not ok
                print(f"target: one value changed in {label} judged in < {TARGET_MS:g} ms: "
                      f"{walk:.1f} ms {'PASS' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
