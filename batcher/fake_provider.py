"""A fake LLM provider: a real HTTP server on loopback that speaks the providers' wire formats.

Used by the tests, the demo (``batcher fake-provider``) and the benchmarks, since no real
provider can be reached from the machines batcher is developed on. One aiohttp server answers
three APIs at once:

* **OpenAI Chat Completions** -- ``POST /v1/chat/completions``; ``Authorization: Bearer``.
  Success is a ``chat.completion`` object (``id`` ``chatcmpl-...``, ``object``, ``created``,
  ``model``, ``choices[{index, message{role, content, refusal, annotations}, logprobs,
  finish_reason}]``, ``usage{prompt_tokens, completion_tokens, total_tokens,
  prompt_tokens_details, completion_tokens_details}``, ``service_tier``,
  ``system_fingerprint``). Errors are ``{"error": {"message", "type", "param", "code"}}``;
  429s carry ``retry-after``, ``retry-after-ms`` and ``x-ratelimit-limit-requests`` /
  ``x-ratelimit-remaining-requests`` / ``x-ratelimit-reset-requests`` (a duration such as
  ``"1s"`` or ``"120ms"``); every answer has ``x-request-id``. Follows the OpenAI API
  reference (Chat > Create chat completion, the ChatCompletion object), the "Rate limits"
  guide (headers) and "Error codes" guide; the error messages are the ones the API returns
  (for example "Incorrect API key provided", "Missing required parameter: 'messages'.",
  "We could not parse the JSON body of your request...").
* **Anthropic Messages** -- ``POST /v1/messages``; requires ``x-api-key`` and
  ``anthropic-version``; the body requires ``model``, ``max_tokens`` and a non-empty
  ``messages``. Success is ``{id: "msg_...", type: "message", role: "assistant", model,
  content: [{type: "text", text}], stop_reason, stop_sequence, usage{input_tokens,
  output_tokens, ...}}``. Errors are ``{"type": "error", "error": {"type", "message"},
  "request_id"}`` with the types of Anthropic's "Errors" page (400 invalid_request_error,
  401 authentication_error, 403 permission_error, 404 not_found_error, 413
  request_too_large, 429 rate_limit_error, 500 api_error, 529 overloaded_error); every
  answer has a ``request-id`` header; 429s carry ``retry-after`` and the
  ``anthropic-ratelimit-requests-*`` headers of the "Rate limits" page (reset as RFC 3339).
* **Cohere Chat v2** -- ``POST /v2/chat``; ``Authorization: Bearer``. Success is ``{id,
  finish_reason: "COMPLETE" | "MAX_TOKENS", message: {role: "assistant", content: [{type:
  "text", text}]}, usage: {billed_units: {input_tokens, output_tokens}, tokens:
  {input_tokens, output_tokens}}}`` (Cohere's Chat API reference and "Using the Chat API"
  page). Errors are ``{"message": "..."}`` with the messages of Cohere's "Errors" page
  ("no api key supplied", "invalid api token", "invalid request: ...", "You are past the
  per minute request limit, please wait and try again later.").

Where the documentation shows no wording (Cohere's messages for a missing ``model``, an
unknown field or unparsable JSON; OpenAI's and Anthropic's wording for rarer cases such as
403), the message follows the provider's style but is not verbatim: match error *types*,
codes and statuses in tests, not these sentences. Only non-streaming calls are served
(``stream: true`` gets a 400).

Answers are deterministic: the assistant text is ``"echo: <last user message>"`` (or a fixed
``answer``), token counts are whitespace word counts, and a ``max_tokens`` smaller than the
answer cuts it to that many words with the provider's "length" finish reason.

Behaviour is configured per model (:class:`ModelBehaviour`, looked up by the request's
``model``; exact name first, then glob patterns such as ``"gpt-*"``, then the default):
latency, 429 / 5xx rates (drawn from a hash of seed, model, prompt and attempt number, so a
given prompt's n-th attempt always gets the same outcome whatever the interleaving),
deterministic failures (``fail_always_status``, ``fail_first_n``, ``fail_every_n``),
malformed bodies, dropped connections, a context window and a sliding-window RPM limit.

Every request is recorded (:class:`RecordedRequest`); tests read them through
:class:`FakeProvider` and other processes through ``GET /_fake/requests`` and
``GET /_fake/stats``; ``POST /_fake/reset``, ``POST /_fake/behaviour`` and
``POST /_fake/config`` change it at run time.

Use::

    with FakeProvider(config={"default": {"latency_ms": 5}}) as fp:
        httpx.post(f"{fp.openai_base}/chat/completions", ...)
        assert fp.count(status=200) == 1

or ``batcher fake-provider --port 9999`` (:data:`fake_provider_command`, :func:`serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as _dt
import fnmatch
import hashlib
import json
import logging
import math
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import click
from aiohttp import web
from click.core import ParameterSource
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "PROVIDERS",
    "FakeProvider",
    "FakeProviderConfig",
    "ModelBehaviour",
    "RecordedRequest",
    "fake_provider_command",
    "max_in_window",
    "serve",
    "serve_async",
]

logger = logging.getLogger(__name__)

ProviderName = Literal["openai", "anthropic", "cohere"]
PROVIDERS: tuple[ProviderName, ...] = ("openai", "anthropic", "cohere")

MalformedMode = Literal["html", "html_200", "truncated", "non_json", "empty", "wrong_shape"]

_MAX_BODY_BYTES = 32 * 1024 * 1024  # Anthropic's documented Messages API request limit
_SHUTDOWN_TIMEOUT_S = 0.5  # in-flight handlers get this long at stop(), then are cancelled
_LISTEN_BACKLOG = 2048  # 500 clients connecting at once must not overflow the accept queue
_NOMINAL_RPM = 10_000  # limit reported on behaviour-driven 429s when no RPM limit is configured


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


class ModelBehaviour(BaseModel):
    """How the fake answers requests for one model (frozen; build a new one to change it).

    Order of evaluation for an authenticated, valid request: RPM limit (``rpm_limit`` here
    and the server-wide one) -> ``context_window`` -> ``fail_always_status`` ->
    ``fail_first_n`` -> ``fail_every_n`` -> ``error_rate_429`` / ``error_rate_5xx`` ->
    ``drop_connection`` -> ``malformed`` -> success. ``latency_ms`` (plus jitter) is slept
    before every answer except 429s and 400s from validation / auth.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(0.0, ge=0, description="asyncio.sleep before answering")
    latency_jitter_ms: float = Field(0.0, ge=0, description="extra uniform [0, jitter) latency")
    error_rate_429: float = Field(0.0, ge=0, le=1, description="probability of a 429")
    error_rate_5xx: float = Field(0.0, ge=0, le=1, description="probability of a 5xx")
    error_5xx_status: int = Field(500, ge=500, le=599, description="status of error_rate_5xx")
    retry_after_s: float | None = Field(
        1.0, ge=0, description="retry-after on behaviour-driven 429s (None: header omitted)"
    )
    fail_always_status: int | None = Field(None, ge=400, le=599)
    fail_first_n: int = Field(0, ge=0, description="the first N requests fail, then succeed")
    fail_first_status: int = Field(500, ge=400, le=599)
    fail_first_scope: Literal["model", "prompt"] = Field(
        "model", description="count the first N per model, or per (model, prompt)"
    )
    fail_every_n: int = Field(0, ge=0, description="every N-th request for the model fails")
    fail_every_status: int = Field(429, ge=400, le=599)
    malformed: MalformedMode | None = Field(
        None,
        description=(
            "html: 502 HTML gateway page; html_200: 200 with an HTML body; truncated: 200 "
            "JSON cut in half; non_json: 200 text/plain; empty: 200 with no body; "
            "wrong_shape: 200 JSON of the wrong shape"
        ),
    )
    drop_connection: bool = Field(False, description="close the connection without answering")
    answer: str | None = Field(None, description="fixed assistant text instead of the echo")
    rpm_limit: int | None = Field(None, ge=1, description="per-model sliding-window limit")
    context_window: int | None = Field(None, ge=1, description="prompts of more words get the provider's context error")
    error_message: str | None = Field(
        None, description="message of behaviour-driven errors instead of the provider's own"
    )

    @model_validator(mode="after")
    def _rates_add_up(self) -> ModelBehaviour:
        if self.error_rate_429 + self.error_rate_5xx > 1.0 + 1e-9:
            raise ValueError("error_rate_429 + error_rate_5xx must not exceed 1")
        return self


