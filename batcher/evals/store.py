"""The SQL of evaluation runs and schedules, all of it. Each function is one round trip.

Evaluations run on Postgres only (advisory locks, ``jsonb``, ``LATERAL``): a cluster's feature,
not embedded mode's.

Answers are never copied out of the core tables while a job runs: a run finds them by the
requests' ``custom_id`` (the request key) in the jobs linked to it, so whatever a worker stored
is found again after any crash, and a key already answered is never submitted twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from batcher.evals.states import ACTIVE_RUN_STATES, RunState
from batcher.evals.suite import Item, PlannedRequest

_ACTIVE = ", ".join(f"'{s.value}'" for s in ACTIVE_RUN_STATES)
_LOCK_CLASS = 0x6576616C  # "eval": the advisory-lock namespace of runs


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one request key: an answer, a final error, or nothing yet."""

    key: str
    output: str | None = None
    error_type: str | None = None
    error: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    attempts: int | None = None
    cached: bool = False
    pending: bool = False
    """Not final yet (queued, running, retrying)."""

    @property
    def settled(self) -> bool:
        """Answered, or failed for good: nothing to send again."""
        return not self.pending and (self.output is not None or self.error is not None)


# --- runs ----------------------------------------------------------------------------------------


def insert_run(
    conn: Connection,
    *,
    run_id: uuid.UUID,
    suite_name: str,
    suite_path: str | None,
    fingerprint: str,
    config: dict[str, Any],
    trigger: str,
    state: str = RunState.PENDING.value,
    item_count: int = 0,
    schedule_id: uuid.UUID | None = None,
    scheduled_for: datetime | None = None,
    error: str | None = None,
) -> bool:
    """Insert a run. False when its schedule tick was already claimed (by another beat)."""
    row = conn.execute(
        text(
            """
            INSERT INTO eval_runs (id, suite_name, suite_path, fingerprint, config, state, trigger, item_count,
                                   schedule_id, scheduled_for, error, finished_at)
            VALUES (:id, :suite_name, :suite_path, :fingerprint, CAST(:config AS jsonb), :state, :trigger,
                    :item_count, :schedule_id, :scheduled_for, :error,
                    CASE WHEN CAST(:failed AS boolean) THEN now() END)
            ON CONFLICT (schedule_id, scheduled_for) DO NOTHING
            RETURNING id
            """
        ),
        {
            "id": run_id,
            "suite_name": suite_name,
            "suite_path": suite_path,
            "fingerprint": fingerprint,
            "config": _json(config),
            "state": state,
            "trigger": trigger,
            "item_count": item_count,
            "schedule_id": schedule_id,
            "scheduled_for": scheduled_for,
            "error": error,
            "failed": state == RunState.FAILED.value,
        },
    ).first()
    return row is not None


def insert_items(conn: Connection, run_id: uuid.UUID, items: Sequence[Item]) -> None:
    conn.execute(
        text(
            "INSERT INTO eval_items (run_id, idx, item_id, messages, expected, item_metadata) "
            "VALUES (:run_id, :idx, :item_id, CAST(:messages AS jsonb), CAST(:expected AS jsonb), "
            "CAST(:metadata AS jsonb))"
        ),
        [
            {
                "run_id": run_id,
                "idx": item.idx,
                "item_id": item.item_id,
                "messages": _json(item.messages),
                "expected": _json(item.expected),
                "metadata": _json(item.metadata),
            }
            for item in items
        ],
    )


def insert_planned(conn: Connection, run_id: uuid.UUID, plan: Sequence[PlannedRequest]) -> None:
    conn.execute(
        text(
            "INSERT INTO eval_results (run_id, model_idx, item_idx, model, key) "
            "VALUES (:run_id, :model_idx, :item_idx, :model, :key)"
        ),
        [
            {"run_id": run_id, "model_idx": p.model_idx, "item_idx": p.item_idx, "model": p.label, "key": p.key}
            for p in plan
        ],
    )


def get_run(conn: Connection, run_id: uuid.UUID) -> dict[str, Any] | None:
    row = conn.execute(text("SELECT * FROM eval_runs WHERE id = :id"), {"id": run_id}).mappings().first()
    return dict(row) if row else None


def find_runs_by_prefix(conn: Connection, prefix: str) -> list[uuid.UUID]:
    rows = conn.execute(
        text("SELECT id FROM eval_runs WHERE CAST(id AS text) LIKE :p ORDER BY created_at DESC LIMIT 2"),
        {"p": prefix.lower() + "%"},
    ).all()
    return [r.id for r in rows]


