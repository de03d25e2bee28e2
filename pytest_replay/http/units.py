"""Milliseconds, the one unit durations are shown and stored in: time formatting, once for everyone.

The package measures in integer nanoseconds (the engine, captures) and microseconds (the HDR
histograms of report/aggregate.py); people read milliseconds, and the evidence stores them.

    ms(12_345_678)                         -> '12.3 ms'   (verdicts, baseline, differential)
    ms(None)                               -> '?'
    ms(412_000, None)                      -> '0.412 ms'  (adaptive: fmt_ms)
    ms(2_500_000, 3, sign="+")             -> '+2.500 ms'
    fmt_ms(143.21) -> '143.2', fmt_ms(3.412) -> '3.41', fmt_ms(0.4123) -> '0.412', fmt_ms(None) -> '-'
    ms_number(1234, US_PER_MS)             -> 1.234       (a number for JSON)

A leaf module (no imports): every layer that shows a duration may use it, and it costs nothing.
"""

from __future__ import annotations

NS_PER_MS = 1_000_000
US_PER_MS = 1_000


def fmt_ms(value: float | None, missing: str = "-") -> str:
    """Milliseconds for display with about four significant digits: '143.2', '3.41', '0.412'."""
    if value is None:
        return missing
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def ms(ns: int | float | None, digits: int | None = 1, *, missing: str = "?", unit: str = " ms",
       sign: str = "") -> str:
    """Nanoseconds shown as milliseconds: `digits` decimals (None: fmt_ms's adaptive ones), then
    `unit`; `missing` for None; sign="+" shows the sign of an offset."""
    if ns is None:
        return missing
    value = ns / NS_PER_MS
    text = fmt_ms(value) if digits is None else f"{value:{sign}.{digits}f}"
    return text + unit


def ms_number(value: int | float | None, per_ms: int = NS_PER_MS, digits: int = 3) -> float | None:
    """`value` (nanoseconds, or microseconds with per_ms=US_PER_MS) as milliseconds rounded to
    `digits` decimals, for data (evidence, JSON); None stays None."""
    return None if value is None else round(value / per_ms, digits)


__all__ = ["NS_PER_MS", "US_PER_MS", "fmt_ms", "ms", "ms_number"]
