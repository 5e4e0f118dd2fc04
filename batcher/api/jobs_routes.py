"""``/v1/jobs``: batcher's native job API (what ``batcher.Client`` does, over HTTP)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from batcher import _standing, _wakeup
from batcher._exceptions import InvalidRequestError, JobNotFoundError, ProviderError
from batcher._files import decode_line, read_jsonl
from batcher._files_store import FILE_PURPOSE_BATCH, get_file, iter_chunks, iter_lines
from batcher._jobs import JobStatus, Result
from batcher._states import JobKind, JobState
from batcher._submit import RequestSpec, submit, withdraw
from batcher._validation import (
    check_conversations_shape,
    check_single_conversation,
    split_call_kwargs,
    validate_messages,
)
from batcher.api.auth import CurrentPrincipal, Principal
from batcher.api.context import ApiContext, Ctx
from batcher.api.errors import ApiError
from batcher.api.pagination import page
from batcher.api.schemas import (
    ERROR_RESPONSES,
    QUOTA_RESPONSES,
    JobCreate,
    JobList,
    JobObject,
    JobRun,
    JobWait,
    ResultErrorOut,
    ResultLine,
)

router = APIRouter(
    prefix="/v1",
    tags=["jobs"],
    responses=ERROR_RESPONSES,
)


# --- helpers ------------------------------------------------------------------------------------


def job_object(
    row: dict[str, Any], *, queued: int = 0, standing: _standing.PublishedStanding | None = None
) -> JobObject:
    """The API's view of a job: ``JobStatus`` (what ``Client`` returns) plus its ``done`` and ``progress``."""
    status = JobStatus.from_row(row, queued=queued, standing=standing)
    return JobObject(**status.model_dump(), done=status.done, progress=status.progress)


def job_objects(ctx: ApiContext, rows: list[dict[str, Any]]) -> list[JobObject]:
    """Jobs as the API shows them, with where each active one stands in line: its backlog from Postgres
    (one count each) and the dispatcher's standings from Redis (one ``HMGET``; Redis away: none)."""
    active = [r["id"] for r in rows if not JobState(r["state"]).is_final]
    queued: dict[uuid.UUID, int] = {}
    if active:
        with ctx.engine.connect() as conn:
            queued = {job_id: ctx.store.backlog(conn, job_id) for job_id in active}
    standings = _standing.read_many(ctx.redis, active)
    return [job_object(r, queued=queued.get(r["id"], 0), standing=standings.get(str(r["id"]))) for r in rows]


def live_job_object(ctx: ApiContext, row: dict[str, Any]) -> JobObject:
    return job_objects(ctx, [row])[0]


