"""Fair shares with real workers (issue #15): the order in which requests *start*, across keys and jobs.

Each test runs a cluster of its own with a small window (4 threads, 8 messages released at a time), lets
one job run, submits another, and then reads from Postgres which requests started while both had work
left. First in, first out would start none of the second job's requests before the first job's last one;
the dispatcher shares every window by weight (and by estimated tokens), and a higher priority goes first.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from batcher import Client, JobState
from batcher._states import JobKind
from batcher._submit import RequestSpec, submit
from batcher._transport_local import LocalTransport
from batcher._validation import split_call_kwargs
from batcher.api.auth import create_key
from batcher.testing import FakeProvider, ModelBehaviour
from tests.integration.helpers import rows, until
from tests.integration.test_liveness import FAST
from tests.support.workers import IsolatedCluster

CONCURRENCY = 4
WINDOW_SIZE = 8
SMALL_WINDOW = {"BATCHER_WINDOW_MIN": str(WINDOW_SIZE), "BATCHER_WINDOW_PER_SLOT": "2"}
MODEL = "gpt-fair"


def _submit(client: Client, n: int, *, owner: uuid.UUID | None = None, text: str = "q", **kwargs: Any) -> uuid.UUID:
    transport = client.transport
    assert isinstance(transport, LocalTransport)
    specs = (RequestSpec(MODEL, [{"role": "user", "content": f"{text} {i}"}]) for i in range(n))
    return submit(
        transport.engine,
        transport.celery,
        transport.settings,
        kind=JobKind.BATCH,
        specs=specs,
        options=split_call_kwargs(kwargs),
        owner_id=owner,
    )


def _key(client: Client, name: str, weight: float = 1.0) -> uuid.UUID:
    transport = client.transport
    assert isinstance(transport, LocalTransport)
    info, _secret = create_key(transport.engine, name, weight=weight)
    return info.id


def _created(client: Client, job_id: uuid.UUID) -> datetime:
    return rows(client, "SELECT created_at FROM jobs WHERE id = :id", id=job_id)[0]["created_at"]


def _starts_while_both_wait(client: Client, first: uuid.UUID, second: uuid.UUID) -> dict[uuid.UUID, int]:
    """Requests of each job that started after ``second`` was submitted and before either job's last start."""
    since = _created(client, second)
    until_ = rows(
        client,
        "SELECT min(last) AS t FROM (SELECT max(started_at) AS last FROM requests "
        "WHERE job_id IN (:a, :b) GROUP BY job_id) AS per_job",
        a=first,
        b=second,
    )[0]["t"]
    counted = rows(
        client,
        "SELECT job_id, count(*) AS n FROM requests WHERE job_id IN (:a, :b) AND started_at > :since "
        "AND started_at <= :until GROUP BY job_id",
        a=first,
        b=second,
        since=since,
        until=until_,
    )
    out = {first: 0, second: 0}
    out.update({row["job_id"]: int(row["n"]) for row in counted})
    return out


def _run_pair(
    cluster_env: dict[str, str],
    fake_provider: FakeProvider,
    tmp_path: Path,
    first: dict[str, Any],
    second: dict[str, Any],
    *,
    keys: tuple[float, float] | None = (1.0, 1.0),
) -> dict[str, int]:
    fake_provider.set_behaviour(MODEL, ModelBehaviour(latency_ms=30))
    with (
        IsolatedCluster(
            cluster_env, tmp_path, {**FAST, **SMALL_WINDOW}, own_database=True, concurrency=CONCURRENCY
        ) as c,
        c.client() as client,
    ):
        owners: tuple[uuid.UUID | None, uuid.UUID | None] = (None, None)
        if keys is not None:
            owners = (_key(client, "alice", keys[0]), _key(client, "bob", keys[1]))
        a = _submit(client, owner=owners[0], **first)
        until(lambda: client.job(str(a)).status().succeeded >= 20, 60, "the first job runs")
        b = _submit(client, owner=owners[1], **second)
        for job_id in (a, b):
            status = client.job(str(job_id)).wait(timeout=120)
            assert status.state == JobState.COMPLETED
        starts = _starts_while_both_wait(client, a, b)
        return {"first": starts[a], "second": starts[b]}


def test_two_keys_share_the_cluster_equally_from_the_second_ones_first_window(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    starts = _run_pair(cluster_env, fake_provider, tmp_path, {"n": 400}, {"n": 300})
    both = starts["first"] + starts["second"]
    assert both > 200, starts
    assert 0.4 <= starts["second"] / both <= 0.6, starts  # FIFO: 0 (the second waits for the first's last start)


def test_a_heavier_key_gets_its_weights_share(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    starts = _run_pair(cluster_env, fake_provider, tmp_path, {"n": 600}, {"n": 150}, keys=(3.0, 1.0))
    both = starts["first"] + starts["second"]
    assert both > 200, starts
    assert 0.15 <= starts["second"] / both <= 0.35, starts  # weights 3:1 -> a quarter


def test_shares_are_charged_in_estimated_tokens_not_requests(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    long_prompt = "many words " * 400  # ~1,100 estimated tokens a request, against ~110
    starts = _run_pair(
        cluster_env, fake_provider, tmp_path, {"n": 150, "text": long_prompt}, {"n": 400, "text": "x " * 200}
    )
    assert starts["second"] > 150, starts
    assert starts["second"] / max(1, starts["first"]) >= 4, starts  # ~10 short requests for each long one


def test_a_higher_priority_job_goes_before_the_rest_of_a_lower_ones_backlog(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path: Path
) -> None:
    starts = _run_pair(
        cluster_env, fake_provider, tmp_path, {"n": 600, "priority": 2}, {"n": 200, "priority": 8}, keys=None
    )
    assert starts["second"] >= 190, starts
    # what the low-priority job had already released when the other came, and nothing more
    assert starts["first"] <= 2 * WINDOW_SIZE, starts
