"""batcher's Celery workers: ``celery -A workers worker`` (or ``batcher worker``) starts one.

The execution side: tasks, one attempt of a request, recovery, liveness. ``app`` is built on first
access (``workers.celery_app``, the composition root), so importing a module of this package
builds no app and connects no signal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":  # ``celery -A workers`` looks for ``workers.app``
        from workers.celery_app import app

        return app
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
