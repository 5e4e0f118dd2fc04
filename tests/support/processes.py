"""Child processes for tests: started with a log file, waited on until ready, stopped by their own PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

READY_TIMEOUT_S = 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class ManagedProcess:
    """One child process (``what`` names it in errors), its stdout and stderr appended to ``log_path``."""

    def __init__(self, what: str, log_path: Path, *, stop_timeout_s: float) -> None:
        self.what = what
        self.log_path = log_path
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        ready: Callable[[], bool],
        *,
        timeout_s: float = READY_TIMEOUT_S,
        cwd: Path | None = None,
    ) -> None:
        """Start ``argv`` and poll ``ready`` until it holds; raise (with the log's tail) if the child
        exits first, or stop it and raise if it is not ready within ``timeout_s``."""
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd or REPO_ROOT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited early:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.what} not ready in {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate, wait up to ``stop_timeout_s``, then kill: this child only, by its PID."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()

    def kill(self) -> None:
        """``kill -9``: no graceful shutdown."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text()[-chars:]

    def _close_log(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()