def _job_uuid(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFoundError(f"No job found with id '{job_id}'.") from None


def visible_job(ctx: ApiContext, principal: Principal, job_id: str) -> dict[str, Any]:
    jid = _job_uuid(job_id)
    with ctx.engine.connect() as conn:
        row = ctx.store.job_row(conn, jid)
    if row is None or not principal.can_see(row["owner_id"]):
        raise JobNotFoundError(f"No job found with id '{job_id}'.")
    return row


def result_line(result: Result) -> ResultLine:
    return ResultLine(
        index=result.index,
        custom_id=result.custom_id,
        model=result.model,
        state=result.state,
        attempts=result.attempts,
        latency_ms=result.latency_ms,
        response=result.response.stored_body() if result.response is not None else None,
        error=(
            ResultErrorOut(
                type=type(result.error).__name__,
                message=str(result.error),
                status_code=result.error.http_status,
                llm_provider=result.error.llm_provider,
                body=result.error.body if isinstance(result.error, ProviderError) else None,
            )
            if result.error is not None
            else None
        ),
    )


def _file_lines(ctx: ApiContext, file_id: str) -> Iterator[str]:
    limit = ctx.settings.max_request_bytes * 2
    for number, raw in iter_lines(iter_chunks(ctx.engine, file_id), max_line_bytes=limit):
        if raw is None:
            raise InvalidRequestError(f"is longer than {limit:,} bytes", field=f"line {number}")
        yield decode_line(raw, number)


def _specs(ctx: ApiContext, principal: Principal, body: JobCreate) -> Iterable[RequestSpec]:
    """The request specs of a create, checked as ``Client.submit*`` checks them (same errors)."""
    if body.kind is JobKind.BATCH:
        if body.models is not None:
            raise InvalidRequestError("is for kind 'fastest' or 'all'; a batch job takes one 'model'", field="models")
        if body.input_file_id is not None:
            if body.messages is not None:
                raise InvalidRequestError("give either 'messages' or 'input_file_id', not both", field="messages")
            with ctx.engine.connect() as conn:
                f = get_file(conn, body.input_file_id)
            if f is None or not principal.can_see(f.owner_id) or f.purpose != FILE_PURPOSE_BATCH:
                raise ApiError(
                    404, f"No file found with id '{body.input_file_id}'.", param="input_file_id", code="not_found"
                )
            return read_jsonl(_file_lines(ctx, f.id), default_model=body.model)
        if not isinstance(body.model, str) or not body.model:
            raise InvalidRequestError("must name a model, e.g. 'gpt-4o-mini'", field="model")
        check_conversations_shape(body.messages)
        model = body.model
        return (RequestSpec(model=model, messages=c) for c in body.messages or [])
    if body.model is not None or body.input_file_id is not None:
        raise InvalidRequestError(f"kind '{body.kind.value}' sends one conversation to several 'models'", field="model")
    models = body.models
    if not models:
        raise InvalidRequestError("must be a non-empty list of model names", field="models")
    messages = body.messages
    check_single_conversation(messages, sender="this kind", example_prefix="")
    validate_messages(messages, "messages")
    return (RequestSpec(model=m, messages=messages, where=f"models[{i}]") for i, m in enumerate(models))


def _create(ctx: ApiContext, principal: Principal, body: JobCreate, idempotency_key: str | None) -> dict[str, Any]:
    from batcher._egress import ApiBaseNotAllowedError  # local: this function's own dependency

    options = split_call_kwargs(body.params)
    specs = _specs(ctx, principal, body)
    fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest() if idempotency_key else None
    try:
        job_id = submit(
            ctx.engine,
            ctx.celery,
            ctx.settings,
            kind=body.kind,
            specs=specs,
            options=options,
            owner_id=principal.id,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=fingerprint,
            allow_api_base=principal.may_set_api_base,
        )
    except ApiBaseNotAllowedError as exc:  # a permission, not a malformed request: OpenAI's 403 shape
        raise ApiError(403, str(exc), param="api_base", code="api_base_not_allowed") from None
    with ctx.engine.connect() as conn:
        row = ctx.store.job_row(conn, job_id)
    assert row is not None
    return row


def _winner_body(ctx: ApiContext, job_id: uuid.UUID, idx: int) -> dict[str, Any] | None:
    with ctx.engine.connect() as conn:
        return ctx.store.response_body(conn, job_id, idx)


def _all_results(ctx: ApiContext, job_id: uuid.UUID) -> list[ResultLine]:
    return [result_line(Result.from_row(row)) for row in ctx.store.stream_results(ctx.engine, job_id)]


async def _wait(
    ctx: ApiContext, row: dict[str, Any], timeout: float, until: Literal["final", "first_response"]
) -> JobWait:
    """Block (without holding a thread) until the job is final, or has a winner; or until ``timeout``."""
    job_id: uuid.UUID = row["id"]
    keys = _wakeup.done_keys(str(job_id), first_response=until == "first_response")
    deadline = time.monotonic() + min(timeout, ctx.settings.api_max_wait_s)
    while True:
        final = JobState(row["state"]).is_final
        won = until == "first_response" and row["winner_index"] is not None
        remaining = deadline - time.monotonic()
        if final or won or remaining <= 0:
            break
        try:
            await _wakeup.await_event(ctx.aredis, keys, min(_wakeup.WAIT_SLICE_S, remaining))
        except redis.RedisError:
            await asyncio.sleep(min(_wakeup.WAIT_SLICE_S, max(remaining, 0.01)))
        fresh = await run_in_threadpool(_reload, ctx, job_id)
        row = fresh or row
    wait = JobWait(job=await run_in_threadpool(live_job_object, ctx, row), done=final or won)
    if row["winner_index"] is not None:
        wait.response = await run_in_threadpool(_winner_body, ctx, job_id, row["winner_index"])
    if final and row["kind"] != JobKind.BATCH.value:
        wait.results = await run_in_threadpool(_all_results, ctx, job_id)
    return wait


def _reload(ctx: ApiContext, job_id: uuid.UUID) -> dict[str, Any] | None:
    with ctx.engine.connect() as conn:
        return ctx.store.job_row(conn, job_id)


# --- routes -------------------------------------------------------------------------------------

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Make retries safe: a second create with the same key returns the first job.",
    ),
]


