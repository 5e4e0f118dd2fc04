"""Postgres holds the backlog, the broker a bounded window (issue #15), with real worker processes.

Each test runs a cluster of its own (own database, own queues; the Redis fault test its own Redis), so its
workers elect their own leader, whose dispatcher releases the window; the fake provider is the only
stand-in. Observations are of the broker itself (``LLEN`` of the cluster's queue) and of Postgres.
"""

from __future__ import annotations

from pathlib import Path

import redis

from batcher import Client, JobState
from batcher.testing import FakeProvider, ModelBehaviour
from batcher.testing.servers import RedisServer
from tests.integration.helpers import exactly_one_response_each, rows, sends_per_prompt, until
from tests.integration.test_liveness import FAST
from tests.support.workers import IsolatedCluster

CONCURRENCY = 10
WINDOW = {"BATCHER_WINDOW_MIN": "4", "BATCHER_WINDOW_PER_SLOT": "2"}
"""Two messages per worker slot: 20 requests released at once per worker of ``CONCURRENCY`` threads."""


def _prompts(tag: str, n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]


def _released_not_final(client: Client, job_id: object) -> int:
    return int(
        rows(
            client,
            "SELECT count(*) AS n FROM requests WHERE job_id = :id AND dispatched_at IS NOT NULL "
            "AND state IN ('queued', 'running', 'retrying')",
            id=job_id,
        )[0]["n"]
    )


def test_a_large_job_keeps_the_broker_queue_within_the_window(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = "gpt-window"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=20))
    n, window = 1_500, CONCURRENCY * 2
    with (
        IsolatedCluster(cluster_env, tmp_path, {**FAST, **WINDOW}, own_database=True, concurrency=CONCURRENCY) as c,
        c.client() as client,
    ):
        broker = redis.Redis.from_url(c.settings.redis_url)
        queue = c.settings.queue
        job = client.submit(model=model, messages=_prompts("w", n))
        lengths: list[int] = []
        in_window: list[int] = []

        def sample() -> bool:
            lengths.append(int(broker.llen(queue)))
            in_window.append(_released_not_final(client, job.id))
            return job.status().is_final

        until(sample, 180, "the job is final")
        broker.close()
        status = job.wait(timeout=10)
        assert (status.state, status.succeeded) == (JobState.COMPLETED, n)
        exactly_one_response_each(client, job.id, n)
        assert max(lengths) <= window, max(lengths)  # never the job: at most the window
        assert max(in_window) <= window, max(in_window)
        assert max(lengths) > 0  # the window was really used (the test can fail)
        assert len(lengths) > 10


def test_a_small_job_submitted_behind_a_large_one_finishes_while_the_large_one_runs(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    big_model, small_model = "gpt-backfill", "gpt-nightly"
    fake_provider.set_behaviour(big_model, ModelBehaviour(latency_ms=50))
    fake_provider.set_behaviour(small_model, ModelBehaviour(latency_ms=50))
    with (
        IsolatedCluster(cluster_env, tmp_path, {**FAST, **WINDOW}, own_database=True, concurrency=CONCURRENCY) as c,
        c.client() as client,
    ):
        big = client.submit(model=big_model, messages=_prompts("big", 3_000))
        until(lambda: big.status().succeeded >= 50, 60, "the large job runs")
        small = client.submit(model=small_model, messages=_prompts("small", 10))
        status = small.wait(timeout=60)
        assert (status.state, status.succeeded) == (JobState.COMPLETED, 10)
        assert not big.status().is_final  # the small job did not wait for the large one
        big.cancel()


def test_a_cancel_removes_the_jobs_waiting_messages_at_once_and_nothing_more_is_claimed(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = "gpt-cancel-window"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=200))
    with (
        IsolatedCluster(cluster_env, tmp_path, {**FAST, **WINDOW}, own_database=True, concurrency=CONCURRENCY) as c,
        c.client() as client,
    ):
        broker = redis.Redis.from_url(c.settings.redis_url)
        queue = c.settings.queue
        job = client.submit(model=model, messages=_prompts("c", 5_000))
        until(lambda: job.status().succeeded >= 20 and broker.llen(queue) > 0, 60, "running, messages waiting")
        job.cancel()
        assert broker.llen(queue) == 0  # withdrawn by the cancel itself, not drained by the workers
        cancelled_at = rows(client, "SELECT now() AS t")[0]["t"]
        status = job.wait(timeout=60)
        assert status.state == JobState.CANCELLED
        started_after = rows(
            client,
            "SELECT count(*) AS n FROM requests WHERE job_id = :id AND started_at > :t",
            id=job.id,
            t=cancelled_at,
        )[0]["n"]
        assert started_after == 0
        released = rows(
            client, "SELECT count(*) AS n FROM requests WHERE job_id = :id AND dispatched_at IS NOT NULL", id=job.id
        )
        assert released[0]["n"] < 500  # the backlog stayed in Postgres: never released, never claimed
        assert broker.llen(queue) == 0
        broker.close()


