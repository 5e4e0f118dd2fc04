"""``batcher worker``'s supervisor: one Celery worker process per core, plus one for races.

One worker process is bound by its Celery consumer thread long before its 100 threads are (the GIL:
docs/benchmarks.md), so the default deployment runs ``BATCHER_WORKER_PROCESSES`` of them (0, the
default: one per core this process may run on), each a plain ``celery worker`` with ``worker_argv``'s
flags and a hostname of its own (``batcher-1@host``, ``batcher-2@host``, ...), each with every
per-worker duty of its own (heartbeat, leader candidacy, metrics on the first free port of the range).

A race (``submit_fastest``) must not wait behind a batch that holds every thread: one more small
process, ``batcher-race@host`` (``BATCHER_WORKER_RACE_CONCURRENCY`` threads), consumes only the race
queue. The batch processes consume both queues, so an idle fleet answers races too.

The supervisor itself does no work and holds no connection. It

* forwards the first SIGTERM/SIGINT to every child as SIGTERM (Celery's warm shutdown: in-flight calls
  finish within ``BATCHER_SHUTDOWN_GRACE_S``, the rest is handed back) and a second one as SIGQUIT
  (cold shutdown); the children run in a process group of their own, so a terminal's Ctrl-C reaches them
  once, through here;
* restarts a child that dies unexpectedly (a crash, ``kill -9``, the OOM killer), after a backoff that
  doubles with each fast crash of the same child, and gives up (stops the others, exits
  ``EXIT_GAVE_UP``) after ``MAX_FAST_CRASHES`` crashes in a row that each came within
  ``FAST_CRASH_S`` of the start: a child that cannot start is a configuration problem, not bad luck;
* leaves a child that exited with status 0 on its own stopped (``celery control shutdown``), and exits
  when none is left;
* asks the kernel to SIGTERM the children if it dies itself (Linux ``PR_SET_PDEATHSIG``).

Two ``batcher worker`` commands on one host (as a cluster of one machine may be started, one per core
by hand) must not share Celery node names: remote control and monitoring address a worker by it.
``claim_name`` holds a lock file per name for the command's life: the default name, ``batcher``, moves
on to ``batcher2``, ``batcher3``... when another command on the host holds it; a name given with
``--name`` that another holds is refused in one line.

``batcher worker -p 1`` does not come here: it ``exec``s the single worker of old.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("batcher.supervisor")

EXIT_OK = 0
EXIT_GAVE_UP = 1
"""A child kept crashing right after its start (or could not be started at all)."""

FAST_CRASH_S = 30.0
"""A child that dies within this many seconds of its start counts as a fast crash."""
MAX_FAST_CRASHES = 5
"""Fast crashes in a row of one child after which the supervisor gives up."""
RESTART_BACKOFF_INITIAL_S = 1.0
"""Wait before the first restart of a crashed child; doubles with each fast crash in a row."""
RESTART_BACKOFF_MAX_S = 30.0
SUPERVISOR_POLL_S = 1.0
"""The supervisor looks at its children at least this often, whether or not a SIGCHLD reached it."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WATCHED = {signal.SIGCHLD, *STOP_SIGNALS}
_PR_SET_PDEATHSIG = 1


DEFAULT_WORKER_NAME = "batcher"
MAX_DEFAULT_NAMES = 64
"""``batcher``, ``batcher2``... ``batcher64``: the default names one host hands out."""


class NameTakenError(Exception):
    """Another ``batcher worker`` on this host holds the name."""


@dataclass
class ClaimedName:
    """A worker name held on this host: its lock file stays locked while ``fd`` is open (the command's life;
    ``-p 1`` runs Celery in the same process)."""

    name: str
    fd: int
    """-1: no lock could be taken (the lock directory is not writable); the name is used unchecked."""
    moved_from: str | None = None
    """The default name this one replaces, because another command holds it."""


