"""``/v1/files``: OpenAI's Files API, for batch input files and batch output/error files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import WithJsonSchema

from batcher._exceptions import InvalidRequestError
from batcher._files import decode_line, parse_line
from batcher._files_store import (
    FILE_PURPOSE_BATCH,
    NOT_EXPIRED,
    FileTooLargeError,
    StoredFile,
    delete_file,
    get_file,
    iter_chunks,
    save_upload,
)
from batcher.api import batches_output
from batcher.api.auth import CurrentPrincipal, Principal
from batcher.api.batches import check_expires_after
from batcher.api.context import ApiContext, Ctx
from batcher.api.errors import ApiError
from batcher.api.pagination import page
from batcher.api.schemas import ERROR_RESPONSES, ErrorBody, ExpiresAfter, FileDeleted, FileList, FileObject

router = APIRouter(
    prefix="/v1",
    tags=["files"],
    responses=ERROR_RESPONSES,
)


def to_object(f: StoredFile) -> FileObject:
    return FileObject(
        id=f.id,
        bytes=f.bytes or 0,
        created_at=int(f.created_at.timestamp()),
        filename=f.filename,
        purpose=f.purpose,
        status="processed" if f.status == "processed" else "uploaded",
        expires_at=int(f.expires_at.timestamp()) if f.expires_at else None,
    )


def _storable_name(name: str | None) -> str:
    """The upload's file name as Postgres can store it (a name is a label: NULs and broken text are dropped)."""
    return (name or "").replace("\x00", "").encode("utf-8", "replace").decode()[:512]


def visible_file(ctx: ApiContext, principal: Principal, file_id: str) -> StoredFile:
    with ctx.engine.connect() as conn:
        f = get_file(conn, file_id)
    if f is None or not principal.can_see(f.owner_id):
        raise ApiError(404, f"No such File object: {file_id}", param="id")  # OpenAI's words (expired files too)
    return f


DEFAULT_BATCH_FILE_EXPIRY_S = 30 * 86_400
"""OpenAI's default: files with purpose ``batch`` expire after 30 days unless ``expires_after`` says otherwise."""
PROMPTS_FORMAT = "prompts"
"""batcher's extension ``batcher_format=prompts``: the file is a native prompt file (``/v1/jobs`` takes its
lines: strings, conversations or objects), so its lines need only be JSON; the remote client sends it."""


class JsonlCheck:
    """An upload with purpose ``batch``, checked as it is copied: not empty, and each line UTF-8, JSON (an
    object, as OpenAI's batch lines are, unless the file is a native prompt file) and not over the line limit.
    A bad line is a 400 naming it, before the file is stored."""

    def __init__(self, *, objects_only: bool, max_line_bytes: int) -> None:
        self.objects_only = objects_only
        self.max_line_bytes = max_line_bytes
        self.pending = bytearray()
        self.number = 0
        self.lines = 0

    def feed(self, data: bytes) -> None:
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self.pending += data[start:end]
            self._line()
            start = end + 1
        self.pending += data[start:]
        if len(self.pending) > self.max_line_bytes:
            self._refuse(self.number + 1, f"is longer than {self.max_line_bytes:,} bytes")

    def close(self) -> None:
        if self.pending:
            self._line()
        if self.lines == 0:
            raise ApiError(
                400,
                "Invalid file format for Batch API: the file is empty; it must hold one JSON request per line.",
                param="file",
                code="invalid_file_format",
            )

    def _line(self) -> None:
        self.number += 1
        raw = bytes(self.pending)
        self.pending.clear()
        if len(raw) > self.max_line_bytes:
            self._refuse(self.number, f"is longer than {self.max_line_bytes:,} bytes")
        if not raw.strip():
            return
        try:
            value = parse_line(decode_line(raw, self.number), f"line {self.number}")
        except InvalidRequestError as exc:
            self._refuse(self.number, str(exc).removeprefix(f"line {self.number}: "))
        if self.objects_only and not isinstance(value, dict):
            self._refuse(self.number, "is not a JSON object; each line must be one request object")
        self.lines += 1

    @staticmethod
    def _refuse(number: int, problem: str) -> None:
        raise ApiError(
            400,
            f"Invalid file format for Batch API: line {number} {problem}.",
            param="file",
            code="invalid_file_format",
        )


