"""The compatibility suite: the same calls through LiteLLM and through batcher, against the fake provider.

LiteLLM is a test-only dependency (the ``dev`` extra). It reads the same environment as batcher's
workers (``OPENAI_BASE_URL`` ... pointing at the fake, the fake keys), so both sides talk to one
server; no real provider is ever reached. LiteLLM's cost map is read from its local copy (no fetch).
"""

from __future__ import annotations

import gc
import inspect
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: no network

pytestmark = pytest.mark.integration


LITELLM_WARNINGS = [
    # LiteLLM's own noise, not batcher's: its TypedDicts use ReadOnly (pydantic warns as it builds them).
    "ignore:Items? .* using the `ReadOnly` qualifier:UserWarning",
    # LiteLLM's SDK clients are reference cycles; on some error paths their connections are left to the
    # garbage collector, which may run in the middle of any test. Only this process's LiteLLM talks to the
    # fake here (batcher's workers are other processes, and batcher's own leaks fail every other test).
    "ignore::ResourceWarning",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/compat/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            for rule in LITELLM_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(rule))


@pytest.fixture
def litellm_env(cluster_env: dict[str, str], cluster_client: Any) -> Iterator[Any]:
    """LiteLLM pointed at the fake provider (the session's environment), its module settings restored
    afterwards; batcher's functions run on the session's cluster (``batcher.Client()`` reads the same
    environment)."""
    import litellm

    saved = (litellm.drop_params, litellm.num_retries)
    litellm.num_retries = 0
    try:
        yield litellm
    finally:
        litellm.drop_params, litellm.num_retries = saved


@pytest.fixture(scope="session", autouse=True)
def _close_litellm_clients() -> Iterator[None]:
    """LiteLLM caches its SDK clients for the process; close their connections at the end of the run."""
    yield
    litellm = sys.modules.get("litellm")
    cache = getattr(litellm, "in_memory_llm_clients_cache", None)
    for client in list(getattr(cache, "cache_dict", {}).values()):
        close = getattr(client, "close", None)
        if callable(close) and not inspect.iscoroutinefunction(close):
            close()


@pytest.fixture(autouse=True)
def _collect_litellm_garbage() -> Iterator[None]:
    """Collect what LiteLLM left to the garbage collector here, not in a later test outside this folder."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
