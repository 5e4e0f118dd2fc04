"""Checks of user input, run before anything is stored or enqueued.

Every error names the field (``messages[3][0].role``) and says how to fix it. These run
once per prompt on submission paths of 100,000 prompts, so they are plain Python checks
rather than a pydantic model per message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from batcher._exceptions import InvalidRequestError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Keyword arguments batcher itself consumes; every other keyword is a provider parameter.
_CALL_OPTIONS = frozenset(
    {
        "api_key",
        "api_base",
        "base_url",
        "timeout",
        "request_timeout",
        "mock_response",
        "drop_params",
        "num_retries",
        "max_workers",
        "completion_window",
        "metadata",
    }
)

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_WINDOW_UNITS_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


@dataclass(slots=True)
class CallOptions:
    """The batcher-level options of one call; ``params`` are what the provider receives."""

    params: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None
    api_base: str | None = None
    timeout_s: float | None = None
    mock_response: str | None = None
    drop_params: bool = False
    max_attempts: int | None = None
    deadline: timedelta | None = None
    metadata: dict[str, Any] | None = None


def split_call_kwargs(kwargs: Mapping[str, Any]) -> CallOptions:
    """Separate batcher's options from provider parameters. ``None`` values mean "not set"."""
    opts = CallOptions()
    for key, value in kwargs.items():
        if value is None or key == "max_workers":  # max_workers: LiteLLM's thread count; workers scale here
            continue
        if key not in _CALL_OPTIONS:
            opts.params[key] = value
    api_key = kwargs.get("api_key")
    if api_key is not None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise InvalidRequestError("must be a non-empty string", field="api_key")
        opts.api_key = api_key
    base = kwargs.get("api_base") or kwargs.get("base_url")
    if base is not None:
        if not isinstance(base, str) or not base.startswith(("http://", "https://")):
            raise InvalidRequestError("must be an http(s) URL such as https://api.openai.com/v1", field="api_base")
        opts.api_base = base
    timeout = kwargs.get("timeout", kwargs.get("request_timeout"))
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidRequestError("must be a positive number of seconds", field="timeout")
        opts.timeout_s = float(timeout)
    if (mock := kwargs.get("mock_response")) is not None:
        if not isinstance(mock, str):
            raise InvalidRequestError("must be the text of the canned answer", field="mock_response")
        opts.mock_response = mock
    opts.drop_params = bool(kwargs.get("drop_params") or False)
    if (retries := kwargs.get("num_retries")) is not None:
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 49:
            raise InvalidRequestError("must be a whole number from 0 to 49", field="num_retries")
        opts.max_attempts = retries + 1
    if (window := kwargs.get("completion_window")) is not None:
        opts.deadline = parse_window(window)
    if (metadata := kwargs.get("metadata")) is not None:
        if not isinstance(metadata, dict):
            raise InvalidRequestError("must be a JSON object", field="metadata")
        opts.metadata = metadata
    return opts


def parse_window(value: Any) -> timedelta:
    """``"24h"``, ``"30m"``, a number of seconds or a ``timedelta`` -> ``timedelta``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _WINDOW.match(value)):
        seconds = float(match.group(1)) * _WINDOW_UNITS_S[match.group(2)]
    else:
        raise InvalidRequestError(
            f"{value!r} is not a duration; use e.g. '24h', '30m', '90s' or a number of seconds",
            field="completion_window",
        )
    if seconds <= 0:
        raise InvalidRequestError("must be a positive duration", field="completion_window")
    return timedelta(seconds=seconds)


def validate_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    """One conversation: a non-empty list of ``{"role": ..., "content": ...}`` objects."""
    if not isinstance(messages, list):
        raise InvalidRequestError(
            f"must be a list of messages like [{{'role': 'user', 'content': 'hi'}}], got {type(messages).__name__}",
            field=where,
        )
    if not messages:
        raise InvalidRequestError("is empty; a conversation needs at least one message", field=where)
    for i, message in enumerate(messages):
        here = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(
                f"must be an object like {{'role': 'user', 'content': 'hi'}}, got {type(message).__name__}",
                field=here,
            )
        role = message.get("role")
        if role is None:
            raise InvalidRequestError("is missing; add 'role': 'user' (or system/assistant/tool)", field=f"{here}.role")
        if role not in ROLES:
            raise InvalidRequestError(
                f"{role!r} is not a role; use one of {', '.join(sorted(ROLES))}", field=f"{here}.role"
            )
        if "content" not in message:
            raise InvalidRequestError(
                "is missing; every message needs 'content' (a string, a list of content parts, "
                "or null for an assistant message with tool_calls)",
                field=f"{here}.content",
            )
        content = message["content"]
        if content is None:
            if not (role == "assistant" and message.get("tool_calls")):
                raise InvalidRequestError(
                    "is null; only an assistant message with tool_calls may have no content",
                    field=f"{here}.content",
                )
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or "type" not in part:
                    raise InvalidRequestError(
                        "must be a content part such as {'type': 'text', 'text': '...'}",
                        field=f"{here}.content[{j}]",
                    )
        elif not isinstance(content, str):
            raise InvalidRequestError(
                f"must be a string or a list of content parts, got {type(content).__name__}",
                field=f"{here}.content",
            )
        if role == "tool" and not message.get("tool_call_id"):
            raise InvalidRequestError(
                "is missing; a tool message answers a tool call and needs its id",
                field=f"{here}.tool_call_id",
            )
    return messages


def check_conversations_shape(messages: Any) -> None:
    """``batch_completion`` takes a list of conversations; catch the flat-list mistake early."""
    if not isinstance(messages, list | tuple):
        raise InvalidRequestError(
            "must be a list of conversations, e.g. [[{'role': 'user', 'content': 'hi'}], ...]",
            field="messages",
        )
    if not messages:
        raise InvalidRequestError("is empty; pass at least one conversation", field="messages")
    if isinstance(messages[0], dict):
        raise InvalidRequestError(
            "is a flat list of messages, but batch_completion takes a list of conversations: "
            "wrap each prompt in its own list, e.g. messages=[[{'role': 'user', 'content': 'hi'}]]",
            field="messages",
        )


def check_single_conversation(messages: Any, *, sender: str, example_prefix: str) -> None:
    """Fan-outs (fastest, gather-all) send one conversation to several models; catch a list of them.

    ``sender`` and ``example_prefix`` word the error for where it came from: ``"this call"`` /
    ``"messages="`` for Python callers, ``"this kind"`` / ``""`` for the HTTP API's JSON body.
    """
    if isinstance(messages, list) and messages and isinstance(messages[0], list):
        raise InvalidRequestError(
            f"is a list of conversations, but {sender} sends one conversation to several models: "
            f"pass a single list of messages, e.g. {example_prefix}[{{'role': 'user', 'content': 'hi'}}]",
            field="messages",
        )


def to_json(value: Any) -> str:
    """The compact JSON stored for messages and parameters (computed once per request)."""
    return json.dumps(value, separators=(",", ":"))


def check_size(messages_json: str, params_json: str | None, where: str, limit: int) -> None:
    """Refuse a request whose JSON is larger than ``BATCHER_MAX_REQUEST_BYTES``."""
    size = len(messages_json) + (len(params_json) if params_json else 0)
    if size > limit:
        raise InvalidRequestError(
            f"is {size:,} bytes of JSON, over the limit of {limit:,}; shorten it or raise BATCHER_MAX_REQUEST_BYTES",
            field=where,
        )
