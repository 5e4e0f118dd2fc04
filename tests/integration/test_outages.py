"""Losing and regaining Redis or Postgres mid-batch (issue #11), on private servers of the test's own.

Each test runs its own ``redis-server`` or PostgreSQL cluster on a free port, so it can restart,
stop or starve it without touching the machine's shared services, and stops it by its own PID.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import redis
from sqlalchemy import text

from batcher import EnqueueError, JobState, WaitTimeoutError
from batcher.evals.schedules import add_schedule
from batcher.testing import FakeProvider, ModelBehaviour
from batcher.testing.servers import PostgresServer, RedisServer
from tests.integration.helpers import exactly_one_response_each, rows, sends_per_prompt, until
from tests.integration.test_liveness import FAST
from tests.support.workers import IsolatedCluster


def test_redis_restarted_empty_mid_batch_the_job_completes(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = "gpt-out-redis-restart"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=100))
    n = 1_000
    with RedisServer(tmp_path) as server:
        overrides = {**FAST, "BATCHER_REDIS_URL": server.url}
        with (
            IsolatedCluster(cluster_env, tmp_path, overrides, n_workers=2, own_database=True) as cluster,
            cluster.client() as client,
        ):
            job = client.submit(model=model, messages=[[{"role": "user", "content": f"rr{i}"}] for i in range(n)])
            until(lambda: job.status().succeeded >= 0.3 * n, 60, "30 % done")
            server.restart()  # no persistence: every queued message and key is gone
            try:
                status = job.wait(timeout=120)
            except WaitTimeoutError:
                stuck = rows(
                    client,
                    "SELECT idx, state, attempts, dispatched_at, next_attempt_at, worker_id, lease_until "
                    "FROM requests WHERE job_id = :id AND state IN ('queued', 'running', 'retrying')",
                    id=job.id,
                )
                raise AssertionError(f"not final: {stuck}\n{cluster.logs()[-6000:]}") from None
            assert (status.state, status.succeeded) == (JobState.COMPLETED, n), status
            exactly_one_response_each(client, job.id, n)
            assert all(w.alive() for w in cluster.workers)


def test_redis_at_its_memory_limit_during_a_large_submission(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """A full Redis does not refuse a submission (nothing is published at submission: the job goes to the
    backlog in Postgres); the dispatcher's releases are refused and roll back, so nothing is marked released
    without a message; the workers stay up; the job completes once Redis has room; and no request ever has
    two live messages. A race, released by its submitter, gets a clear error naming its stored job."""
    model = "gpt-out-oom"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=0))
    n = 10_000
    with RedisServer(tmp_path, maxmemory="4mb") as server:
        overrides = {**FAST, "BATCHER_REDIS_URL": server.url}
        with (
            IsolatedCluster(cluster_env, tmp_path, overrides, n_workers=2, own_database=True) as cluster,
            cluster.client() as client,
        ):
            filler = server.client()
            until(lambda: _fill(filler), 60, "Redis is full")
            watcher = LiveMessages(server, [cluster.env["BATCHER_QUEUE"]])
            watcher.start()
            try:
                job = client.submit(model=model, messages=[[{"role": "user", "content": f"m{i}"}] for i in range(n)])
                # Redis' used memory moves with its connections' buffers: a race sent the moment a client
                # disconnected may find room. Refill and send another until one is refused (each accepted
                # one must complete like any race).
                accepted: list[str] = []
                refused: EnqueueError | None = None
                for _ in range(20):
                    until(lambda: _fill(filler), 60, "Redis is full")
                    try:
                        race = client.submit_fastest(
                            ["gpt-4o-mini", "claude-3-5-haiku"], [{"role": "user", "content": "hi"}], mock_response="x"
                        )
                    except EnqueueError as exc:
                        refused = exc
                        break
                    accepted.append(race.id)
                assert refused is not None, "no race was refused by the full Redis"
                message = str(refused)
                assert refused.job_id in message and "broker refused" in message
                until(lambda: "dispatcher tick failed" in cluster.logs(), 60, "a release refused by the full Redis")
                released = rows(
                    client,
                    "SELECT count(*) AS n FROM requests WHERE job_id = :id AND dispatched_at IS NOT NULL",
                    id=job.id,
                )
                assert released[0]["n"] == 0  # refused publishes rolled their releases back
                filler.delete(*filler.scan_iter(match="filler:*"))  # room again
                status = job.wait(timeout=240)
                race_status = client.job(refused.job_id).wait(timeout=60)  # stored, and released later
                others = [client.job(race_id).wait(timeout=60).state for race_id in accepted]
            finally:
                watcher.stop()
                filler.close()
            assert (status.state, status.succeeded) == (JobState.COMPLETED, n), status
            assert race_status.state == JobState.COMPLETED
            assert all(state == JobState.COMPLETED for state in others), others
            exactly_one_response_each(client, job.id, n)
            assert all(w.alive() for w in cluster.workers), cluster.logs()[-3000:]
            assert "Unrecoverable error" not in cluster.logs()
            assert watcher.samples > 0 and watcher.worst == 1, watcher.worst


def _fill(client: redis.Redis[bytes]) -> bool:
    """More filler keys, large then tiny; True once Redis refuses even a tiny one (at its memory limit:
    a large value alone is refused while its own query buffer holds it, with room left below the limit)."""
    for size in (100_000, 10_000, 1_000, 100):
        try:
            client.set(f"filler:{time.monotonic_ns()}", b"x" * size)
            return False
        except redis.exceptions.OutOfMemoryError:
            continue
    return True


class LiveMessages(threading.Thread):
    """Samples the broker while a test runs: the most live messages (queued + unacknowledged) any
    one request had at once."""

    def __init__(self, server: RedisServer, queues: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = server.client()
        self.queues = queues
        self.worst = 0
        self.samples = 0
        self._stop_event = threading.Event()

    # One read-only script: the queues and the unacknowledged set as of one instant (a message moving
    # from one to the other between two separate reads would be counted twice).
    # Each worker has its own unacknowledged set (``unacked:<worker id>``): their names are read first.
    SNAPSHOT = """
    local out = {}
    local lists = tonumber(ARGV[1])
    for i = 1, #KEYS do
        if i <= lists then out[i] = redis.call('LRANGE', KEYS[i], 0, -1) else out[i] = redis.call('HVALS', KEYS[i]) end
    end
    return out
    """

    def run(self) -> None:
        snapshot = self.client.register_script(self.SNAPSHOT)
        while not self._stop_event.wait(0.2):
            try:
                held = list(self.client.scan_iter(match="unacked*", _type="hash"))
                replies = snapshot(keys=[*self.queues, *held], args=[len(self.queues)])
            except redis.RedisError:
                continue
            counts: Counter[str] = Counter()
            for messages in replies[: len(self.queues)]:
                for raw in messages:
                    counts[json.loads(raw)["headers"]["id"]] += 1
            for values in replies[len(self.queues) :]:
                for raw in values:
                    counts[json.loads(raw)[0]["headers"]["id"]] += 1
            self.samples += 1
            if counts:
                self.worst = max(self.worst, max(counts.values()))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)
        self.client.close()


def test_postgres_restarted_then_down_for_60_s_mid_batch_loses_no_paid_answer(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """A restart, then a 60 s outage, mid-batch: workers and the leader reconnect by themselves, every
    answer already paid for is stored once (no prompt is sent twice), and schedules fire again."""
    model = "gpt-out-pg"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=300))
    n = 1_500
    pg = PostgresServer()
    with pg.running():
        overrides = {**FAST, "BATCHER_DATABASE_URL": pg.url(), "BATCHER_EVAL_TICK_INTERVAL_S": "0.5"}
        with (
            IsolatedCluster(cluster_env, tmp_path, overrides, n_workers=2, concurrency=10) as cluster,
            cluster.client() as client,
        ):
            job = client.submit(model=model, messages=[[{"role": "user", "content": f"pg{i}"}] for i in range(n)])
            until(lambda: job.status().succeeded >= 0.2 * n, 120, "20 % done")
            pg.restart()
            until(lambda: _succeeded(client, job.id) >= 0.4 * n, 120, "40 % done after the restart")
            pg.stop()
            time.sleep(60)  # the outage itself: a duration to live through, not an event to wait for
            pg.start()
            status = job.wait(timeout=180)
            assert (status.state, status.succeeded) == (JobState.COMPLETED, n), status
            exactly_one_response_each(client, job.id, n)
            sent = sends_per_prompt(fake_provider, model)
            assert len(sent) == n and set(sent.values()) == {1}, Counter(sent.values())

            # The leader ticks again: a schedule due now fires (once).
            (tmp_path / "data.jsonl").write_text(json.dumps({"id": "a", "prompt": "say a", "expected": "a"}) + "\n")
            suite = tmp_path / "after-outage.yaml"
            suite.write_text(
                f"name: after-outage\ndataset: data.jsonl\nmodels: [{model}]\nscorers: [{{type: contains}}]\n"
            )
            schedule = add_schedule(client.engine, suite, cron="0 0 * * *", timezone="UTC")
            with client.engine.begin() as conn:
                conn.execute(
                    text("UPDATE eval_schedules SET active_since = now() - interval '2 days' WHERE id = :id"),
                    {"id": schedule["id"]},
                )
            until(
                lambda: rows(client, "SELECT id FROM eval_runs WHERE schedule_id = :id", id=schedule["id"]),
                60,
                "the schedule fired after the outage",
            )
            assert all(w.alive() for w in cluster.workers)


def _succeeded(client: object, job_id: object) -> int:
    """The job's progress, or -1 while the database is away."""
    try:
        return int(client.job(str(job_id)).status().succeeded)  # type: ignore[attr-defined]
    except Exception:
        return -1
