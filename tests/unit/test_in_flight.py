"""A worker runs one attempt of a request at a time; the next attempt is not mistaken for a duplicate."""

from __future__ import annotations

import uuid
from typing import Any

from batcher._config import Settings
from batcher._db.rows import ClaimedRequest
from workers._context import WorkerContext
from workers._execute import _requeue


class _App:
    """Celery's ``send_task``, recording whether the request was still marked in flight at send time."""

    def __init__(self, ctx: WorkerContext, key: str) -> None:
        self.ctx, self.key, self.free_at_send = ctx, key, None

    def send_task(self, *args: Any, **kwargs: Any) -> None:
        self.free_at_send = self.ctx.started(self.key)  # what the next attempt's thread would see


def test_a_retry_is_sent_only_after_its_attempt_left_the_in_flight_set() -> None:
    job = uuid.uuid4()
    ctx = WorkerContext(settings=Settings(), app=None)  # type: ignore[arg-type]
    key = f"{job}:3"
    assert ctx.started(key)
    assert not ctx.started(key)  # a duplicate message while the attempt runs: not run twice
    app = _App(ctx, key)
    ctx.app = app  # type: ignore[assignment]
    claimed = ClaimedRequest(
        request_id=1,
        job_id=job,
        idx=3,
        kind="batch",
        model="m",
        provider="openai",
        messages=[],
        job_params={},
        request_params=None,
        attempts=1,
        deadline_at=None,
        credentials=None,
    )
    _requeue(ctx, claimed, 0.01)
    assert app.free_at_send  # a next attempt starting at once on this worker runs
