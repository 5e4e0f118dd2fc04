"""Every error batcher raises, in one tree.

    BatcherError
    ├── ConfigurationError          settings are unusable (bad URL, missing secret key, ...)
    ├── ServiceUnavailableError     Postgres or Redis cannot take the call now (down, full): retry later
    │   ├── EnqueueError            the job is stored but its messages were refused: recovery publishes them
    │   └── NoWorkerError           no live worker consumes the job's queue: start one (``batcher worker``)
    ├── InvalidRequestError         bad input, refused before anything is stored or enqueued
    │   ├── IdempotencyKeyReusedError  an Idempotency-Key sent again with another request body
    │   ├── UnknownModelError       no provider serves this model name
    │   ├── MissingAPIKeyError      the chosen provider has no API key
    │   └── UnsupportedParamsError  an OpenAI-style parameter the provider does not take
    ├── QuotaExceededError          an API key's quota (max_queued_prompts) would be exceeded: nothing stored
    ├── JobNotFoundError            no job with that id (or not yours)
    ├── WaitTimeoutError            a wait ran out before the job finished
    ├── AllModelsFailedError        fastest-response: every model failed (lists each)      openai.APIError
    └── RequestError                the outcome of one request that did not succeed        openai.APIError
        ├── RequestCancelledError   cancelled (or skipped: another model won the race)
        ├── RequestExpiredError     the job's deadline passed before it ran
        ├── WorkerLostError         the worker running it died more times than its attempt budget
        └── ProviderError           the provider call failed; stored on the request        openai.APIError
            ├── RateLimitError            429 (retryable; carries retry_after_s)       openai.RateLimitError
            ├── ProviderServerError       5xx, 409 (retryable)                         openai.InternalServerError
            ├── ProviderTimeoutError      408, or no answer in time (retryable)         openai.APITimeoutError
            ├── ProviderConnectionError   could not connect / dropped (retryable; 500) openai.APIConnectionError
            ├── MalformedResponseError    non-JSON, HTML or truncated body (retryable) openai.APIResponseValidationError
            ├── BadRequestError           400 and other 4xx (never retried)            openai.BadRequestError
            │   └── ContextWindowExceededError
            ├── AuthenticationError       401 (never retried)                          openai.AuthenticationError
            ├── PermissionDeniedError     403 (never retried)                          openai.PermissionDeniedError
            ├── NotFoundError             404 (never retried)                          openai.NotFoundError
            └── UnprocessableEntityError  422 (never retried)                          openai.UnprocessableEntityError

The right-hand column is the ``openai`` SDK class each one also subclasses, the one LiteLLM's
exception of the same meaning subclasses (``litellm.Timeout`` is an ``openai.APITimeoutError`` with
``status_code`` 408, ``litellm.APIConnectionError`` an ``openai.APIConnectionError`` with 500,
``litellm.APIResponseValidationError`` an ``openai.APIResponseValidationError``), so ``except
openai.RateLimitError`` or ``except openai.APIError`` catch batcher's errors as they catch LiteLLM's.
Each carries what both have: ``message``, ``status_code``, ``llm_provider`` (alias ``provider``),
``model``, ``request`` and ``response`` (``httpx`` objects without credentials: the provider's own
answer on the worker, a stand-in with the status otherwise), ``body`` (the provider's error object,
keys redacted), ``code``, ``param``, ``type``, ``num_retries``, ``max_retries``; ``RateLimitError``
has ``retry_after_s``. ``http_status`` is the status the provider really answered with (``None``
when it did not answer), which is what the request row stores. Every one pickles (the live
``httpx`` objects are left behind and rebuilt from plain data). ``str(e)`` is batcher's message,
without LiteLLM's ``litellm.RateLimitError:`` prefix.

LiteLLM has no exception for a cancelled, expired or lost request: those are plain
``openai.APIError``s here, with ``code`` ``batch_cancelled`` / ``batch_expired`` (OpenAI's Batch
API codes) and ``worker_lost``; ``status_code`` is ``None``. Every 5xx is a ``ProviderServerError``
(``openai.InternalServerError``, as the openai SDK maps them), where LiteLLM raises its own
``ServiceUnavailableError`` / ``BadGatewayError`` for 503 / 502. ``AllModelsFailedError`` is an
``openai.APIError`` whose ``status_code``, ``llm_provider`` and ``model`` are the last failure's (the
exception LiteLLM would have raised).

A provider error is an *outcome*: the worker stores it on the request (``error_type`` is
the class name, with ``error``, ``status_code`` and ``error_body``) and the job goes on.
``error_from_stored`` turns a stored row back into the exception object that
``batch_completion`` puts in the failed prompt's slot.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import httpx
import openai

__all__ = [
    "AllModelsFailedError",
    "AuthenticationError",
    "BadRequestError",
    "BatcherError",
    "ConfigurationError",
    "ContextWindowExceededError",
    "EnqueueError",
    "IdempotencyKeyReusedError",
    "InvalidRequestError",
    "JobNotFoundError",
    "MalformedResponseError",
    "MissingAPIKeyError",
    "NoWorkerError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderServerError",
    "ProviderTimeoutError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestCancelledError",
    "RequestError",
    "RequestExpiredError",
    "ServiceUnavailableError",
    "UnknownModelError",
    "UnprocessableEntityError",
    "UnsupportedParamsError",
    "WaitTimeoutError",
    "WorkerLostError",
    "error_from_stored",
    "safe_request",
    "safe_url",
]


class BatcherError(Exception):
    """Base class of every error batcher raises."""


class ConfigurationError(BatcherError):
    """The settings cannot work (for example an unparsable URL)."""


class ServiceUnavailableError(BatcherError):
    """Postgres or Redis cannot serve the call right now (unreachable, restarting, out of memory).

    Nothing half-done is left behind; the HTTP service answers 503 with ``Retry-After``.
    """


class EnqueueError(ServiceUnavailableError):
    """The job was stored but the broker refused its messages (Redis down or full).

    The job is not lost: the recovery sweep publishes what is missing as soon as the broker
    accepts messages again. ``job_id`` names it, so it can be followed with ``Client.job``.
    """

    def __init__(self, message: str, *, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_enqueue_error, (self.args[0], self.job_id))


def _rebuild_enqueue_error(message: str, job_id: str) -> EnqueueError:
    return EnqueueError(message, job_id=job_id)


class NoWorkerError(ServiceUnavailableError):
    """A wait found no live worker (heartbeat in the ``workers`` table) consuming the job's queue.

    The job is stored and runs as soon as a worker consuming ``queue`` starts; ``job_id`` names it."""

    def __init__(self, queue: str, *, job_id: str | None = None) -> None:
        self.queue = queue
        self.job_id = job_id
        super().__init__(f"no worker is consuming queue {queue!r}: start one with 'batcher worker'")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_no_worker_error, (self.queue, self.job_id))


def _rebuild_no_worker_error(queue: str, job_id: str | None) -> NoWorkerError:
    return NoWorkerError(queue, job_id=job_id)


class InvalidRequestError(BatcherError, ValueError):
    """Bad input. ``field`` names the offending field (``messages[3][0].role``)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class IdempotencyKeyReusedError(InvalidRequestError):
    """An ``Idempotency-Key`` already used for a job created from another request body (HTTP 422)."""


