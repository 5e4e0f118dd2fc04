"""A trivial stand-in for ``batcher._scheduling.FairScheduler`` while its policy is being written.

Loaded into the test process (``tests/conftest.py``) and into test workers (``--include``): it patches
``plan``, ``charge`` and ``standing`` only while the real ones still raise ``NotImplementedError``, so
once the policy lands this module does nothing. The stand-in is the highest priority's jobs in turn, one
request each (enough for the dispatcher's mechanics: bounded window, no starvation).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from batcher import _scheduling
from batcher._scheduling import FairScheduler, Grant, JobView, Standing


def _unimplemented() -> bool:
    try:
        FairScheduler().plan([], 0, datetime.now(UTC))
    except NotImplementedError:
        return True
    return False


def _plan(
    self: FairScheduler, jobs: Sequence[JobView], free: int, now: datetime, *, rate: float | None = None
) -> list[Grant]:
    """Highest priority first; within it, one request per job in turn (no job waits behind another)."""
    granted: dict[uuid.UUID, int] = {}
    if not jobs or free <= 0:
        return []
    top = max(j.priority for j in jobs if j.backlog > 0) if any(j.backlog > 0 for j in jobs) else 0
    order = sorted((j for j in jobs if j.priority == top and j.backlog > 0), key=lambda j: j.created_at)
    left = {j.id: j.backlog for j in order}
    while free > 0 and any(left.values()):
        for job in order:
            if free <= 0:
                break
            if left[job.id] > 0:
                granted[job.id] = granted.get(job.id, 0) + 1
                left[job.id] -= 1
                free -= 1
    return [Grant(job_id, n) for job_id, n in granted.items()]


def _charge(self: FairScheduler, job: JobView, released: int, tokens: int) -> None:
    return None


def _standing(
    self: FairScheduler, jobs: Sequence[JobView], capacity: int, now: datetime, *, rate: float | None = None
) -> dict[uuid.UUID, Standing]:
    waiting = [j for j in jobs if j.backlog > 0]
    share = 1.0 / len(waiting) if waiting else 0.0
    return {j.id: Standing(1 if j.backlog > 0 else 0, 0, share if j.backlog > 0 else 0.0) for j in jobs}


if _unimplemented():
    _scheduling.FairScheduler.plan = _plan  # type: ignore[method-assign]
    _scheduling.FairScheduler.charge = _charge  # type: ignore[method-assign]
    _scheduling.FairScheduler.standing = _standing  # type: ignore[method-assign]
