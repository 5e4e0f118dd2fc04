"""The schema of a suite file: what a suite may say, as pydantic models (models, scorers, schedule,
regression rules). ``batcher.evals.suite`` loads a file into them, locating every error by line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from batcher._scheduling import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY
from batcher.evals._custom import load_entry_point, load_function
from batcher.evals.prices import Price

# --- schema ------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelSpec(_Strict):
    """A model under evaluation. ``name`` tells apart two entries of one model with other params."""

    model: str = Field(min_length=1)
    name: str | None = Field(None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    price: Price | None = None

    @property
    def label(self) -> str:
        return self.name or self.model


class _Scorer(_Strict):
    name: str | None = Field(None, min_length=1)

    @property
    def label(self) -> str:
        return self.name or str(getattr(self, "type", "scorer"))

    def uses_expected(self) -> bool:
        """Whether every item needs an ``expected`` value for this scorer."""
        return False


class ExactMatchSpec(_Scorer):
    type: Literal["exact_match"]
    case_sensitive: bool = False
    strip: bool = True
    collapse_whitespace: bool = True
    ignore_punctuation: bool = False

    def uses_expected(self) -> bool:
        return True


class ContainsSpec(_Scorer):
    type: Literal["contains"]
    value: str | list[str] | None = None
    """What the answer must contain; default: the item's ``expected``."""
    case_sensitive: bool = False
    mode: Literal["any", "all"] = "any"
    """With several values: pass when the answer contains any of them, or all of them."""

    def uses_expected(self) -> bool:
        return self.value is None


class RegexSpec(_Scorer):
    type: Literal["regex"]
    pattern: str = Field(min_length=1)
    ignore_case: bool = False
    full_match: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression ({exc})") from None
        return value


class JsonValidSpec(_Scorer):
    type: Literal["json_valid"]
    allow_code_fence: bool = True
    """Accept JSON wrapped in a Markdown code fence (```json ... ```), as chat models often answer."""


class JsonSchemaSpec(_Scorer):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")
    """The JSON Schema, inline; or ``schema_file:`` (relative to the suite file), read at load time."""
    allow_code_fence: bool = True

    @model_validator(mode="before")
    @classmethod
    def _read_schema_file(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or "schema_file" not in data:
            return data
        data = dict(data)
        if "schema" in data:
            raise ValueError("give either 'schema' or 'schema_file', not both")
        base = (info.context or {}).get("base_dir")
        path = Path(str(data.pop("schema_file")))
        if base is not None and not path.is_absolute():
            path = Path(base) / path
        try:
            data["schema"] = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"schema_file {str(path)!r} cannot be read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"schema_file {str(path)!r} is not JSON ({exc.msg}, line {exc.lineno})") from None
        return data

    @field_validator("json_schema")
    @classmethod
    def _is_a_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        from jsonschema import SchemaError
        from jsonschema.validators import validator_for

        try:
            validator_for(value).check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"is not a valid JSON Schema: {exc.message}") from None
        return value


class NumericSpec(_Scorer):
    type: Literal["numeric"]
    tolerance: float = Field(0.0, ge=0)
    """Largest absolute difference that still passes."""
    relative_tolerance: float | None = Field(None, ge=0)
    """Or: largest difference as a fraction of ``expected`` (either tolerance passes)."""
    pick: Literal["last", "first"] = "last"
    """Which number of a wordy answer counts (models tend to reason first and answer last)."""

    def uses_expected(self) -> bool:
        return True


class LlmJudgeSpec(_Scorer):
    type: Literal["llm_judge"]
    model: str = Field(min_length=1)
    """The judge model; its verdicts run through the same queue as a second batcher job."""
    rubric: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    scale: int | None = Field(None, ge=1, le=100)
    """Ask for ``SCORE: n`` out of ``scale`` instead of ``VERDICT: PASS`` / ``FAIL``."""
    pass_threshold: float = Field(0.5, ge=0, le=1)
    """With ``scale``: the fraction of it that passes."""
    price: Price | None = None


