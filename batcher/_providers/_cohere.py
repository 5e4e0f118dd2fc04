"""Cohere Chat API v2 (``POST {base}/v2/chat``, ``Authorization: Bearer``).

Followed: the Cohere API reference "Chat" (v2) and "Errors" pages (docs.cohere.com/v2),
as typed by the ``cohere`` Python SDK 7.3 (``v2/client.py`` ``chat``,
``v2/types/v2chat_response.py``, ``types/chat_finish_reason.py``,
``types/chat_message_v2.py``, ``types/tool_v2.py``, ``types/tool_call_v2.py``,
``types/response_format_v2.py``, ``types/usage.py``). Base URL as in the SDK: ``CO_API_URL``,
default ``https://api.cohere.com`` without the version (a trailing ``/v2`` or ``/v1`` is
tolerated). Errors are ``{"message": "<text>"}``; the SDK adds 498 (invalid token) and 499 (the
request was closed) to the documented statuses. Rate limits: the "API Keys and Rate Limits" page
gives them per key type and model (e.g. 20 req / min for trial keys) and documents no rate-limit
headers, so none is declared here (``rate_limit_info`` is the contract's None); a 429's standard
``retry-after`` is read for every provider.

Translation from OpenAI's chat format: v2 messages already use OpenAI's roles (system, user,
assistant, tool), ``tool_calls`` and ``tool_call_id``; ``developer`` becomes ``system``,
``image_url`` parts pass through, message ``name`` is dropped. Parameters: ``max_tokens`` /
``max_completion_tokens`` -> ``max_tokens``, ``stop`` -> ``stop_sequences``, ``top_p`` ->
``p``, ``temperature`` / ``seed`` / ``frequency_penalty`` / ``presence_penalty`` unchanged,
``tools`` (function tools, same shape), ``tool_choice`` none/required -> ``NONE`` /
``REQUIRED`` (auto: omitted; Cohere cannot force one named tool), ``response_format``
json_object -> ``{"type": "json_object"}``, json_schema -> ``{"type": "json_object",
"json_schema": schema}``. Cohere's own ``k``, ``safety_mode``, ``thinking`` and
``strict_tools`` are sent as given.

The answer: ``message.content`` text items are joined (``thinking`` items become
``reasoning_content``), ``message.tool_calls`` are already in OpenAI's shape,
``tool_plan`` and ``citations`` are kept on the message. ``finish_reason``: COMPLETE /
STOP_SEQUENCE -> stop, MAX_TOKENS -> length, TOOL_CALL -> tool_calls, ERROR_TOXIC ->
content_filter (v1 value); ERROR and TIMEOUT mean the generation failed, so they raise
ProviderServerError / ProviderTimeoutError (both retryable) instead of returning a partial
answer. Usage comes from ``usage.tokens`` (what the model saw), else ``usage.billed_units``;
``usage.cached_tokens`` becomes ``prompt_tokens_details.cached_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from batcher._exceptions import (
    AuthenticationError,
    InvalidRequestError,
    ProviderConnectionError,
    ProviderServerError,
    ProviderTimeoutError,
)
from batcher._providers._adapter import ProviderAdapter, add_auth_headers, bearer_headers
from batcher._providers._params import CHAT_PARAMS
from batcher._providers._translate import (
    content_text,
    finish_reason_fields,
    named_tool_choice,
    openai_function_tools,
    stop_list,
)
from batcher._response import FinishReason, ModelResponse

__all__ = ["CohereAdapter"]

_FINISH_REASONS: dict[str, FinishReason] = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR_TOXIC": "content_filter",
    "ERROR_LIMIT": "length",
}


class CohereAdapter(ProviderAdapter):
    """OpenAI chat requests translated to Chat v2 and back."""

    name = "cohere"
    prefixes = ("cohere/", "cohere_chat/")  # cohere_chat/: LiteLLM's older name for Cohere chat
    families = (r"^(command(-|$)|c4ai-aya-)",)
    api_key_env_vars = ("COHERE_API_KEY", "CO_API_KEY")
    api_base_env_vars = ("CO_API_URL", "COHERE_API_BASE")
    default_api_base = "https://api.cohere.com"
    endpoint_path = "/v2/chat"
    base_suffixes = ("/v2", "/v1")
    supported_params = CHAT_PARAMS | {
        "seed",
        "presence_penalty",
        "frequency_penalty",
        # Cohere's own, under their own names
        "k",
        "safety_mode",
        "thinking",
        "strict_tools",
    }
    # The SDK (v2/raw_client.py) maps 498 to an invalid token and 499 to a request the client closed.
    status_errors = {498: AuthenticationError, 499: ProviderConnectionError}
    context_window_patterns = (
        r"too many tokens: total number of tokens in the prompt",
        r"size limit exceeded by \d+ tokens",
    )

    def check_value(self, name: str, value: Any) -> str | None:
        """Values with no Cohere equivalent."""
        if name == "n" and value != 1:
            return "Cohere returns one completion per request"
        if name == "tools":
            return openai_function_tools(value)
        if name == "tool_choice":
            if value in ("auto", "none", "required"):
                return None
            if named_tool_choice(value):
                return "Cohere cannot force one named tool; use 'required'"
            return "use 'auto', 'none' or 'required'"
        if name == "response_format":
            kind = value.get("type") if isinstance(value, Mapping) else None
            if kind in ("text", "json_object"):
                return None
            if kind == "json_schema":
                spec = value.get("json_schema")
                if isinstance(spec, Mapping) and isinstance(spec.get("schema"), Mapping):
                    return None
                return "json_schema.schema is missing"
            return "use {'type': 'text' | 'json_object' | 'json_schema', ...}"
        if name == "stop" and not (
            isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value))
        ):
            return "stop must be a string or a list of strings"
        return None

    def authenticate(self, request: httpx.Request, api_key: str | None) -> None:
        """Bearer auth."""
        add_auth_headers(request, api_key, bearer_headers(api_key))

    def error_details(self, body: Mapping[str, Any]) -> tuple[Any, Any] | None:
        """``{"message": "<text>"}``."""
        message = body.get("message")
        return (message, None) if message else None

    def build_body(
        self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The Chat v2 body; see the module docstring for each mapping."""
        body: dict[str, Any] = {"model": model, "messages": convert_messages(messages)}
        max_tokens = params.get("max_completion_tokens", params.get("max_tokens"))
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        for same in (
            "temperature",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "k",
            "safety_mode",
            "thinking",
            "strict_tools",
        ):
            if same in params:
                body[same] = params[same]
        if "top_p" in params:
            body["p"] = params["top_p"]
        if "stop" in params:
            body["stop_sequences"] = stop_list(params["stop"])
        if "tools" in params:
            body["tools"] = [_tool(t) for t in params["tools"]]
        if params.get("tool_choice") in ("none", "required"):
            body["tool_choice"] = params["tool_choice"].upper()
        response_format = params.get("response_format")
        if isinstance(response_format, Mapping):
            kind = response_format.get("type")
            if kind == "json_schema":
                body["response_format"] = {
                    "type": "json_object",
                    "json_schema": response_format["json_schema"]["schema"],
                }
            elif kind in ("text", "json_object"):
                body["response_format"] = {"type": kind}
        return body

    def is_success_body(self, body: Mapping[str, Any]) -> bool:
        """Cohere's error body is ``{"message": "<text>"}``; an answer's message is an object."""
        return not (isinstance(body.get("message"), str) and "finish_reason" not in body)

    def parse_body(self, model: str, body: Mapping[str, Any]) -> ModelResponse:
        """A V2ChatResponse in the chat.completion shape."""
        native = body["finish_reason"]
        if native == "ERROR":
            raise ProviderServerError("cohere reported finish_reason ERROR: the generation failed")
        if native == "TIMEOUT":
            raise ProviderTimeoutError("cohere reported finish_reason TIMEOUT")
        raw = body["message"]
        texts: list[str] = []
        reasoning: list[str] = []
        for item in raw.get("content") or ():
            if item.get("type") == "text":
                texts.append(item["text"])
            elif item.get("type") == "thinking":
                reasoning.append(item.get("thinking") or "")
        tool_calls = [
            {
                "id": call["id"],
                "type": "function",
                "function": {
                    "name": (call.get("function") or {}).get("name") or "",
                    "arguments": (call.get("function") or {}).get("arguments") or "{}",
                },
            }
            for call in raw.get("tool_calls") or ()
        ]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts else None,
            "tool_calls": tool_calls or None,
        }
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        for kept in ("tool_plan", "citations"):
            if raw.get(kept):
                message[kept] = raw[kept]

        return ModelResponse.model_validate(
            {
                "id": body["id"],
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        **finish_reason_fields(native, _FINISH_REASONS.get(native)),
                    }
                ],
                "usage": _usage(body.get("usage")),
            }
        )


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, Mapping):
        return None
    tokens = usage.get("tokens") or {}
    billed = usage.get("billed_units") or {}

    def count(key: str) -> int:
        value = tokens.get(key)
        if value is None:
            value = billed.get(key)
        return int(value or 0)

    prompt, completion = count("input_tokens"), count("output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(usage.get("cached_tokens") or 0)},
    }


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    out: dict[str, Any] = {
        "name": function["name"],
        "parameters": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return {"type": "function", "function": out}


def _user_content(content: Any, field: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError("content must be a string or a list of parts", field=field)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            image = part.get("image_url")
            image = {"url": image} if isinstance(image, str) else dict(image or {})
            if not isinstance(image.get("url"), str):
                raise InvalidRequestError("image_url.url is missing", field=f"{field}[{i}]")
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequestError(f"content part type {kind!r} cannot be sent to cohere", field=f"{field}[{i}]")
    return parts


def convert_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages as Cohere v2 messages."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidRequestError("each message must be a dict", field=field)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": content_text(content, field=f"{field}.content")})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(content, f"{field}.content")})
        elif role == "assistant":
            turn: dict[str, Any] = {"role": "assistant"}
            text = content_text(content, field=f"{field}.content")
            if text:
                turn["content"] = text
            calls = []
            for j, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") if isinstance(call, Mapping) else None
                if not isinstance(function, Mapping) or not function.get("name") or not call.get("id"):
                    raise InvalidRequestError("needs an id and function.name", field=f"{field}.tool_calls[{j}]")
                arguments = function.get("arguments")
                calls.append(
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": function["name"], "arguments": arguments or "{}"},
                    }
                )
            if calls:
                turn["tool_calls"] = calls
            if message.get("tool_plan"):
                turn["tool_plan"] = message["tool_plan"]
            if "content" in turn or calls:
                out.append(turn)
        elif role == "tool":
            tool_call_id = message.get("tool_call_id")
            if not tool_call_id:
                raise InvalidRequestError("a tool message needs tool_call_id", field=field)
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": tool_call_id,
                    "content": _user_content(content if content is not None else "", f"{field}.content"),
                }
            )
        else:
            raise InvalidRequestError(f"role {role!r} cannot be sent to cohere", field=f"{field}.role")
    return out
