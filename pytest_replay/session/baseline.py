"""Judging against a live baseline, the run's side: builds the DifferentialTarget around the target,
judges each exchange against the baseline (verdicts/baseline.py), counts per endpoint and field,
and at the end of the run fails fields whose differences go beyond the measured noise (a summary
entry like the budgets), with the per-endpoint difference table in the terminal and the evidence.
"""

from __future__ import annotations

import pytest

from ..http.units import ms
from ..verdicts.baseline import DiffCounts, judge

NODE = "replay-baseline"


def _same(a, b) -> bool:
    def norm(spec):
        if isinstance(spec, str):
            text = spec.strip().lower().rstrip("/")
            return "asgi:pytest_replay.demo.app:app" if text == "demo" else text
        return id(spec)
    return norm(a) == norm(b)


class Differential:
    """One per replay process with a baseline."""

    def __init__(self, settings, redactor) -> None:
        self.settings = settings
        self.redactor = redactor
        self.counts = DiffCounts()
        from ..report.aggregate import Aggregate
        self.aggregate = Aggregate()  # the baseline's side of the same requests: latency, status
        self.target = None  # the DifferentialTarget
        self.name = ""
        self.origins = None  # (baseline's, probe's) OriginResolver, with --replay-origins same
        self._secret_values: list[str] | None = None  # values of secret headers set for either side

    def wrap(self, candidate, target_spec, baseline_spec, *, verify: bool, check, is_write, keep_host: bool = False,
             origins=None):
        """The DifferentialTarget around `candidate`; usage errors exit pytest. `check(url)` is the
        production guard (a refusal text or None)."""
        from ..targets import make_target
        from ..targets.differential import DifferentialTarget

        s = self.settings
        if _same(target_spec, baseline_spec) or (isinstance(baseline_spec, str) and _same(
                getattr(candidate, "name", None), baseline_spec)):
            pytest.exit(f"replay baseline: {baseline_spec!r} is the target itself; the baseline must be another "
                        "instance (e.g. the last release) for a comparison to mean anything",
                        returncode=pytest.ExitCode.USAGE_ERROR)
        probe_spec = s.baseline2 if s.baseline2 is not None else baseline_spec
        own = self.side_rewrites()
        # a Host of the baseline's own, or the captured one: the baseline sends the request's Host
        keep_host = keep_host or s.baseline_original_host or any(name.lower() == b"host" for name, _ in own.set_headers)
        try:
            baseline = make_target(baseline_spec, verify=verify, keep_host=keep_host)
            probe = make_target(probe_spec, verify=verify, keep_host=keep_host)
        except (ValueError, TypeError) as exc:
            pytest.exit(f"replay baseline: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        for side in (baseline, probe):
            url = getattr(side, "url", None) or getattr(side, "base", None)
            refusal = check(str(url)) if url else None
            if refusal:
                pytest.exit(f"replay baseline: {refusal}", returncode=pytest.ExitCode.USAGE_ERROR)
        self.name = baseline.name
        if origins is not None:  # each side builds absolute URLs from its own Host: one value in diffs
            self.origins = (origins(baseline, own.set_headers), origins(probe, own.set_headers))
        self.target = DifferentialTarget(candidate, baseline, probe, probe=lambda planned: not is_write(planned.request),
                                         timeout_s=s.timeout * 0.9, side_request=own.apply if own else None)
        return self.target

    def network_sides(self) -> list:
        """The baseline's and the probe's network addresses (AllowedHost): an in-process target's
        socket blocker must let the engine reach them (it blocks every other connection)."""
        from ..targets.blocker import AllowedHost

        target = self.target
        sides = (target.baseline, target.probe_target) if target is not None else ()
        return list(dict.fromkeys(AllowedHost(side.hostname.lower(), side.port) for side in sides
                                  if getattr(side, "hostname", None) and getattr(side, "port", None)))

    def side_rewrites(self):
        """The baseline's own settings (--replay-baseline-set-header, --replay-baseline-rewrite-url),
        applied to the request as the target gets it."""
        from ..policy.rewrite import Rewrites

        return Rewrites(self.settings.baseline_set_header, self.settings.baseline_rewrite_url)

    def judge(self, exchange, observation, diff_config, error: str | None, *, mocked: bool = False,
              candidate_origins=None):
        """(verdict, failure text) against the baseline; None for a write answered from the recording
        (it never reached either side: judged against the recording as before)."""
        if mocked:
            return None
        target = self.target
        key = exchange.index
        baseline = target.baseline_sides.get(key) if target is not None else None
        probe = target.probe_sides.get(key) if target is not None else None
        pair = (None, None)
        if self.origins is not None and candidate_origins is not None:
            baseline_side, probe_side = self.origins
            pair = (baseline_side.against(candidate_origins, exchange), baseline_side.against(probe_side, exchange))
        judgement = judge(exchange, observation.response if observation.ok else None, baseline, probe, diff_config,
                          candidate_error=error, candidate_latency_ns=observation.latency_ns, origins=pair)
        self.counts.add(judgement)
        if baseline is not None:
            from ..schedule.target import Observation
            self.aggregate.add(exchange, Observation(key, 0, 0, baseline.latency_ns, baseline.latency_ns or 0,
                                                     baseline.response, baseline.error_kind, baseline.error))
        if judgement.verdict.passed:
            return judgement.verdict, ""
        return judgement.verdict, self.mask(self.render(exchange, observation, baseline, judgement))

    def mask(self, text: str) -> str:
        """Personal data masked, and the values of secret headers set for either side (an app that
        echoes its credentials in a body must not print them)."""
        text = self.redactor.mask_pii(text)
        for value in self._secrets():
            if value in text:
                text = text.replace(value, self.redactor.mask(value))
        return text

    def _secrets(self) -> list[str]:
        if self._secret_values is None:
            s, redactor = self.settings, self.redactor
            values = set()
            for name, value in (*s.set_header, *s.baseline_set_header):
                if redactor.is_secret_header(name):
                    text = value.decode("latin-1")
                    values.add(text)
                    token = text.split(None, 1)[-1]  # 'Bearer abc' -> 'abc'
                    if len(token) >= 6:
                        values.add(token)
            self._secret_values = sorted((v for v in values if v), key=len, reverse=True)
        return self._secret_values

    def render(self, exchange, observation, baseline, judgement) -> str:
        from ..verdicts.baseline import field_key, structural
        from ..verdicts.diff import Difference, _rescreen

        request = exchange.request
        redactor = self.redactor
        candidate = (f"{observation.response.status} in {ms(observation.latency_ns)}" if observation.ok
                     and observation.response is not None else f"{observation.error_kind}: {observation.error}")
        lines = [f"{request.method} {redactor.target(request.target)[:200]} HTTP/{request.version}  [{exchange.source}]",
                 f"  baseline ({self.name}): {baseline.describe() if baseline is not None else 'no answer'}   "
                 f"target: {candidate}"]
        verdict = judgement.verdict
        if verdict.differences and verdict.differences[0].part != "error":
            lines.append("  differences (baseline -> target):")
        for difference in verdict.differences:
            if difference.part == "error":
                lines.append(f"  {difference.replayed}")
                continue
            old, new = _rescreen(difference, redactor)
            text = str(Difference(difference.part, difference.path, old, new))
            key = field_key(difference)
            if key is not None:
                raw, noise, probed = self.counts.field(judgement.endpoint, key)
                why = structural(difference)
                text += (f"   [never noise: {why}]" if why else
                         f"   [noise so far: differed between baseline sends in {noise} of {probed} exchanges "
                         f"of {judgement.endpoint}, from the target in {raw}]")
            lines.append("    " + text)
        if verdict.more:
            lines.append(f"    ... and {verdict.more} more")
        if judgement.recorded_differences:
            lines.append(f"  context: the recording differs from the baseline in {judgement.recorded_differences} "
                         "places (not judged)")
        return "\n".join(lines)


# -- the end of the run ----------------------------------------------------------------------------------
BASELINE_ONLY = (("baseline_set_header", "--replay-baseline-set-header"),
                 ("baseline_rewrite_url", "--replay-baseline-rewrite-url"),
                 ("baseline_original_host", "--replay-baseline-original-host"),
                 ("baseline2", "--replay-baseline2"))


def check_usage(settings, baseline) -> None:
    """Without a baseline, a budget relative to the baseline or a setting of the baseline's side is a
    usage error (it would silently do nothing)."""
    if baseline is not None:
        return
    wrong = [str(b) for b in settings.budgets if getattr(b, "reference", None) == "baseline"]
    if wrong:
        pytest.exit(f"--replay-budget {wrong[0]!r} is relative to the baseline, but no --replay-baseline "
                    "(or replay_baseline fixture) was given", returncode=pytest.ExitCode.USAGE_ERROR)
    given = [flag for name, flag in BASELINE_ONLY if getattr(settings, name)]
    if given:
        pytest.exit(f"{given[0]} (or its ini twin) sets the baseline's side, but no --replay-baseline (or "
                    "replay_baseline fixture) was given", returncode=pytest.ExitCode.USAGE_ERROR)


def baseline_view(aggregate, baseline: dict):
    """A copy of `aggregate` whose recorded latency and status are the baseline's, measured in the
    same run on the same requests: relative budgets evaluated on it compare with the baseline."""
    from collections import Counter

    from ..report.aggregate import Aggregate, Histogram

    view = Aggregate.from_dict(aggregate.to_dict())
    side = Aggregate.from_dict(baseline)
    for key, stats in [(None, view.overall), *view.endpoints.items()]:
        theirs = side.overall if key is None else side.endpoints.get(key)
        stats.recorded = Histogram.from_dict(theirs.latency.to_dict()) if theirs is not None else Histogram()
        stats.recorded_status = Counter(theirs.status) if theirs is not None else Counter()
    return view


def evaluate_budgets(budgets, aggregate, baseline: dict) -> list:
    """Budgets over the run: relative ones against the baseline when there is one (unless written
    '... recorded'), the others as without a baseline."""
    import dataclasses

    from ..verdicts.budgets import evaluate_one

    view = baseline_view(aggregate, baseline) if baseline else None
    out = []
    for budget in budgets:
        if view is not None and budget.relative and budget.reference != "recorded":
            result = evaluate_one(budget, view)
            out.append(dataclasses.replace(
                result, reference="baseline", threshold=result.threshold.replace("recorded", "baseline"),
                reason=result.reason and result.reason.replace("the capture has no recorded", "the baseline has no")))
        else:
            out.append(evaluate_one(budget, aggregate))
    return out


def baseline_rewrites(settings, redactor) -> list[str]:
    """The baseline's own settings as the evidence lists them: header names, never their values."""
    return ([f"baseline set-header {name.decode('latin-1')}" for name, _ in settings.baseline_set_header]
            + [f"baseline rewrite-url {redactor.text(str(rule))}" for rule in settings.baseline_rewrite_url]
            + (["baseline original-host (the captured Host sent to the baseline)"]
               if settings.baseline_original_host else []))


def field_verdicts(settings, data: dict):
    return DiffCounts(data).fields(settings.noise_relative, settings.noise_absolute)


def report_fields(config: pytest.Config, session: pytest.Session, settings, data: dict) -> list:
    """Fields failing Diffy's thresholds on the merged counts: one failing summary entry each."""
    from _pytest.reports import TestReport

    failing = [row for row in field_verdicts(settings, data) if row.failed]
    hook = config.hook
    for row in failing:
        text = f"{row.endpoint} {row.field}"
        nodeid = f"{NODE}::{text}"
        properties = [("raw", row.raw), ("noise", row.noise), ("requests", row.requests), ("verdict", row.verdict)]
        for when in ("setup", "call", "teardown"):
            failed = when == "call"
            report = TestReport(nodeid, (NODE, None, text), {"replay_baseline": 1}, "failed" if failed else "passed",
                                row.line() if failed else None, when,
                                user_properties=properties if failed else [])
            hook.pytest_runtest_logreport(report=report)
    if failing and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return failing


def summary_lines(settings, data: dict, verbose: int = 0) -> list[str]:
    if not data:
        return []
    return DiffCounts(data).lines(settings.noise_relative, settings.noise_absolute, limit=200 if verbose else 30)


def evidence(settings, data: dict) -> dict:
    return {"counts": DiffCounts(data).to_dict(), "relative_percent": settings.noise_relative,
            "absolute_percent": settings.noise_absolute,
            "fields": [{"endpoint": r.endpoint, "field": r.field, "raw": r.raw, "noise": r.noise,
                        "requests": r.requests, "verdict": r.verdict} for r in field_verdicts(settings, data)]}