class UnknownModelError(InvalidRequestError):
    """No provider is known for this model name."""


class MissingAPIKeyError(InvalidRequestError):
    """The provider chosen for a model has no API key configured."""


class UnsupportedParamsError(InvalidRequestError):
    """A parameter the chosen provider does not accept (pass ``drop_params=True`` to drop it)."""


class QuotaExceededError(BatcherError):
    """A submission would take an API key past its quota of unfinished prompts (``api_keys.max_queued_prompts``).

    Refused before anything is stored (HTTP 429, OpenAI's ``rate_limit_error`` shape). Not bad input:
    the same job fits once enough of the key's work has finished. ``retry_after_s`` estimates when, from
    the key's recent completion rate (``None``: no estimate, or the job alone is larger than the quota);
    ``limit``, ``current`` (the key's unfinished prompts) and ``requested`` (this job's) are known where
    the quota was checked (over HTTP, only ``retry_after_s`` travels, as ``Retry-After``).
    """

    def __init__(
        self,
        message: str,
        *,
        limit: int | None = None,
        current: int | None = None,
        requested: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.limit = limit
        self.current = current
        self.requested = requested
        self.retry_after_s = retry_after_s
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_quota_error, (self.args[0], self.limit, self.current, self.requested, self.retry_after_s))


