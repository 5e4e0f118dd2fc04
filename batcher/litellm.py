"""The exact drop-in: batcher's three functions returning LiteLLM's own objects.

    from batcher.litellm import batch_completion, batch_completion_models, batch_completion_models_all_responses

(``abatch_completion`` and friends: the same, awaited, with a ``batcher.AsyncClient``.)

The calls run on batcher's workers like ``batcher.batch_completion`` and friends; what comes back is
LiteLLM's: every answer a ``litellm.ModelResponse`` (so ``litellm.completion_cost(r)`` works), every
failure an instance of LiteLLM's exception class of the same meaning (``litellm.RateLimitError``,
``litellm.Timeout``, ``litellm.BadRequestError`` ...), raised or put in its slot where LiteLLM puts
it. Needs ``litellm`` (``pip install 'batcher-llm[litellm]'``); batcher itself never does, and this is the
only module that imports it.

batcher's extension keyword arguments are accepted here too, beside LiteLLM's: ``priority=`` (0-9,
higher first, default 5: the job's place in the cluster's backlog; races ignore it) and
``completion_window=`` (a deadline). LiteLLM itself has neither; its own keywords keep their meaning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

try:
    import litellm
    from litellm import exceptions as errors
except ImportError as exc:  # pragma: no cover - exercised without litellm installed
    raise ImportError(
        "batcher.litellm returns LiteLLM's own objects and needs litellm: pip install 'batcher-llm[litellm]' "
        "(or use batcher.batch_completion, which needs nothing more)"
    ) from exc

from batcher import _batch
from batcher._async_client import AsyncClient
from batcher._client import Client
from batcher._exceptions import (
    AllModelsFailedError,
    AuthenticationError,
    BadRequestError,
    BatcherError,
    ContextWindowExceededError,
    InvalidRequestError,
    MalformedResponseError,
    MissingAPIKeyError,
    ProviderConnectionError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
)
from batcher._response import ModelResponse as BatcherResponse

exceptions = errors
"""LiteLLM's exception module, so ``import batcher.litellm as litellm`` keeps ``litellm.exceptions.X`` working."""
ModelResponse = litellm.ModelResponse

__all__ = [
    "ModelResponse",
    "abatch_completion",
    "abatch_completion_models",
    "abatch_completion_models_all_responses",
    "batch_completion",
    "batch_completion_models",
    "batch_completion_models_all_responses",
    "exceptions",
    "to_litellm_error",
    "to_litellm_response",
]

_BATCHER_ONLY_FIELDS = ("provider", "latency_ms")
"""batcher's additions to the response body; in LiteLLM they are ``_hidden_params`` and ``_response_ms``."""


def to_litellm_response(response: BatcherResponse) -> litellm.ModelResponse:
    """A batcher ``ModelResponse`` as ``litellm.ModelResponse``: the same body, with the provider in
    ``_hidden_params["custom_llm_provider"]`` and the latency in ``_response_ms``."""
    body = response.model_dump(mode="json", exclude_none=False)
    provider = body.get("provider")
    latency_ms = body.get("latency_ms")
    for name in _BATCHER_ONLY_FIELDS:
        body.pop(name, None)
    hidden: dict[str, Any] = dict(getattr(response, "_hidden_params", None) or {})
    if provider is not None:
        hidden.setdefault("custom_llm_provider", provider)
    response_ms = getattr(response, "_response_ms", None) or latency_ms
    converted = litellm.ModelResponse(**body, hidden_params=hidden, response_ms=response_ms)
    converted._hidden_params = hidden
    converted._response_ms = float(response_ms or 0.0)  # LiteLLM sets it on every answer (a mock's is 0)
    return converted


def _status(error: BaseException, default: int) -> int:
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else default


