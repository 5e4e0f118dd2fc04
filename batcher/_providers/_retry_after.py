"""How long a provider asked us to wait: ``Retry-After`` and the providers' rate-limit reset headers.

The standard headers come first, as the official SDKs read them (``_parse_retry_after_header``):
``retry-after-ms``, then ``retry-after`` as seconds or an HTTP-date. Then each registered
provider's own reset headers (``ProviderAdapter.rate_limit_wait``: OpenAI's
``x-ratelimit-reset-*`` durations, Anthropic's ``anthropic-ratelimit-*-reset`` timestamps), in
registration order, whichever route the answer came from: proxies and OpenAI-compatible
servers pass other providers' headers through.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable
from datetime import UTC, datetime

import httpx

__all__ = ["parse_duration", "pick_reset", "retry_after_seconds", "seconds_until"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


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
