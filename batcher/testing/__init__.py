"""batcher's test double: a fake LLM provider that speaks each provider's real wire format over real HTTP.

Used by batcher's own tests, the demo (``batcher fake-provider``) and the benchmarks, and meant for
yours: no real provider is called, every request is recorded, and each model's behaviour (latency,
429s, 5xx, malformed bodies, dropped connections, rate limits) is configured in data::

    from batcher.testing import FakeProvider

    with FakeProvider(config={"default": {"latency_ms": 5}}) as fp:
        httpx.post(f"{fp.base_url('openai')}/chat/completions", ...)
        assert fp.count(status=200) == 1

``fake_provider(...)`` does the same and points this process's provider variables at it (base
URLs, made-up keys), for embedded-mode tests; ``fp.environ()`` gives those variables for worker
processes. The package, by concern:

========================  ===========================================================================
``config``                ``ModelBehaviour`` (per model) and ``FakeProviderConfig`` (server-wide)
``recording``             ``RecordedRequest``, ``max_in_window``
``formats/``              one module per provider wire format (``openai``, ``anthropic``, ``cohere``),
                          ``FakeFormat`` and ``register_format`` for one of your own
``server``                ``FakeProvider``: start / stop, configure, URLs, recordings, serving
``control``               the ``/_fake`` endpoints (recordings, stats, reset, behaviour, config)
``cli``                   ``batcher fake-provider``, ``serve``, ``serve_async``
``helpers``               ``fake_provider``, ``provider_registered``, ``patched_environ``
``servers``               private ``RedisServer`` / ``PostgresServer`` for fault tests
========================  ===========================================================================

A provider the fake does not speak is an error (``fp.base_url("azure")`` raises ValueError).
"""

from __future__ import annotations

from batcher.testing.config import FakeProviderConfig, MalformedMode, ModelBehaviour
from batcher.testing.formats import FORMATS, Failure, FakeFormat, get_format, register_format, unregister_format
from batcher.testing.helpers import fake_provider, patched_environ, provider_registered
from batcher.testing.recording import RecordedRequest, max_in_window
from batcher.testing.server import FakeProvider

__all__ = [
    "FORMATS",
    "Failure",
    "FakeFormat",
    "FakeProvider",
    "FakeProviderConfig",
    "MalformedMode",
    "ModelBehaviour",
    "RecordedRequest",
    "fake_provider",
    "get_format",
    "max_in_window",
    "patched_environ",
    "provider_registered",
    "register_format",
    "unregister_format",
]
