"""The Celery settings every delivery guarantee rests on, pinned: a change here is a change in behaviour."""

from __future__ import annotations

import pytest

from batcher._celery import make_celery_app
from batcher._config import Settings


def test_a_message_is_acknowledged_only_after_its_task_and_a_lost_worker_gives_it_back() -> None:
    conf = make_celery_app(Settings(redis_url="redis://127.0.0.1:1/0")).conf  # configuration only: never connects
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True
    assert conf.result_backend is None


def test_task_events_are_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # They cost the consumer thread ~20 % of a worker's throughput; Flower turns them on remotely.
    assert make_celery_app(Settings()).conf.worker_send_task_events is False
    monkeypatch.setenv("BATCHER_TASK_EVENTS", "1")
    assert make_celery_app(Settings()).conf.worker_send_task_events is True
