"""Each input rule of issue 11 on its own: nesting, text Postgres cannot store, NaN, parameter types and
ranges, options, completion windows, file lines; the HTTP schema agreeing with the checks; the API's
503 for an unreachable database and its ``Allow`` headers."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher._config import Settings
from batcher._exceptions import InvalidRequestError, UnknownModelError
from batcher._files import read_jsonl
from batcher._providers import resolve_route
from batcher._validation import (
    MAX_COMPLETION_WINDOW_S,
    MAX_JSON_DEPTH,
    MAX_TIMEOUT_S,
    PARAM_TYPES,
    WINDOW_PATTERN,
    NestedTooDeeplyError,
    UnstorableValueError,
    _up_to,
    check_json_value,
    check_param,
    check_request,
    check_size,
    parse_window,
    split_call_kwargs,
    to_json,
    validate_messages,
)
from batcher.api.schemas import MODEL_PATTERN, params_schema


def nested(depth: int) -> list[Any]:
    """``depth`` lists, one inside the other."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --- nesting ----------------------------------------------------------------------------------------


def test_nesting_up_to_the_limit_is_fine_and_one_more_is_refused() -> None:
    check_json_value(nested(MAX_JSON_DEPTH), "v")
    with pytest.raises(NestedTooDeeplyError, match=r"^v: is nested more than 64 levels deep"):
        check_json_value(nested(MAX_JSON_DEPTH + 1), "v")


def test_a_cycle_is_refused_as_too_deep() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(NestedTooDeeplyError):
        check_json_value(loop, "v")


def test_deep_message_values_name_the_message() -> None:
    with pytest.raises(NestedTooDeeplyError, match=r"^m\[0\]: is nested"):
        validate_messages([{"role": "user", "content": "x", "extra": nested(10_000)}], "m")
    parts = [{"type": "text", "text": "x", "x": nested(MAX_JSON_DEPTH - 4)}]
    assert validate_messages([{"role": "user", "content": parts}], "m")  # 64 levels in all: fine


def test_deep_parameters_are_refused() -> None:
    with pytest.raises(NestedTooDeeplyError, match=r"^extra_body: is nested"):
        split_call_kwargs({"extra_body": {"a": nested(100)}})
    with pytest.raises(NestedTooDeeplyError, match=r"^metadata: is nested"):
        split_call_kwargs({"metadata": {"a": nested(100)}})


# --- text, numbers and types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a\x00b", "holds a NUL character"),
        ("a\ud800b", "holds an unpaired UTF-16 surrogate"),
        ("\udc00", "holds an unpaired UTF-16 surrogate"),
        (float("nan"), "is nan"),
        (float("-inf"), "is -inf"),
        ({"a", "b"}, "is a set"),
        (b"bytes", "is a bytes"),
        ({("a",): 1}, "JSON object keys are strings"),
        ({"k\x00": 1}, "holds a NUL character"),
    ],
)
def test_values_postgres_cannot_store_are_refused(value: Any, message: str) -> None:
    with pytest.raises(UnstorableValueError, match=re.escape(message)):
        check_json_value({"x": value}, "metadata")


def test_fine_text_passes() -> None:
    check_json_value({"emoji": "🙂", "text": "\\u0000 as text", "accents": "éà", 3: [1.5, None, True]}, "m")


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("a\x00b", "messages[4][0].content"),
        ("x\ud83d", "messages[4][0].content"),
        ("\udfff🙂", "messages[4][0].content"),
    ],
)
def test_message_text_is_checked_on_its_json(content: str, field: str) -> None:
    messages = validate_messages([{"role": "user", "content": content}], "messages[4]")
    with pytest.raises(UnstorableValueError, match=re.escape(field)):
        check_size(to_json(messages), None, "messages[4]", 10**6)


@pytest.mark.parametrize(
    "content", ["plain", "🙂 emoji (a surrogate pair in JSON)", "\\u0000 written out", "\\ud800 too"]
)
def test_message_text_that_can_be_stored_passes(content: str) -> None:
    messages = validate_messages([{"role": "user", "content": content}], "messages[0]")
    check_size(to_json(messages), None, "messages[0]", 10**6)