class FakeProviderConfig(BaseModel):
    """Server-wide configuration. ``models`` keys are model names or glob patterns."""

    model_config = ConfigDict(extra="forbid")

    default: ModelBehaviour = Field(default_factory=ModelBehaviour)
    models: dict[str, ModelBehaviour] = Field(default_factory=dict)
    rpm_limit: int | None = Field(None, ge=1, description="all models together, sliding window")
    rpm_window_s: float = Field(60.0, gt=0, description="length of the RPM sliding window")
    expected_api_key: str | None = Field(None, description="any other key gets a 401")
    expected_api_keys: dict[ProviderName, str] = Field(
        default_factory=dict, description="per-provider override of expected_api_key"
    )
    seed: int | None = Field(0, description="None: error draws are truly random")
    strict_params: bool = Field(True, description="reject unknown body fields like the APIs do")
    record_bodies: bool = Field(True, description="keep request bodies in the recording")
    record_headers: bool = Field(True, description="keep request headers in the recording")


# --------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake saw it.

    ``status`` is None while the request is being served, 0 when no answer was sent (outcome
    ``dropped``: ``drop_connection``; ``cancelled``: the server stopped), 499 when the client
    went away during the latency (outcome ``client_gone``). Other outcomes: ``ok``, ``auth``,
    ``bad_request``, ``rpm_limited``, ``context_window``, ``fail_always``, ``fail_first_n``,
    ``fail_every_n``, ``error_429``, ``error_5xx``, ``malformed:<mode>``, ``unknown_path``.
    """

    seq: int
    provider: str
    method: str
    path: str
    model: str | None
    prompt: str | None  # text of the last user message
    raw_body: bytes  # as received (b"" when record_bodies=False)
    headers: dict[str, str]  # lower-cased names -> values, auth values included
    api_key: str | None  # the key as sent (Bearer token / x-api-key)
    arrived_monotonic: float
    arrived_wall: float
    attempt: int = 0  # 1-based attempt number for (model, prompt); 0 if not reached
    status: int | None = None
    outcome: str = "pending"
    finished_monotonic: float | None = None
    response_id: str | None = None
    reply: str | None = None

    # The parsed body is not kept: thousands of recorded dicts would make every garbage
    # collection walk them and cost the server a large share of its throughput.
    @property
    def body(self) -> Any:
        """The request body parsed as JSON (None if it was not JSON or not recorded)."""
        if not self.raw_body:
            return None
        try:
            return json.loads(self.raw_body)
        except ValueError:
            return None

    @property
    def header_names(self) -> list[str]:
        return sorted(self.headers)

    def to_dict(self, *, body: bool = True) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "provider": self.provider,
            "method": self.method,
            "path": self.path,
            "model": self.model,
            "prompt": self.prompt,
            "body": self.body if body else None,
            "headers": self.headers,
            "api_key": self.api_key,
            "arrived_monotonic": self.arrived_monotonic,
            "arrived_wall": self.arrived_wall,
            "attempt": self.attempt,
            "status": self.status,
            "outcome": self.outcome,
            "finished_monotonic": self.finished_monotonic,
            "response_id": self.response_id,
            "reply": self.reply,
        }


def max_in_window(times: Iterable[float], window_s: float) -> int:
    """Largest number of timestamps inside any half-open window ``[t, t + window_s)``."""
    ts = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ts):
        while ts[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


# --------------------------------------------------------------------------------------
# Wire formats
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Failure:
    """An error answer before it is put in a provider's shape."""

    status: int
    kind: str  # auth_missing auth_invalid bad_request not_found permission rate_limit ...
    message: str | None = None  # None: the provider's usual message for the kind
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None
    rl_limit: int | None = None  # rate-limit header values, when a limiter is involved
    rl_remaining: int | None = None
    rl_reset_s: float | None = None


_KIND_BY_STATUS = {
    400: "bad_request",
    401: "auth_invalid",
    403: "permission",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    422: "unprocessable",
    429: "rate_limit",
    529: "overloaded",
}


def _kind_for_status(status: int) -> str:
    return _KIND_BY_STATUS.get(status, "server_error" if status >= 500 else "bad_request")


def _text_of(content: Any) -> str:
    """Plain text of a message's content: a string or a list of ``{type: text, text}``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(parts)
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def _word_count(text: str) -> int:
    return len(text.split())


def _fmt_seconds(s: float) -> str:
    """``1`` for whole seconds, else up to millisecond precision (``0.25``)."""
    ms = math.ceil(s * 1000 - 1e-9)
    if ms % 1000 == 0:
        return str(ms // 1000)
    return f"{ms / 1000:.3f}".rstrip("0")


def _fmt_duration(s: float) -> str:
    """OpenAI's reset duration style: ``"120ms"``, ``"1s"``, ``"6.5s"``, ``"6m0s"``."""
    if s < 1:
        return f"{max(1, math.ceil(s * 1000))}ms"
    if s < 60:
        return f"{_fmt_seconds(s)}s"
    minutes, sec = divmod(math.ceil(s), 60)
    return f"{minutes}m{sec}s"


