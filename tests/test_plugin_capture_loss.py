"""--replay-max-capture-loss PCT (issue 16.4): a capture that lost more than PCT percent of its bytes to
TCP gaps fails the run (summary, failing entry, evidence); above 1% a warning is shown always. Run on
a real capture with drops (zeek's zero-length-bodies-with-drops: 3 gaps, 3091 of 18883 bytes)."""

from __future__ import annotations

import json

import pytest

from tests.support import REAL

DROPS = REAL / "zeek_http_zero-length-bodies-with-drops.pcap"
NO_GAPS = REAL / "scapy_http_content_length.pcap"

CONFTEST = '''
import pytest

async def app(scope, receive, send):
    status = 302 if b"last=0" in scope["query_string"] else 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})

@pytest.fixture(scope="session")
def replay_target():
    return app
'''


def replay(pytester: pytest.Pytester, capture, *args: str):
    pytester.makeconftest(CONFTEST)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(capture), "--speed", "0",
                                         "--replay-diff", "status", "--replay-report",
                                         str(pytester.path / "evidence"), *args, timeout=120)


def loss_of(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "evidence" / "replay-evidence.json").read_text())["captures"]["loss"]


def test_a_capture_losing_more_than_the_limit_fails_the_run(pytester: pytest.Pytester) -> None:
    result = replay(pytester, DROPS, "--replay-max-capture-loss", "10%")
    text = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text
    assert ("CAPTURE LOSS: the capture lost 16.369% of its bytes to TCP gaps (3091 bytes lost, 18883 captured), "
            "over --replay-max-capture-loss 10%: the run fails") in text
    assert "replay-capture-loss::max 10%" in text  # the failing entry, with its message:
    assert "18883 captured): over --replay-max-capture-loss 10%\n" in text
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] == 7 and outcomes["failed"] == 1  # the items themselves passed
    assert loss_of(pytester) == {"gap_bytes": 3091, "bytes": 18883, "pct": 16.369, "limit_pct": 10.0,
                                 "exceeded": True}


@pytest.mark.parametrize("args", [(), ("--replay-max-capture-loss", "20")])
def test_under_the_limit_or_without_one_a_loss_over_one_percent_warns(pytester: pytest.Pytester, args) -> None:
    result = replay(pytester, DROPS, *args)
    text = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, text
    assert "warning: the capture lost 16.369% of its bytes to TCP gaps (3091 bytes lost, 18883 captured), over 1%" in text
    assert "replay-capture-loss::" not in text
    result.assert_outcomes(passed=7)
    loss = loss_of(pytester)
    assert loss["exceeded"] is False and loss["limit_pct"] == (20.0 if args else None)


def test_a_capture_without_gaps_passes_a_zero_limit_silently(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(NO_GAPS), "--speed", "0",
                                           "--replay-diff", "status", "--replay-max-capture-loss", "0",
                                           "--replay-report", str(pytester.path / "evidence"), timeout=120)
    text = result.stdout.str()
    assert "replay-capture-loss::" not in text and "TCP gaps" not in text, text
    loss = loss_of(pytester)
    assert loss["gap_bytes"] == 0 and loss["pct"] == 0 and loss["exceeded"] is False and loss["limit_pct"] == 0


@pytest.mark.parametrize("value", ["abc", "-1", "101", "nan"])
def test_a_bad_limit_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(DROPS),
                                           f"--replay-max-capture-loss={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--replay-max-capture-loss: expected a number from 0 to 100 (a percentage, e.g. 0.5 or 2%)" in result.stderr.str()
