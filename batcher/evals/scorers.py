"""Scorers: each turns one answer (and its item) into a ``Score`` from 0 to 1 and a pass/fail.

Built in: exact match (with normalisation), contains, regex, JSON-valid, JSON-schema, numeric
within tolerance, and custom callables. LLM-as-judge lives in ``batcher.evals.judge``: its
verdicts come back through the queue, so it is scored from a stored verdict, not called here.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batcher.evals._custom import load_entry_point, load_function
from batcher.evals.suite import (
    ContainsSpec,
    CustomSpec,
    ExactMatchSpec,
    Item,
    JsonSchemaSpec,
    JsonValidSpec,
    LlmJudgeSpec,
    NumericSpec,
    RegexSpec,
    SuiteSpec,
)

REASON_MAX_CHARS = 300


@dataclass(frozen=True, slots=True)
class Score:
    """One scorer's verdict on one answer."""

    score: float
    passed: bool
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"score": self.score, "passed": self.passed}
        if self.reason:
            data["reason"] = self.reason[:REASON_MAX_CHARS]
        return data


def _binary(ok: bool, reason: str | None = None) -> Score:
    return Score(1.0 if ok else 0.0, ok, reason)


ScoreFn = Callable[[str, Item], Score]


# --- text helpers --------------------------------------------------------------------------------

_NOT_WORD = re.compile(r"[^\w\s]")
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")


def normalise(
    text: str,
    *,
    case_sensitive: bool = False,
    strip: bool = True,
    collapse_whitespace: bool = True,
    ignore_punctuation: bool = False,
) -> str:
    if ignore_punctuation:
        text = _NOT_WORD.sub("", text)
    if collapse_whitespace:
        text = " ".join(text.split())
    elif strip:
        text = text.strip()
    return text if case_sensitive else text.casefold()


def _expected_texts(expected: Any) -> list[str]:
    """``expected`` may be one answer or a list of acceptable ones."""
    values = expected if isinstance(expected, list) else [expected]
    return [v if isinstance(v, str) else json.dumps(v) for v in values if v is not None]


def extract_json_text(output: str, allow_code_fence: bool) -> str:
    if allow_code_fence:
        fenced = _FENCE.search(output)
        if fenced:
            return fenced.group(1).strip()
    return output.strip()


def extract_number(output: str, pick: str = "last") -> float | None:
    text = output.strip()
    try:
        return float(text.replace(",", ""))
    except ValueError:
        pass
    found = _NUMBER.findall(text)
    if not found:
        return None
    return float((found[-1] if pick == "last" else found[0]).replace(",", ""))


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- built-in scorers ----------------------------------------------------------------------------


def exact_match(spec: ExactMatchSpec) -> ScoreFn:
    def norm(text: str) -> str:
        return normalise(
            text,
            case_sensitive=spec.case_sensitive,
            strip=spec.strip,
            collapse_whitespace=spec.collapse_whitespace,
            ignore_punctuation=spec.ignore_punctuation,
        )

    def score(output: str, item: Item) -> Score:
        wanted = _expected_texts(item.expected)
        got = norm(output)
        if any(got == norm(w) for w in wanted):
            return _binary(True)
        return _binary(False, f"{_short(output)!r} != {_short(' | '.join(wanted))!r}")

    return score


def contains(spec: ContainsSpec) -> ScoreFn:
    def score(output: str, item: Item) -> Score:
        needles = _expected_texts(spec.value if spec.value is not None else item.expected)
        hay = output if spec.case_sensitive else output.casefold()
        found = [n for n in needles if (n if spec.case_sensitive else n.casefold()) in hay]
        ok = len(found) == len(needles) if spec.mode == "all" else bool(found)
        if ok:
            return _binary(True)
        missing = [n for n in needles if n not in found]
        return _binary(False, f"does not contain {_short(' | '.join(missing))!r}")

    return score


def regex(spec: RegexSpec) -> ScoreFn:
    pattern = re.compile(spec.pattern, re.IGNORECASE if spec.ignore_case else 0)
    match = pattern.fullmatch if spec.full_match else pattern.search

    def score(output: str, item: Item) -> Score:
        text = output.strip() if spec.full_match else output
        return _binary(True) if match(text) else _binary(False, f"no match for /{spec.pattern}/")

    return score


