"""batcher: LiteLLM-style batch completion as a durable, distributed service.

The public surface is everything in ``__all__``; modules starting with ``_`` are internal.
"""

import typing as _typing

if _typing.TYPE_CHECKING:  # the names as type checkers and IDEs see them; at run time ``__getattr__`` imports them
    from batcher._async_client import AsyncClient, AsyncJob
    from batcher._batch import (
        abatch_completion,
        abatch_completion_models,
        abatch_completion_models_all_responses,
        batch_completion,
        batch_completion_models,
        batch_completion_models_all_responses,
    )
    from batcher._client import Client, Job
    from batcher._config import Settings, get_settings
    from batcher._exceptions import (
        AllModelsFailedError,
        AuthenticationError,
        BadRequestError,
        BatcherError,
        ConfigurationError,
        ContextWindowExceededError,
        EnqueueError,
        InvalidRequestError,
        JobNotFoundError,
        MalformedResponseError,
        MissingAPIKeyError,
        NotFoundError,
        NoWorkerError,
        PermissionDeniedError,
        ProviderConnectionError,
        ProviderError,
        ProviderServerError,
        ProviderTimeoutError,
        QuotaExceededError,
        RateLimitError,
        RequestCancelledError,
        RequestError,
        RequestExpiredError,
        ServiceUnavailableError,
        UnknownModelError,
        UnprocessableEntityError,
        UnsupportedParamsError,
        WaitTimeoutError,
        WorkerLostError,
    )
    from batcher._jobs import JobStatus, Result
    from batcher._response import ModelResponse
    from batcher._retry import RetryPolicy
    from batcher._states import JobKind, JobState, RequestState
    from batcher._submit import RequestSpec

_LAZY: dict[str, str] = {
    "AllModelsFailedError": "batcher._exceptions",
    "AsyncClient": "batcher._async_client",
    "AsyncJob": "batcher._async_client",
    "AuthenticationError": "batcher._exceptions",
    "BadRequestError": "batcher._exceptions",
    "BatcherError": "batcher._exceptions",
    "Client": "batcher._client",
    "ConfigurationError": "batcher._exceptions",
    "ContextWindowExceededError": "batcher._exceptions",
    "EnqueueError": "batcher._exceptions",
    "InvalidRequestError": "batcher._exceptions",
    "Job": "batcher._client",
    "JobKind": "batcher._states",
    "JobNotFoundError": "batcher._exceptions",
    "JobState": "batcher._states",
    "JobStatus": "batcher._jobs",
    "MalformedResponseError": "batcher._exceptions",
    "MissingAPIKeyError": "batcher._exceptions",
    "ModelResponse": "batcher._response",
    "NoWorkerError": "batcher._exceptions",
    "NotFoundError": "batcher._exceptions",
    "PermissionDeniedError": "batcher._exceptions",
    "ProviderConnectionError": "batcher._exceptions",
    "ProviderError": "batcher._exceptions",
    "ProviderServerError": "batcher._exceptions",
    "ProviderTimeoutError": "batcher._exceptions",
    "QuotaExceededError": "batcher._exceptions",
    "RateLimitError": "batcher._exceptions",
    "RequestCancelledError": "batcher._exceptions",
    "RequestError": "batcher._exceptions",
    "RequestExpiredError": "batcher._exceptions",
    "RequestSpec": "batcher._submit",
    "RequestState": "batcher._states",
    "Result": "batcher._jobs",
    "RetryPolicy": "batcher._retry",
    "ServiceUnavailableError": "batcher._exceptions",
    "Settings": "batcher._config",
    "UnknownModelError": "batcher._exceptions",
    "UnprocessableEntityError": "batcher._exceptions",
    "UnsupportedParamsError": "batcher._exceptions",
    "WaitTimeoutError": "batcher._exceptions",
    "WorkerLostError": "batcher._exceptions",
    "abatch_completion": "batcher._batch",
    "abatch_completion_models": "batcher._batch",
    "abatch_completion_models_all_responses": "batcher._batch",
    "batch_completion": "batcher._batch",
    "batch_completion_models": "batcher._batch",
    "batch_completion_models_all_responses": "batcher._batch",
    "get_settings": "batcher._config",
}
"""Where each public name lives: imported on first use (``import batcher`` stays fast; ``batcher --help``
imports none of them)."""

__version__ = "0.1.0"

__all__ = [
    "AllModelsFailedError",
    "AsyncClient",
    "AsyncJob",
    "AuthenticationError",
    "BadRequestError",
    "BatcherError",
    "Client",
    "ConfigurationError",
    "ContextWindowExceededError",
    "EnqueueError",
    "InvalidRequestError",
    "Job",
    "JobKind",
    "JobNotFoundError",
    "JobState",
    "JobStatus",
    "MalformedResponseError",
    "MissingAPIKeyError",
    "ModelResponse",
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
    "RequestSpec",
    "RequestState",
    "Result",
    "RetryPolicy",
    "ServiceUnavailableError",
    "Settings",
    "UnknownModelError",
    "UnprocessableEntityError",
    "UnsupportedParamsError",
    "WaitTimeoutError",
    "WorkerLostError",
    "__version__",
    "abatch_completion",
    "abatch_completion_models",
    "abatch_completion_models_all_responses",
    "batch_completion",
    "batch_completion_models",
    "batch_completion_models_all_responses",
    "get_settings",
]


def __getattr__(name: str) -> object:
    """PEP 562: a public name is imported from its module on first access, then kept in the module."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
