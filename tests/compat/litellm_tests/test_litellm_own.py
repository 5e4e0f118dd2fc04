"""LiteLLM's batch-helper tests (see ``conftest.py``) with only the import changed, run against batcher."""

from __future__ import annotations

import inspect
import os
import types
from pathlib import Path
from typing import Any

import pytest

from tests.compat.litellm_tests.conftest import SKIPPED

FILES = [
    "tests/local_testing/test_batch_completions.py",
    "tests/local_testing/test_batch_completion_return_exceptions.py",
    "tests/test_litellm/test_batch_completion_models_all_responses.py",
]
HELPERS = "batch_completion, batch_completion_models, batch_completion_models_all_responses"
IMPORTS = {
    # The one change per file: the helpers come from batcher.litellm.
    "tests/local_testing/test_batch_completions.py": (
        "\n# litellm.set_verbose",
        f"\nfrom batcher.litellm import {HELPERS}\n",
    ),
    "tests/local_testing/test_batch_completion_return_exceptions.py": (
        "import litellm\n",
        "import batcher.litellm as litellm\n",
    ),
    "tests/test_litellm/test_batch_completion_models_all_responses.py": (
        "from litellm.batch_completion.main import batch_completion_models_all_responses\n",
        "from batcher.litellm import batch_completion_models_all_responses\n",
    ),
}
SOURCE = os.environ.get("LITELLM_SRC")


def _tests() -> list[Any]:
    if not SOURCE:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="set LITELLM_SRC to a LiteLLM checkout"))]
    params = []
    for name in FILES:
        text = (Path(SOURCE) / name).read_text()
        for func in sorted(set(_names(text))):
            marks = [pytest.mark.skip(reason=SKIPPED[func])] if func in SKIPPED else []
            params.append(pytest.param(name, func, id=f"{Path(name).stem}::{func}", marks=marks))
    return params


def _names(text: str) -> list[str]:
    return [line.split("(")[0][4:] for line in text.splitlines() if line.startswith("def test_")]


def _load(name: str) -> types.ModuleType:
    text = (Path(SOURCE or "") / name).read_text()
    old, new = IMPORTS[name]
    assert old in text, f"{name}: the import to change is not there any more"
    text = text.replace(old, new + old if old.startswith("\n#") else new, 1)
    module = types.ModuleType(f"litellm_own_{Path(name).stem}")
    exec(compile(text, f"{SOURCE}/{name}", "exec"), module.__dict__)  # noqa: S102 - their test file, as it is
    return module


@pytest.mark.parametrize(("name", "func"), _tests())
def test_litellm_own(name: str, func: str, monkeypatch: pytest.MonkeyPatch) -> None:
    test = getattr(_load(name), func)
    kwargs = {"monkeypatch": monkeypatch} if "monkeypatch" in inspect.signature(test).parameters else {}
    test(**kwargs)
