"""The public surface is ``__all__`` of each public module, computed from the module itself (as httpx pins
its own): every name a module shows is in ``__all__``, every name in ``__all__`` exists, and a public
module exports no submodule by accident. Changing a surface is one edit to its ``__all__``.
"""

from __future__ import annotations

import types

import pytest

import batcher
import batcher.providers
import batcher.testing

PUBLIC_MODULES = [batcher, batcher.providers, batcher.testing]


def shown_names(module: types.ModuleType) -> set[str]:
    """The names a reader of ``module`` sees: not underscored, not submodules, not ``annotations``
    (``batcher`` imports its names on first use: ``dir()`` lists them, and each is loaded here)."""
    for name in dir(module):
        getattr(module, name)
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_all_is_exactly_what_the_module_shows(module: types.ModuleType) -> None:
    exported = set(module.__all__) - {"__version__"}
    assert exported == shown_names(module)
    assert len(module.__all__) == len(set(module.__all__)), "a name is listed twice"


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_public_name_is_defined_in_batcher(module: types.ModuleType) -> None:
    for name in module.__all__:
        obj = getattr(module, name)
        if not isinstance(obj, type | types.FunctionType):
            continue  # a constant or a type alias
        defined_in = obj.__module__
        assert defined_in == "batcher" or defined_in.startswith("batcher."), (name, defined_in)


def test_the_three_litellm_functions_and_the_client_are_public() -> None:
    for name in ("batch_completion", "batch_completion_models", "batch_completion_models_all_responses", "Client"):
        assert name in batcher.__all__
