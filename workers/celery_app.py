"""The workers' Celery app (``celery -A workers worker``, ``batcher worker``): the composition root of the
execution side. Built by ``batcher._celery.make_celery_app`` from the settings, plus what only a
worker needs: kombu's Redis transport kept up under a full Redis (``workers._broker``) and the
process-wide signal hooks of logging, metrics, liveness and the per-process context.
"""

from __future__ import annotations

from batcher import _logging, _metrics
from batcher._celery import make_celery_app
from batcher._config import get_settings
from workers import _context, _liveness
from workers._broker import TRANSPORT

app = make_celery_app(get_settings())
if str(app.conf.broker_url or "").startswith(("redis://", "rediss://")):
    app.conf.broker_transport = TRANSPORT

# Observability and liveness of worker processes (process-wide Celery signals, connected once).
_logging.install_celery_hooks()
_metrics.install_celery_hooks()
_liveness.install_celery_hooks()
_context.install_celery_hooks()

__all__ = ["app"]
