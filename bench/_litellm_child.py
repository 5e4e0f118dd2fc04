"""LiteLLM's side of each workload, run as a child process against the same fake provider."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._protocol import serve

# No network here: LiteLLM must use the model cost map it ships instead of fetching one.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")

LITELLM_TIMEOUT_S = 60
"""LiteLLM's default is 600 s per request: one stuck connection (it happens, see FINDINGS.md) then
holds the whole batch for 10 minutes. 60 s is ample for a fake that answers in <= 2 s."""


def _litellm() -> Any:
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def batch(params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    litellm = _litellm()
    n, model = int(params["prompts"]), str(params["model"])
    conversations = [[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}] for i in range(n)]
    common = {"api_base": params["api_base"], "api_key": params["api_key"], "timeout": LITELLM_TIMEOUT_S}
    litellm.completion(model=model, messages=[{"role": "user", "content": "warm-up"}], **common)

    def body() -> dict[str, Any]:
        started = time.perf_counter()
        results = litellm.batch_completion(
            model=model, messages=conversations, max_workers=int(params["max_workers"]), **common
        )
        wall = time.perf_counter() - started
        errors: dict[str, int] = {}
        for r in results:
            if isinstance(r, BaseException):
                errors[type(r).__name__] = errors.get(type(r).__name__, 0) + 1
        return {"prompts": n, "ok": n - sum(errors.values()), "errors": errors, "wall_s": wall}

    return body


def race(params: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    litellm = _litellm()
    models = list(params["models"])
    common = {"api_base": params["api_base"], "api_key": params["api_key"]}

    def one(i: int) -> tuple[float, str]:
        started = time.perf_counter()
        response = litellm.batch_completion_models(
            models=models, messages=[{"role": "user", "content": f"Race {i}: hi"}], **common
        )
        return time.perf_counter() - started, str(response.model)

    one(-1)

    def body() -> dict[str, Any]:
        times, winners = [], []
        for i in range(int(params["calls"])):
            elapsed, winner = one(i)
            times.append(elapsed)
            winners.append(winner)
        return {
            "calls": len(times),
            "times_s": times,
            "median_s": statistics.median(times),
            "winners": sorted(set(winners)),
        }

    return body


WORKLOADS: dict[str, Callable[[dict[str, Any]], Callable[[], dict[str, Any]]]] = {"batch": batch, "race": race}

if __name__ == "__main__":
    serve(WORKLOADS[sys.argv[1]])
