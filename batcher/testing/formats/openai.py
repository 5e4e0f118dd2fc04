"""OpenAI Chat Completions as the fake serves it: ``POST /v1/chat/completions``, ``Authorization: Bearer``.

Success is a ``chat.completion`` object (``id`` ``chatcmpl-...``, ``object``, ``created``, ``model``,
``choices[{index, message{role, content, refusal, annotations}, logprobs, finish_reason}]``,
``usage{prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details,
completion_tokens_details}``, ``service_tier``, ``system_fingerprint``). Errors are ``{"error":
{"message", "type", "param", "code"}}``; 429s carry ``retry-after``, ``retry-after-ms`` and
``x-ratelimit-limit-requests`` / ``x-ratelimit-remaining-requests`` / ``x-ratelimit-reset-requests``
(a duration such as ``"1s"`` or ``"120ms"``); every answer has ``x-request-id``. Follows the OpenAI
API reference (Chat > Create chat completion, the ChatCompletion object), the "Rate limits" guide
(headers) and "Error codes" guide; the error messages are the ones the API returns (for example
"Incorrect API key provided", "Missing required parameter: 'messages'.", "We could not parse the
JSON body of your request...").
"""

from __future__ import annotations

import time
from typing import Any

from batcher.testing.formats._base import (
    Failure,
    FakeFormat,
    fmt_duration,
    random_id,
)

__all__ = ["OpenAIFormat"]


