"""OpenAI Batch API semantics on top of jobs: a batch's status lifecycle.

A batch is a row in ``batches`` plus, once validated, one job. Its status is advanced lazily
by whoever reads it (the service is stateless and the workers know nothing of batches):

    validating --(lines valid, stored, enqueued)--> in_progress --(job final)--> finalizing --> completed
    validating --(any bad line)--> failed                       in_progress --(deadline)--> expired
    validating / in_progress --(cancel)--> cancelling --(in-flight requests back)--> cancelled

Validation runs after the create call has answered (OpenAI's create returns ``validating``),
inside one transaction holding a per-batch advisory lock: a process that dies mid-way rolls
back and frees the lock, and the next read of the batch starts validation again.
Output and error files are not written anywhere: their lines are rendered from the results in
Postgres when downloaded. Finalizing computes their sizes once, so ``bytes`` is exact.

The rest of a batch lives beside this module: checking the input file's lines
(``batches_lines``), rendering the output and error files (``batches_output``), and its SQL
(``batches_store``; the job it runs goes through the job store).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy.exc import DataError

from batcher import _quotas
from batcher._db.rows import NewJob
from batcher._dispatch import queue_for
from batcher._exceptions import InvalidRequestError, QuotaExceededError
from batcher._files_store import FILE_PURPOSE_BATCH, get_file, insert_batch_file, new_file_id
from batcher._scheduling import DEFAULT_PRIORITY
from batcher._states import JobKind, JobState
from batcher._submit import enqueue, job_params, withdraw
from batcher._validation import CallOptions, check_json_value, check_priority, parse_window
from batcher.api import batches_store
from batcher.api.auth import Principal
from batcher.api.batches_lines import checked_requests, line_error
from batcher.api.batches_output import render_lines
from batcher.api.context import ApiContext
from batcher.api.errors import ApiError, data_error_detail, is_unavailable
from batcher.api.schemas import (
    EXPIRES_AFTER_MAX_S,
    EXPIRES_AFTER_MIN_S,
    OPENAI_COMPLETION_WINDOW,
    BatchCreate,
    BatchError,
    BatchErrors,
    BatchObject,
    BatchRequestCounts,
    BatchUsage,
    ExpiresAfter,
)

log = logging.getLogger("batcher.api.batches")

SUPPORTED_ENDPOINTS = ("/v1/chat/completions",)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
OPENAI_WINDOW = timedelta(hours=24)
MAX_MODELS_NAMED = 8
"""``model`` names at most this many of the models a file's lines name (OpenAI batches have one)."""
STALE_VALIDATION_S = 30.0
"""A batch still ``validating`` this long after creation, with no validator holding its lock, is re-validated."""


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(16)}"


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


# --- reading ------------------------------------------------------------------------------------


def load_visible(ctx: ApiContext, principal: Principal, batch_id: str) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        row = batches_store.load(conn, batch_id)
    if row is None or not principal.can_see(row["owner_id"]):
        raise batch_not_found(batch_id)
    return row


def batch_not_found(batch_id: str) -> ApiError:
    """OpenAI's 404 for a batch id that names no batch of the caller's."""
    return ApiError(404, f"No batch found with id '{batch_id}'.")


def with_usage(ctx: ApiContext, row: dict[str, Any]) -> dict[str, Any]:
    """The row with ``usage``: recorded once the batch is final, summed live from the responses before."""
    if row["status"] in TERMINAL or row["job_id"] is None:
        return row
    with ctx.engine.connect() as conn:
        return {**row, "usage": batches_store.usage(conn, row["job_id"])}


