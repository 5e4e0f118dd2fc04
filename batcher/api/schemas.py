"""Request and response bodies. OpenAI objects mirror ``openai.types`` (every key present, ``null`` when unset)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batcher._states import JobKind, JobState, RequestState

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# --- OpenAI Files -------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# --- OpenAI Batches -----------------------------------------------------------------------------


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchError(BaseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchObject(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    usage: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


# --- native jobs --------------------------------------------------------------------------------


class JobCreate(BaseModel):
    """A job of one of the three kinds, or a batch job from an uploaded JSONL file."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind = Field(
        JobKind.BATCH,
        description="batch: one request per conversation to `model`; fastest: `messages` (one conversation) "
        "to every model of `models`, first success wins; all: the same, every answer kept.",
    )
    model: str | None = Field(None, description="batch: the model (or the default for file lines naming none).")
    models: list[str] | None = Field(None, description="fastest / all: the models, in order.")
    messages: list[Any] | None = Field(
        None, description="batch: a list of conversations; fastest / all: one conversation (a list of messages)."
    )
    input_file_id: str | None = Field(
        None, description="batch only, instead of `messages`: an uploaded JSONL file, one request per line."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments as in batch_completion: provider parameters (temperature, max_tokens, ...) "
        "and batcher options (timeout, num_retries, mock_response, drop_params, completion_window, metadata).",
    )


class JobRun(JobCreate):
    timeout: float = Field(
        60.0, gt=0, le=3_600, description="Seconds to wait (capped by BATCHER_API_MAX_WAIT_S); the job goes on after."
    )


class JobObject(BaseModel):
    id: uuid.UUID
    object: Literal["job"] = "job"
    kind: JobKind
    state: JobState
    total: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int
    done: int
    progress: float
    params: dict[str, Any]
    metadata: dict[str, Any] | None = None
    winner_index: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    first_id: uuid.UUID | None = None
    last_id: uuid.UUID | None = None
    has_more: bool


class ResultErrorOut(BaseModel):
    type: str
    message: str
    status_code: int | None = None


class ResultLine(BaseModel):
    """One line of ``GET /v1/jobs/{id}/results`` (JSONL), in input order."""

    index: int
    custom_id: str | None = None
    model: str
    state: RequestState
    attempts: int
    latency_ms: float | None = None
    response: dict[str, Any] | None = None
    error: ResultErrorOut | None = None


class JobWait(BaseModel):
    job: JobObject
    done: bool = Field(description="True if what was waited for happened; false if the wait timed out.")
    response: dict[str, Any] | None = Field(None, description="fastest: the winning response.")
    results: list[ResultLine] | None = Field(None, description="all (once final): every model's outcome, in order.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    postgres: str
    redis: str
