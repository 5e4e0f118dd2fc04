"""A suite's dataset: JSONL items (``id``, ``prompt`` or ``messages``, ``expected``, ``metadata``),
every problem reported with its line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batcher.evals.errors import Problem
from batcher.evals.spec import NumericSpec, SuiteSpec

MAX_PROBLEMS = 20
"""Stop collecting after this many: past it, the file is likely not a suite at all."""
DATASET_FIELDS = ("id", "prompt", "messages", "expected", "metadata")


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
            if numeric and as_number(expected) is None:
                bad("expected", f"{expected!r} is not a number, and scorer {numeric[0]!r} is numeric")
                continue
            items.append(Item(len(items), item_id, messages, expected, metadata))
    if not items and not problems:
        problems.append(Problem(file, None, "", "has no items; write one JSON object per line"))
    return items, problems


def as_number(value: Any) -> float | None:
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