def _rebuild_quota_error(
    message: str, limit: int | None, current: int | None, requested: int | None, retry_after_s: float | None
) -> QuotaExceededError:
    return QuotaExceededError(message, limit=limit, current=current, requested=requested, retry_after_s=retry_after_s)


class JobNotFoundError(BatcherError, LookupError):
    """No job with this id is visible."""


class WaitTimeoutError(BatcherError, TimeoutError):
    """Waiting for a job ran out of time. The job itself goes on."""


_STAND_IN_BASE = "https://provider.invalid"
"""The URL of a stand-in request when the real one is not known (``.invalid`` never resolves)."""


def safe_url(url: str | httpx.URL | None) -> httpx.URL:
    """``url`` without credentials: no user info, no query (Gemini-style ``?key=``), no fragment."""
    try:
        parsed = httpx.URL(str(url)) if url else httpx.URL(_STAND_IN_BASE)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return httpx.URL(_STAND_IN_BASE)
        return httpx.URL(scheme=parsed.scheme, host=parsed.host, port=parsed.port, path=parsed.path)
    except (httpx.InvalidURL, TypeError, ValueError):
        return httpx.URL(_STAND_IN_BASE)


def safe_request(request: httpx.Request | None, url: str | httpx.URL | None = None) -> httpx.Request:
    """A request to show on an exception: method and URL only, so no header (``Authorization``, ``x-api-key``),
    query string or prompt rides along."""
    if request is not None:
        return httpx.Request(request.method, safe_url(request.url))
    return httpx.Request("POST", safe_url(url))


