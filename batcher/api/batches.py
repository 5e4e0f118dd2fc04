"""OpenAI Batch API semantics on top of jobs: validation, status lifecycle, output files.

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import DataError

from batcher._db import store
from batcher._exceptions import InvalidRequestError, UnknownModelError, UnsupportedParamsError
from batcher._files import OPENAI_BATCH_URLS, decode_line, parse_line
from batcher._files_store import (
    FILE_PURPOSE_BATCH,
    FILE_PURPOSE_BATCH_OUTPUT,
    get_file,
    iter_chunks,
    iter_lines,
    new_file_id,
)
from batcher._states import JobKind, JobState, RequestState
from batcher._submit import RequestSpec, _Validator, enqueue, job_params
from batcher._validation import (
    CallOptions,
    NestedTooDeeplyError,
    check_json_value,
    parse_window,
    text_problem,
)
from batcher.api.auth import Principal
from batcher.api.context import ApiContext
from batcher.api.errors import ApiError, data_error_detail, is_unavailable, not_found
from batcher.api.schemas import BatchCreate, BatchError, BatchErrors, BatchObject, BatchRequestCounts

log = logging.getLogger("batcher.api.batches")

SUPPORTED_ENDPOINTS = ("/v1/chat/completions",)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_REPORTED_ERRORS = 100
STALE_VALIDATION_S = 30.0
"""A batch still ``validating`` this long after creation, with no validator holding its lock, is re-validated."""

_LOAD = """
    SELECT b.*, j.state AS job_state, j.total AS job_total, j.succeeded AS job_succeeded,
           j.failed AS job_failed, j.cancelled AS job_cancelled, j.expired AS job_expired,
           j.finished_at AS job_finished_at
      FROM batches AS b LEFT JOIN jobs AS j ON j.id = b.job_id
