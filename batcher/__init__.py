"""batcher: LiteLLM-style batch completion as a durable, distributed service.

The public surface is everything in ``__all__``; modules starting with ``_`` are internal.
"""

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
