"""Finding custom scorers: plain Python callables named by entry point or dotted path."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "batcher.scorers"
"""Packages register scorers here: ``[project.entry-points."batcher.scorers"] bleu = "pkg.mod:bleu"``."""


def load_function(path: str) -> Callable[..., Any]:
    """``"package.module:function"`` or ``"package.module.function"`` -> the callable."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not a dotted path; write it as 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} ({exc}); is it installed where the runs are scored?"
        ) from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise ValueError(f"{path!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def load_entry_point(name: str) -> Callable[..., Any]:
    """The callable registered as ``name`` in the ``batcher.scorers`` entry-point group."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        hint = f"registered: {', '.join(known)}" if known else "no package registers any"
        raise ValueError(f"no scorer {name!r} in the {ENTRY_POINT_GROUP!r} entry points ({hint})")
    try:
        target = next(iter(found)).load()
    except Exception as exc:  # a broken plugin: say which and why
        raise ValueError(f"entry point {name!r} failed to load: {type(exc).__name__}: {exc}") from None
    if not callable(target):
        raise ValueError(f"entry point {name!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]