def to_object(row: dict[str, Any]) -> BatchObject:
    total = row["job_total"] or 0
    failed = (row["job_failed"] or 0) + (row["job_cancelled"] or 0) + (row["job_expired"] or 0)
    errors = row["errors"]
    return BatchObject(
        id=row["id"],
        endpoint=row["endpoint"],
        errors=BatchErrors(data=[BatchError(**e) for e in errors]) if errors else None,
        input_file_id=row["input_file_id"],
        completion_window=row["completion_window"],
        status=row["status"],
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        created_at=int(row["created_at"].timestamp()),
        in_progress_at=_ts(row["in_progress_at"]),
        expires_at=_ts(row["expires_at"]),
        finalizing_at=_ts(row["finalizing_at"]),
        completed_at=_ts(row["completed_at"]),
        failed_at=_ts(row["failed_at"]),
        expired_at=_ts(row["expired_at"]),
        cancelling_at=_ts(row["cancelling_at"]),
        cancelled_at=_ts(row["cancelled_at"]),
        request_counts=BatchRequestCounts(total=total, completed=row["job_succeeded"] or 0, failed=failed),
        model=row["model"],
        usage=BatchUsage.model_validate(row["usage"] or batches_store.usage_of_nothing()),
        metadata=row["batch_metadata"],
        batcher_completion_window=row["window_override"],
        batcher_priority=row["priority"],
    )


# --- create and validate ------------------------------------------------------------------------


def _invalid_value(value: str, supported: str, param: str) -> ApiError:
    """OpenAI's 400 for a value outside an enumeration."""
    return ApiError(
        400, f"Invalid value: '{value}'. Supported values are: {supported}.", param=param, code="invalid_value"
    )


def check_expires_after(policy: ExpiresAfter | None, param: str) -> int | None:
    """``expires_after`` / ``output_expires_after`` as OpenAI checks it: the seconds, or ``None`` if not sent."""
    if policy is None:
        return None
    if policy.anchor != "created_at":
        raise _invalid_value(policy.anchor, "'created_at'", f"{param}.anchor")
    if policy.seconds < EXPIRES_AFTER_MIN_S:
        raise ApiError(
            400,
            f"Invalid '{param}.seconds': integer below minimum value. Expected a value >= {EXPIRES_AFTER_MIN_S}, "
            f"but got {policy.seconds} instead.",
            param=f"{param}.seconds",
            code="integer_below_min_value",
        )
    if policy.seconds > EXPIRES_AFTER_MAX_S:
        raise ApiError(
            400,
            f"Invalid '{param}.seconds': integer above maximum value. Expected a value <= {EXPIRES_AFTER_MAX_S}, "
            f"but got {policy.seconds} instead.",
            param=f"{param}.seconds",
            code="integer_above_max_value",
        )
    return policy.seconds


