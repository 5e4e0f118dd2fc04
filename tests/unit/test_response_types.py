"""Every provider's answer is the openai SDK's own ``ChatCompletion`` plus LiteLLM's additions.

Each registered provider is called through its fake format (``batcher.testing``) with batcher's
real request building, sending and parsing (``complete``), so what is checked is what a worker stores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.completion_usage import CompletionUsage, PromptTokensDetails

from batcher._providers import PROVIDERS, Route, complete, public_base_url
from batcher._response import ModelResponse
from batcher.testing import FakeProvider

KEY = "sk-test-types-0123456789"
MESSAGES = [{"role": "user", "content": "hello world"}]
THINKING: dict[str, dict[str, Any]] = {
    "anthropic": {"thinking": {"type": "enabled", "budget_tokens": 1024}},
    "cohere": {"thinking": {"type": "enabled"}},
}
"""Providers whose answers can carry the model's reasoning, and how to ask for it."""


@pytest.fixture(scope="module")
def fp() -> Iterator[FakeProvider]:
    with FakeProvider(expected_api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def _answer(fp: FakeProvider, http: httpx.Client, provider: str, model: str, **params: Any) -> ModelResponse:
    route = Route(provider, model)
    return complete(http, route, MESSAGES, params, api_key=KEY, api_base=fp.base_url(provider), timeout_s=10)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_every_providers_answer_round_trips_through_the_openai_sdk(
    fp: FakeProvider, http: httpx.Client, provider: str
) -> None:
    resp = _answer(fp, http, provider, f"{provider}-types-model", **THINKING.get(provider, {}))
    assert isinstance(resp, ChatCompletion)
    assert isinstance(resp.choices[0].message, ChatCompletionMessage)
    assert isinstance(resp.usage, CompletionUsage)
    dumped = resp.model_dump()
    assert ChatCompletion.model_validate(dumped).model_dump() == dumped
    assert ChatCompletion.model_validate(resp.model_dump(mode="json")).model_dump(mode="json") == resp.model_dump(
        mode="json"
    )
    assert json.loads(json.dumps(dumped)) == resp.model_dump(mode="json")
    assert resp.to_dict()["choices"][0]["message"]["content"] == "echo: hello world"
    assert json.loads(resp.to_json())["id"] == resp.id
    assert resp.json()["choices"] == dumped["choices"]  # LiteLLM's json(): a dict, no deprecation warning
    assert resp.choices[0].finish_reason == "stop"

    # usage details are objects with cached tokens, whatever the provider
    details = resp.usage.prompt_tokens_details
    assert isinstance(details, PromptTokensDetails) and details.cached_tokens == 0
    assert resp["usage"]["prompt_tokens_details"]["cached_tokens"] == 0

    # LiteLLM's additions
    message = resp.choices[0].message
    assert message.function_call is None
    assert message.get("function_call") is None
    if provider in THINKING:
        assert message.reasoning_content == "thinking about: echo: hello world"
    else:
        assert message.reasoning_content is None and "reasoning_content" not in dumped["choices"][0]["message"]
    if provider == "anthropic":
        assert message.thinking_blocks is not None and message.thinking_blocks[0]["type"] == "thinking"
        assert message.provider_specific_fields == {"thinking_blocks": message.thinking_blocks}
    hidden = resp._hidden_params
    assert hidden["custom_llm_provider"] == provider == resp.provider
    assert hidden["api_base"] == public_base_url(fp.base_url(provider))
    assert isinstance(hidden["model_id"], str) and KEY not in json.dumps(hidden)
    assert "response_cost" in hidden  # None: the fake's model has no list price
    assert isinstance(resp._response_ms, float) and resp._response_ms > 0

    # what a worker stores reads back the same, private values included
    again = ModelResponse.model_validate(json.loads(json.dumps(resp.stored_body())))
    assert again == resp
    assert (again._hidden_params, again._response_ms) == (hidden, resp._response_ms)


@pytest.mark.parametrize(
    ("provider", "model"), [("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"), ("cohere", "command-r")]
)
def test_response_cost_is_the_list_price_of_a_known_model(
    fp: FakeProvider, http: httpx.Client, provider: str, model: str
) -> None:
    resp = _answer(fp, http, provider, model)
    cost = resp._hidden_params["response_cost"]
    assert isinstance(cost, float) and 0 < cost < 0.01


def test_api_base_in_hidden_params_never_holds_credentials() -> None:
    assert public_base_url("https://user:secret@llm.example:8443/v1?api-key=abc#frag") == "https://llm.example:8443/v1"
