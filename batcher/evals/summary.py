"""Per-model figures of a run: score, pass and error rates, latency percentiles, tokens and cost."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from batcher.evals.prices import Price, cost_usd, price_for
from batcher.evals.store import Outcome
from batcher.evals.suite import SuiteSpec


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(
    spec: SuiteSpec,
    rows: Sequence[Mapping[str, Any]],
    judge_usage: Mapping[str, Mapping[str, Outcome]],
    price_table: Mapping[str, Price],
) -> dict[str, Any]:
    """The run's summary as stored on it (JSON). Tokens and cost count what this run paid for:
    answers taken from the cache cost nothing and are counted under ``cached``; their latency,
    measured by an earlier run, is left out of the percentiles. ``judge_usage`` holds each judge's
    outcomes by request key (one request may judge several identical answers)."""
    models = []
    for m, model in enumerate(spec.models):
        mine = [r for r in rows if r["model_idx"] == m]
        fresh = [r for r in mine if r["output"] is not None and not r["cached"]]
        latencies = [float(r["latency_ms"]) for r in fresh if r["latency_ms"] is not None]
        prompt_tokens = sum(int(r["prompt_tokens"] or 0) for r in fresh)
        completion_tokens = sum(int(r["completion_tokens"] or 0) for r in fresh)
        price = price_for(model.model, override=model.price, table=price_table)
        errors = sum(1 for r in mine if r["output"] is None)
        scorers = {
            s.label: _mean([float(r["scores"][s.label]["score"]) for r in mine if r["scores"]]) for s in spec.scorers
        }
        models.append(
            {
                "model": model.label,
                "model_name": model.model,
                "items": len(mine),
                "score": _mean([float(r["score"]) for r in mine if r["score"] is not None]),
                "passed": sum(1 for r in mine if r["passed"]),
                "pass_rate": _mean([1.0 if r["passed"] else 0.0 for r in mine]),
                "errors": errors,
                "error_rate": errors / len(mine) if mine else None,
                "cached": sum(1 for r in mine if r["cached"]),
                "latency_p50_ms": percentile(latencies, 0.50),
                "latency_p95_ms": percentile(latencies, 0.95),
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_usd": cost_usd(price, prompt_tokens, completion_tokens),
                "scorers": scorers,
            }
        )
    judge_cost: float | None = 0.0
    judge_prompt = judge_completion = judge_requests = 0
    for judge in spec.judges:
        used = judge_usage.get(judge.label, {})
        fresh_judged = [o for o in used.values() if not o.cached and o.output is not None]
        p = sum(o.prompt_tokens or 0 for o in fresh_judged)
        c = sum(o.completion_tokens or 0 for o in fresh_judged)
        judge_prompt += p
        judge_completion += c
        judge_requests += len(used)
        cost = cost_usd(price_for(judge.model, override=judge.price, table=price_table), p, c)
        judge_cost = None if cost is None or judge_cost is None else judge_cost + cost
    return {
        "items": len({r["item_idx"] for r in rows}),
        "models": models,
        "judge": {
            "requests": judge_requests,
            "prompt_tokens": judge_prompt,
            "completion_tokens": judge_completion,
            "cost_usd": judge_cost if spec.judges else None,
        },
    }
