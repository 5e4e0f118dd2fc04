"""Submission: validate every request, store the job in one transaction, then hand it to the dispatcher.

Order matters for "nothing lost, nothing half-accepted":
1. requests are validated while they are streamed into Postgres with ``COPY`` inside one
   transaction (each with its estimated tokens, ``dispatched_at`` NULL: in the backlog); the first
   bad one raises and the transaction rolls back, so a rejected submission leaves nothing stored;
2. after the commit the job is marked ``enqueued_at`` (accepted into the backlog; a race's in the
   transaction that releases it, step 3) and the dispatcher
   is woken (``batcher._dispatch``, best effort: it ticks every ``BATCHER_DISPATCH_INTERVAL_S``
   anyway), which releases the requests to the broker a window at a time. Nothing is published
   here for a batch, so a stored submission never fails because Redis is away or full;
3. a race (``JobKind.FASTEST``) is released here at once, all its requests on the race queue, so it
   never waits for a tick or behind batches. A broker that refuses raises ``EnqueueError`` naming the
   job, which is kept: the dispatcher releases it when the broker has room.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from batcher import _providers, _quotas
from batcher._config import Settings
from batcher._db.contract import store_for
from batcher._db.rows import NewJob, NewRequest
from batcher._dispatch import queue_for, release_job, wake
from batcher._egress import ApiBaseNotAllowedError, EgressPolicy, parse_base
from batcher._exceptions import EnqueueError, IdempotencyKeyReusedError, InvalidRequestError, MissingAPIKeyError
from batcher._publish import Publisher
from batcher._ratelimit import estimate_tokens
from batcher._secrets import seal, strip_url_credentials
from batcher._states import JobKind
from batcher._validation import CallOptions, check_request, check_size, to_json, validate_messages

log = logging.getLogger("batcher.submit")


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
    if options.mock_error is not None:
        stored["mock_error"] = options.mock_error
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
    """Checks each request, remembering what it already checked per model and provider.

    A named ``api_base`` is checked here once per provider (``batcher._egress``): refused outright
    without ``allow_api_base`` (HTTP keys without the permission), parsed, and then it needs the
    caller's own ``api_key`` unless it is the base configured for that provider or an allowed one,
    and it must be a public address unless configured or allowed.
    """

    def __init__(self, settings: Settings, options: CallOptions, *, allow_api_base: bool = True) -> None:
        self.settings = settings
        self.options = options
        self._routes: dict[str, _providers.Route] = {}
        self._keyed: set[str] = set()
        self._params_checked: set[str] = set()
        self._based: set[str] = set()
        self._base: httpx.URL | None = None
        self._egress: EgressPolicy | None = None
        if options.api_base is not None:
            if not allow_api_base:
                raise ApiBaseNotAllowedError
            self._base = parse_base(options.api_base)
            self._egress = EgressPolicy.from_settings(settings)

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
        self._check_base(route)
        self._routes[model] = route
        return route

    def _check_base(self, route: _providers.Route) -> None:
        if self._base is None or self._egress is None or route.provider in self._based:
            return
        if not self.options.mocked:  # a canned answer calls nobody
            self._egress.check_named_base(route.provider, self._base, own_key=bool(self.options.api_key))
        self._based.add(route.provider)

    def _check_key(self, route: _providers.Route, model: str) -> None:
        if route.provider in self._keyed or self.options.mocked or self.options.api_key:
            return
        if _providers.resolve_api_key(route.provider, None, os.environ) is None:
            names = " or ".join(_providers.PROVIDERS[route.provider].api_key_env_vars)
            raise MissingAPIKeyError(
                f"no API key for provider {route.provider!r} (model {model!r}): set {names} "
                "for the submitter and the workers, or pass api_key=",
                field="api_key",
            )
        self._keyed.add(route.provider)

    def check(self, idx: int, spec: RequestSpec) -> NewRequest:
        where = spec.where or f"messages[{idx}]"
        route = self.route(spec.model, spec.where or "")
        check_request(spec.model, spec.custom_id, spec.params, spec.where or "")  # text, a line's own params
        messages = validate_messages(spec.messages, where if spec.where is None else f"{where}: messages")
        if route.provider not in self._params_checked:
            _providers.check_params(route.provider, self.options.params, drop_params=self.options.drop_params)
            self._params_checked.add(route.provider)
        merged = self.options.params
        if spec.params:
            merged = {**self.options.params, **spec.params}
            _providers.check_params(route.provider, merged, drop_params=self.options.drop_params)
        messages_json = to_json(messages)
        params_json = to_json(spec.params) if spec.params else None
        check_size(messages_json, params_json, where, self.settings.max_request_bytes)
        return NewRequest(
            idx=idx,
            model=spec.model,
            provider=route.provider,
            messages=messages,
            params=spec.params or None,
            custom_id=spec.custom_id,
            messages_json=messages_json,
            params_json=params_json,
            est_tokens=estimate_tokens(messages, merged),
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
    idempotency_fingerprint: str | None = None,
    allow_api_base: bool = True,
) -> uuid.UUID:
    """Validate, store and enqueue a job; returns its id. Raises before storing anything on bad input.

    With an ``idempotency_key``, a second submit of the same owner and key returns the first job
    and stores nothing (HTTP clients retry creates after timeouts). ``allow_api_base=False`` refuses
    any ``api_base`` (``ApiBaseNotAllowedError``): the HTTP API passes it for keys without the
    permission; in-process callers are the operator. A job of an ``owner_id`` whose key has a quota of
    unfinished prompts is refused past it with ``QuotaExceededError`` (``batcher._quotas``), nothing stored.
    """
    validator = _Validator(settings, options, allow_api_base=allow_api_base)
    credentials = seal(options.api_key, settings) if options.api_key else None
    job_id = uuid.uuid4()
    deadline_at = datetime.now(UTC) + options.deadline if options.deadline else None
    limit = settings.max_prompts_per_job

    def checked() -> Iterator[NewRequest]:
        for idx, spec in enumerate(specs):
            if idx >= limit:
                raise InvalidRequestError(
                    f"has more than {limit:,} prompts; split it into several jobs or raise BATCHER_MAX_PROMPTS_PER_JOB",
                    field="messages",
                )
            yield validator.check(idx, spec)

    store = store_for(engine)
    with engine.begin() as conn:
        job = NewJob(
            id=job_id,
            kind=kind.value,
            params=job_params(options),
            deadline_at=deadline_at,
            credentials=credentials,
            user_metadata=options.metadata,
            owner_id=owner_id,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=idempotency_fingerprint,
            queue=queue_for(kind, settings),
            priority=options.priority,
        )
        inserted = store.insert_job(conn, job)
        if not inserted and owner_id is not None and idempotency_key is not None:
            existing = store.job_by_idempotency_key(conn, owner_id, idempotency_key)
            if existing is not None:
                existing_id, fingerprint = existing
                if fingerprint and idempotency_fingerprint and fingerprint != idempotency_fingerprint:
                    raise IdempotencyKeyReusedError(
                        f"was already used for job {existing_id} with a different request body; send a new "
                        "Idempotency-Key for a new job (a retry must resend the same body)",
                        field="Idempotency-Key",
                    )
                return existing_id
        quota = _quotas.admission(conn, owner_id)  # the key's max_queued_prompts: locked and counted (429)
        total = store.copy_requests(conn, job_id, checked())
        if total == 0:
            raise InvalidRequestError("is empty; pass at least one prompt", field="messages")
        if quota is not None:
            quota.admit(total)  # over the quota: raises, and the transaction rolls back
        store.set_total(conn, job_id, total)

    enqueue(engine, app, settings, job_id, kind, total)
    return job_id


def publisher_for(app: Celery) -> Publisher:
    """The app's publisher (it caches message templates), built on first use."""
    publisher: Publisher | None = getattr(app, "_batcher_publisher", None)
    if publisher is None:
        publisher = Publisher(app, coordination=app.conf.get("batcher_coordination"))
        app._batcher_publisher = publisher  # type: ignore[attr-defined]
    return publisher


