"""The native job API over HTTP, through ``batcher.Client(base_url=..., api_key=...)`` and plain httpx.

The service is the real ``batcher api`` process with the real worker, Postgres and Redis.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from batcher import (
    AllModelsFailedError,
    Client,
    InvalidRequestError,
    JobKind,
    JobNotFoundError,
    JobState,
    ModelResponse,
    RateLimitError,
    RequestCancelledError,
    UnknownModelError,
    WaitTimeoutError,
    batch_completion,
    batch_completion_models,
    batch_completion_models_all_responses,
)
from batcher._config import Settings
from batcher._db.contract import store_for
from batcher._db.engine import get_engine
from batcher._db.rows import Answer, NewJob, NewRequest
from batcher._transport_http import HttpTransport
from batcher.api.auth import create_key, hash_key
from batcher.cli import main
from batcher.testing import FakeProvider, ModelBehaviour
from tests.support.api_server import ApiServer

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def key_a(api: ApiServer, settings: Settings) -> str:
    return create_key(get_engine(settings), "key-a")[1]


@pytest.fixture(scope="module")
def key_b(api: ApiServer, settings: Settings) -> str:
    return create_key(get_engine(settings), "key-b")[1]


@pytest.fixture
def remote(api: ApiServer, key_a: str) -> Iterator[Client]:
    with Client(base_url=api.url, api_key=key_a) as client:
        yield client


@pytest.fixture
def http_a(api: ApiServer, key_a: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key_a}"}, timeout=60) as c:
        yield c


@pytest.fixture
def http_b(api: ApiServer, key_b: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key_b}"}, timeout=60) as c:
        yield c


def test_remote_client_submit_wait_results(remote: Client) -> None:
    assert isinstance(remote.transport, HttpTransport)
    prompts = [[{"role": "user", "content": f"remote {i}"}] for i in range(25)]
    job = remote.submit(model="gpt-4o-mini", messages=prompts, temperature=0.1, metadata={"who": "remote"})
    status = job.wait(timeout=60)
    assert status.state is JobState.COMPLETED and status.succeeded == 25 and status.progress == 1.0
    assert status.metadata == {"who": "remote"} and status.params["params"] == {"temperature": 0.1}
    results = list(job.results())
    assert [r.index for r in results] == list(range(25))
    assert all(r.ok and f"remote {r.index}" in r.response.choices[0].message.content for r in results)  # type: ignore[union-attr]
    again = remote.job(str(job.id))
    assert again.kind is JobKind.BATCH and again.status().succeeded == 25


def test_the_batch_functions_run_over_http(remote: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-remote-down", ModelBehaviour(fail_always_status=400))
    out = batch_completion("gpt-4o-mini", [HI, [{"role": "user", "content": "two"}]], client=remote)
    assert all(isinstance(r, ModelResponse) for r in out)
    best = batch_completion_models(["gpt-4o-mini", "anthropic/claude-3-5-haiku"], HI, client=remote)
    assert isinstance(best, ModelResponse)
    every = batch_completion_models_all_responses(
        ["gpt-remote-down", "cohere/command-r"], HI, client=remote, return_exceptions=True
    )
    assert not isinstance(every[0], ModelResponse) and isinstance(every[1], ModelResponse)
    kept = batch_completion_models_all_responses(["gpt-remote-down", "cohere/command-r"], HI, client=remote)
    assert [type(r) for r in kept] == [ModelResponse] and kept[0].model == "command-r"  # failures left out
    with pytest.raises(AllModelsFailedError, match="gpt-remote-down"):
        batch_completion_models(["gpt-remote-down"], HI, client=remote)


def test_litellm_mocks_travel_over_http(remote: Client) -> None:
    """``mock_response`` as an exception or an error string, and ``mock_timeout``, as a local client runs them."""
    answer = httpx.Response(429, request=httpx.Request("POST", "https://api.openai.com/v1/chat/completions"))
    limited = openai.RateLimitError("slow down", response=answer, body=None)
    [by_exception] = batch_completion("gpt-4o-mini", [HI], client=remote, mock_response=limited)
    assert isinstance(by_exception, RateLimitError) and by_exception.status_code == 429
    [by_string] = batch_completion("gpt-4o-mini", [HI], client=remote, mock_response="litellm.InternalServerError")
    assert isinstance(by_string, openai.InternalServerError) and by_string.status_code == 500
    [timed_out] = batch_completion("gpt-4o-mini", [HI], client=remote, mock_timeout=True)
    assert isinstance(timed_out, openai.APITimeoutError) and timed_out.status_code == 408


def test_remote_cancel_and_wait_timeout(remote: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-remote-slow", ModelBehaviour(latency_ms=300))
    job = remote.submit(model="gpt-remote-slow", messages=[[{"role": "user", "content": f"s{i}"}] for i in range(80)])
    with pytest.raises(WaitTimeoutError, match="goes on running"):
        job.wait(timeout=0.2)
    job.cancel()
    final = job.wait(timeout=60)
    assert final.state is JobState.CANCELLED and final.cancelled > 0
    assert final.succeeded + final.failed + final.cancelled == 80
    assert any(isinstance(r.error, RequestCancelledError) for r in list(job.results()))


def test_remote_errors_name_the_field_and_store_nothing(remote: Client, settings: Settings) -> None:
    with get_engine(settings).connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    with pytest.raises(InvalidRequestError) as bad:
        remote.submit(model="gpt-4o-mini", messages=[HI, [{"role": "robot", "content": "x"}]])
    assert bad.value.field == "messages[1][0].role"
    with pytest.raises(UnknownModelError):
        remote.submit(model="nobody/knows-this", messages=[HI])
    with pytest.raises(JobNotFoundError):
        remote.job(uuid.uuid4())
    with get_engine(settings).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == before


def test_values_postgres_refuses_are_400s_not_500s(http_a: httpx.Client) -> None:
    # Found by the schemathesis run: a NUL character used to reach Postgres and come back as a 500.
    for path in ("/v1/batches?after=%00", "/v1/files?after=a%00b", "/v1/files/file-%00"):
        assert http_a.get(path).status_code in (400, 404), path
    created = http_a.post(
        "/v1/jobs", json={"model": "gpt-4o-mini", "messages": [[{"role": "user", "content": "nul \u0000 here"}]]}
    )
    assert created.status_code == 400 and created.json()["error"]["code"] == "invalid_value"


def test_submit_requests_streams_a_file_with_many_models(remote: Client) -> None:
    from batcher import RequestSpec

    specs = [
        RequestSpec(model=m, messages=[{"role": "user", "content": f"{m} {i}"}], custom_id=f"id-{i}")
        for i, m in enumerate(["gpt-4o-mini", "anthropic/claude-3-5-haiku", "cohere/command-r"])
    ]
    job = remote.submit_requests(specs, max_tokens=20)
    job.wait(timeout=60)
    assert [(r.custom_id, r.model, r.ok) for r in job.results()] == [
        ("id-0", "gpt-4o-mini", True),
        ("id-1", "anthropic/claude-3-5-haiku", True),
        ("id-2", "cohere/command-r", True),
    ]


def test_idempotency_key_makes_a_retried_create_return_the_same_job(http_a: httpx.Client, settings: Settings) -> None:
    body = {"kind": "batch", "model": "gpt-4o-mini", "messages": [HI, HI]}
    headers = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
    first = http_a.post("/v1/jobs", json=body, headers=headers)
    second = http_a.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    with get_engine(settings).connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM jobs WHERE idempotency_key = :k"), {"k": headers["Idempotency-Key"]}
        )
        assert n.scalar_one() == 1
        requests = conn.execute(text("SELECT count(*) FROM requests WHERE job_id = :id"), {"id": first.json()["id"]})
        assert requests.scalar_one() == 2


def test_an_idempotency_key_sent_again_with_another_body_is_refused(http_a: httpx.Client, settings: Settings) -> None:
    """Not answered with the first job, which would silently drop the second request (IETF draft: 422)."""
    headers = {"Idempotency-Key": f"reuse-{uuid.uuid4()}"}
    first = http_a.post("/v1/jobs", json={"model": "gpt-4o-mini", "messages": [HI]}, headers=headers)
    assert first.status_code == 201
    other = http_a.post("/v1/jobs", json={"model": "gpt-4o-mini", "messages": [HI, HI]}, headers=headers)
    assert other.status_code == 422
    error = other.json()["error"]
    assert (error["code"], error["param"]) == ("idempotency_key_reused", "Idempotency-Key")
    assert first.json()["id"] in error["message"]
    with get_engine(settings).connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM jobs WHERE idempotency_key = :k"), {"k": headers["Idempotency-Key"]}
        )
        assert n.scalar_one() == 1


def test_synchronous_fastest_and_all(http_a: httpx.Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-sync-slow", ModelBehaviour(latency_ms=2_000))
    fastest = http_a.post(
        "/v1/jobs/run", json={"kind": "fastest", "models": ["gpt-sync-slow", "gpt-4o-mini"], "messages": HI}
    ).json()
    assert fastest["done"] is True and fastest["response"]["model"] == "gpt-4o-mini"
    assert fastest["job"]["winner_index"] == 1
    every = http_a.post(
        "/v1/jobs/run", json={"kind": "all", "models": ["gpt-4o-mini", "cohere/command-r"], "messages": HI}
    ).json()
    assert every["done"] is True and every["job"]["state"] == "completed"
    assert [r["model"] for r in every["results"]] == ["gpt-4o-mini", "cohere/command-r"]
    slow = http_a.post(
        "/v1/jobs/run", json={"kind": "all", "models": ["gpt-sync-slow"], "messages": HI, "timeout": 0.2}
    ).json()
    assert slow["done"] is False and slow["results"] is None and slow["job"]["state"] in ("queued", "running")
    batch = http_a.post("/v1/jobs/run", json={"kind": "batch", "model": "gpt-4o-mini", "messages": [HI]})
    assert batch.status_code == 400 and batch.json()["error"]["param"] == "kind"


def test_results_stream_as_jsonl_in_input_order(http_a: httpx.Client, remote: Client) -> None:
    job = remote.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": f"o{i}"}] for i in range(300)])
    job.wait(timeout=60)
    with http_a.stream("GET", f"/v1/jobs/{job.id}/results") as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in response.iter_lines() if x]
    assert [x["index"] for x in lines] == list(range(300))
    assert lines[7]["state"] == "succeeded" and "o7" in lines[7]["response"]["choices"][0]["message"]["content"]


def test_jobs_list_pages_by_cursor(api: ApiServer, settings: Settings) -> None:
    _, key = create_key(get_engine(settings), "lister")
    with (
        Client(base_url=api.url, api_key=key) as client,
        httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}) as http,
    ):
        made = [client.submit(model="gpt-4o-mini", messages=[HI]).id for _ in range(5)]
        seen: list[str] = []
        after = None
        while True:
            page = http.get("/v1/jobs", params={"limit": 2, **({"after": after} if after else {})}).json()
            seen += [j["id"] for j in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
    assert seen == [str(j) for j in reversed(made)]


def test_a_running_job_s_answers_are_counted_in_the_list_and_its_status(api: ApiServer, settings: Settings) -> None:
    """While a job runs its counts are in its counter shards (``batcher._db.postgres``): both views add them."""
    engine = get_engine(settings)
    created, key = create_key(engine, "counted")
    key_id = created.id
    store = store_for(engine)
    job_id = uuid.uuid4()
    with engine.begin() as conn:
        store.insert_job(conn, NewJob(id=job_id, kind="batch", params={"params": {}}, owner_id=key_id, queue="none"))
        requests = (NewRequest(idx=i, model="m", provider="openai", messages=HI) for i in range(3))
        store.set_total(conn, job_id, store.copy_requests(conn, job_id, requests))
    with engine.begin() as conn:
        claimed = store.claim_request(conn, job_id, 1, timeout_s=600, margin_s=30, worker_id="test")
        assert claimed is not None
    with engine.begin() as conn:
        assert store.record_success(conn, claimed, Answer({"id": "x"}, "openai", "m", None, 1.0)) is not None
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}) as http:
        listed = http.get("/v1/jobs").json()["data"]
        one = http.get(f"/v1/jobs/{job_id}").json()
    assert [(j["id"], j["state"], j["succeeded"], j["done"]) for j in listed] == [(str(job_id), "running", 1, 1)]
    assert (one["state"], one["succeeded"], one["done"], one["total"]) == ("running", 1, 1, 3)


def test_another_key_gets_404_and_admin_sees_all(
    remote: Client, http_b: httpx.Client, api: ApiServer, settings: Settings
) -> None:
    job = remote.submit(model="gpt-4o-mini", messages=[HI])
    job.wait(timeout=30)
    for method, path in [
        ("GET", f"/v1/jobs/{job.id}"),
        ("GET", f"/v1/jobs/{job.id}/results"),
        ("GET", f"/v1/jobs/{job.id}/wait?timeout=0"),
        ("POST", f"/v1/jobs/{job.id}/cancel"),
    ]:
        response = http_b.request(method, path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert str(job.id) not in {j["id"] for j in http_b.get("/v1/jobs", params={"limit": 100}).json()["data"]}
    _, admin_key = create_key(get_engine(settings), "admin", admin=True)
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        assert admin.get(f"/v1/jobs/{job.id}").status_code == 200
        assert str(job.id) in {j["id"] for j in admin.get("/v1/jobs", params={"limit": 100}).json()["data"]}


def test_requests_without_a_valid_key_get_401(api: ApiServer) -> None:
    for headers in ({}, {"Authorization": "Bearer bk-not-a-key"}, {"Authorization": "Basic abc"}):
        response = httpx.get(f"{api.url}/v1/jobs", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok", "postgres": "ok", "redis": "ok"}
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/jobs", "/v1/files", "/v1/batches", "/healthz"} <= set(spec["paths"])


@pytest.fixture
def cli_settings(cluster_env: dict[str, str]) -> Iterator[None]:
    """The CLI reads ``get_settings()`` (cached per process): make it read this session's environment."""
    from batcher._config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_keys_cli_prints_the_key_once_and_stores_its_hash(settings: Settings, cli_settings: None) -> None:
    result = CliRunner().invoke(main, ["keys", "create", "--name", "cli-made"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("bk-") and len(key) > 30
    with get_engine(settings).connect() as conn:
        row = conn.execute(text("SELECT * FROM api_keys WHERE name = 'cli-made'")).mappings().one()
    assert row["key_hash"] == hash_key(key) and key not in json.dumps({k: str(v) for k, v in row.items()})


def test_a_revoked_key_gets_401(api: ApiServer, settings: Settings, cli_settings: None) -> None:
    info, key = create_key(get_engine(settings), "short-lived")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{api.url}/v1/jobs", headers=headers).status_code == 200
    revoked = CliRunner().invoke(main, ["keys", "revoke", str(info.id)])
    assert revoked.exit_code == 0, revoked.output
    assert httpx.get(f"{api.url}/v1/jobs", headers=headers).status_code == 401
    listed = CliRunner().invoke(main, ["keys", "list"])
    assert f"{info.id}  {key[:10]}...  short-lived  revoked" in listed.stdout and key not in listed.stdout


def test_cli_uses_the_service_when_api_url_is_set(
    api: ApiServer, key_a: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher._config import get_settings

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"first"\n{"messages": [{"role": "user", "content": "second"}], "custom_id": "two"}\n')
    monkeypatch.setenv("BATCHER_API_URL", api.url)
    monkeypatch.setenv("BATCHER_API_KEY", key_a)
    monkeypatch.setenv("BATCHER_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/unused")  # not needed
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        submitted = runner.invoke(main, ["submit", str(prompts), "--model", "gpt-4o-mini", "--wait"])
        assert submitted.exit_code == 0, submitted.output
        job_id = submitted.stdout.splitlines()[0].strip()
        results = runner.invoke(main, ["results", job_id])
        assert results.exit_code == 0, results.output
        lines = [json.loads(x) for x in results.stdout.splitlines()]
        assert [x["custom_id"] for x in lines] == [None, "two"] and all(x["state"] == "succeeded" for x in lines)
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("messages", "kwargs", "field"),
    [
        ([[{"role": "user", "content": "x"}]], {"temperature": float("nan")}, "temperature"),
        ([[{"role": "user", "content": "bad \ud800 text"}]], {}, "messages[0][0].content"),
        ([[{"role": "user", "content": "x"}]], {"extra_body": {"a": {1, 2}}}, "extra_body.a"),
    ],
)
def test_remote_client_refuses_what_json_cannot_carry_with_the_field_named(
    remote: Client, messages: list[Any], kwargs: dict[str, Any], field: str
) -> None:
    """Caught before the body is encoded (httpx would fail with no field), worded as a local client words it."""
    with pytest.raises(InvalidRequestError) as refused:
        remote.submit(model="gpt-4o-mini", messages=messages, **kwargs)
    assert refused.value.field == field
