"""Request and response bodies. OpenAI objects mirror ``openai.types`` (every key present, ``null`` when unset).

The request bodies' JSON schemas (``/openapi.json``) describe what the routes really accept, so
that a client (or schemathesis) that follows them is never refused for the shape of its request:
model names batcher can route, message shapes, parameter types and ranges (the same pydantic
adapters the checks use), the ``completion_window`` format. The runtime checks stay batcher's own
(``batcher._validation``), for their field names and messages; the schema test keeps the two equal.
What a schema cannot say is documented instead: text must not hold NUL characters, nesting is at
most ``MAX_JSON_DEPTH`` levels, a parameter must be one the chosen model's provider takes.
"""

from __future__ import annotations

import copy
import functools
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from batcher._providers._registry import model_pattern
from batcher._scheduling import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from batcher._states import JobKind, JobState, RequestState
from batcher._validation import (
    MAX_COMPLETION_WINDOW_S,
    MAX_JSON_DEPTH,
    MAX_TIMEOUT_S,
    PARAM_TYPES,
    ROLES,
    WINDOW_PATTERN,
    param_adapter,
)

MODEL_PATTERN = model_pattern()
"""Model names batcher routes (the provider registry, ``batcher._providers._registry``): a provider
prefix, or a known family, of the providers registered when the service starts."""

