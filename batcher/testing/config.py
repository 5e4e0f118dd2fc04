"""How the fake provider behaves: per model (``ModelBehaviour``) and server-wide (``FakeProviderConfig``).

Behaviour is looked up by the request's ``model``: exact name first, then glob patterns such as
``"gpt-*"``, then the default. Error draws come from a hash of seed, model, prompt and attempt
number, so a given prompt's n-th attempt always gets the same outcome whatever the interleaving.
Both are pydantic models, so a JSON file (``batcher fake-provider --config``) or ``POST
/_fake/config`` configure the same fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from batcher.testing.formats import FORMATS

__all__ = ["FakeProviderConfig", "MalformedMode", "ModelBehaviour"]

MalformedMode = Literal["html", "html_200", "truncated", "non_json", "empty", "wrong_shape"]


class ModelBehaviour(BaseModel):
    """How the fake answers requests for one model (frozen; build a new one to change it).

    Order of evaluation for an authenticated, valid request: RPM limit (``rpm_limit`` here
    and the server-wide one) -> ``max_concurrency`` (a bare 429, outcome ``concurrency_limited``,
    when that many requests for the model are being answered already) -> ``context_window`` -> ``fail_always_status`` ->
    ``fail_first_n`` -> ``fail_every_n`` -> ``error_rate_429`` / ``error_rate_5xx`` ->
    ``drop_connection`` -> ``malformed`` -> success. ``latency_ms`` (plus jitter) is slept
    before every answer except 429s and 400s from validation / auth.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(0.0, ge=0, description="asyncio.sleep before answering")
    latency_jitter_ms: float = Field(0.0, ge=0, description="extra uniform [0, jitter) latency")
    error_rate_429: float = Field(0.0, ge=0, le=1, description="probability of a 429")
    error_rate_5xx: float = Field(0.0, ge=0, le=1, description="probability of a 5xx")
    error_5xx_status: int = Field(500, ge=500, le=599, description="status of error_rate_5xx")
    retry_after_s: float | None = Field(
        1.0, ge=0, description="retry-after on behaviour-driven 429s (None: header omitted)"
    )
    fail_always_status: int | None = Field(None, ge=400, le=599)
    fail_first_n: int = Field(0, ge=0, description="the first N requests fail, then succeed")
    fail_first_status: int = Field(500, ge=400, le=599)
    fail_first_scope: Literal["model", "prompt"] = Field(
        "model", description="count the first N per model, or per (model, prompt)"
    )
    fail_every_n: int = Field(0, ge=0, description="every N-th request for the model fails")
    fail_every_status: int = Field(429, ge=400, le=599)
    malformed: MalformedMode | None = Field(
        None,
        description=(
            "html: 502 HTML gateway page; html_200: 200 with an HTML body; truncated: 200 "
            "JSON cut in half; non_json: 200 text/plain; empty: 200 with no body; "
            "wrong_shape: 200 JSON of the wrong shape"
        ),
    )
    drop_connection: bool = Field(False, description="close the connection without answering")
    answer: str | None = Field(None, description="fixed assistant text instead of the echo")
    rpm_limit: int | None = Field(None, ge=1, description="per-model sliding-window limit")
    max_concurrency: int | None = Field(
        None, ge=1, description="per-model requests answered at once; more get a 429 (no retry-after)"
    )
    context_window: int | None = Field(None, ge=1, description="prompts of more words get the provider's context error")
    error_message: str | None = Field(
        None, description="message of behaviour-driven errors instead of the provider's own"
    )

    @model_validator(mode="after")
    def _rates_add_up(self) -> ModelBehaviour:
        if self.error_rate_429 + self.error_rate_5xx > 1.0 + 1e-9:
            raise ValueError("error_rate_429 + error_rate_5xx must not exceed 1")
        return self


class FakeProviderConfig(BaseModel):
    """Server-wide configuration. ``models`` keys are model names or glob patterns."""

    model_config = ConfigDict(extra="forbid")

    default: ModelBehaviour = Field(default_factory=ModelBehaviour)
    models: dict[str, ModelBehaviour] = Field(default_factory=dict)
    rpm_limit: int | None = Field(None, ge=1, description="all models together, sliding window")
    rpm_window_s: float = Field(60.0, gt=0, description="length of the RPM sliding window")
    expected_api_key: str | None = Field(None, description="any other key gets a 401")
    expected_api_keys: dict[str, str] = Field(
        default_factory=dict, description="per-provider override of expected_api_key"
    )
    seed: int | None = Field(0, description="None: error draws are truly random")
    strict_params: bool = Field(True, description="reject unknown body fields like the APIs do")
    record_bodies: bool = Field(True, description="keep request bodies in the recording")
    record_headers: bool = Field(True, description="keep request headers in the recording")

    @field_validator("expected_api_keys")
    @classmethod
    def _known_providers(cls, keys: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(keys) - set(FORMATS))
        if unknown:
            raise ValueError(f"no fake format for {', '.join(unknown)} (known: {', '.join(FORMATS)})")
        return keys
