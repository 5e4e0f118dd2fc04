"""Rate limits shared by every worker process and machine, enforced in Redis by one atomic script.

Configured per ``provider/model`` pattern (``BATCHER_RATE_LIMITS``)::

    {"openai/gpt-4o-mini": {"rpm": 600, "tpm": 200000}, "anthropic/*": {"rpm": 50}}

Every pattern that matches a request's ``provider/model`` is a bucket, counted per
deployment (API base URL + a hash of the key, never the key), so two accounts never share
a window. A request asks all its buckets at once; the answer is "go" or "wait N seconds".
A worker told to wait does not sleep: it parks the request and re-enqueues it with a
countdown, so its slot serves other providers meanwhile.

Why a script rather than the ``limits`` library: we need (a) the *time to wait*, to defer
precisely, (b) several buckets checked and taken atomically, and (c) limits that shrink at
run time when a provider's 429s show the real limit is lower (adaptive back-off), which a
library keying its windows by the limit's amount cannot do without losing the window.

Requests use an exact moving window (a sorted set of send times); tokens use per-second
buckets in a hash (a window of counts, so a 1M-token limit costs 60 fields, not 1M entries).

**Adaptive concurrency (issue #15).** Per deployment of a model (provider, model, API base and a
hash of the key: ``Slot``), the number of requests in flight is bounded by a limit that every worker
of the cluster shares, kept in Redis and moved by two scripts, one round trip each: ``take`` before
the call (windows and a lease on an in-flight slot, atomically) and ``release`` after it (the lease
back, and the call's outcome as feedback):

* **AIMD with slow start**, as TCP's congestion window: a success grows the limit by one until the
  first loss (slow start: the limit doubles every round trip, so a fast provider reaches hundreds
  in flight within seconds), then by ``1/limit`` (one per round trip); a 429, a 5xx or a timeout
  halves it (``CONCURRENCY_DECREASE``), at most once per round trip: calls that were already in flight
  when it shrank do not shrink it again. Floor 1; ceiling ``BATCHER_ADAPTIVE_MAX_CONCURRENCY`` and the
  ``max_concurrency`` of any matching ``BATCHER_RATE_LIMITS`` pattern. A success grows the limit only
  if at least half of it was in use when the call started, so a lightly used deployment's limit does
  not drift to the ceiling (to drop at the first loss from a height it never used).
* **Learned limits.** Each provider module reads its rate-limit headers into a ``RateLimitInfo``
  (``ProviderAdapter.rate_limit_info``); the release stores the requests and tokens per minute they
  state, and the next ``take`` enforces them as one more window bucket of the deployment, with the
  configured buckets still in force (the effective limit is the smaller: configured limits stay
  ceilings). ``remaining: 0`` with a reset time, and a 429's ``retry-after``, pause the deployment
  until then, cluster-wide: every ``take`` answers "wait N s" and the worker defers, as for a window.
* **Leases, not counters**: an in-flight call is a member of a sorted set scored by its lease's
  expiry (the call's timeout plus ``BATCHER_LEASE_MARGIN_S``), so a worker killed mid-call holds its
  slot only until then. Every key has a TTL (``ADAPTIVE_STATE_TTL_S``, renewed by use): Redis losing
  them restarts the deployment from ``BATCHER_ADAPTIVE_INITIAL_CONCURRENCY`` with nothing in flight,
  and a pause never outlives ``ADAPTIVE_MAX_PAUSE_S``.
* The release also publishes the limit summed over a model's deployments at
  ``batcher._keys.adaptive_key(provider, model)`` (an integer, expiring after ``ADAPTIVE_STATE_TTL_S``),
  which the dispatcher reads to release no more of that model's requests than can run.

All state is per deployment of a model: a provider (or a model) that answers 429 slows nothing else.
``BATCHER_ADAPTIVE_CONCURRENCY=false`` turns it off (and the learning with it): the configured
windows alone apply, with their old back-off on a 429 (``penalize``), and a call with no configured
bucket costs no Redis round trip at all.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.exceptions import NoScriptError

from batcher._group import GroupRunner
from batcher._keys import RATE_LIMIT_PREFIX, adaptive_key

if TYPE_CHECKING:
    from batcher._providers._retry_after import RateLimitInfo

DEFAULT_WINDOW_S = 60.0
WINDOW_SAFETY_MARGIN_S = 0.5
"""Send times are taken before the request travels; a margin keeps the provider's own window happy."""
ADAPTIVE_FACTOR_MIN = 0.1
ADAPTIVE_DECREASE = 0.8
ADAPTIVE_MEMORY_S = 300
"""After this long without a 429, a bucket's learned reduction is forgotten."""
DEFER_JITTER_S = 0.05

