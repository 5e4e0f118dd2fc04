"""``python -m bench.groups``: what a worker's group commit costs per completion, client and server (issue #16).

One job of ``--prompts`` requests is claimed and then stored in groups of ``--group`` through the worker's
own calls (``JobStore.claim_requests``, ``JobStore.record_successes``), one group after another on one
pooled connection, as a worker's group runners do. Measured per request: the calling thread's CPU
(``time.thread_time``), the Postgres backend's CPU (``/proc/<backend pid>/stat``: user + system) and the wall
time. Run it against two checkouts back to back (``PYTHONPATH=<checkout>``) to compare their statements;
nothing else of batcher runs (no broker, no workers, no provider). Needs the Postgres server on this host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from batcher._db.contract import store_for
from batcher._db.rows import Answer, Claim, ClaimedRequest, NewJob, NewRequest
from bench._services import BenchDatabase

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MESSAGES = [{"role": "user", "content": "hello there " * 5}]
BODY: dict[str, Any] = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi " * 40}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50},
}


def _backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _measured(run: Callable[[], None], backend: int, n: int) -> tuple[float, float, float]:
    """(client CPU ms, server CPU ms, wall ms) per request of ``run``."""
    wall, cpu, server = time.perf_counter(), time.thread_time(), _backend_cpu_s(backend)
    run()
    cpu, server, wall = time.thread_time() - cpu, _backend_cpu_s(backend) - server, time.perf_counter() - wall
    return 1000 * cpu / n, 1000 * server / n, 1000 * wall / n


def _rep(engine: Engine, prompts: int, group: int) -> dict[str, tuple[float, float, float]]:
    store = store_for(engine)
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        store.insert_job(conn, NewJob(id=job_id, kind="batch", params={"params": {}}, queue="q"))
        specs = (NewRequest(idx=i, model="gpt-4o-mini", provider="openai", messages=MESSAGES) for i in range(prompts))
        total = store.copy_requests(conn, job_id, specs)
        store.set_total(conn, job_id, total)
    with engine.connect() as conn:
        backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    claims = [Claim(job_id, idx, 600.0, 30.0, "bench") for idx in range(prompts)]
    claimed: list[ClaimedRequest | None] = []

    def claim_all() -> None:
        for start in range(0, prompts, group):
            with engine.begin() as conn:
                claimed.extend(store.claim_requests(conn, claims[start : start + group]))

    def store_all() -> None:
        items = [(c, Answer(BODY, c.provider, c.model, BODY["usage"], 12.0)) for c in claimed if c is not None]
        for start in range(0, len(items), group):
            with engine.begin() as conn:
                store.record_successes(conn, items[start : start + group])

    out = {"claim": _measured(claim_all, backend, prompts), "store": _measured(store_all, backend, prompts)}
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM responses WHERE job_id = :j"), {"j": job_id}).scalar_one()
    if stored != prompts:
        raise SystemExit(f"stored {stored} of {prompts} answers")
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.groups", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4_000)
    p.add_argument("--group", type=int, action="append", help="items per group (repeatable; default 8 and 16)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--pg-admin-url", default=os.environ.get("BATCHER_BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL))
    args = p.parse_args()
    database = BenchDatabase(args.pg_admin_url, f"groups_{uuid.uuid4().hex[:8]}")
    database.create()
    # One connection, autocommit between groups, as a worker's runners use ``WorkerContext.db``.
    engine = create_engine(database.url, pool_size=1, max_overflow=0).execution_options(isolation_level="AUTOCOMMIT")
    try:
        for group in args.group or [8, 16]:
            reps = [_rep(engine, args.prompts, group) for _ in range(args.reps)]
            for what in ("claim", "store"):
                client, server, wall = (statistics.median(r[what][i] for r in reps) for i in range(3))
                print(
                    f"group {group:>3} {what}: client {client:.3f} CPU-ms, Postgres {server:.3f} CPU-ms, "
                    f"wall {wall:.3f} ms per request (median of {args.reps}; load {os.getloadavg()[0]:.1f})"
                )
    finally:
        engine.dispose()
        database.drop()


if __name__ == "__main__":
    main()
