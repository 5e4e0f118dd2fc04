"""``AsyncClient`` / ``AsyncJob`` and ``abatch_completion*``: the same verbs as ``Client``, awaited.

Real worker processes (or embedded mode's in-process worker), Redis and Postgres, the fake provider;
over HTTP, the real ``batcher api`` service. Each scenario runs its own event loop (``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from batcher import (
    AllModelsFailedError,
    AsyncClient,
    AsyncJob,
    Client,
    ContextWindowExceededError,
    InvalidRequestError,
    JobKind,
    JobNotFoundError,
    JobState,
    ModelResponse,
    RequestCancelledError,
    RequestSpec,
    WaitTimeoutError,
    abatch_completion,
    abatch_completion_models,
    abatch_completion_models_all_responses,
)
from batcher._config import Settings
from batcher._db.engine import get_engine
from batcher._transport_async_http import AsyncHttpTransport
from batcher._transport_async_local import AsyncLocalTransport
from batcher.api.auth import create_key
from batcher.testing import FakeProvider, ModelBehaviour
from tests.support.api_server import ApiServer

T = TypeVar("T")
HI = [{"role": "user", "content": "hi"}]


def run(scenario: Callable[[AsyncClient], Awaitable[T]], **client_args: Any) -> T:
    """``scenario(client)`` on a fresh event loop, with an ``AsyncClient`` closed afterwards."""

    async def main() -> T:
        async with AsyncClient(**client_args) as client:
            return await scenario(client)

    return asyncio.run(main())


def _content(resp: object) -> str:
    assert isinstance(resp, ModelResponse), resp
    assert resp.choices[0].message.content is not None
    return resp.choices[0].message.content


@pytest.fixture
def client(any_client: Client) -> Client:
    """Every local scenario runs twice: against the cluster and embedded in-process."""
    return any_client


def test_submit_wait_results_reattach(client: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-async-slow", ModelBehaviour(latency_ms=200))

    async def scenario(ac: AsyncClient) -> None:
        assert isinstance(ac.transport, AsyncLocalTransport)
        prompts = [[{"role": "user", "content": f"async {i}"}] for i in range(30)]
        job = await ac.submit(model="gpt-async-slow", messages=prompts, metadata={"who": "async"})
        assert isinstance(job, AsyncJob) and job.kind is JobKind.BATCH
        first = await job.status()
        assert first.total == 30 and not first.is_final
        with pytest.raises(WaitTimeoutError, match="goes on running"):
            await job.wait(timeout=0.05)
        final = await job.wait(timeout=60)
        assert final.state is JobState.COMPLETED and final.succeeded == 30 and final.metadata == {"who": "async"}
        results = [result async for result in job.results()]
        assert [r.index for r in results] == list(range(30))
        assert all(f"async {r.index}" in _content(r.response) for r in results)
        buffer = io.BytesIO()
        await job.write_jsonl(buffer)
        assert [json.loads(line) for line in buffer.getvalue().splitlines()] == [r.as_line() for r in results]
        again = await ac.job(str(job.id))
        assert again.id == job.id and (await again.status()).succeeded == 30
        with pytest.raises(JobNotFoundError):
            await ac.job(uuid.uuid4())
        with pytest.raises(JobNotFoundError, match="not a job id"):
            await ac.job("nope")
        # The same checks as Client's, before anything is sent.
        with pytest.raises(InvalidRequestError, match="temperature"):
            await ac.submit(model="gpt-4o-mini", messages=[HI], temperature="hot")
        with pytest.raises(InvalidRequestError, match="models"):
            await ac.submit_all(models=[], messages=HI)

    run(scenario, settings=client.settings)


def test_fastest_all_requests_and_file(client: Client, fake_provider: FakeProvider, tmp_path: Path) -> None:
    fake_provider.set_behaviour("gpt-async-race-slow", ModelBehaviour(latency_ms=1500))
    fake_provider.set_behaviour("command-async-race-fast", ModelBehaviour(latency_ms=20))
    fake_provider.set_behaviour("claude-async-down", ModelBehaviour(fail_always_status=400))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"f{i}"}]}) + "\n" for i in range(3))
    )

    async def scenario(ac: AsyncClient) -> None:
        race = await ac.submit_fastest(models=["gpt-async-race-slow", "command-async-race-fast"], messages=HI)
        assert race.kind is JobKind.FASTEST
        assert (await race.first_response(timeout=30)).model == "command-async-race-fast"
        lost = await ac.submit_fastest(models=["claude-async-down"], messages=HI)
        with pytest.raises(AllModelsFailedError, match="claude-async-down"):
            await lost.first_response(timeout=30)
        every = await ac.submit_all(models=["gpt-4o-mini", "claude-async-down"], messages=HI)
        assert (await every.wait(timeout=30)).state is JobState.COMPLETED
        assert [r.ok for r in [r async for r in every.results()]] == [True, False]
        specs = [RequestSpec(model=m, messages=[{"role": "user", "content": m}]) for m in ("gpt-4o-mini", "command-r")]
        mixed = await ac.submit_requests(specs)
        await mixed.wait(timeout=30)
        answers = [_content(r.response) async for r in mixed.results()]
        assert answers == ["echo: gpt-4o-mini", "echo: command-r"]
        filed = await ac.submit_file(prompts, default_model="gpt-4o-mini")
        assert (await filed.wait(timeout=30)).succeeded == 3

    run(scenario, settings=client.settings)


def test_cancel_mid_batch_keeps_partial_results(client: Client, fake_provider: FakeProvider) -> None:
    model = f"gpt-async-cancel-{uuid.uuid4().hex[:6]}"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=200))
    n = 200

    async def scenario(ac: AsyncClient) -> None:
        job = await ac.submit(model=model, messages=[[{"role": "user", "content": f"c{i}"}] for i in range(n)])
        while (await job.status()).succeeded < 10:
            await asyncio.sleep(0.02)
        cancelled = await job.cancel()
        assert cancelled.state in (JobState.CANCELLING, JobState.CANCELLED)
        final = await job.wait(timeout=60)
        assert final.state is JobState.CANCELLED and final.succeeded >= 10 and final.cancelled > 0, final
        assert final.succeeded + final.failed + final.cancelled == n
        results = [r async for r in job.results()]
        assert len(results) == n and any(isinstance(r.error, RequestCancelledError) for r in results)

    run(scenario, settings=client.settings)
    assert fake_provider.count(model=model) < n


def test_twenty_waits_share_one_event_loop(client: Client, fake_provider: FakeProvider) -> None:
    """20 jobs awaited at once while a heartbeat coroutine runs on the same loop. The jobs cannot
    finish until the heartbeat has ticked 50 times with every wait still pending: their model fails
    (and is retried) until the heartbeat heals it. A wait that blocked the loop would starve it."""
    model = f"gpt-async-gated-{uuid.uuid4().hex[:6]}"
    fake_provider.set_behaviour(model, ModelBehaviour(fail_first_n=1_000_000, fail_first_status=503))
    ticks_while_all_pending = 0

    async def scenario(ac: AsyncClient) -> list[JobState]:
        nonlocal ticks_while_all_pending
        jobs = [
            await ac.submit(model=model, messages=[[{"role": "user", "content": f"gated {i}"}]], num_retries=49)
            for i in range(20)
        ]
        waits = [asyncio.create_task(job.wait(timeout=120)) for job in jobs]

        async def heartbeat() -> None:
            nonlocal ticks_while_all_pending
            while ticks_while_all_pending < 50:
                await asyncio.sleep(0.001)
                assert not any(w.done() for w in waits), "a job finished before its model was healed"
                ticks_while_all_pending += 1
            fake_provider.set_behaviour(model, None)  # heal the model: the next retry succeeds

        await heartbeat()
        return [status.state for status in await asyncio.gather(*waits)]

    states = run(scenario, settings=client.settings)
    assert ticks_while_all_pending == 50
    assert states == [JobState.COMPLETED] * 20


def test_the_three_async_functions(client: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-async-ctx", ModelBehaviour(context_window=20))
    fake_provider.set_behaviour("gpt-async-fn-slow", ModelBehaviour(latency_ms=1500))
    fake_provider.set_behaviour("command-async-fn-fast", ModelBehaviour(latency_ms=20))
    fake_provider.set_behaviour("claude-async-fn-down", ModelBehaviour(fail_always_status=400))

    async def scenario(ac: AsyncClient) -> None:
        long_prompt = [{"role": "user", "content": "word " * 100}]
        slots = await abatch_completion(
            "openai/gpt-async-ctx",
            [[{"role": "user", "content": "short"}], long_prompt, [{"role": "nobody"}]],
            client=ac,
        )
        assert "short" in _content(slots[0]) and isinstance(slots[1], ContextWindowExceededError)
        assert isinstance(slots[2], InvalidRequestError) and slots[2].field == "messages[2][0].role"
        unknown = await abatch_completion("no-such-model-xyz", [HI, HI], client=ac)
        assert len(unknown) == 2 and all(isinstance(slot, InvalidRequestError) for slot in unknown)

        best = await abatch_completion_models(
            models=["gpt-async-fn-slow", "command-async-fn-fast"], messages=HI, client=ac
        )
        assert isinstance(best, ModelResponse) and best.model == "command-async-fn-fast"
        deployed = await abatch_completion_models(deployments=[{"model": "gpt-4o-mini"}], messages=HI, client=ac)
        assert isinstance(deployed, ModelResponse)
        with pytest.raises(AllModelsFailedError) as failed:
            await abatch_completion_models(["claude-async-fn-down", "no-such-model-xyz"], HI, client=ac)
        assert set(failed.value.errors) == {"claude-async-fn-down", "no-such-model-xyz"}
        with pytest.raises(InvalidRequestError, match="empty"):
            await abatch_completion_models([], HI, client=ac)

        every = await abatch_completion_models_all_responses(
            ["gpt-4o-mini", "claude-async-fn-down"], HI, return_exceptions=True, client=ac
        )
        assert isinstance(every[0], ModelResponse) and not isinstance(every[1], ModelResponse)
        left_out = await abatch_completion_models_all_responses(["gpt-4o-mini", "claude-async-fn-down"], HI, client=ac)
        assert len(left_out) == 1 and isinstance(left_out[0], ModelResponse)
        assert await abatch_completion_models_all_responses([], HI, client=ac) == []

    run(scenario, settings=client.settings)


def test_the_async_functions_make_their_own_client(cluster_env: dict[str, str], worker: object) -> None:
    """No ``client=``: one of the call's own (from the environment), closed after the call."""

    async def main() -> list[Any]:
        return await abatch_completion("gpt-4o-mini", [HI], mock_response="own client")

    [slot] = asyncio.run(main())
    assert _content(slot) == "own client"


