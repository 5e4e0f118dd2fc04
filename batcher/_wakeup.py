"""Wake-ups: how a waiting caller learns, without polling, that its job finished or its race was won.

The protocol, in one place for its three parties (the worker that announces, the Python client and
the HTTP service that wait):

* an event is a small JSON object pushed on a per-job Redis list (``batcher:job:done:<job>``,
  ``batcher:race:win:<job>``), whose expiry is (re)armed with every push;
* a waiter ``BLPOP``s the lists it cares about and **pushes the event back** (expiry re-armed: the
  pop may have deleted the list and its TTL), so every other waiter of the same job sees it too;
* a race's winner takes the race's first-result key and pushes its answer in one script
  (``win_race``), before its answer is durably stored;
* Redis may lose an event at any moment: waiters wake at least every ``WAIT_SLICE_S`` to re-read
  Postgres, which always knows the truth. A lost wake-up costs latency, never correctness.
"""

from __future__ import annotations

import json
import time
import weakref
from typing import Any

from batcher import _keys

WAIT_SLICE_S = 1.0
"""Longest a waiter blocks on Redis before it reads Postgres again (events may be lost)."""

Event = dict[str, Any]


def announce_done(client: Any, job_id: str, state: str) -> None:
    """The job reached its final ``state`` (the finalizer, and a cancel that finalizes at once)."""
    _push(client, _keys.job_done_key(job_id), {"event": "done", "state": state, "at": time.time()})


# KEYS: the race's first-result key, its win list.  ARGV: the request's index, the win event, the TTL.
# First success wins (SET NX), or this request won already (an earlier attempt that died before storing):
# either way the event is (re)pushed and its list's expiry re-armed; another request's win pushes nothing.
_WIN_LUA = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then
    if redis.call('GET', KEYS[1]) ~= ARGV[1] then
        return 0
    end
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""
_win_scripts: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def win_race(client: Any, job_id: str, idx: int, response: dict[str, Any]) -> bool:
    """Take a race's first-result key for request ``idx`` and hand its answer to the waiting caller, in one
    round trip (a script): True when ``idx`` is the winner (now, or by an earlier attempt of its own),
    False when another request won (nothing is pushed then)."""
    script = _win_scripts.get(client)
    if script is None:
        script = _win_scripts[client] = client.register_script(_WIN_LUA)
    event = json.dumps({"event": "win", "idx": idx, "response": response})
    keys = [_keys.race_first_key(job_id), _keys.race_win_key(job_id)]
    return bool(script(keys=keys, args=[idx, event, _keys.WAKE_TTL_S]))


def done_keys(job_id: str, *, first_response: bool = False) -> list[str]:
    """The lists a waiter watches: the job's end, and with ``first_response`` its race's win too."""
    keys = [_keys.job_done_key(job_id)]
    return [_keys.race_win_key(job_id), *keys] if first_response else keys


def wait(client: Any, keys: list[str], timeout_s: float) -> Event | None:
    """Block up to ``timeout_s`` for an event on ``keys``; returns it (left for others), or ``None``."""
    item = client.blpop(keys, timeout=_blpop_timeout(timeout_s))
    if item is None:
        return None
    key, raw = item
    _rearmed_push(client, key, raw).execute()
    return _decode(raw)


async def await_event(client: Any, keys: list[str], timeout_s: float) -> Event | None:
    """``wait`` for an asyncio Redis client (``redis.asyncio``, or fakeredis' in embedded mode): the
    HTTP service's long-polled wait and ``AsyncJob.wait`` hold no thread while they block."""
    item = await client.blpop(keys, timeout=_blpop_timeout(timeout_s))
    if item is None:
        return None
    key, raw = item
    await _rearmed_push(client, key, raw).execute()
    return _decode(raw)


def _blpop_timeout(timeout_s: float) -> float:
    return max(timeout_s, 0.01)  # 0 would block forever


def _push(client: Any, key: str, event: Event) -> None:
    _rearmed_push(client, key, json.dumps(event)).execute()


def _rearmed_push(client: Any, key: Any, raw: Any) -> Any:
    """A pipeline (not yet executed: sync or asyncio) pushing ``raw`` on ``key`` and re-arming its expiry."""
    pipe = client.pipeline()
    pipe.rpush(key, raw)
    pipe.expire(key, _keys.WAKE_TTL_S)
    return pipe


def _decode(raw: Any) -> Event | None:
    try:
        event = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return event if isinstance(event, dict) else None