@router.post(
    "/jobs",
    response_model=JobObject,
    status_code=201,
    summary="Create a job (returns at once)",
    responses=QUOTA_RESPONSES,
)
def create_job(
    ctx: Ctx, principal: CurrentPrincipal, body: JobCreate, idempotency_key: IdempotencyKey = None
) -> JobObject:
    return live_job_object(ctx, _create(ctx, principal, body, idempotency_key))


@router.post(
    "/jobs/run",
    response_model=JobWait,
    summary="Create a fastest / all job and wait for it (synchronous)",
    responses=QUOTA_RESPONSES,
    description="fastest: returns when the first model answers (`response`); all: when every model has "
    "(`results`). After `timeout` seconds, returns `done: false`; the job goes on and can be polled.",
)
async def run_job(
    ctx: Ctx, principal: CurrentPrincipal, body: JobRun, idempotency_key: IdempotencyKey = None
) -> JobWait:
    if body.kind is JobKind.BATCH:
        raise ApiError(
            400,
            "Only kinds 'fastest' and 'all' run synchronously; create a batch with POST /v1/jobs.",
            param="kind",
            code="invalid_value",
        )
    create = JobCreate.model_validate(body.model_dump(exclude={"timeout"}))
    row = await run_in_threadpool(_create, ctx, principal, create, idempotency_key)
    until: Literal["final", "first_response"] = "first_response" if body.kind is JobKind.FASTEST else "final"
    return await _wait(ctx, row, body.timeout, until)


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    ctx: Ctx,
    principal: CurrentPrincipal,
    after: Annotated[uuid.UUID | None, Query(description="The last job id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    with ctx.engine.connect() as conn:
        rows, has_more = page(conn, "jobs", principal, after=after, limit=limit)
    data = job_objects(ctx, rows)
    return JobList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more
    )


@router.get("/jobs/{job_id}", response_model=JobObject, summary="A job's state, counts, progress and timings")
def get_job(ctx: Ctx, principal: CurrentPrincipal, job_id: str) -> JobObject:
    return live_job_object(ctx, visible_job(ctx, principal, job_id))


@router.get("/jobs/{job_id}/wait", response_model=JobWait, summary="Long-poll until the job is final")
async def wait_job(
    ctx: Ctx,
    principal: CurrentPrincipal,
    job_id: str,
    timeout: Annotated[float, Query(ge=0, le=3_600)] = 30.0,
    until: Literal["final", "first_response"] = "final",
) -> JobWait:
    row = await run_in_threadpool(visible_job, ctx, principal, job_id)
    return await _wait(ctx, row, timeout, until)


@router.post("/jobs/{job_id}/cancel", response_model=JobObject, summary="Cancel every request not yet sent")
def cancel_job(ctx: Ctx, principal: CurrentPrincipal, job_id: str) -> JobObject:
    row = visible_job(ctx, principal, job_id)
    with ctx.engine.begin() as conn:
        ctx.store.cancel_job(conn, row["id"])
        state = ctx.store.finalize_job(conn, row["id"])
    withdraw(ctx.celery, ctx.settings, row["id"], row.get("queue"))
    if state is not None:
        ctx.wake(row["id"], state)
    return live_job_object(ctx, visible_job(ctx, principal, job_id))


@router.get(
    "/jobs/{job_id}/results",
    summary="Every request's outcome as JSONL, in input order (streamed)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "One ResultLine per line."}},
)
def job_results(ctx: Ctx, principal: CurrentPrincipal, job_id: str) -> StreamingResponse:
    row = visible_job(ctx, principal, job_id)

    def lines() -> Iterator[bytes]:
        pending: list[str] = []
        for result_row in ctx.store.stream_results(ctx.engine, row["id"]):
            pending.append(result_line(Result.from_row(result_row)).model_dump_json() + "\n")
            if len(pending) >= 200:
                yield "".join(pending).encode()
                pending = []
        if pending:
            yield "".join(pending).encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
