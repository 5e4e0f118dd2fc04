"""A provider's HTTP answer as a ``ModelResponse``, or the batcher error it stands for.

The rules are the providers' documented ones (OpenAI's Chat Completions reference and "Error
codes" guide, Anthropic's "Errors" page, docs.cohere.com v2 "Errors"), each declared by its
adapter (``error_details``, ``error_type_statuses``, ``status_errors``,
``context_window_patterns``, ``request_id_headers``) and merged by the registry into one
vocabulary; the rules here are the ones every provider shares, with the openai SDK's classes:
429 is a rate limit, 408 a timeout, 401 authentication, 403 permission denied, 409 and 5xx
server errors (the SDKs retry them), 404 not found, 422 unprocessable, other 4xx bad requests
(or a context-window error when the message says so).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
import pydantic

from batcher._egress import EGRESS_EXTENSION
from batcher._exceptions import (
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
    UnprocessableEntityError,
    safe_request,
)
from batcher._providers._adapter import ProviderAdapter
from batcher._providers._registry import vocabulary
from batcher._providers._retry_after import retry_after_seconds
from batcher._response import ModelResponse
from batcher._secrets import redact, redact_json

__all__ = [
    "MAX_ERROR_BODY_CHARS",
    "MAX_ERROR_CHARS",
    "NAMED_BASE_ERROR_CHARS",
    "body_snippet",
    "error_body",
    "error_class_for",
    "error_details",
    "error_from_response",
    "is_context_window_error",
    "malformed",
    "parse_http_response",
    "request_secrets",
    "truncate",
]

MAX_ERROR_CHARS = 500
MAX_ERROR_BODY_CHARS = 4_000
"""A provider's error object is kept whole on the exception (and stored) up to this size as JSON."""
NAMED_BASE_ERROR_CHARS = 120
"""An answer from a base a caller named (neither configured nor allowed) is quoted this short in errors."""

_CREDENTIAL_HEADERS = ("x-api-key", "api-key")


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
    for name in _CREDENTIAL_HEADERS:
        value = request.headers.get(name)
        if value:
            found.append(value)
    return found


def secrets_when_needed(given: Iterable[str | None], request: httpx.Request | None) -> Callable[[], list[str | None]]:
    """What an error about ``request`` must redact: ``given`` and the request's own credentials, looked
    up only when called (only a failure needs them; a success never pays for the lookup)."""
    known = list(given)
    return lambda: [*known, *request_secrets(request)]


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


def _error_chars(response: httpx.Response) -> int:
    """How much of ``response`` an error may quote: little when it came from a base a caller named."""
    return NAMED_BASE_ERROR_CHARS if response.extensions.get(EGRESS_EXTENSION) == "named" else MAX_ERROR_CHARS


# ---------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------


def _status_hint(body: Mapping[str, Any]) -> int:
    """The HTTP status an error body on a 2xx stands for (500 when it does not say)."""
    err = body.get("error")
    if not isinstance(err, Mapping):
        return 500
    statuses = vocabulary().error_type_statuses
    for key in ("code", "type", "status"):
        value = err.get(key)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            if 400 <= int(value) < 600:
                return int(value)
        elif isinstance(value, str) and value.lower() in statuses:
            return statuses[value.lower()]
    return 500


def is_context_window_error(message: str, code: str | None) -> bool:
    """Whether a 4xx says the prompt is longer than the model's context window."""
    words = vocabulary()
    return (code or "").lower() in words.context_window_codes or bool(words.context_window_re.search(message))


_CLIENT_ERRORS: dict[int, type[ProviderError]] = {404: NotFoundError, 422: UnprocessableEntityError}
"""4xx with a class of their own (the openai SDK's); other 4xx are ``BadRequestError``s."""


def error_class_for(status: int, message: str, code: str | None) -> type[ProviderError]:
    """The batcher error class for an HTTP status (and, for 4xx, the provider's message)."""
    if status == 429:
        return RateLimitError
    if status == 408:
        return ProviderTimeoutError
    if status == 401:
        return AuthenticationError
    if status == 403:
        return PermissionDeniedError
    own = vocabulary().status_errors.get(status)  # a provider's own status (Cohere's 498, 499)
    if own is not None:
        return own
    if status == 409:  # conflict / lock timeout: the OpenAI and Anthropic SDKs retry it
        return ProviderServerError
    if status >= 500:  # includes Anthropic's 529 overloaded_error
        return ProviderServerError
    if 400 <= status < 500:
        if is_context_window_error(message, code):
            return ContextWindowExceededError
        return _CLIENT_ERRORS.get(status, BadRequestError)
    return ProviderError  # 1xx / 3xx: nothing we know how to handle