class CustomSpec(_Scorer):
    type: Literal["custom"]
    function: str | None = None
    """Dotted path of a callable: ``package.module:function``."""
    entry_point: str | None = None
    """Or the name a package registered in the ``batcher.scorers`` entry-point group."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments passed to the callable on every call."""
    pass_threshold: float = Field(0.5, ge=0, le=1)
    """A numeric score at or above this passes."""

    @model_validator(mode="after")
    def _resolves(self) -> CustomSpec:
        if (self.function is None) == (self.entry_point is None):
            raise ValueError("give exactly one of 'function' (package.module:function) or 'entry_point'")
        if self.function is not None:
            load_function(self.function)
        else:
            load_entry_point(str(self.entry_point))
        return self


ScorerSpec = Annotated[
    ExactMatchSpec
    | ContainsSpec
    | RegexSpec
    | JsonValidSpec
    | JsonSchemaSpec
    | NumericSpec
    | LlmJudgeSpec
    | CustomSpec,
    Field(discriminator="type"),
]
SCORER_TYPES: dict[str, type[_Scorer]] = {
    "exact_match": ExactMatchSpec,
    "contains": ContainsSpec,
    "regex": RegexSpec,
    "json_valid": JsonValidSpec,
    "json_schema": JsonSchemaSpec,
    "numeric": NumericSpec,
    "llm_judge": LlmJudgeSpec,
    "custom": CustomSpec,
}


def check_cron(value: str) -> str:
    """A standard 5-field cron expression (Debian cron's syntax), or ValueError saying what is wrong."""
    from datetime import UTC, datetime

    value = " ".join(value.split())
    if len(value.split(" ")) != 5:
        raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day-of-month month day-of-week)")
    try:
        CronSim(value, datetime.now(UTC))
    except CronSimError as exc:
        raise ValueError(f"{value!r} is not a valid cron expression ({exc})") from None
    return value


def check_timezone(value: str) -> str:
    """An IANA time zone name (``Europe/Paris``), or ValueError."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone name such as 'UTC' or 'Europe/Paris'") from None
    return value


class ScheduleSpec(_Strict):
    cron: str
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return check_timezone(value)


class RegressionSpec(_Strict):
    threshold: float = Field(0.05, ge=0, le=1)
    """A model regressed when its mean score dropped by more than this (0.05 = 5 points) since the last run."""
    webhook: str | None = None
    """URL POSTed a JSON description of the regression (Slack-style incoming webhooks work)."""

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class SuiteSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    """Runs of suites with the same name form one history (trend, regressions)."""
    description: str | None = None
    dataset: str = Field(min_length=1)
    system_prompt: str | None = None
    """Prepended as a system message to items given as a plain ``prompt``."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Parameters for every model; a model's own ``params`` override them."""
    models: list[ModelSpec] = Field(min_length=1)
    scorers: list[ScorerSpec] = Field(min_length=1)
    schedule: ScheduleSpec | None = None
    cache: bool = False
    """Reuse stored answers to identical requests (same model, messages and params) instead of paying again."""
    regression: RegressionSpec = Field(default_factory=RegressionSpec)
    priority: int = Field(DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    """The priority of the run's jobs, 0-9, higher first (default 5): a nightly evaluation may go before
    the day's backfills by taking a higher one."""

    @field_validator("models", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        # `- gpt-4o-mini` is short for `- model: gpt-4o-mini`.
        if isinstance(value, list):
            return [{"model": v} if isinstance(v, str) else v for v in value]
        return value

    def params_for(self, model: ModelSpec) -> dict[str, Any]:
        return {**self.params, **model.params}

    @property
    def judges(self) -> list[LlmJudgeSpec]:
        return [s for s in self.scorers if isinstance(s, LlmJudgeSpec)]
