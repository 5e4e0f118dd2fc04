"""Quotas per API key, enforced at submission: ``max_queued_prompts``.

A key (``api_keys.max_queued_prompts``, set with ``batcher keys create/set --max-queued``) may hold at
most that many unfinished prompts (requests queued, running or retrying) across its jobs. A submission
that would take it past the quota is refused with ``QuotaExceededError`` (HTTP 429) **before anything
is kept**: the check runs inside the submission's transaction, which rolls back.

Two submissions of one key racing each other cannot both pass on the same count: the key's quota is
taken as a transaction-scoped advisory lock (``keys_store.lock_queued_prompts``) before counting, and
held until the submission commits, so the second one counts after the first's prompts are visible.
The lock is taken only for keys with a quota, and serialises only that key's submissions.

The count is read from the jobs' counters (``total`` minus the final ones), one row per active job. A
key that is already at its quota is refused before a single prompt of the new job is read; otherwise
the job's prompts are streamed and counted as usual and checked once their number is known. Jobs
submitted in-process (no key) are the operator's and have no quota. ``max_concurrent_requests`` is the
dispatcher's to enforce (``batcher._scheduling``), not a submission's.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection

from batcher._exceptions import QuotaExceededError

MAX_RETRY_AFTER_S = 3_600
"""The longest ``Retry-After`` estimated: beyond an hour the estimate says little."""
MIN_RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class QueueAdmission:
    """A key's queued-prompts quota, counted and locked for one submission's transaction."""

    key_id: uuid.UUID
    limit: int
    unfinished: int
    """The key's prompts not final yet when the lock was taken."""
    rate: float
    """Requests per second the key's started jobs have been finishing (0: not known)."""

    def admit(self, total: int) -> None:
        """Raise ``QuotaExceededError`` if ``total`` more prompts do not fit (the transaction then rolls back)."""
        if self.unfinished + total > self.limit:
            raise self.refusal(total)

    def refusal(self, requested: int | None) -> QuotaExceededError:
        fits = requested is not None and requested <= self.limit
        needed = self.unfinished + (requested or 1) - self.limit  # prompts that must finish first
        retry_after = None
        if (fits or requested is None) and self.rate > 0:
            retry_after = float(min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, math.ceil(needed / self.rate))))
        if requested is not None and not fits:
            fix = f"split it into jobs of at most {self.limit:,} prompts"
        else:
            fix = "wait for some of its jobs to finish" + (f" (about {retry_after:.0f} s)" if retry_after else "")
        job = f"this job's {requested:,}" if requested is not None else "any new"
        return QuotaExceededError(
            f"max_queued_prompts: API key {self.key_id} may have at most {self.limit:,} unfinished prompts "
            f"(queued, running or retrying); it has {self.unfinished:,}, so {job} prompts do not fit. Nothing "
            f"was stored: {fix}, or ask an operator to raise the quota "
            f"(batcher keys set {self.key_id} --max-queued N).",
            limit=self.limit,
            current=self.unfinished,
            requested=requested,
            retry_after_s=retry_after,
        )


def admission(conn: Connection, owner_id: uuid.UUID | None) -> QueueAdmission | None:
    """Lock and count the submitting key's quota in the submission's transaction (``None``: no quota).

    Raises ``QuotaExceededError`` at once when the key is already at its quota."""
    if owner_id is None:
        return None
    from batcher.api import keys_store  # only HTTP submissions have a key (and a Postgres database)

    limit = keys_store.queued_prompts_quota(conn, owner_id)
    if limit is None:
        return None
    keys_store.lock_queued_prompts(conn, owner_id)
    unfinished, rate = keys_store.unfinished_prompts(conn, owner_id)
    quota = QueueAdmission(key_id=owner_id, limit=limit, unfinished=unfinished, rate=rate)
    if unfinished >= limit:
        raise quota.refusal(None)
    return quota
