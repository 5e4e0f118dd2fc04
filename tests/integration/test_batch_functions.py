"""The three LiteLLM-style functions, through real workers, Redis and Postgres."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from batcher import (
    AllModelsFailedError,
    Client,
    ContextWindowExceededError,
    JobState,
    ModelResponse,
    ProviderServerError,
    RateLimitError,
    RequestState,
    batch_completion,
    batch_completion_models,
    batch_completion_models_all_responses,
)
from batcher.testing import FakeProvider, ModelBehaviour
from tests.integration.helpers import job_of, requests_of, responses_of


@pytest.fixture
def client(any_client: Client) -> Client:
    """Every scenario here runs twice: against the cluster and embedded in-process."""
    return any_client


def _content(resp: object) -> str:
    assert isinstance(resp, ModelResponse), resp
    content = resp.choices[0].message.content
    assert content is not None
    return content


def test_batch_completion_seed_call(client: Client) -> None:
    """The issue's first seed call: claude-2, two conversations, answers aligned with the input."""
    responses = batch_completion(
        model="claude-2",
        messages=[
            [{"role": "user", "content": "good morning? "}],
            [{"role": "user", "content": "what's the time? "}],
        ],
        client=client,
    )
    assert len(responses) == 2
    assert "good morning?" in _content(responses[0])
    assert "what's the time?" in _content(responses[1])
    assert responses[0]["choices"][0]["message"]["role"] == "assistant"
    assert responses[0].provider == "anthropic"
    assert responses[0].choices[0].finish_reason == "stop"
    assert responses[0].usage is not None and responses[0].usage.total_tokens > 0


def test_results_are_openai_types_and_keep_litellms_hidden_params_through_storage(client: Client) -> None:
    """Read back from the store (or, in the race, from the winner's wake-up): still the openai SDK's
    ChatCompletion, with LiteLLM's _hidden_params and _response_ms as the worker measured them."""
    from openai.types.chat import ChatCompletion

    responses = batch_completion(
        model="gpt-4o-mini",
        messages=[[{"role": "user", "content": "price me"}], [{"role": "user", "content": "and me"}]],
        client=client,
    )
    for resp in responses:
        assert isinstance(resp, ModelResponse) and isinstance(resp, ChatCompletion)
        assert ChatCompletion.model_validate(resp.model_dump()).model_dump() == resp.model_dump()
        hidden = resp._hidden_params
        assert hidden["custom_llm_provider"] == "openai" and hidden["api_base"].startswith("http")
        assert isinstance(hidden["model_id"], str)
        assert isinstance(hidden["response_cost"], float) and hidden["response_cost"] > 0
        assert isinstance(resp._response_ms, float) and resp._response_ms > 0
        assert resp.usage is not None and resp.usage.prompt_tokens_details is not None
        assert resp.usage.prompt_tokens_details.cached_tokens == 0
        assert "_hidden_params" not in resp.model_dump() and resp.json()["choices"][0]["finish_reason"] == "stop"
    winner = batch_completion_models(
        models=["gpt-4o-mini", "claude-3-5-haiku-latest"], messages=MESSAGES, client=client
    )
    assert winner._hidden_params["custom_llm_provider"] == winner.provider
    assert winner._response_ms is not None


MESSAGES = [{"role": "user", "content": "hi"}]


def test_batch_completion_stores_every_request_and_response(client: Client, fake_provider: FakeProvider) -> None:
    job = client.submit(
        model="gpt-4o-mini",
        messages=[[{"role": "user", "content": f"prompt {i}"}] for i in range(5)],
        temperature=0.1,
    )
    status = job.wait(timeout=60)
    assert status.state is JobState.COMPLETED
    assert (status.total, status.succeeded, status.failed) == (5, 5, 0)
    reqs = requests_of(client, job.id)
    assert [r["state"] for r in reqs] == ["succeeded"] * 5
    assert all(r["attempts"] == 1 and r["provider"] == "openai" for r in reqs)
    resps = responses_of(client, job.id)
    assert [r["idx"] for r in resps] == list(range(5))
    assert all(r["body"]["object"] == "chat.completion" and r["total_tokens"] > 0 for r in resps)
    job_row = job_of(client, job.id)
    assert job_row["params"]["params"] == {"temperature": 0.1}
    assert job_row["started_at"] is not None and job_row["finished_at"] >= job_row["started_at"]
    bodies = [r.body for r in fake_provider.requests if isinstance(r.body, dict) and r.body.get("messages")]
    sent = [b for b in bodies if b["messages"][0].get("content") == "prompt 3"]
    assert sent and sent[-1]["temperature"] == 0.1