def claim_name(requested: str | None, *, lock_dir: Path | None = None) -> ClaimedName:
    """Hold ``requested`` (or the first free default name) on this host for this process's life; raises
    ``NameTakenError`` naming the holder when a requested name is taken."""
    directory = lock_dir or Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    candidates = (
        [requested]
        if requested
        else [DEFAULT_WORKER_NAME, *(f"{DEFAULT_WORKER_NAME}{i}" for i in range(2, MAX_DEFAULT_NAMES + 1))]
    )
    holder = ""
    for name in candidates:
        path = directory / f"batcher-worker-{os.getuid()}-{_file_safe(name)}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a read-only file system (a container's): start as before, unchecked
            log.warning("cannot hold the worker name %s on this host (%s: %s); not checked", name, path, exc.strerror)
            return ClaimedName(requested or DEFAULT_WORKER_NAME, -1)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return ClaimedName(
            name, fd, moved_from=None if requested or name == DEFAULT_WORKER_NAME else DEFAULT_WORKER_NAME
        )
    if requested:
        raise NameTakenError(
            f"another `batcher worker` on this host (pid {holder or '?'}) runs as {requested}: "
            "give this one another --name"
        )
    raise NameTakenError(f"{MAX_DEFAULT_NAMES} `batcher worker` commands on this host already: give this one --name")


def _file_safe(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name) else hashlib.sha256(name.encode()).hexdigest()[:32]


def processes_for(setting: int) -> int:
    """Worker processes for ``BATCHER_WORKER_PROCESSES`` / ``--processes``: 0 means one per usable core."""
    if setting > 0:
        return setting
    count: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)  # Python 3.13+
    cores = count() if count is not None else None
    if cores is None and hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    return max(1, cores or os.cpu_count() or 1)


@dataclass
class ChildSpec:
    """One supervised process: its name (in logs) and its command line."""

    name: str
    argv: list[str]
    nice: int = 0
    """Added to the process's niceness (``os.nice``): the batch workers yield the CPU to the race process."""


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    fast_crashes: int = 0
    restart_at: float | None = None
    done: bool = False  # exited and not to be restarted
    exit_codes: list[int] = field(default_factory=list)