def json_valid(spec: JsonValidSpec) -> ScoreFn:
    def score(output: str, item: Item) -> Score:
        try:
            json.loads(extract_json_text(output, spec.allow_code_fence))
        except json.JSONDecodeError as exc:
            return _binary(False, f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        return _binary(True)

    return score


def json_schema(spec: JsonSchemaSpec) -> ScoreFn:
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    validator = validator_for(spec.json_schema)(spec.json_schema)

    def score(output: str, item: Item) -> Score:
        try:
            instance = json.loads(extract_json_text(output, spec.allow_code_fence))
        except json.JSONDecodeError as exc:
            return _binary(False, f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        error = best_match(validator.iter_errors(instance))
        if error is None:
            return _binary(True)
        return _binary(False, f"at {error.json_path}: {error.message}")

    return score


def numeric(spec: NumericSpec) -> ScoreFn:
    from batcher.evals.dataset import as_number

    def score(output: str, item: Item) -> Score:
        expected = as_number(item.expected)
        got = extract_number(output, spec.pick)
        if expected is None:
            return _binary(False, f"expected {item.expected!r} is not a number")
        if got is None or math.isnan(got):
            return _binary(False, f"no number in {_short(output)!r}")
        diff = abs(got - expected)
        ok = diff <= spec.tolerance or (
            spec.relative_tolerance is not None and diff <= spec.relative_tolerance * abs(expected)
        )
        return _binary(True) if ok else _binary(False, f"{got:g} is {diff:g} away from {expected:g}")

    return score


# --- custom scorers ------------------------------------------------------------------------------


class CustomScorer:
    """A user's callable, called as ``fn(output=..., expected=..., item=..., metadata=..., **options)``.

    Only the keywords its signature accepts are passed (all of them given ``**kwargs``); a callable
    that accepts none of them by name is called as ``fn(output, expected, **options)``. It returns a
    bool, a number from 0 to 1, ``(score, reason)`` or ``{"score": ..., "passed": ..., "reason": ...}``.
    An exception scores 0 with the exception as the reason: one bad answer never stops a run.
    """

    ARGUMENTS = ("output", "expected", "item", "metadata")

    def __init__(self, spec: CustomSpec) -> None:
        self.spec = spec
        self.fn = load_function(spec.function) if spec.function else load_entry_point(str(spec.entry_point))
        try:
            params = inspect.signature(self.fn).parameters
        except (TypeError, ValueError):  # builtins without a signature
            params = {}  # type: ignore[assignment]
        any_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self.names = [n for n in self.ARGUMENTS if any_kw or n in params]

    def __call__(self, output: str, item: Item) -> Score:
        values = {"output": output, "expected": item.expected, "item": item.as_dict(), "metadata": item.metadata or {}}
        try:
            if self.names:
                result = self.fn(**{n: values[n] for n in self.names}, **self.spec.options)
            else:
                result = self.fn(output, item.expected, **self.spec.options)
            return self._coerce(result)
        except Exception as exc:
            return Score(0.0, False, f"scorer raised {type(exc).__name__}: {exc}")

    def _coerce(self, result: Any) -> Score:
        reason = None
        passed: bool | None = None
        if isinstance(result, Score):
            return result
        if isinstance(result, tuple) and len(result) == 2:
            result, reason = result
        elif isinstance(result, Mapping):
            reason = result.get("reason")
            passed = result.get("passed")
            result = result.get("score", passed)
        if isinstance(result, bool):
            return Score(1.0 if result else 0.0, result if passed is None else bool(passed), reason)
        if isinstance(result, int | float) and 0.0 <= float(result) <= 1.0:
            value = float(result)
            return Score(value, value >= self.spec.pass_threshold if passed is None else bool(passed), reason)
        raise TypeError(f"returned {result!r}; return a bool, a number from 0 to 1, (score, reason) or a dict")


# --- assembling ----------------------------------------------------------------------------------

_BUILDERS: dict[type[Any], Callable[[Any], ScoreFn]] = {
    ExactMatchSpec: exact_match,
    ContainsSpec: contains,
    RegexSpec: regex,
    JsonValidSpec: json_valid,
    JsonSchemaSpec: json_schema,
    NumericSpec: numeric,
    CustomSpec: CustomScorer,
}


def build_scorers(spec: SuiteSpec) -> dict[str, ScoreFn]:
    """Every scorer of the suite but the LLM judges, by label, in suite order."""
    return {s.label: _BUILDERS[type(s)](s) for s in spec.scorers if not isinstance(s, LlmJudgeSpec)}


@dataclass(frozen=True, slots=True)
class ItemScore:
    scores: dict[str, Score]
    score: float
    passed: bool

    def scores_json(self) -> dict[str, Any]:
        return {name: s.as_dict() for name, s in self.scores.items()}


def score_answer(
    spec: SuiteSpec,
    scorers: Mapping[str, ScoreFn],
    item: Item,
    output: str | None,
    error: str | None,
    verdicts: Mapping[str, Score],
) -> ItemScore:
    """Every scorer on one answer. No answer (the request failed) scores 0 everywhere.

    ``verdicts`` holds the judges' parsed verdicts on this answer, by scorer label. The item's
    score is the mean of its scorers' scores; it passes when every scorer passes.
    """
    scores: dict[str, Score] = {}
    for scorer in spec.scorers:
        if output is None:
            scores[scorer.label] = Score(0.0, False, f"no answer: {error or 'the request failed'}")
        elif isinstance(scorer, LlmJudgeSpec):
            scores[scorer.label] = verdicts.get(scorer.label) or Score(0.0, False, "no verdict from the judge")
        else:
            scores[scorer.label] = scorers[scorer.label](output, item)
    values = list(scores.values())
    return ItemScore(scores, sum(s.score for s in values) / len(values), all(s.passed for s in values))