def resumable_run(conn: Connection, suite_name: str, fingerprint: str) -> uuid.UUID | None:
    """The latest unfinished manual run of exactly this suite: an interrupted ``eval run`` to pick up."""
    return conn.execute(
        text(
            f"SELECT id FROM eval_runs WHERE suite_name = :name AND fingerprint = :fp AND trigger = 'manual' "
            f"AND state IN ({_ACTIVE}) ORDER BY created_at DESC LIMIT 1"
        ),
        {"name": suite_name, "fp": fingerprint},
    ).scalar_one_or_none()


def active_runs(conn: Connection) -> list[uuid.UUID]:
    rows = conn.execute(text(f"SELECT id FROM eval_runs WHERE state IN ({_ACTIVE}) ORDER BY created_at")).all()
    return [r.id for r in rows]


def set_state(conn: Connection, run_id: uuid.UUID, state: RunState) -> None:
    conn.execute(
        text(f"UPDATE eval_runs SET state = :state WHERE id = :id AND state IN ({_ACTIVE})"),
        {"id": run_id, "state": state.value},
    )


def fail_run(conn: Connection, run_id: uuid.UUID, error: str) -> None:
    conn.execute(
        text(
            f"UPDATE eval_runs SET state = 'failed', error = :error, finished_at = now(), submitting_at = NULL "
            f"WHERE id = :id AND state IN ({_ACTIVE})"
        ),
        {"id": run_id, "error": error},
    )


def complete_run(
    conn: Connection,
    run_id: uuid.UUID,
    *,
    summary: dict[str, Any],
    comparison: dict[str, Any] | None,
    regressed: bool,
) -> bool:
    """Mark the run completed, once. False if it already was (another process finished it)."""
    result = conn.execute(
        text(
            f"UPDATE eval_runs SET state = 'completed', summary = CAST(:summary AS jsonb), "
            f"comparison = CAST(:comparison AS jsonb), regressed = :regressed, finished_at = now() "
            f"WHERE id = :id AND state IN ({_ACTIVE})"
        ),
        {"id": run_id, "summary": _json(summary), "comparison": _json(comparison), "regressed": regressed},
    )
    return bool(result.rowcount)


def set_comparison(conn: Connection, run_id: uuid.UUID, comparison: dict[str, Any]) -> None:
    conn.execute(
        text("UPDATE eval_runs SET comparison = CAST(:c AS jsonb) WHERE id = :id"),
        {"id": run_id, "c": _json(comparison)},
    )


def try_lock_run(conn: Connection, run_id: uuid.UUID) -> bool:
    """A session advisory lock: one process at a time moves a run on (the CLI, or any beat's tick)."""
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_lock(:cls, hashtext(:id))"), {"cls": _LOCK_CLASS, "id": str(run_id)}
        ).scalar()
    )


def unlock_run(conn: Connection, run_id: uuid.UUID) -> None:
    conn.execute(text("SELECT pg_advisory_unlock(:cls, hashtext(:id))"), {"cls": _LOCK_CLASS, "id": str(run_id)})