def as_str(value: Any) -> str | None:
    """An error body's field as text (non-strings as JSON)."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, default=str)


def error_details(body: Any) -> tuple[str | None, str | None]:
    """(message, code-or-type) from any registered provider's error body, else a FastAPI-style ``detail``."""
    if not isinstance(body, Mapping):
        return None, None
    for adapter in vocabulary().adapters:
        found = adapter.error_details(body)
        if found is not None:
            message, code = found
            return as_str(message), as_str(code)
    detail = body.get("detail")  # FastAPI-style servers
    if detail is not None:
        return as_str(detail), None
    return None, None


def _header_request_id(headers: httpx.Headers) -> str | None:
    for name in vocabulary().request_id_headers:
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
    limit = _error_chars(response)
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

    kw: dict[str, Any] = {
        "model": model,
        "llm_provider": provider,
        "status_code": status,
        "response": response,
        "body": error_body(body, message, limit, secrets),
    }
    if cls is RateLimitError:
        wait = retry_after_seconds(response.headers)
        if wait is not None:
            text += f" (retry after {wait:g}s)"
        return RateLimitError(redact(text, secrets), retry_after_s=wait, **kw)
    return cls(redact(text, secrets), **kw)


_OPENAI_ERROR_FIELDS = ("message", "type", "param", "code")


def error_body(body: Any, message: str, limit: int = MAX_ERROR_CHARS, secrets: Iterable[str | None] = ()) -> Any:
    """The ``body`` of a provider error, as the openai SDK sets it: the ``error`` object of a JSON body
    (the whole body when it has none), else the text. Keys are redacted; an answer from a base a
    caller named, or one over ``MAX_ERROR_BODY_CHARS``, keeps only OpenAI's four fields, cut to ``limit``."""
    if not isinstance(body, Mapping):
        return redact(message, secrets)
    inner: Any = body.get("error", body)
    if isinstance(inner, str):
        return redact(truncate(inner, limit), secrets)
    inner = redact_json(inner, secrets)
    if limit >= MAX_ERROR_CHARS and len(json.dumps(inner, default=str)) <= MAX_ERROR_BODY_CHARS:
        return inner
    if not isinstance(inner, Mapping):
        return redact(message, secrets)
    return {
        k: truncate(v, limit) if isinstance(v, str) else v
        for k in _OPENAI_ERROR_FIELDS
        if isinstance(v := inner.get(k), str | int | float | bool)
    }


def malformed(
    provider: str,
    model: str,
    response: httpx.Response,
    why: str,
    *,
    secrets: Iterable[str | None] = (),
) -> MalformedResponseError:
    """A 2xx answer that is not the JSON we expect."""
    snippet = body_snippet(response.text, _error_chars(response))
    text = f"{provider} returned HTTP {response.status_code} with {why}: {snippet}"
    return MalformedResponseError(
        redact(text, secrets),
        model=model,
        llm_provider=provider,
        response=response,
        body=redact(snippet, secrets),
    )


# ---------------------------------------------------------------------------------------
# An answer
# ---------------------------------------------------------------------------------------


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
    hidden = secrets_when_needed(secrets, sent)

    provider = adapter.name
    try:
        response.read()
    except httpx.HTTPError as exc:
        raise ProviderConnectionError(
            redact(f"{provider}: the response body could not be read: {exc}", hidden()),
            model=model,
            llm_provider=provider,
            status_code=response.status_code,
            request=sent,
        ) from None

    if not 200 <= response.status_code < 300:
        raise error_from_response(provider, model, response, secrets=hidden())

    try:
        body = response.json()
    except ValueError:
        raise malformed(provider, model, response, "a body that is not JSON", secrets=hidden()) from None
    if not isinstance(body, Mapping):
        raise malformed(provider, model, response, "JSON that is not an object", secrets=hidden())
    if not adapter.is_success_body(body):
        status = _status_hint(body)
        raise error_from_response(provider, model, response, secrets=hidden(), body=body, status_for_class=status)
    try:
        result = adapter.parse_body(model, body)
    except ProviderError as exc:  # the adapter judged the answer a failure (Cohere ERROR)
        exc.llm_provider = exc.llm_provider or provider
        exc.model = exc.model or model
        exc.http_status = exc.http_status or response.status_code
        exc.request = safe_request(sent)
        if exc.response is not None:
            exc.response.request = exc.request
        raise
    except (KeyError, TypeError, ValueError, AttributeError, pydantic.ValidationError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else f"unexpected JSON ({exc})"
        raise malformed(provider, model, response, truncate(what, 200), secrets=hidden()) from None
    result.provider = provider
    return result
