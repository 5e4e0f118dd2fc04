"""Checks of user input, run before anything is stored or enqueued.

Every error names the field (``messages[3][0].role``) and says how to fix it. These run
once per prompt on submission paths of 100,000 prompts, so they are plain Python checks
rather than a pydantic model per message.

Limits (documented in ``docs/design.md``, "Input validation"):

* JSON nested deeper than ``MAX_JSON_DEPTH`` levels (messages, parameters, metadata) is refused:
  it would exhaust the recursion of the JSON encoder and of Postgres' ``jsonb`` parser.
* Text that Postgres cannot store is refused: NUL characters (``\\u0000``) and unpaired UTF-16
  surrogates (``\\ud800``); so are NaN and Infinity, which JSON cannot carry.
* The OpenAI parameters batcher knows are checked for type and range (as OpenAI documents them)
  once per job, and once per file line that carries its own parameters: pydantic type adapters
  (``PARAM_TYPES``), which also give the HTTP API's schema.
* ``completion_window`` is at most ``MAX_COMPLETION_WINDOW_S`` and ``timeout`` at most ``MAX_TIMEOUT_S``.
* ``priority`` is a whole number from ``MIN_PRIORITY`` to ``MAX_PRIORITY`` (``batcher._scheduling``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal, Required

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from batcher._exceptions import InvalidRequestError
from batcher._scheduling import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects in a conversation, a parameter or metadata. A conversation
is 3 levels (conversation, message, content parts); a tool's JSON schema rarely passes 20."""
MAX_COMPLETION_WINDOW_S = 30 * 86_400
"""The longest ``completion_window``: 30 days (``"720h"``, ``"30d"``)."""
MAX_TIMEOUT_S = 86_400.0
"""The longest per-call ``timeout``: one day."""


class UnstorableValueError(InvalidRequestError):
    """A value JSON or Postgres cannot hold: a NUL character, an unpaired surrogate, NaN, a non-JSON type."""

    code: ClassVar[str] = "invalid_value"


class NestedTooDeeplyError(InvalidRequestError):
    """JSON nested deeper than ``MAX_JSON_DEPTH``."""

    code: ClassVar[str] = "nested_too_deeply"


# --- JSON values ----------------------------------------------------------------------------------

_NUL_HINT = "holds a NUL character (\\u0000), which cannot be stored; remove it"
_SURROGATE_HINT = (
    "holds an unpaired UTF-16 surrogate (such as \\ud800), which is not valid Unicode; fix the text's encoding"
)


def text_problem(value: str) -> str | None:
    """Why Postgres cannot store this text (None: it can)."""
    if "\x00" in value:
        return _NUL_HINT
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE_HINT
    return None


def check_text(value: str, where: str) -> None:
    if (problem := text_problem(value)) is not None:
        raise UnstorableValueError(problem, field=where)


def _too_deep(where: str) -> NestedTooDeeplyError:
    return NestedTooDeeplyError(
        f"is nested more than {MAX_JSON_DEPTH} levels deep; flatten it (batcher's limit, MAX_JSON_DEPTH)", field=where
    )


def check_json_value(value: Any, where: str, *, depth: int = 1, strings: bool = True) -> None:
    """Refuse what cannot be stored as JSON: nesting deeper than ``MAX_JSON_DEPTH`` (``depth`` is
    the level of ``value`` itself), NaN and Infinity, keys that are not strings, types JSON does not
    have and, with ``strings``, text Postgres cannot store. Errors name the path (``where.a[2].b``);
    a too-deep value is named at ``where``."""
    _walk(value, where, where, depth, strings)


