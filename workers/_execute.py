"""One attempt of one request: claim it, call the provider, store the outcome.

A provider error is an outcome, never a crash: it is stored on the request (or the request
is parked for a retry) and the task returns normally. Only infrastructure faults (Postgres
or Redis unreachable) raise, and then the claim's lease lets recovery run the request again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from batcher import _keys, _logging, _metrics, _providers, _wakeup
from batcher._db import recovery
from batcher._db.rows import Answer, Claim, ClaimedRequest, Failure, Progress
from batcher._dispatch import queue_for
from batcher._exceptions import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    ProviderError,
    RequestError,
)
from batcher._publish import RUN_REQUEST_TASK, publish_finalize, task_id
from batcher._ratelimit import Bucket, Grant, Released, Slot, deployment_id, estimate_tokens
from batcher._response import ModelResponse, mock_model_response
from batcher._retry import RetryPolicy
from batcher._secrets import redact, redact_json, unseal
from batcher._states import JobKind, RequestState
from workers._context import WorkerContext

log = logging.getLogger("batcher.worker")

ERROR_TEXT_MAX_CHARS = 2_000
STORE_BACKOFF_BASE_S = 0.25
STORE_BACKOFF_MAX_S = 5.0
"""A write after a paid call is retried in place, at most this far apart (see ``_write``)."""

LIMITER_DOWN_LOG_EVERY_S = 30.0
"""A worker calling without its rate limiter (Redis away) says so at most this often."""
_limiter_warned = [0.0]

T = TypeVar("T")

GROUP_STORES = True
"""Answers are stored through the worker's group commit (``_store_answer``); the benchmark's what-if
``store-one-by-one`` turns it off to measure what it saves."""
GROUP_CLAIMS = True
"""Claims go through the worker's group runner (``ctx.claimer``); what-if ``claim-one-by-one`` turns it off."""


def run_request(ctx: WorkerContext, job_id: str, idx: int) -> str:
    """Run one attempt; returns what happened (for logs and tests)."""
    job = uuid.UUID(job_id)
    settings = ctx.settings
    key = task_id(job, idx)
    if not ctx.started(key):
        return "running-here"  # a duplicate message while another thread of this worker runs it
    try:
        claim = Claim(job, idx, settings.request_timeout_s, settings.lease_margin_s, ctx.worker_id)
        if GROUP_CLAIMS and ctx.store.cluster:
            claimed = ctx.claimer.submit(claim)  # with the other threads' claims: one round trip
        else:
            with ctx.db.begin() as conn:
                (claimed,) = ctx.store.claim_requests(conn, [claim])
        if claimed is None:
            return "not-claimable"
        try:
            return _run_claimed(ctx, job, claimed)
        except RedisConnectionError:
            # Redis is coordination only, and its message may be gone with it (a restart): a retry of this
            # task could not be sent either. The claim goes back to the backlog (Postgres), for the
            # dispatcher to release again; if Postgres is away too, the task's retries and the lease do.
            with ctx.db.begin() as conn:
                given = recovery.give_back(conn, claimed.request_id, ctx.worker_id)
            log.warning("Redis failed under a claimed request: %s", "given back" if given else "already ended")
            return "given-back" if given else "not-claimable"
        except OperationalError:
            raise  # infrastructure: the task is retried, and recovery backs it up
        except Exception as exc:  # a bug or an input nothing foresaw: fail this request, never the worker
            # Whatever the text holds (a header value, a URL), no key of this worker's leaves with it.
            secrets = [*_logging.environment_secrets(), *(_unsealed(ctx, claimed))]
            text = redact(f"internal error: {type(exc).__name__}: {exc}", secrets)[:ERROR_TEXT_MAX_CHARS]
            log.error("request failed with an unexpected %s", type(exc).__name__, extra={"job_id": job_id, "idx": idx})
            _end(ctx, claimed, RequestState.FAILED, "RequestError", text)
            return "failed"
    finally:
        ctx.finished(key)


def _unsealed(ctx: WorkerContext, claimed: ClaimedRequest) -> list[str]:
    try:
        return [unseal(claimed.credentials, ctx.settings)] if claimed.credentials else []
    except Exception:  # a key that cannot be unsealed cannot leak either
        return []