DEFAULT_ADAPTIVE_MAX_CONCURRENCY = 1_000
"""The adaptive limit never grows past this (``BATCHER_ADAPTIVE_MAX_CONCURRENCY``)."""
DEFAULT_ADAPTIVE_INITIAL_CONCURRENCY = DEFAULT_ADAPTIVE_MAX_CONCURRENCY
"""A deployment nobody has heard from yet may have this many calls in flight: as many as the workers have
slots, as a plain client sends (issue #16). Its first answers' rate-limit headers bound it at once, a 429's
``retry-after`` pauses it cluster-wide, and each loss halves the limit (once per round trip: from 1,000, a
provider with neither header that refuses 200 calls in flight is held to them after three round trips of
losses). A lower value starts cautiously and ramps by slow start, which costs about log2(slots / value)
round trips of the provider: 32 held W2 (2 s calls, 500 slots) at ~1.36 times its ideal time."""
CONCURRENCY_DECREASE = 0.5
"""A loss (429, 5xx, timeout) multiplies the concurrency limit by this (AIMD's multiplicative decrease)."""
ADAPTIVE_UTILISATION = 0.5
"""A success grows the limit only while at least this share of it is in flight."""
ADAPTIVE_STATE_TTL_S = 600
"""A deployment's adaptive state (limit, learned limits, leases, the published sum) expires after this
long unused: it then starts from the defaults again."""
ADAPTIVE_MAX_PAUSE_S = 600.0
"""The longest a ``retry-after`` or an exhausted limit's reset pauses a deployment (a bogus header
must not stop it for a day)."""
ADAPTIVE_DEFAULT_LATENCY_S = 0.5
"""What a call is assumed to take before any was measured: how long a request over the concurrency limit
waits before it is tried again."""
ADAPTIVE_MIN_WAIT_S = 0.05
ADAPTIVE_LATENCY_WEIGHT = 0.2
"""Weight of the newest call in the deployment's moving average of latency."""
LEARNED_WINDOW_S = 60.0
"""Providers state their limits per minute (RPM, TPM)."""


