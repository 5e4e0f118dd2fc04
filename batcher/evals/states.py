"""States of an evaluation run, as ``str`` enums (the same in Python, SQL and JSON)."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """Lifecycle of one evaluation run. ``completed`` and ``failed`` never change again."""

    PENDING = "pending"
    """Created with its items and planned requests; nothing submitted yet."""
    ANSWERING = "answering"
    """The models' answers are being collected (one batcher job, plus one per resume)."""
    JUDGING = "judging"
    """LLM-as-judge verdicts are being collected (a second batcher job)."""
    COMPLETED = "completed"
    """Scored and summarised; compared with the previous run."""
    FAILED = "failed"
    """Could not run (the suite no longer loads, a custom scorer cannot be imported, ...)."""

    @property
    def is_final(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED)


ACTIVE_RUN_STATES = (RunState.PENDING, RunState.ANSWERING, RunState.JUDGING)


class Trigger(StrEnum):
    """What started a run."""

    MANUAL = "manual"
    SCHEDULE = "schedule"


class Stage(StrEnum):
    """Which requests a job of a run carries."""

    ANSWERS = "answers"
    JUDGE = "judge"
