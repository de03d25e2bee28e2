"""With pytest-html active (--html), replay items carry their diff and latencies as pytest-html
extras, and the run's summary (outcome, budgets, the per-endpoint table, where the --replay-html
report is) is added to pytest-html's summary. Registered only when pytest-html is installed and
--html was given; its hooks are optional (pytest-html declares them)."""

from __future__ import annotations

from html import escape

import pytest

from .items import ReplayItem

SHOWN = ("replay_endpoint", "recorded_status", "replayed_status", "recorded_latency_ms", "replayed_latency_ms",
         "lateness_ms", "replay_exchange", "replay_source")


def latency_html(properties: list) -> str:
    """The replay properties of an item's report as a small HTML table."""
    values = dict(properties)
    rows = "".join(f"<tr><th>{escape(name)}</th><td>{escape(str(values[name]))}</td></tr>"
                   for name in SHOWN if values.get(name) not in (None, ""))
    return f'<table class="replay">{rows}</table>' if rows else ""


class HtmlExtras:
    def __init__(self, reporting=None) -> None:
        self.reporting = reporting  # None in an xdist worker: the controller adds the summary

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call):
        report = yield
        if report.when == "call" and isinstance(item, ReplayItem):
            from pytest_html import extras

            found = list(getattr(report, "extras", []))
            table = latency_html(report.user_properties)
            if table:
                found.append(extras.html(table))
            if report.failed:
                found.append(extras.text(report.longreprtext, name="replay diff"))  # masked, as the terminal's
            report.extras = found
        return report

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix, summary, postfix, session) -> None:
        data = getattr(self.reporting, "data", None)
        if data:
            from ..report.html import summary_fragment

            postfix.append(summary_fragment(data, self.reporting.settings.html))


def active(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("html") and bool(getattr(config.option, "htmlpath", None))