def _rfc3339_in(s: float) -> str:
    at = _dt.datetime.fromtimestamp(time.time() + s, tz=_dt.UTC)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def _random_id(n: int) -> str:
    return os.urandom((n + 1) // 2).hex()[:n]


class _Provider:
    """One provider's wire format: auth, validation, success and error bodies."""

    name: ProviderName
    known_params: frozenset[str] = frozenset()
    length_reason: str = "length"

    # --- auth / headers -----------------------------------------------------------------

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("authorization")
        if auth is None:
            return None
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    def check_headers(self, headers: Mapping[str, str]) -> _Failure | None:
        return None

    # --- body ----------------------------------------------------------------------------

    def invalid_json(self) -> _Failure:
        raise NotImplementedError

    def validate(self, body: dict[str, Any], strict: bool) -> _Failure | None:
        raise NotImplementedError

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_tokens")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def prompt_words(self, body: dict[str, Any]) -> int:
        total = 0
        for m in body.get("messages") or ():
            if isinstance(m, dict):
                total += _word_count(_text_of(m.get("content")))
        return total

    # --- answers -------------------------------------------------------------------------

    def success(
        self,
        model: str,
        text: str,
        truncated: bool,
        prompt_tokens: int,
        completion_tokens: int,
        body: dict[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        """(response id, JSON body)."""
        raise NotImplementedError

    def error_body(self, failure: _Failure, model: str | None, request_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def context_failure(self, words: int, window: int) -> _Failure:
        raise NotImplementedError

    def request_id_headers(self) -> tuple[str, dict[str, str]]:
        raise NotImplementedError

    def rate_limit_headers(self, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
        return {}


class _OpenAI(_Provider):
    name: ProviderName = "openai"
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

    def invalid_json(self) -> _Failure:
        return _Failure(
            400,
            "bad_request",
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON. If you have trouble figuring out how to fix "
            "this, please contact us through our help center at help.openai.com.)",
        )

    def validate(self, body: dict[str, Any], strict: bool) -> _Failure | None:
        if strict:
            for key in body:
                if key not in self.known_params:
                    return _Failure(400, "bad_request", f"Unrecognized request argument supplied: {key}")
        if not isinstance(body.get("model"), str) or not body["model"]:
            return _Failure(400, "bad_request", "you must provide a model parameter")
        if "messages" not in body:
            return _missing_openai("messages")
        messages = body["messages"]
        if not isinstance(messages, list):
            return _Failure(
                400,
                "bad_request",
                f"Invalid type for 'messages': expected an array of objects, but got {_json_type(messages)} instead.",
                param="messages",
                code="invalid_type",
            )
        if not messages:
            return _Failure(
                400,
                "bad_request",
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                param="messages",
                code="empty_array",
            )
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                return _Failure(
                    400,
                    "bad_request",
                    f"Invalid type for 'messages[{i}]': expected an object, but got {_json_type(m)} instead.",
                    param=f"messages[{i}]",
                    code="invalid_type",
                )
            if "role" not in m:
                return _missing_openai(f"messages[{i}].role")
            if m["role"] not in self.roles:
                return _Failure(
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
                return _Failure(
                    400,
                    "bad_request",
                    f"Invalid type for '{name}': expected an integer, but got {_json_type(value)} instead.",
                    param=name,
                    code="invalid_type",
                )
            if value < 1:
                return _Failure(
                    400,
                    "bad_request",
                    f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
                    param=name,
                    code="integer_below_min_value",
                )
        if body.get("stream"):
            return _Failure(400, "bad_request", "The fake provider does not stream: send stream=false.")
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
        rid = f"chatcmpl-{_random_id(29)}"
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

    def error_body(self, failure: _Failure, model: str | None, request_id: str) -> dict[str, Any]:
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
            failure = _Failure(failure.status, kind, message, None, code)
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
                + (f" Please try again in {_fmt_duration(wait)}." if wait is not None else "")
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

    def context_failure(self, words: int, window: int) -> _Failure:
        return _Failure(
            400,
            "context",
            f"This model's maximum context length is {window} tokens. However, your messages "
            f"resulted in {words} tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )

    def request_id_headers(self) -> tuple[str, dict[str, str]]:
        rid = f"req_{_random_id(32)}"
        return rid, {"x-request-id": rid, "openai-version": "2020-10-01"}

    def rate_limit_headers(self, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(max(0, remaining)),
            "x-ratelimit-reset-requests": _fmt_duration(reset_s),
        }


def _missing_openai(param: str) -> _Failure:
    return _Failure(
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


class _Anthropic(_Provider):
    name: ProviderName = "anthropic"
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

    def check_headers(self, headers: Mapping[str, str]) -> _Failure | None:
        version = headers.get("anthropic-version")
        if not version:
            return _Failure(400, "bad_request", "anthropic-version: header is required")
        return None

    def invalid_json(self) -> _Failure:
        return _Failure(400, "bad_request", "The request body is not valid JSON.")

    def validate(self, body: dict[str, Any], strict: bool) -> _Failure | None:
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return _Failure(400, "bad_request", f"{name}: Field required")
        if strict:
            for key in body:
                if key not in self.known_params:
                    return _Failure(400, "bad_request", f"{key}: Extra inputs are not permitted")
        if not isinstance(body["model"], str) or not body["model"]:
            return _Failure(400, "bad_request", "model: Input should be a valid string")
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return _Failure(400, "bad_request", "max_tokens: Input should be a valid integer")
        if max_tokens < 1:
            return _Failure(400, "bad_request", "max_tokens: Input should be greater than or equal to 1")
        messages = body["messages"]
        if not isinstance(messages, list):
            return _Failure(400, "bad_request", "messages: Input should be a valid list")
        if not messages:
            return _Failure(400, "bad_request", "messages: at least one message is required")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                return _Failure(400, "bad_request", f"messages.{i}: Input should be a valid dictionary")
            role = m.get("role")
            if role is None:
                return _Failure(400, "bad_request", f"messages.{i}.role: Field required")
            if role not in ("user", "assistant"):
                return _Failure(
                    400,
                    "bad_request",
                    f'messages: Unexpected role "{role}". The Messages API accepts a top-level '
                    f'`system` parameter, not "{role}" as an input message role.',
                )
            if "content" not in m:
                return _Failure(400, "bad_request", f"messages.{i}.content: Field required")
        if body.get("stream"):
            return _Failure(400, "bad_request", "The fake provider does not stream: send stream=false.")
        return None

    def prompt_words(self, body: dict[str, Any]) -> int:
        return super().prompt_words(body) + _word_count(_text_of(body.get("system")))

    def success(
        self,
        model: str,
        text: str,
        truncated: bool,
        prompt_tokens: int,
        completion_tokens: int,
        body: dict[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        rid = f"msg_01{_random_id(22)}"
        return rid, {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
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

    def error_body(self, failure: _Failure, model: str | None, request_id: str) -> dict[str, Any]:
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

    def context_failure(self, words: int, window: int) -> _Failure:
        return _Failure(400, "context", f"prompt is too long: {words} tokens > {window} maximum")

    def request_id_headers(self) -> tuple[str, dict[str, str]]:
        rid = f"req_011C{_random_id(20)}"
        return rid, {"request-id": rid}

    def rate_limit_headers(self, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
        return {
            "anthropic-ratelimit-requests-limit": str(limit),
            "anthropic-ratelimit-requests-remaining": str(max(0, remaining)),
            "anthropic-ratelimit-requests-reset": _rfc3339_in(reset_s),
        }


class _Cohere(_Provider):
    name: ProviderName = "cohere"
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

    def invalid_json(self) -> _Failure:
        return _Failure(400, "bad_request", "invalid request: could not parse the JSON body")

    def validate(self, body: dict[str, Any], strict: bool) -> _Failure | None:
        if strict:
            for key in body:
                if key not in self.known_params:
                    return _Failure(
                        400,
                        "bad_request",
                        f"invalid request: unknown field: parameter {key} is not a valid field",
                    )
        if not isinstance(body.get("model"), str) or not body["model"]:
            return _Failure(400, "bad_request", "invalid request: model is required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _Failure(400, "bad_request", "invalid request: messages must contain at least one message")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in (
                "system",
                "user",
                "assistant",
                "tool",
            ):
                return _Failure(
                    400,
                    "bad_request",
                    f"invalid request: messages[{i}].role must be one of system, user, assistant, tool",
                )
            if m["role"] == "user" and not _text_of(m.get("content")).strip():
                return _Failure(400, "bad_request", "message must not be empty in a turn")
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            return _Failure(400, "bad_request", "invalid request: max_tokens must be a positive integer")
        if body.get("stream"):
            return _Failure(400, "bad_request", "The fake provider does not stream: send stream=false.")
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
        return rid, {
            "id": rid,
            "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
            "finish_reason": self.length_reason if truncated else "COMPLETE",
            "usage": {"billed_units": counts, "tokens": dict(counts)},
        }

    def error_body(self, failure: _Failure, model: str | None, request_id: str) -> dict[str, Any]:
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

    def context_failure(self, words: int, window: int) -> _Failure:
        return _Failure(
            400,
            "context",
            f"too many tokens: total number of tokens in the prompt cannot exceed {window} - "
            f"received {words}. Try using a shorter prompt, or enabling prompt truncating. See "
            "https://docs.cohere.com/reference/chat for more details.",
        )

    def request_id_headers(self) -> tuple[str, dict[str, str]]:
        rid = _random_id(32)
        return rid, {"x-debug-trace-id": rid}


_ADAPTERS: dict[str, _Provider] = {"openai": _OpenAI(), "anthropic": _Anthropic(), "cohere": _Cohere()}

_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_HTML_200 = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    b"<body><p>Checking your browser before accessing the API.</p></body></html>"
)
_NON_JSON = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class _Window:
    """Sliding window of admitted request times."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def prune(self, now: float, window_s: float) -> None:
        times = self.times
        cutoff = now - window_s
        while times and times[0] <= cutoff:
            times.popleft()


class FakeProvider:
    """The fake provider server. Start it in a background thread (``with FakeProvider():``,
    ``start()`` / ``stop()``) or in the running loop (``async with``, ``astart()`` /
    ``astop()``).

    ``config`` is a :class:`FakeProviderConfig` or a mapping of its fields; keyword
    arguments override single fields (``FakeProvider(expected_api_key="k")``).
    """

    def __init__(
        self,
        port: int = 0,
        config: FakeProviderConfig | Mapping[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        **overrides: Any,
    ) -> None:
        if config is None:
            cfg = FakeProviderConfig(**overrides)
        elif isinstance(config, FakeProviderConfig):
            cfg = config.model_copy(update=overrides) if overrides else config
            cfg = FakeProviderConfig.model_validate(cfg.model_dump())
        else:
            cfg = FakeProviderConfig.model_validate({**dict(config), **overrides})
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._initial_config = cfg
        self._lock = threading.Lock()
        self._apply_config(cfg)
        self._reset_state()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested: asyncio.Event | None = None

    # --- configuration ------------------------------------------------------------------

    def _apply_config(self, cfg: FakeProviderConfig) -> None:
        with self._lock:
            self._default = cfg.default
            self._models: dict[str, ModelBehaviour] = dict(cfg.models)
            self._rpm_limit = cfg.rpm_limit
            self._rpm_window_s = cfg.rpm_window_s
            self._expected_key = cfg.expected_api_key
            self._expected_keys: dict[str, str] = {str(k): v for k, v in cfg.expected_api_keys.items()}
            self._seed = cfg.seed
            self._rng = random.Random(cfg.seed)
            self._strict = cfg.strict_params
            self._record_bodies = cfg.record_bodies
            self._record_headers = cfg.record_headers
            self._behaviour_cache: dict[str, ModelBehaviour] = {}

    def _reset_state(self) -> None:
        with self._lock:
            self._records: list[RecordedRequest] = []
            self._seq = 0
            self._model_counts: dict[str, int] = {}
            self._attempts: dict[str, dict[str, int]] = {}
            self._global_window = _Window()
            self._model_windows: dict[str, _Window] = {}
            if not hasattr(self, "_in_flight"):
                self._in_flight = 0
            self._max_in_flight = self._in_flight

    @property
    def config(self) -> FakeProviderConfig:
        """A snapshot of the configuration in force."""
        with self._lock:
            return FakeProviderConfig(
                default=self._default,
                models=dict(self._models),
                rpm_limit=self._rpm_limit,
                rpm_window_s=self._rpm_window_s,
                expected_api_key=self._expected_key,
                expected_api_keys=dict(self._expected_keys),  # type: ignore[arg-type]
                seed=self._seed,
                strict_params=self._strict,
                record_bodies=self._record_bodies,
                record_headers=self._record_headers,
            )

    def configure(self, **changes: Any) -> FakeProviderConfig:
        """Change server-wide fields at run time (``rpm_limit=600``, ``expected_api_key=...``).

        Recordings and counters are kept; a new ``seed`` restarts the latency RNG.
        """
        merged = {**self.config.model_dump(), **changes}
        cfg = FakeProviderConfig.model_validate(merged)
        self._apply_config(cfg)
        return cfg

    def set_behaviour(
        self, model: str | None, behaviour: ModelBehaviour | Mapping[str, Any] | None = None, **fields: Any
    ) -> None:
        """Set how ``model`` (a name or a glob pattern; None: the default) is answered.

        ``behaviour=None`` without fields removes the model's override (back to the default).
        The model's counters (``fail_first_n``, ``fail_every_n``, attempts) restart.
        """
        new: ModelBehaviour | None
        if behaviour is None and not fields:
            new = None
        elif isinstance(behaviour, ModelBehaviour):
            new = behaviour.model_copy(update=fields) if fields else behaviour
            new = ModelBehaviour.model_validate(new.model_dump())
        else:
            new = ModelBehaviour.model_validate({**dict(behaviour or {}), **fields})
        with self._lock:
            if model is None:
                self._default = new if new is not None else ModelBehaviour()
                self._model_counts.clear()
                self._attempts.clear()
            else:
                models = dict(self._models)
                if new is None:
                    models.pop(model, None)
                else:
                    models[model] = new
                self._models = models
                for name in [m for m in self._model_counts if fnmatch.fnmatchcase(m, model)]:
                    del self._model_counts[name]
                for name in [m for m in self._attempts if fnmatch.fnmatchcase(m, model)]:
                    del self._attempts[name]
            self._behaviour_cache = {}

    def behaviour_for(self, model: str) -> ModelBehaviour:
        """The behaviour a request for ``model`` gets."""
        # Read the cache before the models: set_behaviour() swaps the models first and the
        # cache second, so a result computed from stale models lands in a discarded cache.
        cache = self._behaviour_cache
        cached = cache.get(model)
        if cached is not None:
            return cached
        models = self._models
        found = models.get(model)
        if found is None:
            for pattern, b in models.items():
                if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern):
                    found = b
                    break
        result = found if found is not None else self._default
        cache[model] = result
        return result

    def reset(self, *, config: bool = False) -> None:
        """Forget recordings, counters and RPM windows; with ``config=True`` also go back to
        the configuration the server was created with."""
        if config:
            self._apply_config(self._initial_config)
        self._reset_state()

    # --- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake provider is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base(self) -> str:
        """OpenAI SDK convention: the base includes ``/v1``."""
        return f"{self.url}/v1"

    @property
    def anthropic_base(self) -> str:
        """Anthropic SDK convention: the base has no ``/v1``; the path is ``/v1/messages``."""
        return self.url

    @property
    def cohere_base(self) -> str:
        """Cohere convention: the base has no version; the path is ``/v2/chat``."""
        return self.url

    def base_url(self, provider: str) -> str:
        return {"openai": self.openai_base, "anthropic": self.anthropic_base}.get(provider, self.cohere_base)

    # --- recordings ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Copies of every recorded request, in arrival order."""
        with self._lock:
            return [copy.copy(r) for r in self._records]

    def _select(
        self,
        model: str | None,
        status: int | None,
        provider: str | None,
        prompt: str | None,
        outcome: str | None,
    ) -> list[RecordedRequest]:
        with self._lock:
            records = list(self._records)
        return [
            r
            for r in records
            if (model is None or r.model == model)
            and (status is None or r.status == status)
            and (provider is None or r.provider == provider)
            and (prompt is None or r.prompt == prompt)
            and (outcome is None or r.outcome == outcome)
        ]

    def count(
        self,
        model: str | None = None,
        status: int | None = None,
        *,
        provider: str | None = None,
        prompt: str | None = None,
        outcome: str | None = None,
    ) -> int:
        """How many recorded requests match every filter given."""
        if model is None and status is None and provider is None and prompt is None and outcome is None:
            with self._lock:
                return len(self._records)
        return len(self._select(model, status, provider, prompt, outcome))

    def max_in_window(
        self,
        window_s: float = 60.0,
        *,
        model: str | None = None,
        status: int | None = None,
        provider: str | None = None,
    ) -> int:
        """Most requests (by arrival) in any sliding window of ``window_s`` seconds."""
        records = self._select(model, status, provider, None, None)
        return max_in_window((r.arrived_monotonic for r in records), window_s)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """Most requests being served at the same time since the last reset."""
        return self._max_in_flight

    def wait_for_requests(
        self, n: int, timeout: float = 10.0, *, finished: bool = True, **filters: Any
    ) -> list[RecordedRequest]:
        """Block until at least ``n`` requests matching ``filters`` (see :meth:`count`) have
        arrived (and, with ``finished``, been answered). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            matching = self._select(
                filters.get("model"),
                filters.get("status"),
                filters.get("provider"),
                filters.get("prompt"),
                filters.get("outcome"),
            )
            if finished:
                matching = [r for r in matching if r.status is not None]
            if len(matching) >= n:
                return [copy.copy(r) for r in matching]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(matching)} of {n} requests after {timeout}s")
            time.sleep(0.01)

    def stats(self) -> dict[str, Any]:
        """Counts by status, model, provider and outcome, and concurrency figures."""
        with self._lock:
            records = list(self._records)
            window_s = self._rpm_window_s
        by_status: dict[str, int] = {}
        by_model: dict[str, int] = {}
        by_provider: dict[str, int] = {}
        by_outcome: dict[str, int] = {}
        for r in records:
            key = "pending" if r.status is None else str(r.status)
            by_status[key] = by_status.get(key, 0) + 1
            by_model[str(r.model)] = by_model.get(str(r.model), 0) + 1
            by_provider[r.provider] = by_provider.get(r.provider, 0) + 1
            by_outcome[r.outcome] = by_outcome.get(r.outcome, 0) + 1
        return {
            "total": len(records),
            "by_status": by_status,
            "by_model": by_model,
            "by_provider": by_provider,
            "by_outcome": by_outcome,
            "in_flight": self._in_flight,
            "max_in_flight": self._max_in_flight,
            "rpm_window_s": window_s,
            "max_in_rpm_window": max_in_window((r.arrived_monotonic for r in records), window_s),
            "max_200_in_rpm_window": max_in_window((r.arrived_monotonic for r in records if r.status == 200), window_s),
        }

    # --- lifecycle: background thread ---------------------------------------------------

    def start(self, timeout: float = 10.0) -> FakeProvider:
        """Serve from a background thread with its own event loop; returns once listening."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("the fake provider is already running")
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                try:
                    loop.run_until_complete(self._astart_server())
                except BaseException as exc:
                    errors.append(exc)
                    ready.set()
                    return
                ready.set()
                loop.run_forever()
                loop.run_until_complete(self._astop_server())
            finally:
                _close_loop(loop)

        self._thread = threading.Thread(target=run, name=f"fake-provider:{self._requested_port}")
        self._thread.daemon = True
        self._thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise TimeoutError("the fake provider did not start in time")
        if errors:
            self._thread.join()
            self._thread = None
            self._loop = None
            raise errors[0]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the server (in-flight requests get ~0.5 s) and join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("the fake provider thread did not stop in time")
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- lifecycle: current event loop --------------------------------------------------

    async def astart(self) -> FakeProvider:
        """Serve from the running event loop."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("the fake provider is already running")
        self._loop = asyncio.get_running_loop()
        await self._astart_server()
        return self

    async def astop(self) -> None:
        await self._astop_server()
        self._loop = None

    async def __aenter__(self) -> FakeProvider:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    async def _astart_server(self) -> None:
        app = self.make_app()
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
            keepalive_timeout=75.0,
        )
        await runner.setup()
        try:
            sock = _bind(self.host, self._requested_port)
            self._port = sock.getsockname()[1]
            site = web.SockSite(runner, sock, backlog=_LISTEN_BACKLOG)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info("fake provider listening on %s", self.url)

    async def _astop_server(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    # --- the app ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application (routes for the three APIs and ``/_fake``)."""
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._make_handler("openai"))
        app.router.add_post("/v1/messages", self._make_handler("anthropic"))
        app.router.add_post("/v2/chat", self._make_handler("cohere"))
        app.router.add_get("/_fake/health", self._h_health)
        app.router.add_get("/_fake/requests", self._h_requests)
        app.router.add_get("/_fake/stats", self._h_stats)
        app.router.add_post("/_fake/reset", self._h_reset)
        app.router.add_get("/_fake/behaviour", self._h_get_config)
        app.router.add_post("/_fake/behaviour", self._h_behaviour)
        app.router.add_get("/_fake/config", self._h_get_config)
        app.router.add_post("/_fake/config", self._h_config)
        app.router.add_route("*", "/{tail:.*}", self._h_unknown)
        return app

    def _make_handler(self, provider: str) -> Any:
        adapter = _ADAPTERS[provider]

        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(adapter, request)

        return handler

    async def _serve(self, adapter: _Provider, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        wall = time.time()
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        body: Any = None
        parse_ok = True
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            parse_ok = False
        if not isinstance(body, dict):
            parse_ok = False
        model = body.get("model") if parse_ok else None
        model = model if isinstance(model, str) else None
        messages = body.get("messages") if parse_ok else None
        prompt = _last_user_text(messages) if isinstance(messages, list) else None
        api_key = adapter.api_key(headers)

        with self._lock:
            self._seq += 1
            rec = RecordedRequest(
                seq=self._seq,
                provider=adapter.name,
                method=request.method,
                path=request.path,
                model=model,
                prompt=prompt,
                raw_body=raw if self._record_bodies else b"",
                headers=headers if self._record_headers else {},
                api_key=api_key,
                arrived_monotonic=arrived,
                arrived_wall=wall,
            )
            self._records.append(rec)
            self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight
        try:
            return await self._answer(adapter, request, rec, body if parse_ok else None, headers)
        finally:
            with self._lock:
                self._in_flight -= 1
            rec.finished_monotonic = time.monotonic()
            if rec.status is None:  # cancelled (server stopping / client gone)
                rec.outcome = "cancelled"
                rec.status = 0
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s %s model=%s -> %s (%s)",
                    adapter.name,
                    rec.path,
                    rec.model,
                    rec.status,
                    rec.outcome,
                )

    async def _answer(
        self,
        adapter: _Provider,
        request: web.Request,
        rec: RecordedRequest,
        body: dict[str, Any] | None,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        # 1. auth and required headers (before the body, as the real APIs do)
        key = rec.api_key
        if key is None:
            return self._error(adapter, rec, _Failure(401, "auth_missing"), "auth")
        expected = self._expected_keys.get(adapter.name, self._expected_key)
        if expected is not None and key != expected:
            return self._error(adapter, rec, _Failure(401, "auth_invalid", param=key), "auth")
        failure = adapter.check_headers(headers)
        if failure is not None:
            return self._error(adapter, rec, failure, "bad_request")
        # 2. body
        if body is None:
            return self._error(adapter, rec, adapter.invalid_json(), "bad_request")
        failure = adapter.validate(body, self._strict)
        if failure is not None:
            return self._error(adapter, rec, failure, "bad_request")
        model: str = body["model"]
        behaviour = self.behaviour_for(model)
        prompt = rec.prompt or ""

        # 3. admission: RPM limits, counters
        with self._lock:
            now = time.monotonic()
            window_s = self._rpm_window_s
            limits: list[tuple[int, _Window]] = []
            if self._rpm_limit is not None:
                limits.append((self._rpm_limit, self._global_window))
            if behaviour.rpm_limit is not None:
                win = self._model_windows.get(model)
                if win is None:
                    win = self._model_windows[model] = _Window()
                limits.append((behaviour.rpm_limit, win))
            rejected: _Failure | None = None
            rl_headers: tuple[int, int, float] | None = None
            for limit, win in limits:
                win.prune(now, window_s)
                if len(win.times) >= limit:
                    wait = win.times[0] + window_s - now
                    rejected = _Failure(
                        429,
                        "rate_limit",
                        retry_after_s=max(wait, 0.001),
                        rl_limit=limit,
                        rl_remaining=0,
                        rl_reset_s=max(wait, 0.001),
                    )
                    break
            if rejected is None:
                for limit, win in limits:
                    win.times.append(now)
                    remaining = limit - len(win.times)
                    reset = win.times[0] + window_s - now
                    if rl_headers is None or remaining < rl_headers[1]:
                        rl_headers = (limit, remaining, reset)
                count = self._model_counts.get(model, 0) + 1
                self._model_counts[model] = count
                per_model = self._attempts.get(model)
                if per_model is None:
                    per_model = self._attempts[model] = {}
                attempt = per_model.get(prompt, 0) + 1
                per_model[prompt] = attempt
                rec.attempt = attempt
                jitter = self._rng.random() * behaviour.latency_jitter_ms if behaviour.latency_jitter_ms else 0.0
        if rejected is not None:
            return self._error(adapter, rec, rejected, "rpm_limited")
        extra = adapter.rate_limit_headers(*rl_headers) if rl_headers is not None else None

        # 4. behaviour
        failure, outcome = self._behaviour_failure(adapter, behaviour, body, model, prompt, count, attempt)
        delay = (behaviour.latency_ms + jitter) / 1000.0
        if delay > 0 and not (failure is not None and failure.status == 429):
            await asyncio.sleep(delay)
            transport = request.transport
            if transport is None or transport.is_closing():
                # The client gave up (timeout, cancellation) while we were "thinking".
                rec.status = 499
                rec.outcome = "client_gone"
                return web.Response(status=499)
        if failure is not None:
            return self._error(adapter, rec, failure, outcome, extra)
        if behaviour.drop_connection:
            rec.status = 0
            rec.outcome = "dropped"
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError

        # 5. the answer
        text = behaviour.answer if behaviour.answer is not None else f"echo: {prompt}"
        words = text.split()
        limit_tokens = adapter.max_tokens(body)
        truncated = limit_tokens is not None and len(words) > limit_tokens
        if truncated:
            assert limit_tokens is not None
            text = " ".join(words[:limit_tokens])
            completion_tokens = limit_tokens
        else:
            completion_tokens = len(words)
        response_id, payload = adapter.success(
            model, text, truncated, adapter.prompt_words(body), completion_tokens, body
        )
        rec.response_id = response_id
        rec.reply = text
        _, resp_headers = adapter.request_id_headers()
        if extra:
            resp_headers.update(extra)
        if adapter.name == "openai":
            resp_headers["openai-processing-ms"] = str(int(delay * 1000))
        mode = behaviour.malformed
        if mode is not None:
            return self._malformed(rec, mode, payload, resp_headers)
        rec.status = 200
        rec.outcome = "ok"
        return web.Response(
            body=json.dumps(payload).encode(),
            status=200,
            headers=resp_headers,
            content_type="application/json",
        )

    def _behaviour_failure(
        self,
        adapter: _Provider,
        b: ModelBehaviour,
        body: dict[str, Any],
        model: str,
        prompt: str,
        count: int,
        attempt: int,
    ) -> tuple[_Failure | None, str]:
        if b.context_window is not None:
            words = adapter.prompt_words(body)
            if words > b.context_window:
                return adapter.context_failure(words, b.context_window), "context_window"
        if b.fail_always_status is not None:
            return self._status_failure(b, b.fail_always_status), "fail_always"
        if b.fail_first_n:
            n = count if b.fail_first_scope == "model" else attempt
            if n <= b.fail_first_n:
                return self._status_failure(b, b.fail_first_status), "fail_first_n"
        if b.fail_every_n and count % b.fail_every_n == 0:
            return self._status_failure(b, b.fail_every_status), "fail_every_n"
        if b.error_rate_429 or b.error_rate_5xx:
            u = self._draw(model, prompt, attempt)
            if u < b.error_rate_429:
                return self._status_failure(b, 429), "error_429"
            if u < b.error_rate_429 + b.error_rate_5xx:
                return self._status_failure(b, b.error_5xx_status), "error_5xx"
        return None, "ok"

    def _status_failure(self, b: ModelBehaviour, status: int) -> _Failure:
        kind = _kind_for_status(status)
        if status == 429:
            wait = b.retry_after_s
            return _Failure(
                429,
                kind,
                b.error_message,
                retry_after_s=wait,
                rl_limit=b.rpm_limit or self._rpm_limit or _NOMINAL_RPM,
                rl_remaining=0,
                rl_reset_s=wait if wait is not None else 1.0,
            )
        if status == 401:
            return _Failure(status, kind, b.error_message, param="sk-fake-rejected-key")
        return _Failure(status, kind, b.error_message)

    def _draw(self, model: str, prompt: str, attempt: int) -> float:
        """Uniform [0, 1) from (seed, model, prompt, attempt); random when seed is None."""
        if self._seed is None:
            return random.random()
        digest = hashlib.blake2b(f"{self._seed}\x00{model}\x00{prompt}\x00{attempt}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def _error(
        self,
        adapter: _Provider,
        rec: RecordedRequest,
        failure: _Failure,
        outcome: str,
        extra: Mapping[str, str] | None = None,
    ) -> web.Response:
        request_id, headers = adapter.request_id_headers()
        if extra:
            headers.update(extra)
        if failure.status == 429:
            if failure.retry_after_s is not None:
                headers["retry-after"] = _fmt_seconds(failure.retry_after_s)
                headers["retry-after-ms"] = str(math.ceil(failure.retry_after_s * 1000))
            headers.update(
                adapter.rate_limit_headers(
                    failure.rl_limit or 0,
                    failure.rl_remaining or 0,
                    failure.rl_reset_s if failure.rl_reset_s is not None else 1.0,
                )
            )
        if failure.status == 401 and adapter.name == "openai":
            headers["www-authenticate"] = 'Bearer realm="OpenAI API"'
        payload = adapter.error_body(failure, rec.model, request_id)
        rec.status = failure.status
        rec.outcome = outcome
        return web.Response(
            body=json.dumps(payload).encode(),
            status=failure.status,
            headers=headers,
            content_type="application/json",
        )

    def _malformed(
        self,
        rec: RecordedRequest,
        mode: str,
        payload: dict[str, Any],
        headers: dict[str, str],
    ) -> web.Response:
        rec.outcome = f"malformed:{mode}"
        if mode == "html":
            rec.status = 502
            return web.Response(body=_HTML_502, status=502, content_type="text/html")
        rec.status = 200
        if mode == "html_200":
            return web.Response(body=_HTML_200, status=200, content_type="text/html")
        if mode == "non_json":
            return web.Response(body=_NON_JSON, status=200, content_type="text/plain")
        if mode == "empty":
            return web.Response(body=b"", status=200, headers=headers, content_type="application/json")
        if mode == "wrong_shape":
            wrong = {"result": {"output": rec.reply}, "status": "succeeded"}
            return web.Response(
                body=json.dumps(wrong).encode(),
                status=200,
                headers=headers,
                content_type="application/json",
            )
        full = json.dumps(payload).encode()  # truncated
        return web.Response(
            body=full[: len(full) // 2],
            status=200,
            headers=headers,
            content_type="application/json",
        )

    # --- /_fake control endpoints -------------------------------------------------------

    async def _h_unknown(self, request: web.Request) -> web.Response:
        """Any other path: recorded (provider "unknown") and answered like OpenAI does."""
        now, wall = time.monotonic(), time.time()
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self._seq += 1
            rec = RecordedRequest(
                seq=self._seq,
                provider="unknown",
                method=request.method,
                path=request.path,
                model=None,
                prompt=None,
                raw_body=raw if self._record_bodies else b"",
                headers=headers if self._record_headers else {},
                api_key=_ADAPTERS["openai"].api_key(headers) or headers.get("x-api-key"),
                arrived_monotonic=now,
                arrived_wall=wall,
                status=404,
                outcome="unknown_path",
                finished_monotonic=now,
            )
            self._records.append(rec)
        error = {
            "message": f"Invalid URL ({request.method} {request.path})",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        return web.json_response({"error": error}, status=404)

    async def _h_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "url": self.url})

    async def _h_requests(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            status = int(q["status"]) if "status" in q else None
            since = int(q.get("since", "0"))
            limit = int(q["limit"]) if "limit" in q else None
        except ValueError:
            return web.json_response({"error": "status, since and limit are integers"}, status=400)
        records = self._select(q.get("model"), status, q.get("provider"), q.get("prompt"), q.get("outcome"))
        records = [r for r in records if r.seq > since]
        if limit is not None:
            records = records[:limit]
        bodies = q.get("bodies", "1") not in ("0", "false", "no")
        return web.json_response({"count": len(records), "requests": [r.to_dict(body=bodies) for r in records]})

    async def _h_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _h_reset(self, request: web.Request) -> web.Response:
        q = request.query
        self.reset(config=q.get("config", "0") in ("1", "true", "yes"))
        return web.json_response({"ok": True})

    async def _h_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.model_dump(mode="json"))

    async def _h_behaviour(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict) or set(data) - {"model", "behaviour"}:
                raise ValueError('expected {"model": str | null, "behaviour": {...} | null}')
            model = data.get("model")
            if model is not None and not isinstance(model, str):
                raise ValueError("model must be a string or null")
            behaviour = data.get("behaviour")
            if behaviour is not None and not isinstance(behaviour, dict):
                raise ValueError("behaviour must be an object or null")
            self.set_behaviour(model, behaviour)
        except (ValueError, ValidationError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.config.model_dump(mode="json"))

    async def _h_config(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("expected an object of FakeProviderConfig fields")
            cfg = self.configure(**data)
        except (ValueError, ValidationError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(cfg.model_dump(mode="json"))


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# --------------------------------------------------------------------------------------
# Serving from the command line
# --------------------------------------------------------------------------------------


def _banner(fp: FakeProvider) -> str:
    return (
        f"fake provider listening on {fp.url}\n"
        f"  openai:    {fp.openai_base}/chat/completions\n"
        f"  anthropic: {fp.anthropic_base}/v1/messages\n"
        f"  cohere:    {fp.cohere_base}/v2/chat\n"
        f"  control:   {fp.url}/_fake/requests | /_fake/stats | /_fake/reset | /_fake/behaviour"
    )


async def serve_async(
    host: str = "127.0.0.1",
    port: int = 9999,
    config: FakeProviderConfig | Mapping[str, Any] | None = None,
    *,
    stop: asyncio.Event | None = None,
    announce: bool = True,
) -> None:
    """Serve in the running loop until ``stop`` is set (or the task is cancelled)."""
    fp = FakeProvider(port=port, config=config, host=host)
    await fp.astart()
    try:
        if announce:
            click.echo(_banner(fp), err=True)
        await (stop or asyncio.Event()).wait()
    finally:
        await fp.astop()


def serve(
    host: str = "127.0.0.1",
    port: int = 9999,
    config: FakeProviderConfig | Mapping[str, Any] | None = None,
) -> None:
    """Serve until SIGINT / SIGTERM (blocks). What ``batcher fake-provider`` runs."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        await serve_async(host, port, config, stop=stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


@click.command("fake-provider")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9999, show_default=True, type=int, help="0: any free port.")
@click.option("--latency-ms", default=0.0, type=click.FloatRange(min=0), show_default=True)
@click.option("--rpm-limit", default=None, type=click.IntRange(min=1), help="All models.")
@click.option("--error-rate-429", default=0.0, type=click.FloatRange(0, 1), show_default=True)
@click.option("--error-rate-5xx", default=0.0, type=click.FloatRange(0, 1), show_default=True)
@click.option("--retry-after-s", default=1.0, type=click.FloatRange(min=0), show_default=True)
@click.option("--seed", default=0, type=int, show_default=True, help="Seed of error draws.")
@click.option("--expected-key", default=None, help="Answer 401 to any other API key.")
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON file of FakeProviderConfig fields (per-model behaviours); options override it.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every request (slow).")
def fake_provider_command(
    host: str,
    port: int,
    latency_ms: float,
    rpm_limit: int | None,
    error_rate_429: float,
    error_rate_5xx: float,
    retry_after_s: float,
    seed: int,
    expected_key: str | None,
    config_file: str | None,
    verbose: bool,
) -> None:
    """Serve a fake OpenAI / Anthropic / Cohere API for demos and benchmarks.

    Answers POST /v1/chat/completions (OpenAI), /v1/messages (Anthropic) and /v2/chat
    (Cohere v2) with "echo: <last user message>"; GET /_fake/stats and /_fake/requests show
    what arrived. Stop with Ctrl-C or SIGTERM.
    """
    ctx = click.get_current_context()
    data: dict[str, Any] = {}
    if config_file:
        with open(config_file, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise click.UsageError("--config must hold a JSON object of FakeProviderConfig fields")

    def given(name: str) -> bool:
        # Without a config file every option applies; with one, only those given explicitly.
        return not config_file or ctx.get_parameter_source(name) is not ParameterSource.DEFAULT

    default = dict(data.get("default") or {})
    for name, value in (
        ("latency_ms", latency_ms),
        ("error_rate_429", error_rate_429),
        ("error_rate_5xx", error_rate_5xx),
        ("retry_after_s", retry_after_s),
    ):
        if given(name):
            default[name] = value
    data["default"] = default
    if given("seed"):
        data["seed"] = seed
    if rpm_limit is not None:
        data["rpm_limit"] = rpm_limit
    if expected_key is not None:
        data["expected_api_key"] = expected_key
    try:
        config = FakeProviderConfig.model_validate(data)
    except ValidationError as exc:
        raise click.UsageError(f"invalid fake provider configuration:\n{exc}") from exc
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
    try:
        serve(host, port, config)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc


if __name__ == "__main__":  # pragma: no cover
    fake_provider_command()