def _run_claimed(ctx: WorkerContext, job: uuid.UUID, claimed: ClaimedRequest) -> str:
    job_id, idx = str(job), claimed.idx
    extra = {"job_id": job_id, "idx": idx, "model": claimed.model, "attempt": claimed.attempts}
    _logging.bind(provider=claimed.provider, model=claimed.model, attempt=claimed.attempts)

    if claimed.deadline_at is not None and datetime.now(UTC) >= claimed.deadline_at:
        _end(ctx, claimed, RequestState.EXPIRED, "RequestExpiredError", "the job's completion window ended")
        return "expired"
    if claimed.kind == JobKind.FASTEST.value and _race_won_by_another(ctx, job_id, idx):
        _end(
            ctx,
            claimed,
            RequestState.SKIPPED,
            "RequestCancelledError",
            "skipped: another model answered first",
        )
        return "skipped"

    options = claimed.job_params
    call: _Call | None = None
    grant: Grant | None = None
    if (mock_error := options.get("mock_error")) is not None:
        # LiteLLM's mocked failure: the error it names, at once (retrying a mock cannot change it).
        error_type = str(mock_error.get("type") or "ProviderError")
        failure = Failure(error_type, str(mock_error.get("message") or ""), mock_error.get("status_code"))
        _end(ctx, claimed, RequestState.FAILED, error_type, failure.error or "", failure=failure)
        return "failed"
    try:
        if "mock_response" in options:
            response = _mocked(options, claimed)
        else:
            call = _prepare(ctx, claimed)
            http = ctx.http  # before the limiter: a window slot is taken only when the call can leave at once
            # One round trip before the call (windows, and a lease on an adaptive slot) and one after it.
            grant = _take(ctx, call) if call.limited else None
            if grant is not None and grant.wait_s > 0:
                return _defer(ctx, claimed, grant.wait_s, extra)
            try:
                response = _providers.complete(
                    http,
                    call.route,
                    claimed.messages,
                    call.params,
                    api_key=call.api_key,
                    api_base=call.api_base,
                    timeout_s=call.timeout_s,
                    on_headers=grant.observe if grant is not None and grant.slot is not None else None,
                )
            except BaseException as err:  # whatever ended the call (a request it could not send too): the lease back
                _release(ctx, grant, err)
                raise
    except RequestError as err:
        return _failed(ctx, claimed, err, call.api_key if call else None, extra)
    except (ConfigurationError, InvalidRequestError) as err:
        # Not the provider's fault, and retrying will not fix it: store it on the request.
        text = redact(str(err), [call.api_key if call else None])
        _end(ctx, claimed, RequestState.FAILED, type(err).__name__, text)
        log.warning("request failed: %s", text, extra=extra)
        return "failed"

    try:
        body = response.stored_body()  # OpenAI's object plus the reserved keys of _hidden_params, _response_ms
        # A race's caller is woken first, with the answer in hand; the limiter's lease and the durable
        # write follow (a few ms it need not wait for). Should this worker die in between, the request's
        # lease expires and the re-run finds the race key naming it, so it runs again and stores its answer.
        won = claimed.kind == JobKind.FASTEST.value and _wake_race_caller(ctx, claimed, body)
    finally:
        _release(ctx, grant, None)  # the lease back (never fails)
    usage = body.get("usage")
    latency_ms = float(response.latency_ms or 0.0)
    answer = Answer(body, claimed.provider, response.model or claimed.model, usage, latency_ms)
    progress = _store_answer(ctx, claimed, answer)
    if won:
        _record_race_winner(ctx, claimed)
    _after_final(ctx, job, progress)
    _metrics.observe_request(claimed.provider, claimed.model, "succeeded", latency_ms / 1000 if call else None)
    log.debug("request succeeded in %.0f ms", latency_ms, extra=extra)
    return "succeeded"


def _mocked(options: dict[str, Any], claimed: ClaimedRequest) -> ModelResponse:
    """LiteLLM's ``mock_response="..."``: the canned text, in ``n`` choices when ``n`` is asked for."""
    response = mock_model_response(str(options["mock_response"]), model=claimed.model, messages=claimed.messages)
    response.provider = claimed.provider
    n = {**options.get("params", {}), **(claimed.request_params or {})}.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        first = response.choices[0]
        response.choices = [first.model_copy(update={"index": i}, deep=True) for i in range(n)]
    return response


