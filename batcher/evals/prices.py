"""What answers cost: a small table of list prices, overridable in settings and in the suite.

Prices change; the table is a convenience for the common models, not a bill. A model found
nowhere costs "n/a" rather than a guess.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class Price(BaseModel):
    """List price in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)


DEFAULT_PRICES: Mapping[str, Price] = {
    # USD per 1M tokens, the providers' list prices (standard tier) as of 2025.
    "gpt-4o": Price(input=2.50, output=10.00),
    "gpt-4o-mini": Price(input=0.15, output=0.60),
    "gpt-4.1": Price(input=2.00, output=8.00),
    "gpt-4.1-mini": Price(input=0.40, output=1.60),
    "gpt-4.1-nano": Price(input=0.10, output=0.40),
    "o3-mini": Price(input=1.10, output=4.40),
    "o4-mini": Price(input=1.10, output=4.40),
    "gpt-3.5-turbo": Price(input=0.50, output=1.50),
    "claude-3-5-haiku-latest": Price(input=0.80, output=4.00),
    "claude-3-5-sonnet-latest": Price(input=3.00, output=15.00),
    "claude-3-7-sonnet-latest": Price(input=3.00, output=15.00),
    "claude-3-haiku-20240307": Price(input=0.25, output=1.25),
    "command-r": Price(input=0.15, output=0.60),
    "command-r-plus": Price(input=2.50, output=10.00),
}


def price_for(model: str, *, override: Price | None = None, table: Mapping[str, Price] | None = None) -> Price | None:
    """The suite's own price, else the settings' table, else the built-in one (with or without a
    ``provider/`` prefix); ``None`` when the model is in none of them."""
    if override is not None:
        return override
    bare = model.split("/", 1)[1] if "/" in model else model
    for source in (table or {}, DEFAULT_PRICES):
        for name in (model, bare):
            if name in source:
                return source[name]
    return None


def cost_usd(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    if price is None:
        return None
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def format_usd(value: float | None) -> str:
    """``$0.0123``; small amounts keep six decimals so a cheap run does not read as free."""
    if value is None:
        return "n/a"
    return f"${value:.4f}" if value == 0 or value >= 0.01 else f"${value:.6f}"
