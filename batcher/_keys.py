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

PUBLISHED_PREFIX = PREFIX + "published:"
"""How far a job's requests have been published to the broker: the next index to publish.

Written in the same atomic step as the messages it counts (one Lua script per chunk), so the
two are lost together when Redis loses its data: a missing key means "publish from the start",
and a present one means exactly that many were pushed. This is what makes publishing resumable
and idempotent (never two live messages for one request from two publishers)."""

PUBLISHED_TTL_S = 86_400
"""The recovery sweep re-arms it for every active job at every pass; the finalizer deletes it."""

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


def published_key(job_id: str) -> str:
    return f"{PUBLISHED_PREFIX}{job_id}"
