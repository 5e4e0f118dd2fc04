"""The adaptive concurrency limit's state machine: the take and release scripts against the test's private
Redis, with a controlled clock (AIMD with slow start, leases, pauses, learned windows, the published sum)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from batcher._exceptions import (
    BadRequestError,
    InvalidRequestError,
    ProviderConnectionError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
)
from batcher._keys import adaptive_key
from batcher._providers import RateLimitInfo
from batcher._ratelimit import (
    ADAPTIVE_MAX_PAUSE_S,
    ADAPTIVE_STATE_TTL_S,
    RateLimiter,
    RateLimitSpec,
    Slot,
    deployment_id,
    outcome_of,
)

T0 = 5_000_000.0
LEASE_S = 10.0


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:  # type: ignore[type-arg]
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _limiter(r: redis.Redis, **kw: object) -> RateLimiter:  # type: ignore[type-arg]
    kw.setdefault("initial_concurrency", 2)
    kw.setdefault("max_concurrency", 1_000)
    return RateLimiter(r, {}, adaptive=True, lease_margin_s=0.0, **kw)  # type: ignore[arg-type]


def _slot(limiter: RateLimiter, model: str | None = None, key: str = "k", buckets: list | None = None) -> Slot:  # type: ignore[type-arg]
    model = model or f"m-{uuid.uuid4().hex[:8]}"
    return limiter.slot("openai", model, deployment_id("http://h/v1", key), model, buckets or [])


def _limit(limiter: RateLimiter, slot: Slot) -> float:
    return float(limiter.state(slot)["limit"])


def test_slow_start_then_halving_then_additive_increase(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r)
    slot = _slot(limiter)
    now = T0
    # Slow start: under load (every released slot taken again at once) each success adds one.
    held = [limiter.take(slot, [], 1, lease_s=LEASE_S, now=now) for _ in range(2)]
    for done in range(1, 127):
        now += 0.01
        limiter.release(held.pop(0), None, now=now)
        while (g := limiter.take(slot, [], 1, lease_s=LEASE_S, now=now)).wait_s == 0:
            held.append(g)
        assert _limit(limiter, slot) == 2 + done
    assert len(held) == 128
    # A loss halves it, once: calls already in flight when it shrank do not shrink it again.
    for i, g in enumerate(held[:4]):
        limiter.release(g, RateLimitError("slow down"), now=now + 0.1 + i)
    assert _limit(limiter, slot) == 64
    for g in held[4:]:
        limiter.release(g, None, now=now + 5)  # started before the loss, in flight beyond the new limit
    now += 10
    # Past the first loss, growth is additive: one per round trip of a full window (limit successes).
    held = [limiter.take(slot, [], 1, lease_s=LEASE_S, now=now) for _ in range(int(_limit(limiter, slot)))]
    for _round in range(2):  # the first round only fills the slot: its first calls started on a quiet one
        start = _limit(limiter, slot)
        for _ in range(len(held)):
            limiter.release(held.pop(0), None, now=now)
            held.append(limiter.take(slot, [], 1, lease_s=LEASE_S, now=now))
    assert start + 0.9 < _limit(limiter, slot) < start + 1.1


def test_limit_caps_in_flight_and_floor_is_one(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r)
    slot = _slot(limiter)
    a, b = (limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0) for _ in range(2))
    third = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0)
    assert a.wait_s == b.wait_s == 0
    assert third.wait_s > 0 and third.why == "concurrency"
    limiter.release(a, ProviderServerError("boom"), now=T0 + 1)
    assert _limit(limiter, slot) == 1
    # In flight: b. Limit 1: nothing more until it returns.
    assert limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + 1).why == "concurrency"
    later = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + 2)
    assert later.why == "concurrency"
    limiter.release(b, ProviderServerError("boom"), now=T0 + 2)  # b started before the decrease: ignored
    assert _limit(limiter, slot) == 1
    c = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + 3)
    limiter.release(c, ProviderTimeoutError("slow"), now=T0 + 4)
    assert _limit(limiter, slot) == 1  # floor


def test_lease_of_a_dead_worker_expires(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r, initial_concurrency=1)
    slot = _slot(limiter)
    assert limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0).wait_s == 0  # never released: the worker died
    assert limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + LEASE_S - 1).why == "concurrency"
    assert limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + LEASE_S + 0.1).wait_s == 0


def test_ceilings_global_and_per_pattern(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r, initial_concurrency=50, max_concurrency=5)
    slot = _slot(limiter)
    grants = [limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0) for _ in range(6)]
    assert [g.wait_s == 0 for g in grants] == [True] * 5 + [False]
    pattern_limiter = RateLimiter(r, {"openai/capped-*": RateLimitSpec(max_concurrency=3)}, adaptive=True)
    model = f"capped-{uuid.uuid4().hex[:6]}"
    buckets = pattern_limiter.buckets("openai", model, "dep")
    capped = pattern_limiter.slot("openai", model, "dep", model, buckets)
    assert capped.ceiling == 3
    for _ in range(20):
        g = pattern_limiter.take(capped, buckets, 1, lease_s=LEASE_S, now=T0)
        pattern_limiter.release(g, None, now=T0)
    assert float(pattern_limiter.state(capped)["limit"]) == 3


def test_retry_after_pauses_the_deployment_and_nothing_else(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r)
    slot, other = _slot(limiter), _slot(limiter)
    g = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0)
    response = httpx.Response(429, headers={"retry-after": "7"})
    limiter.release(g, RateLimitError("slow down", response=response), now=T0 + 1)
    paused = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + 2)
    assert paused.why == "paused" and 6 - 0.01 < paused.wait_s < 6.2
    assert limiter.take(other, [], 1, lease_s=LEASE_S, now=T0 + 2).wait_s == 0  # another model: untouched
    assert limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + 8.01).wait_s == 0


def test_a_bogus_pause_is_capped(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r)
    slot = _slot(limiter)
    g = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0)
    g.info = RateLimitInfo(retry_after_s=86_400.0)
    limiter.release(g, RateLimitError("slow down"), now=T0)
    assert limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + ADAPTIVE_MAX_PAUSE_S + 0.01).wait_s == 0


def test_exhausted_limit_waits_for_its_reset(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r)
    slot = _slot(limiter)
    g = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0)
    g.info = RateLimitInfo(requests_limit=100, requests_remaining=0, requests_reset_s=3.0)
    limiter.release(g, None, now=T0)
    waiting = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + 1)
    assert waiting.why == "paused" and 2 <= waiting.wait_s < 2.2


def test_learned_rpm_becomes_the_window(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r, initial_concurrency=100)
    slot = _slot(limiter)
    g = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0)
    g.info = RateLimitInfo(requests_limit=5, requests_remaining=4, requests_reset_s=12.0)
    released = limiter.release(g, None, now=T0)
    assert released is not None and released.learned_changed
    assert limiter.state(slot)["rpm"] == "5"
    taken = [limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0 + 1 + i * 0.01) for i in range(6)]
    # The call that taught the limit is in the window: four more go, the fifth waits for the minute to pass.
    assert [t.wait_s == 0 for t in taken] == [True] * 4 + [False] * 2
    assert taken[-1].why == "window" and taken[-1].wait_s > 50
    g2 = taken[0]
    g2.info = RateLimitInfo(requests_limit=5, requests_remaining=3, requests_reset_s=12.0)
    again = limiter.release(g2, None, now=T0 + 2)
    assert again is not None and not again.learned_changed  # the same figure: no update


def test_configured_limit_stays_a_ceiling_under_a_higher_learned_one(r: redis.Redis) -> None:  # type: ignore[type-arg]
    model = f"conf-{uuid.uuid4().hex[:6]}"
    limiter = RateLimiter(r, {f"openai/{model}": RateLimitSpec(rpm=3, window_s=60)}, adaptive=True)
    buckets = limiter.buckets("openai", model, "dep")
    slot = limiter.slot("openai", model, "dep", model, buckets)
    g = limiter.take(slot, buckets, 1, lease_s=LEASE_S, now=T0)
    g.info = RateLimitInfo(requests_limit=1_000)
    limiter.release(g, None, now=T0)
    taken = [limiter.take(slot, buckets, 1, lease_s=LEASE_S, now=T0 + 1) for _ in range(3)]
    assert [t.wait_s == 0 for t in taken] == [True, True, False]
    assert taken[-1].why == "window"


def test_published_sum_over_deployments(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r, initial_concurrency=4)
    model = f"sum-{uuid.uuid4().hex[:6]}"
    a, b = _slot(limiter, model, key="a"), _slot(limiter, model, key="b")
    for slot in (a, b):
        g = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0)
        limiter.release(g, None, now=T0)  # 1 of 4 in use: no growth
    key = adaptive_key("openai", model)
    assert int(r.get(key) or 0) == 8
    assert 0 < r.ttl(key) <= ADAPTIVE_STATE_TTL_S
    g = limiter.take(a, [], 1, lease_s=LEASE_S, now=T0 + 1)
    limiter.release(g, ProviderServerError("boom"), now=T0 + 1)
    assert int(r.get(key) or 0) == 6


def test_state_lost_restarts_from_defaults(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter = _limiter(r, initial_concurrency=1)
    slot = _slot(limiter)
    held = limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0)
    assert limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0).why == "concurrency"
    r.delete(*(f"{slot.key}:{part}" for part in "slrt"))  # what a FLUSHALL does to this slot
    assert limiter.take(slot, [], 1, lease_s=LEASE_S, now=T0).wait_s == 0
    assert limiter.release(held, None, now=T0) is not None  # a lease Redis forgot is released harmlessly


def test_off_costs_nothing_and_keeps_the_old_backoff(r: redis.Redis) -> None:  # type: ignore[type-arg]
    off = RateLimiter(r, {}, adaptive=False)
    assert not off.active
    model = f"old-{uuid.uuid4().hex[:6]}"
    configured = RateLimiter(r, {f"openai/{model}": RateLimitSpec(rpm=10)}, adaptive=False)
    buckets = configured.buckets("openai", model, "dep")
    g = configured.take(None, buckets, 1, lease_s=LEASE_S, now=T0)
    assert g.wait_s == 0 and g.slot is None
    assert configured.release(g, RateLimitError("slow down"), now=T0) is None
    assert float(r.get(f"{buckets[0].key}:f") or 0) == pytest.approx(0.8)


def test_outcomes() -> None:
    assert outcome_of(None) == "ok"
    assert outcome_of(RateLimitError("x")) == "loss"
    assert outcome_of(ProviderServerError("x")) == "loss"
    assert outcome_of(ProviderTimeoutError("x")) == "loss"
    assert outcome_of(BadRequestError("x")) == "none"
    assert outcome_of(ProviderConnectionError("x")) == "none"
    assert outcome_of(InvalidRequestError("x")) == "none"  # a request that could not be sent