def test_file_lines_name_the_line_for_bad_text() -> None:
    text = to_json([{"role": "user", "content": "a\x00"}])
    with pytest.raises(UnstorableValueError, match=re.escape("line 7: messages[0].content")):
        check_size(text, None, "line 7", 10**6)


def test_a_role_that_is_not_text_is_a_clean_error() -> None:
    with pytest.raises(InvalidRequestError, match=r"m\[0\]\.role: \{\} is not a role"):
        validate_messages([{"role": {}, "content": "x"}], "m")


def test_model_and_custom_id_must_be_storable_text() -> None:
    with pytest.raises(UnstorableValueError, match=r"^line 2: model: holds a NUL"):
        check_request("gpt-4o\x00", None, None, "line 2")
    with pytest.raises(UnstorableValueError, match=r"^custom_id: holds an unpaired"):
        check_request("gpt-4o", "id\ud800", None, "")
    with pytest.raises(InvalidRequestError, match=r"^line 3: custom_id must be a string"):
        check_request("gpt-4o", 12, None, "line 3")
    with pytest.raises(InvalidRequestError, match=r"^line 4: temperature: must be a number from 0 to 2"):
        check_request("gpt-4o", "a", {"temperature": "hot"}, "line 4")
    check_request("gpt-4o", "a", {"temperature": 0.5, "extra_body": {"k": [1]}}, "line 5")


# --- OpenAI parameters --------------------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
GOOD: dict[str, list[Any]] = {
    "temperature": [0, 0.7, 2, 1],
    "top_p": [0, 0.5, 1],
    "presence_penalty": [-2, 0, 2.0],
    "frequency_penalty": [-2.0, 1.5],
    "n": [1, 128, 2.0],
    "max_tokens": [1, 4096],
    "max_completion_tokens": [1, 10**6],
    "seed": [-(2**63), 0, 2**63 - 1],
    "stop": ["\n", ["a"], ["a", "b", "c", "d"]],
    "logit_bias": [{}, {"50256": -100}, {12: 100}],
    "logprobs": [True, False],
    "top_logprobs": [0, 20],
    "response_format": [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True}},
    ],
    "tools": [[], [TOOL], [TOOL] * 128, [{"type": "custom", "custom": {"name": "grep"}}]],
    "tool_choice": ["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}],
    "parallel_tool_calls": [True],
    "user": ["user-1"],
    "stream": [False],
    "extra_body": [{"top_k": 5}],
    "extra_headers": [{"X-Team": "a"}],
}
BAD: dict[str, list[Any]] = {
    "temperature": ["hot", -0.1, 2.1, True, "1", float("nan"), float("inf"), [1]],
    "top_p": [1.01, -1, "0.5", False],
    "presence_penalty": [-2.5, 3, "0"],
    "frequency_penalty": [2.01, {}],
    "n": [0, 129, 1.5, True, "2"],
    "max_tokens": [0, -5, 1.5, "100"],
    "max_completion_tokens": [0, [1]],
    "seed": [2**63, -(2**63) - 1, 1.5, "1"],
    "stop": [5, [], ["a"] * 5, ["a", 1], [None]],
    "logit_bias": [{"x": 1}, {"1": 101}, {"1": -101}, {"1": "5"}, [1], {"1": 1.5}],
    "logprobs": [1, "true"],
    "top_logprobs": [21, -1, True],
    "response_format": [
        {"type": "xml"},
        {},
        "json",
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "a b"}},
    ],
    "tools": ["x", [{}], [{"type": "function", "function": {}}], [{"type": "web"}], [TOOL] * 129],
    "tool_choice": ["sometimes", {"type": "function"}, 1],
    "parallel_tool_calls": ["yes", 0],
    "user": [5, ["u"]],
    "stream": [True, 0, "false"],
    "extra_body": [[], "x"],
    "extra_headers": [{"a": 1}, "x"],
}


