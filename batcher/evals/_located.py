"""YAML with line numbers: where each value of a suite file stands, so a pydantic error names
``suite.yaml line 12: scorers[1].pattern: ...``, with the fields allowed there."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from batcher.evals.errors import Problem, SuiteError
from batcher.evals.spec import SCORER_TYPES, JsonSchemaSpec, ModelSpec, RegressionSpec, ScheduleSpec, SuiteSpec

# --- YAML with line numbers ----------------------------------------------------------------------


def parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
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


def locate(loc: tuple[Any, ...], data: Any, lines: dict[tuple[Any, ...], int]) -> tuple[str, int | None]:
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
    return field_of(tuple(shown)), lines.get(path)


def field_of(loc: tuple[Any, ...]) -> str:
    text = ""
    for comp in loc:
        if isinstance(comp, int):
            text += f"[{comp}]"
        else:
            text += f".{comp}" if text else str(comp)
    return text


def error_message(err: Any) -> str:
    kind = err["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        allowed = allowed_fields(err["loc"])
        return f"is not a known field; use one of {', '.join(allowed)}" if allowed else "is not a known field"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        types = ", ".join(SCORER_TYPES)
        if kind == "union_tag_not_found":
            return f"needs a 'type': one of {types}"
        return f"{err['ctx']['tag']!r} is not a scorer type; use one of {types}"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def allowed_fields(loc: tuple[Any, ...]) -> list[str]:
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
