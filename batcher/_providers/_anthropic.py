"""Anthropic Messages API (``POST {base}/v1/messages``).

Followed: the Claude API reference "Messages" (``platform.claude.com/docs/en/api/messages``)
and "Versions" pages, as typed by the ``anthropic`` Python SDK 2.14
(``types/message_create_params.py``, ``types/message.py``, ``types/stop_reason.py``,
``types/usage.py``, ``types/tool_param.py``, ``types/tool_choice_*_param.py``,
``types/tool_result_block_param.py``, ``types/image_block_param.py``,
``types/output_config_param.py``). Headers: ``x-api-key`` and ``anthropic-version:
2023-06-01`` (the version the API reference documents; the SDK itself now sends a newer
date, which only changes what it may opt into). Base URL as in the SDK:
``ANTHROPIC_BASE_URL=https://api.anthropic.com`` without ``/v1`` (a trailing ``/v1`` is
tolerated). Errors and rate limits: the "Errors" page (``{"type": "error", "error": {"type",
"message"}}``, 413 request_too_large, 529 overloaded_error, a ``request-id`` header) and the
"Rate limits" page (``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
remaining,reset}`` on every answer, resets as RFC 3339 timestamps).

Translation from OpenAI's chat format:

* ``system`` / ``developer`` messages, wherever they are, become the top-level ``system``
  (joined with blank lines; kept as text blocks if a part carries ``cache_control``).
* ``tool`` messages become ``tool_result`` blocks in a user turn; assistant ``tool_calls``
  become ``tool_use`` blocks (``arguments`` parsed from JSON); consecutive messages of one
  role are merged into one turn, with tool results first as the API requires.
* ``image_url`` parts become ``image`` blocks (``data:`` URLs as base64, http(s) as url).
* ``max_tokens`` is required by Anthropic: ``max_completion_tokens`` or ``max_tokens`` if
  given, else ``DEFAULT_MAX_TOKENS`` (4096), plus ``thinking.budget_tokens`` when thinking
  is enabled (thinking tokens count toward ``max_tokens``, which must exceed the budget).
* ``stop`` -> ``stop_sequences``; ``user`` -> ``metadata.user_id``; ``tools`` (function
  tools) -> ``{name, description, input_schema}``; ``tool_choice`` auto/none/required/named
  -> ``{"type": auto|none|any|tool}``; ``parallel_tool_calls=False`` ->
  ``tool_choice.disable_parallel_tool_use``; ``response_format`` json_schema ->
  ``output_config.format``; ``reasoning_effort`` -> ``output_config.effort``;
  ``temperature`` / ``top_p`` / ``top_k`` / ``thinking`` sent as given. Newer Claude models
  reject some sampling parameters (the SDK 1.0 dropped them from its signature; the API
  still takes them where the model does): the API's 400 then comes back as
  ``BadRequestError`` with Anthropic's message.

The answer: text blocks are joined into ``content``; ``tool_use`` blocks become
``tool_calls`` (``input`` as a JSON string); ``thinking`` blocks are kept as
``reasoning_content`` and ``thinking_blocks`` (LiteLLM's names, the blocks also in the message's
``provider_specific_fields``) so they can be sent back.
``stop_reason``: end_turn / stop_sequence / pause_turn -> stop, max_tokens /
model_context_window_exceeded -> length, tool_use -> tool_calls, refusal -> content_filter.
``prompt_tokens`` counts cache reads and writes too (input_tokens +
cache_creation_input_tokens + cache_read_input_tokens, as the Usage docs define the total);
``prompt_tokens_details.cached_tokens`` is cache_read_input_tokens (``cache_creation_tokens`` the
writes, LiteLLM's name), and both Anthropic counts stay on ``usage`` under their own names.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from batcher._exceptions import InvalidRequestError, ProviderServerError
from batcher._providers._adapter import ProviderAdapter, add_auth_headers
from batcher._providers._params import CHAT_PARAMS
from batcher._providers._retry_after import RateLimitInfo, parse_count, pick_reset, seconds_until
from batcher._providers._translate import (
    content_text,
    finish_reason_fields,
    named_tool_choice,
    openai_function_tools,
    stop_list,
    tool_arguments,
)
from batcher._response import FinishReason, ModelResponse

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicAdapter"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Content blocks already in Anthropic's format are passed through untouched.
_NATIVE_BLOCKS = frozenset({"image", "document", "search_result", "tool_result", "tool_use"})
_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


class AnthropicAdapter(ProviderAdapter):
    """OpenAI chat requests translated to the Messages API and back."""

    name = "anthropic"
    prefixes = ("anthropic/",)
    families = (r"^claude-",)
    api_key_env_vars = ("ANTHROPIC_API_KEY",)
    api_base_env_vars = ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_BASE")
    default_api_base = "https://api.anthropic.com"
    endpoint_path = "/v1/messages"
    base_suffixes = ("/v1",)
    supported_params = CHAT_PARAMS | {
        "user",
        "parallel_tool_calls",
        "reasoning_effort",
        # Anthropic's own, under their own names
        "top_k",
        "thinking",
    }
    # The "Errors" page: {"type": "error", "error": {"type", "message"}}; 529 is overloaded_error.
    error_type_statuses = {
        "invalid_request_error": 400,
        "authentication_error": 401,
        "billing_error": 402,
        "permission_error": 403,
        "not_found_error": 404,
        "request_too_large": 413,
        "rate_limit_error": 429,
        "api_error": 500,
        "timeout_error": 504,
        "overloaded_error": 529,
    }
    status_errors = {529: ProviderServerError}
    context_window_patterns = (r"prompt is too long", r"input is too long")
    request_id_headers = ("request-id",)

    def check_value(self, name: str, value: Any) -> str | None:
        """Values with no Anthropic equivalent."""
        if name == "n" and value != 1:
            return "Anthropic returns one completion per request"
        if name == "tools":
            return openai_function_tools(value)
        if name == "tool_choice":
            if value in ("auto", "none", "required") or named_tool_choice(value):
                return None
            return "use 'auto', 'none', 'required' or {'type': 'function', 'function': {'name'}}"
        if name == "response_format":
            kind = value.get("type") if isinstance(value, Mapping) else None
            if kind == "text":
                return None
            if kind == "json_schema":
                spec = value.get("json_schema")
                if isinstance(spec, Mapping) and isinstance(spec.get("schema"), Mapping):
                    return None
                return "json_schema.schema is missing"
            return "Anthropic only takes a JSON schema ({'type': 'json_schema', ...})"
        if name == "reasoning_effort" and value not in _EFFORTS:
            return f"Anthropic's effort levels are {', '.join(sorted(_EFFORTS))}"
        if name == "stop" and not _is_stop(value):
            return "stop must be a string or a list of strings"
        return None

    def authenticate(self, request: httpx.Request, api_key: str | None) -> None:
        """``x-api-key`` plus the API version header (which an extra header may choose)."""
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        add_auth_headers(request, api_key, headers)

    def error_details(self, body: Mapping[str, Any]) -> tuple[Any, Any] | None:
        """``{"type": "error", "error": {"type", "message"}}``."""
        err = body.get("error")
        return (err.get("message"), err.get("type")) if isinstance(err, Mapping) else None

    def rate_limit_wait(self, headers: httpx.Headers, now: datetime) -> float | None:
        """``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`` (RFC 3339 times)."""
        found: list[tuple[float, bool]] = []
        for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
            reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
            if not reset:
                continue
            try:
                when = datetime.fromisoformat(reset.strip())
            except ValueError:
                continue
            remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
            found.append((seconds_until(when, now), remaining == "0"))
        return pick_reset(found)

    def rate_limit_info(self, headers: httpx.Headers, now: datetime) -> RateLimitInfo | None:
        """``anthropic-ratelimit-requests-*`` and the token limits: ``tokens-*`` (the most restrictive limit
        in effect) when sent, else the tighter of ``input-tokens-*`` / ``output-tokens-*``. Limits are per
        minute; ``-reset`` is the RFC 3339 time the limit is fully replenished."""
        if "anthropic-ratelimit-requests-limit" not in headers and not any(
            f"anthropic-ratelimit-{kind}-limit" in headers for kind in _TOKEN_KINDS
        ):
            return None
        requests = self._limit_of(headers, "requests", now)
        tokens: tuple[int | None, int | None, float | None] = (None, None, None)
        for kind in _TOKEN_KINDS:
            found = self._limit_of(headers, kind, now)
            if found[0] is None and found[1] is None:
                continue
            if kind == "tokens":
                tokens = found
                break
            # The tighter of input and output: the one with less left, else the lower limit.
            if tokens == (None, None, None) or _tighter(found, tokens):
                tokens = found
        return RateLimitInfo(
            requests_limit=requests[0],
            requests_remaining=requests[1],
            requests_reset_s=requests[2],
            tokens_limit=tokens[0],
            tokens_remaining=tokens[1],
            tokens_reset_s=tokens[2],
        )

    @staticmethod
    def _limit_of(headers: httpx.Headers, kind: str, now: datetime) -> tuple[int | None, int | None, float | None]:
        reset_s: float | None = None
        reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
        if reset:
            try:
                reset_s = seconds_until(datetime.fromisoformat(reset.strip()), now)
            except ValueError:
                reset_s = None
        return (
            parse_count(headers.get(f"anthropic-ratelimit-{kind}-limit")),
            parse_count(headers.get(f"anthropic-ratelimit-{kind}-remaining")),
            reset_s,
        )

    def build_body(
        self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The Messages API body; see the module docstring for each mapping."""
        system, turns = convert_messages(messages)
        max_tokens = params.get("max_completion_tokens", params.get("max_tokens"))
        if max_tokens is None:
            # Thinking tokens count toward max_tokens, which must exceed the thinking budget.
            thinking = params.get("thinking")
            budget = thinking.get("budget_tokens") if isinstance(thinking, Mapping) else None
            max_tokens = DEFAULT_MAX_TOKENS + (budget if isinstance(budget, int) else 0)
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
        if system is not None:
            body["system"] = system
        for same in ("temperature", "top_p", "top_k", "thinking"):
            if same in params:
                body[same] = params[same]
        if "stop" in params:
            body["stop_sequences"] = stop_list(params["stop"])
        if "user" in params:
            body["metadata"] = {"user_id": params["user"]}
        if "tools" in params:
            body["tools"] = [_tool(t) for t in params["tools"]]
        tool_choice = _tool_choice(params.get("tool_choice"))
        if params.get("parallel_tool_calls") is False:
            tool_choice = tool_choice or {"type": "auto"}
            if tool_choice["type"] != "none":
                tool_choice["disable_parallel_tool_use"] = True
        if tool_choice is not None:
            body["tool_choice"] = tool_choice
        output_config: dict[str, Any] = {}
        response_format = params.get("response_format")
        if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
            schema = response_format["json_schema"]["schema"]
            output_config["format"] = {"type": "json_schema", "schema": schema}
        if "reasoning_effort" in params:
            output_config["effort"] = params["reasoning_effort"]
        if output_config:
            body["output_config"] = output_config
        return body

    def is_success_body(self, body: Mapping[str, Any]) -> bool:
        """``{"type": "error", ...}`` is an error even on a 2xx."""
        return body.get("type") != "error" and ("error" not in body or "content" in body)

    def parse_body(self, model: str, body: Mapping[str, Any]) -> ModelResponse:
        """A ``message`` object in the chat.completion shape."""
        blocks = body["content"]
        if not isinstance(blocks, list):
            raise TypeError("'content' is not a list")
        texts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        thinking_blocks: list[dict[str, Any]] = []
        reasoning: list[str] = []
        for block in blocks:
            kind = block["type"]
            if kind == "text":
                texts.append(block["text"])
            elif kind == "tool_use":
                tool_calls.append(
                    {
                        "id": block["id"],
                        "type": "function",
                        "function": {
                            "name": block["name"],
                            "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                        },
                    }
                )
            elif kind in ("thinking", "redacted_thinking"):
                thinking_blocks.append(dict(block))
                if kind == "thinking":
                    reasoning.append(block.get("thinking") or "")
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts else None,
            "tool_calls": tool_calls or None,
        }
        if thinking_blocks:  # LiteLLM's names: on the message and in its provider_specific_fields
            message["thinking_blocks"] = thinking_blocks
            message["provider_specific_fields"] = {"thinking_blocks": thinking_blocks}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)

        native = body.get("stop_reason")
        choice = {
            "index": 0,
            "message": message,
            **finish_reason_fields(native, _STOP_REASONS.get(native or "")),
        }
        if body.get("stop_sequence") is not None:
            choice["stop_sequence"] = body["stop_sequence"]
        if body.get("stop_details") is not None:
            choice["stop_details"] = body["stop_details"]

        usage = body["usage"]
        cache_write = int(usage.get("cache_creation_input_tokens") or 0)
        cache_read = int(usage.get("cache_read_input_tokens") or 0)
        prompt = int(usage["input_tokens"]) + cache_write + cache_read
        completion = int(usage["output_tokens"])
        details: dict[str, Any] = {"cached_tokens": cache_read}
        if cache_write:
            details["cache_creation_tokens"] = cache_write  # LiteLLM's PromptTokensDetailsWrapper name
        usage_fields: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": details,
            # Anthropic's own counts, kept on usage as LiteLLM keeps them
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
        }

        return ModelResponse.model_validate(
            {
                "id": body["id"],
                "created": int(time.time()),
                "model": body.get("model") or model,
                "choices": [choice],
                "usage": usage_fields,
            }
        )


