"""batcher's Celery workers: ``celery -A workers worker`` (or ``batcher worker``) starts one."""

from workers.celery_app import app

__all__ = ["app"]
