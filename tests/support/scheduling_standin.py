"""A trivial stand-in for ``batcher._scheduling.FairScheduler`` while its policy is being written.

Loaded into the test process (``tests/conftest.py``) and into test workers (``--include``): it patches
``plan``, ``charge`` and ``standing`` only while the real ones still raise ``NotImplementedError``, so
once the policy lands this module does nothing. The stand-in is round-robin by job, oldest first, in
``quantum`` requests at a time (enough for the dispatcher's mechanics: bounded window, no starvation).
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
    granted: dict[uuid.UUID, int] = {}
    left = {j.id: j.backlog for j in jobs}
    order = sorted(jobs, key=lambda j: (-j.priority, j.created_at))
    while free > 0 and any(left.values()):
        for job in order:
            n = min(self.quantum, left[job.id], free)
            if n <= 0:
                continue
            granted[job.id] = granted.get(job.id, 0) + n
            left[job.id] -= n
            free -= n
            if free <= 0:
                break
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