def _child_setup(nice: int) -> None:  # pragma: no cover - runs in the forked child before exec
    # The supervisor blocks the signals it waits for; a Celery worker must receive them.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    libc_name = ctypes.util.find_library("c")
    if sys.platform.startswith("linux") and libc_name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Start the children, forward stop signals, restart the ones that die; ``run`` returns the exit status."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        fast_crash_s: float = FAST_CRASH_S,
        max_fast_crashes: int = MAX_FAST_CRASHES,
        backoff_initial_s: float = RESTART_BACKOFF_INITIAL_S,
        backoff_max_s: float = RESTART_BACKOFF_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = [_Child(spec) for spec in specs]
        self.env = env
        self.cwd = cwd
        self.fast_crash_s = fast_crash_s
        self.max_fast_crashes = max_fast_crashes
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.stop_signals = 0
        self.gave_up = False

    # --- life -------------------------------------------------------------------------------------

    def run(self) -> int:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        try:
            for child in self.children:
                self._start(child)
            if self.gave_up:
                self._stop_all(signal.SIGTERM)
            while not all(child.done for child in self.children):
                # Bounded: a SIGCHLD taken by another thread of this process (an embedding program's) must
                # not leave a dead child unseen; ``_reap`` polls every child anyway.
                due = self._next_timeout()
                info = signal.sigtimedwait(_WATCHED, SUPERVISOR_POLL_S if due is None else min(due, SUPERVISOR_POLL_S))
                if info is not None and info.si_signo in STOP_SIGNALS:
                    self._on_stop_signal()
                self._reap()
                self._restart_due()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return EXIT_GAVE_UP if self.gave_up else EXIT_OK

    @property
    def stopping(self) -> bool:
        return self.stop_signals > 0 or self.gave_up

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children if c.proc is not None and c.proc.poll() is None]

    # --- children -----------------------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        child.restart_at = None
        try:
            child.proc = subprocess.Popen(
                child.spec.argv,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=functools.partial(_child_setup, child.spec.nice),  # the supervisor runs no threads: safe
                process_group=0,  # a terminal's Ctrl-C reaches the children once, through the supervisor
            )
        except OSError as exc:
            log.error("could not start worker %s: %s", child.spec.name, exc)
            child.done = True
            self.gave_up = True
            return
        child.started_at = self.clock()
        log.info("started worker %s (pid %d)", child.spec.name, child.proc.pid)

    def _reap(self) -> None:
        for child in self.children:
            proc = child.proc
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
            child.proc = None
            child.exit_codes.append(code)
            if self.stopping or code == 0:
                child.done = True
                if not self.stopping:
                    log.info("worker %s (pid %d) exited on its own: not restarted", child.spec.name, proc.pid)
                continue
            self._crashed(child, proc.pid, code)

    def _crashed(self, child: _Child, pid: int, code: int) -> None:
        lived = self.clock() - child.started_at
        child.fast_crashes = child.fast_crashes + 1 if lived < self.fast_crash_s else 0
        how = f"signal {-code}" if code < 0 else f"status {code}"
        if child.fast_crashes >= self.max_fast_crashes:
            log.error(
                "worker %s (pid %d) died (%s) %d times in a row within %g s of its start: giving up, "
                "stopping the other workers (see its log above)",
                child.spec.name,
                pid,
                how,
                child.fast_crashes,
                self.fast_crash_s,
            )
            child.done = True
            self.gave_up = True
            self._stop_all(signal.SIGTERM)
            return
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, child.fast_crashes - 1))
        log.warning(
            "worker %s (pid %d) died (%s) after %.1f s: restarting it in %g s", child.spec.name, pid, how, lived, delay
        )
        child.restart_at = self.clock() + delay

    def _restart_due(self) -> None:
        if self.stopping:
            for child in self.children:
                if child.restart_at is not None:
                    child.restart_at = None
                    child.done = True
            return
        now = self.clock()
        for child in self.children:
            if child.restart_at is not None and child.restart_at <= now:
                self._start(child)
        if self.gave_up:
            self._stop_all(signal.SIGTERM)

    def _next_timeout(self) -> float | None:
        due = [c.restart_at for c in self.children if c.restart_at is not None]
        return max(0.0, min(due) - self.clock()) if due else None

    # --- signals ------------------------------------------------------------------------------------

    def _on_stop_signal(self) -> None:
        self.stop_signals += 1
        if self.stop_signals == 1:
            log.info("stopping the workers (warm: in-flight calls finish; again for a cold stop)")
            self._stop_all(signal.SIGTERM)
        else:
            log.warning("cold stop of the workers: in-flight calls are abandoned (their requests run again)")
            self._stop_all(signal.SIGQUIT)

    def _stop_all(self, signum: int) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.proc.pid, signum)


def worker_specs(
    *,
    processes: int,
    concurrency: int,
    race_concurrency: int,
    queue: str,
    race_queue: str,
    loglevel: str,
    name: str = "batcher",
    extra: Sequence[str] = (),
    batch_nice: int = 0,
) -> list[ChildSpec]:
    """The children of ``batcher worker``: ``processes`` batch workers on both queues, plus a race-only one."""
    from batcher._celery import worker_argv

    celery = [sys.executable, "-m", "celery", "-A", "workers"]
    specs = [
        ChildSpec(
            f"{name}-{i}",
            [
                *celery,
                *worker_argv(
                    concurrency=concurrency,
                    queues=[queue, race_queue],
                    loglevel=loglevel,
                    hostname=f"{name}-{i}@%h",
                ),
                *extra,
            ],
            nice=batch_nice if race_concurrency > 0 else 0,
        )
        for i in range(1, processes + 1)
    ]
    if race_concurrency > 0:
        argv = worker_argv(
            concurrency=race_concurrency, queues=[race_queue], loglevel=loglevel, hostname=f"{name}-race@%h"
        )
        specs.append(ChildSpec(f"{name}-race", [*celery, *argv, *extra]))
    return specs
