"""Every knob of the benchmark in one place: sizes, latencies, models, slots and the rate limit."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from batcher._config import DEFAULT_WORKER_CONCURRENCY

API_KEY = "sk-bench-0123456789abcdef"
"""The fake provider accepts any key; this one is shared by batcher's workers and LiteLLM."""

# One model name per workload, so the fake provider's per-model behaviour is the workload's.
W1_MODEL = "openai/bench-w1"
W2_MODEL = "openai/bench-w2"
RACE_MODELS = ("openai/bench-fast", "openai/bench-mid", "openai/bench-slow")
RL_MODEL = "openai/bench-rl"

W1_LATENCY_MS = 100
W2_LATENCY_MS = 2_000
RACE_LATENCIES_MS = (50, 200, 500)
RL_LATENCY_MS = 100

# --- the shared rate limit (issue #3) -------------------------------------------------------
# ONE definition, used both for the fake provider's own limit and for batcher's limiter
# (``BATCHER_RATE_LIMITS``, see ``batcher/_ratelimit.py``). A 10 s window keeps the run short;
# the limiter and the fake treat it exactly like a 60 s RPM window.
RL_LIMIT = 500
"""Requests the provider accepts per window."""
RL_WINDOW_S = 10.0


def rate_limits_setting() -> dict[str, dict[str, Any]]:
    """The value of ``BATCHER_RATE_LIMITS`` for the workers (JSON-encoded into their environment)."""
    return {RL_MODEL: {"rpm": RL_LIMIT, "window_s": RL_WINDOW_S}}


def model_name(model: str) -> str:
    """The name the provider sees (both batcher and LiteLLM strip the ``openai/`` prefix)."""
    return model.split("/", 1)[1]


def fake_provider_config() -> dict[str, Any]:
    """``FakeProviderConfig`` of the whole run: each workload's model and its latency."""
    models: dict[str, Any] = {
        model_name(W1_MODEL): {"latency_ms": W1_LATENCY_MS},
        model_name(W2_MODEL): {"latency_ms": W2_LATENCY_MS},
        model_name(RL_MODEL): {"latency_ms": RL_LATENCY_MS, "rpm_limit": RL_LIMIT},
    }
    for model, ms in zip(RACE_MODELS, RACE_LATENCIES_MS, strict=True):
        models[model_name(model)] = {"latency_ms": ms}
    return {
        "models": models,
        "rpm_window_s": RL_WINDOW_S,
        # Recording bodies and headers of 100k requests costs the fake CPU we do not want to measure.
        "record_bodies": False,
        "record_headers": False,
    }


@dataclass(frozen=True)
class Sizes:
    """How big each workload is and how often it runs."""

    reps: int = 3
    w1_prompts: int = 5_000
    w1_slots_per_worker: int = DEFAULT_WORKER_CONCURRENCY
    """Threads per worker in W1, scale and RL: batcher's default (``batcher worker`` as deployed)."""
    workers: int = 2
    """One worker process per core."""
    w2_prompts: int = 5_000
    w2_slots: int = 500
    w3_calls: int = 50
    w4_prompts: int = 100_000
    w5_rows: int = 100_000
    scale_prompts: tuple[int, ...] = (1_000, 5_000, 20_000)
    scale_reps_large: int = 1
    """Repetitions of the largest scale point (20,000 prompts take a while)."""
    rl_prompts: int = 2_000
    litellm_w2_workers: int = 500
    profile_prompts: int = 5_000
    deploy_busy_prompts: int = 20_000
    """``--deployment``: the batch W3's races run during."""
    deploy_busy_reps: int = 1
    warm_up: bool = True
    """Run a small unmeasured batch on freshly started workers (pools, keep-alive, lazy imports)."""
    extra: dict[str, Any] = field(default_factory=dict)


FULL = Sizes()
QUICK = replace(
    FULL,
    reps=1,
    w1_prompts=200,
    w1_slots_per_worker=20,
    w2_prompts=200,
    w2_slots=100,
    w3_calls=5,
    w4_prompts=2_000,
    w5_rows=2_000,
    scale_prompts=(100, 200),
    rl_prompts=120,
    litellm_w2_workers=100,
    profile_prompts=500,
    deploy_busy_prompts=600,
    warm_up=False,
)
"""Tiny sizes: proves the harness end to end in seconds (``--quick``, the smoke test)."""
