"""LiteLLM's three batch helpers, with the same signatures, run on the workers.

Each is a thin layer on ``Client``: submit a job, wait for it, read it back. Unlike the
in-process helpers, the work survives the caller: the job id is logged, and
``Client().job(id)`` reattaches to it from any process.
"""

from __future__ import annotations

from typing import Any

from batcher._client import Client
from batcher._exceptions import RequestError
from batcher._response import ModelResponse


def _client(client: Client | None) -> Client:
    return client if client is not None else Client()


def batch_completion(
    model: str,
    messages: list[list[dict[str, Any]]],
    *,
    client: Client | None = None,
    progress: bool = False,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[ModelResponse | RequestError]:
    """One response per conversation, in input order; a failed prompt has its exception in its slot.

    Nothing raises for one bad item. Extra keyword arguments (``temperature``, ``max_tokens``,
    ``api_key``, ``api_base``, ``timeout``, ``mock_response`` ...) are passed through as in LiteLLM.
    """
    c = _client(client)
    job = c.submit(model=model, messages=messages, **kwargs)
    job.wait(timeout=wait_timeout, progress=progress)
    return [result.value() for result in job.results()]


def batch_completion_models(
    models: list[str],
    messages: list[dict[str, Any]],
    *,
    client: Client | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> ModelResponse:
    """The first **successful** response in time among ``models`` (what LiteLLM's docs promise).

    Models that had not started when the winner answered are never sent. If every model
    fails, raises ``AllModelsFailedError`` listing each model's failure.
    """
    c = _client(client)
    job = c.submit_fastest(models=models, messages=messages, **kwargs)
    return job.first_response(timeout=wait_timeout)


def batch_completion_models_all_responses(
    models: list[str],
    messages: list[dict[str, Any]],
    *,
    client: Client | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[ModelResponse | RequestError]:
    """One entry per model, in the order of ``models``; a failed model has its exception in place."""
    c = _client(client)
    job = c.submit_all(models=models, messages=messages, **kwargs)
    job.wait(timeout=wait_timeout)
    return [result.value() for result in job.results()]
