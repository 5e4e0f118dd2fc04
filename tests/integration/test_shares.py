"""Priorities, quotas and standings on every way in (issue #15), against the real ``batcher api`` process,
Postgres and the session's Redis.

Nothing here needs a job to run: the service and the local clients of this module send their jobs to a
queue no worker consumes, so every job stays unfinished (what a quota counts) and in the backlog (what a
status shows as ``queued``). The dispatcher is not part of this branch: its standing is written into
``DISPATCH_STANDING_KEY`` here as the dispatcher writes it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import text

from batcher import AsyncClient, Client, InvalidRequestError, QuotaExceededError
from batcher._config import Settings
from batcher._db.engine import get_engine
from batcher._keys import DISPATCH_STANDING_KEY
from batcher._transport_local import LocalTransport
from batcher.api.auth import create_key, set_key_limits
from batcher.cli import main
from tests.integration.helpers import until
from tests.support.api_server import ApiServer, free_port

HI = [{"role": "user", "content": "hi"}]
MOCK = {"mock_response": "ok"}


def _prompts(n: int, tag: str = "p") -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{tag} {i}"}] for i in range(n)]


@pytest.fixture(scope="module")
def idle_queue() -> str:
    return f"shares-idle-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def idle_settings(settings: Settings, idle_queue: str) -> Settings:
    """The session's database and Redis; jobs go to a queue nobody consumes."""
    return settings.model_copy(update={"queue": idle_queue, "race_queue": idle_queue + ".race"})