def test_every_checked_parameter_has_cases() -> None:
    assert set(GOOD) == set(BAD) == set(PARAM_TYPES)


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in GOOD.items() for v in vs])
def test_parameters_openai_takes_pass(name: str, value: Any) -> None:
    check_param(name, value, name)
    split_call_kwargs({name: value})


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in BAD.items() for v in vs])
def test_parameters_of_the_wrong_type_or_range_are_refused_by_name(name: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        split_call_kwargs({name: value})
    assert info.value.field is not None and info.value.field.startswith(name), info.value
    assert f"{name} must be" in str(info.value) or "must be" in str(info.value)


def test_a_nested_parameter_error_names_the_nested_field() -> None:
    with pytest.raises(InvalidRequestError) as info:
        split_call_kwargs({"tools": [TOOL, {"type": "function", "function": {"name": "bad name"}}]})
    assert info.value.field == "tools[1].function.name"


def test_unknown_parameters_are_left_to_the_provider() -> None:
    assert split_call_kwargs({"top_k": "anything", "reasoning_effort": "low"}).params == {
        "top_k": "anything",
        "reasoning_effort": "low",
    }


# --- options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout": MAX_TIMEOUT_S + 1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": 10, "request_timeout": -1}, "request_timeout"),
        ({"drop_params": "yes"}, "drop_params"),
        ({"num_retries": 1.5}, "num_retries"),
        ({"max_workers": 0}, "max_workers"),
        ({"mock_response": "a\x00"}, "mock_response"),
        ({"api_key": "sk-\x00"}, "api_key"),
        ({"metadata": {"a": float("inf")}}, "metadata.a"),
    ],
)
def test_options_are_checked(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        split_call_kwargs(kwargs)
    assert info.value.field == field


def test_whole_numbers_written_as_floats_are_whole_numbers() -> None:
    options = split_call_kwargs({"num_retries": 2.0, "n": 3.0, "max_workers": 4.0})
    assert options.max_attempts == 3


# --- completion windows -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("1s", timedelta(seconds=1)),
        ("30d", timedelta(days=30)),
        ("720h", timedelta(days=30)),
        ("43200m", timedelta(days=30)),
        (MAX_COMPLETION_WINDOW_S, timedelta(days=30)),
        (timedelta(hours=2), timedelta(hours=2)),
    ],
)
def test_windows_up_to_thirty_days(value: Any, expected: timedelta) -> None:
    assert parse_window(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "31d",
        "721h",
        "2592001s",
        "99999999999999d",
        "9" * 400 + "s",
        "0s",
        "1.5h",
        "24 h",
        "024h",
        "1e9h",
        "",
        0,
        MAX_COMPLETION_WINDOW_S + 1,
        float("nan"),
        float("inf"),
        1e300,
        True,
        timedelta(days=31),
    ],
)
def test_windows_out_of_range_or_form_are_refused(value: Any) -> None:
    with pytest.raises(InvalidRequestError, match=r"^completion_window: "):
        parse_window(value)


@given(st.text(alphabet="0123456789smhd. \n-", max_size=9))
@settings(max_examples=500, derandomize=True, database=None)
def test_the_window_pattern_is_what_parse_window_accepts(value: str) -> None:
    try:
        parse_window(value)
        accepted = True
    except InvalidRequestError:
        accepted = False
    assert accepted == (re.search(WINDOW_PATTERN, value) is not None)


@pytest.mark.parametrize("limit", [1, 9, 10, 30, 99, 100, 720, 1000, 43_200])
def test_up_to_matches_exactly_one_to_n(limit: int) -> None:
    pattern = re.compile(f"^{_up_to(limit)}$")
    assert [k for k in range(0, limit + 500) if pattern.match(str(k))] == list(range(1, limit + 1))
    assert not pattern.match(f"0{limit}")


# --- files ---------------------------------------------------------------------------------------------


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'"one"\n' * 5_000 + b'"t\xe9o"\n')  # the bad line is far past the text reader's buffer
    with (
        path.open() as f,
        pytest.raises(InvalidRequestError, match=r"^line 5001: is not UTF-8 \(byte 0xe9 at column 3\)"),
    ):
        list(read_jsonl(f, default_model="gpt-4o"))


def test_a_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf"one"\n"two"\n')
    with path.open() as f:
        assert len(list(read_jsonl(f, default_model="gpt-4o"))) == 2


