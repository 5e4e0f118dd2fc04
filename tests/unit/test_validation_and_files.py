from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest

from batcher._exceptions import InvalidRequestError
from batcher._files import read_jsonl
from batcher._secrets import redact, strip_url_credentials
from batcher._validation import parse_window, split_call_kwargs, validate_messages


def test_split_call_kwargs_separates_options_from_provider_params() -> None:
    opts = split_call_kwargs(
        {
            "temperature": 0.5,
            "max_tokens": None,
            "api_key": "sk-x",
            "timeout": 30,
            "num_retries": 2,
            "max_workers": 100,
            "completion_window": "2h",
            "mock_response": "hi",
        }
    )
    assert opts.params == {"temperature": 0.5}
    assert (opts.api_key, opts.timeout_s, opts.max_attempts, opts.mock_response) == ("sk-x", 30.0, 3, "hi")
    assert opts.deadline == timedelta(hours=2)


@pytest.mark.parametrize("window", ["tomorrow", "0s", -5, "5 weeks"])
def test_bad_completion_window(window: object) -> None:
    with pytest.raises(InvalidRequestError, match="completion_window"):
        parse_window(window)


def test_tool_message_needs_its_call_id() -> None:
    with pytest.raises(InvalidRequestError, match=r"m\[1\]\.tool_call_id"):
        validate_messages([{"role": "user", "content": "x"}, {"role": "tool", "content": "42"}], "m")


def test_assistant_with_tool_calls_may_have_null_content() -> None:
    msgs = [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]
    assert validate_messages(msgs, "m") == msgs
    with pytest.raises(InvalidRequestError, match="only an assistant message with tool_calls"):
        validate_messages([{"role": "user", "content": None}], "m")


def test_jsonl_formats_and_line_numbers() -> None:
    text = "\n".join(
        [
            json.dumps("prompt"),
            "",
            json.dumps([{"role": "user", "content": "conv"}]),
            json.dumps({"model": "claude-3-haiku", "messages": [{"role": "user", "content": "obj"}], "top_p": 0.5}),
            json.dumps(
                {
                    "custom_id": "a",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "gpt-4o",
                        "messages": [{"role": "user", "content": "batch"}],
                        "seed": 1,
                    },
                }
            ),
        ]
    )
    specs = list(read_jsonl(io.StringIO(text), default_model="gpt-4o-mini"))
    assert [s.model for s in specs] == ["gpt-4o-mini", "gpt-4o-mini", "claude-3-haiku", "gpt-4o"]
    assert [s.where for s in specs] == ["line 1", "line 3", "line 4", "line 5"]
    assert specs[2].params == {"top_p": 0.5}
    assert (specs[3].custom_id, specs[3].params) == ("a", {"seed": 1})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: is not valid JSON"),
        ('{"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {}}', "method must be"),
        ('{"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {}}', "url must be"),
        (
            '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}',
            "custom_id 'a' is used twice",
        ),
        ("42", "must be a prompt string"),
    ],
)
def test_jsonl_errors_name_the_line(line: str, message: str) -> None:
    first = '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}'
    with pytest.raises(InvalidRequestError, match=message):
        list(read_jsonl(io.StringIO(first + "\n" + line + "\n"), default_model="gpt-4o"))


def test_line_without_model_and_no_default() -> None:
    with pytest.raises(InvalidRequestError, match="line 1: names no model"):
        list(read_jsonl(io.StringIO('"hi"\n'), default_model=None))


def test_redaction() -> None:
    assert redact("key sk-secret-123 leaked", ["sk-secret-123", None]) == "key *** leaked"
    assert strip_url_credentials("https://u:p@host/v1") == "https://***@host/v1"
    assert strip_url_credentials("https://host/v1") == "https://host/v1"