def _walk(value: Any, root: str, here: str, depth: int, strings: bool) -> None:
    if isinstance(value, str):
        if strings:
            check_text(value, here)
        return
    if isinstance(value, bool | int) or value is None:
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnstorableValueError(
                f"is {value!r}, which JSON cannot carry; use a finite number or null", field=here
            )
        return
    if depth > MAX_JSON_DEPTH:
        raise _too_deep(root)
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                if strings:
                    check_text(key, f"{here}.{key}")
            elif not isinstance(key, int) or isinstance(key, bool):
                raise UnstorableValueError(
                    f"has the key {key!r} ({type(key).__name__}); JSON object keys are strings", field=here
                )
            _walk(item, root, f"{here}.{key}", depth + 1, strings)
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _walk(item, root, f"{here}[{i}]", depth + 1, strings)
        return
    raise UnstorableValueError(
        f"is a {type(value).__name__}, which JSON cannot carry; use a string, number, boolean, null, list or object",
        field=here,
    )


_LONE_SURROGATE = re.compile(
    r"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}"
)


def check_json_text(text: str, where: str) -> None:
    """The text of a value encoded by ``to_json`` (ASCII): refuse NUL characters and unpaired
    surrogates. Two substring scans per request; the value is decoded and walked (to name the
    field) only when they find a suspect escape."""
    if "\\u0000" in text or ("\\ud" in text and _LONE_SURROGATE.search(text) is not None):
        check_json_value(json.loads(text), where)  # an escaped backslash ("\\\\u0000") is a false alarm


# --- OpenAI parameters ----------------------------------------------------------------------------
# Types and ranges as OpenAI's Chat Completions reference documents them. Strict: no coercion, so
# what is checked is what is sent ("0.5" is not a number, True is not an integer).

_STRICT = ConfigDict(strict=True, extra="allow", regex_engine="python-re")
_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"

Number = Annotated[float, Field(allow_inf_nan=False)]


def _integral(value: Any) -> Any:
    """JSON has one number type: ``2.0`` is a whole number (as JSON Schema's ``integer`` says)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _not_streamed(value: bool) -> bool:
    if value:
        raise ValueError("streaming is not supported")
    return value


def _whole(ge: int | None = None, le: int | None = None) -> Any:
    """A whole number from ``ge`` to ``le``; the bounds go before the validator so that the JSON schema
    shows them as ``minimum`` / ``maximum``."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]


_BIAS = _whole(ge=-100, le=100)


@with_config(_STRICT)
class _Function(TypedDict, total=False):
    name: Required[Annotated[str, Field(pattern=_NAME_PATTERN)]]
    description: str
    parameters: dict[str, Any]
    strict: bool | None


@with_config(_STRICT)
class _FunctionTool(TypedDict):
    type: Literal["function"]
    function: _Function


@with_config(_STRICT)
class _Custom(TypedDict, total=False):
    name: Required[str]
    description: str
    format: dict[str, Any]


@with_config(_STRICT)
class _CustomTool(TypedDict):
    type: Literal["custom"]
    custom: _Custom


@with_config(_STRICT)
class _NamedFunction(TypedDict):
    name: str


@with_config(_STRICT)
class _FunctionChoice(TypedDict):
    type: Literal["function"]
    function: _NamedFunction


@with_config(_STRICT)
class _CustomChoice(TypedDict):
    type: Literal["custom"]
    custom: _NamedFunction


@with_config(_STRICT)
class _AllowedTools(TypedDict):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


@with_config(_STRICT)
class _AllowedToolsChoice(TypedDict):
    type: Literal["allowed_tools"]
    allowed_tools: _AllowedTools


@with_config(_STRICT)
class _JsonSchema(TypedDict, total=False):
    name: Required[Annotated[str, Field(pattern=_NAME_PATTERN)]]
    description: str
    schema: dict[str, Any]
    strict: bool | None


@with_config(_STRICT)
class _TextFormat(TypedDict):
    type: Literal["text"]


@with_config(_STRICT)
class _JsonObjectFormat(TypedDict):
    type: Literal["json_object"]


@with_config(_STRICT)
class _JsonSchemaFormat(TypedDict):
    type: Literal["json_schema"]
    json_schema: _JsonSchema


