"""Cohere Chat v2 as the fake serves it: ``POST /v2/chat``; ``Authorization: Bearer``.

Success is ``{id, finish_reason: "COMPLETE" | "MAX_TOKENS", message: {role: "assistant", content:
[{type: "text", text}]}, usage: {billed_units: {input_tokens, output_tokens}, tokens:
{input_tokens, output_tokens}}}`` (Cohere's Chat API reference and "Using the Chat API" page); with
``thinking: {type: "enabled"}`` a ``{type: "thinking", thinking}`` item comes before the text.
Errors are ``{"message": "..."}`` with the messages of Cohere's "Errors" page ("no api key
supplied", "invalid api token", "invalid request: ...", "You are past the per minute request
limit, please wait and try again later.").
"""

from __future__ import annotations

import uuid
from typing import Any

from batcher.testing.formats._base import (
    Failure,
    FakeFormat,
    random_id,
    text_of,
)

__all__ = ["CohereFormat"]


class CohereFormat(FakeFormat):
    name = "cohere"
    path = "/v2/chat"
    known_params = frozenset(
        {
            "model",
            "messages",
            "stream",
            "tools",
            "strict_tools",
            "documents",
            "citation_options",
            "response_format",
            "safety_mode",
            "max_tokens",
            "stop_sequences",
            "temperature",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "k",
            "p",
            "return_prompt",
            "logprobs",
            "tool_choice",
            "thinking",
            "priority",
        }
    )
    length_reason = "MAX_TOKENS"

    def invalid_json(self) -> Failure:
        return Failure(400, "bad_request", "invalid request: could not parse the JSON body")

    def validate(self, body: dict[str, Any], strict: bool) -> Failure | None:
        if strict:
            for key in body:
                if key not in self.known_params:
                    return Failure(
                        400,
                        "bad_request",
                        f"invalid request: unknown field: parameter {key} is not a valid field",
                    )
        if not isinstance(body.get("model"), str) or not body["model"]:
            return Failure(400, "bad_request", "invalid request: model is required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return Failure(400, "bad_request", "invalid request: messages must contain at least one message")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in (
                "system",
                "user",
                "assistant",
                "tool",
            ):
                return Failure(
                    400,
                    "bad_request",
                    f"invalid request: messages[{i}].role must be one of system, user, assistant, tool",
                )
            if m["role"] == "user" and not text_of(m.get("content")).strip():
                return Failure(400, "bad_request", "message must not be empty in a turn")
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            return Failure(400, "bad_request", "invalid request: max_tokens must be a positive integer")
        if body.get("stream"):
            return Failure(400, "bad_request", "The fake provider does not stream: send stream=false.")
        return None

    def success(
        self,
        model: str,
        text: str,
        truncated: bool,
        prompt_tokens: int,
        completion_tokens: int,
        body: dict[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        rid = str(uuid.uuid4())
        counts = {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            content.insert(0, {"type": "thinking", "thinking": f"thinking about: {text}"})  # reasoning models
        return rid, {
            "id": rid,
            "message": {"role": "assistant", "content": content},
            "finish_reason": self.length_reason if truncated else "COMPLETE",
            "usage": {"billed_units": counts, "tokens": dict(counts)},
        }

    def error_body(self, failure: Failure, model: str | None, request_id: str) -> dict[str, Any]:
        message = failure.message
        if message is None:
            message = {
                "auth_missing": "no api key supplied",
                "auth_invalid": "invalid api token",
                "permission": "You don't have access to this model.",
                "not_found": f"model '{model}' not found, make sure the correct model ID was "
                "used and that you have access to the model.",
                "rate_limit": "You are past the per minute request limit, please wait and try again later.",
                "server_error": "internal server error, this has been reported to our developers",
                "overloaded": "service unavailable",
                "timeout": "request timed out",
                "too_large": "invalid request: request body too large",
            }.get(kind := failure.kind, "invalid request")
            if failure.status == 503 and kind == "server_error":
                message = "service unavailable"
        return {"message": message}

    def context_failure(self, words: int, window: int) -> Failure:
        return Failure(
            400,
            "context",
            f"too many tokens: total number of tokens in the prompt cannot exceed {window} - "
            f"received {words}. Try using a shorter prompt, or enabling prompt truncating. See "
            "https://docs.cohere.com/reference/chat for more details.",
        )

    def request_id_headers(self) -> tuple[str, dict[str, str]]:
        rid = random_id(32)
        return rid, {"x-debug-trace-id": rid}
