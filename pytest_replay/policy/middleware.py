"""GoReplay-compatible middleware: an external program that sees every record and may modify or drop requests.

The protocol (GoReplay's middleware.go and its examples/middleware): one line per record on the program's
stdin, the record (header line ``<type> <id> <timestamp> <latency>\\n`` then the payload) hex-encoded in
lowercase and ended by LF. Types: 1 request, 2 original (recorded) response, 3 replayed response. The program
answers on stdout in the same encoding: it echoes a request (its bytes changed or not) with the same header
line, or drops it by not echoing it. Types 2 and 3 are sent so it can correlate values (GoReplay's
token_modifier.go learns a token from the original and replayed login responses and rewrites later requests);
what it echoes for them is ignored, except as evidence of how far it got (see below). Its stderr is its log:
read continuously (so it never blocks on it), the last lines kept for error messages.

How a drop is recognised. The protocol has no "dropped" answer, so it is inferred:

* by order: a middleware handles its input in order, so when it answers a record written AFTER a waiting
  request (a later request, or an echoed type 2/3 record), the waiting request was dropped. This is
  immediate. Passing the recorded response with the request (``request(..., original=...)``) writes the
  type 2 record right behind it, as GoReplay does: middlewares that echo every record (GoReplay's echo.sh and
  echo.py) then reveal each drop at once;
* by time: when the oldest waiting request gets no answer for ``drop_timeout`` seconds (counted from the
  moment it became the oldest, so a middleware working through a backlog is not rushed), it counts as
  dropped. Before the program has written anything at all, the wait is at least ``startup_grace`` seconds
  from start (``go run mw.go`` compiles first).

A middleware that answers out of order, or slower than ``drop_timeout``, would be misread: rather than
guess, an answer for a request already counted as dropped is an error that says which and why.

How a hang is told from drops. Both look the same from outside: nothing comes back. The middleware is
declared hung when ``hang_after`` requests in a row were dropped by time AND it has written nothing on
stdout for ``timeout`` seconds (a middleware that drops on purpose but echoes its type 2/3 input, or answers
any other request, is never taken for hung). Also hung: it stops reading its stdin for ``timeout`` seconds.
Limits: a hang with fewer than ``hang_after`` requests left is reported as drops; a middleware that drops
every request for ``timeout`` seconds and echoes nothing else is reported as hung (raise ``timeout``, or pass
``timeout=None`` to disable hang detection).

Faults (exit or crash, hang, a line that is not a hex record, an answer for an id never sent, an answer for a
request already counted as dropped or already answered) raise :class:`MiddlewareError` from every waiting and
later call, and the program is stopped (SIGTERM to its process group, then SIGKILL; it is always reaped).

Everything here runs inside one event loop (the engine's): create the object anywhere, call ``start()``
and the rest from that loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence

from ..http.message import Request
from ..http.parser import fast_message, parse_single
from ..schedule.target import PipelineFailure

REQUEST, ORIGINAL, REPLAYED = 1, 2, 3
_HEADER = re.compile(rb"([123]) ([0-9A-Za-z]{1,128}) (-?\d{1,20})(?: (-?\d{1,20}))?\r?\n")
_ID = re.compile(r"[0-9A-Za-z]{1,128}\Z")
_SHOW = 60  # characters of a bad line shown in an error
_STDERR_LINE = 500  # characters kept of one stderr line
_TERM_GRACE_S = 1.0  # SIGTERM -> SIGKILL
_EXIT_WAIT_S = 1.0  # after stdout closes, how long to wait for the exit code

# what became of a request id
_WAITING, _ANSWERED, _DROPPED_BY_TIME, _DROPPED_BY_ORDER, _DROPPED_AT_CLOSE = range(5)


class MiddlewareError(PipelineFailure):
    """The middleware program failed (exited, hung, printed garbage, answered nonsense): the replay must stop."""


class _Waiting:
    __slots__ = ("key", "id", "seq", "future")

    def __init__(self, key: object, id: str, seq: int, future: asyncio.Future) -> None:
        self.key = key
        self.id = id
        self.seq = seq
        self.future = future


def record_id(key: object) -> str:
    """The record id used for an exchange: its key as 24 hex digits (the length of GoReplay's ids)."""
    return format(key, "024x") if isinstance(key, int) and key >= 0 else str(key)


def encode_record(kind: int, id: str, ts_ns: int, latency_ns: int, payload: bytes) -> bytes:
    """One protocol line: the record hex-encoded (lowercase), LF-terminated."""
    return (b"%d %s %d %d\n" % (kind, id.encode("ascii"), ts_ns, latency_ns) + payload).hex().encode("ascii") + b"\n"


def parse_request(raw: bytes) -> Request:
    """The Request in a middleware's answer. Raises ValueError saying why when it is not one HTTP/1.x request."""
    request = fast_message(raw, True)
    if request is not None:
        return request
    msg, error, extra = parse_single(raw, True)
    if msg is None:
        raise ValueError(f"the middleware's answer is not an HTTP/1.x request: {error}")
    if msg.flags:
        raise ValueError("the middleware's answer is incomplete: " + "; ".join(f"{c} ({d})" for c, d in msg.flags))
    if extra:
        raise ValueError(f"the middleware's answer has {extra} bytes after the request "
                         "(a wrong Content-Length after changing the body?)")
    return Request(msg.method, msg.target, msg.version, msg.head, msg.body, msg.raw, msg.trailers, msg.lf_only)


class Middleware:
    """A GoReplay middleware program, driven from the engine's event loop.

    `command`: a command line (split with shlex) or an argv list. `drop_timeout` (s): see the module doc;
    None: only drops by order count, and a request waits until the program answers, answers a later
    record, or has been silent for `timeout` (then it is hung). `timeout` (s, None: no hang detection) and
    `hang_after`: hang detection.
    `startup_grace` (s): before the program's first output, requests wait at least this long from start.
    `env`: extra environment variables; PYTHONUNBUFFERED=1 is set unless given, so Python middlewares that
    do not flush stdout (GoReplay's echo.py) work. `on_stderr(line)` sees each stderr line.
    """

    def __init__(self, command: str | Sequence[str], *, drop_timeout: float | None = 1.0,
                 timeout: float | None = 10.0, hang_after: int = 3, startup_grace: float = 5.0,
                 env: Mapping[str, str] | None = None, cwd: str | None = None, stderr_lines: int = 20,
                 on_stderr: Callable[[str], None] | None = None) -> None:
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        if not argv:
            raise ValueError("the middleware command is empty")
        if drop_timeout is not None and drop_timeout <= 0:
            raise ValueError(f"drop_timeout must be > 0 seconds (or None), got {drop_timeout}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds (or None), got {timeout}")
        self.argv = argv
        self.command = command if isinstance(command, str) else shlex.join(argv)
        self.drop_timeout = drop_timeout
        self.timeout = timeout
        self.hang_after = max(1, hang_after)
        self.startup_grace = startup_grace
        self.env = dict(env or {})
        self.cwd = cwd
        self.on_stderr = on_stderr
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self.error: MiddlewareError | None = None
        self.returncode: int | None = None
        self.pid: int | None = None
        # counters (for the report)
        self.records_sent = 0
        self.requests_sent = 0
        self.answered = 0
        self.modified = 0
        self.dropped_by_order = 0
        self.dropped_by_time = 0
        self.dropped_at_close = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0
        self._waiting: OrderedDict[str, _Waiting] = OrderedDict()  # requests, in the order written
        self._sent: dict[str, bytes] = {}  # request id -> bytes sent (until answered): to count changes
        self._fate: dict[str, int] = {}  # request id -> _WAITING/_ANSWERED/...
        self._dropped_when: dict[str, float] = {}
        self._response_seq: dict[tuple[int, str], int] = {}  # (type, id) of type 2/3 written while requests wait
        self._ids: set[str] = set()  # every id written, any type
        self._timer: asyncio.TimerHandle | None = None
        self._timer_id: str | None = None
        self._started_at = 0.0
        self._last_output = 0.0
        self._any_output = False
        self._timeout_run = 0  # requests dropped by time in a row, with no output in between
        self._drain_lock: asyncio.Lock | None = None
        self._readers: list[asyncio.Task] = []
        self._stderr_task: asyncio.Task | None = None
        self._stopper: asyncio.Task | None = None
        self._closing = False
        self._closed = False
        self._stdout_lines = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("the middleware was already started")
        loop = self._loop = asyncio.get_running_loop()
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, cwd=self.cwd, start_new_session=True)
        except OSError as exc:
            self.error = MiddlewareError(f"cannot start middleware {self.command!r}: {exc}")
            raise self.error from exc
        self.pid = self._proc.pid
        self._drain_lock = asyncio.Lock()
        self._started_at = self._last_output = loop.time()
        self._stderr_task = loop.create_task(self._read_stderr())
        self._readers = [loop.create_task(self._read_stdout()), self._stderr_task]

    async def close(self) -> None:
        """Stop the program: EOF on its stdin, a moment to answer what is waiting and exit, then SIGTERM and
        SIGKILL. Requests still waiting count as dropped. Never raises for the program's faults: look at
        `error` (and `returncode`) afterwards."""
        if self._proc is None or self._closed:
            return
        self._closed = True
        self._closing = True
        proc = self._proc
        if self.error is None:
            try:
                proc.stdin.close()
            except Exception:  # noqa: BLE001 - already gone
                pass
            grace = max(_EXIT_WAIT_S, min(self.drop_timeout or 0.0, 5.0))
            try:
                await asyncio.wait_for(asyncio.shield(self._readers[0]), grace)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
            try:
                await asyncio.wait_for(proc.wait(), 0.5 if proc.returncode is None else 0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
        await self._stop_process()
        for task in self._readers:
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._stopper is not None:
            await asyncio.gather(self._stopper, return_exceptions=True)
        self._cancel_timer()
        for waiting in self._waiting.values():
            self._fate[waiting.id] = _DROPPED_AT_CLOSE
            self.dropped_at_close += 1
            if not waiting.future.done():
                waiting.future.set_result(None)
        self._waiting.clear()
        self.returncode = proc.returncode

    async def __aenter__(self) -> Middleware:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    # -- the engine's calls ------------------------------------------------------------------------
    async def request(self, key: object, id: str | None, ts_ns: int, raw: bytes, *, original: bytes | None = None,
                      original_ts_ns: int | None = None) -> bytes | None:
        """Send request `raw` (a type 1 record) and return the bytes the middleware answered with, or None
        when it dropped the request. `id` (None: derived from `key`) must be unique per request and reused
        for its responses. `original`: the recorded response, written right behind the request as a type 2
        record (as GoReplay does; it lets middlewares that echo everything reveal drops at once)."""
        self._check()
        id = self._valid_id(key, id)
        if id in self._fate:
            raise ValueError(f"request id {id!r} was already sent to the middleware: ids must be unique")
        future = self._loop.create_future()
        self._seq += 1
        self._waiting[id] = _Waiting(key, id, self._seq, future)
        self._fate[id] = _WAITING
        self._sent[id] = raw
        self._ids.add(id)
        self.requests_sent += 1
        data = encode_record(REQUEST, id, ts_ns, 0, raw)
        if original is not None:
            self._seq += 1
            self._response_seq[(ORIGINAL, id)] = self._seq
            data += encode_record(ORIGINAL, id, original_ts_ns if original_ts_ns is not None else ts_ns, 0, original)
            self.records_sent += 1
        self.records_sent += 1
        self._arm()
        await self._write(data)
        return await future

    async def original_response(self, id: str, ts_ns: int, raw: bytes, latency_ns: int = 0) -> None:
        """Send the recorded response of request `id` (a type 2 record)."""
        await self._response(ORIGINAL, id, ts_ns, latency_ns, raw)

    async def replayed_response(self, id: str, ts_ns: int, latency_ns: int, raw: bytes) -> None:
        """Send the response the replay got for request `id` (a type 3 record; latency = round trip, ns)."""
        await self._response(REPLAYED, id, ts_ns, latency_ns, raw)

    def stats(self) -> dict[str, int]:
        return {"records_sent": self.records_sent, "requests_sent": self.requests_sent, "answered": self.answered,
                "modified": self.modified, "dropped_by_order": self.dropped_by_order,
                "dropped_by_time": self.dropped_by_time, "dropped_at_close": self.dropped_at_close}

    # -- writing -----------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self._proc is None:
            raise RuntimeError("the middleware is not running: call start() first")
        if self._closing:
            raise RuntimeError("the middleware was closed")

    @staticmethod
    def _valid_id(key: object, id: str | None) -> str:
        id = record_id(key) if id is None else id
        if not _ID.match(id):
            raise ValueError(f"record id {id!r} must be 1-128 letters and digits (it goes in a header line)")
        return id

    async def _response(self, kind: int, id: str, ts_ns: int, latency_ns: int, raw: bytes) -> None:
        self._check()
        id = self._valid_id(None, id)
        self._seq += 1
        if self._waiting:  # its echo can only tell something while requests wait
            self._response_seq[(kind, id)] = self._seq
        self._ids.add(id)
        self.records_sent += 1
        await self._write(encode_record(kind, id, ts_ns, latency_ns, raw))

    async def _write(self, data: bytes) -> None:
        proc = self._proc
        try:
            proc.stdin.write(data)  # synchronous: records go out in call order
            async with self._drain_lock:
                if self.timeout is None:
                    await proc.stdin.drain()
                else:
                    await asyncio.wait_for(proc.stdin.drain(), self.timeout)
        except asyncio.TimeoutError:
            self._fail(f"middleware {self.command!r} looks hung: it has not read its stdin for {self.timeout:g} s "
                       f"({proc.stdin.transport.get_write_buffer_size()} bytes waiting)")
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            # it is gone: the stdout reader reports how (exit code, stderr); wait for that verdict briefly
            try:
                await asyncio.wait_for(asyncio.shield(self._readers[0]), _EXIT_WAIT_S + 1.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
            if self.error is None:
                self._fail(f"middleware {self.command!r} stopped reading its stdin (the pipe is closed)")
        if self.error is not None:
            raise self.error

    # -- reading -----------------------------------------------------------------------------------
    async def _read_stdout(self) -> None:
        stdout = self._proc.stdout
        buf = bytearray()
        scan = 0
        try:
            while self.error is None:
                chunk = await stdout.read(1 << 20)
                if not chunk:
                    break
                buf += chunk
                while self.error is None:
                    nl = buf.find(b"\n", scan)
                    if nl < 0:
                        scan = len(buf)
                        break
                    line = bytes(buf[:nl])
                    del buf[:nl + 1]
                    scan = 0
                    self._line(line)
            if self.error is None and buf:
                self._line(bytes(buf))  # a last line without LF
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave callers waiting
            self._fail(f"reading middleware {self.command!r} output failed: {type(exc).__name__}: {exc}")
            return
        if self.error is None:
            await self._stdout_closed()

    async def _read_stderr(self) -> None:
        stderr = self._proc.stderr
        partial = b""
        while True:
            chunk = await stderr.read(1 << 16)
            if not chunk:
                break
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            if len(partial) > 4 * _STDERR_LINE:
                partial = partial[:4 * _STDERR_LINE]
            for line in lines:
                self._stderr_line(line)
        if partial:
            self._stderr_line(partial)

    def _stderr_line(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if len(text) > _STDERR_LINE:
            text = text[:_STDERR_LINE] + f"... ({len(text)} characters)"
        self.stderr_tail.append(text)
        if self.on_stderr is not None:
            try:
                self.on_stderr(text)
            except Exception:  # noqa: BLE001 - a logging callback must not stop the replay
                pass

    def _line(self, line: bytes) -> None:
        self._stdout_lines += 1
        number = self._stdout_lines
        now = self._loop.time()
        self._last_output = now
        self._any_output = True
        self._timeout_run = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return  # blank lines carry nothing; tolerated
        try:
            record = bytes.fromhex(line.decode("ascii"))
        except ValueError:
            self._fail(f"middleware {self.command!r} printed a line that is not a hex-encoded record "
                       f"(stdout line {number}): {_show(line)}")
            return
        header = _HEADER.match(record)
        if header is None:
            self._fail(f"middleware {self.command!r} printed a record without a valid "
                       f"'<type> <id> <timestamp> [<latency>]' header line (stdout line {number}); it decodes to "
                       f"{_show(record)}")
            return
        kind = header[1][0] - 48
        id = header[2].decode("ascii")
        if kind == REQUEST:
            self._answer(id, record[header.end():], number)
        else:
            self._echoed_response(kind, id, number)

    def _answer(self, id: str, payload: bytes, number: int) -> None:
        waiting = self._waiting.get(id)
        if waiting is None:
            fate = self._fate.get(id)
            if fate is None:
                self._fail(f"middleware {self.command!r} answered with request id {id!r} (stdout line {number}), "
                           "which was never sent to it: it must echo requests with their header line unchanged")
            elif fate == _ANSWERED:
                self._fail(f"middleware {self.command!r} answered request id {id!r} twice (stdout line {number}): "
                           "one captured request is sent once")
            elif fate == _DROPPED_BY_TIME:
                late = self._loop.time() - self._dropped_when.get(id, self._loop.time())
                self._fail(f"middleware {self.command!r} answered request id {id!r} (stdout line {number}) "
                           f"{late:.2f} s after it was counted as dropped (no answer within drop_timeout="
                           f"{self.drop_timeout:g} s while it was the oldest request waiting): the middleware is "
                           "slower than drop_timeout; raise it")
            elif fate == _DROPPED_BY_ORDER:
                self._fail(f"middleware {self.command!r} answered request id {id!r} (stdout line {number}) after "
                           "answering a record sent later, so it had been counted as dropped: a middleware must "
                           "answer in the order it reads (or not at all)")
            # _DROPPED_AT_CLOSE: too late, ignored
            return
        self._drop_before(waiting.seq)
        del self._waiting[id]
        self._fate[id] = _ANSWERED
        self.answered += 1
        if payload != self._sent.pop(id, payload):
            self.modified += 1
        if not waiting.future.done():
            waiting.future.set_result(payload)
        self._arm()

    def _echoed_response(self, kind: int, id: str, number: int) -> None:
        if id not in self._ids:
            self._fail(f"middleware {self.command!r} printed a type {kind} record with id {id!r} "
                       f"(stdout line {number}), which was never sent to it")
            return
        seq = self._response_seq.pop((kind, id), None)
        if seq is not None:
            self._drop_before(seq)
            self._arm()

    def _drop_before(self, seq: int) -> None:
        """The middleware answered the record written as `seq`: requests written before it were dropped."""
        waiting = self._waiting
        while waiting:
            first = next(iter(waiting.values()))
            if first.seq >= seq:
                break
            del waiting[first.id]
            self._sent.pop(first.id, None)
            self._fate[first.id] = _DROPPED_BY_ORDER
            self.dropped_by_order += 1
            if not first.future.done():
                first.future.set_result(None)

    # -- time --------------------------------------------------------------------------------------
    def _arm(self) -> None:
        """Keep one timer, on the oldest waiting request."""
        if not self._waiting:
            self._cancel_timer()
            self._response_seq.clear()  # nothing waits: echoes of earlier records can tell nothing
            return
        if self.drop_timeout is None and self.timeout is None:
            return
        head = next(iter(self._waiting))
        if head == self._timer_id:
            return
        self._cancel_timer()
        delay = self.drop_timeout if self.drop_timeout is not None else self.timeout
        if not self._any_output:
            delay = max(delay, self._started_at + self.startup_grace - self._loop.time())
        self._timer = self._loop.call_later(delay, self._timed_out, head)
        self._timer_id = head

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_id = None

    def _timed_out(self, id: str) -> None:
        self._timer = None
        self._timer_id = None
        waiting = self._waiting.get(id)
        if waiting is None or self.error is not None:
            self._arm()
            return
        now = self._loop.time()
        silent = now - self._last_output
        if self.drop_timeout is None:  # no drops by time: only a hang ends the wait
            if silent >= self.timeout:
                self._fail(f"middleware {self.command!r} looks hung: it wrote nothing on stdout for {silent:.1f} s "
                           f"while request id {id!r} waited for its answer")
            else:
                self._arm()
            return
        self._timeout_run += 1
        if self.timeout is not None and self._timeout_run >= self.hang_after and silent >= self.timeout:
            self._fail(f"middleware {self.command!r} looks hung: it wrote nothing on stdout for {silent:.1f} s "
                       f"while the last {self._timeout_run} requests got no answer (each waited drop_timeout="
                       f"{self.drop_timeout:g} s as the oldest request). A middleware that drops requests on "
                       "purpose is told apart from a hung one only when it answers something: echo type 2/3 "
                       "records, or raise the middleware timeout (None disables hang detection)")
            return
        del self._waiting[id]
        self._sent.pop(id, None)
        self._fate[id] = _DROPPED_BY_TIME
        self._dropped_when[id] = now
        self.dropped_by_time += 1
        if not waiting.future.done():
            waiting.future.set_result(None)
        self._arm()

    # -- faults and stopping -----------------------------------------------------------------------
    async def _stdout_closed(self) -> None:
        proc = self._proc
        if self._closing:
            return
        try:
            await asyncio.wait_for(proc.wait(), _EXIT_WAIT_S)
        except asyncio.TimeoutError:
            pass
        if self._stderr_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 0.5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
        if self._closing or self.error is not None:
            return
        code = proc.returncode
        if code is None:
            what = "closed its stdout but is still running"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            what = f"was killed by {name}"
        else:
            what = f"exited with code {code}"
        self._fail(f"middleware {self.command!r} {what} after {self.records_sent} record(s) sent to it "
                   f"({self.answered} request(s) answered)")

    def _fail(self, message: str) -> None:
        if self.error is not None:
            return
        if self.stderr_tail:
            message += "; last lines of its stderr:\n" + "\n".join("    " + line for line in self.stderr_tail)
        else:
            message += " (nothing on its stderr)"
        self.error = MiddlewareError(message)
        self._cancel_timer()
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(self.error)
                waiting.future.exception()  # retrieved here: no "never retrieved" noise for cancelled callers
        self._waiting.clear()
        if self._stopper is None and self._loop is not None:
            self._stopper = self._loop.create_task(self._stop_process())

    async def _stop_process(self) -> None:
        """SIGTERM to the program's process group (what it started goes too), SIGKILL after a grace
        period, and reap it. A group whose leader already exited is still signalled: its leftovers
        (a shell's background job, `go run`'s binary) must not outlive the replay."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.stdin.close()
        except Exception:  # noqa: BLE001
            pass
        if proc.returncode is None or _group_alive(proc.pid):
            _signal_group(proc, signal.SIGTERM)
            deadline = self._loop.time() + _TERM_GRACE_S
            while self._loop.time() < deadline and (proc.returncode is None or _group_alive(proc.pid)):
                try:
                    await asyncio.wait_for(proc.wait(), 0.02)
                except asyncio.TimeoutError:
                    pass
            if proc.returncode is None or _group_alive(proc.pid):
                _signal_group(proc, signal.SIGKILL)
        await proc.wait()  # reaped: no zombie
        self.returncode = proc.returncode


def _group_alive(pgid: int) -> bool:
    """Is a process of group `pgid` still running? Zombies do not count: once killed, what the program
    left behind is reparented to init, which reaps it in its own time."""
    if sys.platform == "win32":
        return False
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError, OSError):
        return False
    return bool(live_group_members(pgid)) if os.path.isdir("/proc/self") else True


def live_group_members(pgid: int) -> list[int]:
    """Pids of the running (not zombie) processes of group `pgid`, read from /proc (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Signal the program's process group (it was started in a session of its own, so `go run`'s or a
    shell's children go too); the process alone when that fails."""
    try:
        if sys.platform != "win32":
            os.killpg(proc.pid, sig)
            return
    except (ProcessLookupError, PermissionError, OSError):
        pass
    if proc.returncode is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _show(data: bytes) -> str:
    shown = data[:_SHOW].decode("latin-1")
    return repr(shown) + (f"... ({len(data)} characters)" if len(data) > _SHOW else "")
