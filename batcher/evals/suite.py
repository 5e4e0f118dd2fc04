"""Suite files: YAML validated with pydantic, every error located by line; datasets as JSONL.

A suite names its dataset (path relative to the suite file), the models (each with its own
parameters) and the scorers, and optionally a schedule. ``load_suite`` reports every problem it
finds at once, each as ``suite.yaml line 12: scorers[1].pattern: ...``: the YAML is composed
into nodes first so each value's line is known when pydantic names a field.

The schema is ``batcher.evals.spec``, the dataset ``batcher.evals.dataset``, the line-numbered
YAML ``batcher.evals._located``; this module loads a suite and checks what the schema cannot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from batcher.evals._located import error_message, field_of, locate, parse_yaml
from batcher.evals.dataset import DATASET_FIELDS, MAX_PROBLEMS, Item, as_number, load_dataset
from batcher.evals.errors import Problem, SuiteError
from batcher.evals.spec import (
    SCORER_TYPES,
    ContainsSpec,
    CustomSpec,
    ExactMatchSpec,
    JsonSchemaSpec,
    JsonValidSpec,
    LlmJudgeSpec,
    ModelSpec,
    NumericSpec,
    RegexSpec,
    RegressionSpec,
    ScheduleSpec,
    ScorerSpec,
    SuiteSpec,
    check_cron,
    check_timezone,
)

__all__ = [
    "DATASET_FIELDS",
    "SCORER_TYPES",
    "ContainsSpec",
    "CustomSpec",
    "ExactMatchSpec",
    "Item",
    "JsonSchemaSpec",
    "JsonValidSpec",
    "LlmJudgeSpec",
    "ModelSpec",
    "NumericSpec",
    "PlannedRequest",
    "RegexSpec",
    "RegressionSpec",
    "ScheduleSpec",
    "ScorerSpec",
    "Suite",
    "SuiteSpec",
    "as_number",
    "check_cron",
    "check_timezone",
    "load_suite",
    "peek_suite_name",
    "request_key",
    "spec_from_config",
]


# --- loaded suites -------------------------------------------------------------------------------


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
        problems = [Problem("stored suite", None, field_of(err["loc"]), error_message(err)) for err in exc.errors()]
        raise SuiteError(problems) from None


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file and its dataset. Raises ``SuiteError`` listing every problem."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError([Problem(file, None, "", f"cannot be read ({exc.strerror})")]) from None
    data, lines = parse_yaml(text, file)
    if not isinstance(data, dict):
        raise SuiteError([Problem(file, 1, "", "must be a YAML mapping with name, dataset, models and scorers")])
    try:
        spec = SuiteSpec.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:MAX_PROBLEMS]:
            field, line = locate(err["loc"], data, lines)
            problems.append(Problem(file, line, field, error_message(err)))
        raise SuiteError(problems) from None

    problems = _check_spec(spec, file, data, lines)
    dataset = Path(spec.dataset)
    if not dataset.is_absolute():
        dataset = path.parent / dataset
    items: list[Item] = []
    if not dataset.is_file():
        field, line = locate(("dataset",), data, lines)
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
        field, line = locate(loc, data, lines)
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
