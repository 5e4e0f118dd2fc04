"""Schedules: suites run on cron expressions by Celery beat, fired exactly once per tick.

Beat sends ``batcher.eval_tick`` every ``BATCHER_EVAL_TICK_INTERVAL_S``; the tick reads the
schedules from Postgres (so adding, pausing or removing one takes effect without restarting
beat), works out each one's latest due time with cronsim, and claims it by inserting the run
with ``ON CONFLICT (schedule_id, scheduled_for) DO NOTHING``: if two beats were started by
mistake, or one tick overlaps the next, exactly one insert wins and the others do nothing.
A tick missed while beat was down fires once when it comes back (the latest one only), and a
schedule never fires for a time before it was created or resumed.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim
from sqlalchemy import Connection, Engine

from batcher._exceptions import BatcherError
from batcher.evals import store
from batcher.evals.errors import EvalError, ScheduleNotFoundError
from batcher.evals.runner import EvalRunner, create_run
from batcher.evals.states import RunState, Trigger
from batcher.evals.suite import check_cron, check_timezone, load_suite, peek_suite_name

log = logging.getLogger("batcher.evals")


# --- cron arithmetic -----------------------------------------------------------------------------


def due_tick(cron: str, timezone: str, now: datetime) -> datetime | None:
    """The latest time at or before ``now`` that ``cron`` names in ``timezone`` (as UTC)."""
    start = (now.replace(microsecond=0) + timedelta(seconds=1)).astimezone(ZoneInfo(timezone))
    try:
        # cronsim's reverse iteration is strictly before its start: the +1 s makes `now` itself count.
        return next(CronSim(cron, start, reverse=True)).astimezone(UTC)
    except StopIteration:
        return None


def next_tick(cron: str, timezone: str, after: datetime) -> datetime | None:
    """The first time strictly after ``after`` that ``cron`` names in ``timezone`` (as UTC)."""
    try:
        return next(CronSim(cron, after.astimezone(ZoneInfo(timezone)))).astimezone(UTC)
    except StopIteration:
        return None


# --- managing schedules --------------------------------------------------------------------------


def add_schedule(engine: Engine, suite_path: str | Path, *, cron: str | None, timezone: str | None) -> dict[str, Any]:
    """Check the suite, then store its schedule. ``cron`` / ``timezone`` default to the suite's own."""
    suite = load_suite(suite_path)
    declared = suite.spec.schedule
    cron = cron or (declared.cron if declared else None)
    if not cron:
        raise EvalError("no schedule: pass --cron '0 2 * * *' or add schedule: {cron: ...} to the suite")
    timezone = timezone or (declared.timezone if declared else "UTC")
    try:
        cron = check_cron(cron)
        timezone = check_timezone(timezone)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    path = str(Path(suite_path).resolve())
    with engine.begin() as conn:
        row = store.insert_schedule(conn, suite_name=suite.name, suite_path=path, cron=cron, timezone=timezone)
        if row is None:
            existing = store.schedule_id_of(conn, suite_path=path, cron=cron, timezone=timezone)
            raise EvalError(f"{path} is already scheduled at {cron!r} ({timezone}) as schedule {existing}")
    return row


def list_schedules(engine: Engine) -> list[dict[str, Any]]:
    """Every schedule with its next firing and its last run."""
    now = datetime.now(UTC)
    with engine.connect() as conn:
        schedules = store.schedules_with_last_run(conn)
    for s in schedules:
        s["next_at"] = None if s["paused"] else next_tick(s["cron"], s["timezone"], now)
    return schedules


def resolve_schedule(conn: Connection, ident: str) -> uuid.UUID:
    """A schedule by id or unique id prefix (as ``schedule list`` prints it)."""
    ids = store.schedule_ids_by_prefix(conn, ident.strip().lower())
    if not ids or len(ident.strip()) < 4:
        raise ScheduleNotFoundError(f"no schedule {ident!r}; see `batcher eval schedule list`")
    if len(ids) > 1:
        raise ScheduleNotFoundError(f"{ident!r} matches several schedules; give more of the id")
    return ids[0]


def remove_schedule(engine: Engine, ident: str) -> uuid.UUID:
    with engine.begin() as conn:
        schedule_id = resolve_schedule(conn, ident)
        store.delete_schedule(conn, schedule_id)
    return schedule_id


def set_paused(engine: Engine, ident: str, paused: bool, *, now: datetime | None = None) -> uuid.UUID:
    """Pause or resume. Resuming does not fire the ticks missed while paused (``now``: tests)."""
    with engine.begin() as conn:
        schedule_id = resolve_schedule(conn, ident)
        store.set_schedule_paused(conn, schedule_id, paused, now=now)
    return schedule_id


# --- the tick ------------------------------------------------------------------------------------


@dataclass
class TickReport:
    fired: int = 0
    """Runs created for due ticks by this call."""
    already_claimed: int = 0
    """Due ticks another tick (another beat) had claimed."""
    advanced: int = 0
    """Active runs moved on."""
    failed: int = 0
    """Runs that could not start or went to ``failed``."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def tick(runner: EvalRunner, *, now: datetime | None = None) -> TickReport:
    """Fire every due schedule once, then move every active run on. Safe to run concurrently."""
    now = now or datetime.now(UTC)
    report = TickReport()
    engine = runner.engine
    with engine.connect() as conn:
        schedules = store.active_schedules(conn)
    for schedule in schedules:
        try:
            due = due_tick(schedule["cron"], schedule["timezone"], now)
        except Exception:  # a row edited by hand into nonsense must not stop the other schedules
            log.exception("schedule %s has an unusable cron expression", schedule["id"])
            continue
        if due is None or due < schedule["active_since"]:
            continue
        with engine.connect() as conn:
            claimed = store.tick_claimed(conn, schedule["id"], due)
        if claimed:
            continue
        fired = _fire(runner, schedule, due)
        if fired is None:
            report.already_claimed += 1
        else:
            report.fired += 1
            report.failed += int(not fired)
    with engine.connect() as conn:
        active = store.active_runs(conn)
    for run_id in active:
        try:
            state = runner.advance(run_id)
        except Exception:  # infrastructure trouble: the next tick tries again
            log.exception("could not move evaluation run %s on", run_id)
            continue
        if state is not None:
            report.advanced += 1
            report.failed += int(state is RunState.FAILED)
    return report


def _fire(runner: EvalRunner, schedule: dict[str, Any], due: datetime) -> bool | None:
    """Claim the tick and create its run. True: created; False: created as failed (the suite no
    longer loads or cannot be submitted); None: another tick had claimed it."""
    try:
        suite = load_suite(schedule["suite_path"])
        runner.check_submittable(suite)
    except BatcherError as exc:
        log.warning("scheduled suite %s cannot run: %s", schedule["suite_path"], exc)
        with runner.engine.begin() as conn:
            claimed = store.insert_run(
                conn,
                run_id=uuid.uuid4(),
                suite_name=peek_suite_name(schedule["suite_path"]) or schedule["suite_name"],
                suite_path=schedule["suite_path"],
                fingerprint="",
                config={},
                trigger=Trigger.SCHEDULE.value,
                state=RunState.FAILED.value,
                schedule_id=schedule["id"],
                scheduled_for=due,
                error=str(exc),
            )
        return False if claimed else None
    with runner.engine.begin() as conn:
        run_id = create_run(conn, suite, trigger=Trigger.SCHEDULE, schedule_id=schedule["id"], scheduled_for=due)
    if run_id is None:
        return None
    log.info("schedule %s fired run %s for %s", schedule["id"], run_id, due.isoformat())
    return True