def check_create(body: BatchCreate) -> timedelta:
    """The create's parameters as OpenAI checks them (its messages); returns the batch's window."""
    if body.endpoint not in SUPPORTED_ENDPOINTS:
        raise _invalid_value(body.endpoint, "'/v1/chat/completions'", "endpoint")
    if body.completion_window != OPENAI_COMPLETION_WINDOW:
        raise _invalid_value(body.completion_window, f"'{OPENAI_COMPLETION_WINDOW}'", "completion_window")
    window = OPENAI_WINDOW
    if body.batcher_completion_window is not None:
        try:
            window = parse_window(body.batcher_completion_window)
        except InvalidRequestError as exc:
            message = str(exc).replace("completion_window", "batcher_completion_window")
            raise ApiError(400, message, param="batcher_completion_window", code="invalid_value") from None
    metadata = body.metadata or {}
    if len(metadata) > 16:
        raise ApiError(
            400,
            "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
            f"but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise ApiError(
                400,
                "Invalid 'metadata': string too long. Expected a string with maximum length 64, "
                f"but got a string with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if len(value) > 512:
            raise ApiError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length 512, "
                f"but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    check_json_value(metadata, "metadata")  # text Postgres can store
    check_expires_after(body.output_expires_after, "output_expires_after")
    return window


def create(
    ctx: ApiContext, principal: Principal, body: BatchCreate, idempotency_key: str | None = None
) -> tuple[dict[str, Any], bool]:
    """Store a ``validating`` batch; returns it and whether it is new.

    Every create makes a new batch, as on OpenAI (the same file may run twice). A create repeating an
    ``Idempotency-Key`` (a retry) returns the batch the key first created; with another body, a 422.
    """
    window = check_create(body)
    priority = (
        DEFAULT_PRIORITY if body.batcher_priority is None else check_priority(body.batcher_priority, "batcher_priority")
    )
    precheck_quota(ctx, principal)  # 429 for a key at its max_queued_prompts, nothing stored
    fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest() if idempotency_key else None
    with ctx.engine.begin() as conn:
        file = get_file(conn, body.input_file_id)
        if file is None or not principal.can_see(file.owner_id):
            raise ApiError(404, f"No such File object: {body.input_file_id}", param="input_file_id", code="not_found")
        if file.purpose != FILE_PURPOSE_BATCH:
            raise ApiError(
                400,
                f"Invalid 'input_file_id': '{file.id}'. The file was uploaded with purpose '{file.purpose}'; "
                "a batch's input file must be uploaded with purpose 'batch'.",
                param="input_file_id",
                code="invalid_value",
            )
        try:
            batch_id, created = batches_store.insert(
                conn,
                batch_id=new_batch_id(),
                owner_id=principal.id,
                input_file_id=file.id,
                endpoint=body.endpoint,
                completion_window=body.completion_window,
                window=window,
                window_override=body.batcher_completion_window,
                metadata=body.metadata,
                output_expires_after_s=body.output_expires_after.seconds if body.output_expires_after else None,
                idempotency_key=idempotency_key,
                idempotency_fingerprint=fingerprint,
                priority=priority,
            )
        except batches_store.KeyReusedError as exc:
            # 422 for a reused key, as the native job API answers (the IETF Idempotency-Key draft's status).
            raise ApiError(
                422,
                f"The Idempotency-Key was already used to create batch '{exc}' with a different request body; "
                "use a new key for a new batch.",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            ) from None
        row = batches_store.load(conn, batch_id)
    assert row is not None
    return row, created


def validate_and_start(ctx: ApiContext, batch_id: str) -> None:
    """Validate the input file, store every request and enqueue them; or fail the batch. Enqueues nothing on error.

    Safe to call from any replica at any time: a second caller finds the lock taken or the batch past
    ``validating`` and returns.
    """
    try:
        started = _validate(ctx, batch_id)
    except _CancelledMeanwhileError:
        return
    except (DataError, psycopg.DataError) as exc:  # a value Postgres refuses: fail the batch, don't retry forever
        message = f"A line holds a value that cannot be stored: {data_error_detail(exc)}"
        _fail(ctx, batch_id, [{"code": "invalid_request", "message": message, "param": None, "line": None}])
        return
    if started is not None:
        # Committed: the requests are in the backlog; the dispatcher releases them even if this process dies now.
        job_id, total = started
        enqueue(ctx.engine, ctx.celery, ctx.settings, job_id, JobKind.BATCH, total)


def _fail(ctx: ApiContext, batch_id: str, errors: list[dict[str, Any]]) -> None:
    with ctx.engine.begin() as conn:
        batches_store.mark_failed(conn, batch_id, errors)


class _CancelledMeanwhileError(Exception):
    """The batch was cancelled while its file was validated: roll everything back."""


def _validate(ctx: ApiContext, batch_id: str) -> tuple[uuid.UUID, int] | None:
    job_id = uuid.uuid4()
    store = ctx.store
    with ctx.engine.begin() as conn:
        if not batches_store.try_lock(conn, batch_id):
            return None
        row = batches_store.load(conn, batch_id)
        if row is None or row["status"] != "validating":
            return None
        errors: list[dict[str, Any]] = []
        models: list[str] = []
        total = 0
        with conn.begin_nested() as savepoint:
            job = NewJob(
                id=job_id,
                kind=JobKind.BATCH.value,
                params=job_params(CallOptions()),
                deadline_at=row["expires_at"],
                user_metadata={"batch_id": batch_id, **(row["batch_metadata"] or {})},
                owner_id=row["owner_id"],
                priority=row["priority"],
                # Recorded, as for every job: the dispatcher (another process, with its own settings)
                # releases the requests to the queue the API was configured with.
                queue=queue_for(JobKind.BATCH, ctx.settings),
            )
            store.insert_job(conn, job)
            quota = _admission(conn, row["owner_id"], errors)  # the key's max_queued_prompts, as native jobs
            if get_file(conn, row["input_file_id"]) is None:
                line_error(errors, 0, "invalid_request", f"The input file '{row['input_file_id']}' was deleted.")
            elif not errors:
                total = store.copy_requests(
                    conn, job_id, checked_requests(ctx, row["input_file_id"], row["endpoint"], errors, models)
                )
            if quota is not None and total and not errors:
                try:
                    quota.admit(total)
                except QuotaExceededError as exc:
                    errors.append(_quota_error(exc))
            if total == 0 and not errors:
                errors.append(
                    {"code": "empty_file", "message": "The input file has no requests.", "param": None, "line": None}
                )
            if errors:
                savepoint.rollback()
            else:
                store.set_total(conn, job_id, total)
        batches_store.set_model(conn, batch_id, _models_named(models))
        if errors:
            for error in errors:
                if error["line"] == 0:
                    error["line"] = None
            batches_store.mark_failed(conn, batch_id, errors)
            return None
        if not batches_store.mark_in_progress(conn, batch_id, job_id):
            raise _CancelledMeanwhileError
    return job_id, total


def _admission(conn: Any, owner_id: uuid.UUID, errors: list[dict[str, Any]]) -> _quotas.QueueAdmission | None:
    """The key's queued-prompts quota for a validation; a key already at it fails the batch (an error entry)."""
    try:
        return _quotas.admission(conn, owner_id)
    except QuotaExceededError as exc:
        errors.append(_quota_error(exc))
        return None


def _quota_error(exc: QuotaExceededError) -> dict[str, Any]:
    """A quota refused at validation, as an entry of the batch's ``errors`` (as OpenAI reports its
    enqueued-token limit on the batch): the create itself was answered before the file was read."""
    return {"code": "quota_exceeded", "message": str(exc), "param": None, "line": None}


def precheck_quota(ctx: ApiContext, principal: Principal) -> None:
    """``batches.create``: a key already at its quota of unfinished prompts gets a 429 at once, before a
    batch is stored (the file's own size is checked against the quota when it is validated)."""
    with ctx.engine.begin() as conn:
        _quotas.admission(conn, principal.id)


def _models_named(models: list[str]) -> str | None:
    """The batch's ``model``: the one model its lines name, as on OpenAI; batcher lets lines name several
    (of any provider), then they are listed in order of first use, comma-separated (the first few)."""
    if not models:
        return None
    named = ",".join(models[:MAX_MODELS_NAMED])
    return named + (",..." if len(models) > MAX_MODELS_NAMED else "")


def validate_quietly(ctx: ApiContext, batch_id: str) -> None:
    """Background-task wrapper. Postgres or Redis away: logged and left for the next read to retry.
    Anything else would fail again on every retry (the batch would stay ``validating`` forever): it
    is logged and the batch fails, with an error entry saying so."""
    try:
        validate_and_start(ctx, batch_id)
    except Exception as exc:
        if is_unavailable(exc):
            log.warning("validating batch %s stopped (%s); it will be retried on its next read", batch_id, exc)
            return
        log.exception("validating batch %s failed", batch_id)
        error = {
            "code": "validation_failed",
            "message": f"The input file could not be validated ({type(exc).__name__}); the service logged the "
            "error. Check the file's lines, or upload it again and create a new batch.",
            "param": None,
            "line": None,
        }
        try:
            _fail(ctx, batch_id, [error])
        except Exception:
            log.exception("could not mark batch %s failed; it will be retried on its next read", batch_id)


def needs_validation(row: dict[str, Any]) -> bool:
    if row["status"] != "validating":
        return False
    created: datetime = row["created_at"]
    return (datetime.now(created.tzinfo) - created).total_seconds() > STALE_VALIDATION_S


# --- lifecycle ----------------------------------------------------------------------------------


def refresh(ctx: ApiContext, row: dict[str, Any]) -> dict[str, Any]:
    """Advance the batch's status from its job's; returns the row as it now is."""
    status = row["status"]
    if status in TERMINAL or status == "validating" or row["job_state"] is None:
        return row
    job_state = JobState(row["job_state"])
    if not job_state.is_final:
        if job_state is JobState.CANCELLING and status == "in_progress":
            with ctx.engine.begin() as conn:
                batches_store.mark_cancelling(conn, row["id"])
                return batches_store.load(conn, row["id"]) or row
        return row
    if status == "cancelling" or job_state is JobState.CANCELLED:
        target, column = "cancelled", "cancelled_at"
    elif job_state is JobState.EXPIRED:
        target, column = "expired", "expired_at"
    else:
        target, column = "completed", "completed_at"
        if status == "in_progress":
            with ctx.engine.begin() as conn:
                batches_store.mark_finalizing(conn, row["id"], row["job_finished_at"])
    _finish(ctx, row["id"], target, column)
    with ctx.engine.connect() as conn:
        return batches_store.load(conn, row["id"]) or row


def _finish(ctx: ApiContext, batch_id: str, target: str, column: str) -> None:
    """Create the output and error file records (sizes computed from the results) and end the batch."""
    with ctx.engine.begin() as conn:
        if not batches_store.try_lock(conn, batch_id):
            return  # another reader is finalizing it
        row = batches_store.load(conn, batch_id)
        if row is None or row["status"] in TERMINAL or row["job_id"] is None:
            return
        sizes = {"output": 0, "error": 0}
        counts = {"output": 0, "error": 0}
        for which, line in render_lines(ctx, row["job_id"]):
            sizes[which] += len(line)
            counts[which] += 1
        file_ids: dict[str, str | None] = {"output": None, "error": None}
        for which in ("output", "error"):
            if counts[which] == 0:
                continue
            file_ids[which] = file_id = new_file_id()
            insert_batch_file(
                conn,
                file_id=file_id,
                owner_id=row["owner_id"],
                filename=f"{batch_id}_{which}.jsonl",
                size=sizes[which],
                batch_id=batch_id,
                expires_after_s=row["output_expires_after_s"],
            )
        batches_store.finish(
            conn,
            batch_id,
            target=target,
            column=column,
            output_file_id=file_ids["output"],
            error_file_id=file_ids["error"],
            job_finished_at=row["job_finished_at"],
            usage=batches_store.usage(conn, row["job_id"]),
        )


def cancel(ctx: ApiContext, row: dict[str, Any]) -> dict[str, Any]:
    status = row["status"]
    batch_id = row["id"]
    if status == "validating":
        with ctx.engine.begin() as conn:
            done = batches_store.cancel_validating(conn, batch_id)
            fresh = batches_store.load(conn, batch_id)
        assert fresh is not None
        return fresh if done else cancel(ctx, fresh)  # validation finished meanwhile
    if status == "in_progress":
        with ctx.engine.begin() as conn:
            batches_store.mark_cancelling(conn, batch_id)
            ctx.store.cancel_job(conn, row["job_id"])
            state = ctx.store.finalize_job(conn, row["job_id"])
        withdraw(ctx.celery, ctx.settings, row["job_id"])
        if state is not None:
            ctx.wake(row["job_id"], state)
        with ctx.engine.connect() as conn:
            fresh = batches_store.load(conn, batch_id)
        assert fresh is not None
        return refresh(ctx, fresh)
    if status in ("cancelling", "cancelled"):
        return refresh(ctx, row)
    # OpenAI's 409 (with x-should-retry: false, which the SDKs honour: never retried).
    raise ApiError(409, f"Cannot cancel a batch with status '{status}'.", code="invalid_state")
