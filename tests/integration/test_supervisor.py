"""``batcher worker`` as deployed: one supervised Celery worker per core plus a race-only one (issue #16).

Real processes (the supervisor, its Celery workers, Postgres, Redis, the fake provider), each test on a
cluster of its own (own database, own queues); processes are stopped by their own PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from batcher import JobState
from batcher.testing import FakeProvider, ModelBehaviour
from tests.integration.helpers import exactly_one_response_each, rows, sends_per_prompt, until
from tests.support.workers import IsolatedCluster, SupervisedWorkers

FAST = {
    "BATCHER_HEARTBEAT_INTERVAL_S": "0.5",
    "BATCHER_WORKER_LAPSE_S": "3",
    "BATCHER_RECOVERY_INTERVAL_S": "0.5",
    "BATCHER_WORKER_CONCURRENCY": "4",
    "BATCHER_WORKER_RACE_CONCURRENCY": "2",
}


def _running(client: object, job_id: object) -> int:
    found = rows(client, "SELECT count(*) AS n FROM requests WHERE job_id = :id AND state = 'running'", id=job_id)  # type: ignore[arg-type]
    return int(found[0]["n"])


def test_by_default_one_worker_per_core_and_one_for_races(cluster_env: dict[str, str], tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    with IsolatedCluster(cluster_env, tmp_path, FAST, n_workers=0, own_database=True) as cluster:
        workers = SupervisedWorkers(cluster.env, tmp_path / "sup.log").start(expected=cores + 1)
        try:
            children = workers.children()
            assert set(children) == {*(f"{workers.name}-{i}" for i in range(1, cores + 1)), f"{workers.name}-race"}
            # Each registered itself (heartbeats, leader candidacy) with the queues it consumes.
            with cluster.client() as client:
                until(lambda: len(rows(client, "SELECT 1 FROM workers")) == cores + 1, 30, "every worker registered")
                registered = rows(client, "SELECT queues, concurrency FROM workers")
            race_queue = cluster.env["BATCHER_RACE_QUEUE"]
            both = ",".join(sorted([cluster.env["BATCHER_QUEUE"], race_queue]))
            assert sorted((r["queues"], r["concurrency"]) for r in registered) == sorted(
                [(both, 4)] * cores + [(race_queue, 2)]
            )
            # A second command on this host under the same name is refused before it starts anything.
            again = subprocess.run(
                [sys.executable, "-c", "from batcher.cli import main; main()", "worker", f"--name={workers.name}"],
                env=cluster.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert again.returncode == 1
            assert again.stderr.strip().splitlines() == [
                f"Error: another `batcher worker` on this host (pid {workers.proc.pid}) runs as {workers.name}: "
                "give this one another --name"
            ]
            assert set(workers.children()) == set(children)
        finally:
            workers.stop()
        assert workers.proc.returncode == 0
        assert not any(pid_alive(pid) for pid in children.values())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_processes_option_is_honoured_and_a_killed_worker_is_restarted(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = "gpt-sup-restart"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=20))
    with IsolatedCluster(cluster_env, tmp_path, FAST, n_workers=0, own_database=True) as cluster:
        workers = SupervisedWorkers(cluster.env, tmp_path / "sup.log", args=("-p", "3")).start(expected=4)
        try:
            before = workers.children()
            assert len(before) == 4
            victim = f"{workers.name}-2"
            os.kill(before[victim], signal.SIGKILL)
            after = until(
                lambda: (now := workers.children()).get(victim, before[victim]) != before[victim] and now,
                60,
                "the killed worker started again",
            )
            assert set(after) == set(before)
            assert {n: p for n, p in after.items() if n != victim} == {n: p for n, p in before.items() if n != victim}
            until(lambda: workers.ready_count() >= 5, 60, "the new worker is ready")
            assert "died (signal 9)" in workers.log()
            with cluster.client() as client:  # and the fleet works
                job = client.submit(model=model, messages=[[{"role": "user", "content": f"r{i}"}] for i in range(30)])
                status = job.wait(timeout=60)
                assert (status.state, status.succeeded) == (JobState.COMPLETED, 30)
        finally:
            workers.stop()


def test_sigterm_stops_every_worker_after_its_in_flight_calls_finish(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    model = "gpt-sup-drain"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=1_500))
    with IsolatedCluster(cluster_env, tmp_path, FAST, n_workers=0, own_database=True) as cluster:
        workers = SupervisedWorkers(cluster.env, tmp_path / "sup.log", args=("-p", "2", "-c", "2")).start(expected=3)
        try:
            children = workers.children()
            with cluster.client() as client:
                job = client.submit(model=model, messages=[[{"role": "user", "content": f"d{i}"}] for i in range(4)])
                until(lambda: _running(client, job.id) == 4, 30, "every batch thread busy")
                workers.proc.send_signal(signal.SIGTERM)
                assert workers.proc.wait(60) == 0
                assert not any(pid_alive(pid) for pid in children.values())
                # Every call in flight finished and was stored before its worker exited (the job's own
                # finalisation is a task for the next worker: none is left to run it).
                assert job.status().succeeded == 4
                exactly_one_response_each(client, job.id, 4)
        finally:
            workers.stop()
    assert set(sends_per_prompt(fake_provider, model).values()) == {1}


def test_a_race_is_answered_while_a_batch_holds_every_batch_thread(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    slow, fast, slower = "gpt-sup-busy", "gpt-sup-race-fast", "gpt-sup-race-slow"
    fake_provider.set_behaviour(slow, ModelBehaviour(latency_ms=15_000))
    fake_provider.set_behaviour(fast, ModelBehaviour(latency_ms=50))
    fake_provider.set_behaviour(slower, ModelBehaviour(latency_ms=200))
    overrides = {**FAST, "BATCHER_SHUTDOWN_GRACE_S": "1"}
    with IsolatedCluster(cluster_env, tmp_path, overrides, n_workers=0, own_database=True) as cluster:
        workers = SupervisedWorkers(cluster.env, tmp_path / "sup.log", args=("-p", "2", "-c", "2")).start(expected=3)
        try:
            with cluster.client() as client:
                batch = client.submit(model=slow, messages=[[{"role": "user", "content": f"b{i}"}] for i in range(8)])
                until(lambda: _running(client, batch.id) == 4, 30, "every batch thread busy")
                race = client.submit_fastest(models=[fast, slower], messages=[{"role": "user", "content": "hi"}])
                winner = race.first_response(timeout=30)
                assert winner.model == fast
                # The batch still holds every batch thread: the race did not wait for one.
                assert batch.status().succeeded == 0
                assert _running(client, batch.id) == 4
                batch.cancel()
        finally:
            workers.stop()


def test_the_setting_chooses_the_processes_and_one_is_the_plain_worker_of_old(
    cluster_env: dict[str, str], tmp_path: Path
) -> None:
    with IsolatedCluster(
        cluster_env, tmp_path, {**FAST, "BATCHER_WORKER_PROCESSES": "3"}, n_workers=0, own_database=True
    ) as cluster:
        workers = SupervisedWorkers(cluster.env, tmp_path / "three.log").start(expected=4)
        try:
            assert len(workers.children()) == 4  # 3 from BATCHER_WORKER_PROCESSES, + the race process
        finally:
            workers.stop()
        # -p 1 wins over the setting: one Celery worker, in the command's own process, nothing supervised.
        single = SupervisedWorkers(cluster.env, tmp_path / "one.log", args=("-p", "1")).start(expected=1)
        try:
            assert single.children() == {}
            assert "supervisor" not in single.log()
            assert f"{single.name}@" in single.log()  # --name with -p 1: NAME@host
        finally:
            single.stop()
        assert single.proc.returncode == 0
