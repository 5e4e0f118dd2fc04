"""OpenAI Chat Completions (``POST {base}/chat/completions``), and any OpenAI-compatible
server (vLLM, Ollama, Groq, Together, ...) reached through ``api_base`` / ``OPENAI_BASE_URL``.

Followed: the OpenAI API reference "Create chat completion" and "The chat completion
object", as typed by the ``openai`` Python SDK 3.57 (``types/chat/completion_create_params.py``,
``types/chat/chat_completion.py``, ``types/completion_usage.py``); the SDK's base URL
convention (``OPENAI_BASE_URL``, default ``https://api.openai.com/v1``, the version path is
part of the base) and its ``Authorization: Bearer`` auth; the "Error codes" guide (errors are
``{"error": {"message", "type", "param", "code"}}``; some compatible servers send
``{"error": "<text>"}``) and the "Rate limits" guide (``x-ratelimit-reset-requests`` /
``-tokens``, Go-style durations such as ``6m0s``, with ``x-ratelimit-limit-*`` (RPM, TPM) and
``x-ratelimit-remaining-*``, sent on every answer).

Messages and parameters are OpenAI's own, so they are sent unchanged; the answer is already
in the normalised shape and only ``finish_reason`` is normalised (OpenAI-compatible servers
send values such as ``eos``; the native value is kept in ``provider_specific_fields``), and a
``reasoning`` text (Groq, OpenRouter) is named ``reasoning_content`` as LiteLLM names it. For
OpenAI's reasoning models (o-series, gpt-5) ``max_tokens``
is sent as ``max_completion_tokens``, which they require. Fields such as ``id`` or
``created`` that some compatible servers leave out are filled in; only ``choices`` (each
with a ``message``) is required.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from batcher._providers._adapter import ProviderAdapter, add_auth_headers, bearer_headers
from batcher._providers._params import CHAT_PARAMS
from batcher._providers._retry_after import RateLimitInfo, parse_count, parse_duration, pick_reset
from batcher._providers._translate import finish_reason_fields
from batcher._response import FinishReason, ModelResponse

__all__ = ["OpenAIAdapter"]

# o-series and gpt-5 models: "max_tokens is not supported with this model" (use
# max_completion_tokens, which the API reference says replaces it).
_REASONING_MODEL = re.compile(r"^(o[1-9]\d*(-|$)|gpt-5)")

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "function_call",  # deprecated functions API (one of OpenAI's five, as LiteLLM keeps it)
    # values some OpenAI-compatible servers send
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


class OpenAIAdapter(ProviderAdapter):
    """Chat Completions, passed through."""

    name = "openai"
    prefixes = ("openai/",)
    families = (r"^(gpt-|chatgpt-|ft:gpt-)", r"^o[1-9]\d*(-|$)")
    routing_hint = (
        "openai/ works for any OpenAI-compatible server such as vLLM, Ollama, Groq, Together "
        "with OPENAI_BASE_URL or api_base="
    )
    api_key_env_vars = ("OPENAI_API_KEY",)
    api_base_env_vars = ("OPENAI_BASE_URL", "OPENAI_API_BASE")
    default_api_base = "https://api.openai.com/v1"
    endpoint_path = "/chat/completions"
    supported_params = CHAT_PARAMS | {
        "seed",
        "user",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "parallel_tool_calls",
        "metadata",
        "reasoning_effort",
        "service_tier",
        "store",
        "modalities",
        "audio",
        "prediction",
        "verbosity",
        "web_search_options",
        "prompt_cache_key",
        "safety_identifier",
        "functions",
        "function_call",
    }
    error_type_statuses = {
        "invalid_request_error": 400,
        "rate_limit_exceeded": 429,
        "insufficient_quota": 429,
        "server_error": 500,
    }
    context_window_patterns = (
        r"context[_ ]length[_ ]exceeded",
        r"maximum context length",
        r"reduce the length of the messages",
    )
    context_window_codes = frozenset({"context_length_exceeded", "string_above_max_length"})
    request_id_headers = ("x-request-id",)

    def authenticate(self, request: httpx.Request, api_key: str | None) -> None:
        """Bearer auth; none at all for keyless local servers (Ollama, vLLM)."""
        add_auth_headers(request, api_key, bearer_headers(api_key))

    def error_details(self, body: Mapping[str, Any]) -> tuple[Any, Any] | None:
        """``{"error": {"message", "type", "param", "code"}}``, or ``{"error": "<text>"}``."""
        err = body.get("error")
        if isinstance(err, Mapping):
            return err.get("message"), err.get("code") or err.get("type")
        if isinstance(err, str):
            return err, None
        return None

    def rate_limit_wait(self, headers: httpx.Headers, now: datetime) -> float | None:
        """``x-ratelimit-reset-requests`` / ``-tokens`` (the exhausted one's, else the longer)."""
        found: list[tuple[float, bool]] = []
        for kind in ("requests", "tokens"):
            reset = headers.get(f"x-ratelimit-reset-{kind}")
            seconds = parse_duration(reset) if reset else None
            if seconds is not None:
                found.append((seconds, headers.get(f"x-ratelimit-remaining-{kind}") == "0"))
        return pick_reset(found)

    def rate_limit_info(self, headers: httpx.Headers, now: datetime) -> RateLimitInfo | None:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (every answer; reset a duration such
        as ``6m0s`` or ``20ms``; the limits are per minute)."""
        if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
            return None
        reset_r = headers.get("x-ratelimit-reset-requests")
        reset_t = headers.get("x-ratelimit-reset-tokens")
        return RateLimitInfo(
            requests_limit=parse_count(headers.get("x-ratelimit-limit-requests")),
            requests_remaining=parse_count(headers.get("x-ratelimit-remaining-requests")),
            requests_reset_s=parse_duration(reset_r) if reset_r else None,
            tokens_limit=parse_count(headers.get("x-ratelimit-limit-tokens")),
            tokens_remaining=parse_count(headers.get("x-ratelimit-remaining-tokens")),
            tokens_reset_s=parse_duration(reset_t) if reset_t else None,
        )

    def build_body(
        self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """OpenAI's own request shape: nothing to translate, except that OpenAI's reasoning
        models refuse ``max_tokens`` and take ``max_completion_tokens`` instead."""
        body = {"model": model, "messages": [dict(m) for m in messages], **params}
        if _REASONING_MODEL.match(model) and "max_tokens" in body and "max_completion_tokens" not in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        return body

    def parse_body(self, model: str, body: Mapping[str, Any]) -> ModelResponse:
        """The body as is, with ``finish_reason`` normalised and missing header fields filled."""
        data = dict(body)
        choices = data["choices"]
        if not isinstance(choices, list):
            raise TypeError("'choices' is not a list")
        data["choices"] = [_choice(i, c) for i, c in enumerate(choices)]
        if "provider" in data:  # routers (OpenRouter, ...) name the upstream provider here
            data["upstream_provider"] = data.pop("provider")
        data["id"] = data.get("id") or f"chatcmpl-{uuid.uuid4().hex}"
        data["created"] = int(data.get("created") or time.time())
        data["model"] = data.get("model") or model
        data["object"] = data.get("object") or "chat.completion"
        return ModelResponse.model_validate(data)


def _choice(index: int, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise TypeError(f"choices[{index}] is not an object")
    choice = dict(raw)
    message = choice["message"]
    if not isinstance(message, Mapping):
        raise TypeError(f"choices[{index}].message is not an object")
    message = dict(message)
    message["role"] = "assistant"  # OpenAI's type allows nothing else; some servers send null
    if isinstance(message.get("reasoning"), str) and "reasoning_content" not in message:
        message["reasoning_content"] = message.pop("reasoning")  # Groq, OpenRouter: LiteLLM's name for it
    if message.get("tool_calls"):
        message["tool_calls"] = [_tool_call(tc) for tc in message["tool_calls"]]
    choice["message"] = message
    choice["index"] = choice.get("index", index)
    native = choice.get("finish_reason")
    normalised = _FINISH_REASONS.get(native) if isinstance(native, str) else None
    choice.update(finish_reason_fields(native, normalised))
    return choice


def _tool_call(raw: Any) -> dict[str, Any]:
    call = dict(raw)
    if call.get("type") == "custom" and "function" not in call:
        # Custom (free-form) tools: keep ``custom`` and expose it as a function call too.
        custom = call["custom"]
        call["function"] = {"name": custom["name"], "arguments": custom.get("input", "")}
    return call