def _store_answer(ctx: WorkerContext, claimed: ClaimedRequest, answer: Answer) -> Progress | None:
    """Store a paid answer: through the worker's group commit (``ctx.success_writer``: the answers of
    many threads in one round trip) on a cluster store, in a statement of its own otherwise."""
    if GROUP_STORES and ctx.store.cluster:
        return _retrying(ctx, lambda: ctx.success_writer.submit((claimed, answer)))
    return _write(ctx, lambda conn: ctx.store.record_success(conn, claimed, answer))


def _write(ctx: WorkerContext, statement: Callable[[Connection], T]) -> T:
    """Run a write whose outcome was already paid for, riding out a database outage (``_retrying``)."""

    def run() -> T:
        with ctx.db.begin() as conn:
            return statement(conn)

    return _retrying(ctx, run)


def _retrying(ctx: WorkerContext, write: Callable[[], T]) -> T:
    """Run a write whose outcome was already paid for, riding out a database outage.

    Retried in place for up to ``BATCHER_STORE_RETRY_WINDOW_S`` (15 min): re-running the task
    instead would send the request — and pay for it — again. The worker's heartbeat goes on
    meanwhile (its own thread), so nobody takes the request away while its answer waits here.
    """
    deadline = time.monotonic() + ctx.settings.store_retry_window_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return write()
        except OperationalError:
            if time.monotonic() >= deadline:
                raise
            if attempt == 1 or attempt % 10 == 0:
                log.warning("database write failed (attempt %d), retrying", attempt, exc_info=attempt == 1)
            time.sleep(min(STORE_BACKOFF_MAX_S, STORE_BACKOFF_BASE_S * 2 ** min(attempt - 1, 10)))


@dataclass(frozen=True, slots=True)
class _Call:
    """Everything one provider call needs, resolved on this worker."""

    route: _providers.Route
    params: dict[str, Any]
    api_key: str
    api_base: str
    timeout_s: float
    buckets: list[Bucket]
    slot: Slot | None
    tokens: int

    @property
    def limited(self) -> bool:
        return self.slot is not None or bool(self.buckets)


def _prepare(ctx: WorkerContext, claimed: ClaimedRequest) -> _Call:
    options = claimed.job_params
    params: dict[str, Any] = {**options.get("params", {}), **(claimed.request_params or {})}
    params = _providers.check_params(claimed.provider, params, drop_params=bool(options.get("drop_params")))
    route = _providers.resolve_route(claimed.model)
    api_base = _providers.resolve_api_base(claimed.provider, options.get("api_base"), os.environ)
    api_key = _api_key(ctx, claimed, api_base)
    if options.get("api_base"):  # submission's rules again, under this worker's configuration (names: at connect)
        ctx.egress.check_named_base(claimed.provider, api_base, own_key=True, resolve=None)
    limiter = ctx.limiter
    deployment = deployment_id(api_base, api_key) if limiter.active else ""
    buckets = limiter.buckets(claimed.provider, route.model, deployment) if limiter.limits else []
    slot = limiter.slot(claimed.provider, route.model, deployment, claimed.model, buckets) if limiter.adaptive else None
    return _Call(
        route=route,
        params=params,
        api_key=api_key,
        api_base=api_base,
        timeout_s=float(options.get("timeout_s") or ctx.settings.request_timeout_s),
        buckets=buckets,
        slot=slot,
        tokens=estimate_tokens(claimed.messages, params) if buckets or slot else 0,
    )


def _take(ctx: WorkerContext, call: _Call) -> Grant | None:
    """Ask the shared limiter for a slot. Redis is coordination only: when it cannot answer, the call goes
    without a limit (the provider's own 429s are still retried) rather than the work stopping with it."""
    try:
        return ctx.limiter.take(call.slot, call.buckets, call.tokens, lease_s=call.timeout_s)
    except (RedisError, OSError) as exc:
        now = time.monotonic()
        if now - _limiter_warned[0] >= LIMITER_DOWN_LOG_EVERY_S:
            _limiter_warned[0] = now
            log.warning("rate limiter unavailable (%s): calling without it until Redis answers", type(exc).__name__)
        return None


