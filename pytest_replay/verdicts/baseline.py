"""Judging against a live baseline (Diffy's model): the differential verdict and the noise counts.

Per exchange, three responses to the same request at the same deadline: the candidate's (the target
under test), the baseline's (a known-good version) and, for reads, the baseline's again (or a second
baseline's): the noise probe. `diff.compare` does the comparing (same rules as against a recording):
baseline vs candidate gives the raw differences, baseline vs probe the noise. A field differing
between baseline and candidate but not between baseline and probe fails the exchange. Never noise,
whatever the probe says: a status change, a field renamed, added or removed, a changed number of
array elements or text lines, a value changing type.

Per endpoint (method + path template) and per field (JSONPath with [*] for list indices, header,
text line), `DiffCounts` counts raw differences and noise differences over the run (mergeable across
xdist workers and shards: plain dicts). At the end of the run, Diffy's thresholds apply to the merged
counts: a field fails when (raw - noise) / raw > relative% and (raw - noise) / requests > absolute%.
The recorded response is context only: how many exchanges differ between recording and baseline.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from ..http.message import Exchange
from ..http.normalize import endpoint_of
from .diff import ABSENT, DiffConfig, Difference, Verdict, compare

__all__ = ["DiffCounts", "FieldVerdict", "Judgement", "field_key", "judge", "structural"]

RELATIVE = 20.0  # percent, Diffy's default
ABSOLUTE = 0.03  # percent, Diffy's default
ALL_DIFFS = 10_000
# Statuses that say the side did not accept the request as sent (credentials, Host): when only one side
# answers one, that side's settings are the likely cause, and the failure says so.
REFUSALS = {401: "Unauthorized", 403: "Forbidden", 407: "Proxy Authentication Required",
            421: "Misdirected Request"}
SIDE_HINTS = {
    "baseline": "are the baseline's credentials and Host right? Settings for the baseline only: "
                "--replay-baseline-set-header, --replay-baseline-rewrite-url",
    "target": "a regression, or the target's credentials or Host are wrong (--replay-set-header sets them for "
              "both sides; --replay-baseline-set-header overrides them for the baseline)",
}
_INDEX = re.compile(r"\[\d+\]")


def field_key(difference: Difference) -> str | None:
    """The field a difference is about: 'status', 'header NAME', '$.a[*].b', 'body line 3'...
    None for what is not a field (latency, errors)."""
    if difference.part == "status":
        return "status"
    if difference.part == "header":
        return f"header {difference.path}"
    if difference.part == "body":
        return _INDEX.sub("[*]", difference.path) if difference.path.startswith("$") else f"body {difference.path}"
    return None


def _kind(shown: str) -> str:
    """The JSON type of a displayed value (values are shown as JSON, possibly truncated)."""
    first = shown[:1]
    if first == '"':
        return "string"
    if first in "{[":
        return {"{": "object", "[": "array"}[first]
    if shown.startswith(("true", "false")):
        return "boolean"
    if shown.startswith("null"):
        return "null"
    if first.isdigit() or first == "-":
        return "number"
    return "other"


def structural(difference: Difference) -> str | None:
    """Why this difference can never be noise (None: a value change, noise can explain it)."""
    if difference.part == "status":
        return "status changed"
    if difference.part == "body" and difference.path in ("kind", "content-encoding"):
        return "body kind changed"
    if ABSENT in (difference.recorded, difference.replayed):
        if difference.part == "body" and difference.path.startswith("$"):
            return "field or element added or removed"
        return "added or removed"
    if difference.part == "body" and difference.path.startswith("$"):
        kinds = _kind(difference.recorded), _kind(difference.replayed)
        if kinds[0] != kinds[1]:
            return f"type changed ({kinds[0]} -> {kinds[1]})"
        if kinds[0] in ("object", "array"):
            return f"{kinds[0]} replaced"
    if difference.part == "body" and difference.path == "bytes":
        return None
    return None


@dataclass(frozen=True, slots=True)
class Judgement:
    """One exchange judged against the baseline."""

    verdict: Verdict
    endpoint: str
    raw: tuple[str, ...] = ()  # fields differing baseline vs candidate
    noise: tuple[str, ...] = ()  # fields differing baseline vs probe
    structural: tuple[str, ...] = ()  # fields whose difference can never be noise
    probed: bool = False
    recorded_differences: int | None = None  # recording vs baseline (context, never a failure)
    side_failed: str | None = None  # "baseline" | "target" | "baseline (noise probe)"


def _fields(verdict: Verdict) -> list[tuple[str, Difference]]:
    return [(key, d) for d in verdict.differences if (key := field_key(d)) is not None]


def _refused(baseline, candidate) -> tuple[Verdict, str] | None:
    """(the verdict, the side) when exactly one side refused the request (401, 403, 407, 421)."""
    sides = (("baseline", baseline, candidate), ("target", candidate, baseline))
    for side, refusing, other in sides:
        if refusing.status in REFUSALS and other.status not in REFUSALS:
            reason = refusing.reason or REFUSALS[refusing.status]
            text = (f"the {side} refused the request ({refusing.status} {reason}) while the "
                    f"{'target' if side == 'baseline' else 'baseline'} answered {other.status}: {SIDE_HINTS[side]}")
            difference = Difference("error", side, "", text)
            return Verdict(False, (difference,), (), f"{side} refused: {refusing.status} {reason}"), side
    return None


def judge(exchange: Exchange, candidate, baseline, probe, config: DiffConfig, *, candidate_error: str | None = None,
          candidate_latency_ns: int | None = None, origins=(None, None)) -> Judgement:
    """`candidate`: the target's Response (None when `candidate_error`); `baseline`/`probe`: Side
    values from targets/differential.py (probe None: not probed, e.g. a write); `origins`: the
    verdicts.origin.Origins treated as one between the baseline and the target, and between the
    baseline and the probe (None: compared as they are)."""
    request = exchange.request
    endpoint = endpoint_of(request.method, request.path)
    every = dataclasses.replace(config, max_diffs=ALL_DIFFS)
    if baseline is None or not baseline.ok:
        why = "no response recorded for the baseline" if baseline is None else baseline.describe()
        also = f"; the target also failed: {candidate_error}" if candidate_error else \
            f"; the target answered {candidate.status}" if candidate is not None else ""
        difference = Difference("error", "baseline", "", f"the baseline failed ({why}){also}")
        return Judgement(Verdict(False, (difference,), (), f"baseline failed: {why}"), endpoint,
                         side_failed="baseline")
    if candidate_error is not None:
        difference = Difference("error", "target", "", f"the target failed ({candidate_error}); "
                                f"the baseline answered {baseline.describe()}")
        return Judgement(Verdict(False, (difference,), (), f"target failed: {candidate_error}"), endpoint,
                         side_failed="target")
    refused = _refused(baseline.response, candidate)
    if refused is not None:
        verdict, side = refused
        return Judgement(verdict, endpoint, side_failed=side)
    raw = compare(baseline.response, candidate, every, exchange=exchange, latency_ns=candidate_latency_ns,
                  origins=origins[0])
    noise_fields: set[str] = set()
    probed = probe is not None and probe.ok
    if probed:
        noise_fields = {key for key, _ in _fields(compare(baseline.response, probe.response, every,
                                                          exchange=exchange, origins=origins[1]))}
    failing, suppressed, structural_fields = [], 0, []
    raw_fields: dict[str, None] = {}
    for difference in raw.differences:
        key = field_key(difference)
        if key is None:  # latency over the cap, an error: not a field, never noise
            failing.append(difference)
            continue
        raw_fields[key] = None
        why = structural(difference)
        if why is not None:
            structural_fields.append(key)
            failing.append(difference)
        elif key in noise_fields:
            suppressed += 1
        else:
            failing.append(difference)
    recorded_differences = None  # how many: the recording against the baseline, context only
    if exchange.response is not None:
        recorded_differences = compare(exchange.response, baseline.response, every, exchange=exchange).total
    ignored = raw.ignored + ((("noise measured on the baseline", suppressed),) if suppressed else ())
    cap = config.max_diffs
    if failing:
        labels = "; ".join(d.label for d in failing[:3])
        summary = f"{len(failing)} difference{'s' * (len(failing) > 1)} from the baseline: {labels}"
    else:
        summary = "same as the baseline" + (f" ({suppressed} differences are noise)" if suppressed else "")
    if probe is not None and not probe.ok:
        summary += f" (noise probe failed: {probe.describe()}; judged without noise)"
    verdict = Verdict(not failing, tuple(failing[:cap]), ignored, summary, max(0, len(failing) - cap))
    return Judgement(verdict, endpoint, tuple(raw_fields), tuple(sorted(noise_fields)),
                     tuple(dict.fromkeys(structural_fields)), probed, recorded_differences)


# -- counts over the run ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FieldVerdict:
    endpoint: str
    field: str
    raw: int
    noise: int
    requests: int
    structural: int
    verdict: str  # "regression" | "changed" (structural) | "noise"

    @property
    def failed(self) -> bool:
        return self.verdict != "noise"

    def line(self) -> str:
        return (f"{self.endpoint} {self.field}: differed from the baseline in {self.raw} of {self.requests} "
                f"exchanges, between baseline sends in {self.noise}: {self.verdict}")


class DiffCounts:
    """Per endpoint: exchanges judged, probed, differing from the recording (context); per field: raw
    (baseline vs candidate), noise (baseline vs probe) and structural counts. As plain dicts so
    that it crosses processes (to_dict/from_dict) and merges by adding."""

    def __init__(self, data: dict | None = None) -> None:
        self.data: dict = data if data is not None else {}

    def _endpoint(self, endpoint: str) -> dict:
        return self.data.setdefault(endpoint, {"judged": 0, "probed": 0, "recorded_differs": 0, "side_failed": {},
                                               "fields": {}})

    def add(self, judgement: Judgement) -> None:
        entry = self._endpoint(judgement.endpoint)
        if judgement.side_failed:
            failed = entry["side_failed"]
            failed[judgement.side_failed] = failed.get(judgement.side_failed, 0) + 1
            return
        entry["judged"] += 1
        if judgement.probed:
            entry["probed"] += 1
        if judgement.recorded_differences:
            entry["recorded_differs"] += 1
        fields = entry["fields"]
        for key in judgement.raw:
            fields.setdefault(key, [0, 0, 0])[0] += 1
        for key in judgement.noise:
            fields.setdefault(key, [0, 0, 0])[1] += 1
        for key in judgement.structural:
            fields.setdefault(key, [0, 0, 0])[2] += 1

    def field(self, endpoint: str, key: str) -> tuple[int, int, int]:
        entry = self.data.get(endpoint)
        raw, noise, _ = (entry or {}).get("fields", {}).get(key, (0, 0, 0))
        return raw, noise, (entry or {}).get("probed", 0)

    def merge(self, other: DiffCounts | dict) -> DiffCounts:
        other = other.data if isinstance(other, DiffCounts) else other
        for endpoint, theirs in other.items():
            mine = self._endpoint(endpoint)
            for name in ("judged", "probed", "recorded_differs"):
                mine[name] += theirs.get(name, 0)
            for side, n in theirs.get("side_failed", {}).items():
                mine["side_failed"][side] = mine["side_failed"].get(side, 0) + n
            for key, counts in theirs.get("fields", {}).items():
                total = mine["fields"].setdefault(key, [0, 0, 0])
                for i, n in enumerate(counts):
                    total[i] += n
        return self

    def to_dict(self) -> dict:
        return {e: {**v, "side_failed": dict(v["side_failed"]),
                    "fields": {k: list(c) for k, c in v["fields"].items()}} for e, v in self.data.items()}

    def fields(self, relative: float = RELATIVE, absolute: float = ABSOLUTE) -> list[FieldVerdict]:
        """Every (endpoint, field) that differed, with Diffy's verdict on the merged counts."""
        out = []
        for endpoint in sorted(self.data):
            entry = self.data[endpoint]
            requests = max(entry["judged"], 1)
            for key in sorted(entry["fields"]):
                raw, noise, shape = entry["fields"][key]
                if raw == 0:
                    continue
                beyond = max(raw - noise, 0)
                if shape:
                    verdict = "changed"
                elif 100.0 * beyond / raw > relative and 100.0 * beyond / requests > absolute:
                    verdict = "regression"
                else:
                    verdict = "noise"
                out.append(FieldVerdict(endpoint, key, raw, noise, entry["judged"], shape, verdict))
        return out

    def lines(self, relative: float = RELATIVE, absolute: float = ABSOLUTE, limit: int = 30) -> list[str]:
        """The per-endpoint difference table for the terminal."""
        rows = self.fields(relative, absolute)
        judged = sum(e["judged"] for e in self.data.values())
        context = sum(e["recorded_differs"] for e in self.data.values())
        failed = {}
        for entry in self.data.values():
            for side, n in entry["side_failed"].items():
                failed[side] = failed.get(side, 0) + n
        lines = [f"baseline: {judged} exchanges judged against the live baseline; {context} of them differ "
                 "between the recording and the baseline (context, not judged)"]
        if failed:
            lines.append("  side failures: " + ", ".join(f"{side}: {n}" for side, n in sorted(failed.items())))
        if rows:
            lines.append(f"  differences (thresholds: relative {relative:g}%, absolute {absolute:g}%):")
            lines.append("    endpoint | field | raw | noise | verdict")
            for row in rows[:limit]:
                lines.append(f"    {row.endpoint} | {row.field} | {row.raw}/{row.requests} | {row.noise} | "
                             f"{row.verdict}")
            if len(rows) > limit:
                lines.append(f"    ... {len(rows) - limit} more (the evidence holds them all)")
        return lines
