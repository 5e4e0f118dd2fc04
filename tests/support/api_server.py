"""The real HTTP service for tests: ``batcher api`` in a child process on a free port, stopped by PID."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.processes import READY_TIMEOUT_S, ManagedProcess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiServer:
    """``python -m batcher.cli api`` with the given environment, logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = ManagedProcess("api", log_path, stop_timeout_s=20)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self._process.proc

    def start(self) -> ApiServer:
        self._process.start(
            [sys.executable, "-m", "batcher.cli", "api", "--port", str(self.port), "--log-level", "warning"],
            self.env,
            self._healthy,
            timeout_s=READY_TIMEOUT_S,
        )
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_shared: ApiServer | None = None


def shared_api_server(env: dict[str, str], log_dir: Path, config: object) -> ApiServer:
    """One service for every test module of the session (it takes seconds to start), stopped at session end."""
    global _shared
    if _shared is None or _shared.proc is None or _shared.proc.poll() is not None:
        _shared = ApiServer(env, log_dir / "api.log").start()
        config.add_cleanup(_shared.stop)  # type: ignore[attr-defined]
    return _shared
