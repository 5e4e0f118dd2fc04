"""check_params: what each provider takes, refuses, or drops with drop_params=True."""

from __future__ import annotations

from typing import Any

import pytest

from batcher._exceptions import InvalidRequestError, UnsupportedParamsError
from batcher._providers import PROVIDERS, Route, build_request, check_params

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_supported_params_are_kept_unchanged() -> None:
    params = {"temperature": 0.5, "max_tokens": 10, "stop": ["x"], "tools": [TOOL], "tool_choice": "auto"}
    for provider in PROVIDERS:
        assert check_params(provider, params, drop_params=False) == params


@pytest.mark.parametrize(
    ("provider", "param", "value"),
    [
        ("anthropic", "logit_bias", {"50256": -100}),
        ("anthropic", "presence_penalty", 0.5),
        ("anthropic", "seed", 1),
        ("anthropic", "logprobs", True),
        ("cohere", "user", "u1"),
        ("cohere", "logit_bias", {"1": 1}),
        ("cohere", "parallel_tool_calls", False),
        ("openai", "top_k", 5),
        ("openai", "made_up", 1),
    ],
)
def test_unsupported_param_names_param_provider_and_fix(provider: str, param: str, value: Any) -> None:
    with pytest.raises(UnsupportedParamsError) as info:
        check_params(provider, {"temperature": 0.1, param: value}, drop_params=False)
    err = info.value
    assert err.field == param
    assert isinstance(err, InvalidRequestError)
    text = str(err)
    assert repr(param) in text
    assert provider in text
    assert "drop_params=True" in text


@pytest.mark.parametrize(
    ("provider", "param", "value"),
    [
        ("anthropic", "n", 2),
        ("cohere", "n", 3),
        ("anthropic", "response_format", {"type": "json_object"}),
        ("anthropic", "tool_choice", "sometimes"),
        ("cohere", "tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("anthropic", "tools", [{"type": "web_search_preview"}]),
        ("cohere", "tools", [{"type": "function", "function": {}}]),
        ("anthropic", "reasoning_effort", "minimal"),
        ("cohere", "response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
    ],
)
def test_unsupported_values_are_refused_or_dropped(provider: str, param: str, value: Any) -> None:
    with pytest.raises(UnsupportedParamsError) as info:
        check_params(provider, {param: value}, drop_params=False)
    assert info.value.field == param
    assert "drop_params=True" in str(info.value)
    assert check_params(provider, {param: value, "temperature": 1}, drop_params=True) == {"temperature": 1}


def test_drop_params_drops_only_the_unsupported() -> None:
    params = {"temperature": 0.1, "logit_bias": {"1": 2}, "seed": 4, "user": "u", "top_p": 0.5}
    assert check_params("anthropic", params, drop_params=True) == {
        "temperature": 0.1,
        "user": "u",
        "top_p": 0.5,
    }
    assert check_params("cohere", params, drop_params=True) == {"temperature": 0.1, "seed": 4, "top_p": 0.5}
    assert check_params("openai", params, drop_params=True) == params


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("drop_params", [False, True])
def test_stream_is_always_refused(provider: str, drop_params: bool) -> None:
    with pytest.raises(UnsupportedParamsError) as info:
        check_params(provider, {"stream": True}, drop_params=drop_params)
    assert info.value.field == "stream"
    assert "streaming is not supported" in str(info.value)


def test_stream_false_and_none_values_are_dropped_silently() -> None:
    assert check_params("anthropic", {"stream": False, "seed": None, "temperature": None}, drop_params=False) == {}


def test_anthropic_and_cohere_accept_n_equal_one() -> None:
    assert check_params("anthropic", {"n": 1}, drop_params=False) == {"n": 1}
    assert check_params("cohere", {"n": 1}, drop_params=False) == {"n": 1}
    assert check_params("openai", {"n": 4}, drop_params=False) == {"n": 4}


def test_extra_body_must_be_a_dict() -> None:
    assert check_params("cohere", {"extra_body": {"priority": 1}}, drop_params=False) == {"extra_body": {"priority": 1}}
    with pytest.raises(UnsupportedParamsError):
        check_params("cohere", {"extra_body": "x"}, drop_params=True)


def test_unknown_provider() -> None:
    with pytest.raises(InvalidRequestError):
        check_params("azure", {}, drop_params=False)


def test_build_request_checks_params_too() -> None:
    with pytest.raises(UnsupportedParamsError) as info:
        build_request(
            Route("anthropic", "claude-x"),
            [{"role": "user", "content": "hi"}],
            {"logit_bias": {}},
            api_key="k",
            api_base="https://api.anthropic.com",
        )
    assert info.value.field == "logit_bias"
    with pytest.raises(UnsupportedParamsError):
        build_request(
            Route("openai", "gpt-4o"),
            [{"role": "user", "content": "hi"}],
            {"stream": True},
            api_key="k",
            api_base="https://api.openai.com/v1",
        )


def test_build_request_refuses_a_bad_base_url() -> None:
    with pytest.raises(InvalidRequestError) as info:
        build_request(Route("openai", "gpt-4o"), [], {}, api_key=None, api_base="localhost:8000")
    assert info.value.field == "api_base"
