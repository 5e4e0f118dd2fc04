"""``/v1/files``: OpenAI's Files API, for batch input files and batch output/error files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from batcher._files_store import (
    FILE_PURPOSE_BATCH,
    FileTooLargeError,
    StoredFile,
    delete_file,
    get_file,
    iter_chunks,
    save_upload,
)
from batcher.api import batches_output
from batcher.api.auth import CurrentPrincipal, Principal
from batcher.api.context import ApiContext, Ctx
from batcher.api.errors import ApiError, not_found
from batcher.api.pagination import page
from batcher.api.schemas import ERROR_RESPONSES, ErrorBody, FileDeleted, FileList, FileObject

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
        raise not_found("file", file_id)
    return f


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
) -> FileObject:
    if purpose != FILE_PURPOSE_BATCH:
        raise ApiError(
            400,
            f"Unsupported purpose '{purpose}'; batcher stores files with purpose 'batch'.",
            param="purpose",
            code="invalid_value",
        )
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
            where="(CAST(:purpose AS text) IS NULL OR purpose = :purpose)",
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
