"""Submission: validate every request, store the job in one transaction, then enqueue.

Order matters for "nothing lost, nothing half-accepted":
1. requests are validated while they are streamed into Postgres with ``COPY`` inside one
   transaction; the first bad one raises and the transaction rolls back, so a rejected
   submission leaves nothing stored and nothing enqueued (and a 100 MB file is never held
   in memory);
2. after the commit, one task per request is published;
3. the job is marked ``enqueued_at``. A submitter that dies between 1 and 3 leaves a job
   that the recovery sweep publishes again (duplicates are harmless: claims are atomic).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from sqlalchemy import Engine

from batcher import _providers
from batcher._config import Settings
from batcher._db import store
from batcher._exceptions import InvalidRequestError, MissingAPIKeyError
from batcher._publish import FANOUT_GROUP_MAX, publish_fanout, publish_requests
from batcher._secrets import seal, strip_url_credentials
from batcher._states import JobKind
from batcher._validation import CallOptions, check_size, to_json, validate_messages


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request as the user gave it: a prompt for a model, with optional per-request parameters."""

    model: str
    messages: Any
    params: dict[str, Any] | None = None
    custom_id: str | None = None
    where: str | None = None
    """How to name this request in an error (``messages[12]``, ``line 12``)."""


def job_params(options: CallOptions) -> dict[str, Any]:
    """What is stored on the job: provider parameters and options, never the API key."""
    stored: dict[str, Any] = {"params": options.params}
    if options.api_base:
        stored["api_base"] = options.api_base
    if options.timeout_s is not None:
        stored["timeout_s"] = options.timeout_s
    if options.mock_response is not None:
        stored["mock_response"] = options.mock_response
    if options.drop_params:
        stored["drop_params"] = True
    if options.max_attempts is not None:
        stored["max_attempts"] = options.max_attempts
    return stored


def describe_params(stored: dict[str, Any]) -> dict[str, Any]:
    """The stored parameters as shown to users (base URL credentials masked)."""
    shown = dict(stored)
    if "api_base" in shown:
        shown["api_base"] = strip_url_credentials(shown["api_base"])
    return shown


class _Validator:
    """Checks each request, remembering what it already checked per model and provider."""

    def __init__(self, settings: Settings, options: CallOptions) -> None:
        self.settings = settings
        self.options = options
        self._routes: dict[str, _providers.Route] = {}
        self._keyed: set[str] = set()
        self._params_checked: set[str] = set()

    def route(self, model: Any, where: str) -> _providers.Route:
        route = self._routes.get(model) if isinstance(model, str) else None
        if route is not None:
            return route
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequestError(
                "must name a model, e.g. 'gpt-4o-mini' or 'anthropic/claude-3-5-haiku'",
                field=f"{where}.model" if where else "model",
            )
        route = _providers.resolve_route(model)
        self._check_key(route, model)
        self._routes[model] = route
        return route

    def _check_key(self, route: _providers.Route, model: str) -> None:
        if route.provider in self._keyed or self.options.mock_response is not None or self.options.api_key:
            return
        if _providers.resolve_api_key(route.provider, None, os.environ) is None:
            names = " or ".join(_providers.PROVIDERS[route.provider].api_key_env_vars)
            raise MissingAPIKeyError(
                f"no API key for provider {route.provider!r} (model {model!r}): set {names} "
                "for the submitter and the workers, or pass api_key=",
                field="api_key",
            )
        self._keyed.add(route.provider)

    def check(self, idx: int, spec: RequestSpec) -> store.NewRequest:
        where = spec.where or f"messages[{idx}]"
        route = self.route(spec.model, spec.where or "")
        messages = validate_messages(spec.messages, where if spec.where is None else f"{where}: messages")
        if route.provider not in self._params_checked:
            _providers.check_params(route.provider, self.options.params, drop_params=self.options.drop_params)
            self._params_checked.add(route.provider)
        if spec.params:
            merged = {**self.options.params, **spec.params}
            _providers.check_params(route.provider, merged, drop_params=self.options.drop_params)
        messages_json = to_json(messages)
        params_json = to_json(spec.params) if spec.params else None
        check_size(messages_json, params_json, where, self.settings.max_request_bytes)
        return store.NewRequest(
            idx=idx,
            model=spec.model,
            provider=route.provider,
            messages=messages,
            params=spec.params or None,
            custom_id=spec.custom_id,
            messages_json=messages_json,
            params_json=params_json,
        )


def submit(
    engine: Engine,
    app: Celery,
    settings: Settings,
    *,
    kind: JobKind,
    specs: Iterable[RequestSpec],
    options: CallOptions,
    owner_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Validate, store and enqueue a job; returns its id. Raises before storing anything on bad input.

    With an ``idempotency_key``, a second submit of the same owner and key returns the first job
    and stores nothing (HTTP clients retry creates after timeouts).
    """
    validator = _Validator(settings, options)
    credentials = seal(options.api_key, settings) if options.api_key else None
    job_id = uuid.uuid4()
    deadline_at = datetime.now(UTC) + options.deadline if options.deadline else None
    limit = settings.max_prompts_per_job

    def checked() -> Iterator[store.NewRequest]:
        for idx, spec in enumerate(specs):
            if idx >= limit:
                raise InvalidRequestError(
                    f"has more than {limit:,} prompts; split it into several jobs or raise BATCHER_MAX_PROMPTS_PER_JOB",
                    field="messages",
                )
            yield validator.check(idx, spec)

    with engine.begin() as conn:
        inserted = store.insert_job(
            conn,
            job_id=job_id,
            kind=kind.value,
            total=0,
            params=job_params(options),
            deadline_at=deadline_at,
            credentials=credentials,
            user_metadata=options.metadata,
            owner_id=owner_id,
            idempotency_key=idempotency_key,
        )
        if not inserted and owner_id is not None and idempotency_key is not None:
            existing = store.job_by_idempotency_key(conn, owner_id, idempotency_key)
            if existing is not None:
                return existing
        total = store.copy_requests(conn, job_id, checked())
        if total == 0:
            raise InvalidRequestError("is empty; pass at least one prompt", field="messages")
        store.set_total(conn, job_id, total)

    enqueue(engine, app, settings, job_id, kind, total)
    return job_id


def enqueue(engine: Engine, app: Celery, settings: Settings, job_id: uuid.UUID, kind: JobKind, total: int) -> None:
    """Publish every request of a stored job and mark it enqueued (also used by recovery)."""
    # A race's messages take the direct path of batches (one LPUSH, ~0.1 ms against ~0.8 ms for a
    # Celery group): its caller is waiting for the first answer. Gather-all keeps the group.
    if kind is JobKind.ALL and total <= FANOUT_GROUP_MAX:
        publish_fanout(app, job_id, total, queue=settings.queue)
    else:
        queue = settings.race_queue if kind is JobKind.FASTEST else settings.queue
        publish_requests(app, job_id, range(total), queue=queue)
    with engine.begin() as conn:
        store.mark_enqueued(conn, job_id)
