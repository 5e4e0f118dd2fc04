"""Nothing waits for a dead process (issue #11): heartbeats, leadership, hand-back and poison requests.

Every test runs real worker processes on a cluster of its own (own database, own queues), so its
workers elect their own leader with the test's timings. Processes are killed with ``kill -9`` or
stopped with SIGTERM by their own PID; the fake provider is the only stand-in.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from batcher import JobState, RequestState, WorkerLostError
from batcher.evals.schedules import add_schedule
from batcher.testing import FakeProvider, ModelBehaviour
from tests.integration.helpers import exactly_one_response_each, rows, sends_per_prompt, until
from tests.support.workers import IsolatedCluster
from workers._broker import BrokerMessages, HeldMessage

FAST = {
    "BATCHER_HEARTBEAT_INTERVAL_S": "0.5",
    "BATCHER_WORKER_LAPSE_S": "3",
    "BATCHER_RECOVERY_INTERVAL_S": "0.5",
    "BATCHER_STRANDED_MESSAGE_S": "3",
}
"""Liveness timings scaled down (the defaults are 5 s, 20 s, 5 s, 30 s), so a test takes seconds."""


def test_kill_9_of_one_of_two_workers_at_30_percent_completes_within_60_s_without_beat(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """Defaults as deployed (600 s timeout, 20 s lapse, 5 s sweep), no `batcher beat`: the survivor's
    leader takes the dead worker's requests back, not the 630 s lease."""
    model = "gpt-live-kill9"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=200))
    n = 1_000
    overrides = {"BATCHER_REQUEST_TIMEOUT_S": "600", "BATCHER_LEASE_MARGIN_S": "30"}
    with (
        IsolatedCluster(cluster_env, tmp_path, overrides, n_workers=2, own_database=True) as cluster,
        cluster.client() as client,
    ):
        job = client.submit(model=model, messages=[[{"role": "user", "content": f"k{i}"}] for i in range(n)])
        until(lambda: job.status().succeeded >= 0.3 * n, 60, "30 % done")
        victim = cluster.workers[0]
        held = rows(client, "SELECT count(*) AS n FROM requests WHERE job_id = :id AND state = 'running'", id=job.id)
        victim.kill()
        killed_at = time.monotonic()
        status = job.wait(timeout=60)  # the bound, counted from the kill
        took = time.monotonic() - killed_at
        assert (status.state, status.succeeded) == (JobState.COMPLETED, n), status
        exactly_one_response_each(client, job.id, n)
        lost = rows(client, "SELECT count(*) AS n FROM requests WHERE job_id = :id AND lost > 0", id=job.id)[0]["n"]
        assert lost > 0  # the dead worker really held requests, and they were taken back
        assert held[0]["n"] > 0
        # At-least-once: only what was in flight at the kill may have been sent twice.
        sent = sends_per_prompt(fake_provider, model)
        assert len(sent) == n and sum(c - 1 for c in sent.values()) <= cluster.concurrency
        print(f"completed {took:.1f} s after the kill")


def test_deliveries_recorded_in_front_of_brpops_are_taken_back_from_a_worker_killed_9(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """A worker's delivery records ride in front of its next BRPOP (``workers/_broker.py``): they reach its
    own unacknowledged set all the same, so a worker killed -9 while holding messages has every one of
    them found, taken back and answered once by the next leader."""
    model = "gpt-live-held-kill9"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=120_000))  # held until the kill
    n = 6
    with (
        IsolatedCluster(cluster_env, tmp_path, FAST, n_workers=1, own_database=True, concurrency=n) as cluster,
        cluster.client() as client,
    ):
        broker = BrokerMessages(redis.Redis.from_url(cluster.env["BATCHER_REDIS_URL"]))
        job = client.submit(model=model, messages=[[{"role": "user", "content": f"h{i}"}] for i in range(n)])

        def held_by_the_worker() -> list[HeldMessage]:
            return [m for m in broker.held() if m.job_id == job.id and m.holder is not None]

        held = until(lambda: len(held_by_the_worker()) == n and held_by_the_worker(), 30, "every delivery recorded")
        (victim_id,) = {m.holder for m in held}
        assert sorted(m.idx for m in held) == list(range(n))
        cluster.workers[0].kill()
        fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=0))
        cluster.add_worker()
        status = job.wait(timeout=60)
        assert (status.state, status.succeeded) == (JobState.COMPLETED, n), status
        exactly_one_response_each(client, job.id, n)
        assert list(broker.held([victim_id])) == []  # nothing left behind in the dead worker's set
        broker.client.close()


def test_a_poison_request_fails_once_its_budget_of_lost_workers_is_spent(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = "gpt-live-poison"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=0))
    with (
        IsolatedCluster(
            cluster_env, tmp_path, FAST, n_workers=1, own_database=True, celery_args=("--include=tests.support.poison",)
        ) as cluster,
        cluster.client() as client,
    ):
        prompts = ["fine 0", "POISON pill", "fine 1", "fine 2"]
        job = client.submit(model=model, messages=[[{"role": "user", "content": p}] for p in prompts], num_retries=2)
        deaths = 0
        deadline = time.monotonic() + 120
        while not job.status().is_final:
            assert time.monotonic() < deadline, job.status()
            for worker in cluster.workers:
                if not worker.alive():
                    worker.stop()
                    cluster.workers.remove(worker)
                    deaths += 1
                    cluster.add_worker()  # as a supervisor would restart it
                    break
            time.sleep(0.05)
        status = job.status()
        assert (status.state, status.succeeded, status.failed) == (JobState.COMPLETED, 3, 1)
        assert deaths == 3  # num_retries=2: three attempts, three dead workers, and no fourth
        poisoned = list(job.results())[1]
        assert poisoned.state is RequestState.FAILED
        assert isinstance(poisoned.error, WorkerLostError)
        assert "worker lost 3 times" in str(poisoned.error)
        # Its neighbours died with it the first time, then ran again apart from it (the re-run is
        # spread over a random delay) and were answered.


