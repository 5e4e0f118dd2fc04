"""Workloads run in child processes, so each client's CPU and peak memory are its own.

A child sets up (imports, connections, warm-up), says ``READY``, waits for ``GO``, runs the
workload, prints ``RESULT <json>`` and waits for ``BYE`` before exiting, so the parent can read
its CPU time at both ends of the measured interval while the process still exists.
"""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psutil

from batcher._migrate import REPO_ROOT


class ChildError(RuntimeError):
    pass


class ChildSetupError(ChildError):
    """The child failed before ``GO``: nothing was measured, so it may be started again."""


class Child:
    """The parent's handle on a workload child: ``python -m <module> <workload> <json params>``."""

    def __init__(self, module: str, workload: str, params: dict[str, Any], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, workload, json.dumps(params)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=handle,
                env=env,
                cwd=REPO_ROOT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line:
            self.kill()
            raise ChildError(f"child {self.proc.args[2:4]} gave no answer:\n{self.log.read_text()[-3000:]}")
        return line.strip()

    def _send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_ready(self, timeout: float = 120.0) -> None:
        try:
            line = self._line(timeout)
        except ChildError as exc:
            raise ChildSetupError(str(exc)) from None
        if line != "READY":
            self.kill()
            raise ChildSetupError(f"expected READY, got {line!r}")

    def go(self) -> None:
        self._send("GO")

    def result(self, timeout: float) -> dict[str, Any]:
        line = self._line(timeout)
        if not line.startswith("RESULT "):
            raise ChildError(f"expected RESULT, got {line!r}")
        data: dict[str, Any] = json.loads(line[len("RESULT ") :])
        if "error" in data:
            raise ChildError(f"the workload failed in the child: {data['error']}\n{self.log.read_text()[-3000:]}")
        return data

    def finish(self) -> None:
        try:
            self._send("BYE")
            self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def serve(setup: Callable[[dict[str, Any]], Callable[[], dict[str, Any]]]) -> None:
    """The child's side: ``setup(params)`` returns the measured body."""
    # The protocol owns the real stdout; anything a library prints goes to stderr (the log).
    proto: IO[str] = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    params = json.loads(sys.argv[2])
    try:
        body = setup(params)
        proto.write("READY\n")
        proto.flush()
        if sys.stdin.readline().strip() != "GO":
            return
        rss_before = psutil.Process().memory_info().rss
        started = time.perf_counter()
        result = body()
        result.setdefault("wall_s", time.perf_counter() - started)
        result["rss_before"] = rss_before
        result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except Exception as exc:  # reported to the parent, which fails loudly
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    proto.write("RESULT " + json.dumps(result) + "\n")
    proto.flush()
    sys.stdin.readline()
