"""How much memory and time the HTTP service needs to accept a 50,000-line (~100 MB) OpenAI batch file.

Standalone: makes a scratch database and Redis queue, starts ``batcher api`` as a child process,
uploads the file with the official ``openai`` SDK, creates the batch and waits until it is
``in_progress`` (every line validated, stored with COPY and enqueued). No worker runs, so the
requests stay queued; everything is dropped afterwards. Peak RSS is the API process's
``VmHWM`` from ``/proc`` (the kernel's high-water mark, so no sample can miss the peak).

    python bench/api_large_file.py [--lines 50000] [--line-bytes 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import openai
import redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batcher._config import Settings  # noqa: E402
from batcher._db.engine import dispose_engines, get_engine  # noqa: E402
from batcher._migrate import upgrade  # noqa: E402
from batcher.api.auth import create_key  # noqa: E402

PG_ADMIN = os.environ.get("BATCHER_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ENQUEUED_SQL = "SELECT enqueued_at IS NOT NULL FROM jobs WHERE id = (SELECT job_id FROM batches WHERE id = :b)"
REDIS_URL = os.environ.get("BATCHER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_file(path: Path, lines: int, line_bytes: int) -> int:
    with path.open("w") as out:
        for i in range(lines):
            line = {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}], "max_tokens": 16},
            }
            pad = max(line_bytes - len(json.dumps(line)) - 1, 0)
            line["body"]["messages"][0]["content"] = f"prompt {i} " + "x" * max(pad - 10, 0)  # type: ignore[index]
            out.write(json.dumps(line) + "\n")
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--line-bytes", type=int, default=2_000)
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    db_name = f"batcher_apibench_{run}"
    db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{db_name}"
    queue = f"apibench-{run}"
    env = {
        **os.environ,
        "BATCHER_DATABASE_URL": db_url,
        "BATCHER_REDIS_URL": REDIS_URL,
        "BATCHER_QUEUE": queue,
        "BATCHER_RACE_QUEUE": f"{queue}.race",
        "BATCHER_WORKER_CONCURRENCY": "8",
        "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sk-bench-not-used"),
    }
    port = _free_port()
    proc: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch_input.jsonl"
        size = write_file(path, args.lines, args.line_bytes)
        try:
            settings = Settings(database_url=db_url, redis_url=REDIS_URL)
            upgrade(settings)
            _, key = create_key(get_engine(settings), "bench")
            proc = subprocess.Popen(
                [sys.executable, "-m", "batcher.cli", "api", "--port", str(port), "--log-level", "warning"],
                env=env,
                cwd=ROOT,
            )
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            idle_kib = _kib(proc.pid, "VmRSS")

            client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=600)
            t0 = time.perf_counter()
            with path.open("rb") as handle:
                uploaded = client.files.create(file=(path.name, handle), purpose="batch")
            t_upload = time.perf_counter() - t0
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            t_create = time.perf_counter() - t0 - t_upload
            while batch.status == "validating":
                time.sleep(0.2)
                batch = client.batches.retrieve(batch.id)
            t_accept = time.perf_counter() - t0
            with get_engine(settings).connect() as conn:
                enqueued = conn.execute(
                    text(ENQUEUED_SQL),
                    {"b": batch.id},
                ).scalar()
            while not enqueued and time.perf_counter() - t0 < 600:
                time.sleep(0.2)
                with get_engine(settings).connect() as conn:
                    enqueued = conn.execute(
                        text(ENQUEUED_SQL),
                        {"b": batch.id},
                    ).scalar()
            t_enqueued = time.perf_counter() - t0
            peak_kib = _kib(proc.pid, "VmHWM")
            client.close()
            report = {
                "lines": args.lines,
                "file_mb": round(size / 1e6, 1),
                "status": batch.status,
                "request_counts_total": batch.request_counts.total if batch.request_counts else None,
                "upload_s": round(t_upload, 2),
                "create_call_s": round(t_create, 3),
                "accepted_in_progress_s": round(t_accept, 2),
                "all_enqueued_s": round(t_enqueued, 2),
                "api_rss_idle_mb": round(idle_kib / 1024, 1),
                "api_rss_peak_mb": round(peak_kib / 1024, 1),
            }
            print(json.dumps(report, indent=2))
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
            dispose_engines()
            r = redis.Redis.from_url(REDIS_URL)
            r.delete(queue, f"{queue}.race")
            r.close()
            admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
