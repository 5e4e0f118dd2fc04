"""States and kinds, as ``str`` enums so they read the same in Python, SQL and JSON."""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    """What a job does with its requests."""

    BATCH = "batch"
    """One request per prompt, all to one model (``batch_completion``)."""
    FASTEST = "fastest"
    """One prompt to several models; the first successful answer wins (``batch_completion_models``)."""
    ALL = "all"
    """One prompt to several models; every answer is kept (``batch_completion_models_all_responses``)."""


class JobState(StrEnum):
    """Lifecycle of a job. Final states never change again."""

    QUEUED = "queued"
    """Stored and enqueued; no request has started yet."""
    RUNNING = "running"
    """At least one request has started."""
    CANCELLING = "cancelling"
    """Cancel was asked; requests already in flight are still being recorded."""
    COMPLETED = "completed"
    """Every request reached a final state (some may have failed)."""
    FAILED = "failed"
    """Fastest-response only: every model failed."""
    CANCELLED = "cancelled"
    """Cancelled; requests that finished before the cancel keep their results."""
    EXPIRED = "expired"
    """The job's deadline passed; requests not yet answered ended ``expired``."""

    @property
    def is_final(self) -> bool:
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})
ACTIVE_JOB_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING})


class RequestState(StrEnum):
    """Lifecycle of one request (one prompt x one model)."""

    QUEUED = "queued"
    """Stored; its task is in the broker (or will be re-enqueued by recovery)."""
    RUNNING = "running"
    """Claimed by a worker, which holds a lease until ``lease_until``."""
    RETRYING = "retrying"
    """Failed with a retryable error; its next attempt is scheduled."""
    SUCCEEDED = "succeeded"
    """A response is stored."""
    FAILED = "failed"
    """Failed for good: a non-retryable error, or the attempt budget ran out."""
    CANCELLED = "cancelled"
    """Cancelled before it was sent; it never reached the provider."""
    SKIPPED = "skipped"
    """Fastest-response: another model had already answered, so it was never sent."""
    EXPIRED = "expired"
    """The job's deadline passed before it was answered."""

    @property
    def is_final(self) -> bool:
        return self in FINAL_REQUEST_STATES


FINAL_REQUEST_STATES = frozenset(
    {
        RequestState.SUCCEEDED,
        RequestState.FAILED,
        RequestState.CANCELLED,
        RequestState.SKIPPED,
        RequestState.EXPIRED,
    }
)
CLAIMABLE_REQUEST_STATES = frozenset({RequestState.QUEUED, RequestState.RETRYING})
