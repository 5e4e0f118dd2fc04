"""LiteLLM's own tests of its batch helpers, run against batcher with only the import changed.

The files are BerriAI/litellm's (MIT licence, Copyright (c) 2023 Berri AI):
``tests/local_testing/test_batch_completions.py``,
``tests/local_testing/test_batch_completion_return_exceptions.py`` and
``tests/test_litellm/test_batch_completion_models_all_responses.py``. They are not copied into this
repository: ``test_litellm_own.py`` reads them from a LiteLLM checkout (``LITELLM_SRC=/path/to/litellm``),
changes the import of the helpers to ``batcher.litellm`` (``IMPORTS``) and runs every test function as
it is. They run on the session's cluster with every provider's base URL pointing at the fake provider
(no real provider is reached). Tests that monkeypatch LiteLLM's internals, or need a provider batcher
does not have, are skipped with the reason below.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

SKIPPED = {
    "test_batch_completion_models_all_responses": (
        "needs a provider batcher does not have (gemini/); the same call shape with two models batcher serves "
        "is tests/compat/test_litellm_compat.py::test_all_responses_drop_failures_unless_return_exceptions"
    ),
    "test_batch_completion_models_all_responses_submits_before_waiting": (
        "monkeypatches LiteLLM internals (litellm.completion, ThreadPoolExecutor): batcher submits one job"
    ),
    "test_batch_completion_models_all_responses_continues_on_model_error": (
        "monkeypatches litellm.completion; the behaviour (failures left out) is "
        "test_litellm_compat.py::test_all_responses_drop_failures_unless_return_exceptions"
    ),
    "test_batch_completion_models_all_responses_returns_empty_for_empty_models": (
        "monkeypatches litellm.completion; the behaviour ([] for models=[]) is "
        "test_litellm_compat.py::test_models_as_a_string_and_empty"
    ),
    "test_batch_completion_models_all_responses_accepts_single_model_string": (
        "monkeypatches litellm.completion; the behaviour (models='one') is "
        "test_litellm_compat.py::test_models_as_a_string_and_empty"
    ),
}


@pytest.fixture(autouse=True)
def _on_the_cluster(litellm_env: Any, fake_provider: Any) -> Iterator[None]:
    """The session's cluster and fake provider (checking keys as a real provider does: their tests pass
    a wrong one on purpose), LiteLLM's module settings restored afterwards."""
    from tests.conftest import FAKE_KEYS

    saved = fake_provider.config.expected_api_keys
    fake_provider.configure(expected_api_keys={"openai": FAKE_KEYS["OPENAI_API_KEY"]})
    try:
        yield
    finally:
        fake_provider.configure(expected_api_keys=saved)
