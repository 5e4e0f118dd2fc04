"""batcher's side of each workload, run as a child process (see ``bench._protocol``).

``python -m bench._batcher_child <workload> '<json params>'``; the environment carries the
``BATCHER_*`` settings of the run (database, Redis, queues) and the fake provider's base URL.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._protocol import serve


def _client() -> Any:
    from batcher import Client
    from batcher._config import Settings

    client = Client(Settings())
    # Warm every connection the workload will use, so the measurement does not pay for them.
    with client.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    client.redis.ping()
    with client.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
    return client


TIMELINE_SQL = """
SELECT
  extract(epoch FROM min(r.started_at) - j.created_at),
  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.started_at - j.created_at)),
  extract(epoch FROM max(r.started_at) - j.created_at),
  extract(epoch FROM max(r.finished_at) - j.created_at),
  extract(epoch FROM j.finished_at - j.created_at),
  avg(extract(epoch FROM r.finished_at - r.started_at) * 1000 - r.latency_ms),
  avg(r.latency_ms)
FROM requests r JOIN jobs j ON j.id = r.job_id
WHERE r.job_id = :job
GROUP BY j.created_at, j.finished_at
"""
"""Where a batch's wall time went, from the timestamps batcher keeps (seconds from the job's creation)."""


def _timeline(client: Any, job_id: str) -> dict[str, float]:
    from sqlalchemy import text

    names = ("first_start_s", "median_start_s", "last_start_s", "last_finish_s", "job_finished_s")
    with client.engine.connect() as conn:
        row = conn.execute(text(TIMELINE_SQL), {"job": job_id}).one()
    timeline = {name: float(value or 0.0) for name, value in zip(names, row[:5], strict=True)}
    timeline["worker_overhead_ms"] = float(row[5] or 0.0)
    timeline["provider_latency_ms"] = float(row[6] or 0.0)
    return timeline


def batch(params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """``batch_completion``'s path: submit N prompts, wait for the job, read every result back."""
    client = _client()
    n, model = int(params["prompts"]), str(params["model"])
    conversations = [[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}] for i in range(n)]

    def body() -> dict[str, Any]:
        started = time.perf_counter()
        job = client.submit(model=model, messages=conversations)
        submitted = time.perf_counter()
        status = job.wait(timeout=float(params.get("timeout_s", 3_600)))
        done = time.perf_counter()
        ok = sum(1 for result in job.results() if result.ok)
        read = time.perf_counter()
        return {
            "job_id": str(job.id),
            "prompts": n,
            "ok": ok,
            "state": status.state.value,
            "succeeded": status.succeeded,
            "failed": status.failed,
            "submit_s": submitted - started,
            "done_s": done - started,
            "read_s": read - done,
            "wall_s": read - started,
            "timeline": _timeline(client, str(job.id)),
        }

    return body


def _racer(client: Any, models: list[str], label: str) -> Callable[[int], tuple[float, str, str]]:
    """One fastest-of-``models`` race: its time to the first answer, the winning model and the job's id."""

    def one(i: int) -> tuple[float, str, str]:
        started = time.perf_counter()
        job = client.submit_fastest(models=models, messages=[{"role": "user", "content": f"{label} {i}: hi"}])
        response = job.first_response(timeout=30)
        return time.perf_counter() - started, str(response.model), str(job.id)

    return one


def _races(one: Callable[[int], tuple[float, str, str]], calls: int) -> dict[str, Any]:
    """``calls`` races one after another, and what the report reads of them."""
    times, winners, job_ids = [], [], []
    for i in range(calls):
        elapsed, winner, job_id = one(i)
        times.append(elapsed)
        winners.append(winner)
        job_ids.append(job_id)
    return {
        "calls": calls,
        "times_s": times,
        "median_s": statistics.median(times),
        "winners": sorted(set(winners)),
        "all_winners": winners,
        "job_ids": job_ids,
    }