@pytest.fixture(scope="module")
def idle_api(
    cluster_env: dict[str, str], idle_queue: str, idle_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    env = {**cluster_env, "BATCHER_QUEUE": idle_queue, "BATCHER_RACE_QUEUE": idle_queue + ".race"}
    log = Path(tmp_path_factory.mktemp("shares")) / "api.log"
    with ApiServer(env, log) as server:
        yield server
    # Leave nothing unfinished behind for other modules: cancel what this module queued.
    with Client(idle_settings) as client, get_engine(idle_settings).connect() as conn:
        active = conn.execute(
            text("SELECT id FROM jobs WHERE queue LIKE :q AND state IN ('queued', 'running')"), {"q": idle_queue + "%"}
        ).scalars()
        for job_id in list(active):
            client.job(job_id).cancel()


@pytest.fixture
def local(idle_settings: Settings) -> Iterator[Client]:
    with Client(idle_settings) as client:
        yield client


def _priority_of(settings: Settings, job_id: object) -> int:
    with get_engine(settings).connect() as conn:
        value: int = conn.execute(text("SELECT priority FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
    return value


def _count_jobs(settings: Settings, owner: uuid.UUID | None = None) -> int:
    with get_engine(settings).connect() as conn:
        count: int = conn.execute(
            text("SELECT count(*) FROM jobs WHERE owner_id IS NOT DISTINCT FROM :owner"), {"owner": owner}
        ).scalar_one()
    return count


def _key(settings: Settings, name: str, **limits: Any) -> tuple[uuid.UUID, str]:
    info, key = create_key(get_engine(settings), f"{name}-{uuid.uuid4().hex[:6]}", **limits)
    return info.id, key


def _http(api: ApiServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _create(http: httpx.Client, n: int, **params: Any) -> httpx.Response:
    body = {"kind": "batch", "model": "gpt-4o-mini", "messages": _prompts(n), "params": {**MOCK, **params}}
    return http.post("/v1/jobs", json=body)


# --- priority on every way in -------------------------------------------------------------------------


def test_priority_is_stored_and_shown_from_the_python_clients(local: Client, idle_settings: Settings) -> None:
    job = local.submit(model="gpt-4o-mini", messages=_prompts(2), priority=8, **MOCK)
    assert job.status().priority == 8 and _priority_of(idle_settings, job.id) == 8
    plain = local.submit(model="gpt-4o-mini", messages=_prompts(1), **MOCK)
    assert plain.status().priority == 5 and _priority_of(idle_settings, plain.id) == 5
    fanout = local.submit_all(["gpt-4o-mini", "cohere/command-r"], HI, priority=1, **MOCK)
    assert _priority_of(idle_settings, fanout.id) == 1

    async def submit_async() -> object:
        async with AsyncClient(idle_settings) as client:
            job = await client.submit(model="gpt-4o-mini", messages=_prompts(1), priority=3, **MOCK)
            status = await job.status()
            assert status.priority == 3
            return job.id

    assert _priority_of(idle_settings, asyncio.run(submit_async())) == 3


def test_a_bad_priority_is_refused_before_anything_is_stored(local: Client, idle_settings: Settings) -> None:
    before = _count_jobs(idle_settings)
    for bad in (10, -1, "urgent"):
        with pytest.raises(InvalidRequestError, match=r"^priority: must be a whole number from 0"):
            local.submit(model="gpt-4o-mini", messages=_prompts(1), priority=bad, **MOCK)
    assert _count_jobs(idle_settings) == before


def test_priority_over_http_native_api_and_remote_client(idle_api: ApiServer, idle_settings: Settings) -> None:
    owner, key = _key(idle_settings, "prio-http")
    with _http(idle_api, key) as http:
        created = _create(http, 2, priority=9)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["priority"] == 9 and body["queued"] == 2 and body["position"] is None
        assert _priority_of(idle_settings, body["id"]) == 9
        refused = _create(http, 2, priority=12)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["param"] == "priority" and "from 0 (lowest) to 9 (highest)" in error["message"]
        assert _count_jobs(idle_settings, owner) == 1
        listed = http.get("/v1/jobs").json()["data"]
        assert [j["priority"] for j in listed] == [9]
    with Client(base_url=idle_api.url, api_key=key) as remote:
        job = remote.submit(model="gpt-4o-mini", messages=_prompts(1), priority=0, **MOCK)
        assert job.status().priority == 0 and _priority_of(idle_settings, job.id) == 0
        with pytest.raises(InvalidRequestError, match=r"^priority: "):
            remote.submit(model="gpt-4o-mini", messages=_prompts(1), priority=99, **MOCK)


def _batch_file(oai: openai.OpenAI, tmp_path: Path, n: int) -> str:
    path = tmp_path / "batch.jsonl"
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": HI},
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with path.open("rb") as handle:
        return oai.files.create(file=handle, purpose="batch").id


def test_priority_through_the_openai_batch_api_extension(
    idle_api: ApiServer, idle_settings: Settings, tmp_path: Path
) -> None:
    _, key = _key(idle_settings, "prio-batch")
    oai = openai.OpenAI(base_url=f"{idle_api.url}/v1", api_key=key, max_retries=0)
    file_id = _batch_file(oai, tmp_path, 3)
    batch = oai.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"batcher_priority": 7},
    )
    assert batch.model_extra is not None and batch.model_extra["batcher_priority"] == 7

    def validated() -> Any:
        seen = oai.batches.retrieve(batch.id)
        return seen if seen.status != "validating" else None

    assert until(validated, 30, "the batch validated").status == "in_progress"
    with get_engine(idle_settings).connect() as conn:
        job_priority, job_queue = conn.execute(
            text("SELECT j.priority, j.queue FROM batches b JOIN jobs j ON j.id = b.job_id WHERE b.id = :id"),
            {"id": batch.id},
        ).one()
    assert job_priority == 7
    # The queue is recorded with the job: the dispatcher, in a worker with settings of its own, releases
    # the batch's requests to the API's queue (here one nobody consumes), never to its own.
    assert job_queue == idle_settings.queue
    plain = oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert plain.model_extra is not None and plain.model_extra["batcher_priority"] == 5
    with pytest.raises(openai.BadRequestError) as caught:
        oai.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"batcher_priority": 10},
        )
    assert caught.value.param == "batcher_priority"  # type: ignore[attr-defined]


