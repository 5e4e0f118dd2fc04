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
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from batcher._keys import RATE_LIMIT_PREFIX

DEFAULT_WINDOW_S = 60.0
WINDOW_SAFETY_MARGIN_S = 0.5
"""Send times are taken before the request travels; a margin keeps the provider's own window happy."""
ADAPTIVE_FACTOR_MIN = 0.1
ADAPTIVE_DECREASE = 0.8
ADAPTIVE_MEMORY_S = 300
"""After this long without a 429, a bucket's learned reduction is forgotten."""
DEFER_JITTER_S = 0.05


class RateLimitSpec(BaseModel):
    """Limits of one bucket. ``window_s`` defaults to a minute (RPM / TPM)."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, description="requests per window")
    tpm: int | None = Field(None, ge=1, description="tokens per window (prompt estimate + max_tokens)")
    window_s: float = Field(DEFAULT_WINDOW_S, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitSpec:
        if self.rpm is None and self.tpm is None:
            raise ValueError("a rate limit needs rpm or tpm")
        return self


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


# KEYS: for each bucket, 3 keys: requests zset, tokens hash, adaptive factor.
# ARGV: now, member, n_buckets, then per bucket: rpm (0 = none), tpm (0 = none), window_s, cost.
# Returns 0 when taken (in every bucket), else the seconds to wait (as a string), taking nothing.
_ACQUIRE_LUA = """
local now = tonumber(ARGV[1])
local member = ARGV[2]
local n = tonumber(ARGV[3])
local wait = 0
for i = 0, n - 1 do
  local zkey, hkey, fkey = KEYS[i*3+1], KEYS[i*3+2], KEYS[i*3+3]
  local rpm = tonumber(ARGV[4+i*4]); local tpm = tonumber(ARGV[5+i*4])
  local window = tonumber(ARGV[6+i*4]); local cost = tonumber(ARGV[7+i*4])
  local factor = tonumber(redis.call('GET', fkey) or '1')
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
    local sec = math.floor(now)
    local used = 0
    local oldest_needed = nil
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
end
if wait > 0 then return tostring(wait) end
for i = 0, n - 1 do
  local zkey, hkey = KEYS[i*3+1], KEYS[i*3+2]
  local rpm = tonumber(ARGV[4+i*4]); local tpm = tonumber(ARGV[5+i*4])
  local window = tonumber(ARGV[6+i*4]); local cost = tonumber(ARGV[7+i*4])
  if rpm > 0 then
    redis.call('ZADD', zkey, now, member)
    redis.call('EXPIRE', zkey, math.ceil(window) + 1)
  end
  if tpm > 0 then
    redis.call('HINCRBY', hkey, tostring(math.floor(now)), cost)
    redis.call('EXPIRE', hkey, math.ceil(window) + 1)
  end
end
return 0
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


class RateLimiter:
    """Cluster-wide limiter over a Redis client (anything with ``register_script``)."""

    def __init__(self, redis_client: Any, limits: dict[str, RateLimitSpec]) -> None:
        self.limits = limits
        self._redis = redis_client
        self._acquire = redis_client.register_script(_ACQUIRE_LUA)
        self._penalize = redis_client.register_script(_PENALIZE_LUA)

    def buckets(self, provider: str, model: str, deployment: str) -> list[Bucket]:
        return buckets_for(self.limits, provider, model, deployment) if self.limits else []

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