def test_a_line_nested_too_deeply_to_parse_is_named() -> None:
    lines = io.StringIO('"ok"\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(NestedTooDeeplyError, match=r"^line 2: is nested too deeply"):
        list(read_jsonl(lines, default_model="gpt-4o"))


def test_a_text_stream_that_fails_to_decode_names_a_line() -> None:
    stream = io.TextIOWrapper(io.BytesIO(b'"a"\n"\xff"\n'), encoding="utf-8")
    stream.buffer  # noqa: B018 - a real text file: read as bytes, line by line
    with pytest.raises(InvalidRequestError, match=r"^line 2: is not UTF-8"):
        list(read_jsonl(stream, default_model="gpt-4o"))


# --- the HTTP schema says what the checks do -------------------------------------------------------------


@given(st.text(alphabet="abcdgptoOGPT1234567890-/:_ lcmnhaue\n", max_size=14))
@settings(max_examples=2_000, derandomize=True, database=None)
def test_the_model_pattern_is_what_routing_accepts(model: str) -> None:
    try:
        resolve_route(model)
        routed = bool(model.strip())
    except UnknownModelError:
        routed = False
    assert routed == (re.search(MODEL_PATTERN, model) is not None), model


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "GPT-4O",
        "o1",
        "o3-mini",
        "o10",
        "claude-3-5-haiku",
        "command",
        "command-r",
        "c4ai-aya-23",
        "openai/x",
        "anthropic/x",
        "cohere/x",
        "cohere_chat/x",
        "ft:gpt-4o:org",
        "chatgpt-4o-latest",
    ],
)
def test_routed_models_match_the_pattern(model: str) -> None:
    resolve_route(model)
    assert re.search(MODEL_PATTERN, model)


@pytest.mark.parametrize("model", ["o", "o0", "openai/", "llama3", "text-davinci-003", "commander", "Openai/x"])
def test_unrouted_models_do_not_match_the_pattern(model: str) -> None:
    with pytest.raises(UnknownModelError):
        resolve_route(model)
    assert not re.search(MODEL_PATTERN, model)


def _keywords(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = set(node)
        for key, value in node.items():
            if key not in ("properties", "patternProperties"):
                found |= _keywords(value)
            else:
                for sub in value.values():
                    found |= _keywords(sub)
        return found
    if isinstance(node, list):
        return set().union(*(_keywords(v) for v in node)) if node else set()
    return set()


def test_the_params_schema_uses_only_json_schema_keywords() -> None:
    schema = params_schema()
    assert set(PARAM_TYPES) <= set(schema["anyOf"][0]["properties"])
    allowed = {
        "type", "properties", "additionalProperties", "patternProperties", "propertyNames", "items", "anyOf",
        "allOf", "oneOf", "not", "required", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
        "minItems", "maxItems", "minLength", "maxLength", "maxProperties", "pattern", "description",
        "discriminator", "mapping", "propertyName", "default",
    }  # fmt: skip
    assert _keywords(schema) <= allowed, _keywords(schema) - allowed
    json.dumps(schema)  # serialisable as it is


# --- the service: 503 when Postgres is away, Allow on 405 ------------------------------------------------


def _app_without_a_database() -> TestClient:
    from batcher.api.app import create_app

    settings = Settings(
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        redis_url="redis://127.0.0.1:1/0",
    )
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_an_unreachable_database_is_a_503_with_retry_after() -> None:
    with _app_without_a_database() as client:
        response = client.get("/v1/jobs", headers={"Authorization": "Bearer bk-anything"})
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"].isdigit()
        assert response.json()["error"]["message"] == "The database is unavailable; retry later."
        assert response.json()["error"]["code"] == "service_unavailable"
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/files", "GET, HEAD, POST"),
        ("PUT", "/v1/files/file-1", "DELETE, GET, HEAD"),
        ("DELETE", "/v1/batches", "GET, HEAD, POST"),
        ("DELETE", "/v1/jobs/run", "POST"),  # the path itself, as the schema has it (not /v1/jobs/{job_id})
    ],
)
def test_405_lists_every_method_of_the_path(method: str, path: str, allow: str) -> None:
    with _app_without_a_database() as client:
        response = client.request(method, path)
        assert response.status_code == 405
        assert response.headers["allow"] == allow
        assert response.json()["error"]["message"].startswith(f"{method} is not allowed")