PARAM_TYPES: dict[str, tuple[Any, str]] = {
    "temperature": (Annotated[Number, Field(ge=0, le=2)], "a number from 0 to 2"),
    "top_p": (Annotated[Number, Field(ge=0, le=1)], "a number from 0 to 1"),
    "presence_penalty": (Annotated[Number, Field(ge=-2, le=2)], "a number from -2 to 2"),
    "frequency_penalty": (Annotated[Number, Field(ge=-2, le=2)], "a number from -2 to 2"),
    "n": (_whole(ge=1, le=128), "a whole number from 1 to 128"),
    "max_tokens": (_whole(ge=1), "a whole number of at least 1"),
    "max_completion_tokens": (_whole(ge=1), "a whole number of at least 1"),
    "seed": (_whole(ge=-(2**63), le=2**63 - 1), "a whole number (64-bit)"),
    "stop": (
        str | Annotated[list[str], Field(min_length=1, max_length=4)],
        "a string or a list of 1 to 4 strings",
    ),
    "logit_bias": (
        dict[Annotated[str, Field(pattern=r"^[0-9]+$")], _BIAS],  # type: ignore[valid-type]
        "an object mapping token ids (digits) to whole numbers from -100 to 100",
    ),
    "logprobs": (bool, "true or false"),
    "top_logprobs": (_whole(ge=0, le=20), "a whole number from 0 to 20"),
    "response_format": (
        Annotated[_TextFormat | _JsonObjectFormat | _JsonSchemaFormat, Field(discriminator="type")],
        "{'type': 'text'}, {'type': 'json_object'} or {'type': 'json_schema', 'json_schema': {'name': ..., "
        "'schema': {...}}}",
    ),
    "tools": (
        Annotated[list[Annotated[_FunctionTool | _CustomTool, Field(discriminator="type")]], Field(max_length=128)],
        "a list of at most 128 tools such as {'type': 'function', 'function': {'name': 'get_weather', "
        "'parameters': {...}}} (names: letters, digits, _ and -, at most 64)",
    ),
    "tool_choice": (
        Literal["none", "auto", "required"]
        | Annotated[_FunctionChoice | _CustomChoice | _AllowedToolsChoice, Field(discriminator="type")],
        "'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
    ),
    "parallel_tool_calls": (bool, "true or false"),
    "user": (str, "a string"),
    "stream": (
        Annotated[bool, AfterValidator(_not_streamed), WithJsonSchema({"type": "boolean", "const": False})],
        "false (batcher stores whole responses; streaming is not supported)",
    ),
    "extra_body": (dict[str, Any], "an object (sent as extra keys of the provider's request body)"),
    "extra_headers": (dict[str, str], "an object of header names to string values"),
}
"""The OpenAI parameters batcher checks: their type and a description of what is accepted."""


@functools.cache
def param_adapter(name: str) -> TypeAdapter[Any]:
    """The pydantic adapter that checks the parameter ``name`` (built on first use)."""
    return TypeAdapter(PARAM_TYPES[name][0], config=_STRICT)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _input_path(value: Any, error: Any) -> str:
    """The field path (``[0].function.name``) of a pydantic error, found by walking the input along the
    error's location: steps that are not in the input (union members, discriminator tags) are skipped."""
    loc = error["loc"]
    parts: list[str] = []
    current = value
    for i, step in enumerate(loc):
        if isinstance(current, list) and isinstance(step, int) and 0 <= step < len(current):
            parts.append(f"[{step}]")
            current = current[step]
        elif isinstance(current, dict) and isinstance(step, str) and step in current:
            parts.append(f".{step}")
            current = current[step]
        elif i == len(loc) - 1 and error["type"] == "missing" and isinstance(step, str):
            parts.append(f".{step}")
    return "".join(parts)


