"""What every provider adapter shares: the adapter contract, parameter checking, URL
joining, and turning an HTTP answer into a ``ModelResponse`` or the right batcher error.

Error mapping follows each provider's error documentation and its official SDK:
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (Chat Completions reference,
"Error codes" guide), Anthropic's ``{"type": "error", "error": {"type", "message"}}``
(``anthropic`` SDK 2.14 ``types/shared/error_response.py``, API "Errors" page: 413
request_too_large, 529 overloaded_error), Cohere's ``{"message": ...}`` (docs.cohere.com
v2 "Errors"; SDK 7.3 ``v2/raw_client.py`` adds 498 invalid token and 499 client closed).

Retry-After parsing follows the SDKs' ``_parse_retry_after_header`` (``retry-after-ms``,
then ``retry-after`` as seconds or an HTTP-date), then OpenAI's rate-limit headers
(``x-ratelimit-reset-requests`` / ``-tokens``, Go-style durations such as ``6m0s``; OpenAI
"Rate limits" guide) and Anthropic's ``anthropic-ratelimit-*-reset`` RFC 3339 timestamps
(Anthropic "Rate limits" page).
"""

from __future__ import annotations

import abc
import email.utils
import functools
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import pydantic

from batcher._egress import EGRESS_EXTENSION, check_extra_headers
from batcher._exceptions import (
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    InvalidRequestError,
    MalformedResponseError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
    UnsupportedParamsError,
)
from batcher._response import FinishReason, ModelResponse
from batcher._secrets import redact

__all__ = [
    "DROP_PARAMS_HINT",
    "MAX_ERROR_CHARS",
    "ProviderAdapter",
    "check_params_for",
    "error_from_response",
    "parse_http_response",
    "redact",
    "request_secrets",
    "retry_after_seconds",
]

MAX_ERROR_CHARS = 500
NAMED_BASE_ERROR_CHARS = 120
"""An answer from a base a caller named (neither configured nor allowed) is quoted this short in errors."""
DROP_PARAMS_HINT = "pass drop_params=True to drop unsupported parameters"

# Parameters every adapter takes: the SDKs' escape hatches for anything batcher does not map.
# ``extra_body`` is merged into the JSON body, ``extra_headers`` into the HTTP headers.
PASSTHROUGH_PARAMS = frozenset({"extra_body", "extra_headers"})


def request_secrets(request: httpx.Request | None) -> list[str]:
    """The credentials a request carries, so errors about it can redact them."""
    if request is None:
        return []
    found: list[str] = []
    auth = request.headers.get("authorization")
    if auth:
        found.append(auth)
        scheme, _, token = auth.partition(" ")
        if token and scheme.lower() == "bearer":
            found.append(token.strip())
    for name in ("x-api-key", "api-key"):
        value = request.headers.get(name)
        if value:
            found.append(value)
    return found