_MODEL: dict[str, Any] = {
    "type": "string",
    "pattern": MODEL_PATTERN,
    "description": "openai/…, anthropic/…, cohere/… (any model of that provider), or a name of a known family: "
    "gpt-…, o1…, claude-…, command…",
}
_TRUTHY: dict[str, Any] = {"not": {"enum": [None, False, 0, "", [], {}]}}
_MESSAGE: dict[str, Any] = {
    "type": "object",
    "description": "A chat message. Extra keys (name, tool_calls, ...) are passed to the provider.",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": sorted(ROLES)},
        "content": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "object", "required": ["type"]}},
                {"type": "null"},
            ],
            "description": "Text, content parts, or null for an assistant message with tool_calls.",
        },
    },
    "allOf": [
        {
            "if": {"properties": {"content": {"type": "null"}}, "required": ["content"]},
            "then": {"properties": {"role": {"const": "assistant"}, "tool_calls": _TRUTHY}, "required": ["tool_calls"]},
        },
        {
            "if": {"properties": {"role": {"const": "tool"}}, "required": ["role"]},
            "then": {"properties": {"tool_call_id": _TRUTHY}, "required": ["tool_call_id"]},
        },
    ],
}
_CONVERSATION: dict[str, Any] = {"type": "array", "minItems": 1, "items": _MESSAGE, "description": "One conversation."}
_OPTIONS: dict[str, dict[str, Any]] = {
    "api_key": {"type": "string", "pattern": r"\S", "description": "A provider key for this job (sealed)."},
    "api_base": {"type": "string", "pattern": "^https?://", "description": "Needs a key allowed to set it."},
    "base_url": {"type": "string", "pattern": "^https?://", "description": "Another name of api_base."},
    "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S, "description": "Seconds."},
    "request_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
    "mock_response": {
        "type": "string",
        "description": "A canned answer, or one of LiteLLM's mock errors ('litellm.RateLimitError', "
        "'litellm.InternalServerError', ...); no provider is called.",
    },
    "mock_timeout": {"type": "boolean", "description": "True: every request fails as timed out (LiteLLM's mock)."},
    "drop_params": {"type": "boolean", "description": "Drop parameters the provider does not take."},
    "num_retries": {"type": "integer", "minimum": 0, "maximum": 49},
    "max_workers": {"type": "integer", "minimum": 1, "description": "Accepted for LiteLLM compatibility; ignored."},
    "completion_window": {
        "anyOf": [
            {"type": "string", "pattern": WINDOW_PATTERN},
            {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_COMPLETION_WINDOW_S},
        ],
        "description": "A deadline: '24h', '90m', '30d' or a number of seconds; at most 30 days.",
    },
    "metadata": {"type": "object", "description": "Stored on the job, returned with it."},
    "priority": {
        "type": "integer",
        "minimum": MIN_PRIORITY,
        "maximum": MAX_PRIORITY,
        "description": f"{MIN_PRIORITY}-{MAX_PRIORITY}, higher first (default {DEFAULT_PRIORITY}): a higher priority's "
        "backlog is released to the workers before any lower one's. Races (fastest) ignore it.",
    },
}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` references replaced by their definitions."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            # discriminator mappings point into $defs, which are inlined away; anyOf alone says the same
            return {k: resolve(v) for k, v in node.items() if k not in ("$defs", "title", "discriminator")}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    if "patternProperties" in resolved and "additionalProperties" not in resolved:
        resolved["additionalProperties"] = False  # batcher refuses keys outside the pattern (logit_bias)
    return resolved


def _extra_headers_schema() -> dict[str, Any]:
    """``extra_headers`` as ``batcher._egress.check_extra_headers`` takes them: sendable names and values, none
    that carries credentials or that batcher and the HTTP client set."""
    from batcher import _egress

    reserved = sorted(_egress.AUTH_HEADERS | _egress.FRAMING_HEADERS)
    prefixes = "|".join(p.replace("-", "\\-") for p in _egress.FORBIDDEN_HEADER_PREFIXES)
    return {
        "type": "object",
        "maxProperties": _egress.MAX_EXTRA_HEADERS,
        "propertyNames": {
            "pattern": _egress.HEADER_NAME_PATTERN.pattern,
            "maxLength": _egress.MAX_HEADER_NAME,
            "not": {"pattern": f"(?i)^(?:(?:{'|'.join(reserved)})$|{prefixes})"},
        },
        "additionalProperties": {
            "type": "string",
            "pattern": _egress.HEADER_VALUE_PATTERN.pattern,
            "maxLength": _egress.MAX_HEADER_VALUE,
        },
        "description": "Headers added to the provider request; not authentication, framing or proxy headers.",
    }


@functools.cache
def params_schema() -> dict[str, Any]:
    """``params`` of a job: batcher's options, the OpenAI parameters it checks, the other parameters some
    provider takes. Unknown names are refused unless ``drop_params`` is true."""
    from batcher._providers import PROVIDERS

    known: dict[str, Any] = {name: {} for adapter in PROVIDERS.values() for name in adapter.supported_params}
    known.update({name: _inline(param_adapter(name).json_schema()) for name in PARAM_TYPES})
    known["extra_headers"] = _extra_headers_schema()
    known.update(_OPTIONS)
    properties = {name: {"anyOf": [schema, {"type": "null"}]} if schema else {} for name, schema in known.items()}
    return {
        "type": "object",
        "description": "Keyword arguments as in batch_completion: provider parameters (OpenAI's names, types and "
        "ranges) and batcher options. A parameter the model's provider does not take is refused (400 "
        f"unsupported_params) unless drop_params is true. Text must not hold NUL characters; JSON is at most "
        f"{MAX_JSON_DEPTH} levels deep.",
        # Two complete alternatives rather than if/then/else, which generators merge less reliably.
        "anyOf": [
            {"properties": properties, "additionalProperties": False},
            {"properties": {**properties, "drop_params": {"const": True}}, "required": ["drop_params"]},
        ],
    }


def _job_schema(schema: dict[str, Any], *, run: bool) -> None:
    """``JobCreate`` / ``JobRun``: which fields each kind takes (a batch of conversations to one model, a batch
    from an uploaded file, or one conversation to several models)."""
    props = schema["properties"]
    props["params"] = copy.deepcopy({**params_schema(), "default": {}})  # copies: pydantic edits schemas in place
    fanout = {
        "properties": {
            "kind": {"enum": [JobKind.FASTEST.value, JobKind.ALL.value]},
            "models": {"type": "array", "minItems": 1, "items": _MODEL},
            "messages": _CONVERSATION,
            "model": {"type": "null"},
            "input_file_id": {"type": "null"},
        },
        "required": ["kind", "models", "messages"],
    }
    if run:
        schema["allOf"] = [copy.deepcopy(fanout)]
        return
    batch = {
        "properties": {
            "kind": {"const": JobKind.BATCH.value},
            "model": _MODEL,
            "messages": {"type": "array", "minItems": 1, "items": _CONVERSATION},
            "models": {"type": "null"},
            "input_file_id": {"type": "null"},
        },
        "required": ["model", "messages"],
    }
    from_file = {
        "properties": {
            "kind": {"const": JobKind.BATCH.value},
            "input_file_id": {"type": "string"},
            "messages": {"type": "null"},
            "models": {"type": "null"},
        },
        "required": ["input_file_id"],
    }
    schema["anyOf"] = copy.deepcopy([batch, from_file, fanout])


BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A client mistake, named in `param`."},
    401: {"model": ErrorBody, "description": "A missing or unknown API key."},
    403: {"model": ErrorBody, "description": "The key may not do this (such as setting `api_base`)."},
    404: {"model": ErrorBody, "description": "No such object, or not yours."},
    503: {
        "model": ErrorBody,
        "description": "Postgres or Redis is unavailable (or Redis is full): retry after `Retry-After` seconds.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    },
}
"""The error answers every ``/v1`` route can give (``batcher.api.errors``)."""

QUOTA_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "The key's quota of unfinished prompts (`max_queued_prompts`) would be exceeded: nothing was "
        "stored. Retry once some of its work has finished (`Retry-After`, when it can be estimated).",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait (an estimate)."}},
    }
}
"""What the routes that create jobs may answer besides ``ERROR_RESPONSES``."""


# --- OpenAI Files -------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# --- OpenAI Batches -----------------------------------------------------------------------------


OPENAI_COMPLETION_WINDOW = "24h"
"""The only ``completion_window`` OpenAI accepts (and so the only one batcher accepts there)."""
EXPIRES_AFTER_MIN_S = 3_600
EXPIRES_AFTER_MAX_S = 2_592_000
"""OpenAI's bounds of ``expires_after.seconds`` and ``output_expires_after.seconds`` (1 hour to 30 days)."""


class ExpiresAfter(BaseModel):
    """OpenAI's expiration policy: ``seconds`` after the file's ``created_at``."""

    model_config = ConfigDict(
        json_schema_extra={
            "properties": {
                "anchor": {"type": "string", "enum": ["created_at"]},
                "seconds": {"type": "integer", "minimum": EXPIRES_AFTER_MIN_S, "maximum": EXPIRES_AFTER_MAX_S},
            }
        }
    )

    anchor: str
    seconds: int


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(json_schema_extra={"enum": ["/v1/chat/completions"]})
    completion_window: str = Field(
        json_schema_extra={"enum": [OPENAI_COMPLETION_WINDOW]},
        description="'24h', OpenAI's only value (anything else is a 400, as on OpenAI). For another window, send "
        "batcher's extension `batcher_completion_window` as well.",
    )
    metadata: Annotated[
        dict[str, str] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "object",
                        "maxProperties": 16,
                        "propertyNames": {"maxLength": 64},
                        "additionalProperties": {"type": "string", "maxLength": 512},
                    },
                    {"type": "null"},
                ],
                "description": "At most 16 pairs; keys at most 64 characters, values at most 512.",
            }
        ),
    ] = None
    output_expires_after: ExpiresAfter | None = Field(
        None, description="The output and error files expire `seconds` (3600 to 2592000) after they are created."
    )
    batcher_completion_window: str | None = Field(
        None,
        json_schema_extra={"pattern": WINDOW_PATTERN},
        description="batcher's extension (not OpenAI's): the batch's real window, any whole number of s, m, h or "
        "d up to 30 days ('1h', '30m', '7d'); `expires_at` follows it, `completion_window` stays as sent.",
    )
    batcher_priority: Any = Field(
        None,
        json_schema_extra={
            "anyOf": [{"type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY}, {"type": "null"}]
        },
        description=f"batcher's extension (not OpenAI's): the batch's priority, {MIN_PRIORITY}-{MAX_PRIORITY}, higher "
        f"first (default {DEFAULT_PRIORITY}); a higher priority's requests are released to the workers first.",
    )


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class BatchUsage(BaseModel):
    """Token usage summed over the batch's stored responses (``openai.types.BatchUsage``)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None = None
    batcher_completion_window: str | None = Field(
        None, description="batcher's extension: the window used instead of `completion_window`, if one was sent."
    )
    batcher_priority: int = Field(DEFAULT_PRIORITY, description="batcher's extension: the batch's priority (0-9).")


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


# --- native jobs --------------------------------------------------------------------------------


class JobCreate(BaseModel):
    """A job of one of the three kinds, or a batch job from an uploaded JSONL file."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema, _: _job_schema(schema, run=False))

    kind: JobKind = Field(
        JobKind.BATCH,
        description="batch: one request per conversation to `model`; fastest: `messages` (one conversation) "
        "to every model of `models`, first success wins; all: the same, every answer kept.",
    )
    model: str | None = Field(None, description="batch: the model (or the default for file lines naming none).")
    models: list[str] | None = Field(None, description="fastest / all: the models, in order.")
    messages: list[Any] | None = Field(
        None, description="batch: a list of conversations; fastest / all: one conversation (a list of messages)."
    )
    input_file_id: str | None = Field(
        None, description="batch only, instead of `messages`: an uploaded JSONL file, one request per line."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments as in batch_completion: provider parameters (temperature, max_tokens, ...) "
        "and batcher options (timeout, num_retries, mock_response, drop_params, completion_window, metadata, "
        "priority).",
    )


class JobRun(JobCreate):
    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema, _: _job_schema(schema, run=True))

    timeout: float = Field(
        60.0, gt=0, le=3_600, description="Seconds to wait (capped by BATCHER_API_MAX_WAIT_S); the job goes on after."
    )


class JobObject(BaseModel):
    id: uuid.UUID
    object: Literal["job"] = "job"
    kind: JobKind
    state: JobState
    total: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int
    done: int
    progress: float
    params: dict[str, Any]
    metadata: dict[str, Any] | None = None
    winner_index: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None
    priority: int = Field(DEFAULT_PRIORITY, description=f"{MIN_PRIORITY}-{MAX_PRIORITY}, higher first.")
    queued: int = Field(0, description="Requests still in the backlog (stored, not yet released to the workers).")
    position: int | None = Field(
        None,
        description="Where the job stands in line: 1 = released next (or now), 0 = nothing left to release; "
        "null when no dispatcher publishes standings.",
    )
    ahead: int | None = Field(None, description="Requests of other jobs that go before this job's next one.")
    share: float | None = Field(None, description="The fraction (0-1) of the cluster's slots this job gets now.")
    eta_s: float | None = Field(
        None, description="Seconds until its unfinished requests are done at its current rate (null: not known)."
    )


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    first_id: uuid.UUID | None = None
    last_id: uuid.UUID | None = None
    has_more: bool


class ResultErrorOut(BaseModel):
    type: str
    message: str
    status_code: int | None = None
    """The status the provider answered with (``None``: no answer); clients rebuild the exception's own."""
    llm_provider: str | None = None
    body: Any = None
    """The provider's error object (keys redacted), for ``e.body`` / ``e.code`` on the client."""


class ResultLine(BaseModel):
    """One line of ``GET /v1/jobs/{id}/results`` (JSONL), in input order."""

    index: int
    custom_id: str | None = None
    model: str
    state: RequestState
    attempts: int
    latency_ms: float | None = None
    response: dict[str, Any] | None = None
    error: ResultErrorOut | None = None


class JobWait(BaseModel):
    job: JobObject
    done: bool = Field(description="True if what was waited for happened; false if the wait timed out.")
    response: dict[str, Any] | None = Field(None, description="fastest: the winning response.")
    results: list[ResultLine] | None = Field(None, description="all (once final): every model's outcome, in order.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    postgres: str
    redis: str