class OpenAIFormat(FakeFormat):
    name = "openai"
    path = "/v1/chat/completions"
    base_path = "/v1"  # the OpenAI SDK's base URL includes the version
    known_params = frozenset(
        {
            "model",
            "messages",
            "audio",
            "frequency_penalty",
            "function_call",
            "functions",
            "logit_bias",
            "logprobs",
            "max_completion_tokens",
            "max_tokens",
            "metadata",
            "modalities",
            "n",
            "parallel_tool_calls",
            "prediction",
            "presence_penalty",
            "prompt_cache_key",
            "reasoning_effort",
            "response_format",
            "safety_identifier",
            "seed",
            "service_tier",
            "stop",
            "store",
            "stream",
            "stream_options",
            "temperature",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "user",
            "verbosity",
            "web_search_options",
        }
    )
    roles = ("system", "developer", "user", "assistant", "tool", "function")
    length_reason = "length"

    def invalid_json(self) -> Failure:
        return Failure(
            400,
            "bad_request",
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON. If you have trouble figuring out how to fix "
            "this, please contact us through our help center at help.openai.com.)",
        )

    def validate(self, body: dict[str, Any], strict: bool) -> Failure | None:
        if strict:
            for key in body:
                if key not in self.known_params:
                    return Failure(400, "bad_request", f"Unrecognized request argument supplied: {key}")
        if not isinstance(body.get("model"), str) or not body["model"]:
            return Failure(400, "bad_request", "you must provide a model parameter")
        if "messages" not in body:
            return _missing_openai("messages")
        messages = body["messages"]
        if not isinstance(messages, list):
            return Failure(
                400,
                "bad_request",
                f"Invalid type for 'messages': expected an array of objects, but got {_json_type(messages)} instead.",
                param="messages",
                code="invalid_type",
            )
        if not messages:
            return Failure(
                400,
                "bad_request",
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                param="messages",
                code="empty_array",
            )
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                return Failure(
                    400,
                    "bad_request",
                    f"Invalid type for 'messages[{i}]': expected an object, but got {_json_type(m)} instead.",
                    param=f"messages[{i}]",
                    code="invalid_type",
                )
            if "role" not in m:
                return _missing_openai(f"messages[{i}].role")
            if m["role"] not in self.roles:
                return Failure(
                    400,
                    "bad_request",
                    f"Invalid value: '{m['role']}'. Supported values are: 'system', "
                    "'assistant', 'user', 'function', 'tool', and 'developer'.",
                    param=f"messages[{i}].role",
                    code="invalid_value",
                )
            if m["role"] in ("user", "system", "developer", "tool") and "content" not in m:
                return _missing_openai(f"messages[{i}].content")
        for name in ("max_tokens", "max_completion_tokens", "n"):
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                return Failure(
                    400,
                    "bad_request",
                    f"Invalid type for '{name}': expected an integer, but got {_json_type(value)} instead.",
                    param=name,
                    code="invalid_type",
                )
            if value < 1:
                return Failure(
                    400,
                    "bad_request",
                    f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
                    param=name,
                    code="integer_below_min_value",
                )
        if body.get("stream"):
            return Failure(400, "bad_request", "The fake provider does not stream: send stream=false.")
        return None

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_completion_tokens")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return super().max_tokens(body)

    def success(
        self,
        model: str,
        text: str,
        truncated: bool,
        prompt_tokens: int,
        completion_tokens: int,
        body: dict[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        rid = f"chatcmpl-{random_id(29)}"
        n = body.get("n") or 1
        finish = self.length_reason if truncated else "stop"
        choices: list[dict[str, Any]] = [
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish,
            }
            for i in range(n)
        ]
        completion = completion_tokens * n
        return rid, {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_fake0001",
        }

    def error_body(self, failure: Failure, model: str | None, request_id: str) -> dict[str, Any]:
        kind = failure.kind
        etype = "invalid_request_error"
        code = failure.code
        message = failure.message
        if kind == "auth_missing":
            message = message or (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can "
                "obtain an API key from https://platform.openai.com/account/api-keys."
            )
        elif kind == "auth_invalid":
            code = code or "invalid_api_key"
            message = message or (
                f"Incorrect API key provided: {_mask_key(failure.param)}. You can find your "
                "API key at https://platform.openai.com/account/api-keys."
            )
            failure = Failure(failure.status, kind, message, None, code)
        elif kind == "permission":
            code = code or "model_not_allowed"
            message = message or f"You are not allowed to use the model `{model}`."
        elif kind == "not_found":
            code = code or "model_not_found"
            message = message or f"The model `{model}` does not exist or you do not have access to it."
        elif kind == "rate_limit":
            etype = "requests"
            code = code or "rate_limit_exceeded"
            wait = failure.retry_after_s
            message = message or (
                f"Rate limit reached for {model} in organization org-fake on requests per min "
                f"(RPM): Limit {failure.rl_limit or 0}, Used {failure.rl_limit or 0}, "
                "Requested 1."
                + (f" Please try again in {fmt_duration(wait)}." if wait is not None else "")
                + " Visit https://platform.openai.com/account/rate-limits to learn more."
            )
        elif kind == "timeout":
            etype = "timeout"
            message = message or "Request timed out."
        elif kind in ("server_error", "overloaded"):
            etype = "server_error"
            if failure.status == 503:
                message = message or "The server is overloaded or not ready yet."
            else:
                message = message or ("The server had an error while processing your request. Sorry about that!")
        elif kind == "too_large":
            message = message or "Request too large."
        else:
            message = message or "Invalid request."
        param = None if kind == "auth_invalid" else failure.param
        return {"error": {"message": message, "type": etype, "param": param, "code": code}}

    def context_failure(self, words: int, window: int) -> Failure:
        return Failure(
            400,
            "context",
            f"This model's maximum context length is {window} tokens. However, your messages "
            f"resulted in {words} tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )

    def request_id_headers(self) -> tuple[str, dict[str, str]]:
        rid = f"req_{random_id(32)}"
        return rid, {"x-request-id": rid, "openai-version": "2020-10-01"}

    def rate_limit_headers(self, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(max(0, remaining)),
            "x-ratelimit-reset-requests": fmt_duration(reset_s),
        }

    def success_headers(self, latency_s: float) -> dict[str, str]:
        return {"openai-processing-ms": str(int(latency_s * 1000))}

    def error_headers(self, failure: Failure) -> dict[str, str]:
        return {"www-authenticate": 'Bearer realm="OpenAI API"'} if failure.status == 401 else {}


def _missing_openai(param: str) -> Failure:
    return Failure(
        400,
        "bad_request",
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _json_type(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _mask_key(key: str | None) -> str:
    if not key:
        return ""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:4]}{'*' * (len(key) - 8)}{key[-4:]}"