def _safe_response(response: httpx.Response, request: httpx.Request) -> httpx.Response:
    """The provider's answer (status, headers, body) attached to the credential-free ``request``."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        content = b""
    headers = [
        (k, v)
        for k, v in response.headers.multi_items()
        if k.lower() not in ("content-encoding", "content-length", "transfer-encoding", "set-cookie")
    ]
    return httpx.Response(response.status_code, headers=headers, content=content, request=request)


class RequestError(BatcherError, openai.APIError):  # type: ignore[misc]
    """One request did not succeed; the others of its job are unaffected.

    Also an ``openai.APIError`` (see the module's docstring for the attributes both carry).
    """

    retryable: ClassVar[bool] = False
    default_status: ClassVar[int | None] = None
    """``status_code`` when the provider gave none (or a non-error one): LiteLLM's status for the class."""
    fixed_status: ClassVar[bool] = False
    """``status_code`` is always ``default_status`` (timeouts: 408, whatever was received)."""
    default_code: ClassVar[str | None] = None

    message: str
    model: str | None
    llm_provider: str | None
    status_code: int | None  # type: ignore[assignment]
    http_status: int | None
    response: httpx.Response | None  # type: ignore[assignment]
    request: httpx.Request  # type: ignore[assignment]
    num_retries: int | None
    max_retries: int | None

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        llm_provider: str | None = None,
        provider: str | None = None,
        status_code: int | None = None,
        response: httpx.Response | None = None,
        request: httpx.Request | None = None,
        api_base: str | None = None,
        body: object | None = None,
        code: str | None = None,
        num_retries: int | None = None,
        max_retries: int | None = None,
    ) -> None:
        if status_code is None and response is not None:
            status_code = response.status_code
        if request is None and response is not None:
            try:
                request = response.request
            except RuntimeError:  # a Response built by hand, without its request
                request = None
        shown_request = safe_request(request, api_base)
        shown_response = _safe_response(response, shown_request) if response is not None else None
        status = self._status_for(status_code)
        if shown_response is None and status is not None:
            shown_response = httpx.Response(status, request=shown_request)

        any_request = cast(Any, shown_request)  # the openai SDK annotates httpx2 in its newest releases
        if isinstance(self, openai.APIStatusError | openai.APIResponseValidationError):
            assert shown_response is not None  # every such class has a default status
            if isinstance(self, openai.APIResponseValidationError):
                openai.APIResponseValidationError.__init__(self, cast(Any, shown_response), body, message=message)
            else:
                openai.APIStatusError.__init__(self, message, response=cast(Any, shown_response), body=body)
        else:  # openai.APIConnectionError's own __init__ only drops the body
            openai.APIError.__init__(self, message, any_request, body=body)
        # The openai SDK copies request and response when they carry credential headers; these carry none.
        self.request = shown_request
        self.response = shown_response
        self.message = message
        self.model = model
        self.llm_provider = llm_provider or provider
        self.http_status = status_code
        self.status_code = status
        self.num_retries = num_retries
        self.max_retries = max_retries
        if code is not None or self.code is None:
            self.code = code if code is not None else self.default_code

    @classmethod
    def _status_for(cls, received: int | None) -> int | None:
        if cls.fixed_status or (cls.default_status is not None and (received is None or received < 400)):
            return cls.default_status
        return received

    @property
    def provider(self) -> str | None:
        """The provider's name (``llm_provider``, LiteLLM's name for it)."""
        return self.llm_provider

    @provider.setter
    def provider(self, value: str | None) -> None:
        self.llm_provider = value

    def _state(self) -> dict[str, Any]:
        """Everything needed to rebuild this error, as plain data (pickling drops the live httpx objects)."""
        return {
            "model": self.model,
            "llm_provider": self.llm_provider,
            "status_code": self.http_status,
            "api_base": str(self.request.url),
            "body": self.body,
            "code": self.code,
            "num_retries": self.num_retries,
            "max_retries": self.max_retries,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments and live httpx objects need help to survive pickling (multiprocessing, Celery).
        extra = {"param": self.param, "type": self.type, "request_id": getattr(self, "request_id", None)}
        return (_rebuild, (type(self), self.message, self._state(), extra))


def _rebuild(
    cls: type[RequestError], message: str, state: dict[str, Any], extra: dict[str, Any] | None = None
) -> RequestError:
    err = cls(message, **state)
    for name, value in (extra or {}).items():
        if name != "request_id" or isinstance(err, openai.APIStatusError):
            setattr(err, name, value)
    return err


class RequestCancelledError(RequestError):
    """The request was cancelled, or skipped because another model already answered."""

    default_code = "batch_cancelled"


class RequestExpiredError(RequestError):
    """The job's deadline passed before this request could run."""

    default_code = "batch_expired"


class WorkerLostError(RequestError):
    """The worker running this request died (killed, out of memory, lost machine) more times than the
    request's attempt budget allows: most likely the request itself brings its worker down."""

    default_code = "worker_lost"


class ProviderError(RequestError):
    """The provider call failed (an ``openai.APIError``, as LiteLLM's catch-all ``APIError`` is)."""


class RateLimitError(ProviderError, openai.RateLimitError):  # type: ignore[misc]
    """HTTP 429. ``retry_after_s`` is what the provider asked us to wait, if it said."""

    retryable = True
    default_status = 429

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kw)

    def _state(self) -> dict[str, Any]:
        return super()._state() | {"retry_after_s": self.retry_after_s}


class ProviderServerError(ProviderError, openai.InternalServerError):  # type: ignore[misc]
    """HTTP 5xx (and 409, which the SDKs retry)."""

    retryable = True
    default_status = 500


class ProviderTimeoutError(ProviderError, openai.APITimeoutError):  # type: ignore[misc]
    """HTTP 408, or no complete answer within the request timeout: ``status_code`` is 408 (as LiteLLM's
    ``Timeout``); ``http_status`` is what was received, if anything."""

    retryable = True
    default_status = 408
    fixed_status = True


class ProviderConnectionError(ProviderError, openai.APIConnectionError):  # type: ignore[misc]
    """The connection could not be made or was dropped (``status_code`` 500 unless the provider answered,
    as LiteLLM's ``APIConnectionError``)."""

    retryable = True
    default_status = 500


