"""Suite files: YAML validated with pydantic, every error located by line; datasets as JSONL.

A suite names its dataset (path relative to the suite file), the models (each with its own
parameters) and the scorers, and optionally a schedule. ``load_suite`` reports every problem it
finds at once, each as ``suite.yaml line 12: scorers[1].pattern: ...``: the YAML is composed
into nodes first so each value's line is known when pydantic names a field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from batcher.evals._custom import load_entry_point, load_function
from batcher.evals.errors import Problem, SuiteError
from batcher.evals.prices import Price

MAX_PROBLEMS = 20
"""Stop collecting after this many: past it, the file is likely not a suite at all."""
DATASET_FIELDS = ("id", "prompt", "messages", "expected", "metadata")


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


# --- loaded suites -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One dataset item: a conversation and what a good answer looks like."""

    idx: int
    item_id: str
    messages: list[dict[str, Any]]
    expected: Any = None
    metadata: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """What custom scorers receive as ``item``."""
        return {"id": self.item_id, "messages": self.messages, "expected": self.expected, "metadata": self.metadata}


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One item x one model, and the key its answer is stored and cached under."""

    model_idx: int
    item_idx: int
    label: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    key: str


def request_key(model: str, messages: Any, params: dict[str, Any] | None) -> str:
    """The identity of a request for caching and resuming: a hash of (model, messages, params)."""
    canonical = json.dumps(
        {"model": model, "messages": messages, "params": params or {}},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "evk-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Suite:
    spec: SuiteSpec
    items: list[Item]
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def config(self) -> dict[str, Any]:
        """The resolved suite as JSON (schema files inlined): what a run stores and scores with."""
        return self.spec.model_dump(mode="json", by_alias=True)

    def fingerprint(self) -> str:
        """Changes whenever the suite or its data does: an unchanged suite resumes its unfinished run."""
        payload = {"config": self.config(), "items": [item.as_dict() for item in self.items]}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def plan(self) -> list[PlannedRequest]:
        planned = []
        for m, model in enumerate(self.spec.models):
            params = self.spec.params_for(model)
            for item in self.items:
                planned.append(
                    PlannedRequest(
                        model_idx=m,
                        item_idx=item.idx,
                        label=model.label,
                        model=model.model,
                        messages=item.messages,
                        params=params,
                        key=request_key(model.model, item.messages, params),
                    )
                )
        return planned


def spec_from_config(config: dict[str, Any]) -> SuiteSpec:
    """A run's stored suite, validated again (custom scorers must still import where it is scored)."""
    try:
        return SuiteSpec.model_validate(config)
    except ValidationError as exc:
        problems = [Problem("stored suite", None, _field_of(err["loc"]), _message(err)) for err in exc.errors()]
        raise SuiteError(problems) from None


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file and its dataset. Raises ``SuiteError`` listing every problem."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError([Problem(file, None, "", f"cannot be read ({exc.strerror})")]) from None
    data, lines = _parse_yaml(text, file)
    if not isinstance(data, dict):
        raise SuiteError([Problem(file, 1, "", "must be a YAML mapping with name, dataset, models and scorers")])
    try:
        spec = SuiteSpec.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:MAX_PROBLEMS]:
            field, line = _locate(err["loc"], data, lines)
            problems.append(Problem(file, line, field, _message(err)))
        raise SuiteError(problems) from None

    problems = _check_spec(spec, file, data, lines)
    dataset = Path(spec.dataset)
    if not dataset.is_absolute():
        dataset = path.parent / dataset
    items: list[Item] = []
    if not dataset.is_file():
        field, line = _locate(("dataset",), data, lines)
        problems.append(Problem(file, line, field, f"{str(dataset)!r} is not a file (paths are relative to the suite)"))
    else:
        items, dataset_problems = load_dataset(dataset, spec)
        problems.extend(dataset_problems)
    if problems:
        raise SuiteError(problems[:MAX_PROBLEMS])
    return Suite(spec=spec, items=items, path=path.resolve())


