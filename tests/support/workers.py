"""Real Celery worker processes for tests: started with a given environment, stopped by PID."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.processes import READY_TIMEOUT_S, ManagedProcess
from workers.celery_app import worker_argv


class WorkerProcess:
    """``python -m celery -A workers worker`` as a child process, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *, concurrency: int = 20, name: str = "w1") -> None:
        self.env = env
        self.log_path = log_path
        self.concurrency = concurrency
        self.name = name
        self._process = ManagedProcess("worker", log_path, stop_timeout_s=30)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self._process.proc

    def start(self) -> WorkerProcess:
        argv = worker_argv(  # exactly as `batcher worker` starts one
            concurrency=self.concurrency,
            queues=[self.env["BATCHER_QUEUE"], self.env["BATCHER_RACE_QUEUE"]],
            loglevel="INFO",
            hostname=f"{self.name}-{os.getpid()}@%h",
        )
        self._process.start(
            [sys.executable, "-m", "celery", "-A", "workers", *argv],
            self.env,
            lambda: b" ready." in self.log_path.read_bytes(),
            timeout_s=READY_TIMEOUT_S,
        )
        return self

    def kill(self) -> None:
        """``kill -9``: no warm shutdown, unacknowledged messages stay with the broker."""
        self._process.kill()

    def stop(self) -> None:
        self._process.stop()

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