def race(params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """``batch_completion_models``: fastest of several models, ``calls`` times one after another."""
    client = _client()
    models = list(params["models"])
    calls = int(params["calls"])

    one = _racer(client, models, "Race")
    one(-1)  # warm-up: first use of the race queue and the wake-up keys

    def body() -> dict[str, Any]:
        return _races(one, calls)

    return body


def submit_file(params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """``batcher submit prompts.jsonl``: validate, COPY into Postgres and publish every request.

    The COPY (with validation, streamed from the file) and the publishing are timed apart by
    wrapping the two functions ``batcher._submit.submit`` calls, without changing them.
    """
    import batcher._submit as submit_module
    from batcher._db.postgres import PostgresStore
    from batcher._files import read_jsonl

    client = _client()
    phases: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - started

        return wrapper

    PostgresStore.copy_requests = timed("copy_s", PostgresStore.copy_requests)  # type: ignore[method-assign]
    submit_module._Validator.check = timed("validate_s", submit_module._Validator.check)  # type: ignore[method-assign]
    submit_module.enqueue = timed("publish_s", submit_module.enqueue)  # type: ignore[assignment]

    def body() -> dict[str, Any]:
        started = time.perf_counter()
        with open(params["path"], encoding="utf-8") as lines:
            job = client.submit_requests(read_jsonl(lines, default_model=params["model"]))
        wall = time.perf_counter() - started
        return {"job_id": str(job.id), "wall_s": wall, **phases}

    return body


def read_results(params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """``batcher results JOB -o out.jsonl``: the CLI command itself, in this process."""
    from batcher.cli import main

    _client()

    def body() -> dict[str, Any]:
        started = time.perf_counter()
        main(["results", params["job_id"], "-o", params["path"]], standalone_mode=False)
        return {"wall_s": time.perf_counter() - started}

    return body


_EXPORT_SQL = """
COPY (
    SELECT json_build_object(
        'index', r.idx, 'custom_id', r.custom_id, 'model', r.model, 'state', r.state, 'attempts', r.attempts,
        'response', resp.body,
        'error', CASE WHEN resp.body IS NULL
                      THEN json_build_object('type', r.error_type, 'message', r.error, 'status_code', r.status_code)
                 END)
      FROM requests AS r LEFT JOIN responses AS resp ON resp.request_id = r.id
     WHERE r.job_id = %s
     ORDER BY r.idx
) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')
"""
# CSV with a quote and delimiter that JSON never contains: each line is the JSON text, unescaped.


def read_results_copy(params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """What-if for W5: Postgres writes the JSONL lines itself (``COPY (SELECT json_build_object ...)``).

    Not batcher's code: a measured proposal for ``batcher results``, which today builds a
    ``ModelResponse`` per row and dumps it again.
    """
    client = _client()

    def body() -> dict[str, Any]:
        started = time.perf_counter()
        raw = client.engine.raw_connection()
        try:
            cursor = raw.cursor()
            with open(params["path"], "wb") as out, cursor.copy(_EXPORT_SQL, (params["job_id"],)) as copy:  # type: ignore[attr-defined]
                for chunk in copy:
                    out.write(chunk)
        finally:
            raw.close()
        return {"wall_s": time.perf_counter() - started}

    return body


CEILING_POLL_S = 0.02
"""How often the ceiling's child reads the job counter (one indexed read: ~50 a second cost nothing)."""


def ceiling(params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """The bare-Celery ceiling (``bench/_ceiling.py``): a job row, its N messages published by batcher's own
    ``Publisher`` (as the dispatcher publishes), and the time until the workers bumped its counter N times."""
    import uuid

    from sqlalchemy import text

    from batcher._publish import Publisher

    client = _client()
    n, queue = int(params["prompts"]), str(params["queue"])
    job = str(uuid.uuid4())
    with client.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, kind, state, total, succeeded, failed, cancelled, expired, params, created_at) "
                "VALUES (:job, 'batch', 'running', :n, 0, 0, 0, 0, '{\"params\": {}}', now())"
            ),
            {"job": job, "n": n},
        )
    publisher = Publisher(client.celery)
    read = text("SELECT succeeded FROM jobs WHERE id = :job")

    def body() -> dict[str, Any]:
        started = time.perf_counter()
        publisher.publish_requests(job, range(n), queue)
        published = time.perf_counter()
        done = 0
        deadline = started + float(params.get("timeout_s", 600))
        while time.perf_counter() < deadline:
            with client.engine.connect() as conn:
                done = int(conn.execute(read, {"job": job}).scalar_one())
            if done >= n:
                break
            time.sleep(CEILING_POLL_S)
        return {
            "job_id": job,
            "prompts": n,
            "ok": done,
            "state": "completed" if done == n else "running",
            "publish_s": published - started,
            "wall_s": time.perf_counter() - started,
        }

    return body


def race_during_batch(params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """W3 while a big batch runs: submit ``prompts`` to ``model``, wait until its requests are running, race
    ``calls`` times one after another, note how far the batch got, then wait for the batch to finish."""
    client = _client()
    models = list(params["models"])
    calls = int(params["calls"])
    n, model = int(params["prompts"]), str(params["model"])
    conversations = [[{"role": "user", "content": f"Busy {i}: what is {i} + {i}?"}] for i in range(n)]

    one = _racer(client, models, "Busy race")
    one(-1)  # warm-up, as in ``race``

    def body() -> dict[str, Any]:
        started = time.perf_counter()
        batch = client.submit(model=model, messages=conversations)
        while batch.status().succeeded == 0:  # every batch thread busy from here on
            time.sleep(0.05)
        before = batch.status().succeeded
        races = _races(one, calls)
        after = batch.status().succeeded
        status = batch.wait(timeout=float(params.get("timeout_s", 3_600)))
        ok = sum(1 for result in batch.results() if result.ok)
        return {
            **races,
            "job_id": str(batch.id),
            "prompts": n,
            "ok": ok,
            "state": status.state.value,
            "batch_done_before": before,
            "batch_done_after": after,
            "wall_s": time.perf_counter() - started,
        }

    return body


WORKLOADS: dict[str, Callable[[dict[str, Any]], Callable[[], dict[str, Any]]]] = {
    "ceiling": ceiling,
    "race_during_batch": race_during_batch,
    "batch": batch,
    "race": race,
    "submit_file": submit_file,
    "read_results": read_results,
    "read_results_copy": read_results_copy,
}

if __name__ == "__main__":
    serve(WORKLOADS[sys.argv[1]])
