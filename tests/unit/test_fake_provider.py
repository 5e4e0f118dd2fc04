"""The fake provider speaks each provider's wire format over real HTTP on loopback.

Every test starts its own server (cheap: a few milliseconds) and talks to it with httpx.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from batcher._exceptions import ContextWindowExceededError, RateLimitError
from batcher._providers import PROVIDERS, Route, build_request, parse_response, resolve_api_base, resolve_route
from batcher.testing import (
    FORMATS,
    FakeProvider,
    FakeProviderConfig,
    ModelBehaviour,
    fake_provider,
    max_in_window,
    register_format,
)
from batcher.testing.cli import fake_provider_command

KEY = "sk-test-fake-0123456789"
OPENAI_HEADERS = {"Authorization": f"Bearer {KEY}"}
ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
COHERE_HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def fp() -> Iterator[FakeProvider]:
    with FakeProvider(expected_api_key=KEY) as server:
        yield server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _post(
    http: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str] | None, default: dict[str, str]
) -> httpx.Response:
    return http.post(url, json=body, headers=default if headers is None else headers)


def openai(http: httpx.Client, fp: FakeProvider, text: str = "hello world", model: str = "gpt-4o-mini",
           headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:  # fmt: skip
    body = {"model": model, "messages": _user(text), **extra}
    return _post(http, f"{fp.openai_base}/chat/completions", body, headers, OPENAI_HEADERS)


def anthropic(http: httpx.Client, fp: FakeProvider, text: str = "hello world", model: str = "claude-sonnet-4-5",
              headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:  # fmt: skip
    body = {"model": model, "max_tokens": 1024, "messages": _user(text), **extra}
    return _post(http, f"{fp.anthropic_base}/v1/messages", body, headers, ANTHROPIC_HEADERS)


def cohere(http: httpx.Client, fp: FakeProvider, text: str = "hello world", model: str = "command-a-03-2025",
           headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:  # fmt: skip
    body = {"model": model, "messages": _user(text), **extra}
    return _post(http, f"{fp.cohere_base}/v2/chat", body, headers, COHERE_HEADERS)


# --------------------------------------------------------------------------------------
# Happy paths: the documented shapes
# --------------------------------------------------------------------------------------


def test_addresses_follow_each_sdk_convention(fp: FakeProvider) -> None:
    assert fp.url == f"http://127.0.0.1:{fp.port}"
    assert fp.openai_base == f"{fp.url}/v1"
    assert fp.anthropic_base == fp.url
    assert fp.cohere_base == fp.url
    assert [fp.base_url(p) for p in ("openai", "anthropic", "cohere")] == [fp.openai_base, fp.url, fp.url]


def test_an_unknown_provider_is_an_error(fp: FakeProvider) -> None:
    with pytest.raises(ValueError, match="azure"):
        fp.base_url("azure")
    with pytest.raises(ValidationError, match="azure"):
        FakeProvider(expected_api_keys={"azure": "k"})


def test_environ_points_every_provider_at_the_fake(fp: FakeProvider) -> None:
    assert fp.environ() == {
        "OPENAI_BASE_URL": fp.openai_base,
        "ANTHROPIC_BASE_URL": fp.anthropic_base,
        "CO_API_URL": fp.cohere_base,
    }
    assert set(fp.environ()) == {PROVIDERS[name].api_base_env_vars[0] for name in PROVIDERS}


def test_every_provider_has_a_fake_format_in_the_package() -> None:
    assert list(FORMATS) == list(PROVIDERS)
    for name, fmt in FORMATS.items():
        assert type(fmt).__module__ == f"batcher.testing.formats.{name}"


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_each_adapter_and_its_fake_format_agree(fp: FakeProvider, http: httpx.Client, provider: str) -> None:
    """batcher's request, the fake's answer, batcher's reading of it: success, truncation, errors."""
    route = Route(provider, f"{provider}-model")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]

    def call(**params: Any) -> Any:
        request = build_request(route, messages, params, api_key=KEY, api_base=fp.base_url(provider))
        return parse_response(route, http.send(request))

    reply = call()
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("echo: hello world", "stop")
    assert reply.usage is not None and reply.usage.prompt_tokens == 4 and reply.usage.completion_tokens == 3
    cut = call(max_tokens=2)
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("echo: hello", "length")
    fp.set_behaviour(route.model, fail_always_status=429, retry_after_s=7)
    with pytest.raises(RateLimitError) as limited:
        call()
    assert limited.value.retry_after_s == 7.0
    fp.set_behaviour(route.model, context_window=1)
    with pytest.raises(ContextWindowExceededError):
        call()
    assert [r.provider for r in fp.requests] == [provider] * 4


