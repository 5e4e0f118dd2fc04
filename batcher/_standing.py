"""Where a job stands in line, as users read it: the dispatcher's published standing.

The dispatcher (``batcher._dispatch``) writes, at every tick, one hash (``DISPATCH_STANDING_KEY``):
job id -> JSON ``{"position", "ahead", "share", "rate"}`` (``batcher._scheduling.Standing`` plus the
job's completions per second), expiring after ``DISPATCH_STANDING_TTL_S``. Reading it is one
``HGET`` (``HMGET`` for a page of jobs). Anything missing or unreadable — no dispatcher running, Redis
away or flushed, a field of another shape — reads as *no standing* (``None``), never as an error: a
status is answered from Postgres alone rather than not at all, and shows nothing rather than a guess.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batcher._keys import DISPATCH_STANDING_KEY

log = logging.getLogger("batcher.standing")


@dataclass(frozen=True, slots=True)
class PublishedStanding:
    """One job's entry of the standing hash."""

    position: int
    """1 = its requests are released next (or now); 0 = it has no backlog."""
    ahead: int
    """Requests of other jobs that go before its next one."""
    share: float
    """The fraction of the cluster's slots it gets while the current jobs run (0-1)."""
    rate: float
    """Its completions per second, as the dispatcher measures them (0: not known yet)."""

    def eta_s(self, remaining: int) -> float | None:
        """Seconds until its ``remaining`` requests are done at ``rate`` (``None`` while the rate is unknown)."""
        if remaining <= 0:
            return 0.0
        if self.rate <= 0:
            return None
        return remaining / self.rate


def parse(raw: bytes | str | None) -> PublishedStanding | None:
    """An entry of the hash, or ``None`` for a missing or malformed one."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        standing = PublishedStanding(
            position=int(data["position"]),
            ahead=int(data["ahead"]),
            share=float(data["share"]),
            rate=float(data.get("rate") or 0.0),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not all(math.isfinite(v) for v in (standing.share, standing.rate)):
        return None
    return standing


def read(redis_client: Any, job_id: uuid.UUID | str) -> PublishedStanding | None:
    """One job's standing: one ``HGET``. Redis away (or no Redis) is ``None``."""
    if redis_client is None:
        return None
    try:
        raw = redis_client.hget(DISPATCH_STANDING_KEY, str(job_id))
    except Exception as exc:  # redis.RedisError, OSError: status must not fail for it
        log.debug("no standing for job %s: %s", job_id, exc)
        return None
    return parse(raw)


def read_many(redis_client: Any, job_ids: Sequence[uuid.UUID | str]) -> dict[str, PublishedStanding]:
    """The standing of each of ``job_ids`` that has one: one ``HMGET``. Redis away is ``{}``."""
    if redis_client is None or not job_ids:
        return {}
    try:
        raws = redis_client.hmget(DISPATCH_STANDING_KEY, [str(j) for j in job_ids])
    except Exception as exc:  # as in ``read``
        log.debug("no standings: %s", exc)
        return {}
    found = {}
    for job_id, raw in zip(job_ids, raws, strict=False):
        standing = parse(raw)
        if standing is not None:
            found[str(job_id)] = standing
    return found
