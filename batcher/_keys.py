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

BROKER_EPOCH_KEY = PREFIX + "broker:epoch"
"""Set by the recovery sweep; if it is gone, Redis lost its data and every queued request is re-enqueued."""

RATE_LIMIT_PREFIX = PREFIX + "ratelimit:"
"""Namespace handed to the shared rate limiter (per provider/model/deployment windows)."""

WAKE_TTL_S = 3_600
"""Wake lists and race keys expire an hour after their last write: the caller is long gone by then."""


def race_first_key(job_id: str) -> str:
    return f"{RACE_FIRST_PREFIX}{job_id}"


def race_win_key(job_id: str) -> str:
    return f"{RACE_WIN_PREFIX}{job_id}"


def job_done_key(job_id: str) -> str:
    return f"{JOB_DONE_PREFIX}{job_id}"
