"""What an answer cost in USD (``_hidden_params["response_cost"]``), from ``genai-prices``.

``genai-prices`` (pydantic's package of providers' list prices, shipped with its data: no network)
knows tiered prices, cache reads and writes and price changes over time (by date, and by time of
day: DeepSeek's off-peak prices); a model it does not know (a local server's, a fine-tune) costs
None rather than a guess, as ``batcher.evals.prices`` does for its table. Nothing in batcher's
settings overrides a list price.

The work is split by what changes how often:

* the model's entry, per (provider, model), misses included (``_priced_model``, bounded);
* the price in force, per answer (``ModelInfo.get_prices`` at the answer's time: < 1 µs);
* what each token count is billed as (``_Plan``), per price entry: genai-prices splits the counts
  into the leaves its price keys name (input tokens less the cache reads and writes when those have
  a price of their own, ...), a linear map it would work out again for every answer (~60 µs of its
  ~100 µs); the plan finds the map once by asking genai-prices' own split about unit counts;
* the arithmetic, per answer: genai-prices' own ``calc_unit_price`` per priced key, in its order,
  tiers chosen on the input tokens as it does; so the Decimal sum and its float are the same.

Anything the plan does not cover (counts that would make a leaf negative, a genai-prices without
the internals the plan reads) takes genai-prices' whole ``calc_price``, as before. The tests
compare the two for every model of the shipped snapshot.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = ["response_cost", "uncached_response_cost"]

PRICED_MODELS_CACHED = 1024
"""(provider, model) lookups remembered per process, misses included."""
PRICE_PLANS_CACHED = 4096
"""Price entries with a plan remembered per process (the shipped snapshot has fewer)."""

_TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


@functools.lru_cache(maxsize=PRICED_MODELS_CACHED)
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
    now: datetime | None = None,
) -> float | None:
    """The list price of one answer at ``now`` (default: now; the first of ``models`` that
    ``genai-prices`` knows for ``provider``), or None. ``prompt_tokens`` includes the cached and
    cache-write tokens."""
    counts = (prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens)
    now = now or datetime.now(UTC)
    for model in models:
        found = _priced_model(provider, model) if model else None
        if found is None:
            continue
        priced_provider, priced_model = found
        if priced_provider.id != "groq":  # groq bills some models by audio seconds: genai-prices' own path
            plan = _plan_for(priced_model.get_prices(now))
            if plan is not None:
                total = plan.total(counts)
                if total is not None:
                    return float(total)
        return _calc_price(priced_provider, priced_model, counts, now)
    return None


def uncached_response_cost(
    provider: str,
    models: tuple[str, ...],
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    now: datetime | None = None,
) -> float | None:
    """``response_cost`` as genai-prices alone computes it (no plan, no cache): the reference the
    tests hold ``response_cost`` to."""
    counts = (prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens)
    for model in models:
        found = _priced_model.__wrapped__(provider, model) if model else None  # the lookup, uncached
        if found is not None:
            return _calc_price(*found, counts, now or datetime.now(UTC))
    return None


def _calc_price(priced_provider: Any, priced_model: Any, counts: Sequence[int], now: datetime) -> float | None:
    from genai_prices import Usage

    prompt, completion, cached, cache_write = counts
    usage = Usage(
        input_tokens=prompt,
        output_tokens=completion,
        cache_read_tokens=cached or None,
        cache_write_tokens=cache_write or None,
    )
    try:
        price = priced_model.calc_price(usage, priced_provider, genai_request_timestamp=now)
    except (ValueError, ArithmeticError):  # counts the price table cannot take (cached > input, ...)
        return None
    return float(price.total_price)


@dataclass(frozen=True)
class _Plan:
    """One price entry's billing of token counts: per priced key (genai-prices' order), its price, the
    ``per`` it is quoted for, and its leaf count as ``constant + sum(coefficient * count)``."""

    terms: tuple[tuple[Any, int, int, tuple[int, ...]], ...]
    tiered: bool
    calc_unit_price: Callable[[Any, Any, Any, int], Decimal]

    def total(self, counts: Sequence[int]) -> Decimal | None:
        """The Decimal total genai-prices computes; None where it would refuse (a negative leaf)."""
        if min(counts) < 0:
            return None
        total = Decimal(0)
        total_input = counts[0] if self.tiered else 0
        for price, per, constant, coefficients in self.terms:
            leaf = constant + sum(c * n for c, n in zip(coefficients, counts, strict=True))
            if leaf < 0:
                return None
            total += self.calc_unit_price(price, leaf, total_input, per)
        return total


_plans: dict[int, tuple[Any, _Plan | None]] = {}
_plans_lock = threading.Lock()


def _plan_for(model_price: Any) -> _Plan | None:
    """The plan of a price entry (an object of the loaded snapshot, kept alive by it and by this cache)."""
    cached = _plans.get(id(model_price))
    if cached is not None and cached[0] is model_price:
        return cached[1]
    plan = _make_plan(model_price)
    with _plans_lock:
        if len(_plans) >= PRICE_PLANS_CACHED:
            _plans.clear()
        _plans[id(model_price)] = (model_price, plan)
    return plan


def _make_plan(model_price: Any) -> _Plan | None:
    """Ask genai-prices' own split of counts into leaves about unit counts (it is linear: a leaf is a
    count less its priced descendants' leaves); None when its internals are not the ones read here."""
    try:
        from genai_prices import Usage
        from genai_prices.types import (
            TieredPrices,
            _collect_resolved_model_prices,
            _compute_registry_priced_counts,
            calc_unit_price,
        )
        from genai_prices.units import _get_registry
        from genai_prices.validation import validate_priced_units

        registry = _get_registry()
        resolved = _collect_resolved_model_prices(model_price, registry)
        validate_priced_units(tuple(unit for unit, _ in resolved), registry)  # as calc_price does

        def leaves(values: Sequence[int]) -> dict[str, Any]:
            usage = Usage(**{k: v or None for k, v in zip(_TOKEN_KEYS, values, strict=True)})
            return dict(_compute_registry_priced_counts(resolved, usage))

        # Every probe keeps each leaf non-negative: cache reads and writes are part of the input.
        base = leaves((0, 0, 0, 0))
        probes = [leaves(p) for p in ((1, 0, 0, 0), (0, 1, 0, 0), (1, 0, 1, 0), (1, 0, 0, 1))]
        one_input = probes[0]
        terms = []
        for unit, price in resolved:
            key = unit.usage_key
            constant = _as_int(base.get(key))
            input_c = _as_int(one_input.get(key)) - constant
            output_c = _as_int(probes[1].get(key)) - constant
            read_c = _as_int(probes[2].get(key)) - _as_int(one_input.get(key))
            write_c = _as_int(probes[3].get(key)) - _as_int(one_input.get(key))
            terms.append((price, int(unit.per), constant, (input_c, output_c, read_c, write_c)))
        tiered = any(isinstance(price, TieredPrices) for _, price in resolved)
    except (ImportError, AttributeError, TypeError, KeyError, ValueError):
        return None
    return _Plan(tuple(terms), tiered, calc_unit_price)


def _as_int(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int) or (isinstance(value, Decimal | float) and value == int(value)):
        return int(value)
    raise ValueError(f"a leaf count that is not whole: {value!r}")
