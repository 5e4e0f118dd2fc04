"""Helpers for your own tests: the fake provider wired into this process, and a provider added for a test.

In embedded mode (no Postgres or Redis needed) the workers run in the test process, so
``fake_provider`` is all the wiring there is. They read the provider variables once, when the
embedded runtime starts: keep one fake for the session (or give it a fixed ``port=``)::

    import pytest
    from batcher import batch_completion
    from batcher.testing import fake_provider

    @pytest.fixture(scope="session")
    def fake(tmp_path_factory):
        with pytest.MonkeyPatch.context() as env:
            env.setenv("BATCHER_MODE", "embedded")
            env.setenv("BATCHER_EMBEDDED_PATH", str(tmp_path_factory.mktemp("batcher") / "b.db"))
            with fake_provider() as fp:
                yield fp

    def test_my_pipeline(fake):
        fake.set_behaviour("gpt-4o-mini", answer="42")
        [reply] = batch_completion(model="gpt-4o-mini", messages=[[{"role": "user", "content": "?"}]])
        assert reply.choices[0].message.content == "42"
        assert fake.count(model="gpt-4o-mini") == 1

Cluster workers run in processes of their own: start them with ``fp.environ()`` (and keys) in their
environment instead. ``provider_registered`` adds a provider of your own (and its fake format) for
the length of a test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from batcher._providers._adapter import ProviderAdapter
from batcher._providers._registry import PROVIDERS, register_provider, unregister_provider
from batcher.testing.config import FakeProviderConfig
from batcher.testing.formats import FORMATS, FakeFormat, register_format, unregister_format
from batcher.testing.server import FakeProvider

__all__ = ["fake_provider", "patched_environ", "provider_registered"]

FAKE_KEY_PREFIX = "sk-fake-"


@contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, as it was again at exit."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def fake_provider(
    config: FakeProviderConfig | Mapping[str, Any] | None = None, *, keys: bool = True, **overrides: Any
) -> Iterator[FakeProvider]:
    """A started ``FakeProvider`` (``config`` and ``overrides`` as its constructor takes them), with this
    process's provider variables pointing at it: every provider's base URL (``fp.environ()``) and, with
    ``keys``, a made-up key for each provider that has none set. Stopped, and the variables restored,
    at exit."""
    with FakeProvider(config=config, **overrides) as fp:
        env = fp.environ()
        if keys:
            for name in FORMATS:
                names = PROVIDERS[name].api_key_env_vars if name in PROVIDERS else ()
                if names and not any(os.environ.get(var, "").strip() for var in names):
                    env[names[0]] = f"{FAKE_KEY_PREFIX}{name}"
        with patched_environ(env):
            yield fp


@contextmanager
def provider_registered(adapter: ProviderAdapter, fmt: FakeFormat | None = None) -> Iterator[ProviderAdapter]:
    """``adapter``'s provider (and ``fmt``, its fake format) registered for the block, forgotten at exit:
    a test of a provider of its own that leaves the registries as it found them."""
    register_provider(adapter)
    try:
        if fmt is not None:
            register_format(fmt)
        try:
            yield adapter
        finally:
            if fmt is not None:
                unregister_format(fmt.name)
    finally:
        unregister_provider(adapter.name)