def to_litellm_error(error: BaseException) -> BaseException:
    """batcher's exception as LiteLLM's class of the same meaning (the original is its ``__cause__``).

    Errors LiteLLM has no class for (a cancelled or expired request, a lost worker, a failed race,
    configuration and service errors) are returned as they are."""
    message = str(getattr(error, "message", None) or error)
    model = getattr(error, "model", None) or ""
    provider = getattr(error, "provider", None) or "openai"
    status = _status(error, 0)
    converted: BaseException
    if isinstance(error, RateLimitError):
        converted = errors.RateLimitError(message=message, llm_provider=provider, model=model)
    elif isinstance(error, ProviderTimeoutError):
        converted = errors.Timeout(message=message, model=model, llm_provider=provider)
    elif isinstance(error, ProviderConnectionError):
        converted = errors.APIConnectionError(message=message, llm_provider=provider, model=model)
    elif isinstance(error, ProviderServerError):
        if status == 503:
            converted = errors.ServiceUnavailableError(message=message, llm_provider=provider, model=model)
        else:
            converted = errors.InternalServerError(message=message, llm_provider=provider, model=model)
    elif isinstance(error, MalformedResponseError):
        converted = errors.APIError(status_code=status or 500, message=message, llm_provider=provider, model=model)
    elif isinstance(error, ContextWindowExceededError):
        converted = errors.ContextWindowExceededError(message=message, model=model, llm_provider=provider)
    elif isinstance(error, BadRequestError):
        if status == 404:
            converted = errors.NotFoundError(message=message, model=model, llm_provider=provider)
        else:
            converted = errors.BadRequestError(message=message, model=model, llm_provider=provider)
    elif isinstance(error, AuthenticationError | MissingAPIKeyError):
        converted = errors.AuthenticationError(message=message, llm_provider=provider, model=model)
    elif isinstance(error, InvalidRequestError):  # an unknown model, a conversation refused by its checks
        converted = errors.BadRequestError(message=message, model=model, llm_provider=provider)
    elif isinstance(error, AllModelsFailedError):
        error.errors = {name: to_litellm_error(each) for name, each in error.errors.items()}
        return error
    else:
        return error
    converted.__cause__ = error
    return converted


def _value(slot: BatcherResponse | BatcherError) -> Any:
    return to_litellm_response(slot) if isinstance(slot, BatcherResponse) else to_litellm_error(slot)


@contextlib.contextmanager
def _litellm_failures() -> Iterator[None]:
    """A race nobody won: ``AllModelsFailedError`` with each model's failure as LiteLLM's class."""
    try:
        yield
    except AllModelsFailedError as exc:
        to_litellm_error(exc)
        raise


def batch_completion(
    model: str,
    messages: Sequence[Any],
    *,
    client: Client | None = None,
    progress: bool = False,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[Any]:
    """``batcher.batch_completion`` with LiteLLM's objects in the slots."""
    slots = _batch.batch_completion(
        model, messages, client=client, progress=progress, wait_timeout=wait_timeout, **kwargs
    )
    return [_value(slot) for slot in slots]


def batch_completion_models(
    models: str | Sequence[str] | None = None,
    messages: Any = None,
    *,
    client: Client | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> litellm.ModelResponse | None:
    """``batcher.batch_completion_models`` returning a ``litellm.ModelResponse``."""
    with _litellm_failures():
        response = _batch.batch_completion_models(models, messages, client=client, wait_timeout=wait_timeout, **kwargs)
    return None if response is None else to_litellm_response(response)


def batch_completion_models_all_responses(
    models: str | Sequence[str] | None = None,
    messages: Any = None,
    *,
    return_exceptions: bool = False,
    client: Client | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[Any]:
    """``batcher.batch_completion_models_all_responses`` with LiteLLM's objects."""
    slots = _batch.batch_completion_models_all_responses(
        models,
        messages,
        return_exceptions=return_exceptions,
        client=client,
        wait_timeout=wait_timeout,
        **kwargs,
    )
    return [_value(slot) for slot in slots]


# --- the same, awaited (``batcher.AsyncClient``) -----------------------------------------------------


async def abatch_completion(
    model: str,
    messages: Sequence[Any],
    *,
    client: AsyncClient | None = None,
    progress: bool = False,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[Any]:
    """``batcher.abatch_completion`` with LiteLLM's objects in the slots."""
    slots = await _batch.abatch_completion(
        model, messages, client=client, progress=progress, wait_timeout=wait_timeout, **kwargs
    )
    return [_value(slot) for slot in slots]


async def abatch_completion_models(
    models: str | Sequence[str] | None = None,
    messages: Any = None,
    *,
    client: AsyncClient | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> litellm.ModelResponse | None:
    """``batcher.abatch_completion_models`` returning a ``litellm.ModelResponse``."""
    with _litellm_failures():
        response = await _batch.abatch_completion_models(
            models, messages, client=client, wait_timeout=wait_timeout, **kwargs
        )
    return None if response is None else to_litellm_response(response)


async def abatch_completion_models_all_responses(
    models: str | Sequence[str] | None = None,
    messages: Any = None,
    *,
    return_exceptions: bool = False,
    client: AsyncClient | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[Any]:
    """``batcher.abatch_completion_models_all_responses`` with LiteLLM's objects."""
    slots = await _batch.abatch_completion_models_all_responses(
        models, messages, return_exceptions=return_exceptions, client=client, wait_timeout=wait_timeout, **kwargs
    )
    return [_value(slot) for slot in slots]
