"""Each provider's rate-limit headers read into one ``RateLimitInfo`` (the adaptive limiter's input), from the
examples of the providers' documentation, and the fake provider sending the same names and formats."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from batcher._providers import RateLimitInfo, get_adapter, rate_limit_info
from batcher.testing.formats import get_format

NOW = datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC)


def test_openai_rate_limits_guide_example() -> None:
    # OpenAI "Rate limits" guide, "Rate limits in headers".
    headers = httpx.Headers(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    info = rate_limit_info(headers, now=NOW)
    assert info == RateLimitInfo(60, 59, 1.0, 150000, 149984, 360.0)
    assert info.exhausted_reset_s() is None


def test_openai_millisecond_resets_and_an_exhausted_limit() -> None:
    headers = httpx.Headers(
        {
            "x-ratelimit-limit-requests": "5000",
            "x-ratelimit-limit-tokens": "160000",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-remaining-tokens": "159976",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-reset-tokens": "9ms",
        }
    )
    info = rate_limit_info(headers, now=NOW)
    assert info is not None
    assert info.requests_reset_s == pytest.approx(0.012)
    assert info.exhausted_reset_s() == pytest.approx(0.012)


def test_azure_no_limit_values_are_not_limits() -> None:
    headers = httpx.Headers({"x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "-1"})
    info = rate_limit_info(headers, now=NOW)
    assert info is not None and info.tokens_limit is None and info.tokens_remaining is None


def test_anthropic_rate_limits_page_headers() -> None:
    # Anthropic "Rate limits" page, "Response headers": limits, remaining, RFC 3339 resets.
    headers = httpx.Headers(
        {
            "anthropic-ratelimit-requests-limit": "1000",
            "anthropic-ratelimit-requests-remaining": "999",
            "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:01Z",
            "anthropic-ratelimit-input-tokens-limit": "80000",
            "anthropic-ratelimit-input-tokens-remaining": "79000",
            "anthropic-ratelimit-input-tokens-reset": "2025-01-01T00:00:02Z",
            "anthropic-ratelimit-output-tokens-limit": "16000",
            "anthropic-ratelimit-output-tokens-remaining": "0",
            "anthropic-ratelimit-output-tokens-reset": "2025-01-01T00:00:30+00:00",
        }
    )
    info = rate_limit_info(headers, now=NOW)
    assert info == RateLimitInfo(1000, 999, 1.0, 16000, 0, 30.0)
    assert info.exhausted_reset_s() == 30.0


def test_anthropic_tokens_header_is_the_most_restrictive_in_effect() -> None:
    headers = httpx.Headers(
        {
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "39000",
            "anthropic-ratelimit-tokens-reset": "2025-01-01T00:01:00Z",
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "10",
        }
    )
    info = rate_limit_info(headers, now=NOW)
    assert info is not None and (info.tokens_limit, info.tokens_remaining, info.tokens_reset_s) == (40000, 39000, 60.0)


def test_retry_after_seconds_http_date_and_ms() -> None:
    assert rate_limit_info(httpx.Headers({"retry-after": "20"}), now=NOW) == RateLimitInfo(retry_after_s=20.0)
    dated = rate_limit_info(httpx.Headers({"retry-after": "Wed, 01 Jan 2025 00:00:07 GMT"}), now=NOW)
    assert dated == RateLimitInfo(retry_after_s=7.0)
    both = rate_limit_info(httpx.Headers({"retry-after-ms": "1500", "retry-after": "2"}), now=NOW)
    assert both == RateLimitInfo(retry_after_s=1.5)
    with_limits = rate_limit_info(
        httpx.Headers({"retry-after": "3", "anthropic-ratelimit-requests-limit": "50"}), now=NOW
    )
    assert with_limits == RateLimitInfo(requests_limit=50, retry_after_s=3.0)


def test_nothing_said_is_none() -> None:
    assert rate_limit_info(httpx.Headers({"content-type": "application/json"}), now=NOW) is None
    # Cohere documents no rate-limit headers of its own: its hook is the contract's.
    assert get_adapter("cohere").rate_limit_info(httpx.Headers({"x-ratelimit-limit-requests": "5"}), NOW) is None


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_fake_sends_what_the_adapter_reads(provider: str) -> None:
    sent = get_format(provider).rate_limit_headers(120, 0, 0.5)
    info = get_adapter(provider).rate_limit_info(httpx.Headers(sent), datetime.now(UTC))
    assert info is not None
    assert (info.requests_limit, info.requests_remaining) == (120, 0)
    reset = info.exhausted_reset_s()
    # Anthropic's resets are RFC 3339 seconds: the fake rounds "in 0.5 s" up to the next whole second,
    # so the reset read back is up to 1.5 s away (never earlier than the real one).
    assert reset is not None and 0 <= reset <= 1.5
