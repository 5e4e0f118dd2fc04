"""LiteLLM's three batch helpers, with the same signatures, run on the workers.

Each is a thin layer on ``Client``: submit a job, wait for it, read it back. Unlike the
in-process helpers, the work survives the caller: the job id is logged, and
``Client().job(id)`` reattaches to it from any process.

The call shapes are LiteLLM's (``litellm/batch_completion/main.py``): ``models`` as a string or a
list (empty: nothing to do), ``deployments=`` / ``model_list=``, ``custom_llm_provider=``, message
objects in ``messages``, ``mock_response`` in all its forms, ``litellm.drop_params`` and
``litellm.num_retries`` when ``litellm`` is imported. A conversation or a model that fails its checks
gets its exception in its own slot, as LiteLLM's per-call ``completion`` would raise it there: those
are found before submission and are not part of the stored job (the README's compatibility section).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from batcher._client import Client
from batcher._exceptions import (
    AllModelsFailedError,
    BatcherError,
    InvalidRequestError,
    MissingAPIKeyError,
    UnknownModelError,
)
from batcher._response import ModelResponse
from batcher._validation import (
    check_conversations_shape,
    check_single_conversation,
    check_size,
    plain_conversation,
    split_call_kwargs,
    to_json,
    validate_messages,
    with_provider,
)

Slot = ModelResponse | BatcherError
"""One entry of a result list: the response, or the exception in its place (LiteLLM's convention)."""


def _client(client: Client | None) -> Client:
    return client if client is not None else Client()


def litellm_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """LiteLLM's module-level settings users rely on, when ``litellm`` is imported (never imported
    here): ``litellm.drop_params = True`` and ``litellm.num_retries = N`` apply unless the call
    passes its own ``drop_params=`` / ``num_retries=``."""
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return kwargs
    if kwargs.get("drop_params") is None and getattr(litellm, "drop_params", None) is True:
        kwargs["drop_params"] = True
    retries = getattr(litellm, "num_retries", None)
    if kwargs.get("num_retries") is None and isinstance(retries, int) and not isinstance(retries, bool):
        kwargs["num_retries"] = retries
    return kwargs


def _model_problem(client: Client, model: Any, where: str, kwargs: dict[str, Any]) -> BatcherError | None:
    """Why ``model`` cannot be sent (an unknown name, no API key for its provider), or None. Checked the
    way submission checks it; over HTTP only the name (the keys live with the service)."""
    from batcher._providers import resolve_route
    from batcher._submit import _Validator
    from batcher._transport_local import LocalTransport

    try:
        if isinstance(client.transport, LocalTransport):
            _Validator(client.settings, split_call_kwargs(kwargs)).route(model, where)
        elif not isinstance(model, str) or not model.strip():
            raise InvalidRequestError(
                "must name a model, e.g. 'gpt-4o-mini'", field=f"{where}.model" if where else "model"
            )
        else:
            resolve_route(model)
    except (UnknownModelError, MissingAPIKeyError) as exc:
        return exc
    except InvalidRequestError as exc:
        if exc.field is not None and exc.field.endswith("model"):
            return exc
        raise
    return None


def _conversation_problem(client: Client, conversation: Any, where: str) -> tuple[Any, BatcherError | None]:
    """One conversation, normalised (message objects as dicts), or the error of its checks."""
    try:
        messages = validate_messages(plain_conversation(conversation), where)
        check_size(to_json(messages), None, where, client.settings.max_request_bytes)
    except InvalidRequestError as exc:
        return conversation, exc
    return messages, None


def batch_completion(
    model: str,
    messages: Sequence[Any],
    *,
    client: Client | None = None,
    progress: bool = False,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[Slot]:
    """One response per conversation, in input order; a failed prompt has its exception in its slot.

    Nothing raises for one bad item: a conversation that fails validation, or a model no provider
    serves, is an exception in the slot(s) concerned. Extra keyword arguments (``temperature``,
    ``max_tokens``, ``api_key``, ``api_base``, ``timeout``, ``mock_response`` ...) are passed through
    as in LiteLLM; options that are wrong for the whole call (``temperature="hot"``) raise.
    """
    c = _client(client)
    kwargs = litellm_settings(dict(kwargs))
    model = with_provider(model, kwargs)
    check_conversations_shape(messages)
    split_call_kwargs(kwargs)  # a bad option is the whole call's: it raises
    if (problem := _model_problem(c, model, "", kwargs)) is not None:
        return [problem for _ in messages]
    slots: list[Slot | None] = [None] * len(messages)
    positions: list[int] = []
    valid: list[Any] = []
    for i, conversation in enumerate(messages):
        plain, error = _conversation_problem(c, conversation, f"messages[{i}]")
        if error is not None:
            slots[i] = error
        else:
            positions.append(i)
            valid.append(plain)
    if valid:
        job = c.submit(model=model, messages=valid, **kwargs)
        job.wait(timeout=wait_timeout, progress=progress)
        for position, result in zip(positions, job.results(), strict=True):
            slots[position] = result.value()
    return [slot for slot in slots if slot is not None]


def _models_of(models: Any, deployments: Any, kwargs: dict[str, Any]) -> list[Any]:
    """``models`` (a string is one model) or LiteLLM's ``deployments`` / ``model_list``: a list of
    completion keyword sets (``{"model": ..., "api_base": ..., "api_key": ...}``) or of Router entries
    (``{"model_name": ..., "litellm_params": {...}}``). A deployment's own options fill ``kwargs``; one
    job takes one set of options, so deployments that disagree on one are refused, naming it."""
    if models is not None:
        if isinstance(models, str):
            return [models]
        if isinstance(models, Sequence):
            return list(models)
        raise InvalidRequestError(
            f"must be a model name or a list of them, got {type(models).__name__}", field="models"
        )
    if deployments is None:
        raise InvalidRequestError("is missing; pass models=[...] (or deployments=[...])", field="models")
    if not isinstance(deployments, Sequence) or isinstance(deployments, str):
        raise InvalidRequestError("must be a list of deployments such as {'model': 'gpt-4o-mini'}", field="deployments")
    found: list[Any] = []
    shared: dict[str, tuple[int, Any]] = {}
    for i, deployment in enumerate(deployments):
        where = f"deployments[{i}]"
        params = deployment.get("litellm_params", deployment) if isinstance(deployment, Mapping) else None
        if not isinstance(params, Mapping) or "model" not in params:
            raise InvalidRequestError(
                "must be a dict naming its model, {'model': ...} or {'litellm_params': {'model': ...}}", field=where
            )
        found.append(params["model"])
        for key, value in params.items():
            if key == "model" or value is None:
                continue
            if key in shared and shared[key][1] != value:
                raise InvalidRequestError(
                    f"differs from deployments[{shared[key][0]}]; batcher sends one set of options per call: "
                    "split the call by that option",
                    field=f"{where}.{key}",
                )
            shared.setdefault(key, (i, value))
    for key, (_, value) in shared.items():
        kwargs.setdefault(key, value)  # the call's own value wins, as LiteLLM's kwargs fill only what is missing
    return found


def _fanout_checks(
    c: Client, models: list[Any], messages: Any, kwargs: dict[str, Any]
) -> tuple[Any, list[BatcherError | None]]:
    """The conversation (raises: it is the whole call's) and each model's problem (its slot's)."""
    check_single_conversation(messages, sender="this call", example_prefix="messages=")
    messages = validate_messages(plain_conversation(messages), "messages")
    split_call_kwargs(kwargs)
    routed = [with_provider(model, kwargs, pop=False) for model in models]
    return messages, [_model_problem(c, model, f"models[{i}]", kwargs) for i, model in enumerate(routed)]


def batch_completion_models(
    models: str | Sequence[str] | None = None,
    messages: Any = None,
    *,
    deployments: Sequence[Mapping[str, Any]] | None = None,
    model_list: Sequence[Mapping[str, Any]] | None = None,
    client: Client | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> ModelResponse | None:
    """The first **successful** response in time among ``models`` (what LiteLLM's docs promise).

    ``models`` may be one name; an empty list raises ``InvalidRequestError`` (a ``ValueError``, as
    LiteLLM's thread pool raises). Models that had not started when the winner answered are never sent. If every model
    fails, raises ``AllModelsFailedError`` listing each model's failure.
    """
    kwargs = litellm_settings(dict(kwargs))
    kwargs.pop("model", None)  # LiteLLM ignores it too
    names = _models_of(models, deployments if deployments is not None else model_list, kwargs)
    if not names:  # LiteLLM's thread pool raises ValueError for zero workers; so does this (a ValueError)
        raise InvalidRequestError("is empty: pass at least one model to race", field="models")
    c = _client(client)
    plain, problems = _fanout_checks(c, names, messages, kwargs)
    sendable = [name for name, problem in zip(names, problems, strict=True) if problem is None]
    errors: dict[str, BaseException] = {}
    for name, problem in zip(names, problems, strict=True):
        if problem is not None:
            errors[f"{name} (#{len(errors)})" if name in errors else str(name)] = problem
    if not sendable:
        raise AllModelsFailedError(errors)
    job = c.submit_fastest(models=sendable, messages=plain, **kwargs)
    try:
        return job.first_response(timeout=wait_timeout)
    except AllModelsFailedError as exc:
        raise AllModelsFailedError({**errors, **exc.errors}) from None


def batch_completion_models_all_responses(
    models: str | Sequence[str] | None = None,
    messages: Any = None,
    *,
    return_exceptions: bool = False,
    client: Client | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[Slot]:
    """Every model's answer, in the order of ``models``.

    As LiteLLM's, a model that failed is left out (the list is shorter); with
    ``return_exceptions=True`` its exception takes its place, so positions match ``models``.
    ``models`` may be one name; an empty list returns ``[]`` without submitting anything.
    """
    kwargs = litellm_settings(dict(kwargs))
    kwargs.pop("model", None)
    names = _models_of(models, None, kwargs)
    if not names:
        return []
    c = _client(client)
    plain, problems = _fanout_checks(c, names, messages, kwargs)
    slots: list[Slot | None] = list(problems)
    sendable = [(i, name) for i, (name, problem) in enumerate(zip(names, problems, strict=True)) if problem is None]
    if sendable:
        job = c.submit_all(models=[name for _, name in sendable], messages=plain, **kwargs)
        job.wait(timeout=wait_timeout)
        for (position, _), result in zip(sendable, job.results(), strict=True):
            slots[position] = result.value()
    filled = [slot for slot in slots if slot is not None]
    return filled if return_exceptions else [slot for slot in filled if isinstance(slot, ModelResponse)]
