"""Every Redis key batcher uses, in one place.

Redis is transport and coordination only: every key here may vanish at any moment
(FLUSHALL, a restart without persistence) and batcher must still finish every job
from what Postgres holds. Keys therefore carry TTLs, and none is the only copy of a fact.
"""

from __future__ import annotations

PREFIX = "batcher:"

RACE_FIRST_PREFIX = PREFIX + "race:first:"
"""``SET NX`` by the first successful model of a fastest-response job; value = request index."""

RACE_WIN_PREFIX = PREFIX + "race:win:"
"""A list the race's caller ``BLPOP``s; the winner pushes its response here."""

JOB_DONE_PREFIX = PREFIX + "job:done:"
"""A list waiters ``BLPOP``; the finalizer pushes one event, and each reader pushes it back for the next."""

RATE_LIMIT_PREFIX = PREFIX + "ratelimit:"
"""Namespace handed to the shared rate limiter (per provider/model/deployment windows)."""

DISPATCH_EPOCH_KEY = PREFIX + "dispatch:epoch"
"""Set (without expiry) by the dispatcher once it has reconciled the broker with Postgres. Its absence
means Redis is new or lost its data (a flush, a restart without persistence): every request released
but not started is taken back into the backlog and released again (``batcher._dispatch``)."""

DISPATCH_WAKE_CHANNEL = PREFIX + "dispatch:wake"
"""Pub/sub channel: a submission or cancel wakes the dispatcher before its next tick (best effort)."""

DISPATCH_STANDING_KEY = PREFIX + "dispatch:standing"
"""A hash written by the dispatcher at each tick: job id -> JSON ``{"position", "ahead", "share",
"rate"}`` (``batcher._scheduling.Standing`` plus the job's completions per second). Expires after
``DISPATCH_STANDING_TTL_S``: no dispatcher, no standing (status shows none rather than a stale one)."""

DISPATCH_STANDING_TTL_S = 10

ADAPTIVE_PREFIX = PREFIX + "adaptive:"
"""``adaptive:<provider>/<model>``: the adaptive concurrency limit the workers learned for that model
(the sum over its deployments), an integer; the dispatcher releases no more of its requests at once
than this allows (``batcher._ratelimit``). Absent: no limit learned."""

WAKE_TTL_S = 3_600
"""Wake lists and race keys expire an hour after their last write: the caller is long gone by then."""


def race_first_key(job_id: str) -> str:
    return f"{RACE_FIRST_PREFIX}{job_id}"


def race_win_key(job_id: str) -> str:
    return f"{RACE_WIN_PREFIX}{job_id}"


def job_done_key(job_id: str) -> str:
    return f"{JOB_DONE_PREFIX}{job_id}"


def adaptive_key(provider: str, model: str) -> str:
    return f"{ADAPTIVE_PREFIX}{provider}/{model}"