def truncate(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


_TAG_RE = re.compile(r"<[^>]+>")
_SCRIPT_RE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_SPACE_RE = re.compile(r"\s+")


def body_snippet(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """A one-line, readable excerpt of a body that is not the expected JSON (HTML pages
    from proxies become their visible text)."""
    stripped = text.lstrip()
    if stripped[:1] == "<":
        text = html.unescape(_TAG_RE.sub(" ", _SCRIPT_RE.sub(" ", text)))
    text = _SPACE_RE.sub(" ", text).strip()
    return truncate(text, limit) if text else "(empty body)"


def error_chars(response: httpx.Response) -> int:
    """How much of ``response`` an error may quote: little when it came from a base a caller named."""
    return NAMED_BASE_ERROR_CHARS if response.extensions.get(EGRESS_EXTENSION) == "named" else MAX_ERROR_CHARS


# ---------------------------------------------------------------------------------------
# Retry-After
# ---------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str) -> float | None:
    """Seconds in a Go-style duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``), as OpenAI
    sends in ``x-ratelimit-reset-*``. A bare number is taken as seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(value) and pos > 0 else None


def _seconds_until(when: datetime, now: datetime) -> float:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _pick(candidates: list[tuple[float, bool]]) -> float | None:
    # A reset whose "remaining" is 0 is the limit that was hit: wait for the longest of those.
    exhausted = [s for s, hit in candidates if hit]
    pool = exhausted or [s for s, _ in candidates]
    return max(pool) if pool else None


def retry_after_seconds(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """How long the provider asked us to wait, from whichever header it sent, else None."""
    now = now or datetime.now(UTC)
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                return _seconds_until(email.utils.parsedate_to_datetime(raw), now)
            except (TypeError, ValueError, IndexError):
                pass

    openai: list[tuple[float, bool]] = []
    for kind in ("requests", "tokens"):
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        seconds = parse_duration(reset) if reset else None
        if seconds is not None:
            openai.append((seconds, headers.get(f"x-ratelimit-remaining-{kind}") == "0"))
    picked = _pick(openai)
    if picked is not None:
        return picked

    anthropic: list[tuple[float, bool]] = []
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
        if not reset:
            continue
        try:
            when = datetime.fromisoformat(reset.strip())
        except ValueError:
            continue
        remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
        anthropic.append((_seconds_until(when, now), remaining == "0"))
    return _pick(anthropic)


# ---------------------------------------------------------------------------------------
# Error classification
# ---------------------------------------------------------------------------------------

_CONTEXT_RE = re.compile(
    r"context[_ ]length[_ ]exceeded"
    r"|maximum context length"
    r"|context (?:window|limit)"
    r"|prompt is too long"
    r"|input is too long"
    r"|too many tokens: total number of tokens in the prompt"
    r"|size limit exceeded by \d+ tokens"
    r"|reduce the length of the messages",
    re.IGNORECASE,
)
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})

# Error ``type``s (Anthropic) and ``code``s (OpenAI) to the HTTP status they stand for; used
# when an error body arrives with a 2xx status (some OpenAI-compatible servers do that).
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _status_hint(body: Mapping[str, Any]) -> int:
    """The HTTP status an error body on a 2xx stands for (500 when it does not say)."""
    err = body.get("error")
    if not isinstance(err, Mapping):
        return 500
    for key in ("code", "type", "status"):
        value = err.get(key)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            if 400 <= int(value) < 600:
                return int(value)
        elif isinstance(value, str) and value.lower() in _ERROR_TYPE_STATUS:
            return _ERROR_TYPE_STATUS[value.lower()]
    return 500


def is_context_window_error(message: str, code: str | None) -> bool:
    """Whether a 4xx says the prompt is longer than the model's context window."""
    return (code or "").lower() in _CONTEXT_CODES or bool(_CONTEXT_RE.search(message))


def error_class_for(status: int, message: str, code: str | None) -> type[ProviderError]:
    """The batcher error class for an HTTP status (and, for 4xx, the provider's message)."""
    if status == 429:
        return RateLimitError
    if status == 408:
        return ProviderTimeoutError
    if status in (401, 403, 498):  # 498: Cohere's "invalid token"
        return AuthenticationError
    if status == 499:  # Cohere: the request was closed before it finished
        return ProviderConnectionError
    if status == 409:  # conflict / lock timeout: the OpenAI and Anthropic SDKs retry it
        return ProviderServerError
    if status >= 500:  # includes Anthropic's 529 overloaded_error
        return ProviderServerError
    if 400 <= status < 500:
        if is_context_window_error(message, code):
            return ContextWindowExceededError
        return BadRequestError
    return ProviderError  # 1xx / 3xx: nothing we know how to handle


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, default=str)


def error_details(body: Any) -> tuple[str | None, str | None]:
    """(message, code-or-type) from any of the three providers' error bodies."""
    if not isinstance(body, Mapping):
        return None, None
    err = body.get("error")
    if isinstance(err, Mapping):  # OpenAI and Anthropic
        message = _as_str(err.get("message"))
        code = err.get("code") or err.get("type")
        return message, _as_str(code)
    if isinstance(err, str):  # some OpenAI-compatible servers: {"error": "..."}
        return err, None
    message = body.get("message") or body.get("detail")  # Cohere; FastAPI-style servers
    if message is not None:
        return _as_str(message), None
    return None, None


def _header_request_id(headers: httpx.Headers) -> str | None:
    for name in ("request-id", "x-request-id", "x-trace-id"):
        value = headers.get(name)
        if value:
            return str(value)
    return None


def error_from_response(
    provider: str,
    model: str,
    response: httpx.Response,
    *,
    secrets: Iterable[str | None] = (),
    body: Any = None,
    status_for_class: int | None = None,
) -> ProviderError:
    """The batcher error for a failed HTTP answer, with the provider's own message."""
    status = response.status_code
    if body is None:
        try:
            body = response.json()
        except ValueError:
            body = None
    limit = error_chars(response)
    message, code = error_details(body)
    if message is None:
        message = body_snippet(response.text, limit)
    message = truncate(message.strip() or "(no message)", limit)
    cls = error_class_for(status_for_class or status, message, code)

    text = f"{provider} returned HTTP {status}"
    if status in (404, 405):  # usually a wrong base URL: say which URL was asked
        try:
            url = response.request.url
            text += f" for {url.scheme}://{url.netloc.decode('ascii', 'replace')}{url.path}"
        except RuntimeError:
            pass
    if code:
        text += f" ({truncate(code, 80)})"
    text += f": {message}"
    request_id = _header_request_id(response.headers)
    if request_id:
        text += f" [request id {truncate(request_id, 100)}]"

    kw: dict[str, Any] = {"model": model, "provider": provider, "status_code": status}
    if cls is RateLimitError:
        wait = retry_after_seconds(response.headers)
        if wait is not None:
            text += f" (retry after {wait:g}s)"
        return RateLimitError(redact(text, secrets), retry_after_s=wait, **kw)
    return cls(redact(text, secrets), **kw)


def malformed(
    provider: str,
    model: str,
    response: httpx.Response,
    why: str,
    *,
    secrets: Iterable[str | None] = (),
) -> MalformedResponseError:
    """A 2xx answer that is not the JSON we expect."""
    snippet = body_snippet(response.text, error_chars(response))
    text = f"{provider} returned HTTP {response.status_code} with {why}: {snippet}"
    return MalformedResponseError(
        redact(text, secrets),
        model=model,
        provider=provider,
        status_code=response.status_code,
    )


# ---------------------------------------------------------------------------------------
# The adapter contract
# ---------------------------------------------------------------------------------------


class ProviderAdapter(abc.ABC):
    """One provider's wire format. Adapters are stateless; ``PROVIDERS`` holds one each."""

    name: ClassVar[str]
    api_key_env_vars: ClassVar[tuple[str, ...]]
    api_base_env_vars: ClassVar[tuple[str, ...]]
    default_api_base: ClassVar[str]
    supported_params: ClassVar[frozenset[str]]
    endpoint_path: ClassVar[str]
    # Version suffixes tolerated at the end of a base URL (``.../v1`` for Anthropic).
    base_suffixes: ClassVar[tuple[str, ...]] = ()

    def check_value(self, name: str, value: Any) -> str | None:
        """Why this provider cannot take ``name=value`` (None: it can)."""
        return None

    @abc.abstractmethod
    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """The headers that carry the API key (and API version)."""

    @abc.abstractmethod
    def build_body(
        self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The JSON body for already-checked OpenAI-style ``params``."""

    @abc.abstractmethod
    def parse_body(self, model: str, body: Mapping[str, Any]) -> ModelResponse:
        """A 2xx JSON body as a ``ModelResponse``. KeyError/TypeError/ValueError mean the
        body is malformed."""

    def is_success_body(self, body: Mapping[str, Any]) -> bool:
        """False when a 2xx body is really an error report (OpenAI-style ``{"error": ...}``)."""
        return "error" not in body or "choices" in body

    def endpoint_url(self, api_base: str) -> httpx.URL:
        """``api_base`` joined with the endpoint path, keeping any query string.

        A base that already ends with the full endpoint path is used as is.
        """
        return _endpoint_url(api_base, self.endpoint_path, tuple(self.base_suffixes))

    def build_request(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        *,
        api_key: str | None,
        api_base: str,
    ) -> httpx.Request:
        """The complete HTTP request; raises InvalidRequestError for input it cannot send."""
        checked = check_params_for(self, params, drop_params=False)
        extra_body = checked.pop("extra_body", None) or {}
        extra_headers = checked.pop("extra_headers", None) or {}
        body = self.build_body(model, messages, checked)
        body.update(extra_body)
        try:
            content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"the request cannot be encoded as JSON: {exc}", field="messages") from None
        url = self.endpoint_url(api_base)
        try:
            headers = httpx.Headers({"content-type": "application/json", "accept": "application/json"})
            headers["user-agent"] = "batcher"
            for name, value in extra_headers.items():  # checked: no auth, framing or routing header
                headers[name] = value
            for name, value in self.auth_headers(api_key).items():
                if name in headers and not (api_key and api_key in value):
                    continue  # an extra header may choose what carries no key (anthropic-version)
                headers[name] = value
            return httpx.Request("POST", url, headers=headers, content=content)
        except (UnicodeError, ValueError, TypeError) as exc:  # e.g. a non-ASCII api_key: never a worker crash
            raise InvalidRequestError(f"the request cannot be sent: {type(exc).__name__}", field="api_key") from None


@functools.lru_cache(maxsize=256)
def _endpoint_url(api_base: str, endpoint_path: str, base_suffixes: tuple[str, ...]) -> httpx.URL:
    """Cached (URLs are immutable): a worker sends every request of a job to the same endpoint."""
    try:
        url = httpx.URL(api_base)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidRequestError(f"{api_base!r} is not a valid URL ({exc})", field="api_base") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequestError(f"{api_base!r} is not an http(s) URL with a host", field="api_base")
    path = url.path.rstrip("/")
    if not path.endswith(endpoint_path):
        for suffix in base_suffixes:
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        path += endpoint_path
    return url.copy_with(path=path)


def check_params_for(adapter: ProviderAdapter, params: Mapping[str, Any], *, drop_params: bool) -> dict[str, Any]:
    """The params ``adapter`` can take; see ``batcher._providers.check_params``."""
    kept: dict[str, Any] = {}
    for name, value in params.items():
        if name == "stream":
            if value:
                raise UnsupportedParamsError(
                    "streaming is not supported: batcher stores each whole response; "
                    "drop stream=True (results are returned complete)",
                    field="stream",
                )
            continue
        if value is None:
            continue  # LiteLLM convention: a None parameter is an unset one
        if name in PASSTHROUGH_PARAMS:
            if not isinstance(value, Mapping):
                raise UnsupportedParamsError(f"{name} must be a dict", field=name)
            kept[name] = check_extra_headers(value) if name == "extra_headers" else dict(value)
            continue
        if name not in adapter.supported_params:
            reason = f"{adapter.name} does not support the {name!r} parameter"
        else:
            why = adapter.check_value(name, value)
            reason = f"{adapter.name} does not support {name}={value!r}: {why}" if why else ""
        if reason:
            if drop_params:
                continue
            raise UnsupportedParamsError(f"{reason}; {DROP_PARAMS_HINT}", field=name)
        kept[name] = value
    return kept


def parse_http_response(
    adapter: ProviderAdapter,
    model: str,
    response: httpx.Response,
    *,
    secrets: Iterable[str | None] = (),
) -> ModelResponse:
    """A provider's HTTP answer as a ``ModelResponse``, or the matching batcher error."""
    try:
        sent: httpx.Request | None = response.request
    except RuntimeError:  # a Response built by hand, without its request
        sent = None
    secrets = [*secrets, *request_secrets(sent)]
    provider = adapter.name
    try:
        response.read()
    except httpx.HTTPError as exc:
        raise ProviderConnectionError(
            redact(f"{provider}: the response body could not be read: {exc}", secrets),
            model=model,
            provider=provider,
            status_code=response.status_code,
        ) from None

    if not 200 <= response.status_code < 300:
        raise error_from_response(provider, model, response, secrets=secrets)

    try:
        body = response.json()
    except ValueError:
        raise malformed(provider, model, response, "a body that is not JSON", secrets=secrets) from None
    if not isinstance(body, Mapping):
        raise malformed(provider, model, response, "JSON that is not an object", secrets=secrets)
    if not adapter.is_success_body(body):
        status = _status_hint(body)
        raise error_from_response(provider, model, response, secrets=secrets, body=body, status_for_class=status)
    try:
        result = adapter.parse_body(model, body)
    except ProviderError as exc:  # the adapter judged the answer a failure (Cohere ERROR)
        exc.provider = exc.provider or provider
        exc.model = exc.model or model
        exc.status_code = exc.status_code or response.status_code
        raise
    except (KeyError, TypeError, ValueError, AttributeError, pydantic.ValidationError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else f"unexpected JSON ({exc})"
        raise malformed(provider, model, response, truncate(what, 200), secrets=secrets) from None
    result.provider = provider
    return result


# ---------------------------------------------------------------------------------------
# Helpers the adapters share
# ---------------------------------------------------------------------------------------


def content_text(content: Any, *, field: str) -> str:
    """The text of an OpenAI message ``content`` that may only hold text (str or text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise InvalidRequestError("only text parts are allowed here", field=f"{field}[{i}]")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise InvalidRequestError("content must be a string or a list of parts", field=field)


def tool_arguments(arguments: Any, *, field: str) -> dict[str, Any]:
    """An OpenAI tool call's ``arguments`` (a JSON string) as the object Anthropic wants."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        raise InvalidRequestError("must be a JSON object string", field=field) from None
    if not isinstance(parsed, dict):
        raise InvalidRequestError("must be a JSON object string", field=field)
    return parsed


def stop_list(stop: Any) -> list[str]:
    """OpenAI's ``stop`` (a string or a list of strings) as a list."""
    return [stop] if isinstance(stop, str) else [str(s) for s in stop]


def openai_function_tools(tools: Any) -> str | None:
    """Why ``tools`` is not a list of OpenAI function tools (None: it is)."""
    if not isinstance(tools, list):
        return "tools must be a list"
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            return f"tools[{i}] is not a function tool (only type 'function' can be translated)"
        function = tool.get("function")
        if not isinstance(function, Mapping) or not function.get("name"):
            return f"tools[{i}].function.name is missing"
    return None


def named_tool_choice(tool_choice: Any) -> str | None:
    """The function name of an OpenAI ``{"type": "function", "function": {"name"}}`` choice."""
    if isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


def finish_reason_fields(native: str | None, normalised: FinishReason | None) -> dict[str, Any]:
    """The ``finish_reason`` keys of a choice; the provider's own value is kept when it
    differs, under ``native_finish_reason``."""
    fields: dict[str, Any] = {"finish_reason": normalised}
    if native is not None and native != normalised:
        fields["native_finish_reason"] = native
    return fields