def peek_suite_name(path: str | Path) -> str | None:
    """The ``name`` of a suite file without checking the rest (reports of suites that changed since)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


# --- checks beyond the schema --------------------------------------------------------------------


def _check_spec(spec: SuiteSpec, file: str, data: Any, lines: dict[tuple[Any, ...], int]) -> list[Problem]:
    """What pydantic cannot see field by field: duplicates, model routing, provider parameters."""
    problems: list[Problem] = []

    def add(loc: tuple[Any, ...], message: str) -> None:
        field, line = _locate(loc, data, lines)
        problems.append(Problem(file, line, field, message))

    seen: dict[str, int] = {}
    for i, model in enumerate(spec.models):
        if model.label in seen:
            add(
                ("models", i),
                f"{model.label!r} is listed twice (also models[{seen[model.label]}]); "
                "give each entry a distinct 'name'",
            )
        seen.setdefault(model.label, i)
        _check_model(model.model, spec.params_for(model), ("models", i), add)
    scorer_names: dict[str, int] = {}
    for j, scorer in enumerate(spec.scorers):
        if scorer.label in scorer_names:
            add(("scorers", j), f"a second scorer named {scorer.label!r}; give each a distinct 'name'")
        scorer_names.setdefault(scorer.label, j)
        if isinstance(scorer, LlmJudgeSpec):
            _check_model(scorer.model, scorer.params, ("scorers", j), add)
    return problems


def _check_model(model: str, params: dict[str, Any], loc: tuple[Any, ...], add: Callable[..., None]) -> None:
    """The model routes to a provider that takes these parameters (no network, no API key needed)."""
    from batcher import _providers
    from batcher._exceptions import InvalidRequestError

    try:
        route = _providers.resolve_route(model)
    except InvalidRequestError as exc:
        add((*loc, "model"), str(exc).removeprefix("model: "))
        return
    try:
        _providers.check_params(route.provider, params, drop_params=False)
    except InvalidRequestError as exc:
        where = (*loc, "params", exc.field) if exc.field else (*loc, "params")
        reason = str(exc).removeprefix(f"{exc.field}: ").split(";")[0]
        add(where, f"{reason}; remove it from the suite's params")


def load_dataset(path: Path, spec: SuiteSpec) -> tuple[list[Item], list[Problem]]:
    """Items of a JSONL dataset, and the problems of its lines (``dataset.jsonl line 4: ...``)."""
    from batcher._exceptions import InvalidRequestError
    from batcher._validation import validate_messages

    file = str(path)
    items: list[Item] = []
    problems: list[Problem] = []
    ids: dict[str, int] = {}
    needs_expected = [s.label for s in spec.scorers if s.uses_expected()]
    numeric = [s.label for s in spec.scorers if isinstance(s, NumericSpec)]
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(problems) >= MAX_PROBLEMS:
                break
            text = raw.strip()
            if not text:
                continue

            def bad(field: str, message: str, lineno: int = lineno) -> None:
                problems.append(Problem(file, lineno, field, message))

            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                bad("", f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                bad("", 'must be a JSON object such as {"prompt": "...", "expected": "..."}')
                continue
            unknown = sorted(set(obj) - set(DATASET_FIELDS))
            if unknown:
                bad(unknown[0], f"unknown field; an item has {', '.join(DATASET_FIELDS)} (put extra data in metadata)")
                continue
            if ("prompt" in obj) == ("messages" in obj):
                bad("", "needs exactly one of 'prompt' (a string) or 'messages' (a conversation)")
                continue
            if "prompt" in obj:
                if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
                    bad("prompt", "must be a non-empty string")
                    continue
                messages = [{"role": "user", "content": obj["prompt"]}]
                if spec.system_prompt:
                    messages.insert(0, {"role": "system", "content": spec.system_prompt})
            else:
                try:
                    messages = validate_messages(obj["messages"], "messages")
                except InvalidRequestError as exc:
                    bad("", str(exc))
                    continue
            raw_id = obj.get("id", f"line {lineno}")
            if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or str(raw_id) == "":
                bad("id", "must be a non-empty string or a number")
                continue
            item_id = str(raw_id)
            if item_id in ids:
                bad("id", f"{item_id!r} is also the id of line {ids[item_id]}; ids must be unique")
                continue
            ids[item_id] = lineno
            metadata = obj.get("metadata")
            if metadata is not None and not isinstance(metadata, dict):
                bad("metadata", "must be a JSON object")
                continue
            expected = obj.get("expected")
            if expected is None and needs_expected:
                bad("expected", f"is missing, and scorer {needs_expected[0]!r} compares answers with it")
                continue
            if numeric and _as_number(expected) is None:
                bad("expected", f"{expected!r} is not a number, and scorer {numeric[0]!r} is numeric")
                continue
            items.append(Item(len(items), item_id, messages, expected, metadata))
    if not items and not problems:
        problems.append(Problem(file, None, "", "has no items; write one JSON object per line"))
    return items, problems


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace(",", "").strip())
        except ValueError:
            return None
    return None


# --- YAML with line numbers ----------------------------------------------------------------------


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The document and the line (1-based) of every mapping key and sequence entry, by path."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SuiteError(
            [Problem(file, mark.line + 1 if mark else None, "", f"is not valid YAML: {exc.problem or exc.context}")]
        ) from None
    except yaml.YAMLError as exc:
        raise SuiteError([Problem(file, None, "", f"is not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = (*path, key_node.value)
                lines[child] = key_node.start_mark.line + 1
                _walk(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, child_node in enumerate(node.value):
            _walk(child_node, (*path, i), lines)


def _locate(loc: tuple[Any, ...], data: Any, lines: dict[tuple[Any, ...], int]) -> tuple[str, int | None]:
    """A pydantic error location as ``scorers[1].pattern`` and the line it is on.

    Union tags that pydantic inserts (``('scorers', 1, 'regex', 'pattern')``) are dropped; a
    missing field is reported on the line of the mapping that lacks it.
    """
    node = data
    path: tuple[Any, ...] = ()
    shown: list[Any] = []
    for comp in loc:
        if isinstance(node, dict) and comp not in node and node.get("type") == comp:
            continue  # the discriminated union's tag
        found = (isinstance(node, dict) and comp in node) or (
            isinstance(node, list) and isinstance(comp, int) and 0 <= comp < len(node)
        )
        if found:
            node = node[comp]  # type: ignore[index]
            path = (*path, comp)
        else:
            node = None
        shown.append(comp)
    while path and path not in lines:
        path = path[:-1]
    return _field_of(tuple(shown)), lines.get(path)


def _field_of(loc: tuple[Any, ...]) -> str:
    text = ""
    for comp in loc:
        if isinstance(comp, int):
            text += f"[{comp}]"
        else:
            text += f".{comp}" if text else str(comp)
    return text


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(err["loc"])
        return f"is not a known field; use one of {', '.join(allowed)}" if allowed else "is not a known field"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        types = ", ".join(SCORER_TYPES)
        if kind == "union_tag_not_found":
            return f"needs a 'type': one of {types}"
        return f"{err['ctx']['tag']!r} is not a scorer type; use one of {types}"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] | None = None
    if len(loc) == 1:
        model = SuiteSpec
    elif loc[0] == "models" and len(loc) == 3:
        model = ModelSpec
    elif loc[0] == "scorers" and len(loc) == 4 and loc[2] in SCORER_TYPES:
        model = SCORER_TYPES[loc[2]]
    elif loc[0] in ("schedule", "regression") and len(loc) == 2:
        model = ScheduleSpec if loc[0] == "schedule" else RegressionSpec
    if model is None:
        return []
    fields = [(f.alias or name) for name, f in model.model_fields.items()]
    if model is JsonSchemaSpec:
        fields.append("schema_file")
    return fields
