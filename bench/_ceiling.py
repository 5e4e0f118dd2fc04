"""The bare-Celery ceiling of one task per prompt (issue #16): ``celery -A bench._ceiling worker``.

The same app settings as batcher's workers (``make_celery_app``: acks late, prefetch 1, no results, JSON,
the same broker and visibility timeout), kombu's stock Redis transport, and one task under the name of
batcher's request task, so batcher's own ``Publisher`` publishes its messages exactly as the dispatcher
does. The task does only what every completion must: the job-counter statement, one autocommit
``UPDATE jobs SET succeeded = succeeded + 1``. No claim, no provider call, no store, no hooks (heartbeats,
logging context, metrics): what is left is Celery's own cost per message plus one statement.

``BATCHER_BENCH_CEILING_SLEEP_MS`` (W2's ceiling): the task first sleeps that long, as a provider call of
that latency would hold its thread, with no CPU spent on it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import create_engine, text

from batcher._celery import make_celery_app
from batcher._config import get_settings
from batcher._publish import RUN_REQUEST_TASK

_settings = get_settings()
app = make_celery_app(_settings)
app.conf.update(include=[])  # not batcher's task modules: this module's one task
_engine = create_engine(
    _settings.database_url,
    isolation_level="AUTOCOMMIT",
    pool_size=_settings.db_pool_size,
    max_overflow=_settings.db_max_overflow,
)
_SLEEP_S = float(os.environ.get("BATCHER_BENCH_CEILING_SLEEP_MS", "0")) / 1000
_BUMP = text("UPDATE jobs SET succeeded = succeeded + 1 WHERE id = :job")


@app.task(name=RUN_REQUEST_TASK, ignore_result=True)
def run_request(job_id: str, index: int, *_: Any, **__: Any) -> None:
    if _SLEEP_S:
        time.sleep(_SLEEP_S)
    with _engine.connect() as conn:
        conn.execute(_BUMP, {"job": job_id})
