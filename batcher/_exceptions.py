"""Every error batcher raises, in one tree.

    BatcherError
    ├── ConfigurationError          settings are unusable (bad URL, missing secret key, ...)
    ├── ServiceUnavailableError     Postgres or Redis cannot take the call now (down, full): retry later
    │   └── EnqueueError            the job is stored but its messages were refused: recovery publishes them
    ├── InvalidRequestError         bad input, refused before anything is stored or enqueued
    │   ├── IdempotencyKeyReusedError  an Idempotency-Key sent again with another request body
    │   ├── UnknownModelError       no provider serves this model name
    │   ├── MissingAPIKeyError      the chosen provider has no API key
    │   └── UnsupportedParamsError  an OpenAI-style parameter the provider does not take
    ├── JobNotFoundError            no job with that id (or not yours)
    ├── WaitTimeoutError            a wait ran out before the job finished
    ├── AllModelsFailedError        fastest-response: every model failed (lists each failure)
    └── RequestError                the outcome of one request that did not succeed
        ├── RequestCancelledError   cancelled (or skipped: another model won the race)
        ├── RequestExpiredError     the job's deadline passed before it ran
        ├── WorkerLostError         the worker running it died more times than its attempt budget
        └── ProviderError           the provider call failed; stored on the request
            ├── RateLimitError            429 (retryable; carries retry_after_s)
            ├── ProviderServerError       5xx (retryable)
            ├── ProviderTimeoutError      408 or no answer in time (retryable)
            ├── ProviderConnectionError   could not connect / connection dropped (retryable)
            ├── MalformedResponseError    non-JSON, HTML or truncated body (retryable)
            ├── BadRequestError           400 / 404 / 422 (never retried)
            │   └── ContextWindowExceededError
            └── AuthenticationError       401 / 403 (never retried)

A provider error is an *outcome*: the worker stores it on the request (``error_type`` is
the class name) and the job goes on. ``error_from_stored`` turns a stored row back into
the exception object that ``batch_completion`` puts in the failed prompt's slot.
"""

from __future__ import annotations

from typing import Any

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
    "ProviderConnectionError",
    "ProviderError",
    "ProviderServerError",
    "ProviderTimeoutError",
    "RateLimitError",
    "RequestCancelledError",
    "RequestError",
    "RequestExpiredError",
    "ServiceUnavailableError",
    "UnknownModelError",
    "UnsupportedParamsError",
    "WaitTimeoutError",
    "WorkerLostError",
    "error_from_stored",
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


class JobNotFoundError(BatcherError, LookupError):
    """No job with this id is visible."""


class WaitTimeoutError(BatcherError, TimeoutError):
    """Waiting for a job ran out of time. The job itself goes on."""


class RequestError(BatcherError):
    """One request did not succeed; the others of its job are unaffected."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        provider: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.message = message
        self.model = model
        self.provider = provider
        self.status_code = status_code
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments need help to survive pickling (multiprocessing, Celery).
        return (
            _rebuild,
            (type(self), self.message, self.model, self.provider, self.status_code),
        )


def _rebuild(
    cls: type[RequestError],
    message: str,
    model: str | None,
    provider: str | None,
    status_code: int | None,
) -> RequestError:
    return cls(message, model=model, provider=provider, status_code=status_code)


def _rebuild_rate_limit(
    message: str,
    model: str | None,
    provider: str | None,
    status_code: int | None,
    retry_after_s: float | None,
) -> RateLimitError:
    return RateLimitError(message, model=model, provider=provider, status_code=status_code, retry_after_s=retry_after_s)


class RequestCancelledError(RequestError):
    """The request was cancelled, or skipped because another model already answered."""


class RequestExpiredError(RequestError):
    """The job's deadline passed before this request could run."""


class WorkerLostError(RequestError):
    """The worker running this request died (killed, out of memory, lost machine) more times than the
    request's attempt budget allows: most likely the request itself brings its worker down."""


class ProviderError(RequestError):
    """The provider call failed."""


class RateLimitError(ProviderError):
    """HTTP 429. ``retry_after_s`` is what the provider asked us to wait, if it said."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kw)

    def __reduce__(self) -> tuple[Any, ...]:
        args = super().__reduce__()[1]
        return (_rebuild_rate_limit, (*args[1:], self.retry_after_s))


class ProviderServerError(ProviderError):
    """HTTP 5xx."""

    retryable = True


class ProviderTimeoutError(ProviderError):
    """HTTP 408, or no complete answer within the request timeout."""

    retryable = True


class ProviderConnectionError(ProviderError):
    """The connection could not be made or was dropped."""

    retryable = True


class MalformedResponseError(ProviderError):
    """The provider answered with something that is not the expected JSON."""

    retryable = True


class BadRequestError(ProviderError):
    """HTTP 400 / 404 / 422: the request itself is wrong; retrying cannot help."""


class ContextWindowExceededError(BadRequestError):
    """The prompt is longer than the model's context window."""


class AuthenticationError(ProviderError):
    """HTTP 401 / 403: the key is missing, wrong or not allowed."""


class AllModelsFailedError(BatcherError):
    """Fastest-response: no model answered. ``errors`` maps each model to its failure."""

    def __init__(self, errors: dict[str, BaseException]) -> None:
        self.errors = errors
        detail = "; ".join(f"{model}: {type(err).__name__}: {err}" for model, err in errors.items())
        super().__init__(f"every model failed: {detail}")


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
    )
}


def error_from_stored(
    error_type: str | None,
    message: str | None,
    *,
    model: str | None = None,
    provider: str | None = None,
    status_code: int | None = None,
) -> RequestError:
    """Rebuild the exception stored on a request row (unknown names become ``ProviderError``)."""
    cls = _REQUEST_ERRORS.get(error_type or "", ProviderError)
    return cls(message or "", model=model, provider=provider, status_code=status_code)
