"""The progress line printed while items wait for a long replay: on a terminal only, not under -q,
not in an xdist worker (its output is not shown)."""

from __future__ import annotations

import time

import pytest

from ..http.units import ms

def _isatty(reporter) -> bool:
    """TerminalReporter.isatty: an attribute up to pytest 8.3, a method since 8.4."""
    isatty = reporter.isatty
    return bool(isatty() if callable(isatty) else isatty)


class Progress:
    def __init__(self, config: pytest.Config, *, worker: bool, every_s: float, unscheduled: bool = False) -> None:
        self.config = config
        self.worker = worker
        self.unscheduled = unscheduled  # --speed 0: no lateness (nothing to be late for), the rate says it
        self.every_s = every_s
        self._show: bool | None = None  # decided once: every item waits
        self._last: tuple[float, int] | None = None  # (monotonic time, sent) of the last line

    @property
    def interval(self) -> float | None:
        """How long a wait lasts before a line is due (None: no lines, wait as long as it takes)."""
        if self._show is None:
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            self._show = (reporter is not None and not self.worker and self.config.option.verbose >= 0
                          and _isatty(reporter))
        return self.every_s if self._show else None

    def write(self, engine, key: int | None) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        line = self.line(engine, key)
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if capture is not None:
            with capture.global_and_fixture_disabled():  # output capture is on while items run
                reporter.write_line(line)
        else:
            reporter.write_line(line)

    def line(self, engine, key: int | None) -> str:
        progress = engine.progress()
        observations = engine.observations()[-2000:]  # the recent ones: enough for "p95 so far"
        latencies = sorted(o.latency_ns for o in observations if o.latency_ns is not None)
        lateness = sorted(o.lateness_ns for o in observations)
        now = time.monotonic()
        last = self._last
        if last is None and engine.t0_ns is not None:  # the first line: the rate since the replay began
            last = (now - max(engine.clock.now_ns() - engine.t0_ns, 0) / 1e9, 0)
        rate = "" if last is None else f" ({(progress.sent - last[1]) / max(now - last[0], 1e-9):.1f}/s)"
        self._last = (now, progress.sent)
        p95 = latencies[int(len(latencies) * 0.95)] if latencies else None
        p99 = lateness[int(len(lateness) * 0.99)] if lateness else None
        waiting = engine.due_in_s(key) if key is not None else None
        return (f"[replay] {progress.sent}/{progress.planned} sent{rate}, {progress.completed} done, "
                f"{progress.errors} errors, p95 so far {ms(p95, 1, missing='-')}"
                + ("" if self.unscheduled else f", lateness p99 {ms(p99, 2, missing='-')}")
                + (f"; this item's request is due in {waiting:.1f} s" if waiting and waiting > 0 else ""))
