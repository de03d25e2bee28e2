"""Clocks: the engine reads time and sleeps through a Clock, so tests can use a fake one."""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import os
import sys
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...

    async def sleep_until(self, deadline_ns: int) -> None: ...


# -- precise wake-ups on Linux: a timerfd armed at the absolute deadline ---------------------------
# asyncio timers go through epoll_wait, whose timeout is in whole milliseconds rounded up: a sleep
# wakes 0-1 ms late (measured here: p50 0.55 ms, p99 1.8 ms at 2,000 sleeps/s). A timerfd armed on
# CLOCK_MONOTONIC (what time.perf_counter_ns reads on Linux) and watched by the loop wakes within
# ~30 us (p99 ~40 us) without spinning. os.timerfd_create exists from Python 3.13; before, libc's
# via ctypes. Elsewhere the clock falls back to sleeping short and yielding to the loop.
_CLOCK_MONOTONIC, _TFD_TIMER_ABSTIME = 1, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timerfd_api():
    if not sys.platform.startswith("linux") or time.get_clock_info("perf_counter").implementation != \
            "clock_gettime(CLOCK_MONOTONIC)":
        return None
    try:
        # PyDLL: the calls keep the GIL. Releasing it for a microsecond-long syscall would let a busy
        # pytest thread take it, and getting it back costs a switch interval.
        libc = ctypes.PyDLL(None, use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = [ctypes.c_int, ctypes.c_int]
    settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
    return create, settime


_TIMERFD = _timerfd_api()


class _TimerFD:
    """One timerfd serving every sleeper of one event loop: a heap of (deadline, seq, future), the
    fd armed at the earliest deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        create, self._settime = _TIMERFD
        self.fd = create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.loop = loop
        self._spec = _Itimerspec()
        self._spec_ref = ctypes.byref(self._spec)
        self._heap: list = []
        self._seq = 0
        self._armed: int | None = None
        loop.add_reader(self.fd, self._fired)

    def _arm(self, deadline_ns: int) -> None:
        """Arm at `deadline_ns` (0: disarm). Setting the timer also clears its expiry count, so the
        fd stops being readable without a read() (one GIL release less per wake-up)."""
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        if self._settime(self.fd, _TFD_TIMER_ABSTIME, self._spec_ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed = deadline_ns or None

    def wait(self, deadline_ns: int) -> asyncio.Future:
        fut = self.loop.create_future()
        self._seq += 1
        heapq.heappush(self._heap, (deadline_ns, self._seq, fut))
        if self._armed is None or deadline_ns < self._armed:
            self._arm(deadline_ns)
        return fut

    def _fired(self) -> None:
        heap = self._heap
        now = time.perf_counter_ns()
        while heap and heap[0][0] <= now:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)
        while heap and heap[0][2].done():  # cancelled sleepers
            heapq.heappop(heap)
        self._arm(heap[0][0] if heap else 0)  # re-arm or disarm: either clears the readable state

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.fd)
        except Exception:
            pass
        os.close(self.fd)


class RealClock:
    """Monotonic time (time.perf_counter_ns). On Linux, sleeps on a timerfd armed at the absolute
    deadline (wakes within tens of microseconds, no spinning). Elsewhere, sleeps in the event loop
    until shortly before the deadline (asyncio timers round up to whole milliseconds), then yields
    to the loop until the deadline is reached, so I/O keeps flowing."""

    SPIN_NS = 2_000_000

    def __init__(self, precise: bool = True) -> None:
        self.precise = precise and _TIMERFD is not None
        self._timers: dict[asyncio.AbstractEventLoop, _TimerFD] = {}
        # The engine reads the clock a few times per request: the builtin itself, not a method
        # around it (one Python frame less per read).
        self.now_ns = time.perf_counter_ns

    def now_ns(self) -> int:  # (replaced per instance by time.perf_counter_ns itself)
        return time.perf_counter_ns()

    async def sleep_until(self, deadline_ns: int) -> None:
        now = time.perf_counter_ns()
        if deadline_ns <= now:
            return
        if self.precise:
            loop = asyncio.get_running_loop()
            timer = self._timers.get(loop)
            if timer is None:
                try:
                    timer = self._timers[loop] = _TimerFD(loop)
                except (OSError, NotImplementedError):
                    self.precise = False
            if timer is not None:
                await timer.wait(deadline_ns)
                return
        if deadline_ns - now > self.SPIN_NS:
            await asyncio.sleep((deadline_ns - now - self.SPIN_NS) / 1e9)
        while time.perf_counter_ns() < deadline_ns:
            await asyncio.sleep(0)

    def close(self) -> None:
        """Release the timer file descriptors (call from the loop's thread, before the loop closes)."""
        timers, self._timers = self._timers, {}
        for timer in timers.values():
            if not timer.loop.is_closed():
                timer.close()
            else:
                os.close(timer.fd)


class FakeClock:
    """Time that only moves when the engine sleeps (or a test advances it): exact and instant.

    A small discrete-event clock: sleepers wait in a heap; when nothing else in the event loop is
    ready to run, time jumps to the earliest deadline and wakes its sleepers. So several coroutines
    can sleep at once (a dispatcher and fake targets with a simulated latency) and each wakes at
    exactly its deadline, in deadline order. Timers of the loop itself (asyncio.sleep, timeouts)
    still run on real time."""

    def __init__(self, start_ns: int = 0) -> None:
        self.t = start_ns
        self._heap: list = []
        self._seq = 0
        self._driver: asyncio.Task | None = None

    def now_ns(self) -> int:
        return self.t

    def advance(self, ns: int) -> None:
        self.t += ns
        heap = self._heap
        while heap and heap[0][0] <= self.t:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)

    async def sleep_until(self, deadline_ns: int) -> None:
        if deadline_ns <= self.t:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._seq += 1
        heapq.heappush(self._heap, (deadline_ns, self._seq, fut))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive())
        await fut

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while heap:
            # Let everything that can run, run (ready callbacks; I/O completing meanwhile counts too).
            for _ in range(1000):
                await asyncio.sleep(0)
                if not getattr(loop, "_ready", True):
                    break
            while heap and heap[0][2].done():
                heapq.heappop(heap)
            if not heap:
                break
            deadline = heap[0][0]
            if deadline > self.t:
                self.t = deadline
            while heap and heap[0][0] <= self.t:
                fut = heapq.heappop(heap)[2]
                if not fut.done():
                    fut.set_result(None)