def _release(ctx: WorkerContext, grant: Grant | None, err: BaseException | None) -> None:
    """The call's lease back, and its outcome as the adaptive limit's feedback. Never fails the request:
    its answer is paid for, and a lease Redis could not take back expires by itself.

    Posted (``RateLimiter.release(then=...)``): the thread goes on to store its answer while the release
    waits for the limiter's next round trip; the metrics follow on the limiter's thread."""
    if grant is None:
        return
    slot = grant.slot

    def observed(released: Released | BaseException) -> None:
        if isinstance(released, BaseException):  # Redis is coordination only
            log.warning("could not release a rate-limit lease (%s); it expires by itself", type(released).__name__)
        elif slot is not None:
            _metrics.observe_adaptive(
                slot.provider, slot.model, slot.short_id, released.limit, released.in_flight, released.learned_changed
            )

    try:
        released = ctx.limiter.release(grant, err, then=observed)
    except Exception as exc:  # a limiter running its scripts alone (embedded mode) fails here
        observed(exc)
        return
    if released is not None:
        observed(released)


def _api_key(ctx: WorkerContext, claimed: ClaimedRequest, api_base: str) -> str:
    """The job's own key, else this worker's key for the provider: only for a base configured with it or
    allowed (``BATCHER_ALLOWED_API_BASES``), whatever the job says."""
    if claimed.credentials:
        return unseal(claimed.credentials, ctx.settings)
    if not ctx.egress.key_may_go(claimed.provider, api_base):
        raise AuthenticationError(
            f"the job names an api_base that is not configured for {claimed.provider} nor allowed, without its own "
            "api_key: workers send their keys only to the bases configured with them",
            model=claimed.model,
            llm_provider=claimed.provider,
            api_base=api_base,
        )
    key = _providers.resolve_api_key(claimed.provider, None, os.environ)
    if key is None:
        names = " or ".join(_providers.PROVIDERS[claimed.provider].api_key_env_vars)
        raise AuthenticationError(
            f"worker {socket.gethostname()} has no API key for {claimed.provider}: set {names} in the "
            "workers' environment",
            model=claimed.model,
            llm_provider=claimed.provider,
            api_base=api_base,
        )
    return key


def _requeue(ctx: WorkerContext, claimed: ClaimedRequest, delay_s: float) -> None:
    """A new message for the request's next attempt, due in ``delay_s``: no worker slot waits for it.

    This attempt is over (its outcome is written): it leaves the in-flight set first, or the next
    attempt, if it starts on this worker before this thread returns, would be taken for a duplicate.
    """
    queue = queue_for(claimed.kind, ctx.settings, claimed.queue)
    ctx.finished(task_id(claimed.job_id, claimed.idx))
    ctx.app.send_task(
        RUN_REQUEST_TASK,
        args=(str(claimed.job_id), claimed.idx),
        task_id=task_id(claimed.job_id, claimed.idx),
        countdown=delay_s,
        queue=queue,
        ignore_result=True,
    )


def _defer(ctx: WorkerContext, claimed: ClaimedRequest, wait_s: float, extra: dict[str, Any]) -> str:
    """Over a shared rate limit: give the attempt back and come back when there is capacity."""
    parked = _write(
        ctx, lambda conn: ctx.store.record_deferral(conn, claimed.request_id, attempt=claimed.attempts, delay_s=wait_s)
    )
    if parked:
        _requeue(ctx, claimed, wait_s)
    _metrics.observe_deferral(claimed.provider, claimed.model, wait_s)
    log.debug("rate limited, deferred %.2f s", wait_s, extra=extra)
    return "deferred"


