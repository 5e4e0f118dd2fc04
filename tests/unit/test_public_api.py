"""The public surface is pinned: changing it is a deliberate act."""

from __future__ import annotations

import batcher

EXPECTED = {
    "AllModelsFailedError",
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
    "UnsupportedParamsError",
    "WaitTimeoutError",
    "WorkerLostError",
    "__version__",
    "batch_completion",
    "batch_completion_models",
    "batch_completion_models_all_responses",
    "get_settings",
}


def test_all_is_pinned() -> None:
    assert set(batcher.__all__) == EXPECTED


def test_every_public_name_exists_and_lives_in_a_private_module_or_package_root() -> None:
    for name in batcher.__all__:
        obj = getattr(batcher, name)
        module = getattr(obj, "__module__", "batcher")
        assert module == "batcher" or module.startswith("batcher._"), (name, module)