@router.post(
    "/files",
    response_model=FileObject,
    summary="Upload a file (multipart: file, purpose=batch)",
    responses={413: {"model": ErrorBody, "description": "The file is larger than BATCHER_MAX_FILE_BYTES."}},
)
def upload_file(
    ctx: Ctx,
    principal: CurrentPrincipal,
    file: Annotated[UploadFile, File(description="A JSONL file, one request per line.")],
    purpose: Annotated[str, Form(json_schema_extra={"enum": [FILE_PURPOSE_BATCH]})],
    expires_after_anchor: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "enum": ["created_at"]}),
        Form(alias="expires_after[anchor]"),
    ] = None,
    expires_after_seconds: Annotated[
        str | None,
        WithJsonSchema({"type": "integer", "minimum": 3_600, "maximum": 2_592_000}),
        Form(alias="expires_after[seconds]", description="3600 to 2592000; batch files default to 30 days."),
    ] = None,
    batcher_format: Annotated[
        str | None,
        WithJsonSchema({"type": "string", "enum": [PROMPTS_FORMAT]}),
        Form(description="batcher's extension: a native prompt file."),
    ] = None,
) -> FileObject:
    if purpose != FILE_PURPOSE_BATCH:
        raise ApiError(
            400, f"Invalid value: '{purpose}'. Supported values are: 'batch'.", param="purpose", code="invalid_value"
        )
    if batcher_format not in (None, PROMPTS_FORMAT):
        raise ApiError(
            400,
            f"Invalid value: '{batcher_format}'. Supported values are: '{PROMPTS_FORMAT}'.",
            param="batcher_format",
            code="invalid_value",
        )
    expires_after_s = DEFAULT_BATCH_FILE_EXPIRY_S
    if expires_after_seconds is not None:
        try:
            seconds = int(expires_after_seconds)
        except ValueError:
            raise ApiError(
                400,
                f"Invalid type for 'expires_after.seconds': expected an integer, but got '{expires_after_seconds}'.",
                param="expires_after.seconds",
                code="invalid_type",
            ) from None  # the anchor has one value, so it may go unsaid
        policy = ExpiresAfter(anchor=expires_after_anchor or "created_at", seconds=seconds)
        expires_after_s = check_expires_after(policy, "expires_after") or DEFAULT_BATCH_FILE_EXPIRY_S
    elif expires_after_anchor is not None:
        check_expires_after(
            ExpiresAfter(anchor=expires_after_anchor, seconds=DEFAULT_BATCH_FILE_EXPIRY_S), "expires_after"
        )
    check = JsonlCheck(objects_only=batcher_format is None, max_line_bytes=ctx.settings.max_request_bytes * 2)
    # Starlette has already spooled the part to a temporary file (1 MB in memory at most):
    # copying it into Postgres chunk by chunk keeps the service's memory flat whatever the size.
    try:
        stored = save_upload(
            ctx.engine,
            owner_id=principal.id,
            filename=_storable_name(file.filename) or "upload.jsonl",
            purpose=purpose,
            source=file.file,
            chunk_bytes=ctx.settings.file_chunk_bytes,
            max_bytes=ctx.settings.max_file_bytes,
            expires_after_s=expires_after_s,
            check=check,
        )
    except FileTooLargeError as exc:
        raise ApiError(413, f"{exc}.", param="file", code="file_too_large") from None
    return to_object(stored)


@router.get("/files", response_model=FileList, summary="List files, newest first")
def list_files(
    ctx: Ctx,
    principal: CurrentPrincipal,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: Annotated[str | None, Query(max_length=32)] = None,
) -> FileList:
    if purpose is not None and "\x00" in purpose:  # no file has such a purpose (Postgres cannot compare it)
        return FileList(data=[], has_more=False)
    with ctx.engine.connect() as conn:
        rows, has_more = page(
            conn,
            "files",
            principal,
            after=after,
            limit=limit,
            order=order,
            where=f"(CAST(:purpose AS text) IS NULL OR purpose = :purpose) AND {NOT_EXPIRED}",
            params={"purpose": purpose},
        )
    data = [to_object(StoredFile.from_row(r)) for r in rows]
    return FileList(
        data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=has_more
    )


@router.get("/files/{file_id}", response_model=FileObject, summary="Retrieve a file's metadata")
def retrieve_file(ctx: Ctx, principal: CurrentPrincipal, file_id: str) -> FileObject:
    return to_object(visible_file(ctx, principal, file_id))


@router.delete("/files/{file_id}", response_model=FileDeleted, summary="Delete a file and its content")
def remove_file(ctx: Ctx, principal: CurrentPrincipal, file_id: str) -> FileDeleted:
    f = visible_file(ctx, principal, file_id)
    with ctx.engine.begin() as conn:
        deleted = delete_file(conn, f.id)
    return FileDeleted(id=f.id, deleted=deleted)


@router.get(
    "/files/{file_id}/content",
    summary="Download a file's content (streamed)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def file_content(ctx: Ctx, principal: CurrentPrincipal, file_id: str) -> StreamingResponse:
    f = visible_file(ctx, principal, file_id)
    # Output and error files are rendered from the results; uploads are read back chunk by chunk.
    body: Iterator[bytes] = (
        batches_output.render_file(ctx, f.batch_id, f.id) if f.batch_id is not None else iter_chunks(ctx.engine, f.id)
    )
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", f.filename)[:200] or "file"
    headers = {"Content-Disposition": f'attachment; filename="{safe_name}"'}
    if f.batch_id is None and f.bytes is not None:
        headers["Content-Length"] = str(f.bytes)
    return StreamingResponse(body, media_type="application/octet-stream", headers=headers)