def check_param(name: str, value: Any, where: str) -> None:
    """Type and range of one OpenAI parameter batcher knows (others are left to the provider's check)."""
    if name not in PARAM_TYPES or value is None:
        return
    if name == "logit_bias" and isinstance(value, dict):
        value = {str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v for k, v in value.items()}
    try:
        param_adapter(name).validate_python(value)
    except ValidationError as exc:
        # The most specific error: the one deepest in the input (a union reports one per member).
        paths = [(_input_path(value, e), e) for e in exc.errors(include_url=False)]
        inner, first = max(paths, key=lambda p: len(p[0]))
        if not inner:
            raise InvalidRequestError(f"must be {PARAM_TYPES[name][1]}, got {_shown(value)}", field=where) from None
        if first["type"] in ("union_tag_not_found", "union_tag_invalid"):
            detail = "needs a known 'type'"
        else:
            detail = f"{first['msg'][:1].lower()}{first['msg'][1:]}"
        raise InvalidRequestError(f"{detail}; {name} must be {PARAM_TYPES[name][1]}", field=f"{where}{inner}") from None


def check_params(params: Mapping[str, Any], where: str = "") -> None:
    """Provider parameters: names are text, known ones have the right type and range, every value is
    storable JSON. ``where`` prefixes the field (``line 12: `` names ``line 12: temperature``)."""
    for name, value in params.items():
        if not isinstance(name, str):
            raise InvalidRequestError(f"parameter names are strings, got {name!r}", field=where.rstrip(": ") or None)
        field_name = f"{where}{name}"
        check_text(name, field_name)
        check_param(name, value, field_name)
        check_json_value(value, field_name, depth=2)


# --- completion windows ---------------------------------------------------------------------------


def _up_to(n: int) -> str:
    """A regular expression for the whole numbers 1..n written without leading zeros."""
    digits = str(n)
    width = len(digits)

    def digit(low: int, high: int) -> str:
        return str(low) if low == high else f"[{low}-{high}]"

    def rest(count: int) -> str:
        return "" if count == 0 else "[0-9]" if count == 1 else f"[0-9]{{{count}}}"

    choices = [f"[1-9]{'' if width == 2 else f'[0-9]{{0,{width - 2}}}'}"] if width > 1 else []
    for i, ch in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(ch) > low:
            choices.append(f"{digits[:i]}{digit(low, int(ch) - 1)}{rest(width - i - 1)}")
    choices.append(digits)
    return "(?:" + "|".join(choices) + ")"


_WINDOW_UNITS_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
WINDOW_PATTERN = (
    "^(?:"
    + "|".join(f"{_up_to(MAX_COMPLETION_WINDOW_S // size)}{unit}" for unit, size in _WINDOW_UNITS_S.items())
    + ")$"
)
"""A ``completion_window`` string: a whole number of s, m, h or d, from 1 s to 30 days. The runtime check
and the HTTP API's schema use this same pattern (Python ``re`` semantics), so they cannot disagree."""
_WINDOW = re.compile(WINDOW_PATTERN)
_WINDOW_LIKE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])\s*$")

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
        "mock_timeout",
        "custom_llm_provider",
        "drop_params",
        "num_retries",
        "max_workers",
        "completion_window",
        "metadata",
        "priority",
    }
)


@dataclass(slots=True)
class CallOptions:
    """The batcher-level options of one call; ``params`` are what the provider receives."""

    params: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None
    api_base: str | None = None
    timeout_s: float | None = None
    mock_response: str | None = None
    mock_error: dict[str, Any] | None = None
    """A mocked failure (``mock_response`` an exception, or one of LiteLLM's error strings, or
    ``mock_timeout=True``): ``{"type": <batcher class name>, "message": ..., "status_code": ...}``."""
    drop_params: bool = False
    max_attempts: int | None = None
    deadline: timedelta | None = None
    metadata: dict[str, Any] | None = None
    priority: int = DEFAULT_PRIORITY
    """0-9, higher first (``batcher._scheduling``): which backlog the dispatcher releases first. Stored on
    ``jobs.priority``; races ignore it (they are never queued behind batches)."""

    @property
    def mocked(self) -> bool:
        """A canned answer or failure: no provider is called (so no key or base URL is needed)."""
        return self.mock_response is not None or self.mock_error is not None