def test_cancel_while_a_worker_is_killed_ends_cancelled(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = "gpt-live-cancel"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=5_000))
    with (
        IsolatedCluster(cluster_env, tmp_path, FAST, n_workers=2, own_database=True) as cluster,
        cluster.client() as client,
    ):
        job = client.submit(model=model, messages=[[{"role": "user", "content": f"c{i}"}] for i in range(100)])
        until(
            lambda: (
                rows(client, "SELECT count(DISTINCT worker_id) AS n FROM requests WHERE job_id = :id", id=job.id)[0][
                    "n"
                ]
                == 2
            ),
            30,
            "both workers running requests",
        )
        cluster.workers[0].kill()
        job.cancel()
        status = job.wait(timeout=60)
        assert status.state is JobState.CANCELLED
        assert status.succeeded + status.cancelled == 100


def test_a_per_call_timeout_longer_than_the_default_sends_each_prompt_once(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """The lease follows the call's own ``timeout=``: a long call is never sent again while it runs."""
    model = "gpt-live-slow"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=3_000))
    overrides = {**FAST, "BATCHER_REQUEST_TIMEOUT_S": "1.5", "BATCHER_LEASE_MARGIN_S": "0.5"}
    with (
        IsolatedCluster(cluster_env, tmp_path, overrides, own_database=True) as cluster,
        cluster.client() as client,
    ):
        job = client.submit(
            model=model, messages=[[{"role": "user", "content": f"t{i}"}] for i in range(10)], timeout=6
        )
        status = job.wait(timeout=60)
        assert (status.state, status.succeeded) == (JobState.COMPLETED, 10)
    sent = sends_per_prompt(fake_provider, model)
    assert len(sent) == 10 and set(sent.values()) == {1}


def test_a_rolling_restart_loses_nothing_and_stores_nothing_twice(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    """Every worker is replaced, one by one, with SIGTERM mid-batch. The grace period is shorter than
    a call, so each stopping worker hands its in-flight requests back instead of finishing them."""
    model = "gpt-live-rolling"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=400))
    n = 5_000
    overrides = {**FAST, "BATCHER_SHUTDOWN_GRACE_S": "0.1"}
    with (
        IsolatedCluster(cluster_env, tmp_path, overrides, n_workers=2, own_database=True, concurrency=50) as cluster,
        cluster.client() as client,
    ):
        job = client.submit(model=model, messages=[[{"role": "user", "content": f"r{i}"}] for i in range(n)])
        for k, old in enumerate(list(cluster.workers)):
            until(lambda k=k: job.status().succeeded >= (k + 1) * n // 4, 120, f"{k + 1}/4 done")
            cluster.add_worker()
            old.terminate()
            assert old.wait(60) == 0
            old.stop()  # closes its log
            cluster.workers.remove(old)
        status = job.wait(timeout=180)
        assert (status.state, status.succeeded) == (JobState.COMPLETED, n)
        exactly_one_response_each(client, job.id, n)
        logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
        assert "handing them back" in logs
        stopped = rows(client, "SELECT count(*) AS n FROM workers WHERE stopped_at IS NOT NULL")[0]["n"]
        assert stopped == 2


def test_killing_the_leader_hands_leadership_over_and_a_due_schedule_fires_once(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = "gpt-live-leader"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=10))
    overrides = {**FAST, "BATCHER_EVAL_TICK_INTERVAL_S": "0.5"}
    with (
        IsolatedCluster(cluster_env, tmp_path, overrides, n_workers=2, own_database=True) as cluster,
        cluster.client() as client,
    ):
        leader = until(lambda: _leader(cluster), 30, "a leader")
        leader.kill()
        survivor = next(w for w in cluster.workers if w is not leader)
        until(lambda: _leader(cluster) is survivor, 30, "the survivor leads")

        (tmp_path / "data.jsonl").write_text(json.dumps({"id": "one", "prompt": "say one", "expected": "one"}) + "\n")
        suite = tmp_path / "leader-suite.yaml"
        suite.write_text(f"name: leader-suite\ndataset: data.jsonl\nmodels: [{model}]\nscorers: [{{type: contains}}]\n")
        schedule = add_schedule(client.engine, suite, cron="0 0 * * *", timezone="UTC")
        with client.engine.begin() as conn:  # due since last midnight, as if created the day before
            conn.execute(
                text("UPDATE eval_schedules SET active_since = now() - interval '2 days' WHERE id = :id"),
                {"id": schedule["id"]},
            )
        runs = until(
            lambda: rows(client, "SELECT id FROM eval_runs WHERE schedule_id = :id", id=schedule["id"]), 30, "a run"
        )
        # Many ticks of the new leader later (the run is moved on by them), still one run for that midnight.
        until(
            lambda: (
                rows(client, "SELECT state FROM eval_runs WHERE id = :id", id=runs[0]["id"])[0]["state"]
                in ("completed", "failed")
            ),
            60,
            "the run finished",
        )
        assert len(rows(client, "SELECT id FROM eval_runs WHERE schedule_id = :id", id=schedule["id"])) == 1


def _leader(cluster: IsolatedCluster) -> Any:
    """The live worker that logged taking the leadership (only one can hold the lock at a time)."""
    for worker in cluster.workers:
        if worker.alive() and "leads the cluster" in worker.log_path.read_text(errors="replace"):
            return worker
    return None