# --- over HTTP: httpx.AsyncClient against the real service -----------------------------------------


@pytest.fixture(scope="module")
def api_key(api: ApiServer, settings: Settings) -> str:
    return create_key(get_engine(settings), "async-client")[1]


def test_the_http_transport(api: ApiServer, api_key: str, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-async-remote-slow", ModelBehaviour(latency_ms=300))
    fake_provider.set_behaviour("gpt-async-remote-down", ModelBehaviour(fail_always_status=400))

    async def scenario(ac: AsyncClient) -> None:
        assert isinstance(ac.transport, AsyncHttpTransport)
        job = await ac.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": f"r{i}"}] for i in range(12)])
        assert (await job.wait(timeout=60)).succeeded == 12
        assert [r.index async for r in job.results()] == list(range(12))
        assert (await ac.job(job.id)).kind is JobKind.BATCH
        with pytest.raises(JobNotFoundError):
            await ac.job(uuid.uuid4())
        with pytest.raises(InvalidRequestError) as refused:
            await ac.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": float("nan")}]])
        assert refused.value.field is not None and refused.value.field.startswith("messages")

        slow = await ac.submit(model="gpt-async-remote-slow", messages=[[{"role": "user", "content": "s"}]] * 60)
        with pytest.raises(WaitTimeoutError, match="goes on running"):
            await slow.wait(timeout=0.2)
        await slow.cancel()
        assert (await slow.wait(timeout=60)).state is JobState.CANCELLED

        race = await ac.submit_fastest(models=["gpt-async-remote-down", "gpt-4o-mini"], messages=HI)
        assert (await race.first_response(timeout=30)).model == "gpt-4o-mini"
        specs = [RequestSpec(model="gpt-4o-mini", messages=[{"role": "user", "content": "spooled"}], custom_id="x")]
        spooled = await ac.submit_requests(specs)
        await spooled.wait(timeout=30)
        [result] = [r async for r in spooled.results()]
        assert result.custom_id == "x" and "spooled" in _content(result.response)

        [one, two] = await abatch_completion("gpt-4o-mini", [HI, [{"role": "user", "content": "two"}]], client=ac)
        assert "two" in _content(two) and isinstance(one, ModelResponse)
        assert isinstance(await abatch_completion_models(["gpt-4o-mini"], HI, client=ac), ModelResponse)
        every = await abatch_completion_models_all_responses(
            ["gpt-async-remote-down", "cohere/command-r"], HI, client=ac, return_exceptions=True
        )
        assert not isinstance(every[0], ModelResponse) and isinstance(every[1], ModelResponse)

    run(scenario, base_url=api.url, api_key=api_key)