def split_call_kwargs(kwargs: Mapping[str, Any]) -> CallOptions:
    """Separate batcher's options from provider parameters. ``None`` values mean "not set".

    Every value is checked here, once per job: options for their type and range, provider
    parameters with ``check_params`` (types, ranges, storable JSON).
    """
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
        check_text(api_key, "api_key")
        opts.api_key = api_key
    base = kwargs.get("api_base") or kwargs.get("base_url")
    if base is not None:
        if not isinstance(base, str) or not base.startswith(("http://", "https://")):
            raise InvalidRequestError("must be an http(s) URL such as https://api.openai.com/v1", field="api_base")
        check_text(base, "api_base")
        opts.api_base = base
    for name in ("request_timeout", "timeout"):  # LiteLLM's old name and its new one, which wins
        if (timeout := kwargs.get(name)) is None:
            continue
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_TIMEOUT_S  # also refuses NaN
        ):
            raise InvalidRequestError(
                f"must be a positive number of seconds, at most {MAX_TIMEOUT_S:,.0f} (one day); got {_shown(timeout)}",
                field=name,
            )
        opts.timeout_s = float(timeout)
    if (mock := kwargs.get("mock_response")) is not None:
        if isinstance(mock, BaseException):
            opts.mock_error = mock_error_of(mock)
        elif not isinstance(mock, str):
            raise InvalidRequestError(
                "must be the text of the canned answer, an exception, or an error name such as "
                "'litellm.RateLimitError'",
                field="mock_response",
            )
        else:
            check_text(mock, "mock_response")
            if (error := MOCK_ERROR_STRINGS.get(mock)) is not None or mock.startswith(_CONTENT_FILTER_MOCK):
                kind, message, status = error or ("BadRequestError", mock, 400)
                opts.mock_error = {"type": kind, "message": message, "status_code": status}
            else:
                opts.mock_response = mock
    if (mock_timeout := kwargs.get("mock_timeout")) is not None:
        if not isinstance(mock_timeout, bool):
            raise InvalidRequestError(f"must be true or false, got {_shown(mock_timeout)}", field="mock_timeout")
        if mock_timeout:  # LiteLLM's mock: the call times out (batcher does not wait the timeout out)
            opts.mock_response = None
            opts.mock_error = {
                "type": "ProviderTimeoutError",
                "message": "mock timeout: the request timed out (mock_timeout=True)",
                "status_code": 408,
            }
    drop = kwargs.get("drop_params")
    if drop is not None and not isinstance(drop, bool):
        raise InvalidRequestError(f"must be true or false, got {_shown(drop)}", field="drop_params")
    opts.drop_params = bool(drop)
    if (workers := _integral(kwargs.get("max_workers"))) is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise InvalidRequestError(f"must be a whole number of at least 1, got {_shown(workers)}", field="max_workers")
    if (retries := _integral(kwargs.get("num_retries"))) is not None:
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 49:
            raise InvalidRequestError("must be a whole number from 0 to 49", field="num_retries")
        opts.max_attempts = retries + 1
    if (window := kwargs.get("completion_window")) is not None:
        opts.deadline = parse_window(window)
    if (metadata := kwargs.get("metadata")) is not None:
        if not isinstance(metadata, dict):
            raise InvalidRequestError("must be a JSON object", field="metadata")
        check_json_value(metadata, "metadata")
        opts.metadata = metadata
    if (priority := kwargs.get("priority")) is not None:
        opts.priority = check_priority(priority)
    check_params(opts.params)
    return opts


