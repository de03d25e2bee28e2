"""Saturation samples during a capacity run: once a second, the replayer's own CPU, and the
target's CPU, memory and open files from /proc/PID (--replay-target-pid) and/or a Prometheus
metrics endpoint (--replay-metrics URL, --replay-metric NAME). Kept per stage in the evidence.

A sampler is a daemon thread that only reads: a /proc file that vanished (the target died) or a
metrics endpoint that fails is counted and described, never fatal to the run.
"""

from __future__ import annotations

import math
import os
import re
import threading

MAX_SAMPLES = 3600  # an hour of samples kept in the evidence; the per-stage summary covers all
STANDARD = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds")
_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)(?:\s+\S+)?\s*$")


def parse_prometheus(text: str, names) -> dict[str, float]:
    """Sum of each wanted metric's samples (over its label sets) in Prometheus text exposition."""
    wanted = set(names)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line.strip())
        if not match or match["name"] not in wanted:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if math.isfinite(value):
            out[match["name"]] = out.get(match["name"], 0.0) + value
    return out


def read_proc(pid: int) -> dict[str, float]:
    """CPU seconds, RSS bytes and open fds of process `pid` (Linux /proc). OSError if it is gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode("latin-1")
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    rss = 0.0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = float(line.split()[1]) * 1024
    try:
        fds = float(len(os.listdir(f"/proc/{pid}/fd")))
    except PermissionError:
        fds = math.nan
    return {"cpu_s": cpu, "rss_bytes": rss, "open_fds": fds}


class Sampler:
    def __init__(self, now_ns, *, pid: int | None = None, metrics_url: str | None = None, metrics=(),
                 interval_s: float = 1.0) -> None:
        self.now_ns = now_ns  # the engine's clock
        self.pid = pid
        self.url = metrics_url
        self.names = tuple(dict.fromkeys((*STANDARD, *metrics)))
        self.interval = interval_s
        self.samples: list[dict] = []
        self.failures: dict[str, int] = {}
        self.first_failure: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="pytest-replay-sampler", daemon=True)
        self._last: dict = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _failed(self, source: str, exc: BaseException) -> None:
        self.failures[source] = self.failures.get(source, 0) + 1
        self.first_failure.setdefault(source, f"{type(exc).__name__}: {exc}"[:300])

    def _main(self) -> None:
        client = None
        if self.url:
            import httpx
            client = httpx.Client(timeout=min(self.interval, 1.0))
        try:
            while True:
                self.sample(client)
                if self._stop.wait(self.interval):
                    self.sample(client)
                    return
        finally:
            if client is not None:
                client.close()

    def _rate(self, key: str, now: float, value: float | None) -> float | None:
        """A counter (CPU seconds) as a share of one core since the previous sample."""
        previous = self._last.get(key)
        if value is not None:
            self._last[key] = (now, value)
        if previous is None or value is None or now <= previous[0]:
            return None
        return round((value - previous[1]) / (now - previous[0]), 4)

    def sample(self, client=None) -> None:
        now = self.now_ns()
        wall = now / 1e9
        times = os.times()
        row: dict = {"t_ns": now, "replayer_cpu": self._rate("self", wall, times.user + times.system)}
        if self.pid:
            try:
                proc = read_proc(self.pid)
                row["target_cpu"] = self._rate("pid", wall, proc["cpu_s"])
                row["target_rss_bytes"] = proc["rss_bytes"]
                row["target_open_fds"] = None if math.isnan(proc["open_fds"]) else proc["open_fds"]
            except (OSError, ValueError, IndexError) as exc:
                self._failed(f"/proc/{self.pid}", exc)
        if client is not None:
            try:
                response = client.get(self.url)
                response.raise_for_status()
                values = parse_prometheus(response.text, self.names)
                cpu = values.pop("process_cpu_seconds_total", None)
                row["metrics_cpu"] = self._rate("metrics", wall, cpu)
                for name, value in values.items():
                    row[name] = value
            except Exception as exc:  # noqa: BLE001 - a metrics endpoint that fails is reported, never fatal
                self._failed(self.url, exc)
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(row)

    def summary(self, t0_ns: int, bounds_ns, labels) -> dict:
        """Per stage: mean and max of each sampled series; the samples (t from the replay's start)."""
        stages = []
        for i, label in enumerate(labels):
            start, end = t0_ns + bounds_ns[i], t0_ns + bounds_ns[i + 1]
            rows = [r for r in self.samples if start <= r["t_ns"] < end]
            series: dict[str, dict] = {}
            for key in sorted({k for r in rows for k in r if k != "t_ns"}):
                values = [r[key] for r in rows if r.get(key) is not None]
                if values:
                    series[key] = {"mean": round(sum(values) / len(values), 4), "max": round(max(values), 4)}
            stages.append({"stage": i + 1, "pace": label, "samples": len(rows), **series})
        samples = [{"t_s": round((r["t_ns"] - t0_ns) / 1e9, 3), **{k: v for k, v in r.items() if k != "t_ns"}}
                   for r in self.samples]
        failures = [{"source": source, "failures": n, "first": self.first_failure.get(source, "")}
                    for source, n in self.failures.items()]
        return {"stages": stages, "samples": samples, "failures": failures,
                "target_pid": self.pid, "metrics_url": self.url}
