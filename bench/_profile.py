"""Where a worker's CPU goes per completion: py-spy samples of every worker during a W1 batch.

py-spy samples each thread that is running on a CPU (idle threads, those blocked on a socket
or waiting for the GIL, are left out), so samples / rate is on-CPU time. Stacks are read in
py-spy's "raw" (collapsed) format: ``frame;frame;...;leaf count`` with frames as
``function (path:line)``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE_HZ = 250

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")

# Leaf frames are grouped by the library their file belongs to.
_GROUPS = (
    ("sqlalchemy", "SQLAlchemy"),
    ("psycopg", "psycopg (Postgres driver)"),
    ("httpx", "httpx"),
    ("httpcore", "httpcore"),
    ("h11", "h11 (HTTP/1.1 parser)"),
    ("kombu", "kombu (broker messages)"),
    ("celery", "Celery (task machinery)"),
    ("billiard", "Celery (task machinery)"),
    ("redis", "redis-py"),
    ("pydantic", "pydantic"),
    ("json", "json"),
    ("/batcher/", "batcher"),
    ("/workers/", "batcher workers"),
    ("logging", "logging"),
    ("threading", "threads / locks"),
    ("ssl", "ssl"),
    ("socket", "sockets"),
    ("selectors", "sockets"),
    ("uuid", "uuid"),
)


def _group(path: str) -> str:
    for needle, name in _GROUPS:
        if needle in path:
            return name
    return "other (stdlib / C)"


def _label(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    path = match.group("path")
    short = path.split("site-packages/")[-1].split("/work/main/")[-1].split("/lib/python3.11/")[-1]
    return f"{match.group('fn')} ({short})", path


@dataclass
class Profile:
    samples: int = 0
    self_samples: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    groups: Counter[str] = field(default_factory=Counter)
    rate_hz: int = SAMPLE_RATE_HZ

    def add_raw(self, text: str) -> None:
        for line in text.splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
            if not frames:
                continue
            self.samples += count
            leaf, leaf_path = _label(frames[-1])
            self.self_samples[leaf] += count
            self.groups[_group(leaf_path)] += count
            for name in {_label(f)[0] for f in frames}:
                self.inclusive[name] += count

    def us_per(self, samples: int, completions: int) -> float:
        return 1e6 * samples / self.rate_hz / max(completions, 1)


class Recorder:
    """``py-spy record`` attached to running PIDs; stopped with SIGINT, which makes it write."""

    def __init__(self, pids: list[int], workdir: Path) -> None:
        self.pids = pids
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: list[Path] = []

    @staticmethod
    def available() -> bool:
        return shutil.which("py-spy") is not None

    def start(self) -> Recorder:
        for pid in self.pids:
            out = self.workdir / f"profile-{pid}.txt"
            log = (self.workdir / f"py-spy-{pid}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(SAMPLE_RATE_HZ),
                        "--format",
                        "raw",
                        "--nonblocking",
                        "-o",
                        str(out),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
            self.outputs.append(out)
        return self

    def stop(self) -> Profile:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        profile = Profile()
        for out in self.outputs:
            if out.exists():
                profile.add_raw(out.read_text(errors="replace"))
        return profile
