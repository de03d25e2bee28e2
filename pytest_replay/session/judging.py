"""Judging in other processes, where the GIL would make the engine late (issue 13.1).

A run judges each replayed exchange off the engine's thread (a streamed run's judge thread, or the
pytest thread of a run that holds the capture), but in the same process: judging a JSON body of
200 KB that differs is ~20 ms of pure Python, holding the GIL the engine's thread needs to send on
time. `JudgePool` sends such exchanges to a process pool (`--replay-judge-workers`): the thread that
judges hands the exchange over as plain data (verdicts/judge.py's `Task`, ~0.1-0.2 ms to pickle)
and waits for the verdict without holding the GIL. Exchanges whose bodies are equal or small
(`POOL_BYTES`) are judged in the thread as before: the round trip would cost more than judging them.

Results are those of judging in the thread: both sides call verdicts.judge.judge with the run's
DiffConfig and Redactor (sent once, when each process starts), and the caller still records each
verdict in its own order, so counts, failure texts and the noise counts are the same. A run with a
live baseline judges in the thread (the differential verdict keeps per-endpoint state).

The processes come from the 'forkserver' start method where there is one (never a plain fork of a
process whose engine thread is running), else 'spawn'; they ignore Ctrl-C, which the run's process
handles by shutting the pool down (`shutdown`: pending work cancelled, processes ended and reaped).
A process that dies while judging an exchange fails that exchange (the error says why) and the run
notes which exchange it was; the exchanges after it are judged in the thread. Nothing is written to
disk: tasks and verdicts travel through pipes.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..http.message import Exchange, Response
from ..verdicts import judge as remote

# Bodies (recorded + replayed, when they differ) from which a judging process is worth its round trip.
# Measured (bench/bench_verdicts.py --pool): a round trip to a judging process costs ~0.3-0.6 ms of
# which the judging thread holds the GIL for ~0.1-0.2 ms (pickling), while judging a JSON body costs
# ~0.1 ms per KB (2 ms at 18 KB, 21 ms at 185 KB, bodies that differ): from ~16 KB on, the pool takes
# more GIL time off the engine than it costs.
POOL_BYTES = 16 * 1024
AUTO_MAX = 1  # judging processes 'auto' starts at most, per process of the run: its judging thread waits for
# one verdict at a time (several verdicts in flight, in order, is not done yet), so a second would sit idle
WAIT_S = 0.5  # how often a thread waiting for a verdict looks whether the pool was shut down


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def workers_for(setting: int | str, *, cpus: int | None = None, processes: int = 1) -> int:
    """--replay-judge-workers as a number of processes: N as given; 'auto': AUTO_MAX if a core is left once
    each process of the run has one for its engine: 1 on 2 cores, none under xdist -n 2 on 2 cores."""
    if setting != "auto":
        return int(setting)
    cpus = cores() if cpus is None else cpus
    return max(0, min(AUTO_MAX, (cpus - processes) // processes))


def large_bodies(exchanges) -> bool:
    """Do the recorded answers hold bodies that, changed, are worth a judging process? (Then 'auto' starts
    its processes before the replay, not when the first one comes back.)"""
    return any(e.response is not None and 2 * len(e.response.body) >= POOL_BYTES for e in exchanges)


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class JudgePool:
    """Judging processes for the exchanges with large differing bodies. `eager`: start them now (a
    number of workers given), else when the first such exchange comes (auto); until they answer their
    first call, exchanges are judged in the thread."""

    def __init__(self, workers: int, config, redactor, *, eager: bool = False, min_bytes: int = POOL_BYTES) -> None:
        self.workers = workers
        self.config = config
        self.redactor = redactor
        self.min_bytes = min_bytes
        self.errors: list[str] = []  # for the run's notes: a judging process died (its exchange failed)
        self.judged = 0  # exchanges judged in a judging process
        self._executor: ProcessPoolExecutor | None = None
        self._ready: Future | None = None
        self._readies: list[Future] = []
        self._processes: dict = {}  # pid -> multiprocessing.Process, kept to reap them at the end
        self._lock = threading.Lock()
        self.closed = False
        self.broken = False
        if eager:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._executor is not None or self.closed:
                return
            context = _context()
            if context.get_start_method() == "forkserver":
                context.set_forkserver_preload(["pytest_replay.verdicts.judge"])
            try:
                self._executor = ProcessPoolExecutor(self.workers, mp_context=context,
                                                     initializer=remote.init_worker,
                                                     initargs=(self.config, self.redactor))
                readies = [self._executor.submit(remote.ready) for _ in range(self.workers)]  # one per process
            except Exception as exc:  # noqa: BLE001 - no processes here (limits, pickling): judged in the thread
                self._not_started(exc)
                return
            self._ready = readies[-1]
            self._readies = readies
            self._note_processes()

    def _not_started(self, exc: BaseException) -> None:
        """The processes could not start: every exchange is judged in the run's process, and the run says so."""
        self.broken = True
        self.errors.append(f"the judging processes could not start ({type(exc).__name__}: {exc}): every exchange "
                           "was judged in the run's process")
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _note_processes(self) -> None:
        executor = self._executor
        self._processes.update(getattr(executor, "_processes", None) or {})

    def wait_ready(self, timeout_s: float) -> bool:
        """Until every process has started and answered (a number of workers given: before the engine's
        t0, so that starting them costs the replay no lateness)."""
        if self._ready is None:
            return False
        try:
            for ready in self._readies:
                ready.exception(timeout_s)
        except Exception:  # noqa: BLE001 - not started in time: judged in the thread meanwhile
            return False
        return self.ready

    @property
    def ready(self) -> bool:
        ready = self._ready
        if ready is None or not ready.done() or self.broken or self.closed:
            return False
        if ready.exception() is not None:  # a process died starting, or its initializer failed
            with self._lock:
                if not self.broken:
                    self._not_started(ready.exception())
            return False
        return True

    def wants(self, exchange: Exchange, replayed: Response | None) -> bool:
        return not self.broken and not self.closed and remote.body_bytes(exchange, replayed) >= self.min_bytes

    def judge(self, exchange: Exchange, replayed: Response | None, *, error: str | None, latency_ns: int | None,
              origins) -> tuple | None:
        """(verdict, failure text) judged in a judging process, or None: judge it in this thread (small
        or equal bodies, processes not started yet, the pool shut down or broken)."""
        if error is not None or not self.wants(exchange, replayed):
            return None
        if not self.ready:
            self._start()
            return None
        task = remote.Task.of(exchange, replayed, error=error, latency_ns=latency_ns, origins=origins)
        try:
            future = self._executor.submit(remote.run_task, task)
        except (RuntimeError, BrokenProcessPool):  # shut down meanwhile, or broken by an earlier death
            return None if self.closed else self._crashed(exchange, replayed, latency_ns)
        self._note_processes()
        while True:
            try:
                result = future.result(WAIT_S)
            except TimeoutError:
                if self.closed:
                    return None
                continue
            except CancelledError:
                return None
            except BrokenProcessPool:
                return None if self.closed else self._crashed(exchange, replayed, latency_ns)
            self.judged += 1
            return result

    def _crashed(self, exchange: Exchange, replayed: Response | None, latency_ns: int | None) -> tuple:
        """A judging process died while this exchange was being judged: that exchange fails, saying so."""
        from ..verdicts.diff import Difference, Verdict, render_failure

        self.broken = True
        codes = sorted({p.exitcode for p in self._processes.values() if p.exitcode not in (None, 0)})
        how = f" (exit code {', '.join(map(str, codes))})" if codes else ""
        request = exchange.request
        what = f"{request.method} {self.redactor.target(request.target)} #{exchange.index} [{exchange.source}]"
        with self._lock:
            if not self.errors:
                self.errors.append(f"the judging process died{how} while judging {what}, which failed: not judged; the "
                                   "exchanges after it were judged in the run's process (--replay-judge-workers 0 "
                                   "judges every exchange there)")
        message = f"the judging process died{how} while judging this exchange: not judged"
        verdict = Verdict(False, (Difference("error", "judge", "", message, change="judging process died"),), (),
                          "1 difference: the judging process died")
        text = render_failure(exchange, verdict, recorded_latency_ns=exchange.recorded_latency_ns,
                              replayed_latency_ns=latency_ns,
                              replayed_status=replayed.status if replayed is not None else None,
                              redactor=self.redactor)
        return verdict, text

    def shutdown(self, timeout_s: float = 2.0) -> None:
        """The run is over (or interrupted): pending work cancelled, the processes ended and reaped."""
        with self._lock:
            self.closed = True
            executor, self._executor = self._executor, None
        if executor is None:
            return
        self._processes.update(getattr(executor, "_processes", None) or {})
        executor.shutdown(wait=False, cancel_futures=True)
        processes = list(self._processes.values())
        per = timeout_s / max(1, len(processes))
        for process in processes:
            process.join(per)  # an idle process exits on the shutdown's sentinel
        for process in processes:
            if process.is_alive():
                process.terminate()  # one still judging (Ctrl-C)
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)
