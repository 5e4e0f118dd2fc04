"""``/v1/batches``: OpenAI's Batch API. Each batch runs its input file as one batcher job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query

from batcher.api import batches, batches_store
from batcher.api.auth import CurrentPrincipal
from batcher.api.context import Ctx
from batcher.api.pagination import page
from batcher.api.schemas import ERROR_RESPONSES, QUOTA_RESPONSES, BatchCreate, BatchList, BatchObject, ErrorBody

router = APIRouter(
    prefix="/v1",
    tags=["batches"],
    responses=ERROR_RESPONSES,
)


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Make retries safe: a second create with the same key returns the first batch (another body: 422).",
    ),
]


@router.post(
    "/batches",
    response_model=BatchObject,
    summary="Create a batch from an uploaded input file",
    responses={
        422: {"model": ErrorBody, "description": "The Idempotency-Key was used with another body."},
        **QUOTA_RESPONSES,
    },
)
def create_batch(
    ctx: Ctx,
    principal: CurrentPrincipal,
    body: BatchCreate,
    tasks: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
) -> BatchObject:
    row, created = batches.create(ctx, principal, body, idempotency_key)
    if created or batches.needs_validation(row):
        # Answer ``validating`` at once, as OpenAI does; the file is checked and stored after the response.
        tasks.add_task(batches.validate_quietly, ctx, row["id"])
    return batches.to_object(batches.with_usage(ctx, row))


@router.get("/batches/{batch_id}", response_model=BatchObject, summary="Retrieve a batch (status and live counts)")
def retrieve_batch(ctx: Ctx, principal: CurrentPrincipal, batch_id: str, tasks: BackgroundTasks) -> BatchObject:
    row = batches.load_visible(ctx, principal, batch_id)
    if batches.needs_validation(row):
        tasks.add_task(batches.validate_quietly, ctx, row["id"])
    return batches.to_object(batches.with_usage(ctx, batches.refresh(ctx, row)))


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=BatchObject,
    summary="Cancel a batch",
    responses={409: {"model": ErrorBody, "description": "The batch is already completed, failed or expired."}},
)
def cancel_batch(ctx: Ctx, principal: CurrentPrincipal, batch_id: str) -> BatchObject:
    row = batches.load_visible(ctx, principal, batch_id)
    return batches.to_object(batches.with_usage(ctx, batches.cancel(ctx, row)))


@router.get("/batches", response_model=BatchList, summary="List batches, newest first")
def list_batches(
    ctx: Ctx,
    principal: CurrentPrincipal,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    with ctx.engine.connect() as conn:
        rows, has_more = page(conn, "batches", principal, after=after, limit=limit)
        loaded = [batches_store.load(conn, r["id"]) for r in rows]
    data = [batches.to_object(batches.with_usage(ctx, batches.refresh(ctx, r))) for r in loaded if r is not None]
    return BatchList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more
    )
