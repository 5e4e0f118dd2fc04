"""CPU time and memory of every process a workload touches, read with psutil from outside.

A sampler thread reads each tracked process's ``cpu_times`` and RSS a few times a second, so a
Postgres backend that appears mid-run is counted from its start and peaks are seen. Roles:
``client`` (the child that runs the workload), ``workers``, ``fake`` (the fake provider),
``redis`` (redis-server), ``postgres`` (the backends of the benchmark database) and
``postgres_shared`` (postmaster, WAL writer, checkpointer...: shared with anything else on
this machine, reported apart).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

SAMPLE_INTERVAL_S = 0.2
DISCOVER_EVERY = 5
"""Rescan the process table for Postgres backends every this many samples."""


@dataclass
class _Track:
    role: str
    proc: psutil.Process
    base: float
    last: float
    peak_rss: int = 0


@dataclass
class Usage:
    """CPU seconds per role over the measured interval, and the peak RSS of each role's largest process."""

    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)

    def per_item_ms(self, items: int) -> dict[str, float]:
        return {role: 1000.0 * s / max(items, 1) for role, s in self.cpu_s.items()}


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def find_redis_server() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"]


def postgres_processes(database: str) -> tuple[list[int], list[int]]:
    """(backends of ``database``, every other postgres process)."""
    backends: list[int] = []
    shared: list[int] = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] != "postgres":
            continue
        title = " ".join(p.info["cmdline"] or ())
        if f" {database} " in f" {title} ":
            backends.append(p.pid)
        elif "(" not in title and "[local]" not in title:
            shared.append(p.pid)  # postmaster and background processes, not other databases' backends
    return backends, shared


class CpuMeter:
    """Measures from :meth:`start` to :meth:`stop`; ``fixed`` maps roles to PIDs known up front."""

    def __init__(self, fixed: dict[str, Iterable[int]], database: str | None) -> None:
        self.fixed = {role: list(pids) for role, pids in fixed.items()}
        self.database = database
        self._tracks: dict[int, _Track] = {}
        self._gone: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._lock = threading.Lock()

    def _discover(self) -> dict[str, list[int]]:
        roles = {role: list(pids) for role, pids in self.fixed.items()}
        if self.database:
            backends, shared = postgres_processes(self.database)
            roles["postgres"] = backends
            roles["postgres_shared"] = shared
        return roles

    def _add(self, role: str, pid: int, first: bool) -> None:
        if pid in self._tracks:
            return
        try:
            proc = psutil.Process(pid)
            cpu = _cpu(proc)
            # A process born after the start is counted from zero; one that existed, from now.
            base = 0.0 if not first and proc.create_time() >= self._started_at - 0.05 else cpu
            self._tracks[pid] = _Track(role, proc, base, cpu, proc.memory_info().rss)
        except psutil.Error:
            pass

    def _sample(self) -> None:
        with self._lock:
            for pid, track in list(self._tracks.items()):
                try:
                    with track.proc.oneshot():
                        track.last = _cpu(track.proc)
                        track.peak_rss = max(track.peak_rss, track.proc.memory_info().rss)
                except psutil.Error:
                    # Gone: keep what it used up to its last sample.
                    self._gone[track.role] = self._gone.get(track.role, 0.0) + track.last - track.base
                    del self._tracks[pid]

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            n += 1
            if n % DISCOVER_EVERY == 0:
                for role, pids in self._discover().items():
                    for pid in pids:
                        with self._lock:
                            self._add(role, pid, first=False)
            self._sample()

    def start(self) -> CpuMeter:
        self._started_at = time.time()
        for role, pids in self._discover().items():
            for pid in pids:
                self._add(role, pid, first=True)
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Usage:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for role, pids in self._discover().items():
            for pid in pids:
                self._add(role, pid, first=False)
        self._sample()
        usage = Usage(cpu_s=dict(self._gone))
        for track in self._tracks.values():
            usage.cpu_s[track.role] = usage.cpu_s.get(track.role, 0.0) + track.last - track.base
            usage.peak_rss[track.role] = max(usage.peak_rss.get(track.role, 0), track.peak_rss)
        for role in self._discover():
            usage.cpu_s.setdefault(role, 0.0)
        return usage


def measure(fixed: dict[str, Iterable[int]], database: str | None, body: Callable[[], object]) -> tuple[object, Usage]:
    meter = CpuMeter(fixed, database).start()
    try:
        result = body()
    finally:
        usage = meter.stop()
    return result, usage
