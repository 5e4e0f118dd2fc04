from __future__ import annotations

import random

import pytest

from batcher import RetryPolicy
from batcher._exceptions import (
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
)
from batcher._retry import MAX_RETRY_AFTER_S


def test_non_retryable_errors_are_never_retried() -> None:
    policy = RetryPolicy()
    for err in (BadRequestError("bad", status_code=400), AuthenticationError("no", status_code=401)):
        assert policy.decide(err, attempt=1) is None


@pytest.mark.parametrize(
    "err",
    [
        ProviderServerError("5xx"),
        ProviderTimeoutError("slow"),
        MalformedResponseError("<html>"),
        RateLimitError("429"),
    ],
)
def test_retryable_errors_back_off_until_the_budget_ends(err: Exception) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_base_s=1.0, backoff_max_s=60.0)
    rng = random.Random(1)
    first = policy.decide(err, attempt=1, rng=rng)  # type: ignore[arg-type]
    second = policy.decide(err, attempt=2, rng=rng)  # type: ignore[arg-type]
    assert first is not None and 0.5 <= first.delay_s <= 1.0
    assert second is not None and 1.0 <= second.delay_s <= 2.0
    assert policy.decide(err, attempt=3, rng=rng) is None  # type: ignore[arg-type]


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(max_attempts=50, backoff_base_s=1.0, backoff_max_s=10.0)
    assert all(5.0 <= policy.backoff_s(a) <= 10.0 for a in range(5, 40))


def test_retry_after_wins_and_is_capped() -> None:
    policy = RetryPolicy()
    told = policy.decide(RateLimitError("slow down", retry_after_s=7.0), attempt=1)
    assert told is not None and 7.0 <= told.delay_s <= 8.0
    huge = policy.decide(RateLimitError("slow down", retry_after_s=86_400.0), attempt=1)
    assert huge is not None and huge.delay_s <= MAX_RETRY_AFTER_S + 1.0
