"""What a user reads back: a job's status and its results."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from batcher._exceptions import ProviderError, RequestError, error_from_stored
from batcher._response import ModelResponse
from batcher._scheduling import DEFAULT_PRIORITY
from batcher._standing import PublishedStanding
from batcher._states import JobKind, JobState, RequestState


class JobStatus(BaseModel):
    """A snapshot of a job, read from Postgres (and where it stands in line, from the dispatcher).

    ``priority`` is the job's (0-9, higher first). ``queued`` counts its requests still in the backlog
    (in Postgres, not yet released to the broker). ``position``, ``ahead``, ``share`` and ``eta_s`` are
    its standing as the dispatcher last published it (``batcher._standing``), or ``None`` when none is
    published (no dispatcher running, Redis away, the job final): ``position`` 1 = released next or now,
    0 = nothing left to release; ``ahead`` = requests of other jobs that go before its next one;
    ``share`` = the fraction (0-1) of the cluster's slots it gets while the current jobs run; ``eta_s`` =
    seconds until its unfinished requests are done at its current rate (``None`` until a rate is known).
    """

    id: uuid.UUID
    kind: JobKind
    state: JobState
    total: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int
    params: dict[str, Any]
    metadata: dict[str, Any] | None = None
    winner_index: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None
    priority: int = DEFAULT_PRIORITY
    queued: int = 0
    position: int | None = None
    ahead: int | None = None
    share: float | None = None
    eta_s: float | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], *, queued: int = 0, standing: PublishedStanding | None = None) -> JobStatus:
        """From a ``jobs`` row (``store.job_row``); stored parameters shown with base-URL credentials masked.

        ``queued``: its backlog (``store.backlog``); ``standing``: the dispatcher's entry for it
        (``batcher._standing.read``), ignored once the job is final."""
        from batcher._submit import describe_params

        final = JobState(row["state"]).is_final
        if final:
            queued, standing = 0, None
        remaining = row["total"] - sum(row[c] for c in ("succeeded", "failed", "cancelled", "expired"))
        return cls(
            priority=row.get("priority", DEFAULT_PRIORITY),
            queued=queued,
            position=standing.position if standing else None,
            ahead=standing.ahead if standing else None,
            share=standing.share if standing else None,
            eta_s=standing.eta_s(remaining) if standing else None,
            id=row["id"],
            kind=row["kind"],
            state=row["state"],
            total=row["total"],
            succeeded=row["succeeded"],
            failed=row["failed"],
            cancelled=row["cancelled"],
            expired=row["expired"],
            params=describe_params(row["params"] or {}),
            metadata=row["user_metadata"],
            winner_index=row["winner_index"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            deadline_at=row["deadline_at"],
        )

    @property
    def done(self) -> int:
        """Requests in a final state."""
        return self.succeeded + self.failed + self.cancelled + self.expired

    @property
    def progress(self) -> float:
        """Fraction of requests in a final state, 0.0 to 1.0."""
        return self.done / self.total if self.total else 1.0

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    def standing_text(self) -> str | None:
        """``12,000 ahead · share 35 % · ETA 2m``, or ``None`` when no standing is published."""
        if self.ahead is None and self.share is None:
            return None
        parts = []
        if self.ahead is not None:
            parts.append(f"{self.ahead:,} ahead")
        if self.share is not None:
            parts.append(f"share {self.share * 100:.0f} %")
        if self.eta_s is not None:
            parts.append(f"ETA {short_duration(self.eta_s)}")
        return " · ".join(parts)


def short_duration(seconds: float) -> str:
    """``45s``, ``2m``, ``1h05m``, ``3d02h``: a figure for people, to the largest two units."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3_600:
        return f"{min(59, round(whole / 60))}m"
    if whole < 86_400:
        return f"{whole // 3_600}h{whole % 3_600 // 60:02d}m"
    return f"{whole // 86_400}d{whole % 86_400 // 3_600:02d}h"


@dataclass(frozen=True, slots=True)
class Result:
    """One request of a job, in input order: its response, or the error it ended with."""

    index: int
    model: str
    state: RequestState
    attempts: int
    response: ModelResponse | None
    error: RequestError | None
    custom_id: str | None = None
    latency_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.response is not None

    def as_line(self) -> dict[str, Any]:
        """The JSONL line of ``batcher results`` (also built by Postgres in ``store.export_results_jsonl``)."""
        error = self.error
        return {
            "index": self.index,
            "custom_id": self.custom_id,
            "model": self.model,
            "state": self.state.value,
            "attempts": self.attempts,
            "response": self.response.stored_body() if self.response else None,
            "error": (
                {
                    "type": type(error).__name__,
                    "message": error.message,
                    "status_code": error.http_status,
                    "llm_provider": error.llm_provider,
                    "body": error.body if isinstance(error, ProviderError) else None,
                }
                if error is not None
                else None
            ),
        }

    def value(self) -> ModelResponse | RequestError:
        """The response, or the exception in its place (LiteLLM's list convention)."""
        if self.response is not None:
            return self.response
        assert self.error is not None
        return self.error

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Result:
        """From a ``requests ⟕ responses`` row (``stream_results``)."""
        state = RequestState(row["state"])
        response = ModelResponse.model_validate(row["body"]) if row["body"] is not None else None
        error = None
        if response is None:
            error_type, message = row["error_type"], row["error"]
            if not state.is_final:
                error_type, message = "RequestError", f"not finished yet ({state.value})"
            error = error_from_stored(
                error_type,
                message,
                model=row["model"],
                provider=row["provider"],
                status_code=row["status_code"],
                body=row.get("error_body") if state.is_final else None,
                num_retries=max(row["attempts"] - 1, 0),
            )
        return cls(
            index=row["idx"],
            model=row["model"],
            state=state,
            attempts=row["attempts"],
            response=response,
            error=error,
            custom_id=row["custom_id"],
            latency_ms=row["latency_ms"],
        )

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> Result:
        """From a line of ``batcher results`` / ``GET /v1/jobs/{id}/results`` (``as_line``'s shape)."""
        error = None
        if line.get("error") is not None:
            err = line["error"]
            error = error_from_stored(
                err.get("type"),
                err.get("message"),
                model=line["model"],
                provider=err.get("llm_provider"),
                status_code=err.get("status_code"),
                body=err.get("body"),
                num_retries=max(int(line.get("attempts") or 0) - 1, 0),
            )
        response = line.get("response")
        return cls(
            index=line["index"],
            model=line["model"],
            state=RequestState(line["state"]),
            attempts=line["attempts"],
            response=ModelResponse.model_validate(response) if response is not None else None,
            error=error,
            custom_id=line.get("custom_id"),
            latency_ms=line.get("latency_ms"),
        )