def test_formats_refuse_a_taken_name_or_path() -> None:
    class Copy(type(FORMATS["cohere"])):  # type: ignore[misc]
        name = "cohere-copy"

    with pytest.raises(ValueError, match="already"):
        register_format(FORMATS["openai"])
    with pytest.raises(ValueError, match="/v2/chat"):
        register_format(Copy())
    assert "cohere-copy" not in FORMATS


def test_fake_provider_helper_points_this_process_at_it_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-mine")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with fake_provider(default={"answer": "configured"}) as fake:
        assert os.environ["OPENAI_BASE_URL"] == fake.openai_base
        assert os.environ["OPENAI_API_KEY"] == "sk-mine"  # a key that is set stays
        assert os.environ["ANTHROPIC_API_KEY"] == "sk-fake-anthropic"
        route = resolve_route("claude-x")
        api_base = resolve_api_base(route.provider, None, os.environ)
        key = os.environ["ANTHROPIC_API_KEY"]
        request = build_request(route, [{"role": "user", "content": "hi"}], {}, api_key=key, api_base=api_base)
        with httpx.Client() as client:
            assert parse_response(route, client.send(request)).choices[0].message.content == "configured"
    assert "OPENAI_BASE_URL" not in os.environ and "ANTHROPIC_API_KEY" not in os.environ
    assert os.environ["OPENAI_API_KEY"] == "sk-mine"


def test_openai_chat_completion_shape(fp: FakeProvider, http: httpx.Client) -> None:
    resp = http.post(
        f"{fp.openai_base}/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": [{"type": "text", "text": "what is two plus two"}]},
            ],
            "temperature": 0.2,
        },
        headers=OPENAI_HEADERS,
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["x-request-id"].startswith("req_")
    body = resp.json()
    assert set(body) == {
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "service_tier",
        "system_fingerprint",
    }
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert abs(body["created"] - time.time()) < 60
    assert body["model"] == "gpt-4o-mini"
    [choice] = body["choices"]
    assert choice == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "echo: what is two plus two",
            "refusal": None,
            "annotations": [],
        },
        "logprobs": None,
        "finish_reason": "stop",
    }
    usage = body["usage"]
    # word counts: 2 + 2 + 2 + 5 prompt words; "echo: what is two plus two" is 6 words
    assert usage["prompt_tokens"] == 11
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == 17
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


def test_openai_max_tokens_cuts_the_answer_with_length(fp: FakeProvider, http: httpx.Client) -> None:
    body = openai(http, fp, "one two three four", max_completion_tokens=3, n=2).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert {c["finish_reason"] for c in body["choices"]} == {"length"}
    assert body["choices"][0]["message"]["content"] == "echo: one two"
    assert body["usage"]["completion_tokens"] == 6  # 3 words x n=2


def test_anthropic_message_shape(fp: FakeProvider, http: httpx.Client) -> None:
    resp = anthropic(http, fp, "tell me a joke", system="you are funny")
    assert resp.status_code == 200
    assert resp.headers["request-id"].startswith("req_")
    body = resp.json()
    assert body["id"].startswith("msg_")
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "claude-sonnet-4-5"
    assert body["content"] == [{"type": "text", "text": "echo: tell me a joke"}]
    assert body["stop_reason"] == "end_turn"
    assert body["stop_sequence"] is None
    assert body["usage"]["input_tokens"] == 4 + 3  # messages + system
    assert body["usage"]["output_tokens"] == 5


def test_anthropic_max_tokens_stop_reason(fp: FakeProvider, http: httpx.Client) -> None:
    resp = http.post(
        f"{fp.anthropic_base}/v1/messages",
        json={
            "model": "claude-haiku",
            "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a b c"}]}],
        },
        headers=ANTHROPIC_HEADERS,
    )
    body = resp.json()
    assert body["stop_reason"] == "max_tokens"
    assert body["content"][0]["text"] == "echo: a"
    assert body["usage"]["output_tokens"] == 2


def test_cohere_chat_v2_shape(fp: FakeProvider, http: httpx.Client) -> None:
    resp = cohere(http, fp, "hi there")
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"id", "finish_reason", "message", "usage"}
    assert len(body["id"]) == 36  # a UUID, as Cohere sends
    assert body["finish_reason"] == "COMPLETE"
    assert body["message"] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "echo: hi there"}],
    }
    assert body["usage"] == {
        "billed_units": {"input_tokens": 2, "output_tokens": 3},
        "tokens": {"input_tokens": 2, "output_tokens": 3},
    }
    cut = cohere(http, fp, "one two three", max_tokens=1).json()
    assert cut["finish_reason"] == "MAX_TOKENS"
    assert cut["message"]["content"][0]["text"] == "echo:"


