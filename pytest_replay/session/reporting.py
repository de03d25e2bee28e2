"""The end of a run, in the process that reports (a single process, or the xdist controller once
the workers' results are in): budgets as test reports, the evidence package, the terminal summary."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from ..policy.redact import REDACTION_NOTES
from ..report.run import RunReport, RunResults, render_terminal
from .run import ReplayRun, now_iso, unscheduled


BUDGET_NODE = "replay-budgets::"  # the node ids of budgets' test reports


def pace_text(settings) -> str:
    s = settings
    if s.stages:
        return "stages " + ", ".join(stage.text for stage in s.stages)
    if s.loop or s.duration:
        how = f"{s.loop} loops" if s.loop else f"for {s.duration:g} s"
        return (f"rate {s.rate:g}/s" if s.rate else f"speed {s.speed:g}x") + f", {how}"
    return f"rate {s.rate:g}/s" if s.rate else "speed 0 (no waiting)" if s.speed == 0 else f"speed {s.speed:g}x"


def item_outcomes(reporter) -> dict:
    """The run's test items by outcome, as pytest counts them (budgets' reports left out: they are
    counted with the budgets)."""
    if reporter is None:
        return {}
    counts = {}
    for key, reports in reporter.stats.items():
        if not key:  # (setup and teardown reports that passed: two per item, counted by nobody)
            continue
        n = sum(not str(getattr(r, "nodeid", "")).startswith(BUDGET_NODE) for r in reports)
        if n:
            counts[key] = n
    return counts


class Reporting:
    """Registered as a pytest plugin beside plugin.py, never in an xdist worker."""

    def __init__(self, run: ReplayRun) -> None:
        self.run = run
        self.config = run.config
        self.settings = run.settings
        self.collection = run.collection
        self.budget_results: list = []
        self._report: RunReport | None = None
        self._baseline: dict = {}
        self._update_lines: list[str] = []
        if self.settings.update and self.settings.baseline:
            raise pytest.UsageError("--replay-update accepts the responses that differ from the recording; with "
                                    "--replay-baseline they are judged against the baseline: drop one of them")
        if self.settings.update_to and len(self.collection.paths) > 1:
            raise pytest.UsageError("--replay-update-to FILE takes one capture; with several, each is written "
                                    "next to its capture as NAME.updated.EXT")
        self._capacity: dict = {}
        self._loss: dict | None = None  # the capture's bytes lost to gaps (session/capacity.capture_loss)
        self.data: dict | None = None  # the evidence data, when something renders it (files, summaries)
        if self.settings.report:
            try:  # now, not after the replay: a gate that cannot write its evidence should not run
                Path(self.settings.report).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise pytest.UsageError(f"--replay-report {self.settings.report}: cannot create the directory "
                                        f"({exc.strerror or exc})") from None
        if self.settings.html:
            from ..report.html import check_writable

            why = check_writable(self.settings.html)
            if why:
                raise pytest.UsageError(f"--replay-html {self.settings.html}: {why}")

    @pytest.hookimpl(tryfirst=True)  # before junitxml writes its file: budgets are test cases there
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.run.count_unjudged()
        results = self.run.results()
        if results.empty_shard and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # one job of a CI matrix with nothing to do is not a failure
        if not self.collection.loaded:
            return
        if self.run.stream is not None and results.failures and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # a streamed run that could not read it all
        if self.settings.noise_export:
            results.notes.append(self._export_noise(results))
        if results.escaped:  # blocked outbound calls of the app that no exchange can answer for
            from ..targets.outbound import fail_run

            results.notes.append(fail_run(session, results.escaped, self.run.redactor.text))
        self.budget_results = self._judge_budgets(session, results)
        if results.capacity and self.settings.shard:  # a shard ran its share of each rate
            results.capacity["shard"] = {"index": self.settings.shard[0], "count": self.settings.shard[1]}
        if results.capacity:
            from .capacity import report_stop
            report_stop(self.config, session, results.capacity)
        elif results.stopped:
            from .capacity import report_plain_stop
            results.notes.append(report_plain_stop(self.config, session, results.stopped, results.sent,
                                                   results.planned))
        from .capacity import capture_loss, report_loss
        self._loss = capture_loss(self.collection.capture_summary(), self.settings.max_capture_loss)
        report_loss(self.config, session, self._loss)
        if results.baseline:
            from .baseline import report_fields
            report_fields(self.config, session, self.settings, results.baseline)
        self._report = self._build(results)
        self._junit_properties(results)
        self._baseline = results.baseline
        self._capacity = results.capacity
        if self.settings.report or self.settings.html or os.environ.get("GITHUB_STEP_SUMMARY") or getattr(
                self.config.option, "htmlpath", None):  # pytest-html's --html: its summary shows the run
            data = self.data = self._evidence(session, exitstatus, results)
            if self.settings.report:
                self._write_evidence(session, data)
            if self.settings.html:
                self._write_html(session, data)
            if os.environ.get("GITHUB_STEP_SUMMARY"):
                self._step_summary(data)
        if self.settings.update:
            self._update_lines = self._write_update(session, exitstatus, results)

    def _export_noise(self, results: RunResults) -> str:
        """--replay-noise-export: the learned rules, one a line, for review (a note saying where)."""
        path = Path(self.settings.noise_export)
        rules = [entry["rule"] for entry in (results.noise or {}).get("rules", ())]
        header = ["# Noise learned by pytest-traffic-replay from " + ", ".join(self.collection.paths),
                  "# Review, then use it with --replay-noise-from FILE or under replay_ignore in the ini file."]
        try:
            partial = path.with_name(path.name + ".partial")
            partial.write_text("\n".join(header + rules) + "\n", encoding="utf-8")
            partial.replace(path)
        except OSError as exc:
            return f"noise NOT exported to {path}: {exc.strerror or exc}"
        return f"{len(rules)} learned noise rule(s) exported to {path}"

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self._report is None and self.collection.loaded:
            self._report = self._build(self.run.results())
        if self._report is not None:
            for line in render_terminal(self._report, verbose=terminalreporter.config.option.verbose):
                terminalreporter.write_line(line)
            from .baseline import summary_lines
            for line in summary_lines(self.settings, self._baseline, terminalreporter.config.option.verbose):
                terminalreporter.write_line(line)
            from . import capacity
            for line in capacity.summary_lines(self._capacity):
                terminalreporter.write_line(line)
            for line in capacity.loss_lines(self._loss):
                terminalreporter.write_line(line)
        for line in self._update_lines:
            terminalreporter.write_line(line)

    def _build(self, results: RunResults) -> RunReport:
        target = getattr(self.run.target, "name", None) or str(self.settings.target or "(replay_target fixture)")
        return RunReport.build(results, captures=self.collection.capture_summary(), target=target,
                               pace=pace_text(self.settings), budgets=self.budget_results,
                               unscheduled=unscheduled(self.settings))

    def _junit_properties(self, results: RunResults) -> None:
        """The replay's wall time, once, as properties of the JUnit test suite (each item's time is its
        own exchange's)."""
        try:
            from _pytest.junitxml import xml_key  # where --junitxml keeps its LogXML
        except ImportError:  # pragma: no cover - a pytest that moved it
            return
        xml = self.config.stash.get(xml_key, None)
        if xml is None or results.wall_s is None:
            return
        xml.add_global_property("replay_wall_time_s", f"{results.wall_s:.3f}")
        rate = self._report.throughput if self._report is not None else None
        if rate is not None:
            xml.add_global_property("replay_requests_per_s", f"{rate:.1f}")

    def latency_caveats(self, results: RunResults) -> dict:
        """Why relative latency budgets may mislead here: the target shares our cores, the capture
        is closed-loop."""
        return {"shared_cores": results.locality or None, "closed_loop": self.collection.closed_loop}

    # -- budgets -----------------------------------------------------------------------------
    def budgets(self) -> tuple:
        from ..verdicts.budgets import parse_budgets

        extra = [b for result in self.config.hook.pytest_replay_budgets(config=self.config) for b in (result or ())]
        try:
            return tuple(self.settings.budgets) + parse_budgets(extra)
        except ValueError as exc:
            raise pytest.UsageError(f"pytest_replay_budgets: {exc}") from None

    def _judge_budgets(self, session: pytest.Session, results: RunResults) -> list:
        from _pytest.reports import TestReport

        from ..verdicts.budgets import evaluate

        budgets = self.budgets()
        aggregate = results.aggregate
        if not budgets or not aggregate.overall.requests and not aggregate.endpoints:
            return []
        from ..verdicts.budgets import with_caveats
        from .baseline import evaluate_budgets

        evaluated = (evaluate_budgets(budgets, aggregate, results.baseline_aggregate) if results.baseline_aggregate
                     else evaluate(budgets, aggregate))
        outcome = with_caveats(evaluated, self.latency_caveats(results))
        if self.settings.shard:
            # A scoped budget may have no request in this shard: the merge of all shards judges it.
            outcome = [dataclasses.replace(r, passed=True, reason="no request of this shard; judged when the "
                                           "shards are merged") if not r.passed and r.requests == 0 else r
                       for r in outcome]
        hook = self.config.hook
        for result in outcome:
            text = str(result.budget)
            nodeid = f"replay-budgets::{text}"
            properties = [("measured", result.measured), ("recorded", result.recorded or ""),
                          ("threshold", result.threshold)]
            for when in ("setup", "call", "teardown"):
                failed = when == "call" and not result.passed
                report = TestReport(nodeid, ("replay-budgets", None, text), {"replay_budget": 1},
                                    "failed" if failed else "passed", result.line() if failed else None, when,
                                    user_properties=properties if when == "call" else [])
                hook.pytest_runtest_logreport(report=report)
        if any(not r.passed for r in outcome) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return outcome

    # -- --replay-update ---------------------------------------------------------------------
    def _write_update(self, session: pytest.Session, exitstatus: int, results: RunResults) -> list[str]:
        """Write each capture with the replayed responses (session/update.py); nothing after an
        interrupted replay unless --replay-update-partial."""
        from .update import Updates, render_update, updated_path, write_updated

        run = self.run
        updates = Updates()
        if run.updates is not None:
            updates.by_index.update(run.updates.by_index)
        updates.merge_dicts(results.updates, results.updates_truncated)
        why = self._interrupted(session, exitstatus, results, updates)
        if why and not self.settings.update_partial:
            return [f"replay update: NOT written ({why}); --replay-update-partial writes what was replayed"]
        lines = [f"replay update: partial ({why}): what was not replayed is kept as recorded"] if why else []
        exchanges = self.collection.exchanges or []
        for path in self.collection.paths:
            mine = [e for e in exchanges if os.path.realpath(e.source.file) == path]
            writes = {e.index for e in mine if e.index not in updates.by_index
                      and run.write_rules.classify(run.rewrites.apply(e.request)).write}
            target = self.settings.update_to or updated_path(path)
            try:
                result = write_updated(path, mine, updates.by_index, target, writes)
            except OSError as exc:
                lines.append(f"replay update: NOT written to {target}: {exc.strerror or exc}")
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
                continue
            lines += render_update(result)
        return lines

    @staticmethod
    def _interrupted(session: pytest.Session, exitstatus: int, results: RunResults, updates) -> str:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            return "the run was interrupted"
        if session.shouldstop or session.shouldfail:
            return f"the run stopped early: {session.shouldstop or session.shouldfail}"
        if results.failures:
            return "the replay stopped: " + "; ".join(results.failures)
        if results.sent < results.planned:
            return f"{results.sent} of {results.planned} requests sent"
        if updates.truncated:
            return "an xdist worker had more replayed responses than it may send (64 MiB)"
        return ""

    # -- evidence ----------------------------------------------------------------------------
    def _evidence(self, session: pytest.Session, exitstatus: int, results: RunResults) -> dict:
        """The evidence data: written with --replay-report, rendered with --replay-html."""
        from ..report.evidence import Evidence
        from .baseline import baseline_rewrites

        s, run, report = self.settings, self.run, self._report
        outcomes = item_outcomes(self.config.pluginmanager.get_plugin("terminalreporter"))
        evidence = Evidence.build(redactor=run.redactor,
            aggregate=results.aggregate, captures=self.collection.paths,
            capture_summary=self.collection.capture_summary(),
            target=report.target, pace={"speed": s.speed, "rate": s.rate, "max_wait_s": s.max_wait,
                                        "concurrency": s.concurrency, "timeout_s": s.timeout},
            filters=[f"include {p.pattern}" for p in s.include] + [f"exclude {p.pattern}" for p in s.exclude]
            + [f"allow-header {h}" for h in s.allow_header] + [f"disallow-header {h}" for h in s.disallow_header],
            rewrites=[f"set-header {n.decode('latin-1')}" for n, _ in s.set_header] + [str(r) for r in s.rewrite_url]
            + (["original-host (the captured Host sent unchanged)"] if s.original_host else [])
            + baseline_rewrites(s, run.redactor),
            redaction=self._redaction_notes(),
            sample=report.planned or None, write_policy=report.write_mode or None, budgets=self.budget_results,
            skipped=run.skipped, incomplete=self.collection.incomplete(),
            notes=results.notes + ([f"replay stopped: {report.failure}"] if report.failure else []),
            interrupted=report.interrupted or exitstatus == pytest.ExitCode.INTERRUPTED, planned=report.planned,
            shard=s.shard, outcomes=outcomes, started=run.started, finished=now_iso(), noise=report.noise,
            origins=report.origins,
            exit_status=int(session.exitstatus), wall_s=results.wall_s,
            latency_caveats=self.latency_caveats(results), workers=results.workers)
        if results.baseline:
            from .baseline import evidence as baseline_evidence
            baseline = evidence.more["baseline"] = baseline_evidence(s, results.baseline)
            if s.baseline:  # a URL given on the command line or in the ini file (a password masked)
                from ..http.sensitive import url_without_password
                baseline["target"] = url_without_password(str(s.baseline))
        if results.capacity:
            evidence.more["capacity"] = {**results.capacity, "planned_stages": [stage.text for stage in s.stages]}
        evidence.captures["loss"] = self._loss
        evidence.run.more.update(environment=s.environment, owner=s.owner, links=dict(s.links))
        return evidence.to_dict()

    def _write_evidence(self, session: pytest.Session, data: dict) -> None:
        from ..report.evidence import write_evidence

        s = self.settings
        try:
            path = write_evidence(s.report, data)
        except OSError as exc:  # a full disk, the directory removed meanwhile: the run fails, saying why
            self._report.notes.append(f"evidence NOT written to {s.report}: {exc.strerror or exc}")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        self._report.notes.append(f"evidence written to {path}")

    def _write_html(self, session: pytest.Session, data: dict) -> None:
        from ..report.html import write_html

        try:
            path = write_html(self.settings.html, data)
        except OSError as exc:  # as for the evidence: the run fails, saying why
            self._report.notes.append(f"HTML report NOT written to {self.settings.html}: {exc.strerror or exc}")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        self._report.notes.append(f"HTML report written to {path}")

    def _step_summary(self, data: dict) -> None:
        """GitHub Actions shows what is appended to $GITHUB_STEP_SUMMARY on the run's page."""
        from ..report.summary import append_step_summary

        where = append_step_summary(data, html=self.settings.html)
        if where:
            self._report.notes.append(where)

    def _redaction_notes(self) -> list[str]:
        s = self.settings
        notes = list(REDACTION_NOTES)
        notes += [f"secret header: {h}" for h in s.secret_headers] + [f"secret field: {p}" for p in s.secret_params]
        if s.show_headers or s.show_fields:
            notes.append(f"allowlist mode: only headers {list(s.show_headers)} and fields {list(s.show_fields)} shown")
        return notes
