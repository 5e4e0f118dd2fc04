"""OpenAI (and OpenAI-compatible) requests and responses, over httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from batcher._exceptions import MalformedResponseError
from batcher._providers import Route, build_request, complete, parse_response

ROUTE = Route("openai", "gpt-4o-mini")
KEY = "sk-test-openai-0123456789abcdef"
MESSAGES: list[dict[str, Any]] = [
    {"role": "developer", "content": "Be terse."},
    {"role": "user", "content": [{"type": "text", "text": "Weather?"}], "name": "ann"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "wx", "arguments": '{"c":"Oslo"}'}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
]


def completion(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1731000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Rainy.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
        "system_fingerprint": "fp_1",
    }
    body.update(overrides)
    return body


def run(handler: Callable[[httpx.Request], httpx.Response], params: dict[str, Any] | None = None) -> Any:
    with httpx.MockTransport(handler) as transport:  # handed each request as is, as a worker's transport is
        return complete(
            transport,
            ROUTE,
            MESSAGES,
            params or {},
            api_key=KEY,
            api_base="https://api.openai.com/v1",
            timeout_s=5,
        )


def test_request_is_openai_chat_completions() -> None:
    params = {"temperature": 0.1, "stop": ["\n"], "max_completion_tokens": 50, "seed": 7, "n": 2}
    request = build_request(ROUTE, MESSAGES, params, api_key=KEY, api_base="https://api.openai.com/v1")
    assert request.method == "POST"
    assert str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert body == {"model": "gpt-4o-mini", "messages": MESSAGES, **params}


@pytest.mark.parametrize(
    ("model", "sent"),
    [("o3-mini", "max_completion_tokens"), ("gpt-5-mini", "max_completion_tokens"), ("gpt-4o", "max_tokens")],
)
def test_reasoning_models_get_max_completion_tokens(model: str, sent: str) -> None:
    request = build_request(
        Route("openai", model),
        MESSAGES,
        {"max_tokens": 64},
        api_key=KEY,
        api_base="https://api.openai.com/v1",
    )
    body = json.loads(request.content)
    assert body[sent] == 64
    assert len({"max_tokens", "max_completion_tokens"} & set(body)) == 1


@pytest.mark.parametrize(
    ("api_base", "url"),
    [
        ("https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
        ("http://localhost:11434/v1", "http://localhost:11434/v1/chat/completions"),
        ("http://vllm:8000/v1/chat/completions", "http://vllm:8000/v1/chat/completions"),
        ("https://gw.example/openai/v1?tenant=a", "https://gw.example/openai/v1/chat/completions?tenant=a"),
    ],
)
def test_base_url_joining(api_base: str, url: str) -> None:
    request = build_request(ROUTE, MESSAGES, {}, api_key=None, api_base=api_base)
    assert str(request.url) == url
    assert "authorization" not in request.headers  # keyless local servers


def test_extra_body_and_headers_pass_through() -> None:
    request = build_request(
        Route("openai", "meta-llama/Llama-3.1-8B"),
        MESSAGES,
        {"extra_body": {"top_k": 20}, "extra_headers": {"OpenAI-Project": "proj_1"}},
        api_key=KEY,
        api_base="http://localhost:8000/v1",
    )
    body = json.loads(request.content)
    assert body["top_k"] == 20
    assert "extra_body" not in body
    assert request.headers["openai-project"] == "proj_1"


def test_text_response_round_trip_through_mock_transport() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion())

    resp = run(handler, {"temperature": 0})
    assert len(seen) == 1
    assert json.loads(seen[0].content)["temperature"] == 0
    assert resp.provider == "openai"
    assert resp.id == "chatcmpl-abc"
    assert resp.model == "gpt-4o-mini-2024-07-18"
    assert resp.created == 1731000000
    assert resp.choices[0].message.content == "Rainy."
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 20
    assert resp.usage.total_tokens == 22
    assert resp.system_fingerprint == "fp_1"
    assert resp.choices[0]["logprobs"] is None
    assert resp.latency_ms is not None
    assert resp.latency_ms >= 0


def test_tool_call_response() -> None:
    choice = {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "wx", "arguments": '{"c":"Rome"}'}},
                {"id": "call_10", "type": "custom", "custom": {"name": "sql", "input": "select 1"}},
            ],
        },
        "finish_reason": "tool_calls",
    }
    resp = run(lambda r: httpx.Response(200, json=completion(choices=[choice])))
    calls = resp.choices[0].message.tool_calls
    assert resp.choices[0].message.content is None
    assert resp.choices[0].finish_reason == "tool_calls"
    assert [c.id for c in calls] == ["call_9", "call_10"]
    assert calls[0].function.name == "wx"
    assert json.loads(calls[0].function.arguments) == {"c": "Rome"}
    assert calls[1].type == "custom"
    assert calls[1].function.arguments == "select 1"


@pytest.mark.parametrize(
    ("native", "normalised"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("content_filter", "content_filter"),
        ("function_call", "function_call"),  # OpenAI's deprecated value, one of its five (LiteLLM keeps it)
        ("eos", "stop"),
        ("abort", "stop"),  # unknown: LiteLLM's map_finish_reason says stop
        (None, "stop"),
    ],
)
def test_finish_reasons(native: str | None, normalised: str) -> None:
    """Always one of OpenAI's five, so the SDK's own type validates it; the server's value is kept."""
    body = completion()
    body["choices"][0]["finish_reason"] = native
    resp = parse_response(ROUTE, httpx.Response(200, json=body))
    assert resp.choices[0].finish_reason == normalised
    if native is not None and native != normalised:
        assert resp.choices[0].provider_specific_fields == {"native_finish_reason": native}
    else:
        assert resp.choices[0].provider_specific_fields is None
        assert "provider_specific_fields" not in resp.choices[0].model_dump()


def test_compatible_server_with_missing_header_fields() -> None:
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}], "created": 1731000000.7}
    resp = parse_response(Route("openai", "llama3"), httpx.Response(200, json=body))
    assert resp.model == "llama3"
    assert resp.id.startswith("chatcmpl-")
    assert resp.created == 1731000000
    assert resp.usage is None
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "hi"


def test_router_provider_field_is_kept_under_another_name() -> None:
    resp = parse_response(ROUTE, httpx.Response(200, json=completion(provider="Azure")))
    assert resp.provider == "openai"
    assert resp["upstream_provider"] == "Azure"


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "object": "chat.completion"},  # no choices
        {"choices": "nope"},
        {"choices": [{"finish_reason": "stop"}]},  # choice without message
        {"choices": [{"message": {"tool_calls": [{"type": "function"}]}}]},  # tool call without id
    ],
)
def test_missing_required_keys_are_malformed(body: dict[str, Any]) -> None:
    with pytest.raises(MalformedResponseError) as info:
        parse_response(ROUTE, httpx.Response(200, json=body))
    assert info.value.status_code == 500
    assert info.value.http_status == 200
    assert info.value.provider == "openai"
    assert info.value.model == "gpt-4o-mini"