def test_failed_prompt_has_its_exception_in_its_slot(client: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-ctx-test", ModelBehaviour(context_window=20))
    long_prompt = "word " * 100
    responses = batch_completion(
        model="openai/gpt-ctx-test",
        messages=[
            [{"role": "user", "content": "short one"}],
            [{"role": "user", "content": long_prompt}],
            [{"role": "user", "content": "short two"}],
        ],
        client=client,
    )
    assert "short one" in _content(responses[0])
    assert isinstance(responses[1], ContextWindowExceededError)
    assert responses[1].status_code == 400
    assert "short two" in _content(responses[2])


def test_fastest_returns_first_success_not_models0(client: Client, fake_provider: FakeProvider) -> None:
    """models[0] is the slowest: LiteLLM's code would return it; we return the fastest success."""
    fake_provider.set_behaviour("gpt-race-slow", ModelBehaviour(latency_ms=1500))
    fake_provider.set_behaviour("claude-race-mid", ModelBehaviour(latency_ms=900))
    fake_provider.set_behaviour("command-race-fast", ModelBehaviour(latency_ms=30))
    models = ["gpt-race-slow", "claude-race-mid", "command-race-fast"]
    job = client.submit_fastest(models=models, messages=[{"role": "user", "content": "Hey, how's it going"}])
    winner = job.first_response(timeout=30)
    # At the moment the caller has its answer, the slower models have not finished.
    states_at_return = {r["model"]: r["state"] for r in requests_of(client, job.id)}
    assert winner.model == "command-race-fast"
    assert winner.provider == "cohere"
    assert states_at_return["gpt-race-slow"] != RequestState.SUCCEEDED.value
    assert states_at_return["claude-race-mid"] != RequestState.SUCCEEDED.value
    final = job.wait(timeout=30)
    assert final.state is JobState.COMPLETED
    assert final.winner_index == 2
    # Every request is stored: the slow ones finished after the caller returned (or were skipped).
    late = {r["model"]: r for r in requests_of(client, job.id)}
    assert late["gpt-race-slow"]["state"] in ("succeeded", "skipped")


def test_fastest_seed_call(client: Client) -> None:
    fastest = batch_completion_models(
        models=["gpt-3.5-turbo", "claude-instant-1.2", "command-nightly"],
        messages=[{"role": "user", "content": "Hey, how's it going"}],
        client=client,
    )
    assert "Hey, how's it going" in _content(fastest)
    assert fastest.model in ("gpt-3.5-turbo", "claude-instant-1.2", "command-nightly")


def test_fastest_skips_models_that_have_not_been_sent(client: Client, fake_provider: FakeProvider) -> None:
    """Models waiting to retry when the winner answers are never sent again."""
    fake_provider.set_behaviour("gpt-skip-flaky", ModelBehaviour(fail_first_n=100, fail_first_status=503))
    fake_provider.set_behaviour("claude-skip-flaky", ModelBehaviour(fail_first_n=100, fail_first_status=503))
    fake_provider.set_behaviour("command-skip-ok", ModelBehaviour(latency_ms=200))
    job = client.submit_fastest(
        models=["gpt-skip-flaky", "claude-skip-flaky", "command-skip-ok"],
        messages=[{"role": "user", "content": "race with retries"}],
    )
    assert job.first_response(timeout=30).model == "command-skip-ok"
    final = job.wait(timeout=30)
    assert final.state is JobState.COMPLETED
    states = {r["model"]: r["state"] for r in requests_of(client, job.id)}
    assert states == {
        "gpt-skip-flaky": "skipped",
        "claude-skip-flaky": "skipped",
        "command-skip-ok": "succeeded",
    }
    time.sleep(1.0)  # longer than the backoff: a retry that escaped the skip would have arrived by now
    sent_before = fake_provider.count(model="gpt-skip-flaky")
    time.sleep(0.6)
    assert fake_provider.count(model="gpt-skip-flaky") == sent_before


def test_fastest_all_fail_lists_every_model(client: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-down", ModelBehaviour(fail_always_status=401))
    fake_provider.set_behaviour("claude-down", ModelBehaviour(fail_always_status=400))
    job = client.submit_fastest(models=["gpt-down", "claude-down"], messages=[{"role": "user", "content": "anyone?"}])
    with pytest.raises(AllModelsFailedError) as info:
        job.first_response(timeout=30)
    assert set(info.value.errors) == {"gpt-down", "claude-down"}
    assert "gpt-down: AuthenticationError" in str(info.value)
    assert "claude-down: BadRequestError" in str(info.value)
    assert job.status().state is JobState.FAILED


def test_failures_are_the_openai_sdks_exceptions(client: Client, fake_provider: FakeProvider) -> None:
    """Issue #13: code written around LiteLLM (``except openai.RateLimitError`` / ``openai.APIError``) catches
    batcher's failures, which carry LiteLLM's attributes."""
    fake_provider.set_behaviour("gpt-sdk-limited", ModelBehaviour(fail_always_status=429, error_message="slow down"))
    fake_provider.set_behaviour("claude-sdk-down", ModelBehaviour(fail_always_status=503))
    responses = batch_completion(
        model="gpt-sdk-limited", messages=[[{"role": "user", "content": "hi"}]], num_retries=0, client=client
    )
    err = responses[0]
    assert isinstance(err, RateLimitError)
    with pytest.raises(openai.RateLimitError) as caught:
        raise err  # as a caller re-raising a failed slot would
    assert caught.value is err
    assert (err.status_code, err.llm_provider, err.model) == (429, "openai", "gpt-sdk-limited")
    assert isinstance(err.response, httpx.Response) and err.response.status_code == 429
    assert isinstance(err.body, dict) and err.body["message"] == "slow down"  # the provider's error object
    assert err.code == err.body.get("code")
    assert err.num_retries == 0

    with pytest.raises(openai.APIError) as every:  # what a caller around LiteLLM writes
        batch_completion_models(
            models=["gpt-sdk-limited", "claude-sdk-down"],
            messages=[{"role": "user", "content": "anyone?"}],
            num_retries=0,
            client=client,
        )
    assert isinstance(every.value, AllModelsFailedError)
    failures = every.value.errors
    assert isinstance(failures["gpt-sdk-limited"], RateLimitError)
    down = failures["claude-sdk-down"]
    assert isinstance(down, ProviderServerError) and isinstance(down, openai.InternalServerError)
    assert (down.status_code, down.llm_provider) == (503, "anthropic")
    assert every.value.status_code in (429, 503)  # the last failure's, as LiteLLM raises the last one


def test_all_responses_keep_positions_with_failures(client: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("claude-all-broken", ModelBehaviour(fail_always_status=400))
    every = batch_completion_models_all_responses(
        models=["gpt-3.5-turbo", "claude-all-broken", "command-nightly"],
        messages=[{"role": "user", "content": "Hey, how's it going"}],
        client=client,
        return_exceptions=True,
    )
    assert len(every) == 3
    assert isinstance(every[0], ModelResponse) and every[0].provider == "openai"
    assert isinstance(every[1], Exception) and every[1].status_code == 400
    assert isinstance(every[2], ModelResponse) and every[2].provider == "cohere"


def test_two_thousand_prompts(client: Client) -> None:
    # Embedded mode serialises every write through one SQLite file: the same scenario, smaller.
    n = 2_000 if client.settings.database_url.startswith("postgresql") else 400
    job = client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": f"item {i}"}] for i in range(n)])
    status = job.wait(timeout=240)
    assert (status.state, status.succeeded, status.failed) == (JobState.COMPLETED, n, 0)
    seen = 0
    for result in job.results():
        assert result.index == seen
        assert result.response is not None
        assert result.response.choices[0].message.content.endswith(f"item {seen}")
        seen += 1
    assert seen == n
    assert len(responses_of(client, job.id)) == n


def test_mock_response_needs_no_provider(client: Client, fake_provider: FakeProvider) -> None:
    before = fake_provider.count(model="gpt-mocked")
    [resp] = batch_completion(
        model="gpt-mocked",
        messages=[[{"role": "user", "content": "hi"}]],
        mock_response="canned",
        client=client,
    )
    assert _content(resp) == "canned"
    assert fake_provider.count(model="gpt-mocked") == before
