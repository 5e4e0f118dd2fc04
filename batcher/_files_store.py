"""Uploaded files, stored in Postgres as ordered ``bytea`` chunks.

Why chunks in a table rather than a local disk or large objects: the API is stateless (any
replica must serve any file, so a local disk is out); a row per chunk is plain SQL that
deletes with ``ON DELETE CASCADE`` and is backed up with everything else, whereas large
objects need ``lo_unlink`` bookkeeping and leak when a row is deleted without it. Each chunk
is at most ``settings.file_chunk_bytes``, so neither writing nor reading a file ever holds
more than a chunk or two in memory.

The files' SQL (``files``, ``file_chunks``) lives here and nowhere else; Postgres only, as the
HTTP service is.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Protocol

from sqlalchemy import Connection, Engine, text

FILE_PURPOSE_BATCH = "batch"
FILE_PURPOSE_BATCH_OUTPUT = "batch_output"


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    owner_id: uuid.UUID
    filename: str
    purpose: str
    bytes: int | None
    status: str
    batch_id: str | None
    created_at: datetime
    expires_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> StoredFile:
        return cls(
            id=row["id"],
            owner_id=row["owner_id"],
            filename=row["filename"],
            purpose=row["purpose"],
            bytes=row["bytes"],
            status=row["status"],
            batch_id=row["batch_id"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )


class FileTooLargeError(Exception):
    """The upload is larger than ``settings.max_file_bytes``."""


class ContentCheck(Protocol):
    """Checks an upload's bytes as they are copied (``feed`` each chunk, ``close`` at the end); raising
    from either rolls the upload back."""

    def feed(self, data: bytes) -> None: ...

    def close(self) -> None: ...


NOT_EXPIRED = "(expires_at IS NULL OR expires_at > now())"
"""A condition on ``files``: the file has not expired (an expired file is gone for every reader at once,
before the prune removes it)."""


def save_upload(
    engine: Engine,
    *,
    owner_id: uuid.UUID,
    filename: str,
    purpose: str,
    source: IO[bytes],
    chunk_bytes: int,
    max_bytes: int,
    expires_after_s: int | None = None,
    check: ContentCheck | None = None,
) -> StoredFile:
    """Copy ``source`` into Postgres chunk by chunk, in one transaction (all or nothing); ``check`` sees every
    chunk first. The file expires ``expires_after_s`` after its ``created_at`` (never if ``None``)."""
    file_id = new_file_id()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO files (id, owner_id, filename, purpose, bytes, status, expires_at) "
                "VALUES (:id, :owner, :filename, :purpose, 0, 'processed', "
                "now() + make_interval(secs => CAST(:expires_after_s AS double precision)))"
            ),
            {
                "id": file_id,
                "owner": owner_id,
                "filename": filename,
                "purpose": purpose,
                "expires_after_s": expires_after_s,
            },
        )
        size = 0
        seq = 0
        while True:
            data = source.read(chunk_bytes)
            if not data:
                break
            size += len(data)
            if size > max_bytes:
                raise FileTooLargeError(f"the file is larger than the limit of {max_bytes:,} bytes")
            if check is not None:
                check.feed(data)
            conn.execute(
                text("INSERT INTO file_chunks (file_id, seq, data) VALUES (:id, :seq, :data)"),
                {"id": file_id, "seq": seq, "data": data},
            )
            seq += 1
        if check is not None:
            check.close()
        row = (
            conn.execute(
                text("UPDATE files SET bytes = :size WHERE id = :id RETURNING *"), {"id": file_id, "size": size}
            )
            .mappings()
            .one()
        )
    return StoredFile.from_row(row)


def insert_batch_file(
    conn: Connection,
    *,
    file_id: str,
    owner_id: uuid.UUID,
    filename: str,
    size: int,
    batch_id: str,
    expires_after_s: int | None = None,
) -> None:
    """Record a batch's output or error file: no chunks, its lines are rendered from the results when read.
    It expires ``expires_after_s`` after now, its ``created_at`` (the batch's ``output_expires_after``)."""
    conn.execute(
        text(
            "INSERT INTO files (id, owner_id, filename, purpose, bytes, status, batch_id, expires_at) "
            "VALUES (:id, :owner, :filename, :purpose, :bytes, 'processed', :batch, "
            "now() + make_interval(secs => CAST(:expires_after_s AS double precision)))"
        ),
        {
            "expires_after_s": expires_after_s,
            "id": file_id,
            "owner": owner_id,
            "filename": filename,
            "purpose": FILE_PURPOSE_BATCH_OUTPUT,
            "bytes": size,
            "batch": batch_id,
        },
    )


def get_file(conn: Connection, file_id: str) -> StoredFile | None:
    if "\x00" in file_id or not file_id.isascii():  # ids are ASCII; Postgres cannot even compare a NUL
        return None
    row = (
        conn.execute(text(f"SELECT * FROM files WHERE id = :id AND {NOT_EXPIRED}"), {"id": file_id}).mappings().first()
    )
    return StoredFile.from_row(row) if row else None


def prune_expired(conn: Connection, *, limit: int = 1_000) -> int:
    """Delete up to ``limit`` expired files (their chunks go with them); how many went. Postgres only, as
    files are: elsewhere (embedded mode's SQLite) there are none, and nothing is done."""
    if conn.dialect.name != "postgresql":
        return 0
    return int(
        conn.execute(
            text(
                "DELETE FROM files WHERE id IN (SELECT id FROM files WHERE expires_at <= now() "
                "ORDER BY expires_at LIMIT :limit FOR UPDATE SKIP LOCKED)"
            ),
            {"limit": limit},
        ).rowcount
    )


def delete_file(conn: Connection, file_id: str) -> bool:
    return bool(conn.execute(text("DELETE FROM files WHERE id = :id"), {"id": file_id}).rowcount)


def iter_chunks(engine: Engine, file_id: str) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time (a server-side cursor fetching two rows per round trip)."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=2).execute(
            text("SELECT data FROM file_chunks WHERE file_id = :id ORDER BY seq"), {"id": file_id}
        )
        try:
            for row in result:
                yield bytes(row.data)
        finally:  # a reader that stops early (a bad line) closes the server-side cursor here, not in __del__
            result.close()


class LineTooLongError(Exception):
    def __init__(self, line: int, limit: int) -> None:
        self.line = line
        super().__init__(f"line {line} is longer than {limit:,} bytes")


def iter_lines(chunks: Iterator[bytes], *, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line_number, line)`` across chunk boundaries; ``line`` is ``None`` for a line over the limit.

    A line over the limit is skipped without being held, so one giant line cannot exhaust memory.
    """
    pending = bytearray()
    number = 1
    too_long = False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not too_long:
                    pending += chunk[start:]
                    if len(pending) > max_line_bytes:
                        too_long = True
                        pending.clear()
                break
            if too_long:
                yield number, None
            else:
                pending += chunk[start:end]
                yield number, (None if len(pending) > max_line_bytes else bytes(pending))
            pending.clear()
            too_long = False
            number += 1
            start = end + 1
    if too_long:
        yield number, None
    elif pending:
        yield number, bytes(pending)