class RateLimitSpec(BaseModel):
    """Limits of one bucket. ``window_s`` defaults to a minute (RPM / TPM)."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, description="requests per window")
    tpm: int | None = Field(None, ge=1, description="tokens per window (prompt estimate + max_tokens)")
    window_s: float = Field(DEFAULT_WINDOW_S, gt=0)
    max_concurrency: int | None = Field(None, ge=1, description="ceiling of the adaptive concurrency limit")

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitSpec:
        if self.rpm is None and self.tpm is None and self.max_concurrency is None:
            raise ValueError("a rate limit needs rpm, tpm or max_concurrency")
        return self

    @property
    def windowed(self) -> bool:
        """Whether this bucket counts anything in a window (a ``max_concurrency`` alone does not)."""
        return self.rpm is not None or self.tpm is not None


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    spec: RateLimitSpec


def deployment_id(api_base: str, api_key: str | None) -> str:
    """Identifies an account at an endpoint without revealing its key."""
    return hashlib.sha256(f"{api_base}\0{api_key or ''}".encode()).hexdigest()[:16]


def buckets_for(limits: dict[str, RateLimitSpec], provider: str, model: str, deployment: str) -> list[Bucket]:
    """Every configured bucket whose ``provider/model`` pattern matches this request."""
    name = f"{provider}/{model.removeprefix(provider + '/')}"
    return [
        Bucket(f"{RATE_LIMIT_PREFIX}{pattern}|{deployment}", spec)
        for pattern, spec in limits.items()
        if fnmatch.fnmatchcase(name, pattern)
    ]


def estimate_tokens(messages: Sequence[dict[str, Any]], params: dict[str, Any]) -> int:
    """Prompt tokens (~4 characters each) plus the completion budget, known before the call."""
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    budget = params.get("max_completion_tokens") or params.get("max_tokens") or 0
    return max(1, chars // 4) + int(budget)


_WINDOW_FUNCTIONS_LUA = """
-- Seconds until one more request (and cost tokens) fits this bucket's windows; 0: it fits now.
local function window_wait(zkey, hkey, factor, rpm, tpm, window, cost, now)
  local wait = 0
  if rpm > 0 then
    local limit = math.max(1, math.floor(rpm * factor))
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - window)
    if redis.call('ZCARD', zkey) >= limit then
      local oldest = redis.call('ZRANGE', zkey, -limit, -limit, 'WITHSCORES')
      local w = tonumber(oldest[2]) + window - now
      if w > wait then wait = w end
    end
  end
  if tpm > 0 then
    local limit = math.max(1, math.floor(tpm * factor))
    local used = 0
    local fields = redis.call('HGETALL', hkey)
    local secs = {}
    for j = 1, #fields, 2 do
      local s = tonumber(fields[j])
      if s <= now - window then
        redis.call('HDEL', hkey, fields[j])
      else
        used = used + tonumber(fields[j+1])
        table.insert(secs, {s, tonumber(fields[j+1])})
      end
    end
    if used + cost > limit and used > 0 then
      -- Wait until enough seconds age out; a request larger than the whole limit waits for an
      -- empty window and then goes alone.
      table.sort(secs, function(a, b) return a[1] < b[1] end)
      local freed = 0
      local w = secs[#secs][1] + 1 + window - now
      for _, e in ipairs(secs) do
        freed = freed + e[2]
        if used - freed + cost <= limit then
          w = e[1] + 1 + window - now
          break
        end
      end
      if w > wait then wait = w end
    end
  end
  return wait
end

local function window_take(zkey, hkey, rpm, tpm, window, cost, now, member)
  if rpm > 0 then
    redis.call('ZADD', zkey, now, member)
    redis.call('EXPIRE', zkey, math.ceil(window) + 1)
  end
  if tpm > 0 then
    redis.call('HINCRBY', hkey, tostring(math.floor(now)), cost)
    redis.call('EXPIRE', hkey, math.ceil(window) + 1)
  end
end
"""

# KEYS: for each bucket, 3 keys: requests zset, tokens hash, adaptive factor.
# ARGV: now, member, n_buckets, then per bucket: rpm (0 = none), tpm (0 = none), window_s, cost.
# Returns 0 when taken (in every bucket), else the seconds to wait (as a string), taking nothing.
_ACQUIRE_LUA = (
    _WINDOW_FUNCTIONS_LUA
    + """
local now = tonumber(ARGV[1])
local member = ARGV[2]
local n = tonumber(ARGV[3])
local wait = 0
for i = 0, n - 1 do
  local factor = tonumber(redis.call('GET', KEYS[i*3+3]) or '1')
  local w = window_wait(KEYS[i*3+1], KEYS[i*3+2], factor, tonumber(ARGV[4+i*4]), tonumber(ARGV[5+i*4]),
    tonumber(ARGV[6+i*4]), tonumber(ARGV[7+i*4]), now)
  if w > wait then wait = w end
end
if wait > 0 then return tostring(wait) end
for i = 0, n - 1 do
  window_take(KEYS[i*3+1], KEYS[i*3+2], tonumber(ARGV[4+i*4]), tonumber(ARGV[5+i*4]),
    tonumber(ARGV[6+i*4]), tonumber(ARGV[7+i*4]), now, member)
end
return 0
"""
)

# The adaptive take: a slot's state and leases, its learned windows, and the configured buckets.
# KEYS: state hash, leases zset, learned requests zset, learned tokens hash; then 2 per configured bucket
#       (requests zset, tokens hash).
# ARGV: now, member, lease expiry, initial limit, ceiling, ttl_s, learned window_s, cost, n_buckets,
#       then per bucket: rpm (0 = none), tpm (0 = none), window_s.
# Returns {"0", limit, in flight} when taken, else {seconds to wait, why} (paused, concurrency, window),
# taking nothing.
_TAKE_LUA = (
    _WINDOW_FUNCTIONS_LUA
    + """
local now = tonumber(ARGV[1]); local member = ARGV[2]; local expiry = tonumber(ARGV[3])
local initial = tonumber(ARGV[4]); local ceiling = tonumber(ARGV[5]); local ttl = tonumber(ARGV[6])
local lwindow = tonumber(ARGV[7]); local cost = tonumber(ARGV[8]); local n = tonumber(ARGV[9])
local st = redis.call('HMGET', KEYS[1], 'limit', 'paused_until', 'rpm', 'tpm', 'latency')
local limit = math.min(tonumber(st[1]) or initial, ceiling)
local paused = tonumber(st[2]) or 0
if paused > now then return {tostring(paused - now), 'paused'} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[2])
if inflight >= math.max(1, math.floor(limit)) then
  return {tostring(tonumber(st[5]) or 0), 'concurrency'}
