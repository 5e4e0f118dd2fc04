"""Real Celery worker processes for tests: started with a given environment, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT_S = 60.0


class WorkerProcess:
    """``python -m celery -A workers worker`` as a child process, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *, concurrency: int = 20, name: str = "w1") -> None:
        self.env = env
        self.log_path = log_path
        self.concurrency = concurrency
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        queues = f"{self.env['BATCHER_QUEUE']},{self.env['BATCHER_RACE_QUEUE']}"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                "--pool=threads",
                f"--concurrency={self.concurrency}",
                f"--queues={queues}",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--hostname={self.name}-{os.getpid()}@%h",
            ],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            if b" ready." in self.log_path.read_bytes():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"worker not ready in {READY_TIMEOUT_S} s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """``kill -9``: no warm shutdown, unacknowledged messages stay with the broker."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class IsolatedCluster:
    """Workers of their own (own queues, own settings) for tests that kill, flush or throttle them."""

    def __init__(self, base_env: dict[str, str], log_dir: Path, overrides: dict[str, str], n_workers: int = 1) -> None:
        tag = os.urandom(4).hex()
        self.env = {
            **base_env,
            "BATCHER_QUEUE": f"iso-{tag}",
            "BATCHER_RACE_QUEUE": f"iso-{tag}.race",
            **overrides,
        }
        self.log_dir = log_dir
        self.workers = [
            WorkerProcess(self.env, log_dir / f"worker-{tag}-{i}.log", name=f"iso{i}-{tag}") for i in range(n_workers)
        ]

    def add_worker(self) -> WorkerProcess:
        worker = WorkerProcess(
            self.env, self.log_dir / f"worker-extra-{len(self.workers)}.log", name=f"extra{len(self.workers)}"
        )
        self.workers.append(worker.start())
        return worker

    def __enter__(self) -> IsolatedCluster:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()

    def logs(self) -> str:
        return "\n".join(w.log_path.read_text(errors="replace") for w in self.workers if w.log_path.exists())