def enqueue(engine: Engine, app: Celery, settings: Settings, job_id: uuid.UUID, kind: JobKind, total: int) -> None:
    """Accept a freshly stored job into the backlog: a race is released (published) at once, a batch is
    left to the dispatcher, which is woken.

    Raises ``EnqueueError`` only for a race the broker refuses (down, or out of memory): the job stays
    stored, its requests in the backlog, and the dispatcher releases them when the broker takes messages.
    """
    publisher = publisher_for(app)
    if JobKind(kind) is JobKind.FASTEST:
        try:
            release_job(
                engine,
                store_for(engine),
                publisher.publish_requests,
                job_id,
                total,
                queue=queue_for(kind, settings),
                mark_enqueued=True,  # with the release: one commit less before the first answer
            )
        except (redis.RedisError, *kombu_errors()) as exc:  # type: ignore[misc]
            raise EnqueueError(
                f"job {job_id} is stored, but the broker refused its messages ({type(exc).__name__}: "
                f"{str(exc)[:200]}); it starts as soon as the broker accepts messages again (the dispatcher "
                f"releases it): follow it with Client().job('{job_id}')",
                job_id=str(job_id),
            ) from None
        return
    try:
        with engine.begin() as conn:
            store_for(conn).mark_enqueued(conn, job_id)
    except OperationalError:  # stored: the stamp is only informative
        log.warning("job %s is stored but could not be marked enqueued", job_id)
    wake(publisher.redis)


def withdraw(app: Celery, settings: Settings, job_id: uuid.UUID, queue: str | None = None) -> int:
    """After a cancel: remove the job's messages still waiting in the broker (its recorded queue, else both
    of batcher's), so no worker spends a slot on them. Best effort: a message left behind is a no-op claim."""
    queues = [queue] if queue else [settings.queue, settings.race_queue]
    try:
        return publisher_for(app).withdraw_job(job_id, queues)
    except (redis.RedisError, OSError) as exc:
        log.warning("could not remove the messages of cancelled job %s from the broker: %s", job_id, exc)
        return 0


def kombu_errors() -> tuple[type[BaseException], ...]:
    """What kombu raises when a broker that is not Redis refuses a message."""
    from kombu.exceptions import OperationalError as KombuOperationalError

    return (KombuOperationalError, ConnectionError, TimeoutError)