end
local lrpm = tonumber(st[3]) or 0; local ltpm = tonumber(st[4]) or 0
local wait = window_wait(KEYS[3], KEYS[4], 1, lrpm, ltpm, lwindow, cost, now)
for i = 0, n - 1 do
  local w = window_wait(KEYS[5+i*2], KEYS[6+i*2], 1, tonumber(ARGV[10+i*3]), tonumber(ARGV[11+i*3]),
    tonumber(ARGV[12+i*3]), cost, now)
  if w > wait then wait = w end
end
if wait > 0 then return {tostring(wait), 'window'} end
redis.call('ZADD', KEYS[2], expiry, member)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[1], ttl)
-- Sends are counted before any limit is learned too, so the call that teaches one is in its window.
if lrpm == 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - lwindow) end
window_take(KEYS[3], KEYS[4], 1, ltpm, lwindow, cost, now, member)
for i = 0, n - 1 do
  window_take(KEYS[5+i*2], KEYS[6+i*2], tonumber(ARGV[10+i*3]), tonumber(ARGV[11+i*3]),
    tonumber(ARGV[12+i*3]), cost, now, member)
end
return {'0', tostring(limit), inflight + 1}
"""
)

# The adaptive release: the lease back and the call's outcome as feedback.
# KEYS: state hash, leases zset, the model's per-deployment limits hash, the model's published sum.
# ARGV: now, member, acquired_at, outcome (ok | loss | none), initial, ceiling, ttl_s, decrease,
#       utilisation, deployment, pause_until (0: none), learned rpm (0: none), learned tpm (0: none),
#       latency_s (negative: none), latency weight, calls in flight when this one was taken.
# Returns {limit, in flight, learned limits changed (0/1)}.
_RELEASE_LUA = """
local now = tonumber(ARGV[1]); local acquired = tonumber(ARGV[3]); local outcome = ARGV[4]
local initial = tonumber(ARGV[5]); local ceiling = tonumber(ARGV[6]); local ttl = tonumber(ARGV[7])
local st = redis.call('HMGET', KEYS[1], 'limit', 'ssthresh', 'decreased_at', 'paused_until', 'rpm', 'tpm',
  'latency')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local inflight = redis.call('ZCARD', KEYS[2])
local limit = math.min(tonumber(st[1]) or initial, ceiling)
if outcome == 'ok' then
  if tonumber(ARGV[16]) >= limit * tonumber(ARGV[9]) then
    local ssthresh = tonumber(st[2])
    if ssthresh == nil or limit < ssthresh then limit = limit + 1 else limit = limit + 1 / limit end
  end
elseif outcome == 'loss' then
  if acquired >= (tonumber(st[3]) or 0) then
    limit = math.max(1, limit * tonumber(ARGV[8]))
    redis.call('HSET', KEYS[1], 'ssthresh', tostring(limit), 'decreased_at', tostring(now))
  end
end
limit = math.max(1, math.min(limit, ceiling))
redis.call('HSET', KEYS[1], 'limit', tostring(limit))
local pause = tonumber(ARGV[11])
if pause > (tonumber(st[4]) or 0) then redis.call('HSET', KEYS[1], 'paused_until', tostring(pause)) end
local changed = 0
local rpm = tonumber(ARGV[12]); local tpm = tonumber(ARGV[13])
if rpm > 0 and rpm ~= tonumber(st[5]) then redis.call('HSET', KEYS[1], 'rpm', rpm); changed = 1 end
if tpm > 0 and tpm ~= tonumber(st[6]) then redis.call('HSET', KEYS[1], 'tpm', tpm); changed = 1 end
local latency = tonumber(ARGV[14])
if latency >= 0 then
  local avg = tonumber(st[7])
  if avg ~= nil then
    local weight = tonumber(ARGV[15])
    latency = avg + weight * (latency - avg)
  end
  redis.call('HSET', KEYS[1], 'latency', tostring(latency))
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('HSET', KEYS[3], ARGV[10], math.floor(limit) .. ' ' .. now)
local sum = 0
local fields = redis.call('HGETALL', KEYS[3])
for j = 1, #fields, 2 do
  local sep = string.find(fields[j+1], ' ')
  local seen = tonumber(string.sub(fields[j+1], sep + 1))
  if seen < now - ttl then
    redis.call('HDEL', KEYS[3], fields[j])
  else
    sum = sum + tonumber(string.sub(fields[j+1], 1, sep - 1))
  end