"""


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(16)}"


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _lock(conn: Connection, batch_id: str) -> bool:
    """A transaction-scoped advisory lock on one batch; False if another session holds it."""
    got: bool = conn.execute(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended(:id, 0))"), {"id": batch_id}
    ).scalar_one()
    return got


# --- reading ------------------------------------------------------------------------------------


def load(conn: Connection, batch_id: str) -> dict[str, Any] | None:
    if text_problem(batch_id) is not None:  # an id Postgres cannot even compare names no batch
        return None
    row = conn.execute(text(_LOAD + " WHERE b.id = :id"), {"id": batch_id}).mappings().first()
    return dict(row) if row else None


def load_visible(ctx: ApiContext, principal: Principal, batch_id: str) -> dict[str, Any]:
    with ctx.engine.connect() as conn:
        row = load(conn, batch_id)
    if row is None or not principal.can_see(row["owner_id"]):
        raise not_found("batch", batch_id)
    return row


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
        metadata=row["batch_metadata"],
    )


# --- create and validate ------------------------------------------------------------------------


def check_create(body: BatchCreate) -> timedelta:
    if body.endpoint not in SUPPORTED_ENDPOINTS:
        raise ApiError(
            400,
            f"Unsupported endpoint '{body.endpoint}'; batcher runs '/v1/chat/completions' batches.",
            param="endpoint",
            code="invalid_value",
        )
    try:
        window = parse_window(body.completion_window)
    except InvalidRequestError as exc:
        raise ApiError(400, str(exc), param="completion_window", code="invalid_value") from None
    metadata = body.metadata or {}
    if len(metadata) > 16:
        raise ApiError(400, "metadata can hold at most 16 key-value pairs.", param="metadata", code="invalid_value")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise ApiError(
                400,
                "metadata keys are at most 64 characters and values at most 512.",
                param="metadata",
                code="invalid_value",
            )
    check_json_value(metadata, "metadata")  # text Postgres can store
    return window


def create(ctx: ApiContext, principal: Principal, body: BatchCreate) -> tuple[dict[str, Any], bool]:
    """Store a ``validating`` batch; returns it and whether it is new.

    One batch per (key, input file): the SDK retries a create that timed out or got a 5xx
    without an idempotency key, and a retry must not run the file twice. A second create
    returns the first batch (to run a file again, upload it again).
    """
    window = check_create(body)
    with ctx.engine.begin() as conn:
        file = get_file(conn, body.input_file_id)
        if file is None or not principal.can_see(file.owner_id):
            raise ApiError(
                404, f"No file found with id '{body.input_file_id}'.", param="input_file_id", code="not_found"
            )
        if file.purpose != FILE_PURPOSE_BATCH:
            raise ApiError(
                400,
                f"File '{file.id}' has purpose '{file.purpose}'; a batch needs a file uploaded with purpose 'batch'.",
                param="input_file_id",
                code="invalid_value",
            )
        batch_id = new_batch_id()
        inserted = conn.execute(
            text(
                "INSERT INTO batches (id, owner_id, input_file_id, endpoint, completion_window, batch_metadata, "
                "status, expires_at) VALUES (:id, :owner, :file, :endpoint, :window, CAST(:metadata AS jsonb), "
                "'validating', now() + make_interval(secs => :window_s)) "
                "ON CONFLICT (owner_id, input_file_id) DO NOTHING RETURNING id"
            ),
            {
                "id": batch_id,
                "owner": principal.id,
                "file": file.id,
                "endpoint": body.endpoint,
                "window": body.completion_window,
                "metadata": json.dumps(body.metadata) if body.metadata is not None else None,
                "window_s": window.total_seconds(),
            },
        ).scalar_one_or_none()
        if inserted is None:
            batch_id = conn.execute(
                text("SELECT id FROM batches WHERE owner_id = :owner AND input_file_id = :file"),
                {"owner": principal.id, "file": file.id},
            ).scalar_one()
        row = load(conn, batch_id)
    assert row is not None
    return row, inserted is not None


def _line_error(errors: list[dict[str, Any]], line: int, code: str, message: str, param: str | None = None) -> None:
    if len(errors) < MAX_REPORTED_ERRORS:
        errors.append({"code": code, "message": message, "param": param, "line": line})


def _error_code(exc: InvalidRequestError) -> str:
    if isinstance(exc, UnknownModelError):
        return "model_not_found"
    if isinstance(exc, UnsupportedParamsError):
        return "unsupported_parameter"
    if isinstance(exc, NestedTooDeeplyError):
        return exc.code
    return "invalid_request"  # text Postgres cannot store included, as before (UnstorableValueError)


def _bare(exc: InvalidRequestError, number: int) -> str:
    """The error's text without its ``line N: `` prefix (the line is reported on its own)."""
    return str(exc).removeprefix(f"line {number}: ")


