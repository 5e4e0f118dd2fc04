"""Retry policy as data: which failures are retried, how long to wait, how many attempts.

The worker asks ``RetryPolicy.decide(error, attempt)``; a ``Retry`` means "park the request
and enqueue its next attempt after ``delay_s``" (the worker slot is freed meanwhile), ``None``
means "store the failure now".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from batcher._exceptions import RateLimitError, RequestError

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_BASE_S = 1.0
DEFAULT_BACKOFF_MAX_S = 60.0
MAX_RETRY_AFTER_S = 600.0
"""A provider asking for a longer wait than this is capped; the broker's visibility timeout must exceed it."""


@dataclass(frozen=True, slots=True)
class Retry:
    delay_s: float


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter; ``Retry-After`` wins when the provider sends it."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before attempt ``attempt + 1`` (attempt counts from 1): uniform in [cap/2, cap]."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return (rng or random).uniform(cap / 2, cap)

    def decide(self, error: RequestError, attempt: int, rng: random.Random | None = None) -> Retry | None:
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if isinstance(error, RateLimitError) and error.retry_after_s is not None:
            # A little jitter so a burst of 429s with the same Retry-After does not return as a burst.
            wait = min(error.retry_after_s, MAX_RETRY_AFTER_S)
            return Retry(wait + (rng or random).uniform(0, min(1.0, wait * 0.1 + 0.05)))
        return Retry(self.backoff_s(attempt, rng))
