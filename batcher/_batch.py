"""LiteLLM's three batch helpers, with the same signatures, run on the workers.

Each is a thin layer on ``Client``: submit a job, wait for it, read it back; ``abatch_completion*``
are the same on ``AsyncClient``, awaited. Both share the checks before submission and where each
result goes (``Plan``); only the submit/wait/read lines differ. Unlike the
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

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batcher._async_client import AsyncClient, AsyncJob
from batcher._client import Client
from batcher._config import Settings
from batcher._exceptions import (
    AllModelsFailedError,
    BatcherError,
    InvalidRequestError,
    MissingAPIKeyError,
    UnknownModelError,
)
from batcher._jobs import Result
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


def _is_local(client: Client | AsyncClient) -> bool:
    """Whether this process reaches the store itself (then a model's API key is checked here too)."""
    from batcher._transport_local import LocalTransport

    if isinstance(client, AsyncClient):
        return client.transport.is_local
    return isinstance(client.transport, LocalTransport)


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


def _model_problem(
    settings: Settings, local: bool, model: Any, where: str, kwargs: dict[str, Any]
) -> BatcherError | None:
    """Why ``model`` cannot be sent (an unknown name, no API key for its provider), or None. Checked the
    way submission checks it; over HTTP only the name (the keys live with the service)."""
    from batcher._providers import resolve_route
    from batcher._submit import _Validator

    try:
        if local:
            _Validator(settings, split_call_kwargs(kwargs)).route(model, where)
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


def _conversation_problem(settings: Settings, conversation: Any, where: str) -> tuple[Any, BatcherError | None]:
    """One conversation, normalised (message objects as dicts), or the error of its checks."""
    try:
        messages = validate_messages(plain_conversation(conversation), where)
        check_size(to_json(messages), None, where, settings.max_request_bytes)
    except InvalidRequestError as exc:
        return conversation, exc
    return messages, None


# --- plans: what a call submits and where each result goes (shared by the sync and async functions) ---


@dataclass
class Plan:
    """A call checked before anything is sent: the slots already known (an exception where a
    conversation or a model failed its checks), and what to submit for the others."""

    kwargs: dict[str, Any]
    slots: list[Slot | None]
    positions: list[int] = field(default_factory=list)
    """The slot of each submitted request, in submission order."""
    models: list[Any] = field(default_factory=list)
    messages: Any = None
    errors: dict[str, BaseException] = field(default_factory=dict)
    """A race's models refused before submission, by name (``AllModelsFailedError``'s keys)."""

    def fill(self, results: Iterable[Result]) -> None:
        for position, result in zip(self.positions, results, strict=True):
            self.slots[position] = result.value()

    def filled(self) -> list[Slot]:
        return [slot for slot in self.slots if slot is not None]

    def responses(self, return_exceptions: bool) -> list[Slot]:
        """LiteLLM's ``all_responses``: failed models left out, or their exception in place."""
        filled = self.filled()
        return filled if return_exceptions else [slot for slot in filled if isinstance(slot, ModelResponse)]

    def all_failed(self, exc: AllModelsFailedError | None = None) -> AllModelsFailedError:
        """The race's refused models, with the failures of the models it sent (``exc``)."""
        return AllModelsFailedError({**self.errors, **(exc.errors if exc is not None else {})})


def plan_batch(settings: Settings, local: bool, model: str, messages: Sequence[Any], kwargs: dict[str, Any]) -> Plan:
    """``batch_completion``: one slot per conversation; a bad conversation (or model) fills its slot(s)."""
    kwargs = litellm_settings(dict(kwargs))
    model = with_provider(model, kwargs)
    check_conversations_shape(messages)
    split_call_kwargs(kwargs)  # a bad option is the whole call's: it raises
    if (problem := _model_problem(settings, local, model, "", kwargs)) is not None:
        return Plan(kwargs, [problem for _ in messages])
    plan = Plan(kwargs, [None] * len(messages), models=[model], messages=[])
    for i, conversation in enumerate(messages):
        plain, error = _conversation_problem(settings, conversation, f"messages[{i}]")
        if error is not None:
            plan.slots[i] = error
        else:
            plan.positions.append(i)
            plan.messages.append(plain)
    return plan


def fanout_names(models: Any, deployments: Any, kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The models of a fan-out call (``models`` or LiteLLM's deployments) and its options."""
    kwargs = litellm_settings(dict(kwargs))
    kwargs.pop("model", None)  # LiteLLM ignores it too
    return _models_of(models, deployments, kwargs), kwargs


def plan_fanout(settings: Settings, local: bool, names: list[Any], messages: Any, kwargs: dict[str, Any]) -> Plan:
    """A race or a gather-all: the conversation (raises: it is the whole call's) and each model's
    problem (its slot's); ``positions`` are the slots of the models sent."""
    check_single_conversation(messages, sender="this call", example_prefix="messages=")
    plan = Plan(kwargs, [], messages=validate_messages(plain_conversation(messages), "messages"))
    split_call_kwargs(kwargs)
    for i, name in enumerate(names):
        problem = _model_problem(settings, local, with_provider(name, kwargs, pop=False), f"models[{i}]", kwargs)
        plan.slots.append(problem)
        if problem is None:
            plan.positions.append(i)
            plan.models.append(name)
        else:
            plan.errors[f"{name} (#{len(plan.errors)})" if name in plan.errors else str(name)] = problem
    return plan


def _no_models_to_race() -> InvalidRequestError:
    # LiteLLM's thread pool raises ValueError for zero workers; so does this (a ValueError)
    return InvalidRequestError("is empty: pass at least one model to race", field="models")


# --- the three functions ----------------------------------------------------------------------------


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
    batcher's own ``priority=`` (0-9, higher first, default 5) puts this job's prompts before (or
    after) other jobs' waiting in the cluster's backlog.
    """
    c = _client(client)
    plan = plan_batch(c.settings, _is_local(c), model, messages, kwargs)
    if plan.positions:
        job = c.submit(model=plan.models[0], messages=plan.messages, **plan.kwargs)
        job.wait(timeout=wait_timeout, progress=progress)
        plan.fill(job.results())
    return plan.filled()


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
    fails, raises ``AllModelsFailedError`` listing each model's failure. ``priority=`` is accepted (and
    checked) but changes nothing: a race is released at once, never queued behind batches.
    """
    names, kwargs = fanout_names(models, deployments if deployments is not None else model_list, kwargs)
    if not names:
        raise _no_models_to_race()
    c = _client(client)
    plan = plan_fanout(c.settings, _is_local(c), names, messages, kwargs)
    if not plan.models:
        raise plan.all_failed()
    job = c.submit_fastest(models=plan.models, messages=plan.messages, **plan.kwargs)
    try:
        return job.first_response(timeout=wait_timeout)
    except AllModelsFailedError as exc:
        raise plan.all_failed(exc) from None


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
    names, kwargs = fanout_names(models, None, kwargs)
    if not names:
        return []
    c = _client(client)
    plan = plan_fanout(c.settings, _is_local(c), names, messages, kwargs)
    if plan.models:
        job = c.submit_all(models=plan.models, messages=plan.messages, **plan.kwargs)
        job.wait(timeout=wait_timeout)
        plan.fill(job.results())
    return plan.responses(return_exceptions)


# --- the same, awaited (``AsyncClient``) --------------------------------------------------------------


@contextlib.asynccontextmanager
async def _async_client(client: AsyncClient | None) -> AsyncIterator[AsyncClient]:
    """The caller's client, or one of this call's own (closed after it)."""
    if client is not None:
        yield client
        return
    async with AsyncClient() as own:
        yield own


async def _results(job: AsyncJob) -> list[Result]:
    return [result async for result in job.results()]


async def abatch_completion(
    model: str,
    messages: Sequence[Any],
    *,
    client: AsyncClient | None = None,
    progress: bool = False,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[Slot]:
    """``batch_completion`` for an event loop (same arguments, same slots); the wait blocks no thread,
    and the checks of a large batch run in a worker thread."""
    async with _async_client(client) as c:
        plan = await asyncio.to_thread(plan_batch, c.settings, _is_local(c), model, messages, kwargs)
        if plan.positions:
            job = await c.submit(model=plan.models[0], messages=plan.messages, **plan.kwargs)
            await job.wait(timeout=wait_timeout, progress=progress)
            plan.fill(await _results(job))
        return plan.filled()


async def abatch_completion_models(
    models: str | Sequence[str] | None = None,
    messages: Any = None,
    *,
    deployments: Sequence[Mapping[str, Any]] | None = None,
    model_list: Sequence[Mapping[str, Any]] | None = None,
    client: AsyncClient | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> ModelResponse | None:
    """``batch_completion_models`` for an event loop: the first successful answer among ``models``."""
    names, kwargs = fanout_names(models, deployments if deployments is not None else model_list, kwargs)
    if not names:
        raise _no_models_to_race()
    async with _async_client(client) as c:
        plan = await asyncio.to_thread(plan_fanout, c.settings, _is_local(c), names, messages, kwargs)
        if not plan.models:
            raise plan.all_failed()
        job = await c.submit_fastest(models=plan.models, messages=plan.messages, **plan.kwargs)
        try:
            return await job.first_response(timeout=wait_timeout)
        except AllModelsFailedError as exc:
            raise plan.all_failed(exc) from None


async def abatch_completion_models_all_responses(
    models: str | Sequence[str] | None = None,
    messages: Any = None,
    *,
    return_exceptions: bool = False,
    client: AsyncClient | None = None,
    wait_timeout: float | None = None,
    **kwargs: Any,
) -> list[Slot]:
    """``batch_completion_models_all_responses`` for an event loop: every model's answer, in order."""
    names, kwargs = fanout_names(models, None, kwargs)
    if not names:
        return []
    async with _async_client(client) as c:
        plan = await asyncio.to_thread(plan_fanout, c.settings, _is_local(c), names, messages, kwargs)
        if plan.models:
            job = await c.submit_all(models=plan.models, messages=plan.messages, **plan.kwargs)
            await job.wait(timeout=wait_timeout)
            plan.fill(await _results(job))
        return plan.responses(return_exceptions)