def test_fixed_answer_overrides_the_echo(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour("gpt-fixed", answer="forty two")
    assert openai(http, fp, model="gpt-fixed").json()["choices"][0]["message"]["content"] == ("forty two")


# --------------------------------------------------------------------------------------
# Authentication and validation, in each provider's error shape
# --------------------------------------------------------------------------------------


def test_openai_auth_errors(fp: FakeProvider, http: httpx.Client) -> None:
    missing = openai(http, fp, headers={})
    assert missing.status_code == 401
    err = missing.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith("You didn't provide an API key.")

    wrong = openai(http, fp, headers={"Authorization": "Bearer sk-wrong-key-123456"})
    assert wrong.status_code == 401
    err = wrong.json()["error"]
    assert err["code"] == "invalid_api_key"
    assert err["message"].startswith("Incorrect API key provided: sk-w")
    assert "sk-wrong-key-123456" not in err["message"]  # masked, like the real API


def test_anthropic_auth_and_version_errors(fp: FakeProvider, http: httpx.Client) -> None:
    missing = anthropic(http, fp, headers={"anthropic-version": "2023-06-01"})
    assert missing.status_code == 401
    body = missing.json()
    assert body["type"] == "error"
    assert body["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}
    assert body["request_id"] == missing.headers["request-id"]

    wrong = anthropic(http, fp, headers={"x-api-key": "nope", "anthropic-version": "2023-06-01"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}

    no_version = anthropic(http, fp, headers={"x-api-key": KEY})
    assert no_version.status_code == 400
    assert no_version.json()["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


def test_cohere_auth_errors(fp: FakeProvider, http: httpx.Client) -> None:
    missing = cohere(http, fp, headers={})
    assert (missing.status_code, missing.json()) == (401, {"message": "no api key supplied"})
    wrong = cohere(http, fp, headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()) == (401, {"message": "invalid api token"})


def test_per_provider_expected_keys(http: httpx.Client) -> None:
    with FakeProvider(expected_api_keys={"anthropic": "ant-key"}, expected_api_key=KEY) as fp:
        assert openai(http, fp).status_code == 200
        assert anthropic(http, fp).status_code == 401
        headers = {"x-api-key": "ant-key", "anthropic-version": "2023-06-01"}
        assert anthropic(http, fp, headers=headers).status_code == 200


def test_without_expected_key_any_key_is_accepted_but_one_is_required(http: httpx.Client) -> None:
    with FakeProvider() as fp:
        assert openai(http, fp, headers={"Authorization": "Bearer whatever"}).status_code == 200
        assert openai(http, fp, headers={}).status_code == 401


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        ({"model": "m"}, "Missing required parameter: 'messages'.", "missing_required_parameter"),
        ({"model": "m", "messages": []}, "Invalid 'messages': empty array.", "empty_array"),
        ({"messages": [{"role": "user", "content": "x"}]}, "you must provide a model parameter", None),
        (
            {"model": "m", "messages": [{"content": "x"}]},
            "Missing required parameter: 'messages[0].role'.",
            "missing_required_parameter",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": 3},
            "Unrecognized request argument supplied: top_k",
            None,
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "Invalid 'max_tokens': integer below minimum value.",
            "integer_below_min_value",
        ),
    ],
)
def test_openai_validation(
    fp: FakeProvider, http: httpx.Client, body: dict[str, Any], message: str, code: str | None
) -> None:
    resp = http.post(f"{fp.openai_base}/chat/completions", json=body, headers=OPENAI_HEADERS)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith(message)
    assert err["code"] == code


def test_openai_unparsable_json(fp: FakeProvider, http: httpx.Client) -> None:
    resp = http.post(
        f"{fp.openai_base}/chat/completions",
        content=b'{"model": "m", "messages": [',
        headers={**OPENAI_HEADERS, "content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["message"].startswith("We could not parse the JSON body")
    [rec] = fp.requests
    assert rec.body is None
    assert rec.raw_body == b'{"model": "m", "messages": ['
    assert rec.outcome == "bad_request"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "c", "messages": [{"role": "user", "content": "x"}]}, "max_tokens: Field required"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model: Field required"),
        ({"model": "c", "max_tokens": 5}, "messages: Field required"),
        ({"model": "c", "max_tokens": 5, "messages": []}, "messages: at least one message is required"),
        (
            {"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            'messages: Unexpected role "system".',
        ),
        (
            {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "n": 2},
            "n: Extra inputs are not permitted",
        ),
        (
            {"model": "c", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
            "max_tokens: Input should be greater than or equal to 1",
        ),
    ],
)
def test_anthropic_validation(fp: FakeProvider, http: httpx.Client, body: dict[str, Any], message: str) -> None:
    resp = http.post(f"{fp.anthropic_base}/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert resp.status_code == 400
    payload = resp.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"].startswith(message)


def test_anthropic_unparsable_json(fp: FakeProvider, http: httpx.Client) -> None:
    resp = http.post(f"{fp.anthropic_base}/v1/messages", content=b"not json", headers=ANTHROPIC_HEADERS)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"].startswith("The request body is not valid JSON")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "invalid request: model is required"),
        ({"model": "c", "messages": []}, "invalid request: messages must contain at least one message"),
        (
            {"model": "c", "messages": [{"role": "user", "content": "x"}], "top_p": 1},
            "invalid request: unknown field",
        ),
        (
            {"model": "c", "messages": [{"role": "user", "content": ""}]},
            "message must not be empty in a turn",
        ),
    ],
)
def test_cohere_validation(fp: FakeProvider, http: httpx.Client, body: dict[str, Any], message: str) -> None:
    resp = http.post(f"{fp.cohere_base}/v2/chat", json=body, headers=COHERE_HEADERS)
    assert resp.status_code == 400
    assert set(resp.json()) == {"message"}
    assert resp.json()["message"].startswith(message)


def test_strict_params_can_be_turned_off(http: httpx.Client) -> None:
    with FakeProvider(strict_params=False) as fp:
        assert openai(http, fp, top_k=3).status_code == 200


def test_streaming_is_refused_as_a_bad_request(fp: FakeProvider, http: httpx.Client) -> None:
    assert openai(http, fp, stream=True).status_code == 400


def test_unknown_path_is_a_json_404_and_is_recorded(fp: FakeProvider, http: httpx.Client) -> None:
    resp = http.post(f"{fp.url}/v1/v1/chat/completions", json={}, headers=OPENAI_HEADERS)
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == "Invalid URL (POST /v1/v1/chat/completions)"
    [rec] = fp.requests
    assert (rec.provider, rec.path, rec.status, rec.api_key) == (
        "unknown",
        "/v1/v1/chat/completions",
        404,
        KEY,
    )


# --------------------------------------------------------------------------------------
# Behaviours
# --------------------------------------------------------------------------------------


def test_openai_429_with_retry_after(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour("gpt-limited", ModelBehaviour(error_rate_429=1.0, retry_after_s=2))
    resp = openai(http, fp, model="gpt-limited")
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "2"
    assert resp.headers["retry-after-ms"] == "2000"
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert resp.headers["x-ratelimit-reset-requests"] == "2s"
    err = resp.json()["error"]
    assert err["type"] == "requests"
    assert err["code"] == "rate_limit_exceeded"
    assert err["message"].startswith("Rate limit reached for gpt-limited")


def test_anthropic_and_cohere_429_shapes(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour(None, error_rate_429=1.0, retry_after_s=0.25)
    resp = anthropic(http, fp)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "0.25"
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert resp.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert resp.json()["error"]["type"] == "rate_limit_error"
    resp = cohere(http, fp)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "0.25"
    assert resp.json()["message"].startswith("You are past the per minute request limit")


def test_retry_after_can_be_omitted(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour(None, error_rate_429=1.0, retry_after_s=None)
    resp = cohere(http, fp)
    assert resp.status_code == 429
    assert "retry-after" not in resp.headers


def test_fail_first_n_then_succeed(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour("gpt-flaky", fail_first_n=2, fail_first_status=503)
    statuses = [openai(http, fp, model="gpt-flaky").status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert fp.count(model="gpt-flaky", status=503) == 2
    assert [r.outcome for r in fp.requests] == ["fail_first_n", "fail_first_n", "ok", "ok"]
    # other models are not affected
    assert openai(http, fp, model="gpt-other").status_code == 200
    # setting the behaviour again restarts its count
    fp.set_behaviour("gpt-flaky", fail_first_n=1, fail_first_status=500)
    err = openai(http, fp, model="gpt-flaky").json()["error"]
    assert err["type"] == "server_error"
    assert openai(http, fp, model="gpt-flaky").status_code == 200


def test_fail_first_n_per_prompt(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour("claude-flaky", fail_first_n=1, fail_first_status=529, fail_first_scope="prompt")
    first_a = anthropic(http, fp, "prompt a", model="claude-flaky")
    first_b = anthropic(http, fp, "prompt b", model="claude-flaky")
    assert (first_a.status_code, first_b.status_code) == (529, 529)
    assert first_a.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert anthropic(http, fp, "prompt a", model="claude-flaky").status_code == 200
    assert anthropic(http, fp, "prompt b", model="claude-flaky").status_code == 200
    assert [r.attempt for r in fp.requests] == [1, 1, 2, 2]


def test_fail_every_n(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour("command-every", fail_every_n=3, fail_every_status=429, retry_after_s=0)
    statuses = [cohere(http, fp, model="command-every").status_code for _ in range(6)]
    assert statuses == [200, 200, 429, 200, 200, 429]


@pytest.mark.parametrize(
    ("status", "openai_type", "anthropic_type", "cohere_message"),
    [
        (400, "invalid_request_error", "invalid_request_error", "invalid request"),
        (401, "invalid_request_error", "authentication_error", "invalid api token"),
        (403, "invalid_request_error", "permission_error", "You don't have access to this model."),
        (404, "invalid_request_error", "not_found_error", "model 'model-x' not found"),
        (500, "server_error", "api_error", "internal server error"),
        (503, "server_error", "api_error", "service unavailable"),
        (529, "server_error", "overloaded_error", "service unavailable"),
    ],
)
def test_fail_always_status_in_each_format(
    fp: FakeProvider,
    http: httpx.Client,
    status: int,
    openai_type: str,
    anthropic_type: str,
    cohere_message: str,
) -> None:
    fp.set_behaviour("model-x", fail_always_status=status)
    resp = openai(http, fp, model="model-x")
    assert (resp.status_code, resp.json()["error"]["type"]) == (status, openai_type)
    resp = anthropic(http, fp, model="model-x")
    assert (resp.status_code, resp.json()["error"]["type"]) == (status, anthropic_type)
    resp = cohere(http, fp, model="model-x")
    assert resp.status_code == status
    assert resp.json()["message"].startswith(cohere_message)
    if status == 404:
        assert openai(http, fp, model="model-x").json()["error"]["code"] == "model_not_found"


def test_error_message_override(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour(None, fail_always_status=400, error_message="custom words")
    assert cohere(http, fp).json() == {"message": "custom words"}
    assert anthropic(http, fp).json()["error"]["message"] == "custom words"


def test_context_window_errors(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour(None, context_window=3)
    assert openai(http, fp, "short one").status_code == 200
    err = openai(http, fp, "one two three four").json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert "maximum context length is 3 tokens" in err["message"]
    resp = anthropic(http, fp, "one two three four")
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "prompt is too long: 4 tokens > 3 maximum"
    assert cohere(http, fp, "one two three four").json()["message"].startswith("too many tokens")


def test_error_rates_are_seeded_per_prompt_and_attempt(http: httpx.Client) -> None:
    behaviour = {"error_rate_429": 0.3, "error_rate_5xx": 0.2, "retry_after_s": 0}

    def run(seed: int, order: list[int]) -> dict[tuple[int, int], int]:
        outcome: dict[tuple[int, int], int] = {}
        with FakeProvider(seed=seed, default=behaviour) as fp:
            for attempt in range(2):
                for i in order:
                    outcome[(i, attempt)] = openai(http, fp, f"prompt {i}").status_code
        return outcome

    forward = run(7, list(range(40)))
    backward = run(7, list(reversed(range(40))))
    assert forward == backward  # the order of arrival does not matter
    assert forward != run(8, list(range(40)))
    statuses = list(forward.values())
    assert set(statuses) == {200, 429, 500}
    assert 0.2 < statuses.count(200) / len(statuses) < 0.8


@pytest.mark.parametrize(
    ("mode", "status", "content_type"),
    [
        ("html", 502, "text/html"),
        ("html_200", 200, "text/html"),
        ("truncated", 200, "application/json"),
        ("non_json", 200, "text/plain"),
        ("empty", 200, "application/json"),
        ("wrong_shape", 200, "application/json"),
    ],
)
def test_malformed_modes(fp: FakeProvider, http: httpx.Client, mode: str, status: int, content_type: str) -> None:
    fp.set_behaviour("gpt-broken", malformed=mode)
    resp = openai(http, fp, model="gpt-broken")
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith(content_type)
    if mode == "wrong_shape":
        assert "choices" not in resp.json()
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(resp.content)
    if mode == "truncated":
        assert resp.text.startswith('{"id": "chatcmpl-')
    [rec] = fp.requests
    assert rec.outcome == f"malformed:{mode}"
    assert rec.status == status


def test_drop_connection(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour(None, drop_connection=True)
    with pytest.raises(httpx.RemoteProtocolError):
        openai(http, fp)
    [rec] = fp.requests
    assert (rec.status, rec.outcome) == (0, "dropped")


def test_client_that_gives_up_is_recorded_as_499(fp: FakeProvider) -> None:
    fp.set_behaviour(None, latency_ms=500)
    with httpx.Client(timeout=httpx.Timeout(10.0, read=0.1)) as impatient, pytest.raises(httpx.ReadTimeout):
        openai(impatient, fp)
    [rec] = fp.wait_for_requests(1, timeout=5)
    assert (rec.status, rec.outcome) == (499, "client_gone")


def test_latency_is_concurrent(fp: FakeProvider) -> None:
    fp.set_behaviour(None, latency_ms=300)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_connections=100)) as client:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            url = f"{fp.openai_base}/chat/completions"
            responses = await asyncio.gather(*(client.post(url, json=body, headers=OPENAI_HEADERS) for _ in range(100)))
            return [r.status_code for r in responses]

    statuses = asyncio.run(burst())
    assert statuses == [200] * 100
    assert fp.max_in_flight > 50  # the server held most of them at once (one after another would be 1)
    assert all(0.3 <= (r.finished_monotonic or 0) - r.arrived_monotonic < 2 for r in fp.requests)
    assert fp.in_flight == 0


def test_behaviour_lookup_exact_then_glob_then_default(fp: FakeProvider) -> None:
    fp.set_behaviour("gpt-*", answer="glob")
    fp.set_behaviour("gpt-4o", answer="exact")
    fp.set_behaviour(None, answer="default")
    assert fp.behaviour_for("gpt-4o").answer == "exact"
    assert fp.behaviour_for("gpt-5").answer == "glob"
    assert fp.behaviour_for("claude").answer == "default"
    fp.set_behaviour("gpt-4o", None)  # back to the patterns / default
    assert fp.behaviour_for("gpt-4o").answer == "glob"


def test_set_behaviour_mid_run(fp: FakeProvider, http: httpx.Client) -> None:
    assert openai(http, fp, model="gpt-switch").status_code == 200
    fp.set_behaviour("gpt-switch", fail_always_status=500)
    assert openai(http, fp, model="gpt-switch").status_code == 500
    fp.set_behaviour("gpt-switch", ModelBehaviour(latency_ms=200))
    started = time.monotonic()
    assert openai(http, fp, model="gpt-switch").status_code == 200
    assert time.monotonic() - started >= 0.2


def test_behaviour_is_validated() -> None:
    with pytest.raises(ValidationError, match="must not exceed 1"):
        ModelBehaviour(error_rate_429=0.7, error_rate_5xx=0.5)
    with pytest.raises(ValidationError, match="malformed"):
        ModelBehaviour(malformed="xml")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="latnecy_ms"):
        ModelBehaviour(latnecy_ms=3)  # type: ignore[call-arg]


# --------------------------------------------------------------------------------------
# RPM limit
# --------------------------------------------------------------------------------------


def test_global_rpm_limit_is_a_sliding_window(http: httpx.Client) -> None:
    with FakeProvider(rpm_limit=5, rpm_window_s=60) as fp:
        first = openai(http, fp)
        assert first.headers["x-ratelimit-limit-requests"] == "5"
        assert first.headers["x-ratelimit-remaining-requests"] == "4"
        statuses = [first.status_code] + [(anthropic if i % 2 else cohere)(http, fp).status_code for i in range(7)]
        assert statuses.count(200) == 5  # the limit is for all models and providers together
        assert statuses.count(429) == 3
        limited = openai(http, fp)
        assert limited.status_code == 429
        assert 55 < float(limited.headers["retry-after"]) <= 60  # when the oldest one leaves
        assert limited.headers["x-ratelimit-remaining-requests"] == "0"
        message = limited.json()["error"]["message"]
        assert message.startswith("Rate limit reached for gpt-4o-mini")
        assert "Limit 5" in message
        # a shorter window lets the old requests slide out
        fp.configure(rpm_window_s=0.3)
        time.sleep(0.35)
        assert openai(http, fp).status_code == 200
        assert fp.count(outcome="rpm_limited") == 4
        assert fp.count(status=200) == 6
        assert fp.max_in_window(60, status=200) == 6
        assert fp.max_in_window(0.3, status=200) <= 5


def test_per_model_rpm_limit(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour("claude-*", rpm_limit=2)
    fp.configure(rpm_window_s=30)
    statuses = [anthropic(http, fp, model="claude-a").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert anthropic(http, fp, model="claude-b").status_code == 200  # its own window
    assert openai(http, fp).status_code == 200  # other models unlimited
    resp = anthropic(http, fp, model="claude-a")
    assert resp.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert 29 < float(resp.headers["retry-after"]) <= 30


def test_rpm_limit_holds_under_concurrency(http: httpx.Client) -> None:
    with FakeProvider(rpm_limit=50, rpm_window_s=60) as fp:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda i: openai(http, fp, f"p{i}").status_code, range(120)))
        assert statuses.count(200) == 50
        assert statuses.count(429) == 70
        assert fp.stats()["max_200_in_rpm_window"] == 50


# --------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------


def test_recording(fp: FakeProvider, http: httpx.Client) -> None:
    before = time.time()
    reply = openai(http, fp, "prompt 1", model="gpt-a").json()
    anthropic(http, fp, "prompt 2", model="claude-b")
    cohere(http, fp, "prompt 1", model="command-c", headers={"Authorization": "Bearer wrong"})
    after = time.time()

    records = fp.requests
    assert [r.seq for r in records] == [1, 2, 3]
    assert [r.provider for r in records] == ["openai", "anthropic", "cohere"]
    assert [r.path for r in records] == ["/v1/chat/completions", "/v1/messages", "/v2/chat"]
    assert [r.status for r in records] == [200, 200, 401]
    assert [r.api_key for r in records] == [KEY, KEY, "wrong"]
    assert records[0].headers["authorization"] == f"Bearer {KEY}"
    assert records[1].headers["x-api-key"] == KEY
    assert "anthropic-version" in records[1].header_names
    assert records[0].body["messages"] == [{"role": "user", "content": "prompt 1"}]
    assert records[0].response_id == reply["id"]
    assert records[0].reply == "echo: prompt 1"
    assert all(before <= r.arrived_wall <= after for r in records)
    assert records[0].arrived_monotonic <= records[1].arrived_monotonic <= records[2].arrived_monotonic
    assert all(r.finished_monotonic is not None and r.finished_monotonic >= r.arrived_monotonic for r in records)

    assert fp.count() == 3
    assert fp.count(prompt="prompt 1") == 2
    assert fp.count(model="gpt-a") == 1
    assert fp.count(status=401) == 1
    assert fp.count(provider="anthropic", status=200) == 1

    records[0].status = 999  # a copy: the recording is unchanged
    assert fp.requests[0].status == 200

    fp.reset()
    assert fp.requests == []
    assert fp.count() == 0


def test_recording_can_skip_bodies_and_headers(http: httpx.Client) -> None:
    with FakeProvider(record_bodies=False, record_headers=False) as fp:
        openai(http, fp, "secret prompt")
        [rec] = fp.requests
        assert rec.body is None
        assert rec.headers == {}
        assert rec.prompt == "secret prompt"
        assert rec.api_key == KEY


def test_wait_for_requests(fp: FakeProvider, http: httpx.Client) -> None:
    fp.set_behaviour(None, latency_ms=100)
    thread = threading.Thread(target=lambda: [openai(http, fp, f"p{i}") for i in range(3)])
    thread.start()
    try:
        done = fp.wait_for_requests(3, timeout=5, status=200)
        assert len(done) == 3
        with pytest.raises(TimeoutError):
            fp.wait_for_requests(4, timeout=0.2)
    finally:
        thread.join()


def test_max_in_window() -> None:
    assert max_in_window([], 60) == 0
    assert max_in_window([0, 10, 59.9, 60, 61, 119], 60) == 4  # 10, 59.9, 60, 61
    assert max_in_window([0, 1, 2], 1) == 1


# --------------------------------------------------------------------------------------
# HTTP control endpoints (for benchmarks that run the server in another process)
# --------------------------------------------------------------------------------------


def test_control_endpoints(fp: FakeProvider, http: httpx.Client) -> None:
    assert http.get(f"{fp.url}/_fake/health").json()["ok"] is True

    resp = http.post(
        f"{fp.url}/_fake/behaviour",
        json={"model": "gpt-ctl", "behaviour": {"fail_first_n": 1, "fail_first_status": 500}},
    )
    assert resp.status_code == 200
    assert resp.json()["models"]["gpt-ctl"]["fail_first_n"] == 1
    assert openai(http, fp, model="gpt-ctl").status_code == 500
    assert openai(http, fp, model="gpt-ctl").status_code == 200
    openai(http, fp, model="gpt-other")

    listing = http.get(f"{fp.url}/_fake/requests", params={"model": "gpt-ctl"}).json()
    assert listing["count"] == 2
    assert [r["status"] for r in listing["requests"]] == [500, 200]
    assert listing["requests"][0]["body"]["model"] == "gpt-ctl"
    assert listing["requests"][0]["headers"]["authorization"] == f"Bearer {KEY}"
    page = http.get(f"{fp.url}/_fake/requests", params={"since": 2, "bodies": 0}).json()
    assert [r["seq"] for r in page["requests"]] == [3]
    assert page["requests"][0]["body"] is None

    stats = http.get(f"{fp.url}/_fake/stats").json()
    assert stats["total"] == 3
    assert stats["by_status"] == {"500": 1, "200": 2}
    assert stats["by_model"] == {"gpt-ctl": 2, "gpt-other": 1}

    bad = http.post(f"{fp.url}/_fake/behaviour", json={"model": "x", "behaviour": {"nope": 1}})
    assert bad.status_code == 400
    assert "nope" in bad.json()["error"]

    cfg = http.post(f"{fp.url}/_fake/config", json={"rpm_limit": 1}).json()
    assert cfg["rpm_limit"] == 1
    assert http.get(f"{fp.url}/_fake/config").json()["rpm_limit"] == 1
    assert http.post(f"{fp.url}/_fake/config", json={"rpm_limit": -1}).status_code == 400

    assert http.post(f"{fp.url}/_fake/reset").json() == {"ok": True}
    assert http.get(f"{fp.url}/_fake/requests").json() == {"count": 0, "requests": []}
    assert openai(http, fp).status_code == 200
    assert openai(http, fp).status_code == 429  # rpm_limit=1 survives a plain reset
    http.post(f"{fp.url}/_fake/reset", params={"config": 1})
    assert openai(http, fp).status_code == 200
    assert fp.config.rpm_limit is None


# --------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------


def test_config_objects_and_mappings_are_accepted(http: httpx.Client) -> None:
    config = FakeProviderConfig(models={"gpt-x": ModelBehaviour(answer="configured")})
    with FakeProvider(config=config) as fp:
        assert openai(http, fp, model="gpt-x").json()["choices"][0]["message"]["content"] == "configured"
    with FakeProvider(config={"default": {"answer": "mapped"}}, seed=None) as fp:
        assert openai(http, fp).json()["choices"][0]["message"]["content"] == "mapped"
        assert fp.config.seed is None


def test_stop_is_quick_with_requests_in_flight_and_leaks_nothing() -> None:
    threads_before = set(threading.enumerate())
    fp = FakeProvider().start()
    fp.set_behaviour(None, latency_ms=30_000)
    errors: list[BaseException] = []

    def slow_call() -> None:
        with httpx.Client(timeout=20.0) as client:
            try:
                openai(client, fp)
            except httpx.HTTPError as exc:
                errors.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    fp.wait_for_requests(1, finished=False)
    started = time.monotonic()
    fp.stop()
    assert time.monotonic() - started < 15  # not the 30 s latency of the request in flight
    caller.join(5)
    assert not caller.is_alive()
    assert len(errors) == 1  # the client saw the connection close
    assert fp.requests[0].outcome == "cancelled"
    assert set(threading.enumerate()) == threads_before
    fp.stop()  # idempotent


def test_two_servers_and_a_restart(http: httpx.Client) -> None:
    with FakeProvider() as a, FakeProvider() as b:
        assert a.port != b.port
        openai(http, a)
        assert (a.count(), b.count()) == (1, 0)
    a.start()
    try:
        assert openai(http, a).status_code == 200
        assert a.count() == 2  # recordings survive a restart
    finally:
        a.stop()


def test_start_fails_cleanly_when_the_port_is_taken() -> None:
    threads_before = set(threading.enumerate())
    with FakeProvider() as first:
        second = FakeProvider(port=first.port)
        with pytest.raises(OSError, match="in use"):
            second.start()
    assert set(threading.enumerate()) == threads_before
    with pytest.raises(RuntimeError):
        _ = second.url


def test_async_entry_point() -> None:
    async def main() -> tuple[int, int]:
        async with FakeProvider(expected_api_key=KEY) as fp, httpx.AsyncClient() as client:
            resp = await client.post(
                f"{fp.cohere_base}/v2/chat",
                json={"model": "command", "messages": [{"role": "user", "content": "async"}]},
                headers=COHERE_HEADERS,
            )
            return resp.status_code, fp.count(prompt="async")

    assert asyncio.run(main()) == (200, 1)


def test_cli_rejects_bad_options() -> None:
    result = CliRunner().invoke(fake_provider_command, ["--error-rate-429", "2"])
    assert result.exit_code == 2
    assert "--error-rate-429" in result.output


def test_cli_reports_a_busy_port() -> None:
    with FakeProvider() as fp:
        port = fp.port
        result = CliRunner().invoke(fake_provider_command, ["--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_cli_serves_until_sigterm(tmp_path: Any) -> None:
    config = tmp_path / "fake.json"
    config.write_text(json.dumps({"models": {"gpt-slow": {"latency_ms": 50}}, "default": {"answer": "from file"}}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from batcher.testing.cli import fake_provider_command; fake_provider_command()",
            "--port",
            "0",
            "--expected-key",
            KEY,
            "--rpm-limit",
            "100",
            "--config",
            str(config),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner.startswith("fake provider listening on http://127.0.0.1:")
        url = banner.split(" on ", 1)[1].strip()
        with httpx.Client(timeout=10.0) as client:
            body = {"model": "gpt-slow", "messages": [{"role": "user", "content": "x"}]}
            resp = client.post(f"{url}/v1/chat/completions", json=body, headers=OPENAI_HEADERS)
            assert resp.status_code == 200
            assert resp.json()["choices"][0]["message"]["content"] == "echo: x"
            assert int(resp.headers["openai-processing-ms"]) >= 50
            other = {"model": "gpt-any", "messages": [{"role": "user", "content": "x"}]}
            resp = client.post(f"{url}/v1/chat/completions", json=other, headers=OPENAI_HEADERS)
            assert resp.json()["choices"][0]["message"]["content"] == "from file"
            assert resp.headers["x-ratelimit-limit-requests"] == "100"
            bad = client.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer x"})
            assert bad.status_code == 401
            assert client.get(f"{url}/_fake/stats").json()["total"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
