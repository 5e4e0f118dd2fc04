"""The settings table of ``docs/settings.md``, generated from ``batcher._config.Settings``.

``batcher settings --markdown > docs/settings.md`` writes it; a unit test compares the committed
file with this output, so the documentation cannot drift from the code. Each row is one field:
its variable, type, default, allowed range and the docstring written under it in ``_config.py``.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import re
import textwrap
from typing import Any

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from batcher._config import Settings

HEADER = """\
# Settings

<!-- Generated from batcher/_config.py by `batcher settings --markdown > docs/settings.md`:
     edit the docstrings there, then regenerate (tests/unit/test_settings_doc.py fails when this file is stale). -->

Every setting is an environment variable `BATCHER_<NAME>`, read by every batcher process (workers,
the API, the CLI, `batcher.Client()` and the three functions); a `.env` file in the working
directory is read too, and the environment wins over it. `batcher settings` prints the values a
process would use. Provider keys and base URLs are not settings: they keep the names of the
providers' own SDKs (`OPENAI_API_KEY`, `ANTHROPIC_BASE_URL`, ...), see the README's
[Providers and models](../README.md#providers-and-models).

| variable | type | default | range | what it does |
|---|---|---|---|---|
"""


def field_docstrings(cls: type) -> dict[str, str]:
    """The string literal under each annotated attribute of ``cls``'s class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(following.value.value).split())
    return docs


def _type_name(field: FieldInfo) -> str:
    annotation = field.annotation
    if annotation is None:
        return ""
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "").replace("pydantic.types.", "")
    if "RateLimitSpec" in text:
        text = "dict (JSON)"
    return text.replace("NoneType", "None").replace(" | ", " or ")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{value:g}`"
    if isinstance(value, int | float):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _range(field: FieldInfo) -> str:
    low = high = ""
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"≥ {item.ge:g}" if isinstance(item.ge, float) else f"≥ {item.ge:,}"
        elif isinstance(item, annotated_types.Gt):
            low = f"> {item.gt}"
        elif isinstance(item, annotated_types.Le):
            high = f"≤ {item.le:,}"
        elif isinstance(item, annotated_types.Lt):
            high = f"< {item.lt:,}"
    return ", ".join(part for part in (low, high) if part)


def _choices(field: FieldInfo) -> str:
    args = getattr(field.annotation, "__args__", ())
    if str(field.annotation).startswith("typing.Literal"):
        return "one of " + ", ".join(f"`{a}`" for a in args)
    return ""


def markdown() -> str:
    """``docs/settings.md``: one row per field of ``Settings``, in the order of ``_config.py``."""
    docs = field_docstrings(Settings)
    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = []
    for name, field in Settings.model_fields.items():
        choices = _choices(field)
        kind = "text" if choices else _type_name(field)
        doc = docs.get(name, "").replace("``", "`").replace("|", "\\|")
        rows.append(f"| `{prefix}{name.upper()}` | {kind} | {_default(field)} | {choices or _range(field)} | {doc} |")
    return HEADER + "\n".join(rows) + "\n"


_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)[^@/]*@")


def current_values(settings: Settings) -> list[str]:
    """``BATCHER_NAME=value`` for every setting as this process reads it (secrets masked)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    lines = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            shown = "(set, hidden)"
        elif value is None:
            shown = ""
        elif isinstance(value, dict | list):
            shown = json.dumps(value, default=lambda o: o.model_dump() if hasattr(o, "model_dump") else str(o))
        elif isinstance(value, bool):
            shown = str(value).lower()
        else:
            shown = _PASSWORD.sub(r"\1***@", str(value))
        lines.append(f"{prefix}{name.upper()}={shown}")
    return lines
