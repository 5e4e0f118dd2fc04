"""How long a provider asked us to wait: ``Retry-After`` and the providers' rate-limit reset headers.

The standard headers come first, as the official SDKs read them (``_parse_retry_after_header``):
``retry-after-ms``, then ``retry-after`` as seconds or an HTTP-date. Then each registered
provider's own reset headers (``ProviderAdapter.rate_limit_wait``: OpenAI's
``x-ratelimit-reset-*`` durations, Anthropic's ``anthropic-ratelimit-*-reset`` timestamps), in
registration order, whichever route the answer came from: proxies and OpenAI-compatible
servers pass other providers' headers through.

``rate_limit_info`` reads everything the answer says about the deployment's limits (what the
adaptive limiter learns from, ``batcher._ratelimit``) into one ``RateLimitInfo``: each provider
declares how to read its own headers (``ProviderAdapter.rate_limit_info``).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import httpx

__all__ = [
    "RateLimitInfo",
    "parse_count",
    "parse_duration",
    "pick_reset",
    "rate_limit_info",
    "retry_after_seconds",
    "seconds_until",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What one answer's headers say about its deployment's rate limits (None: not said).

    ``*_limit`` are per minute (the providers' RPM / TPM, their documented period); ``*_reset_s`` are
    seconds from the answer until that limit is replenished; ``retry_after_s`` is the standard
    ``retry-after`` / ``retry-after-ms``.
    """

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_s: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_s: float | None = None
    retry_after_s: float | None = None

    def exhausted_reset_s(self) -> float | None:
        """How long until an exhausted limit (remaining 0) is replenished: the longest such; None when
        nothing is exhausted or no reset time was given."""
        waits = [
            reset
            for remaining, reset in (
                (self.requests_remaining, self.requests_reset_s),
                (self.tokens_remaining, self.tokens_reset_s),
            )
            if remaining == 0 and reset is not None
        ]
        return max(waits) if waits else None

    @property
    def empty(self) -> bool:
        return self == _EMPTY


_EMPTY = RateLimitInfo()


def parse_count(value: str | None) -> int | None:
    """A non-negative integer header value (Azure sends ``-1`` for "no limit": None)."""
    if not value:
        return None
    try:
        n = int(float(value.strip()))
    except ValueError:
        return None
    return n if n >= 0 else None


def parse_duration(value: str) -> float | None:
    """Seconds in a Go-style duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``), as OpenAI
    sends in ``x-ratelimit-reset-*``. A bare number is taken as seconds."""
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(value) and pos > 0 else None


def seconds_until(when: datetime, now: datetime) -> float:
    """Seconds from ``now`` to ``when`` (never negative; a naive ``when`` is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def pick_reset(candidates: Iterable[tuple[float, bool]]) -> float | None:
    """The wait among (seconds until a limit resets, whether that limit is exhausted): a reset whose
    "remaining" is 0 is the limit that was hit, so the longest of those; else the longest of all."""
    found = list(candidates)
    exhausted = [s for s, hit in found if hit]
    pool = exhausted or [s for s, _ in found]
    return max(pool) if pool else None


def _standard(headers: httpx.Headers, now: datetime) -> float | None:
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                return seconds_until(email.utils.parsedate_to_datetime(raw), now)
            except (TypeError, ValueError, IndexError):
                pass
    return None


def rate_limit_info(headers: httpx.Headers, *, now: datetime | None = None) -> RateLimitInfo | None:
    """Everything ``headers`` say about the rate limits: the standard ``retry-after`` plus the first
    registered provider whose own headers are present (None: nothing at all)."""
    from batcher._providers._registry import PROVIDERS  # the registry imports the adapters, which import this

    now = now or datetime.now(UTC)
    found: RateLimitInfo | None = None
    for adapter in PROVIDERS.values():
        found = adapter.rate_limit_info(headers, now)
        if found is not None:
            break
    retry_after = _standard(headers, now) if ("retry-after" in headers or "retry-after-ms" in headers) else None
    if retry_after is not None:
        found = replace(found or _EMPTY, retry_after_s=retry_after)
    return found


def retry_after_seconds(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """How long the provider asked us to wait, from whichever header it sent, else None."""
    from batcher._providers._registry import PROVIDERS  # the registry imports the adapters, which import this

    now = now or datetime.now(UTC)
    wait = _standard(headers, now)
    if wait is not None:
        return wait
    for adapter in PROVIDERS.values():
        wait = adapter.rate_limit_wait(headers, now)
        if wait is not None:
            return wait
    return None
