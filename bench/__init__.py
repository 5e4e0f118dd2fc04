"""The benchmark suite: batcher side by side with LiteLLM, on this machine (``python -m bench``).

Everything runs for real on loopback: the fake provider (``batcher fake-provider``, its own
process so its CPU is counted apart), Celery worker processes, this machine's Postgres (a
dedicated database, created, migrated and dropped) and Redis (queue names of the run's own).
The batcher and LiteLLM clients run in child processes of their own, so each one's CPU and
peak memory are measured alone. See ``docs/benchmarks.md`` for the latest table.
"""
