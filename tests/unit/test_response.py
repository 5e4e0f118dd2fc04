"""The normalised ModelResponse: attribute and item access, printing, round trips."""

from __future__ import annotations

import json

import pytest

from batcher._response import Choice, Message, ModelResponse, ToolCall, Usage, mock_model_response, public_body

BODY = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 7,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 0},
    },
    "system_fingerprint": "fp_abc",
    "service_tier": "default",
}


def test_attribute_and_item_access_agree() -> None:
    resp = ModelResponse.model_validate(BODY)
    call = resp.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    assert resp["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert resp["choices"][0]["finish_reason"] == "tool_calls"
    assert resp["usage"]["total_tokens"] == 19
    assert resp["model"] == "gpt-4o-2024-08-06"


def test_unknown_fields_are_kept_and_reachable() -> None:
    resp = ModelResponse.model_validate(BODY)
    assert resp["service_tier"] == "default"
    assert resp.choices[0]["logprobs"] is None
    assert resp.choices[0].message["refusal"] is None
    assert resp.usage is not None
    assert resp.usage.prompt_tokens_details is not None
    assert resp.usage.prompt_tokens_details.cached_tokens == 0  # an object, as in the openai SDK
    assert resp.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert "service_tier" in resp
    assert resp.model_dump()["service_tier"] == "default"


def test_get_and_missing_keys() -> None:
    resp = ModelResponse.model_validate(BODY)
    assert resp.get("model") == "gpt-4o-2024-08-06"
    assert resp.get("nope") is None
    assert resp.get("nope", 5) == 5
    assert "nope" not in resp
    with pytest.raises(KeyError):
        resp["nope"]
    with pytest.raises(KeyError):
        resp["model_dump"]  # methods are not items


def test_setitem_and_dict_conversion() -> None:
    resp = ModelResponse.model_validate(BODY)
    resp["provider"] = "openai"
    assert resp.provider == "openai"
    as_dict = dict(resp)
    assert as_dict["id"] == "chatcmpl-123"
    assert "service_tier" in as_dict


def test_str_is_json() -> None:
    resp = ModelResponse.model_validate(BODY)
    printed = json.loads(str(resp))
    assert printed["id"] == "chatcmpl-123"
    assert printed["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert printed["service_tier"] == "default"
    assert json.loads(str(resp.choices[0].message))["role"] == "assistant"
    assert "ModelResponse(" in repr(resp)


def test_json_round_trip_is_lossless() -> None:
    resp = ModelResponse.model_validate(BODY)
    resp.provider = "openai"
    resp.latency_ms = 12.5
    dumped = resp.model_dump(mode="json")
    assert "provider" not in dumped and "latency_ms" not in dumped  # private, as LiteLLM's are
    stored = resp.stored_body()
    assert stored == {**dumped, "_hidden_params": {"custom_llm_provider": "openai"}, "_response_ms": 12.5}
    again = ModelResponse.model_validate(stored)
    assert again == resp
    assert again.stored_body() == stored
    assert again.latency_ms == 12.5 and again.provider == "openai"
    assert ModelResponse.model_validate_json(json.dumps(stored)) == resp
    assert public_body(stored) == dumped


def test_bodies_stored_before_hidden_params_read_the_same() -> None:
    """Older bodies kept provider and latency_ms at the top and the native reason on the choice."""
    old = {**BODY, "provider": "anthropic", "latency_ms": 7.0}
    old["choices"] = [{**BODY["choices"][0], "finish_reason": None, "native_finish_reason": "pause"}]  # type: ignore[index]
    resp = ModelResponse.model_validate(old)
    assert (resp.provider, resp.latency_ms, resp._response_ms) == ("anthropic", 7.0, 7.0)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].provider_specific_fields == {"native_finish_reason": "pause"}
    assert "native_finish_reason" not in resp.choices[0]


def test_defaults_and_usage_total() -> None:
    resp = ModelResponse(
        id="x",
        created=1,
        model="m",
        choices=[Choice(message=Message(content="hi"))],
        usage=Usage.model_validate({"prompt_tokens": 3, "completion_tokens": 4}),
    )
    assert resp.object == "chat.completion"
    assert resp.system_fingerprint is None
    assert resp.provider is None
    assert resp.choices[0].index == 0
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.tool_calls is None
    assert resp.usage is not None
    assert resp.usage.total_tokens == 7


def test_finish_reason_is_one_of_openais_five() -> None:
    """As LiteLLM's Choices: a provider's reason is mapped (unknown or missing: stop), the native one kept."""
    end_turn = Choice.model_validate({"message": {"content": "x"}, "finish_reason": "end_turn"})
    assert end_turn.finish_reason == "stop"
    assert end_turn.provider_specific_fields == {"native_finish_reason": "end_turn"}
    assert Choice.model_validate({"message": {}, "finish_reason": "whatever"}).finish_reason == "stop"
    assert Choice.model_validate({"message": {}, "finish_reason": None}).finish_reason == "stop"
    for reason in ("stop", "length", "tool_calls", "content_filter", "function_call"):
        choice = Choice.model_validate({"message": {}, "finish_reason": reason})
        assert (choice.finish_reason, choice.provider_specific_fields) == (reason, None)
    assert Choice(message=Message(), finish_reason="end_turn").finish_reason == "stop"  # type: ignore[arg-type]


def test_tool_call_defaults_to_function() -> None:
    call = ToolCall.model_validate({"id": "c", "function": {"name": "f"}})
    assert call.type == "function"
    assert call.function.arguments == "{}"


def test_mock_model_response() -> None:
    resp = mock_model_response("It is sunny today", model="gpt-4o")
    assert resp.model == "gpt-4o"
    assert resp.id.startswith("chatcmpl-mock-")
    assert resp["choices"][0]["message"]["content"] == "It is sunny today"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 4
    assert resp.usage.prompt_tokens == 0
    assert resp.usage.total_tokens == 4
    with_prompt = mock_model_response(
        "ok",
        model="m",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "how are you"}]},
        ],
    )
    assert with_prompt.usage is not None
    assert with_prompt.usage.prompt_tokens == 5
    assert with_prompt.usage.total_tokens == 6
    assert ModelResponse.model_validate(resp.model_dump(mode="json")) == resp
