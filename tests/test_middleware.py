"""GoReplay-compatible middleware (pytest_replay.policy.middleware) against real programs in
tests/middlewares/, and the correlation state and hooks (policy.correlate, hookspecs).

Each bridge test runs in asyncio.run under a hard 5 s cap, uses short drop/hang timeouts, and checks that
the program is gone afterwards (reaped: returncode set, its pid and process group no longer exist).
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import pluggy
import pytest

from pytest_replay import hookspecs
from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.http.parser import fast_message, parse_single
from pytest_replay.policy.correlate import (DROP, ReplayState, correlate_header, correlate_json_field,
                                            rebuild_request)
from pytest_replay.policy.middleware import (Middleware, MiddlewareError, encode_record, live_group_members,
                                            parse_request, record_id)

HERE = Path(__file__).parent / "middlewares"
LIMIT_S = 5.0

GET = b"GET /a?x=1 HTTP/1.1\r\nHost: example\r\nAccept: */*\r\n\r\n"
POST = b"POST /b HTTP/1.1\r\nHost: example\r\nContent-Length: 11\r\n\r\nhello\nworld"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def prog(name: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / name), *args]


def run(coro_fn, limit: float = LIMIT_S):
    """Run `coro_fn()` in a fresh loop, failing the test if it takes longer than `limit` seconds."""
    started = time.monotonic()
    result = asyncio.run(asyncio.wait_for(coro_fn(), limit))
    assert time.monotonic() - started < limit
    return result


def assert_gone(mw: Middleware) -> None:
    assert mw.pid is not None
    assert mw.returncode is not None, "the middleware process was not reaped"
    with pytest.raises(ProcessLookupError):
        os.kill(mw.pid, 0)
    assert live_group_members(mw.pid) == []  # nothing it started is left running either (zombies aside)


def request_bytes(i: int, body: bytes = b"") -> bytes:
    if body:
        return b"PUT /item/%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (i, len(body)) + body
    return b"GET /item/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i


# -- protocol basics ------------------------------------------------------------------------------

def test_encode_record_is_lowercase_hex_of_header_and_payload():
    line = encode_record(1, "ab12", 1_700_000_000_000_000_000, 0, b"GET / HTTP/1.1\r\n\r\n")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line[:-1] == line[:-1].lower()
    assert bytes.fromhex(line[:-1].decode()) == b"1 ab12 1700000000000000000 0\nGET / HTTP/1.1\r\n\r\n"
    assert record_id(10) == "00000000000000000000000a"


def test_parse_request_of_an_answer():
    assert parse_request(POST).body == b"hello\nworld"
    with pytest.raises(ValueError, match="bytes after the request"):
        parse_request(POST.replace(b"Content-Length: 11", b"Content-Length: 5"))
    with pytest.raises(ValueError, match="not an HTTP/1.x request"):
        parse_request(b"\x00\x01 binary junk\r\n\r\n")


# -- echo: byte-exact round trips -----------------------------------------------------------------

def test_echo_round_trips_byte_exact_and_exits_cleanly():
    odd = b"POST /bin HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n\x00\n\r\xff\xfe\n\n\x80"
    lf_only = b"GET /lf HTTP/1.1\nHost: h\n\n"

    async def main():
        mw = Middleware(prog("echo.py"), drop_timeout=2.0)
        await mw.start()
        answers = []
        for i, raw in enumerate([GET, POST, odd, lf_only]):
            answers.append(await mw.request(i, None, 1_000 + i, raw, original=RESP))
            await mw.replayed_response(record_id(i), 2_000 + i, 1_234, RESP)
        await mw.close()
        return mw, answers

    mw, answers = run(main)
    assert answers == [GET, POST, odd, lf_only]
    assert mw.error is None
    assert mw.stats()["answered"] == 4 and mw.stats()["modified"] == 0
    assert mw.stats()["dropped_by_order"] == mw.stats()["dropped_by_time"] == 0
    assert mw.returncode == 0  # it ended by itself at EOF
    assert any("Request type: Replayed Response" in line for line in mw.stderr_tail)
    assert_gone(mw)


def test_echo_one_megabyte_body_and_concurrent_requests():
    big = bytes(range(256)) * 4096  # 1 MiB, every byte value, newlines included
    big_request = request_bytes(0, big)

    async def main():
        mw = Middleware(shlex.join(prog("echo.py")), drop_timeout=3.0)  # a command line, split with shlex
        await mw.start()
        raws = [big_request] + [request_bytes(i) for i in range(1, 20)]
        answers = await asyncio.gather(*(mw.request(i, None, i, raw) for i, raw in enumerate(raws)))
        await mw.close()
        return mw, raws, answers

    mw, raws, answers = run(main)
    assert len(answers[0]) == len(big_request) > 1_000_000
    assert answers == raws
    assert_gone(mw)


# -- drops --------------------------------------------------------------------------------------------

def test_drop_detected_by_order_without_waiting_for_the_timeout():
    async def main():
        mw = Middleware(prog("drop_posts.py"), drop_timeout=3.0)
        await mw.start()
        t0 = time.monotonic()
        answers = await asyncio.gather(mw.request(0, None, 1, POST), mw.request(1, None, 2, GET),
                                       mw.request(2, None, 3, POST), mw.request(3, None, 4, GET))
        elapsed = time.monotonic() - t0
        await mw.close()
        return mw, answers, elapsed

    mw, answers, elapsed = run(main)
    assert answers == [None, GET, None, GET]
    assert elapsed < 1.5  # resolved by the later answers, not by drop_timeout (3 s)
    assert mw.dropped_by_order == 2 and mw.dropped_by_time == 0
    assert_gone(mw)


def test_drop_detected_by_the_echoed_original_response():
    """A dropped request followed by its type 2 record: a middleware that echoes responses (GoReplay's
    echo examples do) answers the type 2 record first, which reveals the drop at once."""
    async def main():
        mw = Middleware(prog("drop_posts.py"), drop_timeout=3.0)
        await mw.start()
        t0 = time.monotonic()
        answer = await mw.request(0, None, 1, POST, original=RESP)
        elapsed = time.monotonic() - t0
        await mw.close()
        return mw, answer, elapsed

    mw, answer, elapsed = run(main)
    assert answer is None and elapsed < 1.5
    assert mw.dropped_by_order == 1
    assert_gone(mw)


def test_drop_detected_by_timeout_when_nothing_comes_back():
    async def main():
        mw = Middleware(prog("drop_posts.py", "requests-only"), drop_timeout=0.3)
        await mw.start()
        assert await mw.request(0, None, 1, GET) == GET
        t0 = time.monotonic()
        answer = await mw.request(1, None, 2, POST, original=RESP)  # type 2 is not echoed by this one
        elapsed = time.monotonic() - t0
        after = await mw.request(2, None, 3, GET)  # still usable
        await mw.close()
        return mw, answer, elapsed, after

    mw, answer, elapsed, after = run(main)
    assert answer is None and 0.3 <= elapsed < 1.3
    assert after == GET
    assert mw.dropped_by_time == 1 and mw.error is None
    assert_gone(mw)


def test_drop_timeout_counts_from_when_a_request_becomes_the_oldest():
    """A backlog is not a drop: 5 requests written at once to a middleware taking 0.2 s each; the last
    answer comes after 1 s, well past drop_timeout from its writing, yet none is dropped."""
    async def main():
        mw = Middleware(prog("slow.py", "0.2"), drop_timeout=0.35, startup_grace=0.5)
        await mw.start()
        answers = await asyncio.gather(*(mw.request(i, None, i, request_bytes(i)) for i in range(5)))
        await mw.close()
        return mw, answers

    mw, answers = run(main)
    assert answers == [request_bytes(i) for i in range(5)]
    assert mw.dropped_by_time == 0
    assert_gone(mw)


def test_startup_grace_waits_for_a_slow_starting_middleware():
    async def main():
        mw = Middleware(prog("slow.py", "0.5"), drop_timeout=0.2, startup_grace=2.0)
        await mw.start()
        answer = await mw.request(0, None, 1, GET)
        await mw.close()
        return mw, answer

    mw, answer = run(main)
    assert answer == GET and mw.dropped_by_time == 0
    assert_gone(mw)


def test_answer_after_counted_as_dropped_is_an_error_naming_drop_timeout():
    async def main():
        mw = Middleware(prog("slow.py", "0.6"), drop_timeout=0.2, startup_grace=0)
        await mw.start()
        first = await mw.request(0, None, 1, GET)
        await asyncio.sleep(0.7)
        with pytest.raises(MiddlewareError) as info:
            await mw.request(1, None, 2, GET)
        await mw.close()
        return mw, first, str(info.value)

    mw, first, message = run(main)
    assert first is None
    assert "after it was counted as dropped" in message and "drop_timeout=0.2" in message
    assert_gone(mw)


# -- token correlation, GoReplay's token_modifier.go ------------------------------------------------

LOGIN = b"GET /token HTTP/1.1\r\nHost: auth\r\n\r\n"


def token_response(token: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(token) + token


def test_token_rewrite_end_to_end():
    async def main():
        mw = Middleware(prog("token_rewrite.py"), drop_timeout=2.0, env={"GOR_TEST": ""})
        await mw.start()
        login = await mw.request(0, "aa01", 10, LOGIN)
        await mw.original_response("aa01", 11, token_response(b"tokenA"))
        await mw.replayed_response("aa01", 12, 5_000_000, token_response(b"tokenB"))
        secure = await mw.request(1, "aa02", 20, b"GET /secure?token=tokenA HTTP/1.1\r\nHost: api\r\n\r\n")
        middle = await mw.request(2, "aa03", 30, b"GET /s?a=1&token=tokenA&b=2 HTTP/1.1\r\nHost: api\r\n\r\n")
        unknown = await mw.request(3, "aa04", 40, b"GET /secure?token=other HTTP/1.1\r\nHost: api\r\n\r\n")
        # the same exchange with its recorded response passed along with the request
        login2 = await mw.request(4, "aa05", 50, LOGIN, original=token_response(b"tokenC"))
        await mw.replayed_response("aa05", 51, 1, token_response(b"tokenD"))
        second = await mw.request(5, "aa06", 60, b"GET /secure?token=tokenC HTTP/1.1\r\nHost: api\r\n\r\n")
        await mw.close()
        return mw, login, secure, middle, unknown, login2, second

    mw, login, secure, middle, unknown, login2, second = run(main)
    assert login == LOGIN and login2 == LOGIN
    assert secure == b"GET /secure?token=tokenB HTTP/1.1\r\nHost: api\r\n\r\n"
    assert middle == b"GET /s?a=1&token=tokenB&b=2 HTTP/1.1\r\nHost: api\r\n\r\n"
    assert unknown == b"GET /secure?token=other HTTP/1.1\r\nHost: api\r\n\r\n"
    assert second == b"GET /secure?token=tokenD HTTP/1.1\r\nHost: api\r\n\r\n"
    assert mw.modified == 3 and mw.error is None
    assert any("Create alias" in line for line in mw.stderr_tail)
    assert_gone(mw)


# -- faults ---------------------------------------------------------------------------------------

def test_crash_reports_exit_code_and_stderr():
    async def main():
        mw = Middleware(prog("crash.py"), drop_timeout=3.0)
        await mw.start()
        with pytest.raises(MiddlewareError) as info:
            await mw.request(0, None, 1, GET)
        with pytest.raises(MiddlewareError):  # every later call too
            await mw.request(1, None, 2, GET)
        await mw.close()
        return mw, str(info.value)

    mw, message = run(main)
    assert "exited with code 3" in message
    assert "crash.py: cannot handle this record, giving up" in message
    assert mw.returncode == 3
    assert_gone(mw)


def test_hang_is_detected_after_consecutive_drops_with_no_output():
    async def main():
        mw = Middleware(prog("hang.py"), drop_timeout=0.1, timeout=0.5, hang_after=3, startup_grace=0)
        await mw.start()
        t0 = time.monotonic()
        answers = []
        with pytest.raises(MiddlewareError) as info:
            for i in range(100):
                answers.append(await mw.request(i, None, i, GET))
        elapsed = time.monotonic() - t0
        await mw.close()
        return mw, answers, str(info.value), elapsed

    mw, answers, message, elapsed = run(main)
    assert answers and all(a is None for a in answers)  # the first ones counted as drops
    assert "looks hung" in message and "wrote nothing on stdout" in message
    assert "hang.py: reading, never answering" in message
    assert elapsed < 1.5
    assert_gone(mw)


def test_hang_fails_every_waiting_request():
    async def main():
        mw = Middleware(prog("hang.py"), drop_timeout=0.1, timeout=0.4, hang_after=2, startup_grace=0)
        await mw.start()
        results = await asyncio.gather(*(mw.request(i, None, i, GET) for i in range(20)), return_exceptions=True)
        await mw.close()
        return mw, results

    mw, results = run(main)
    assert any(isinstance(r, MiddlewareError) for r in results)
    assert all(r is None or isinstance(r, MiddlewareError) for r in results)
    assert_gone(mw)


def test_not_reading_stdin_is_a_hang_and_sigkill_stops_it():
    """deaf.py never reads and ignores SIGTERM: a 1 MiB request fills the pipe, the write times out, and
    closing needs SIGKILL."""
    async def main():
        mw = Middleware(prog("deaf.py"), drop_timeout=0.2, timeout=0.5)
        await mw.start()
        await asyncio.sleep(0.2)  # let it install its SIGTERM handler
        with pytest.raises(MiddlewareError) as info:
            await mw.request(0, None, 1, request_bytes(0, b"x" * (1 << 20)))
        await mw.close()
        return mw, str(info.value)

    mw, message = run(main)
    assert "has not read its stdin for 0.5 s" in message
    assert mw.returncode == -signal.SIGKILL
    assert_gone(mw)


@pytest.mark.parametrize("mode, expected", [
    ("nothex", "not a hex-encoded record (stdout line 1): "
               + repr("this is not hex at all, it is a log line printed to stdout by mistake"[:60]) + "..."),
    ("badheader", "without a valid '<type> <id> <timestamp> [<latency>]' header line (stdout line 1); "
                  "it decodes to 'GET / HTTP/1.1"),
    ("unknownid", "answered with request id 'ffffffffffffffffffffffff' (stdout line 1), which was never sent"),
])
def test_garbage_output_is_an_error_naming_the_line(mode, expected):
    async def main():
        mw = Middleware(prog("garbage.py", mode), drop_timeout=3.0)
        await mw.start()
        t0 = time.monotonic()
        with pytest.raises(MiddlewareError) as info:
            await mw.request(0, None, 1, GET)
        elapsed = time.monotonic() - t0
        await mw.close()
        return mw, str(info.value), elapsed

    mw, message, elapsed = run(main)
    assert expected in message
    assert elapsed < 2.5
    assert_gone(mw)


def test_a_request_answered_twice_is_an_error():
    async def main():
        mw = Middleware(prog("garbage.py", "twice"), drop_timeout=3.0)
        await mw.start()
        first = await mw.request(0, None, 1, GET)
        await asyncio.sleep(0.3)
        with pytest.raises(MiddlewareError) as info:
            await mw.request(1, None, 2, GET)
        await mw.close()
        return mw, first, str(info.value)

    mw, first, message = run(main)
    assert first == GET
    assert "answered request id '000000000000000000000000' twice (stdout line 2)" in message
    assert_gone(mw)


def test_a_command_that_cannot_start():
    async def main():
        mw = Middleware("/nonexistent/middleware --flag")
        with pytest.raises(MiddlewareError, match="cannot start middleware '/nonexistent/middleware --flag'"):
            await mw.start()
        await mw.close()

    run(main)


def test_duplicate_request_ids_are_refused():
    async def main():
        mw = Middleware(prog("echo.py"))
        await mw.start()
        await mw.request(0, "abc", 1, GET)
        with pytest.raises(ValueError, match="already sent"):
            await mw.request(1, "abc", 2, GET)
        with pytest.raises(ValueError, match="letters and digits"):
            await mw.request(2, "a b", 3, GET)
        await mw.close()
        return mw

    assert_gone(run(main))


def test_close_with_a_request_waiting_counts_it_dropped():
    async def main():
        mw = Middleware(prog("hang.py"), drop_timeout=30.0)
        await mw.start()
        waiting = asyncio.ensure_future(mw.request(0, None, 1, GET))
        await asyncio.sleep(0.2)
        await mw.close()
        return mw, await waiting

    mw, answer = run(main)
    assert answer is None and mw.dropped_at_close == 1 and mw.error is None
    assert mw.returncode == 0  # hang.py ends at EOF
    assert_gone(mw)


def test_close_stops_what_the_middleware_started():
    """A shell middleware with a background child: the whole process group goes at close."""
    command = ["/bin/sh", "-c", f"sleep 30 & exec {shlex.quote(sys.executable)} {shlex.quote(str(HERE / 'echo.py'))}"]

    async def main():
        mw = Middleware(command, drop_timeout=1.0)
        await mw.start()
        assert await mw.request(0, None, 1, GET) == GET
        await mw.close()
        return mw

    assert_gone(run(main))


# -- ReplayState: learn / substitute ----------------------------------------------------------------

def test_substitute_request_line_headers_and_body_with_content_length_fixed():
    state = ReplayState()
    state.learn("tokA", "the-much-longer-token-B")
    body = b'{"token": "tokA", "n": 1}'
    request = Request.build("POST", "/api?token=tokA", ((b"Host", b"h"), (b"Authorization", b"Bearer tokA"),
                                                         (b"Content-Length", b"%d" % len(body))), body)
    new = state.substitute(request)
    assert new.target == "/api?token=the-much-longer-token-B"
    assert new.header("authorization") == b"Bearer the-much-longer-token-B"
    assert new.body == b'{"token": "the-much-longer-token-B", "n": 1}'
    assert new.header("content-length") == b"%d" % len(new.body)
    assert new.raw == new.head + new.body
    reparsed = fast_message(new.raw, True)
    assert reparsed is not None and reparsed.body == new.body and reparsed.target == new.target


def test_substitute_without_match_returns_the_same_request():
    state = ReplayState()
    request = Request.build("GET", "/x", ((b"Host", b"h"),))
    assert state.substitute(request) is request
    state.learn(b"zzz", b"yyy")
    assert state.substitute(request) is request


def test_substitute_is_one_pass_and_longest_first():
    state = ReplayState()
    state.learn("A1", "B1")
    state.learn("B1", "C1")  # a replayed value is never replaced again
    state.learn("tok", "X")
    state.learn("token123", "Y")
    request = Request.build("GET", "/p?a=A1&b=B1&c=token123&d=tok")
    assert state.substitute(request).target == "/p?a=B1&b=C1&c=Y&d=X"


def test_substitute_percent_encoded_form():
    state = ReplayState()
    state.learn("a/b+c=", "x/y")
    request = Request.build("GET", "/p?t=a%2Fb%2Bc%3D")
    assert state.substitute(request).target == "/p?t=x%2Fy"


def test_substitute_chunked_body_is_reframed():
    raw = (b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nsecre\r\n2\r\nt1\r\n0\r\n\r\n")
    msg, error, extra = parse_single(raw, True)
    request = Request(msg.method, msg.target, msg.version, msg.head, msg.body, msg.raw)
    state = ReplayState()
    state.learn("secret1", "new-secret-2")
    new = state.substitute(request)
    assert new.body == b"new-secret-2"
    again, error, extra = parse_single(new.raw, True)
    assert again is not None and not again.flags and extra == 0 and again.body == b"new-secret-2"


def test_rebuild_adds_content_length_when_a_body_appears():
    request = Request.build("POST", "/x", ((b"Host", b"h"),))
    new = rebuild_request(request, request.head, b"abc")
    assert new.header("content-length") == b"3" and parse_request(new.raw).body == b"abc"


def test_learn_refuses_an_empty_value():
    with pytest.raises(ValueError, match="empty"):
        ReplayState().learn(b"", b"x")


def test_correlate_json_field_learns_the_token_from_the_two_responses():
    state = ReplayState()
    recorded = Response.build(200, "OK", ((b"Content-Type", b"application/json"),), b'{"data": {"token": "A1"}}')
    replayed = Response.build(200, "OK", ((b"Content-Encoding", b"gzip"),),
                              gzip.compress(b'{"data": {"token": "B2"}}'))
    assert correlate_json_field(state, recorded, replayed, "data.token") == (b"A1", b"B2")
    later = Request.build("GET", "/me", ((b"Authorization", b"Bearer A1"),))
    assert state.substitute(later).header("authorization") == b"Bearer B2"
    assert correlate_json_field(state, recorded, replayed, "data.missing") is None
    assert correlate_json_field(state, None, replayed, "data.token") is None
    assert correlate_json_field(state, b"not json", replayed, "data.token") is None


def test_correlate_header_with_a_pattern():
    state = ReplayState()
    recorded = Response.build(200, "OK", ((b"Set-Cookie", b"lang=en"), (b"Set-Cookie", b"session=s1; Path=/")))
    replayed = Response.build(200, "OK", ((b"Set-Cookie", b"session=s2; Path=/"),))
    assert correlate_header(state, recorded, replayed, "set-cookie", r"session=([^;]+)") == (b"s1", b"s2")
    assert state.substitute(Request.build("GET", "/", ((b"Cookie", b"session=s1"),))).header("cookie") == b"session=s2"


# -- hooks ------------------------------------------------------------------------------------------

def _exchange(request: Request) -> Exchange:
    return Exchange(0, request, Response.build(200, "OK"), 0, 1, "c", 0, Source("f", 0))


def test_hookspecs_register_and_first_result_wins():
    pm = pluggy.PluginManager("pytest")
    pm.add_hookspecs(hookspecs)
    calls = []

    class Dropper:
        @pluggy.HookimplMarker("pytest")
        def pytest_replay_request(self, request, exchange, state):
            calls.append("dropper")
            return DROP if request.method == "DELETE" else None

    class Learner:
        @pluggy.HookimplMarker("pytest")
        def pytest_replay_response(self, exchange, response, state):
            correlate_json_field(state, exchange.response, response, "token")

    pm.register(Dropper())
    pm.register(Learner())
    state = ReplayState()
    delete = Request.build("DELETE", "/x")
    assert pm.hook.pytest_replay_request(request=delete, exchange=_exchange(delete), state=state) is DROP
    get = Request.build("GET", "/x")
    assert pm.hook.pytest_replay_request(request=get, exchange=_exchange(get), state=state) is None
    exchange = Exchange(0, get, Response.build(200, "OK", (), b'{"token": "r1"}'), 0, 1, "c", 0, Source("f", 0))
    pm.hook.pytest_replay_response(exchange=exchange, response=Response.build(200, "OK", (), b'{"token": "p1"}'),
                                   state=state)
    assert state.learned[b"r1"] == b"p1"
    assert repr(DROP) == "DROP" and calls == ["dropper", "dropper"]


def test_runs_in_an_event_loop_of_another_thread():
    """The engine runs its loop in its own thread: subprocesses must work there too."""
    import threading

    out = {}

    def thread_main():
        async def main():
            async with Middleware(prog("echo.py"), drop_timeout=2.0) as mw:
                out["answer"] = await mw.request(0, None, 1, GET)
            out["mw"] = mw

        asyncio.run(asyncio.wait_for(main(), LIMIT_S))

    thread = threading.Thread(target=thread_main)
    thread.start()
    thread.join(LIMIT_S + 1)
    assert out["answer"] == GET
    assert_gone(out["mw"])


def test_without_drop_timeout_drops_come_by_order_and_silence_is_a_hang():
    async def main():
        mw = Middleware(prog("drop_posts.py"), drop_timeout=None, timeout=0.4, startup_grace=0)
        await mw.start()
        assert await asyncio.gather(mw.request(0, None, 1, POST), mw.request(1, None, 2, GET)) == [None, GET]
        t0 = time.monotonic()
        with pytest.raises(MiddlewareError, match="looks hung: it wrote nothing on stdout for .* while request id"):
            await mw.request(2, None, 3, POST)  # nothing after it: no drop by order, so silence -> hung
        elapsed = time.monotonic() - t0
        await mw.close()
        return mw, elapsed

    mw, elapsed = run(main)
    assert 0.4 <= elapsed < 1.5
    assert_gone(mw)