def previous_completed_run(conn: Connection, suite_name: str, run_id: uuid.UUID) -> dict[str, Any] | None:
    """The latest completed run of the suite created before ``run_id``."""
    row = (
        conn.execute(
            text(
                "SELECT * FROM eval_runs WHERE suite_name = :name AND state = 'completed' AND id <> :id "
                "AND created_at < (SELECT created_at FROM eval_runs WHERE id = :id) "
                "ORDER BY created_at DESC LIMIT 1"
            ),
            {"name": suite_name, "id": run_id},
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def latest_run(conn: Connection, suite_name: str, *, completed: bool = True) -> dict[str, Any] | None:
    where = "AND state = 'completed'" if completed else ""
    row = (
        conn.execute(
            text(f"SELECT * FROM eval_runs WHERE suite_name = :name {where} ORDER BY created_at DESC LIMIT 1"),
            {"name": suite_name},
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def runs_of_suite(
    conn: Connection, suite_name: str, *, limit: int, until: datetime | None = None
) -> list[dict[str, Any]]:
    """Completed runs of the suite, oldest first, the last ``limit`` up to ``until``."""
    rows = conn.execute(
        text(
            "SELECT * FROM (SELECT * FROM eval_runs WHERE suite_name = :name AND state = 'completed' "
            "AND (CAST(:until AS timestamptz) IS NULL OR created_at <= :until) "
            "ORDER BY created_at DESC LIMIT :limit) AS recent ORDER BY created_at"
        ),
        {"name": suite_name, "limit": limit, "until": until},
    ).mappings()
    return [dict(r) for r in rows]


def list_runs(conn: Connection, suite_name: str | None, *, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            "SELECT id, suite_name, state, trigger, item_count, regressed, created_at, finished_at, error "
            "FROM eval_runs WHERE CAST(:name AS text) IS NULL OR suite_name = :name "
            "ORDER BY created_at DESC LIMIT :limit"
        ),
        {"name": suite_name, "limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


# --- items and results ---------------------------------------------------------------------------


def items_of(conn: Connection, run_id: uuid.UUID) -> list[Item]:
    rows = conn.execute(
        text("SELECT idx, item_id, messages, expected, item_metadata FROM eval_items WHERE run_id = :id ORDER BY idx"),
        {"id": run_id},
    ).all()
    return [Item(r.idx, r.item_id, r.messages, r.expected, r.item_metadata) for r in rows]


def results_of(conn: Connection, run_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            "SELECT r.*, i.item_id FROM eval_results AS r "
            "JOIN eval_items AS i ON i.run_id = r.run_id AND i.idx = r.item_idx "
            "WHERE r.run_id = :id ORDER BY r.model_idx, r.item_idx"
        ),
        {"id": run_id},
    ).mappings()
    return [dict(r) for r in rows]


def record_answers(conn: Connection, run_id: uuid.UUID, answers: Iterable[tuple[int, int, Outcome]]) -> None:
    """Copy settled outcomes onto their result rows (only rows not yet answered)."""
    params = [
        {
            "run_id": run_id,
            "model_idx": m,
            "item_idx": i,
            "output": o.output,
            "error_type": o.error_type,
            "error": o.error,
            "latency_ms": o.latency_ms,
            "prompt_tokens": o.prompt_tokens,
            "completion_tokens": o.completion_tokens,
            "attempts": o.attempts,
            "cached": o.cached,
        }
        for m, i, o in answers
    ]
    if not params:
        return
    conn.execute(
        text(
            "UPDATE eval_results SET output = :output, error_type = :error_type, error = :error, "
            "latency_ms = :latency_ms, prompt_tokens = :prompt_tokens, completion_tokens = :completion_tokens, "
            "attempts = :attempts, cached = :cached "
            "WHERE run_id = :run_id AND model_idx = :model_idx AND item_idx = :item_idx "
            "AND output IS NULL AND error IS NULL"
        ),
        params,
    )


ScoredRow = tuple[int, int, dict[str, Any], float, bool]
"""``(model_idx, item_idx, scores, score, passed)``."""


def record_scores(conn: Connection, run_id: uuid.UUID, scores: Iterable[ScoredRow]) -> None:
    params = [
        {"run_id": run_id, "model_idx": m, "item_idx": i, "scores": _json(s), "score": score, "passed": passed}
        for m, i, s, score, passed in scores
    ]
    if params:
        conn.execute(
            text(
                "UPDATE eval_results SET scores = CAST(:scores AS jsonb), score = :score, passed = :passed "
                "WHERE run_id = :run_id AND model_idx = :model_idx AND item_idx = :item_idx"
            ),
            params,
        )


# --- the run's jobs and what they answered -------------------------------------------------------


def link_job(conn: Connection, run_id: uuid.UUID, job_id: uuid.UUID, stage: str) -> None:
    conn.execute(
        text(
            "INSERT INTO eval_run_jobs (run_id, job_id, stage) VALUES (:run, :job, :stage) "
            "ON CONFLICT (run_id, job_id) DO NOTHING"
        ),
        {"run": run_id, "job": job_id, "stage": stage},
    )


def set_submitting(conn: Connection, run_id: uuid.UUID, on: bool) -> None:
    conn.execute(
        text(f"UPDATE eval_runs SET submitting_at = {'now()' if on else 'NULL'} WHERE id = :id"), {"id": run_id}
    )


def adopt_orphan_jobs(conn: Connection, run_id: uuid.UUID, since: datetime) -> int:
    """Link jobs a crashed submitter stored for this run but never linked (found by their metadata)."""
    result = conn.execute(
        text(
            """
            INSERT INTO eval_run_jobs (run_id, job_id, stage)
            SELECT :run, j.id, j.user_metadata->>'eval_stage' FROM jobs AS j
             WHERE j.created_at >= CAST(:since AS timestamptz) - interval '5 minutes'
               AND j.user_metadata->>'eval_run' = :run_text
            ON CONFLICT (run_id, job_id) DO NOTHING
            """
        ),
        {"run": run_id, "run_text": str(run_id), "since": since},
    )
    conn.execute(text("UPDATE eval_runs SET submitting_at = NULL WHERE id = :id"), {"id": run_id})
    return int(result.rowcount)


def run_jobs(conn: Connection, run_id: uuid.UUID, stage: str) -> list[tuple[uuid.UUID, str]]:
    """``(job_id, job_state)`` of the run's jobs of one stage, oldest first."""
    rows = conn.execute(
        text(
            "SELECT j.id, j.state FROM eval_run_jobs AS e JOIN jobs AS j ON j.id = e.job_id "
            "WHERE e.run_id = :run AND e.stage = :stage ORDER BY e.created_at, j.created_at"
        ),
        {"run": run_id, "stage": stage},
    ).all()
    return [(r.id, r.state) for r in rows]


_OUTCOMES = text(
    """
    SELECT r.custom_id AS key, r.state, r.error_type, r.error, r.latency_ms, r.attempts,
           resp.body->'choices'->0->'message'->>'content' AS content,
           resp.body->'choices'->0->'message'->'tool_calls' AS tool_calls,
           resp.prompt_tokens, resp.completion_tokens, resp.latency_ms AS response_latency_ms
      FROM eval_run_jobs AS e
      JOIN requests AS r ON r.job_id = e.job_id
      LEFT JOIN responses AS resp ON resp.request_id = r.id
     WHERE e.run_id = :run AND e.stage = :stage
     ORDER BY e.created_at, r.idx
    """
)

_RANK = {"succeeded": 3, "failed": 2, "queued": 1, "running": 1, "retrying": 1}


def request_outcomes(conn: Connection, run_id: uuid.UUID, stage: str) -> dict[str, Outcome]:
    """The best outcome per key over every job of the run's stage: an answer beats a final error,
    which beats a request still in flight; cancelled or expired requests count as never sent."""
    best: dict[str, tuple[int, Outcome]] = {}
    for row in conn.execute(_OUTCOMES, {"run": run_id, "stage": stage}):
        rank = _RANK.get(row.state, 0)
        if rank == 0 or row.key is None:
            continue
        if row.state == "succeeded":
            output = row.content
            if output is None and row.tool_calls is not None:
                output = json.dumps(row.tool_calls)
            outcome = Outcome(
                key=row.key,
                output=output or "",
                latency_ms=row.response_latency_ms if row.response_latency_ms is not None else row.latency_ms,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                attempts=row.attempts,
            )
        elif row.state == "failed":
            outcome = Outcome(
                key=row.key,
                error_type=row.error_type or "RequestError",
                error=row.error or "failed",
                attempts=row.attempts,
            )
        else:
            outcome = Outcome(key=row.key, pending=True)
        if row.key not in best or rank > best[row.key][0]:
            best[row.key] = (rank, outcome)
    return {key: outcome for key, (_, outcome) in best.items()}


# --- the response cache --------------------------------------------------------------------------


def cached_outcomes(conn: Connection, keys: Sequence[str]) -> dict[str, Outcome]:
    if not keys:
        return {}
    rows = conn.execute(
        text(
            "SELECT key, output, prompt_tokens, completion_tokens, latency_ms FROM eval_responses "
            "WHERE key = ANY(:keys)"
        ),
        {"keys": list(keys)},
    ).all()
    return {
        r.key: Outcome(
            key=r.key,
            output=r.output,
            latency_ms=r.latency_ms,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            cached=True,
        )
        for r in rows
    }


def remember(conn: Connection, answers: Iterable[tuple[str, Outcome]]) -> None:
    """Store fresh answers in the cache (the newest answer per key wins)."""
    params = [
        {
            "key": o.key,
            "model": model,
            "output": o.output,
            "prompt_tokens": o.prompt_tokens,
            "completion_tokens": o.completion_tokens,
            "latency_ms": o.latency_ms,
        }
        for model, o in answers
        if o.output is not None and not o.cached
    ]
    if params:
        conn.execute(
            text(
                "INSERT INTO eval_responses (key, model, output, prompt_tokens, completion_tokens, latency_ms) "
                "VALUES (:key, :model, :output, :prompt_tokens, :completion_tokens, :latency_ms) "
                "ON CONFLICT (key) DO UPDATE SET output = EXCLUDED.output, prompt_tokens = EXCLUDED.prompt_tokens, "
                "completion_tokens = EXCLUDED.completion_tokens, latency_ms = EXCLUDED.latency_ms, created_at = now()"
            ),
            params,
        )


# --- schedules -----------------------------------------------------------------------------------


def insert_schedule(
    conn: Connection, *, suite_name: str, suite_path: str, cron: str, timezone: str
) -> dict[str, Any] | None:
    """Store a schedule; ``None`` if this suite is already scheduled at this cron and timezone."""
    row = (
        conn.execute(
            text(
                "INSERT INTO eval_schedules (id, suite_name, suite_path, cron, timezone) "
                "VALUES (:id, :name, :path, :cron, :tz) "
                "ON CONFLICT (suite_path, cron, timezone) DO NOTHING RETURNING *"
            ),
            {"id": uuid.uuid4(), "name": suite_name, "path": suite_path, "cron": cron, "tz": timezone},
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def schedule_id_of(conn: Connection, *, suite_path: str, cron: str, timezone: str) -> uuid.UUID:
    """The schedule of this suite at this cron and timezone (it exists)."""
    schedule_id: uuid.UUID = conn.execute(
        text("SELECT id FROM eval_schedules WHERE suite_path = :path AND cron = :cron AND timezone = :tz"),
        {"path": suite_path, "cron": cron, "tz": timezone},
    ).scalar_one()
    return schedule_id


def schedules_with_last_run(conn: Connection) -> list[dict[str, Any]]:
    """Every schedule, oldest first, with its last run (``last_run_id``, ``last_run_state``,
    ``last_scheduled_for``, ``last_regressed``; ``None`` if it never fired)."""
    rows = conn.execute(
        text(
            """
            SELECT s.*, last.id AS last_run_id, last.state AS last_run_state,
                   last.scheduled_for AS last_scheduled_for, last.regressed AS last_regressed
              FROM eval_schedules AS s
              LEFT JOIN LATERAL (
                  SELECT id, state, scheduled_for, regressed FROM eval_runs
                   WHERE schedule_id = s.id ORDER BY scheduled_for DESC LIMIT 1
              ) AS last ON true
             ORDER BY s.created_at
            """
        )
    ).mappings()
    return [dict(r) for r in rows]


def schedule_ids_by_prefix(conn: Connection, prefix: str) -> list[uuid.UUID]:
    """Up to two schedules whose id starts with ``prefix`` (two: the prefix is ambiguous)."""
    rows = conn.execute(
        text("SELECT id FROM eval_schedules WHERE CAST(id AS text) LIKE :p LIMIT 2"),
        {"p": prefix + "%"},
    ).all()
    return [uuid.UUID(str(r.id)) for r in rows]


def delete_schedule(conn: Connection, schedule_id: uuid.UUID) -> None:
    """Forget a schedule (its runs stay, unlinked)."""
    conn.execute(text("DELETE FROM eval_schedules WHERE id = :id"), {"id": schedule_id})


def set_schedule_paused(conn: Connection, schedule_id: uuid.UUID, paused: bool, *, now: datetime | None) -> None:
    """Pause, or resume from ``now`` (the database's clock if ``None``): ticks missed while paused never fire."""
    conn.execute(
        text(
            "UPDATE eval_schedules SET paused = :paused, active_since = CASE WHEN :paused THEN active_since "
            "ELSE COALESCE(CAST(:now AS timestamptz), now()) END WHERE id = :id"
        ),
        {"id": schedule_id, "paused": paused, "now": now},
    )


def active_schedules(conn: Connection) -> list[dict[str, Any]]:
    """Every schedule that is not paused."""
    return [dict(r) for r in conn.execute(text("SELECT * FROM eval_schedules WHERE NOT paused")).mappings()]


def tick_claimed(conn: Connection, schedule_id: uuid.UUID, scheduled_for: datetime) -> bool:
    """Whether the schedule's tick ``scheduled_for`` already has its run (the claim is ``insert_run``'s)."""
    found = conn.execute(
        text("SELECT 1 FROM eval_runs WHERE schedule_id = :id AND scheduled_for = :due"),
        {"id": schedule_id, "due": scheduled_for},
    ).first()
    return found is not None
