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


Tenant = uuid.UUID | None


class FairScheduler:
    """The policy above, with the virtual times it keeps between ticks.

    ``plan`` decides (and changes nothing); ``charge`` records what was really released.
    """

    def __init__(self, *, quantum: int = DEFAULT_QUANTUM, urgency_s: float = DEFAULT_URGENCY_S) -> None:
        self.quantum = max(1, quantum)
        self.urgency_s = urgency_s
        self._tenant_vt: dict[Tenant, float] = {}
        self._job_vt: dict[uuid.UUID, float] = {}
        self._active_tenants: set[Tenant] = set()
        self._active_jobs: set[uuid.UUID] = set()

    # --- deciding -------------------------------------------------------------------------------

    def plan(self, jobs: Sequence[JobView], free: int, now: datetime, *, rate: float | None = None) -> list[Grant]:
        """How many of ``free`` slots each job gets now (``rate``: the cluster's completions per second)."""
        self._activate(jobs)
        if free <= 0:
            return []
        granted: dict[uuid.UUID, int] = {}
        room = _owner_room(jobs)
        tenant_vt = dict(self._tenant_vt)
        job_vt = dict(self._job_vt)
        for level in _levels(jobs):
            urgent, fair = self._split(level, now, rate)
            for job in urgent:  # earliest deadline first, each as much as it can take
                take = min(job.backlog, free, room.get(job.owner, free))
                free = self._grant(job, take, granted, room, tenant_vt, job_vt, free)
                if free == 0:
                    break
            # Fewer free slots than quanta to go round: smaller quanta, so one tick is shared too.
            quantum = max(1, min(self.quantum, free // max(1, len(fair))))
            while free > 0:
                picked = _pick(fair, granted, room, tenant_vt, job_vt)
                if picked is None:
                    break
                left = picked.backlog - granted.get(picked.id, 0)
                take = min(quantum, left, free, room.get(picked.owner, free))
                free = self._grant(picked, take, granted, room, tenant_vt, job_vt, free)
            if free == 0:
                break
        return [Grant(job_id, count) for job_id, count in granted.items() if count > 0]

    def _grant(
        self,
        job: JobView,
        take: int,
        granted: dict[uuid.UUID, int],
        room: dict[Tenant, int],
        tenant_vt: dict[Tenant, float],
        job_vt: dict[uuid.UUID, float],
        free: int,
    ) -> int:
        if take <= 0:
            return free
        granted[job.id] = granted.get(job.id, 0) + take
        if job.owner in room:
            room[job.owner] -= take
        cost = take * max(1.0, job.tokens_per_request)
        tenant_vt[job.owner] = tenant_vt.get(job.owner, 0.0) + cost / max(job.weight, 1e-9)
        job_vt[job.id] = job_vt.get(job.id, 0.0) + cost
        return free - take

    def _split(self, level: list[JobView], now: datetime, rate: float | None) -> tuple[list[JobView], list[JobView]]:
        """A priority level's jobs: those whose deadline is at risk (earliest first), and the rest."""
        urgent = [job for job in level if self._at_risk(job, now, rate)]
        urgent.sort(key=lambda job: (job.deadline_at, job.created_at, job.id))
        ids = {job.id for job in urgent}
        return urgent, [job for job in level if job.id not in ids]

    def _at_risk(self, job: JobView, now: datetime, rate: float | None) -> bool:
        if job.deadline_at is None:
            return False
        needed_s = (job.backlog + job.in_flight) / rate if rate else 0.0
        return (job.deadline_at - now).total_seconds() <= self.urgency_s + needed_s

    # --- recording ------------------------------------------------------------------------------

    def charge(self, job: JobView, released: int, tokens: int) -> None:
        """``released`` requests of ``job`` went to the broker, ``tokens`` estimated tokens in all."""
        if released <= 0:
            return
        cost = float(max(tokens, released))
        self._tenant_vt[job.owner] = self._tenant_vt.get(job.owner, 0.0) + cost / max(job.weight, 1e-9)
        self._job_vt[job.id] = self._job_vt.get(job.id, 0.0) + cost

    def _activate(self, jobs: Sequence[JobView]) -> None:
        """Newly active tenants and jobs start at the smallest virtual time of those that stayed active;
        the ones that left are forgotten."""
        waiting = [job for job in jobs if job.backlog > 0]
        tenants = {job.owner for job in waiting}
        ids = {job.id for job in waiting}
        staying = [self._tenant_vt[t] for t in tenants & self._active_tenants if t in self._tenant_vt]
        floor = min(staying, default=min((self._tenant_vt.get(t, 0.0) for t in tenants), default=0.0))
        for tenant in tenants - self._active_tenants:
            self._tenant_vt[tenant] = max(self._tenant_vt.get(tenant, floor), floor)
        for tenant in tenants:
            mine = [job for job in waiting if job.owner == tenant]
            kept = [self._job_vt[j.id] for j in mine if j.id in self._active_jobs and j.id in self._job_vt]
            job_floor = min(kept, default=0.0)
            for job in mine:
                if job.id not in self._active_jobs:
                    self._job_vt[job.id] = max(self._job_vt.get(job.id, job_floor), job_floor)
        known = {job.id for job in jobs}
        self._job_vt = {k: v for k, v in self._job_vt.items() if k in known}
        owners = {job.owner for job in jobs}
        self._tenant_vt = {k: v for k, v in self._tenant_vt.items() if k in owners}
        self._active_tenants, self._active_jobs = tenants, ids

    # --- explaining -----------------------------------------------------------------------------

    def standing(
        self, jobs: Sequence[JobView], capacity: int, now: datetime, *, rate: float | None = None
    ) -> dict[uuid.UUID, Standing]:
        """Every job's place in line (``capacity``: the window the dispatcher keeps).

        ``share`` is the steady-state fraction of the slots the job gets while the same jobs wait: the
        served class (the highest priority with a backlog; its earliest deadline at risk, if any) shares
        by weight, everyone behind it gets 0 until it is done.
        """
        out: dict[uuid.UUID, Standing] = {}
        ahead = 0
        position = 1
        served = False
        for level in _levels(jobs):
            urgent, fair = self._split(level, now, rate)
            for job in urgent:
                out[job.id] = Standing(position, ahead, 0.0 if served else 1.0)
                served = True
                ahead += job.backlog
                position += 1
            shares = _fair_shares(fair)
            for job in fair:
                out[job.id] = Standing(position, ahead, 0.0 if served else shares[job.id])
            if fair:
                served = True
                ahead += sum(job.backlog for job in fair)
                position += len(fair)
        for job in jobs:
            if job.backlog <= 0:
                out[job.id] = Standing(0, 0, min(1.0, job.in_flight / capacity) if capacity > 0 else 0.0)
        return out


def _levels(jobs: Sequence[JobView]) -> list[list[JobView]]:
    """Jobs with a backlog, grouped by priority, highest first."""
    by_priority: dict[int, list[JobView]] = {}
    for job in jobs:
        if job.backlog > 0:
            by_priority.setdefault(job.priority, []).append(job)
    return [by_priority[p] for p in sorted(by_priority, reverse=True)]


def _owner_room(jobs: Sequence[JobView]) -> dict[Tenant, int]:
    """Slots each quota-bound tenant may still take (tenants without a quota are absent)."""
    in_flight: dict[Tenant, int] = {}
    quota: dict[Tenant, int] = {}
    for job in jobs:
        in_flight[job.owner] = in_flight.get(job.owner, 0) + job.in_flight
        if job.owner_max_concurrent is not None:
            quota[job.owner] = job.owner_max_concurrent
    return {owner: max(0, limit - in_flight.get(owner, 0)) for owner, limit in quota.items()}


def _pick(
    jobs: list[JobView],
    granted: dict[uuid.UUID, int],
    room: dict[Tenant, int],
    tenant_vt: dict[Tenant, float],
    job_vt: dict[uuid.UUID, float],
) -> JobView | None:
    """The job with the smallest virtual time of the tenant with the smallest one, among those that can take more."""
    best: tuple[float, float, datetime, str] | None = None
    chosen: JobView | None = None
    for job in jobs:
        if job.backlog - granted.get(job.id, 0) <= 0 or room.get(job.owner, 1) <= 0:
            continue
        key = (tenant_vt.get(job.owner, 0.0), job_vt.get(job.id, 0.0), job.created_at, str(job.id))
        if best is None or key < best:
            best, chosen = key, job
    return chosen


def _fair_shares(jobs: list[JobView]) -> dict[uuid.UUID, float]:
    """Steady-state shares: tenants by weight, a tenant's jobs equally."""
    tenants: dict[Tenant, list[JobView]] = {}
    for job in jobs:
        tenants.setdefault(job.owner, []).append(job)
    total = sum(max(group[0].weight, 1e-9) for group in tenants.values())
    out: dict[uuid.UUID, float] = {}
    for group in tenants.values():
        tenant_share = max(group[0].weight, 1e-9) / total if total else 0.0
        for job in group:
            out[job.id] = tenant_share / len(group)
    return out