class MalformedResponseError(ProviderError, openai.APIResponseValidationError):  # type: ignore[misc]
    """The provider answered with something that is not the expected JSON (``status_code`` 500 when the
    answer was a 2xx, as LiteLLM's ``APIResponseValidationError``)."""

    retryable = True
    default_status = 500


class BadRequestError(ProviderError, openai.BadRequestError):  # type: ignore[misc]
    """HTTP 400 (and any 4xx without a class of its own): the request itself is wrong; retrying cannot help."""

    default_status = 400


class ContextWindowExceededError(BadRequestError):
    """The prompt is longer than the model's context window."""


class AuthenticationError(ProviderError, openai.AuthenticationError):  # type: ignore[misc]
    """HTTP 401 (or a worker without a key it may send): the key is missing or wrong."""

    default_status = 401


class PermissionDeniedError(ProviderError, openai.PermissionDeniedError):  # type: ignore[misc]
    """HTTP 403: the key is valid but not allowed this model or feature."""

    default_status = 403


class NotFoundError(ProviderError, openai.NotFoundError):  # type: ignore[misc]
    """HTTP 404: no such model (or a wrong base URL)."""

    default_status = 404


class UnprocessableEntityError(ProviderError, openai.UnprocessableEntityError):  # type: ignore[misc]
    """HTTP 422: the request is well-formed but cannot be acted upon."""

    default_status = 422


class AllModelsFailedError(BatcherError, openai.APIError):  # type: ignore[misc]
    """Fastest-response: no model answered. ``errors`` maps each model to its failure.

    An ``openai.APIError`` whose ``status_code``, ``llm_provider``, ``model``, ``code`` and ``request`` are
    the last failure's: LiteLLM raises that last exception itself.
    """

    status_code: int | None

    def __init__(self, errors: dict[str, BaseException]) -> None:
        self.errors = errors
        detail = "; ".join(f"{model}: {type(err).__name__}: {err}" for model, err in errors.items())
        message = f"every model failed: {detail}"
        last = list(errors.values())[-1] if errors else None
        request = getattr(last, "request", None)
        openai.APIError.__init__(
            self,
            message,
            cast(Any, request if isinstance(request, httpx.Request) else safe_request(None)),
            body=None,
        )
        self.status_code = getattr(last, "status_code", None)
        self.llm_provider: str | None = getattr(last, "llm_provider", None)
        self.model: str | None = getattr(last, "model", None)
        self.code = getattr(last, "code", None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (AllModelsFailedError, (self.errors,))


_REQUEST_ERRORS: dict[str, type[RequestError]] = {
    cls.__name__: cls
    for cls in (
        RequestError,
        RequestCancelledError,
        RequestExpiredError,
        WorkerLostError,
        ProviderError,
        RateLimitError,
        ProviderServerError,
        ProviderTimeoutError,
        ProviderConnectionError,
        MalformedResponseError,
        BadRequestError,
        ContextWindowExceededError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        UnprocessableEntityError,
    )
}

# Rows stored before 403 / 404 / 422 had classes of their own.
_BY_STATUS: dict[tuple[str, int], type[RequestError]] = {
    ("AuthenticationError", 403): PermissionDeniedError,
    ("BadRequestError", 404): NotFoundError,
    ("BadRequestError", 422): UnprocessableEntityError,
}


def error_from_stored(
    error_type: str | None,
    message: str | None,
    *,
    model: str | None = None,
    provider: str | None = None,
    status_code: int | None = None,
    body: object | None = None,
    api_base: str | None = None,
    num_retries: int | None = None,
) -> RequestError:
    """Rebuild the exception stored on a request row (unknown names become ``ProviderError``).

    ``status_code`` is the stored HTTP status (``None``: no answer); the class supplies its own when the
    provider gave none (408 for a timeout). ``body`` is the stored error body; it belongs to provider
    errors only (a request cancelled after a failed attempt keeps no trace of that attempt's body).
    """
    cls = _REQUEST_ERRORS.get(error_type or "", ProviderError)
    cls = _BY_STATUS.get((cls.__name__, status_code or 0), cls)
    return cls(
        message or "",
        model=model,
        llm_provider=provider,
        status_code=status_code,
        body=body if issubclass(cls, ProviderError) else None,
        api_base=api_base,
        num_retries=num_retries,
    )
