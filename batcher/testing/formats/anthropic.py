"""Anthropic Messages as the fake serves it: ``POST /v1/messages``; requires ``x-api-key`` and
``anthropic-version``; the body requires ``model``, ``max_tokens`` and a non-empty ``messages``.

Success is ``{id: "msg_...", type: "message", role: "assistant", model, content: [{type: "text",
text}], stop_reason, stop_sequence, usage{input_tokens, output_tokens, ...}}``; a request with
``thinking: {type: "enabled"}`` gets a ``{type: "thinking", thinking, signature}`` block first, as
extended thinking answers. Errors are
``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the types of Anthropic's
"Errors" page (400 invalid_request_error, 401 authentication_error, 403 permission_error, 404
not_found_error, 413 request_too_large, 429 rate_limit_error, 500 api_error, 529
overloaded_error); every answer has a ``request-id`` header; 429s carry ``retry-after`` and the
``anthropic-ratelimit-requests-*`` headers of the "Rate limits" page (reset as RFC 3339).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batcher.testing.formats._base import (
    Failure,
    FakeFormat,
    random_id,
    rfc3339_in,
    text_of,
    word_count,
)

__all__ = ["AnthropicFormat"]


class AnthropicFormat(FakeFormat):
    name = "anthropic"
    path = "/v1/messages"
    known_params = frozenset(
        {
            "model",
            "messages",
            "max_tokens",
            "metadata",
            "stop_sequences",
            "stream",
            "system",
            "temperature",
            "thinking",
            "tool_choice",
            "tools",
            "top_k",
            "top_p",
            "service_tier",
            "container",
            "mcp_servers",
            "context_management",
            "output_config",
            "inference_geo",
        }
    )
    length_reason = "max_tokens"
    _types = {
        "auth_missing": "authentication_error",
        "auth_invalid": "authentication_error",
        "permission": "permission_error",
        "not_found": "not_found_error",
        "too_large": "request_too_large",
        "rate_limit": "rate_limit_error",
        "overloaded": "overloaded_error",
        "server_error": "api_error",
        "timeout": "timeout_error",
    }

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        key = headers.get("x-api-key")
        return key.strip() if key and key.strip() else None

    def check_headers(self, headers: Mapping[str, str]) -> Failure | None:
        version = headers.get("anthropic-version")
        if not version:
            return Failure(400, "bad_request", "anthropic-version: header is required")
        return None

    def invalid_json(self) -> Failure:
        return Failure(400, "bad_request", "The request body is not valid JSON.")

    def validate(self, body: dict[str, Any], strict: bool) -> Failure | None:
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return Failure(400, "bad_request", f"{name}: Field required")
        if strict:
            for key in body:
                if key not in self.known_params:
                    return Failure(400, "bad_request", f"{key}: Extra inputs are not permitted")
        if not isinstance(body["model"], str) or not body["model"]:
            return Failure(400, "bad_request", "model: Input should be a valid string")
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return Failure(400, "bad_request", "max_tokens: Input should be a valid integer")
        if max_tokens < 1:
            return Failure(400, "bad_request", "max_tokens: Input should be greater than or equal to 1")
        messages = body["messages"]
        if not isinstance(messages, list):
            return Failure(400, "bad_request", "messages: Input should be a valid list")
        if not messages:
            return Failure(400, "bad_request", "messages: at least one message is required")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                return Failure(400, "bad_request", f"messages.{i}: Input should be a valid dictionary")
            role = m.get("role")
            if role is None:
                return Failure(400, "bad_request", f"messages.{i}.role: Field required")
            if role not in ("user", "assistant"):
                return Failure(
                    400,
                    "bad_request",
                    f'messages: Unexpected role "{role}". The Messages API accepts a top-level '
                    f'`system` parameter, not "{role}" as an input message role.',
                )
            if "content" not in m:
                return Failure(400, "bad_request", f"messages.{i}.content: Field required")
        if body.get("stream"):
            return Failure(400, "bad_request", "The fake provider does not stream: send stream=false.")
        return None

    def prompt_words(self, body: dict[str, Any]) -> int:
        return super().prompt_words(body) + word_count(text_of(body.get("system")))

    def success(
        self,
        model: str,
        text: str,
        truncated: bool,
        prompt_tokens: int,
        completion_tokens: int,
        body: dict[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        rid = f"msg_01{random_id(22)}"
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            # Extended thinking: a thinking block (with its signature) before the text, as the API sends it.
            content.insert(0, {"type": "thinking", "thinking": f"thinking about: {text}", "signature": random_id(40)})
        return rid, {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": self.length_reason if truncated else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": completion_tokens,
                "service_tier": "standard",
            },
        }

    def error_body(self, failure: Failure, model: str | None, request_id: str) -> dict[str, Any]:
        kind = failure.kind
        etype = self._types.get(kind, "invalid_request_error")
        if failure.status >= 500 and kind not in ("overloaded", "timeout"):
            etype = "api_error"
        message = failure.message
        if message is None:
            message = {
                "auth_missing": "x-api-key header is required",
                "auth_invalid": "invalid x-api-key",
                "permission": "Your API key does not have permission to use the specified resource.",
                "not_found": f"model: {model}",
                "too_large": "Request exceeds the maximum allowed number of bytes.",
                "rate_limit": "This request would exceed the rate limit for your organization "
                f"(fake) of {failure.rl_limit or 0} requests per minute. For details, refer "
                "to: https://docs.claude.com/en/api/rate-limits. You can see the response "
                "headers for current usage. Please reduce the prompt length or the maximum "
                "tokens requested, or try again later.",
                "overloaded": "Overloaded",
                "server_error": "Internal server error",
                "timeout": "Request timed out",
            }.get(kind, "Invalid request")
        return {
            "type": "error",
            "error": {"type": etype, "message": message},
            "request_id": request_id,
        }

    def context_failure(self, words: int, window: int) -> Failure:
        return Failure(400, "context", f"prompt is too long: {words} tokens > {window} maximum")

    def request_id_headers(self) -> tuple[str, dict[str, str]]:
        rid = f"req_011C{random_id(20)}"
        return rid, {"request-id": rid}

    def rate_limit_headers(self, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
        return {
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(max(0, remaining)),
            "anthropic-ratelimit-requests-reset": rfc3339_in(reset_s),
        }
