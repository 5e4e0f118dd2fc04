"""The shared limiter's Lua script against real Redis, with a controlled clock."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from batcher._ratelimit import (
    WINDOW_SAFETY_MARGIN_S,
    RateLimiter,
    RateLimitSpec,
    Released,
    buckets_for,
    deployment_id,
    estimate_tokens,
)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:  # type: ignore[type-arg]
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _limiter(r: redis.Redis, spec: RateLimitSpec) -> tuple[RateLimiter, list]:  # type: ignore[type-arg]
    pattern = f"openai/test-{uuid.uuid4().hex[:6]}*"
    limiter = RateLimiter(r, {pattern: spec})
    buckets = limiter.buckets("openai", pattern.rstrip("*") + "x", deployment_id("http://h/v1", "k"))
    assert len(buckets) == 1
    return limiter, buckets


def test_requests_moving_window(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter, buckets = _limiter(r, RateLimitSpec(rpm=3, window_s=10))
    t0 = 1_000_000.0
    assert [limiter.acquire(buckets, 1, now=t0 + i) for i in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire(buckets, 1, now=t0 + 3)
    # The oldest send (t0) leaves the window at t0 + 10 (+ margin): 7 s from t0 + 3.
    assert wait == pytest.approx(7 + WINDOW_SAFETY_MARGIN_S, abs=0.1)
    assert limiter.acquire(buckets, 1, now=t0 + 10 + WINDOW_SAFETY_MARGIN_S + 0.01) == 0.0


def test_tokens_window_and_oversized_request(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter, buckets = _limiter(r, RateLimitSpec(tpm=100, window_s=10))
    t0 = 2_000_000.0
    assert limiter.acquire(buckets, 60, now=t0) == 0.0
    assert limiter.acquire(buckets, 60, now=t0 + 1) > 0  # 120 > 100
    assert limiter.acquire(buckets, 40, now=t0 + 1) == 0.0  # exactly 100
    assert limiter.acquire(buckets, 500, now=t0 + 2) > 0  # larger than the limit waits for an empty window
    assert limiter.acquire(buckets, 500, now=t0 + 30) == 0.0  # and then goes alone


def test_penalize_shrinks_the_limit(r: redis.Redis) -> None:  # type: ignore[type-arg]
    limiter, buckets = _limiter(r, RateLimitSpec(rpm=10, window_s=60))
    t0 = 3_000_000.0
    limiter.penalize(buckets)  # 10 -> 8
    taken = sum(1 for i in range(10) if limiter.acquire(buckets, 1, now=t0 + i * 0.01) == 0.0)
    assert taken == 8


def test_bucket_matching_and_deployments() -> None:
    limits = {
        "openai/*": RateLimitSpec(rpm=1),
        "openai/gpt-4o": RateLimitSpec(rpm=2),
        "anthropic/*": RateLimitSpec(rpm=3),
    }
    keys = [b.spec.rpm for b in buckets_for(limits, "openai", "gpt-4o", "d1")]
    assert keys == [1, 2]
    assert buckets_for(limits, "cohere", "command-r", "d1") == []
    assert deployment_id("http://a", "k1") != deployment_id("http://a", "k2")
    assert "k1" not in deployment_id("http://a", "k1")


def test_token_estimate_counts_prompt_and_budget() -> None:
    assert estimate_tokens([{"role": "user", "content": "x" * 400}], {"max_tokens": 50}) == 150


def test_a_workers_threads_take_and_release_together_each_with_its_own_answer(r: redis.Redis) -> None:  # type: ignore[type-arg]
    """``grouped``: the threads' scripts share pipelined round trips; each call gets its own answer, the
    slot counts every lease exactly once, and a script Redis lost (restarted empty) is loaded again."""
    limiter = RateLimiter(r, {}, adaptive=True, initial_concurrency=8, grouped=True)
    slot = limiter.slot("openai", f"grp-{uuid.uuid4().hex[:6]}", deployment_id("http://h/v1", "k"), "m", [])
    r.script_flush()
    start = threading.Barrier(20)
    grants = []
    lock = threading.Lock()

    def take() -> None:
        start.wait(30)
        grant = limiter.take(slot, [], 1, lease_s=60)
        with lock:
            grants.append(grant)

    threads = [threading.Thread(target=take) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    taken = [g for g in grants if g.wait_s == 0]
    assert len(grants) == 20 and len(taken) == 8  # the initial limit, whatever the grouping
    assert sorted(g.in_flight for g in taken) == list(range(1, 9))
    released = [limiter.release(g, None) for g in taken]
    assert all(rel is not None for rel in released)
    assert r.zcard(f"{slot.key}:l") == 0


def test_a_posted_release_gives_the_lease_back_without_the_caller_waiting(r: redis.Redis) -> None:  # type: ignore[type-arg]
    """A worker's thread posts its release and goes on to store its answer: the lease is back in Redis once
    the limiter's thread has run it, the callback gets the slot's state, and a drain (shutdown) sends what
    is still queued."""
    limiter = RateLimiter(r, {}, adaptive=True, initial_concurrency=2, grouped=True)
    slot = limiter.slot("openai", f"posted-{uuid.uuid4().hex[:6]}", deployment_id("http://h/v1", "k"), "m", [])
    first, second = limiter.take(slot, [], 1, lease_s=60), limiter.take(slot, [], 1, lease_s=60)
    assert first.wait_s == 0 and second.wait_s == 0
    assert limiter.take(slot, [], 1, lease_s=60).wait_s > 0  # both slots held
    outcomes: list[object] = []
    done = threading.Event()

    def then(outcome: object) -> None:
        outcomes.append(outcome)
        if len(outcomes) == 2:
            done.set()

    assert limiter.release(first, None, then=then) is None  # posted: nothing to wait for here
    assert limiter.release(second, None, then=then) is None
    assert limiter.drain(30) and done.wait(30)
    assert r.zcard(f"{slot.key}:l") == 0
    assert all(isinstance(o, Released) for o in outcomes)
    assert limiter.take(slot, [], 1, lease_s=60).wait_s == 0  # the slots are free again