def _checked_requests(
    ctx: ApiContext, file_id: str, endpoint: str, errors: list[dict[str, Any]]
) -> Iterator[store.NewRequest]:
    """Each valid line as a request to store; bad lines go to ``errors``. Stops yielding at the first error,
    but goes on reading so the batch reports every bad line (up to ``MAX_REPORTED_ERRORS``)."""
    settings = ctx.settings
    validator = _Validator(settings, CallOptions())
    seen: set[str] = set()
    idx = 0
    lines = iter_lines(iter_chunks(ctx.engine, file_id), max_line_bytes=settings.max_request_bytes * 2)
    for number, raw in lines:
        if raw is None:
            _line_error(
                errors, number, "invalid_request", f"The line is longer than {settings.max_request_bytes * 2:,} bytes."
            )
            continue
        if not raw.strip():
            continue
        try:
            item = parse_line(decode_line(raw, number), f"line {number}")
        except NestedTooDeeplyError as exc:
            _line_error(errors, number, exc.code, f"This line {_bare(exc, number)}.")
            continue
        except InvalidRequestError as exc:  # not UTF-8, not JSON
            _line_error(errors, number, "invalid_json_line", f"This line {_bare(exc, number)}.")
            continue
        if not isinstance(item, dict):
            _line_error(errors, number, "invalid_request", "Each line must be a JSON object.")
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            _line_error(errors, number, "missing_required_parameter", "custom_id is missing.", "custom_id")
            continue
        if custom_id in seen:
            _line_error(
                errors,
                number,
                "duplicate_custom_id",
                f"The custom_id '{custom_id}' is a duplicate of another request; each request needs its own.",
                "custom_id",
            )
            continue
        seen.add(custom_id)
        if item.get("method") != "POST":
            _line_error(
                errors, number, "invalid_method", f"method must be 'POST', got {item.get('method')!r}.", "method"
            )
            continue
        if item.get("url") not in OPENAI_BATCH_URLS:
            _line_error(
                errors,
                number,
                "invalid_url",
                f"url must be '{endpoint}' (the batch's endpoint), got {item.get('url')!r}.",
                "url",
            )
            continue
        body = item.get("body")
        if not isinstance(body, dict):
            _line_error(errors, number, "invalid_request", "body must be a JSON object.", "body")
            continue
        model = body.get("model")
        if not isinstance(model, str) or not model:
            _line_error(errors, number, "missing_required_parameter", "body.model is missing.", "body.model")
            continue
        if "messages" not in body:
            _line_error(errors, number, "missing_required_parameter", "body.messages is missing.", "body.messages")
            continue
        if idx >= settings.max_prompts_per_job:
            _line_error(
                errors, number, "too_many_requests", f"A batch holds at most {settings.max_prompts_per_job:,} requests."
            )
            break
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        spec = RequestSpec(
            model=model, messages=body["messages"], params=params or None, custom_id=custom_id, where=f"line {number}"
        )
        try:
            request = validator.check(idx, spec)
        except InvalidRequestError as exc:
            message = str(exc).removeprefix(f"line {number}: ")
            param = (exc.field or "").removeprefix(f"line {number}").removeprefix(": ").removeprefix(".") or None
            _line_error(errors, number, _error_code(exc), message, param)
            continue
        except RecursionError:  # a guard: the checks above bound nesting, but a line must never hang a batch
            _line_error(errors, number, "nested_too_deeply", "The line is nested too deeply to read.")
            continue
        if not errors:
            yield request
        idx += 1


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
        # Committed: publish. If this process dies now, recovery publishes the job (enqueued_at is unset).
        job_id, total = started
        enqueue(ctx.engine, ctx.celery, ctx.settings, job_id, JobKind.BATCH, total)


def _mark_failed(conn: Connection, batch_id: str, errors: list[dict[str, Any]]) -> None:
    conn.execute(
        text(
            "UPDATE batches SET status = 'failed', failed_at = now(), errors = CAST(:errors AS jsonb) "
            "WHERE id = :id AND status = 'validating'"
        ),
        {"id": batch_id, "errors": json.dumps(errors)},
    )


def _fail(ctx: ApiContext, batch_id: str, errors: list[dict[str, Any]]) -> None:
    with ctx.engine.begin() as conn:
        _mark_failed(conn, batch_id, errors)


class _CancelledMeanwhileError(Exception):
    """The batch was cancelled while its file was validated: roll everything back."""


