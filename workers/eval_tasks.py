"""Celery tasks of evaluation runs: the beat-driven tick (see ``batcher.evals.schedules``)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from celery import Celery, Task, shared_task

from batcher.evals.settings import EVAL_TICK_TASK

if TYPE_CHECKING:
    from batcher.evals.runner import EvalRunner

_lock = threading.Lock()
_runner: EvalRunner | None = None


def _get_runner(celery: Celery) -> EvalRunner:
    """One runner (and so one client and engine) per worker process, built on first use."""
    global _runner
    with _lock:
        if _runner is None:
            from batcher._client import Client
            from batcher.evals.runner import EvalRunner

            _runner = EvalRunner(Client(celery.conf.batcher_settings))
        return _runner


@shared_task(name=EVAL_TICK_TASK, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
def eval_tick(self: Task) -> dict[str, int]:
    """Fire due schedules (once per tick, however many beats send this) and move active runs on."""
    from batcher.evals.schedules import tick

    return tick(_get_runner(self.app)).as_dict()
