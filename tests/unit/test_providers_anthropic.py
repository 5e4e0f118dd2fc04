"""Anthropic Messages API requests and responses, over httpx.MockTransport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from batcher._exceptions import InvalidRequestError, MalformedResponseError
from batcher._providers import Route, build_request, complete, parse_response

ROUTE = Route("anthropic", "claude-sonnet-4-5")
KEY = "sk-ant-test-0123456789abcdef"
BASE = "https://api.anthropic.com"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def body_of(messages: list[dict[str, Any]], params: dict[str, Any] | None = None) -> dict[str, Any]:
    request = build_request(ROUTE, messages, params or {}, api_key=KEY, api_base=BASE)
    return json.loads(request.content)  # type: ignore[no-any-return]


def message(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 4},
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize("base", [BASE, BASE + "/", BASE + "/v1", BASE + "/v1/", BASE + "/v1/messages"])
def test_url_and_headers(base: str) -> None:
    request = build_request(ROUTE, [{"role": "user", "content": "hi"}], {}, api_key=KEY, api_base=base)
    assert request.method == "POST"
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers


def test_proxy_base_with_path() -> None:
    request = build_request(
        ROUTE, [{"role": "user", "content": "hi"}], {}, api_key=KEY, api_base="https://gw.example/anthropic"
    )
    assert str(request.url) == "https://gw.example/anthropic/v1/messages"


def test_minimal_body_defaults_max_tokens() -> None:
    assert body_of([{"role": "user", "content": "hi"}]) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_max_tokens_given() -> None:
    assert body_of([{"role": "user", "content": "hi"}], {"max_tokens": 100})["max_tokens"] == 100
    both = {"max_tokens": 100, "max_completion_tokens": 200}
    assert body_of([{"role": "user", "content": "hi"}], both)["max_tokens"] == 200


def test_default_max_tokens_leaves_room_for_thinking() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    body = body_of([{"role": "user", "content": "hi"}], {"thinking": thinking})
    assert body["max_tokens"] == 4096 + 2048
    assert body["thinking"] == thinking


def test_system_and_developer_messages_become_top_level_system() -> None:
    body = body_of(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        ]
    )
    assert body["system"] == "You are terse.\n\nAnswer in French."
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_system_cache_control_keeps_blocks() -> None:
    body = body_of(
        [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Long doc", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": "hi"},
        ]
    )
    assert body["system"] == [{"type": "text", "text": "Long doc", "cache_control": {"type": "ephemeral"}}]


def test_params_mapping() -> None:
    body = body_of(
        [{"role": "user", "content": "hi"}],
        {
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 5,
            "stop": "END",
            "user": "user-42",
            "n": 1,
            "reasoning_effort": "low",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True},
            },
        },
    )
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["top_k"] == 5
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "user-42"}
    assert body["output_config"] == {
        "format": {"type": "json_schema", "schema": {"type": "object"}},
        "effort": "low",
    }
    assert "n" not in body
    assert "stop" not in body
    assert "user" not in body
    assert body_of([{"role": "user", "content": "x"}], {"stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]


def test_tools_and_tool_choice_mapping() -> None:
    body = body_of([{"role": "user", "content": "weather?"}], {"tools": [WEATHER_TOOL], "tool_choice": "required"})
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    assert body["tool_choice"] == {"type": "any"}
    msgs = [{"role": "user", "content": "x"}]
    assert body_of(msgs, {"tools": [WEATHER_TOOL], "tool_choice": "auto"})["tool_choice"] == {"type": "auto"}
    assert body_of(msgs, {"tools": [WEATHER_TOOL], "tool_choice": "none"})["tool_choice"] == {"type": "none"}
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert body_of(msgs, {"tools": [WEATHER_TOOL], "tool_choice": named})["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
    }
    assert body_of(msgs, {"tools": [WEATHER_TOOL], "parallel_tool_calls": False})["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    bare = {"type": "function", "function": {"name": "now"}}
    assert body_of(msgs, {"tools": [bare]})["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}
    ]


def test_tool_conversation_mapping() -> None:
    body = body_of(
        [
            {"role": "user", "content": "Weather in Oslo and Rome?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    },
                    {"id": "t2", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "rain"},
            {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "sun"}]},
            {"role": "user", "content": "Thanks. Summarise."},
        ]
    )
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "t2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "rain"},
                {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "sun"}]},
                {"type": "text", "text": "Thanks. Summarise."},
            ],
        },
    ]


def test_consecutive_same_role_messages_are_merged() -> None:
    body = body_of([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_images() -> None:
    body = body_of(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "system", "content": "only system"}], "messages"),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            "messages[0].content[0]",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///x.png"}}]}],
            "messages[0].content[0]",
        ),
        ([{"role": "tool", "content": "x"}], "messages[0]"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        (
            [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
                },
            ],
            "messages[1].tool_calls[0].function",
        ),
    ],
)
def test_untranslatable_messages_are_refused(messages: list[dict[str, Any]], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        body_of(messages)
    assert info.value.field == field


def test_text_and_tool_use_response() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json=message(
                content=[
                    {"type": "thinking", "thinking": "Need weather.", "signature": "sig"},
                    {"type": "text", "text": "Let me check. "},
                    {"type": "text", "text": "One moment."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
                stop_reason="tool_use",
                usage={
                    "input_tokens": 100,
                    "output_tokens": 30,
                    "cache_creation_input_tokens": 5,
                    "cache_read_input_tokens": 50,
                },
            ),
        )

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        resp = complete(client, ROUTE, [{"role": "user", "content": "hi"}], {}, api_key=KEY, api_base=BASE, timeout_s=5)
    assert str(seen[0].url) == "https://api.anthropic.com/v1/messages"
    assert resp.provider == "anthropic"
    assert resp.id == "msg_01"
    assert resp.object == "chat.completion"
    assert resp.model == "claude-sonnet-4-5-20250929"
    msg = resp.choices[0].message
    assert msg.role == "assistant"
    assert msg.content == "Let me check. One moment."
    assert msg.tool_calls[0].id == "toolu_1"
    assert msg.tool_calls[0].type == "function"
    assert msg.tool_calls[0].function.name == "get_weather"
    assert json.loads(msg.tool_calls[0].function.arguments) == {"city": "Oslo"}
    assert msg["reasoning_content"] == "Need weather."
    assert msg["thinking_blocks"] == [{"type": "thinking", "thinking": "Need weather.", "signature": "sig"}]
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.choices[0].provider_specific_fields == {"native_finish_reason": "tool_use"}
    assert resp.usage.prompt_tokens == 155
    assert resp.usage.completion_tokens == 30
    assert resp.usage.total_tokens == 185
    details = resp.usage.prompt_tokens_details
    assert (details.cached_tokens, details["cache_creation_tokens"]) == (50, 5)  # an object, LiteLLM's names
    assert (resp.usage["cache_read_input_tokens"], resp.usage["cache_creation_input_tokens"]) == (50, 5)
    assert msg.reasoning_content == "Need weather."
    assert msg.provider_specific_fields == {"thinking_blocks": msg.thinking_blocks}
    assert msg.function_call is None
    assert resp.latency_ms is not None and resp._response_ms == resp.latency_ms
    assert resp._hidden_params["custom_llm_provider"] == "anthropic"
    assert resp._hidden_params["api_base"] == BASE
    assert resp._hidden_params["response_cost"] is not None and resp._hidden_params["response_cost"] > 0


def test_tool_only_response_has_no_content() -> None:
    body = message(content=[{"type": "tool_use", "id": "t", "name": "f", "input": {}}], stop_reason="tool_use")
    resp = parse_response(ROUTE, httpx.Response(200, json=body))
    assert resp.choices[0].message.content is None
    assert resp.choices[0].message.tool_calls[0].function.arguments == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("something_new", "stop"),  # unknown: LiteLLM's map_finish_reason says stop
    ],
)
def test_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    resp = parse_response(ROUTE, httpx.Response(200, json=message(stop_reason=stop_reason)))
    assert resp.choices[0].finish_reason == finish_reason
    assert resp.choices[0].provider_specific_fields == {"native_finish_reason": stop_reason}


def test_stop_sequence_is_kept() -> None:
    resp = parse_response(ROUTE, httpx.Response(200, json=message(stop_reason="stop_sequence", stop_sequence="END")))
    assert resp.choices[0]["stop_sequence"] == "END"
    assert resp.usage.prompt_tokens == 10
    assert resp.usage.total_tokens == 14


@pytest.mark.parametrize("missing", ["id", "content", "usage"])
def test_missing_required_keys_are_malformed(missing: str) -> None:
    body = message()
    del body[missing]
    with pytest.raises(MalformedResponseError, match=missing):
        parse_response(ROUTE, httpx.Response(200, json=body))
