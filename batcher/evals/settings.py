"""Settings of evaluation runs, read from ``BATCHER_EVAL_*`` variables (and ``.env``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from batcher.evals.prices import Price


class EvalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCHER_EVAL_", env_file=".env", extra="ignore")

    tick_interval_s: float = Field(30.0, gt=0)
    """How often beat sends ``batcher.eval_tick``: fire due schedules, move active runs on."""
    webhook_url: str | None = None
    """Default regression webhook for suites that name none."""
    webhook_timeout_s: float = Field(10.0, gt=0)
    history_runs: int = Field(30, ge=2, le=500)
    """Past runs shown in a report's trend chart."""
    prices: dict[str, Price] = Field(default_factory=dict)
    """USD per million tokens by model, over the built-in table:
    ``BATCHER_EVAL_PRICES='{"openai/my-vllm": {"input": 0, "output": 0}}'``."""


EVAL_TICK_TASK = "batcher.eval_tick"
"""The beat task that fires due schedules and moves active runs on (``workers.eval_tasks``)."""