@pytest.fixture
def cli_env(cluster_env: dict[str, str], idle_queue: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads ``get_settings()`` (cached per process): this session's environment, the idle queue."""
    from batcher._config import get_settings

    monkeypatch.setenv("BATCHER_QUEUE", idle_queue)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_batcher_submit_priority_and_status_shows_the_place_in_line(
    cli_env: None, idle_settings: Settings, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"one"\n"two"\n"three"\n')
    runner = CliRunner()
    submitted = runner.invoke(
        main, ["submit", str(prompts), "--model", "gpt-4o-mini", "--priority", "6", "-p", "mock_response=ok"]
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    assert _priority_of(idle_settings, job_id) == 6
    shown = runner.invoke(main, ["status", job_id])
    assert shown.exit_code == 0, shown.output
    assert len(shown.stdout.splitlines()) == 1 and "queued" in shown.stdout  # no dispatcher: the one line as before
    as_json = json.loads(runner.invoke(main, ["status", job_id, "--json"]).stdout)
    assert (as_json["priority"], as_json["queued"], as_json["position"], as_json["eta_s"]) == (6, 3, None, None)
    standing = {"position": 2, "ahead": 1500, "share": 0.35, "rate": 0.025}
    redis.Redis.from_url(idle_settings.redis_url).hset(DISPATCH_STANDING_KEY, job_id, json.dumps(standing))
    shown = runner.invoke(main, ["status", job_id])
    assert "  priority 6, 3 queued · 1,500 ahead · share 35 % · ETA 2m" in shown.stdout
    refused = runner.invoke(main, ["submit", str(prompts), "--model", "gpt-4o-mini", "--priority", "11"])
    assert refused.exit_code == 2 and "priority: must be a whole number from 0" in refused.output


# --- where a job stands in line -------------------------------------------------------------------------


def test_status_reads_the_backlog_and_the_published_standing(
    local: Client, idle_api: ApiServer, idle_settings: Settings
) -> None:
    r = redis.Redis.from_url(idle_settings.redis_url)
    job = local.submit(model="gpt-4o-mini", messages=_prompts(4), **MOCK)
    status = job.status()
    assert status.queued == 4 and (status.position, status.ahead, status.share, status.eta_s) == (None,) * 4
    r.hset(DISPATCH_STANDING_KEY, str(job.id), json.dumps({"position": 3, "ahead": 120, "share": 0.25, "rate": 2.0}))
    status = job.status()
    assert (status.position, status.ahead, status.share, status.eta_s) == (3, 120, 0.25, 2.0)  # 4 left at 2/s
    r.hset(DISPATCH_STANDING_KEY, str(job.id), b"{not json")
    assert job.status().position is None  # malformed: none, never an error
    # Over HTTP the job object carries the same fields.
    _, key = _key(idle_settings, "standing-http")
    with _http(idle_api, key) as http:
        created = _create(http, 5).json()
        r.hset(DISPATCH_STANDING_KEY, created["id"], json.dumps({"position": 1, "ahead": 0, "share": 0.5, "rate": 0.0}))
        shown = http.get(f"/v1/jobs/{created['id']}").json()
        assert (shown["queued"], shown["position"], shown["ahead"], shown["share"], shown["eta_s"]) == (
            5,
            1,
            0,
            0.5,
            None,
        )
        listed = http.get("/v1/jobs").json()["data"]
        assert [(j["queued"], j["share"]) for j in listed] == [(5, 0.5)]
        cancelled = http.post(f"/v1/jobs/{created['id']}/cancel").json()
        assert (cancelled["queued"], cancelled["position"], cancelled["share"]) == (0, None, None)  # final: none
    r.hdel(DISPATCH_STANDING_KEY, str(job.id), created["id"])


def test_redis_away_leaves_status_answered_from_postgres(local: Client, idle_settings: Settings) -> None:
    job = local.submit(model="gpt-4o-mini", messages=_prompts(2), **MOCK)
    nowhere = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    status = LocalTransport(idle_settings, redis_client=nowhere).status(job.id)
    assert status.queued == 2 and status.position is None


# --- quotas -----------------------------------------------------------------------------------------------


def test_max_queued_prompts_is_a_429_before_anything_is_stored(idle_api: ApiServer, idle_settings: Settings) -> None:
    owner, key = _key(idle_settings, "quota", max_queued_prompts=5)
    with _http(idle_api, key) as http:
        assert _create(http, 3).status_code == 201
        over = _create(http, 3)
        assert over.status_code == 429, over.text
        error = over.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "rate_limit_error",
            "quota_exceeded",
            "max_queued_prompts",
        )
        assert error["message"].startswith(
            f"max_queued_prompts: API key {owner} may have at most 5 unfinished prompts (queued, running or "
            "retrying); it has 3, so this job's 3 prompts do not fit. Nothing was stored"
        )
        assert over.headers["x-should-retry"] == "false" and "retry-after" not in over.headers  # no rate known yet
        assert _count_jobs(idle_settings, owner) == 1
        assert _create(http, 2).status_code == 201  # exactly at the quota
        full = _create(http, 1)
        assert full.status_code == 429 and "any new prompts do not fit" in full.json()["error"]["message"]
        assert _count_jobs(idle_settings, owner) == 2
    with (
        Client(base_url=idle_api.url, api_key=key) as remote,
        pytest.raises(QuotaExceededError, match="max_queued_prompts"),
    ):
        remote.submit(model="gpt-4o-mini", messages=_prompts(1), **MOCK)
    set_key_limits(get_engine(idle_settings), owner, {"max_queued_prompts": None})  # cleared: no quota
    with _http(idle_api, key) as http:
        assert _create(http, 10).status_code == 201


def test_a_job_larger_than_the_quota_is_told_to_split(idle_api: ApiServer, idle_settings: Settings) -> None:
    owner, key = _key(idle_settings, "quota-small", max_queued_prompts=2)
    with _http(idle_api, key) as http:
        refused = _create(http, 3)
    assert (
        refused.status_code == 429 and "split it into jobs of at most 2 prompts" in refused.json()["error"]["message"]
    )
    assert _count_jobs(idle_settings, owner) == 0


def test_retry_after_follows_the_key_s_completion_rate(idle_api: ApiServer, idle_settings: Settings) -> None:
    owner, key = _key(idle_settings, "quota-rate")
    with _http(idle_api, key) as http:
        job_id = _create(http, 6).json()["id"]
    with get_engine(idle_settings).begin() as conn:  # as if 2 of its 6 had finished over the last 10 s: 0.2/s
        conn.execute(
            text("UPDATE jobs SET succeeded = 2, started_at = now() - interval '10 seconds' WHERE id = :id"),
            {"id": job_id},
        )
    set_key_limits(get_engine(idle_settings), owner, {"max_queued_prompts": 5})
    with _http(idle_api, key) as http:
        over = _create(http, 3)  # 4 unfinished + 3 > 5: 2 must finish first, ~10 s at 0.2/s
    assert over.status_code == 429
    assert 8 <= int(over.headers["retry-after"]) <= 20
    with Client(base_url=idle_api.url, api_key=key) as remote, pytest.raises(QuotaExceededError) as caught:
        remote.submit(model="gpt-4o-mini", messages=_prompts(3), **MOCK)
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 8


def test_two_concurrent_submissions_of_one_key_cannot_both_pass(idle_api: ApiServer, idle_settings: Settings) -> None:
    owner, key = _key(idle_settings, "quota-race", max_queued_prompts=1_500)
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def submit() -> None:
        with _http(idle_api, key) as http:
            body = {"kind": "batch", "model": "gpt-4o-mini", "messages": _prompts(1_000), "params": MOCK}
            barrier.wait()
            statuses.append(http.post("/v1/jobs", json=body).status_code)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201, 429]
    with get_engine(idle_settings).connect() as conn:
        stored = conn.execute(
            text("SELECT coalesce(sum(total), 0) FROM jobs WHERE owner_id = :o"), {"o": owner}
        ).scalar_one()
    assert stored == 1_000


def test_the_batch_api_answers_429_on_create_for_a_key_at_its_quota(
    idle_api: ApiServer, idle_settings: Settings, tmp_path: Path
) -> None:
    _, key = _key(idle_settings, "quota-batch", max_queued_prompts=3)
    oai = openai.OpenAI(base_url=f"{idle_api.url}/v1", api_key=key, max_retries=0)
    file_id = _batch_file(oai, tmp_path, 3)
    first = oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    until(lambda: oai.batches.retrieve(first.id).status == "in_progress", 30, "the first batch started")
    with pytest.raises(openai.RateLimitError, match="max_queued_prompts"):
        oai.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")


def test_a_batch_over_the_quota_fails_validation_with_a_clear_error(
    idle_api: ApiServer, idle_settings: Settings, tmp_path: Path
) -> None:
    _, key = _key(idle_settings, "quota-batch-size", max_queued_prompts=2)
    oai = openai.OpenAI(base_url=f"{idle_api.url}/v1", api_key=key, max_retries=0)
    batch = oai.batches.create(
        input_file_id=_batch_file(oai, tmp_path, 3), endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = until(lambda: (b := oai.batches.retrieve(batch.id)).status == "failed" and b, 30, "the batch failed")
    assert failed.errors is not None and failed.errors.data
    [error] = failed.errors.data
    assert error.code == "quota_exceeded" and "split it into jobs of at most 2 prompts" in (error.message or "")


# --- key administration -----------------------------------------------------------------------------------


def test_keys_cli_sets_and_shows_weights_and_quotas(cli_env: None, idle_settings: Settings) -> None:
    runner = CliRunner()
    name = f"cli-shares-{uuid.uuid4().hex[:6]}"
    made = runner.invoke(
        main, ["keys", "create", "--name", name, "--weight", "2", "--max-concurrent", "10", "--max-queued", "1000"]
    )
    assert made.exit_code == 0, made.output
    assert "weight 2, max-concurrent 10, max-queued 1,000" in made.stderr
    with get_engine(idle_settings).connect() as conn:
        row = conn.execute(text("SELECT * FROM api_keys WHERE name = :n"), {"n": name}).mappings().one()
    key_id = str(row["id"])
    assert (row["weight"], row["max_concurrent_requests"], row["max_queued_prompts"]) == (2.0, 10, 1000)
    listed = runner.invoke(main, ["keys", "list"]).stdout
    assert f"  {name}  weight 2, max-concurrent 10, max-queued 1,000" in listed
    changed = runner.invoke(main, ["keys", "set", key_id, "--weight", "0.5", "--max-queued", "none"])
    assert changed.exit_code == 0, changed.output
    assert changed.stdout.strip() == f"{key_id}  {name}  weight 0.5, max-concurrent 10"
    with get_engine(idle_settings).connect() as conn:
        row = conn.execute(text("SELECT * FROM api_keys WHERE id = :id"), {"id": key_id}).mappings().one()
    assert (row["weight"], row["max_concurrent_requests"], row["max_queued_prompts"]) == (0.5, 10, None)
    for args, message in (
        (["--weight", "0"], "weight: must be a number above 0"),
        (["--max-queued", "0"], "max_queued_prompts: must be a whole number of at least 1"),
        (["--max-concurrent", "lots"], "'lots' is not a whole number"),
        ([], "nothing to change"),
    ):
        refused = runner.invoke(main, ["keys", "set", key_id, *args])
        assert refused.exit_code == 2 and message in refused.output, (args, refused.output)
    unknown = runner.invoke(main, ["keys", "set", str(uuid.uuid4()), "--weight", "1"])
    assert unknown.exit_code == 1 and "no key" in unknown.output
    bad = runner.invoke(main, ["keys", "create", "--name", "x", "--max-concurrent", "0"])
    assert bad.exit_code == 2 and "max_concurrent_requests: must be a whole number of at least 1" in bad.output