end
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('SET', KEYS[4], sum, 'EX', ttl)
return {tostring(limit), inflight, changed}
"""

# KEYS: the factor key of each bucket. ARGV: decrease, floor, memory_s.
_PENALIZE_LUA = """
for i = 1, #KEYS do
  local f = tonumber(redis.call('GET', KEYS[i]) or '1')
  f = math.max(tonumber(ARGV[2]), f * tonumber(ARGV[1]))
  redis.call('SET', KEYS[i], tostring(f), 'EX', tonumber(ARGV[3]))
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Slot:
    """One deployment of one model, as the adaptive limiter counts it (keys carry no secret: the
    deployment is a hash of base and key)."""

    provider: str
    model: str
    """The route's model name (what the provider sees), whose state this is."""
    deployment: str
    published_model: str
    """The request's ``model`` as stored, under which the sum is published (``adaptive_key``)."""
    ceiling: int

    @property
    def key(self) -> str:
        return f"{RATE_LIMIT_PREFIX}adaptive|{self.provider}/{self.model}|{self.deployment}"

    @property
    def short_id(self) -> str:
        """A metrics label: enough of the deployment hash to tell deployments apart."""
        return self.deployment[:8]


_ScriptCall = tuple[Any, list[str], list[Any]]
"""A script (``register_script``'s), its keys and its arguments."""

Outcome = str
"""``ok`` (grow), ``loss`` (shrink: 429, 5xx, timeout) or ``none`` (neither: a 400, a bad key...)."""


@dataclass(slots=True)
class Grant:
    """What ``RateLimiter.take`` answered: go (``wait_s == 0``), or wait that long first (``why``).

    Hand ``observe`` to the call as its ``on_headers``: the headers of the answer are read here, and
    ``release`` reports them."""

    wait_s: float
    why: str = ""
    slot: Slot | None = None
    buckets: Sequence[Bucket] = ()
    member: str = ""
    acquired_at: float = 0.0
    started: float = 0.0
    limit: float = 0.0
    in_flight: int = 0
    """Calls in flight once this one was taken: a success grows the limit only if the slot was busy."""
    info: RateLimitInfo | None = field(default=None)

    def observe(self, headers: Any) -> None:
        from batcher._providers._retry_after import rate_limit_info

        self.info = rate_limit_info(headers)


@dataclass(frozen=True, slots=True)
class Released:
    """The slot's state after a release (for the metrics)."""

    limit: float
    in_flight: int
    learned_changed: bool


