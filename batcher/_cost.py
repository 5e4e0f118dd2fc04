"""What an answer cost in USD (``_hidden_params["response_cost"]``), from ``genai-prices``.

``genai-prices`` (pydantic's package of providers' list prices, shipped with its data: no network)
knows tiered prices, cache reads and writes and price changes over time; a model it does not know
(a local server's, a fine-tune) costs None rather than a guess, as ``batcher.evals.prices`` does
for its table. The model lookup is cached per (provider, model), misses included: a price is
~0.15 ms of CPU per answer, a failed lookup would cost as much again every time.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

__all__ = ["response_cost"]

PRICE_CACHE_ENTRIES = 65_536
"""Prices remembered per process (model, token counts, day): a few MB at most."""


@functools.lru_cache(maxsize=1024)
def _priced_model(provider: str, model: str) -> tuple[Any, Any] | None:
    from genai_prices import data_snapshot  # imported on first use: ~0.2 s

    snapshot = data_snapshot.get_snapshot()
    bare = model.split("/", 1)[1] if model.startswith(f"{provider}/") else model
    try:
        return snapshot.find_provider_model(bare, None, provider, None)  # type: ignore[no-any-return]
    except LookupError:
        return None


def response_cost(
    provider: str,
    models: tuple[str, ...],
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float | None:
    """The list price of one answer (the first of ``models`` that ``genai-prices`` knows for
    ``provider``), or None. ``prompt_tokens`` includes the cached and cache-write tokens.

    Remembered per model, token counts and UTC day (prices change by the day): ``calc_price`` costs
    ~0.2 ms of CPU, and a batch repeats the same few counts many times over.
    """
    day = datetime.now(UTC).date().toordinal()
    return _price(provider, models, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, day)


@functools.lru_cache(maxsize=PRICE_CACHE_ENTRIES)
def _price(
    provider: str,
    models: tuple[str, ...],
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    cache_write_tokens: int,
    day: int,
) -> float | None:
    from genai_prices import Usage

    for model in models:
        found = _priced_model(provider, model) if model else None
        if found is None:
            continue
        priced_provider, priced_model = found
        usage = Usage(
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            cache_read_tokens=cached_tokens or None,
            cache_write_tokens=cache_write_tokens or None,
        )
        try:
            price = priced_model.calc_price(usage, priced_provider, genai_request_timestamp=datetime.now(UTC))
        except (ValueError, ArithmeticError):  # counts the price table cannot take (cached > input, ...)
            return None
        return float(price.total_price)
    return None
