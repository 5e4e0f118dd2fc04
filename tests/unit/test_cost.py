"""``response_cost`` (a plan per price entry) against genai-prices' own, uncached computation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from batcher._cost import response_cost, uncached_response_cost

# (prompt, completion, cached, cache write): plain, cache reads, past Anthropic's and Gemini's 200k
# tier, cache writes, nothing at all, and more cached than prompt tokens (genai-prices refuses: None).
COUNTS = [(1_234, 56, 0, 0), (5_000, 7, 1_200, 0), (300_000, 20, 1_000, 500), (0, 0, 0, 0), (10, 5, 20, 0)]
WHEN = datetime(2026, 12, 7, 13, 30, tzinfo=UTC)


def _snapshot_models() -> list[tuple[str, str]]:
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    return [(provider.id, model.id) for provider in snapshot.providers for model in provider.models]


def _both(
    provider: str, models: tuple[str, ...], counts: tuple[int, int, int, int], when: datetime
) -> tuple[object, ...]:
    prompt, completion, cached, write = counts
    kwargs = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "cache_write_tokens": write,
        "now": when,
    }
    return response_cost(provider, models, **kwargs), uncached_response_cost(provider, models, **kwargs)  # type: ignore[arg-type]


def test_every_model_of_the_snapshot_costs_what_genai_prices_computes() -> None:
    models = _snapshot_models()
    assert len(models) > 500  # the shipped snapshot, not an empty one
    differ = [
        (provider, model, counts, *costs)
        for provider, model in models
        for counts in COUNTS
        if (costs := _both(provider, (model,), counts, WHEN))[0] != costs[1]
    ]
    assert differ == []


@pytest.mark.parametrize(
    ("provider", "models"),
    [
        ("openai", ("gpt-4o-mini",)),
        ("anthropic", ("claude-sonnet-4-5",)),  # tiered past 200k input tokens
        ("openai", ("openai/gpt-4.1",)),  # the provider prefix is dropped
        ("openai", ("bench-w1", "gpt-4o")),  # the answer's model unknown, the route's known
        ("openai", ("bench-w1",)),  # unknown: None
        ("nobody", ("gpt-4o",)),  # unknown provider: None
        ("openai", ("", "gpt-4o-mini")),
    ],
)
def test_known_and_unknown_models_cost_the_same_as_uncached(provider: str, models: tuple[str, ...]) -> None:
    for counts in COUNTS:
        cached, uncached = _both(provider, models, counts, WHEN)
        assert cached == uncached
    if "bench-w1" in models[-1] or provider == "nobody":
        assert cached is None


def test_a_tier_crossing_changes_the_rate_of_every_token() -> None:
    under = response_cost("anthropic", ("claude-sonnet-4-5",), prompt_tokens=200_000, completion_tokens=0, now=WHEN)
    over = response_cost("anthropic", ("claude-sonnet-4-5",), prompt_tokens=200_001, completion_tokens=0, now=WHEN)
    assert under is not None and over is not None and over > 1.5 * under


def test_off_peak_prices_follow_the_time_of_the_answer_not_of_the_day() -> None:
    # DeepSeek's off-peak price (16:30-00:30 UTC) is half its day price: a cache keyed by the day
    # would give one of them for the whole day.
    peak, off_peak = (
        response_cost(
            "deepseek",
            ("deepseek-chat",),
            prompt_tokens=1_000,
            completion_tokens=100,
            now=datetime(2025, 3, 1, hour, tzinfo=UTC),
        )
        for hour in (3, 17)
    )
    assert peak is not None and off_peak is not None and off_peak < peak
    for hour, expected in ((3, peak), (17, off_peak)):
        cached, uncached = _both(
            "deepseek", ("deepseek-chat",), (1_000, 100, 0, 0), datetime(2025, 3, 1, hour, tzinfo=UTC)
        )
        assert cached == uncached == expected