class RateLimiter:
    """Cluster-wide limiter over a Redis client (anything with ``register_script``)."""

    def __init__(
        self,
        redis_client: Any,
        limits: dict[str, RateLimitSpec],
        *,
        adaptive: bool = False,
        initial_concurrency: int = DEFAULT_ADAPTIVE_INITIAL_CONCURRENCY,
        max_concurrency: int = DEFAULT_ADAPTIVE_MAX_CONCURRENCY,
        lease_margin_s: float = 30.0,
        grouped: bool = False,
    ) -> None:
        self.limits = limits
        self.adaptive = adaptive
        self.initial_concurrency = initial_concurrency
        self.max_concurrency = max_concurrency
        self.lease_margin_s = lease_margin_s
        self._redis = redis_client
        self._acquire = redis_client.register_script(_ACQUIRE_LUA)
        self._penalize = redis_client.register_script(_PENALIZE_LUA)
        self._take = redis_client.register_script(_TAKE_LUA)
        self._release = redis_client.register_script(_RELEASE_LUA)
        self._group: GroupRunner[_ScriptCall, Any] | None = None
        if grouped:  # a worker's threads: their scripts go to Redis together (one pipelined round trip)
            self._group = GroupRunner(self._run_scripts, name="batcher-limiter")

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run one of the scripts: alone, or with the other threads' queued calls (``grouped``)."""
        if self._group is None:
            return script(keys=keys, args=args)
        return self._group.submit((script, keys, args))

    def _run_scripts(self, calls: Sequence[_ScriptCall]) -> list[Any]:
        """The calls queued by many threads in one pipeline (no MULTI: each script is atomic on its own);
        each call's answer or error is its own. A script Redis does not hold (restarted empty) is loaded
        and run again by that call alone."""
        if len(calls) == 1:
            script, keys, args = calls[0]
            return [script(keys=keys, args=args)]
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        outcomes: list[Any] = []
        for (script, keys, args), answer in zip(calls, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(answer, NoScriptError):
                try:
                    answer = script(keys=keys, args=args)
                except Exception as exc:
                    answer = exc
            outcomes.append(answer)
        return outcomes

    @property
    def active(self) -> bool:
        """Whether calls need the limiter at all (else a call costs no round trip)."""
        return self.adaptive or bool(self.limits)

    def buckets(self, provider: str, model: str, deployment: str) -> list[Bucket]:
        return buckets_for(self.limits, provider, model, deployment) if self.limits else []

    def slot(self, provider: str, model: str, deployment: str, published_model: str, buckets: Sequence[Bucket]) -> Slot:
        """The adaptive slot of a deployment of a model; its ceiling is the smallest ``max_concurrency``."""
        ceiling = min(
            [self.max_concurrency, *(b.spec.max_concurrency for b in buckets if b.spec.max_concurrency is not None)]
        )
        name = model.removeprefix(provider + "/")
        return Slot(provider, name, deployment, published_model, ceiling)

    def take(
        self,
        slot: Slot | None,
        buckets: Sequence[Bucket],
        tokens: int,
        *,
        lease_s: float,
        now: float | None = None,
    ) -> Grant:
        """Before a call: one round trip that takes a lease on an in-flight slot and a place in every
        window (configured and learned), or says how long to wait first (taking nothing)."""
        windowed = [b for b in buckets if b.spec.windowed]
        if slot is None:
            return Grant(self.acquire(windowed, tokens, now=now), "window", None, windowed)
        at = now if now is not None else time.time()
        member = uuid.uuid4().hex
        key = slot.key
        keys = [f"{key}:s", f"{key}:l", f"{key}:r", f"{key}:t"]
        args: list[Any] = [
            at,
            member,
            at + lease_s + self.lease_margin_s,
            self.initial_concurrency,
            slot.ceiling,
            ADAPTIVE_STATE_TTL_S,
            LEARNED_WINDOW_S + WINDOW_SAFETY_MARGIN_S,
            tokens,
            len(windowed),
        ]
        for bucket in windowed:
            keys += [f"{bucket.key}:r", f"{bucket.key}:t"]
            spec = bucket.spec
            args += [spec.rpm or 0, spec.tpm or 0, spec.window_s + WINDOW_SAFETY_MARGIN_S]
        answer = self._call(self._take, keys, args)
        wait = float(_text(answer[0]))
        if wait > 0 or _text(answer[1]) == "concurrency":
            why = _text(answer[1])
            if why == "concurrency":
                # No reset time: come back after about one call's time, spread so that the waiting do
                # not all return at once.
                base = max(ADAPTIVE_MIN_WAIT_S, wait or ADAPTIVE_DEFAULT_LATENCY_S)
                return Grant(base * (0.5 + random.random()), why, slot, windowed)
            return Grant(wait + DEFER_JITTER_S * (1 + random.random()), why, slot, windowed)
        return Grant(0.0, "", slot, windowed, member, at, time.perf_counter(), float(_text(answer[1])), int(answer[2]))

    def release(
        self,
        grant: Grant,
        err: BaseException | None,
        *,
        now: float | None = None,
        then: Callable[[Released | BaseException], None] | None = None,
    ) -> Released | None:
        """After a call (``err``: how it failed, None: it succeeded): one round trip that gives the lease
        back and reports how the call went (``outcome_of``, the limits its headers stated, how long it
        took). Without a slot (adaptive off), a 429 shrinks the configured windows instead
        (``penalize``), and nothing else is sent.

        With ``then`` on a grouped limiter (a worker's threads), the release is posted: queued for the
        next round trip and this returns None at once; ``then`` gets the slot's state after it (or the
        exception) on the limiter's thread. The calling thread has nothing to wait for: a lease the
        release never reaches Redis for (the process died first) expires by itself."""
        from batcher._exceptions import RateLimitError

        slot = grant.slot
        if slot is None:
            if isinstance(err, RateLimitError) and grant.buckets:
                self.penalize(grant.buckets)
            return None
        outcome = outcome_of(err)
        if grant.info is None and err is not None:
            response = getattr(err, "response", None)
            if response is not None and response.headers:
                grant.observe(response.headers)
        at = now if now is not None else time.time()
        info = grant.info
        pause_until = 0.0
        rpm = tpm = 0
        if info is not None:
            waits = [w for w in (info.retry_after_s, info.exhausted_reset_s()) if w is not None and w > 0]
            if waits:
                pause_until = at + min(max(waits), ADAPTIVE_MAX_PAUSE_S)
            rpm = info.requests_limit or 0
            tpm = info.tokens_limit or 0
        latency = time.perf_counter() - grant.started if outcome == "ok" and grant.started else -1.0
        key = slot.key
        call: _ScriptCall = (
            self._release,
            [f"{key}:s", f"{key}:l", _published_hash(slot), adaptive_key(slot.provider, slot.published_model)],
            [
                at,
                grant.member,
                grant.acquired_at,
                outcome,
                self.initial_concurrency,
                slot.ceiling,
                ADAPTIVE_STATE_TTL_S,
                CONCURRENCY_DECREASE,
                ADAPTIVE_UTILISATION,
                slot.deployment,
                pause_until,
                rpm,
                tpm,
                latency,
                ADAPTIVE_LATENCY_WEIGHT,
                grant.in_flight,
            ],
        )
        if then is not None and self._group is not None:
            done = then
            self._group.post(
                call, lambda answer: done(answer if isinstance(answer, BaseException) else _released(answer))
            )
            return None
        return _released(self._call(*call))

    def drain(self, timeout_s: float) -> bool:
        """Send the posted releases still queued (a worker's graceful shutdown); False if ``timeout_s`` passed."""
        return self._group.drain(timeout_s) if self._group is not None else True

    def state(self, slot: Slot) -> dict[str, str]:
        """A slot's adaptive state as stored (tests, diagnostics)."""
        raw = self._redis.hgetall(f"{slot.key}:s")
        return {_text(k): _text(v) for k, v in raw.items()}

    def acquire(self, buckets: Sequence[Bucket], tokens: int, now: float | None = None) -> float:
        """Take one request (and ``tokens``) from every bucket; 0.0, or the seconds to wait first."""
        if not buckets:
            return 0.0
        keys: list[str] = []
        args: list[Any] = [now if now is not None else time.time(), uuid.uuid4().hex, len(buckets)]
        for bucket in buckets:
            keys += [f"{bucket.key}:r", f"{bucket.key}:t", f"{bucket.key}:f"]
            spec = bucket.spec
            args += [spec.rpm or 0, spec.tpm or 0, spec.window_s + WINDOW_SAFETY_MARGIN_S, tokens]
        wait = float(self._acquire(keys=keys, args=args))
        return wait + DEFER_JITTER_S if wait > 0 else 0.0

    def penalize(self, buckets: Sequence[Bucket]) -> None:
        """The provider said 429: shrink these buckets' limits for a while (multiplicative decrease)."""
        if buckets:
            self._penalize(
                keys=[f"{b.key}:f" for b in buckets],
                args=[ADAPTIVE_DECREASE, ADAPTIVE_FACTOR_MIN, ADAPTIVE_MEMORY_S],
            )


def outcome_of(err: BaseException | None) -> Outcome:
    """What a call's end says about the deployment's capacity: a success grows the limit; a 429, a 5xx
    (overloaded, an error of its own) or a timeout (a queue building up at the provider) shrinks it;
    anything else (a bad request, a bad key, a refused connection: not a matter of load) does neither."""
    from batcher._exceptions import ProviderServerError, ProviderTimeoutError, RateLimitError

    if err is None:
        return "ok"
    if isinstance(err, RateLimitError | ProviderServerError | ProviderTimeoutError):
        return "loss"
    return "none"


def _released(answer: Any) -> Released:
    return Released(float(_text(answer[0])), int(answer[1]), bool(int(answer[2])))


def _published_hash(slot: Slot) -> str:
    return f"{RATE_LIMIT_PREFIX}adaptive-sum|{slot.provider}/{slot.published_model}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
