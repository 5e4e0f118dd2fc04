"""``python -m bench.counters``: a wave of completions stored at once, as at a W2 wave boundary (issue #16).

One job of ``--prompts`` requests, all claimed; then ``--threads`` threads (the connections two workers' pools
hold: 2 x (10 + 10)) store one answer each per request through ``JobStore.record_success``, all released
at once. Measured: the wave's wall time (release to last commit), and how many statements wait on a
lock (``pg_stat_activity``, ``wait_event_type = 'Lock'``, sampled every few ms). Run it against two
checkouts back to back (``PYTHONPATH=<checkout>``) to compare their store statements; nothing else of
batcher runs (no broker, no workers), so it isolates what the job's counters cost.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine, create_engine, make_url, text

from batcher._config import Settings
from batcher._db.contract import store_for
from batcher._db.rows import Answer, ClaimedRequest, NewJob, NewRequest
from batcher._migrate import upgrade

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SAMPLE_INTERVAL_S = 0.002
MESSAGES = [{"role": "user", "content": "x"}]


def _job(engine: Engine, n: int) -> list[ClaimedRequest]:
    store = store_for(engine)
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        store.insert_job(conn, NewJob(id=job_id, kind="batch", params={"params": {}}, queue="q"))
        total = store.copy_requests(
            conn, job_id, (NewRequest(idx=i, model="m", provider="openai", messages=MESSAGES) for i in range(n))
        )
        store.set_total(conn, job_id, total)
    claimed = []
    with engine.connect() as conn:
        for idx in range(n):
            with conn.begin():
                got = store.claim_request(conn, job_id, idx, timeout_s=600, margin_s=30, worker_id="bench")
            assert got is not None
            claimed.append(got)
    return claimed


def _wave(
    engine: Engine, claimed: list[ClaimedRequest], threads: int, admin: Engine, db: str
) -> tuple[float, int, int]:
    """(wall s, lock-waiter observations, samples) of storing every claimed request at once."""
    store = store_for(engine)
    parts = [claimed[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    stop = threading.Event()
    waits = samples = 0

    def sample() -> None:
        nonlocal waits, samples
        with admin.connect() as conn:
            while not stop.is_set():
                waits += conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'"),
                    {"db": db},
                ).scalar_one()
                samples += 1
                conn.commit()
                stop.wait(SAMPLE_INTERVAL_S)

    def store_part(part: list[ClaimedRequest]) -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.commit()
            barrier.wait()
            for c in part:
                with conn.begin():
                    store.record_success(conn, c, Answer({"id": c.idx}, "openai", "m", None, 1.0))

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(store_part, part) for part in parts]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    return wall, waits, samples


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.counters", description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=500)
    p.add_argument("--threads", type=int, default=40)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--pg-admin-url", default=os.environ.get("BATCHER_BENCH_PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL))
    args = p.parse_args()
    db = f"batcher_bench_counters_{uuid.uuid4().hex[:8]}"
    url = make_url(args.pg_admin_url).set(database=db).render_as_string(hide_password=False)
    admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
    upgrade(Settings(database_url=url))
    engine = create_engine(url, pool_size=args.threads + 2, max_overflow=0)
    try:
        walls, per_sample = [], []
        for rep in range(args.reps):
            claimed = _job(engine, args.prompts)
            random.Random(rep).shuffle(claimed)  # answers of a wave come back in no particular order
            wall, waits, samples = _wave(engine, claimed, args.threads, admin, db)
            walls.append(wall)
            per_sample.append(waits / max(1, samples))
            print(
                f"rep {rep + 1}: {args.prompts} stores by {args.threads} threads in {wall * 1000:.0f} ms "
                f"({args.prompts / wall:.0f}/s); statements waiting on a lock: {waits / max(1, samples):.1f} "
                f"on average ({samples} samples); load {os.getloadavg()[0]:.1f}"
            )
        print(
            f"median: {statistics.median(walls) * 1000:.0f} ms per wave of {args.prompts} "
            f"({min(walls) * 1000:.0f}-{max(walls) * 1000:.0f}), {statistics.median(per_sample):.1f} waiting on a lock"
        )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