def _validate(ctx: ApiContext, batch_id: str) -> tuple[uuid.UUID, int] | None:
    job_id = uuid.uuid4()
    with ctx.engine.begin() as conn:
        if not _lock(conn, batch_id):
            return None
        row = load(conn, batch_id)
        if row is None or row["status"] != "validating":
            return None
        errors: list[dict[str, Any]] = []
        total = 0
        with conn.begin_nested() as savepoint:
            store.insert_job(
                conn,
                job_id=job_id,
                kind=JobKind.BATCH.value,
                total=0,
                params=job_params(CallOptions()),
                deadline_at=row["expires_at"],
                credentials=None,
                user_metadata={"batch_id": batch_id, **(row["batch_metadata"] or {})},
                owner_id=row["owner_id"],
            )
            if get_file(conn, row["input_file_id"]) is None:
                _line_error(errors, 0, "invalid_request", f"The input file '{row['input_file_id']}' was deleted.")
            else:
                total = store.copy_requests(
                    conn, job_id, _checked_requests(ctx, row["input_file_id"], row["endpoint"], errors)
                )
            if total == 0 and not errors:
                errors.append(
                    {"code": "empty_file", "message": "The input file has no requests.", "param": None, "line": None}
                )
            if errors:
                savepoint.rollback()
            else:
                store.set_total(conn, job_id, total)
        if errors:
            for error in errors:
                if error["line"] == 0:
                    error["line"] = None
            _mark_failed(conn, batch_id, errors)
            return None
        started = conn.execute(
            text(
                "UPDATE batches SET status = 'in_progress', in_progress_at = now(), job_id = :job "
                "WHERE id = :id AND status = 'validating' RETURNING id"
            ),
            {"id": batch_id, "job": job_id},
        ).scalar_one_or_none()
        if started is None:
            raise _CancelledMeanwhileError
    return job_id, total


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
                conn.execute(
                    text(
                        "UPDATE batches SET status = 'cancelling', cancelling_at = now() "
                        "WHERE id = :id AND status = 'in_progress'"
                    ),
                    {"id": row["id"]},
                )
                return load(conn, row["id"]) or row
        return row
    if status == "cancelling" or job_state is JobState.CANCELLED:
        target, column = "cancelled", "cancelled_at"
    elif job_state is JobState.EXPIRED:
        target, column = "expired", "expired_at"
    else:
        target, column = "completed", "completed_at"
        if status == "in_progress":
            with ctx.engine.begin() as conn:
                conn.execute(
                    text(
                        "UPDATE batches SET status = 'finalizing', finalizing_at = :at "
                        "WHERE id = :id AND status = 'in_progress'"
                    ),
                    {"id": row["id"], "at": row["job_finished_at"]},
                )
    _finish(ctx, row["id"], target, column)
    with ctx.engine.connect() as conn:
        return load(conn, row["id"]) or row


def _finish(ctx: ApiContext, batch_id: str, target: str, column: str) -> None:
    """Create the output and error file records (sizes computed from the results) and end the batch."""
    with ctx.engine.begin() as conn:
        if not _lock(conn, batch_id):
            return  # another reader is finalizing it
        row = load(conn, batch_id)
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
            file_ids[which] = new_file_id()
            conn.execute(
                text(
                    "INSERT INTO files (id, owner_id, filename, purpose, bytes, status, batch_id) "
                    "VALUES (:id, :owner, :filename, :purpose, :bytes, 'processed', :batch)"
                ),
                {
                    "id": file_ids[which],
                    "owner": row["owner_id"],
                    "filename": f"{batch_id}_{which}.jsonl",
                    "purpose": FILE_PURPOSE_BATCH_OUTPUT,
                    "bytes": sizes[which],
                    "batch": batch_id,
                },
            )
        at = "now()" if target == "completed" else "COALESCE(:job_finished_at, now())"
        conn.execute(
            text(
                f"UPDATE batches SET status = :target, {column} = {at}, "
                "output_file_id = :output, error_file_id = :error WHERE id = :id AND status NOT IN "
                "('completed', 'failed', 'expired', 'cancelled')"
            ),
            {
                "id": batch_id,
                "target": target,
                "output": file_ids["output"],
                "error": file_ids["error"],
                "job_finished_at": row["job_finished_at"],
            },
        )


