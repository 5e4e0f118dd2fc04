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


def test_the_first_success_takes_the_race_and_wakes_the_caller_and_a_later_one_does_not() -> None:
    """``win_race``: one script takes the race key and pushes the answer; another request's later answer
    pushes nothing; the winner's re-run (it died before storing) wakes the caller again."""
    from batcher import _wakeup

    client = fakeredis.FakeRedis()
    job = "00000000-0000-0000-0000-000000000002"
    keys = _wakeup.done_keys(job, first_response=True)

    assert _wakeup.win_race(client, job, 2, {"id": "answer-2"})
    event = _wakeup.wait(client, keys, 1)
    assert event is not None and event["event"] == "win" and event["idx"] == 2
    assert event["response"] == {"id": "answer-2"}
    assert 0 < client.ttl(_keys.race_win_key(job)) <= _keys.WAKE_TTL_S

    assert not _wakeup.win_race(client, job, 0, {"id": "answer-0"})  # too late: nothing pushed
    assert client.llen(_keys.race_win_key(job)) == 1
    assert int(client.get(_keys.race_first_key(job))) == 2

    assert _wakeup.win_race(client, job, 2, {"id": "answer-2"})  # the winner's re-run: woken again
    assert client.llen(_keys.race_win_key(job)) == 2
