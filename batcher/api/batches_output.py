"""A batch's output and error files, rendered from its job's results in OpenAI's line format.

They are never written anywhere: each download streams the lines from the database in input order
(``render_file``); finalizing a batch counts their sizes once (``render_lines``) so ``bytes`` is exact.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

from batcher._response import public_body
from batcher._states import RequestState
from batcher.api import batches_store
from batcher.api.context import ApiContext

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
        line["response"] = {"status_code": 200, "request_id": f"req_{rid}", "body": public_body(row["body"])}
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
    for row in ctx.store.stream_results(ctx.engine, job_id):
        rendered = _render(row, job_id)
        if rendered is not None:
            yield rendered


def render_file(ctx: ApiContext, batch_id: str, file_id: str, *, buffer_bytes: int = 65_536) -> Iterator[bytes]:
    """The content of a batch's output or error file, in pieces of about ``buffer_bytes``."""
    with ctx.engine.connect() as conn:
        row = batches_store.load(conn, batch_id)
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