def _is_stop(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value))


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("strict") is not None:
        out["strict"] = function["strict"]
    if tool.get("cache_control") is not None:
        out["cache_control"] = tool["cache_control"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    return {"type": "tool", "name": named_tool_choice(choice)}


def _image_block(part: Mapping[str, Any], field: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str):
        raise InvalidRequestError("image_url.url is missing", field=field)
    match = _DATA_URL.match(url)
    if match:
        source = {"type": "base64", "media_type": match["media"], "data": match["data"]}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise InvalidRequestError("image_url.url must be an http(s) URL or a base64 data: URL", field=field)
    return {"type": "image", "source": source}


def _content_blocks(content: Any, field: str) -> list[dict[str, Any]]:
    """User (or tool result) content as Anthropic blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequestError("content must be a string or a list of parts", field=field)
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        where = f"{field}[{i}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            block = {"type": "text", "text": str(part.get("text", ""))}
            if part.get("cache_control") is not None:
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
        elif kind == "image_url":
            blocks.append(_image_block(part, where))
        elif kind in _NATIVE_BLOCKS:
            blocks.append(dict(part))
        else:
            raise InvalidRequestError(f"content part type {kind!r} cannot be sent to anthropic", field=where)
    return blocks


def _assistant_blocks(message: Mapping[str, Any], field: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for block in message.get("thinking_blocks") or ():  # sent back as received
        blocks.append(dict(block))
    content = message.get("content")
    if isinstance(content, list):
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                if part.get("text"):
                    blocks.append({"type": "text", "text": part["text"]})
            elif kind in ("thinking", "redacted_thinking", "tool_use"):
                blocks.append(dict(part))
            else:
                raise InvalidRequestError(
                    f"content part type {kind!r} cannot be sent to anthropic",
                    field=f"{field}.content[{i}]",
                )
    else:
        text = content_text(content, field=f"{field}.content")
        if text:
            blocks.append({"type": "text", "text": text})
    for j, call in enumerate(message.get("tool_calls") or ()):
        where = f"{field}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not function.get("name") or not call.get("id"):
            raise InvalidRequestError("needs an id and function.name", field=where)
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": tool_arguments(function.get("arguments"), field=f"{where}.function"),
            }
        )
    return blocks


def _simplify(turn: dict[str, Any]) -> dict[str, Any]:
    blocks = turn["content"]
    if turn["role"] == "user":  # tool results must open the user turn
        blocks.sort(key=lambda b: b.get("type") != "tool_result")
    if len(blocks) == 1 and set(blocks[0]) == {"type", "text"} and blocks[0]["type"] == "text":
        turn["content"] = blocks[0]["text"]
    return turn


def convert_messages(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """OpenAI chat messages as Anthropic's (``system``, ``messages``)."""
    system_blocks: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidRequestError("each message must be a dict", field=field)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            if isinstance(content, list):
                for part in content:
                    text = content_text([part], field=f"{field}.content")
                    if text:
                        block = {"type": "text", "text": text}
                        if isinstance(part, Mapping) and part.get("cache_control") is not None:
                            block["cache_control"] = part["cache_control"]
                        system_blocks.append(block)
            else:
                text = content_text(content, field=f"{field}.content")
                if text:
                    system_blocks.append({"type": "text", "text": text})
        elif role == "user":
            add("user", _content_blocks(content, f"{field}.content"))
        elif role == "assistant":
            blocks = _assistant_blocks(message, field)
            if blocks:
                add("assistant", blocks)
        elif role == "tool":
            tool_call_id = message.get("tool_call_id")
            if not tool_call_id:
                raise InvalidRequestError("a tool message needs tool_call_id", field=field)
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
            if isinstance(content, str):
                result["content"] = content
            elif content is not None:
                result["content"] = _content_blocks(content, f"{field}.content")
            add("user", [result])
        else:
            raise InvalidRequestError(f"role {role!r} cannot be sent to anthropic", field=f"{field}.role")

    if not turns:
        raise InvalidRequestError(
            "anthropic needs at least one user or assistant message besides system messages",
            field="messages",
        )
    system: str | list[dict[str, Any]] | None = None
    if system_blocks:
        if all(set(b) == {"type", "text"} for b in system_blocks):
            system = "\n\n".join(b["text"] for b in system_blocks)
        else:
            system = system_blocks
    return system, [_simplify(t) for t in turns]


_TOKEN_KINDS = ("tokens", "input-tokens", "output-tokens")


def _tighter(a: tuple[int | None, int | None, float | None], b: tuple[int | None, int | None, float | None]) -> bool:
    """Whether token limit ``a`` (limit, remaining, reset) binds before ``b``."""
    if a[1] is not None and b[1] is not None and a[1] != b[1]:
        return a[1] < b[1]
    return a[0] is not None and (b[0] is None or a[0] < b[0])