def cancel(ctx: ApiContext, row: dict[str, Any]) -> dict[str, Any]:
    status = row["status"]
    batch_id = row["id"]
    if status == "validating":
        with ctx.engine.begin() as conn:
            done = conn.execute(
                text(
                    "UPDATE batches SET status = 'cancelled', cancelling_at = now(), cancelled_at = now() "
                    "WHERE id = :id AND status = 'validating' RETURNING id"
                ),
                {"id": batch_id},
            ).scalar_one_or_none()
            fresh = load(conn, batch_id)
        assert fresh is not None
        return fresh if done else cancel(ctx, fresh)  # validation finished meanwhile
    if status == "in_progress":
        with ctx.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE batches SET status = 'cancelling', cancelling_at = now() "
                    "WHERE id = :id AND status = 'in_progress'"
                ),
                {"id": batch_id},
            )
            store.cancel_job(conn, row["job_id"])
            state = store.finalize_job(conn, row["job_id"])
        if state is not None:
            ctx.wake(row["job_id"], state)
        with ctx.engine.connect() as conn:
            fresh = load(conn, batch_id)
        assert fresh is not None
        return refresh(ctx, fresh)
    if status in ("cancelling", "cancelled"):
        return refresh(ctx, row)
    raise ApiError(400, f"Cannot cancel a batch with status '{status}'.", param="batch_id", code="invalid_state")


# --- output files -------------------------------------------------------------------------------

_NEVER_RAN = {
    RequestState.CANCELLED.value: "batch_cancelled",
    RequestState.SKIPPED.value: "batch_cancelled",
    RequestState.EXPIRED.value: "batch_expired",
}
_NO_STATUS_CODES = {
    "ProviderTimeoutError": "request_timeout",
    "ProviderConnectionError": "connection_error",
    "MalformedResponseError": "malformed_response",
}


def _error_type(status: int) -> str:
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _snake(name: str | None) -> str:
    name = (name or "ProviderError").removesuffix("Error")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_") or "error"


def _render(row: dict[str, Any], job_id: uuid.UUID) -> tuple[str, bytes] | None:
    state = row["state"]
    rid = hashlib.blake2b(f"{job_id}:{row['idx']}".encode(), digest_size=12).hexdigest()
    line: dict[str, Any] = {"id": f"batch_req_{rid}", "custom_id": row["custom_id"], "response": None, "error": None}
    if state == RequestState.SUCCEEDED.value and row["body"] is not None:
        line["response"] = {"status_code": 200, "request_id": f"req_{rid}", "body": row["body"]}
        which = "output"
    elif state in _NEVER_RAN:
        line["error"] = {"code": _NEVER_RAN[state], "message": row["error"] or state}
        which = "error"
    elif state == RequestState.FAILED.value:
        status = row["status_code"]
        message = row["error"] or "the request failed"
        if status is not None and status >= 400:
            line["response"] = {
                "status_code": status,
                "request_id": f"req_{rid}",
                "body": {
                    "error": {
                        "message": message,
                        "type": _error_type(status),
                        "param": None,
                        "code": _snake(row["error_type"]),
                    }
                },
            }
        else:
            line["error"] = {
                "code": _NO_STATUS_CODES.get(row["error_type"] or "", "request_failed"),
                "message": message,
            }
        which = "error"
    else:
        return None  # not final yet: it appears once it ends
    return which, (json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def render_lines(ctx: ApiContext, job_id: uuid.UUID) -> Iterator[tuple[str, bytes]]:
    """Every output and error line of a job, in input order, streamed from Postgres."""
    for row in store.stream_results(ctx.engine, job_id):
        rendered = _render(row, job_id)
        if rendered is not None:
            yield rendered


def render_file(ctx: ApiContext, batch_id: str, file_id: str, *, buffer_bytes: int = 65_536) -> Iterator[bytes]:
    """The content of a batch's output or error file, in pieces of about ``buffer_bytes``."""
    with ctx.engine.connect() as conn:
        row = load(conn, batch_id)
    if row is None or row["job_id"] is None:
        return
    which = "output" if row["output_file_id"] == file_id else "error"
    pending: list[bytes] = []
    size = 0
    for kind, line in render_lines(ctx, row["job_id"]):
        if kind != which:
            continue
        pending.append(line)
        size += len(line)
        if size >= buffer_bytes:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)
