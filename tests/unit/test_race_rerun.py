"""A race's winner wakes its caller before storing its answer; a re-run of that winner must not skip itself."""

from __future__ import annotations

from types import SimpleNamespace

import fakeredis

from batcher import _keys
from workers._execute import _race_won_by_another


def test_only_another_requests_win_makes_a_request_skip() -> None:
    ctx = SimpleNamespace(redis=fakeredis.FakeRedis())
    job = "00000000-0000-0000-0000-000000000001"
    assert not _race_won_by_another(ctx, job, 0)  # type: ignore[arg-type]  # nobody has won yet

    ctx.redis.set(_keys.race_first_key(job), 1)
    assert _race_won_by_another(ctx, job, 0)  # type: ignore[arg-type]
    # Request 1 woke its caller and died before its answer was stored: its re-run must run and store it.
    assert not _race_won_by_another(ctx, job, 1)  # type: ignore[arg-type]
