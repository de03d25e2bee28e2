"""The package's fixed vocabularies, each a StrEnum, in one leaf module (it imports nothing of ours,
so any layer may import it).

A StrEnum member is a str equal to its value (`WriteDecision.MOCK == "mock"`), so the evidence JSON,
option values and comparisons with literals are unchanged; `list(Group)` gives the accepted values
of an option. What crosses a process boundary through execnet (xdist workers' results) must be plain
str: `plain()` turns members back into str there.
"""

from __future__ import annotations

from enum import Enum, StrEnum


class WriteDecision(StrEnum):
    """What happens to one request that is a write (policy/writes.py)."""

    SEND = "send"
    MOCK = "mock"  # answered from the recorded response, never sent
    SKIP = "skip"  # not replayed


class WriteMode(StrEnum):
    """--replay-writes: the decision for a write the allowlist does not name."""

    MOCK = "mock"
    PASS = "pass"
    SKIP = "skip"


class WriteOutcome(StrEnum):
    """The columns writes are counted in (summary, evidence `write_policy`, per-endpoint `writes`)."""

    MOCKED = "mocked"
    PASSED = "passed"
    SKIPPED = "skipped"
    FLAGGED = "flagged"  # a read with a body, sent


class Group(StrEnum):
    """--replay-group: what one test item holds."""

    EXCHANGE = "exchange"
    ENDPOINT = "endpoint"
    CONNECTION = "connection"


class Judge(StrEnum):
    """--replay-judge: when items are judged."""

    AFTER = "after"
    DURING = "during"


class Origins(StrEnum):
    """--replay-origins: how the service's own origin is compared."""

    SAME = "same"
    STRICT = "strict"


class NoiseMode(StrEnum):
    """--replay-noise."""

    AUTO = "auto"
    OFF = "off"


class DiffPart(StrEnum):
    """--replay-diff: the parts of a response compared."""

    STATUS = "status"
    HEADERS = "headers"
    BODY = "body"


class ErrorKind(StrEnum):
    """Why a replayed request got no usable response (schedule/target.py): one code per cause."""

    REFUSED = "refused"  # connection refused / could not connect
    RESET = "reset"  # the connection was reset or closed before a complete response
    TIMEOUT = "timeout"  # no complete response within the timeout
    UNPARSABLE = "unparsable"  # the bytes that came back are not an HTTP/1.x response
    TRUNCATED = "truncated"  # the response ended before its body did
    APP_ERROR = "app-error"  # an in-process app raised (or a target failed unexpectedly)
    CANCELLED = "cancelled"  # the replay was stopped (or failed) before this request completed
    DROPPED = "dropped"  # a pytest_replay_request hook or the middleware chose not to send it


class StageKind(StrEnum):
    """The pace of a capacity run's stage (schedule/stages.py)."""

    SPEED = "speed"  # a factor over the recorded timing
    RATE = "rate"  # a mean rate: the recorded timing scaled
    FIXED = "fixed"  # evenly spaced arrivals


def plain(value):
    """`value` with every enum member (at any depth of dicts, lists and tuples) replaced by its value:
    for execnet, which serializes only builtin types."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return value


__all__ = ["DiffPart", "ErrorKind", "Group", "Judge", "NoiseMode", "Origins", "StageKind", "WriteDecision",
           "WriteMode", "WriteOutcome", "plain"]
