"""Cohere Chat v2 requests and responses, over httpx.MockTransport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from batcher._exceptions import MalformedResponseError, ProviderServerError, ProviderTimeoutError
from batcher._providers import Route, build_request, complete, parse_response

ROUTE = Route("cohere", "command-a-03-2025")
KEY = "co-test-0123456789abcdef"
BASE = "https://api.cohere.com"
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
        "strict": True,
    },
}


def body_of(messages: list[dict[str, Any]], params: dict[str, Any] | None = None) -> dict[str, Any]:
    request = build_request(ROUTE, messages, params or {}, api_key=KEY, api_base=BASE)
    return json.loads(request.content)  # type: ignore[no-any-return]


def chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "c0ffee",
        "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Bonjour"}]},
        "usage": {
            "billed_units": {"input_tokens": 5, "output_tokens": 2},
            "tokens": {"input_tokens": 70, "output_tokens": 2},
        },
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize("base", [BASE, BASE + "/", BASE + "/v2", BASE + "/v2/chat"])
def test_url_and_headers(base: str) -> None:
    request = build_request(ROUTE, [{"role": "user", "content": "hi"}], {}, api_key=KEY, api_base=base)
    assert request.method == "POST"
    assert str(request.url) == "https://api.cohere.com/v2/chat"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"


def test_messages_mapping() -> None:
    body = body_of(
        [
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Use French."}]},
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x.example/a.png", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "tc1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"word":"chat"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "tc1", "content": '{"meaning": "cat"}'},
            {"role": "assistant", "content": "A cat."},
        ]
    )
    assert body["model"] == "command-a-03-2025"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://x.example/a.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "tc1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"word":"chat"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "tc1", "content": '{"meaning": "cat"}'},
        {"role": "assistant", "content": "A cat."},
    ]


def test_params_mapping() -> None:
    body = body_of(
        [{"role": "user", "content": "hi"}],
        {
            "temperature": 0.2,
            "top_p": 0.8,
            "stop": "STOP",
            "max_completion_tokens": 64,
            "seed": 3,
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
            "n": 1,
            "tools": [TOOL],
            "tool_choice": "required",
            "k": 10,
        },
    )
    assert body["temperature"] == 0.2
    assert body["p"] == 0.8
    assert "top_p" not in body
    assert body["stop_sequences"] == ["STOP"]
    assert body["max_tokens"] == 64
    assert body["seed"] == 3
    assert body["frequency_penalty"] == 0.1
    assert body["presence_penalty"] == 0.2
    assert body["k"] == 10
    assert "n" not in body
    assert body["tool_choice"] == "REQUIRED"
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
                "description": "Look a word up",
            },
        }
    ]
    msgs = [{"role": "user", "content": "x"}]
    assert body_of(msgs, {"tool_choice": "none"})["tool_choice"] == "NONE"
    assert "tool_choice" not in body_of(msgs, {"tool_choice": "auto"})
    assert body_of(msgs, {"max_tokens": 9})["max_tokens"] == 9
    assert "max_tokens" not in body_of(msgs)


def test_response_format_mapping() -> None:
    msgs = [{"role": "user", "content": "json please"}]
    assert body_of(msgs, {"response_format": {"type": "json_object"}})["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    assert body_of(msgs, {"response_format": fmt})["response_format"] == {
        "type": "json_object",
        "json_schema": schema,
    }


def test_text_response() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=chat())

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        resp = complete(client, ROUTE, [{"role": "user", "content": "hi"}], {}, api_key=KEY, api_base=BASE, timeout_s=5)
    assert str(seen[0].url) == "https://api.cohere.com/v2/chat"
    assert resp.provider == "cohere"
    assert resp.id == "c0ffee"
    assert resp.model == "command-a-03-2025"
    assert resp.choices[0].message.content == "Bonjour"
    assert resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 70  # tokens, not billed units
    assert resp.usage.completion_tokens == 2
    assert resp.usage.total_tokens == 72


def test_tool_call_response() -> None:
    body = chat(
        finish_reason="TOOL_CALL",
        message={
            "role": "assistant",
            "tool_plan": "I will look the word up.",
            "tool_calls": [
                {
                    "id": "lookup_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"word":"chat"}'},
                }
            ],
        },
        usage={"billed_units": {"input_tokens": 30, "output_tokens": 12}},
    )
    resp = parse_response(ROUTE, httpx.Response(200, json=body))
    msg = resp.choices[0].message
    assert msg.content is None
    assert msg.tool_calls[0].id == "lookup_1"
    assert msg.tool_calls[0].function.name == "lookup"
    assert json.loads(msg.tool_calls[0].function.arguments) == {"word": "chat"}
    assert msg["tool_plan"] == "I will look the word up."
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.usage.prompt_tokens == 30  # falls back to billed units
    assert resp.usage.total_tokens == 42


@pytest.mark.parametrize(
    ("native", "normalised"),
    [
        ("COMPLETE", "stop"),
        ("STOP_SEQUENCE", "stop"),
        ("MAX_TOKENS", "length"),
        ("TOOL_CALL", "tool_calls"),
        ("ERROR_TOXIC", "content_filter"),
        ("SOMETHING_NEW", "stop"),  # unknown: LiteLLM's map_finish_reason says stop
    ],
)
def test_finish_reasons(native: str, normalised: str) -> None:
    resp = parse_response(ROUTE, httpx.Response(200, json=chat(finish_reason=native)))
    assert resp.choices[0].finish_reason == normalised
    assert resp.choices[0].provider_specific_fields == {"native_finish_reason": native}


def test_error_and_timeout_finish_reasons_raise_retryable_errors() -> None:
    with pytest.raises(ProviderServerError) as info:
        parse_response(ROUTE, httpx.Response(200, json=chat(finish_reason="ERROR")))
    assert info.value.provider == "cohere"
    assert info.value.status_code == 500  # an openai.InternalServerError; the answer itself was a 200
    assert info.value.http_status == 200
    assert info.value.model == "command-a-03-2025"
    with pytest.raises(ProviderTimeoutError) as timeout:
        parse_response(ROUTE, httpx.Response(200, json=chat(finish_reason="TIMEOUT")))
    assert timeout.value.status_code == 408


def test_no_usage_is_none() -> None:
    body = chat()
    del body["usage"]
    assert parse_response(ROUTE, httpx.Response(200, json=body)).usage is None


@pytest.mark.parametrize("missing", ["id", "finish_reason", "message"])
def test_missing_required_keys_are_malformed(missing: str) -> None:
    body = chat()
    del body[missing]
    with pytest.raises(MalformedResponseError):
        parse_response(ROUTE, httpx.Response(200, json=body))