def check_priority(value: Any, field: str = "priority") -> int:
    """A job's priority: a whole number from ``MIN_PRIORITY`` to ``MAX_PRIORITY`` (``2.0`` counts, as in JSON)."""
    whole = _integral(value)
    if isinstance(whole, bool) or not isinstance(whole, int) or not MIN_PRIORITY <= whole <= MAX_PRIORITY:
        raise InvalidRequestError(
            f"must be a whole number from {MIN_PRIORITY} (lowest) to {MAX_PRIORITY} (highest), default "
            f"{DEFAULT_PRIORITY}; got {_shown(value)}",
            field=field,
        )
    return whole


# --- mocked answers (LiteLLM's ``mock_response`` / ``mock_timeout``) --------------------------------

MOCK_ERROR_STRINGS: dict[str, tuple[str, str, int]] = {
    "litellm.RateLimitError": ("RateLimitError", "this is a mock rate limit error", 429),
    "litellm.ContextWindowExceededError": (
        "ContextWindowExceededError",
        "this is a mock context window exceeded error",
        400,
    ),
    "litellm.InternalServerError": ("ProviderServerError", "this is a mock internal server error", 500),
}
"""The ``mock_response`` strings LiteLLM turns into an error (``litellm/main.py``,
``_handle_mock_potential_exceptions``): batcher class name, LiteLLM's message, status."""
_CONTENT_FILTER_MOCK = "Exception: content_filter_policy"
"""A ``mock_response`` starting with this is a 400 in LiteLLM (its Azure content-filter mock)."""

_ERROR_NAMES: dict[str, str] = {
    # LiteLLM's and openai's exception names -> batcher's class of the same meaning
    "RateLimitError": "RateLimitError",
    "Timeout": "ProviderTimeoutError",
    "APITimeoutError": "ProviderTimeoutError",
    "ProviderTimeoutError": "ProviderTimeoutError",
    "APIConnectionError": "ProviderConnectionError",
    "ProviderConnectionError": "ProviderConnectionError",
    "InternalServerError": "ProviderServerError",
    "ServiceUnavailableError": "ProviderServerError",
    "BadGatewayError": "ProviderServerError",
    "APIError": "ProviderServerError",
    "ProviderServerError": "ProviderServerError",
    "BadRequestError": "BadRequestError",
    "NotFoundError": "BadRequestError",
    "UnprocessableEntityError": "BadRequestError",
    "ContentPolicyViolationError": "BadRequestError",
    "ContextWindowExceededError": "ContextWindowExceededError",
    "AuthenticationError": "AuthenticationError",
    "PermissionDeniedError": "AuthenticationError",
    "MalformedResponseError": "MalformedResponseError",
    "RequestCancelledError": "RequestCancelledError",
    "RequestExpiredError": "RequestExpiredError",
}
_DEFAULT_STATUS = {
    "RateLimitError": 429,
    "ProviderTimeoutError": 408,
    "ProviderServerError": 500,
    "BadRequestError": 400,
    "ContextWindowExceededError": 400,
    "AuthenticationError": 401,
}


def _class_for_status(status: int) -> str:
    if status == 429:
        return "RateLimitError"
    if status == 408:
        return "ProviderTimeoutError"
    if status in (401, 403):
        return "AuthenticationError"
    if 400 <= status < 500:
        return "BadRequestError"
    return "ProviderServerError"


def mock_error_of(exc: BaseException) -> dict[str, Any]:
    """``mock_response=<an exception>``: the failure stored for every request of the call.

    The class is found by name along the exception's MRO (LiteLLM's, openai's and batcher's names),
    else by its ``status_code`` (LiteLLM raises a ``MockException`` with it, 500 by default)."""
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    kind = next((_ERROR_NAMES[c.__name__] for c in type(exc).__mro__ if c.__name__ in _ERROR_NAMES), None)
    if kind is None:
        kind = _class_for_status(status or 500)
    message = getattr(exc, "message", None)
    if not isinstance(message, str):
        message = str(exc)
    message = re.sub(r"^litellm\.\w+: ", "", message)  # LiteLLM prefixes its class name
    check_text(message, "mock_response")
    return {"type": kind, "message": message, "status_code": status or _DEFAULT_STATUS.get(kind, 500)}