def _leader(cluster: IsolatedCluster) -> int:
    leaders = [i for i, w in enumerate(cluster.workers) if b"leads the cluster" in w.log_path.read_bytes()]
    return leaders[0] if len(leaders) == 1 else -1


def test_killing_the_leader_mid_job_hands_the_dispatcher_over_and_every_request_runs_once(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = "gpt-kill-dispatcher"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=100))
    n = 1_000
    with (
        IsolatedCluster(
            cluster_env, tmp_path, {**FAST, **WINDOW}, n_workers=2, own_database=True, concurrency=CONCURRENCY
        ) as c,
        c.client() as client,
    ):
        job = client.submit(model=model, messages=_prompts("k", n))
        until(lambda: job.status().succeeded >= 0.2 * n, 60, "20 % done")
        leader = until(lambda: _leader(c) + 1, 10, "one leader") - 1
        c.workers[leader].kill()  # the process running the dispatcher
        survivor = c.workers[1 - leader]
        status = job.wait(timeout=120)
        assert (status.state, status.succeeded) == (JobState.COMPLETED, n)
        assert b"leads the cluster" in survivor.log_path.read_bytes()  # it took the dispatcher over
        exactly_one_response_each(client, job.id, n)
        sent = sends_per_prompt(fake_provider, model)
        # Every prompt was sent; only what the dead worker had in flight may have been sent twice.
        assert len(sent) == n and sum(count - 1 for count in sent.values()) <= CONCURRENCY


def test_flushall_mid_job_loses_nothing_and_doubles_nothing(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """FLUSHALL of a Redis of the test's own: the window's messages and the dispatch epoch are gone; the
    dispatcher takes every queued released request back and releases it again."""
    model = "gpt-flush-window"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=50))
    n = 1_000
    with RedisServer(tmp_path) as server:
        overrides = {**FAST, **WINDOW, "BATCHER_REDIS_URL": server.url}
        with (
            IsolatedCluster(cluster_env, tmp_path, overrides, own_database=True, concurrency=CONCURRENCY) as c,
            c.client() as client,
        ):
            job = client.submit(model=model, messages=_prompts("f", n))
            until(lambda: job.status().succeeded >= 200, 60, "200 done")
            flusher = server.client()
            flusher.flushall()
            status = job.wait(timeout=120)
            assert (status.state, status.succeeded) == (JobState.COMPLETED, n)
            exactly_one_response_each(client, job.id, n)
            sent = sends_per_prompt(fake_provider, model)
            assert len(sent) == n and set(sent.values()) == {1}  # nothing lost, nothing sent twice
            assert flusher.exists("batcher:dispatch:epoch")  # the dispatcher reconciled and marked it
            assert "taken back into the backlog" in c.logs()
            flusher.close()
