"""Who goes next: the dispatcher's policy, as a pure function of what Postgres says.

The dispatcher (``batcher._dispatch``) keeps a bounded window of requests in the broker and, at each
tick, asks this module how to share the free slots between the jobs with a backlog. Nothing here
touches a database or Redis: the input is a snapshot (``JobView``), the output is grants.

The policy, in order:

1. **Races** (``batch_completion_models``) never wait here: they are released at submission.
2. **Priority** (0-9, higher first, default ``DEFAULT_PRIORITY``): a lower priority's backlog gets
   slots only when no higher priority has a backlog that may be released.
3. **Deadlines at risk**: within a priority, a job whose ``deadline_at`` is nearer than
   ``urgency_s`` plus the time its remaining requests need at the current rate goes before the
   others, earliest deadline first.
4. **Weighted fair shares**: the rest is shared between tenants (API keys; jobs submitted
   in-process form one tenant) in proportion to their weight, then equally between a tenant's
   jobs, by start-time fair queuing charged in *estimated tokens*: a job of long prompts gets
   fewer requests, not more tokens. A tenant or job that becomes active starts at the smallest
   virtual time of those already active, so it neither waits for the others to catch up nor takes
   the whole cluster to make up for the time it was idle.
5. **Quotas**: a tenant never holds more than its ``max_concurrent_requests`` released at once.

Virtual times are soft state (one dispatcher's memory): a new dispatcher starts them afresh, which
only forgets who was ahead by how much, never a request.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

MIN_PRIORITY = 0
MAX_PRIORITY = 9
DEFAULT_PRIORITY = 5
DEFAULT_URGENCY_S = 600.0
"""A job whose deadline is nearer than this (plus the time its remaining work needs) is served first."""
DEFAULT_QUANTUM = 16
"""Requests granted to one job at a time before the next job's turn is considered."""


@dataclass(frozen=True, slots=True)
class JobView:
    """One job with work left, as the dispatcher sees it at a tick."""

    id: uuid.UUID
    owner: uuid.UUID | None
    """The API key that submitted it; ``None``: submitted in-process (one tenant, the operator)."""
    priority: int
    deadline_at: datetime | None
    created_at: datetime
    backlog: int
    """Requests still in Postgres that may be released now (after the dispatcher's per-model caps)."""
    in_flight: int
    """Requests released to the broker and not final yet."""
    tokens_per_request: float = 1.0
    """Average estimated tokens of its backlog: what a grant is charged before the real figure is known."""
    weight: float = 1.0
    """The owner's weight (``api_keys.weight``)."""
    owner_max_concurrent: int | None = None
    """The owner's quota of requests released at once (``api_keys.max_concurrent_requests``)."""


@dataclass(frozen=True, slots=True)
class Grant:
    job_id: uuid.UUID
    count: int


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a job stands in line, for ``status``."""

    position: int
    """1 = its requests are released next (or now); 0 = it has no backlog."""
    ahead: int
    """Requests of other jobs that go before its next one (higher priority or deadline at risk)."""
    share: float
    """The fraction of the cluster's slots it gets while the current jobs run (0-1)."""


class FairScheduler:
    """The policy above, with the virtual times it keeps between ticks.

    ``plan`` decides (and changes nothing); ``charge`` records what was really released.
    """

    def __init__(self, *, quantum: int = DEFAULT_QUANTUM, urgency_s: float = DEFAULT_URGENCY_S) -> None:
        self.quantum = quantum
        self.urgency_s = urgency_s

    def plan(self, jobs: Sequence[JobView], free: int, now: datetime, *, rate: float | None = None) -> list[Grant]:
        """How many of ``free`` slots each job gets now (``rate``: the cluster's completions per second)."""
        raise NotImplementedError

    def charge(self, job: JobView, released: int, tokens: int) -> None:
        """``released`` requests of ``job`` went to the broker, ``tokens`` estimated tokens in all."""
        raise NotImplementedError

    def standing(
        self, jobs: Sequence[JobView], capacity: int, now: datetime, *, rate: float | None = None
    ) -> dict[uuid.UUID, Standing]:
        """Every job's place in line (``capacity``: the window the dispatcher keeps)."""
        raise NotImplementedError