def mock_response_string(exc: BaseException) -> str:
    """An exception as the ``mock_response`` text that means the same error over HTTP, where only text
    travels (``litellm.RateLimitError`` ...). Other classes cannot travel: refused, naming the field."""
    kind = mock_error_of(exc)["type"]
    for text, (name, _, _) in MOCK_ERROR_STRINGS.items():
        if name == kind:
            return text
    raise InvalidRequestError(
        f"a {type(exc).__name__} cannot be sent to a batcher service (only text travels); use one of "
        f"{', '.join(repr(t) for t in MOCK_ERROR_STRINGS)}, or run the call in-process",
        field="mock_response",
    )


def parse_window(value: Any) -> timedelta:
    """``"24h"``, ``"30m"``, a number of seconds or a ``timedelta`` -> ``timedelta``, at most 30 days."""
    longest = f"at most {MAX_COMPLETION_WINDOW_S // 86_400} days ('720h', '30d')"
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and _WINDOW.search(value):
        text = value.removesuffix("\n")  # "$" (Python re, as JSON Schema validators use it) allows one
        return timedelta(seconds=int(text[:-1]) * _WINDOW_UNITS_S[text[-1]])
    elif isinstance(value, str) and (like := _WINDOW_LIKE.search(value)):
        amount = float(like.group(1)) * _WINDOW_UNITS_S[like.group(2)]
        if amount > MAX_COMPLETION_WINDOW_S:
            raise InvalidRequestError(f"{_shown(value)} is too long; {longest}", field="completion_window")
        if amount == 0:
            raise InvalidRequestError("must be a positive duration", field="completion_window")
        raise InvalidRequestError(
            f"{_shown(value)}: write a whole number and a unit without spaces, such as '24h' or '90m'",
            field="completion_window",
        )
    else:
        raise InvalidRequestError(
            f"{_shown(value)} is not a duration; use e.g. '24h', '30m', '90s' or a number of seconds",
            field="completion_window",
        )
    if not 0 < seconds <= MAX_COMPLETION_WINDOW_S:  # also refuses NaN
        raise InvalidRequestError(f"must be a positive duration, {longest}", field="completion_window")
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
    if not all(type(message) is dict for message in messages):
        messages = [plain_message(message) for message in messages]
    checked: list[dict[str, Any]] = messages
    for i, message in enumerate(checked):
        here = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(
                f"must be an object like {{'role': 'user', 'content': 'hi'}}, got {type(message).__name__}",
                field=here,
            )
        role = message.get("role")
        if role is None:
            raise InvalidRequestError("is missing; add 'role': 'user' (or system/assistant/tool)", field=f"{here}.role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequestError(
                f"{_shown(role)} is not a role; use one of {', '.join(sorted(ROLES))}", field=f"{here}.role"
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
        # Depth, numbers, keys and types of what the message holds (the common string values cost one
        # type test each); its text is checked on its JSON (``check_json_text``), which is cheaper.
        for key, value in message.items():
            if type(value) is not str or type(key) is not str:
                check_json_value({key: value}, here, depth=2, strings=False)
    return checked


_ANSWER_ONLY_KEYS = ("annotations", "provider_specific_fields", "reasoning_content", "thinking_blocks", "refusal")
"""Keys of an answer's message (openai's, LiteLLM's) that a request's message does not take."""


def plain_message(message: Any) -> Any:
    """A message object (openai's ``ChatCompletionMessage``, LiteLLM's ``Message``, batcher's, any
    pydantic model or ``Mapping``) as the plain dict a request carries: ``model_dump(exclude_none=True)``
    without the keys only an answer has. Anything else is returned as it is (and refused by the caller)."""
    if isinstance(message, dict):
        return message
    dump = getattr(message, "model_dump", None)
    if callable(dump):
        try:
            plain = dump(exclude_none=True)
        except TypeError:  # a model_dump without pydantic's keywords
            plain = dump()
        if isinstance(plain, dict):
            for key in _ANSWER_ONLY_KEYS:
                if not plain.get(key):
                    plain.pop(key, None)
            for key in ("provider_specific_fields", "reasoning_content", "thinking_blocks"):
                plain.pop(key, None)  # LiteLLM's own additions: never part of a request
            if plain.get("role") == "assistant" and plain.get("tool_calls") and "content" not in plain:
                plain["content"] = None
            return plain
    if isinstance(message, Mapping):
        return dict(message)
    return message


def plain_conversation(messages: Any) -> Any:
    """``plain_message`` over one conversation (the same list when it holds only dicts)."""
    if isinstance(messages, list | tuple) and not all(type(m) is dict for m in messages):
        return [plain_message(m) for m in messages]
    return messages


def with_provider(model: Any, kwargs: dict[str, Any], *, pop: bool = True) -> Any:
    """LiteLLM's ``custom_llm_provider="openai"``: ``model`` routed as ``"openai/<model>"`` (unless it
    already carries that prefix). Taken out of ``kwargs`` (``pop``): it is not a provider parameter."""
    provider = kwargs.pop("custom_llm_provider", None) if pop else kwargs.get("custom_llm_provider")
    if provider is None:
        return model
    if not isinstance(provider, str) or not provider.strip() or "/" in provider:
        raise InvalidRequestError(
            f"must be a provider name such as 'openai', 'anthropic' or 'cohere', got {_shown(provider)}",
            field="custom_llm_provider",
        )
    if isinstance(model, str) and not model.startswith(f"{provider}/"):
        return f"{provider}/{model}"
    return model


def check_conversations_shape(messages: Any) -> None:
    """``batch_completion`` takes a list of conversations; catch the flat-list mistake early."""
    if not isinstance(messages, list | tuple):
        raise InvalidRequestError(
            "must be a list of conversations, e.g. [[{'role': 'user', 'content': 'hi'}], ...]",
            field="messages",
        )
    if not messages:
        raise InvalidRequestError("is empty; pass at least one conversation", field="messages")
    if isinstance(messages[0], dict) or callable(getattr(messages[0], "model_dump", None)):
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
    """Refuse a request whose JSON is larger than ``BATCHER_MAX_REQUEST_BYTES``, or holds text
    Postgres cannot store (``check_json_text``)."""
    size = len(messages_json) + (len(params_json) if params_json else 0)
    if size > limit:
        raise InvalidRequestError(
            f"is {size:,} bytes of JSON, over the limit of {limit:,}; shorten it or raise BATCHER_MAX_REQUEST_BYTES",
            field=where,
        )
    # ``where`` is "messages[12]" (the conversation itself) or "line 12" / "models[2]" (a request).
    check_json_text(messages_json, where if where.startswith("messages[") else f"{where}: messages")
    if params_json:
        check_json_text(params_json, f"{where}: params")


def check_request(model: Any, custom_id: Any, params: Mapping[str, Any] | None, where: str) -> None:
    """What ``validate_messages`` does not see of one request: its model and ``custom_id`` are text
    Postgres can store, and its own parameters (a file line's) pass ``check_params``."""
    if isinstance(model, str):
        check_text(model, f"{where}: model" if where else "model")
    if custom_id is not None:
        if not isinstance(custom_id, str):
            raise InvalidRequestError(f"custom_id must be a string, got {_shown(custom_id)}", field=where or None)
        check_text(custom_id, f"{where}: custom_id" if where else "custom_id")
    if params:
        check_params(params, f"{where}: " if where else "")
