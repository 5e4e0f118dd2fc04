"""Adding a provider to batcher from your own package: the provider plugin API.

A provider is one ``ProviderAdapter`` subclass that declares everything about itself (routing
prefixes and families, key and base-URL variables, auth, wire format both ways, error quirks,
rate-limit headers, the parameters it takes); registering an instance makes batcher route to it,
read its variables, check its parameters and understand its errors::

    # yourpackage/echo_provider.py
    from batcher.providers import ProviderAdapter, add_auth_headers, register_provider

    class EchoAdapter(ProviderAdapter):
        name = "echo"
        prefixes = ("echo/",)
        api_key_env_vars = ("ECHO_API_KEY",)
        api_base_env_vars = ("ECHO_BASE_URL",)
        default_api_base = "https://api.echo.example"
        endpoint_path = "/v1/reply"
        supported_params = frozenset({"max_tokens"})

        def authenticate(self, request, api_key):
            add_auth_headers(request, api_key, {"x-echo-key": api_key} if api_key else {})

        def build_body(self, model, messages, params): ...
        def parse_body(self, model, body): ...

    register_provider(EchoAdapter())

Import that module wherever jobs are submitted (a ``Client``, ``batcher api``) and in every
worker: ``batcher worker --include=yourpackage.echo_provider`` (extra arguments go to Celery).
``batcher.testing.register_format`` gives the fake provider the same wire format, for tests.
See ``docs/design.md``, "Adding a provider".
"""

from __future__ import annotations

from batcher._providers._adapter import ProviderAdapter, add_auth_headers, bearer_headers
from batcher._providers._registry import PROVIDERS, Route, register_provider, resolve_route, unregister_provider
from batcher._providers._retry_after import parse_duration, pick_reset, seconds_until
from batcher._providers._translate import content_text, finish_reason_fields, stop_list

__all__ = [
    "PROVIDERS",
    "ProviderAdapter",
    "Route",
    "add_auth_headers",
    "bearer_headers",
    "content_text",
    "finish_reason_fields",
    "parse_duration",
    "pick_reset",
    "register_provider",
    "resolve_route",
    "seconds_until",
    "stop_list",
    "unregister_provider",
]
