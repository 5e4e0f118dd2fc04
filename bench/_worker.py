"""A Celery worker started exactly as ``python -m celery -A workers worker ...``, with one difference:
its Postgres pool is capped.

batcher sizes a worker's pool to its threads (``Settings.db_pool_size`` = threads + 4, plus 10
overflow) and has no setting to change that. At 2 x 250 threads (W2) that asks for ~500
connections, and even 2 x 50 threads (W1) can open ~110 at the start of a batch, over the
``max_connections = 100`` of this machine's Postgres, which other test runs share. A thread
holds a connection only for the claim and the store (milliseconds), so a pool of
``BATCHER_BENCH_DB_POOL_MAX`` connections serves hundreds of threads; see docs/benchmarks.md.
"""

from __future__ import annotations

import os
import sys

from batcher._config import Settings

_cap = int(os.environ.get("BATCHER_BENCH_DB_POOL_MAX", "0"))
if _cap > 0:

    def _capped(self: Settings) -> int:
        return min(self.worker_concurrency + 4, _cap)

    Settings.db_pool_size = property(_capped)  # type: ignore[method-assign,assignment]

# Measured what-ifs for proposed changes to files the benchmark does not own (``--experiments``).
EXPERIMENTS = {
    "no-task-events": "worker_send_task_events=False: no task-received/started/succeeded events published to Redis",
}
_chosen = {e for e in os.environ.get("BATCHER_BENCH_EXPERIMENTS", "").split(",") if e}
if "no-task-events" in _chosen:
    from workers.celery_app import app

    app.conf.worker_send_task_events = False

if __name__ == "__main__":
    from celery.__main__ import main

    sys.argv = ["celery", *sys.argv[1:]]
    sys.exit(main())