def _failed(
    ctx: WorkerContext,
    claimed: ClaimedRequest,
    err: RequestError,
    api_key: str | None,
    extra: dict[str, Any],
) -> str:
    text = redact(str(err), [api_key])[:ERROR_TEXT_MAX_CHARS]
    policy = ctx.retry_policy
    if (max_attempts := claimed.job_params.get("max_attempts")) is not None:
        policy = RetryPolicy(max_attempts, policy.backoff_base_s, policy.backoff_max_s)
    decision = policy.decide(err, claimed.attempts)
    if decision is not None:
        delay_s = decision.delay_s
        failure = _failure_of(err, text, api_key)
        parked = _write(
            ctx,
            lambda conn: ctx.store.record_retry(
                conn, claimed.request_id, attempt=claimed.attempts, delay_s=delay_s, failure=failure
            ),
        )
        if parked:
            _requeue(ctx, claimed, decision.delay_s)
        _metrics.observe_retry(claimed.provider, claimed.model, type(err).__name__)
        log.debug("attempt failed (%s), retrying in %.1f s", text, decision.delay_s, extra=extra)  # per request
        return "retrying"
    _end(ctx, claimed, RequestState.FAILED, type(err).__name__, text, failure=_failure_of(err, text, api_key))
    log.warning("request failed: %s", text, extra=extra)
    return "failed"


def _failure_of(err: RequestError, text: str, api_key: str | None) -> Failure:
    """What the request row keeps of ``err``: the status the provider really answered with (``None``: no
    answer; the exception read back supplies its class's status, 408 for a timeout) and its error body."""
    body = err.body if isinstance(err, ProviderError) else None
    return Failure(type(err).__name__, text, err.http_status, error_body=redact_json(body, [api_key]))


def _end(
    ctx: WorkerContext,
    claimed: ClaimedRequest,
    state: RequestState,
    error_type: str,
    error: str,
    *,
    failure: Failure | None = None,
) -> None:
    failure = failure or Failure(error_type, error)
    progress = _write(
        ctx,
        lambda conn: ctx.store.record_end(conn, claimed.request_id, state, attempt=claimed.attempts, failure=failure),
    )
    _metrics.observe_request(claimed.provider, claimed.model, state.value)
    _after_final(ctx, claimed.job_id, progress)


def _after_final(ctx: WorkerContext, job_id: uuid.UUID, progress: Progress | None) -> None:
    """The task that completes a job enqueues its finalizer (exactly-once is the finalizer's guard)."""
    if progress is not None and progress.complete:
        publish_finalize(ctx.app, job_id, queue=ctx.settings.queue)


def _race_won_by_another(ctx: WorkerContext, job_id: str, idx: int) -> bool:
    try:
        winner = ctx.redis.get(_keys.race_first_key(job_id))
    except Exception:  # Redis is coordination only: when it is away, run the request.
        log.warning("race key check failed; running the request anyway", exc_info=True)
        return False
    return winner is not None and not _names(winner, idx)


def _names(winner: bytes | str | int | None, idx: int) -> bool:
    return winner is not None and int(winner) == idx


def _wake_race_caller(ctx: WorkerContext, claimed: ClaimedRequest, body: dict[str, Any]) -> bool:
    """First success wins: ``SET NX`` the race key and hand the answer to the waiting caller.

    True when this request is the winner as far as Redis knows, or when Redis cannot be asked:
    then Postgres decides (the first ``set_race_winner`` wins) and the caller finds it there.
    """
    try:
        # Won now, or by this request's earlier attempt that died before storing: (re)wake either way.
        if not _wakeup.win_race(ctx.redis, str(claimed.job_id), claimed.idx, body):
            return False
    except Exception:  # the answer is paid for: store it whatever Redis does
        log.warning("race key unavailable; Postgres decides the winner", exc_info=True)
    return True


def _record_race_winner(ctx: WorkerContext, claimed: ClaimedRequest) -> None:
    """Make the race durable (its answer is stored already) and spare the slower models."""
    _write(ctx, lambda conn: ctx.store.set_race_winner(conn, claimed.job_id, claimed.idx))
    progress = _write(ctx, lambda conn: ctx.store.skip_unsent(conn, claimed.job_id))
    _after_final(ctx, claimed.job_id, progress)


def finalize(ctx: WorkerContext, job_id: str) -> str | None:
    """Give the job its final state (once) and wake whoever waits for it."""
    with ctx.db.begin() as conn:
        state = ctx.store.finalize_job(conn, uuid.UUID(job_id))
    if state is not None:
        try:
            _wakeup.announce_done(ctx.redis, job_id, state)
        except Exception:  # Redis is coordination only: waiters also poll Postgres
            log.warning("could not wake the waiters of job %s", job_id, exc_info=True)
        log.info("job finished: %s", state, extra={"job_id": job_id})
    return state
