"""Which provider serves a model name, and where its key and base URL come from.

Routing follows LiteLLM's conventions (``provider/model`` prefixes; bare names by model
family). Env var names follow each official SDK: ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``
(``openai`` SDK; ``OPENAI_API_BASE`` is the pre-1.0 name LiteLLM still reads),
``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL`` (``anthropic`` SDK), ``CO_API_KEY`` /
``CO_API_URL`` (``cohere`` SDK; ``COHERE_API_KEY`` / ``COHERE_API_BASE`` are LiteLLM's).

Routing table (first match wins):

=============================================  ==========
``openai/<anything>``                          openai (any OpenAI-compatible server)
``anthropic/<anything>``                       anthropic
``cohere/<anything>``, ``cohere_chat/<...>``   cohere
``gpt-*``, ``chatgpt-*``, ``o1``..``o9`` and
``o<N>-*`` (o1, o3-mini, o4-mini), ``ft:gpt-*``  openai
``claude-*``                                   anthropic
``command``, ``command-*``, ``c4ai-aya-*``     cohere
=============================================  ==========

Bare ``text-*`` names are *not* routed: OpenAI's are embedding or legacy completion models,
which the chat endpoint does not serve. Anything else (``azure/...``, ``llama3``, ...) is an
``UnknownModelError`` that says how to route it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import httpx

from batcher._exceptions import ConfigurationError, InvalidRequestError, UnknownModelError
from batcher._providers._anthropic import AnthropicAdapter
from batcher._providers._base import ProviderAdapter
from batcher._providers._cohere import CohereAdapter
from batcher._providers._openai import OpenAIAdapter

__all__ = [
    "PROVIDERS",
    "Route",
    "get_adapter",
    "resolve_api_base",
    "resolve_api_key",
    "resolve_route",
]

PROVIDERS: Mapping[str, ProviderAdapter] = MappingProxyType(
    {a.name: a for a in (OpenAIAdapter(), AnthropicAdapter(), CohereAdapter())}
)

_PREFIXES = {
    "openai/": "openai",
    "anthropic/": "anthropic",
    "cohere/": "cohere",
    "cohere_chat/": "cohere",  # LiteLLM's older name for Cohere chat
}

_FAMILIES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(gpt-|chatgpt-|ft:gpt-)"), "openai"),
    (re.compile(r"^o[1-9]\d*(-|$)"), "openai"),
    (re.compile(r"^claude-"), "anthropic"),
    (re.compile(r"^(command(-|$)|c4ai-aya-)"), "cohere"),
)

_FIX = (
    "prefix it with openai/, anthropic/ or cohere/; openai/ works for any OpenAI-compatible "
    "server such as vLLM, Ollama, Groq, Together with OPENAI_BASE_URL or api_base="
)


@dataclass(frozen=True)
class Route:
    """Where a model name goes: the provider and the provider's own model name."""

    provider: str
    model: str


def resolve_route(model: str) -> Route:
    """The provider for a LiteLLM-style model name; UnknownModelError if none serves it."""
    if not isinstance(model, str) or not model:
        raise UnknownModelError(f"no model given ({model!r}); {_FIX}", field="model")
    for prefix, provider in _PREFIXES.items():
        if model.startswith(prefix):
            rest = model[len(prefix) :]
            if not rest:
                raise UnknownModelError(f"{model!r} names no model after the {prefix!r} prefix", field="model")
            return Route(provider=provider, model=rest)
    lowered = model.lower()
    for pattern, provider in _FAMILIES:
        if pattern.match(lowered):
            return Route(provider=provider, model=model)
    raise UnknownModelError(f"no provider is known for model {model!r}: {_FIX}", field="model")


def get_adapter(provider: str) -> ProviderAdapter:
    """The adapter for a provider name."""
    try:
        return PROVIDERS[provider]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise InvalidRequestError(f"unknown provider {provider!r} (known: {known})", field="provider") from None


def resolve_api_key(provider: str, explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """``explicit`` if given, else the provider's env vars in order; None if there is none.

    Empty values count as unset; surrounding whitespace (a pasted newline) is stripped.
    """
    adapter = get_adapter(provider)
    if explicit and explicit.strip():
        return explicit.strip()
    for name in adapter.api_key_env_vars:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


@functools.lru_cache(maxsize=256)
def _is_http_url(value: str) -> bool:
    """Cached: workers resolve the same few bases for every request."""
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError):
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def _check_base(value: str, source: str, *, explicit: bool) -> str:
    if not _is_http_url(value):
        message = f"{source}={value!r} is not an http(s) URL such as https://host/v1"
        if explicit:
            raise InvalidRequestError(message, field="api_base")
        raise ConfigurationError(message)
    return value.rstrip("/")


def resolve_api_base(provider: str, explicit: str | None, environ: Mapping[str, str]) -> str:
    """``explicit``, else the provider's env vars in order, else its public endpoint.

    Returned without a trailing slash. Conventions (as in each SDK): OpenAI's base includes
    the version (``https://api.openai.com/v1``, ``http://localhost:8000/v1``) and the path
    ``/chat/completions`` is appended; Anthropic's has none (``https://api.anthropic.com``,
    path ``/v1/messages``; a trailing ``/v1`` is tolerated); Cohere's has none
    (``https://api.cohere.com``, path ``/v2/chat``; a trailing ``/v2`` is tolerated). A base
    that already ends with the endpoint path is used as is.
    """
    adapter = get_adapter(provider)
    if explicit and explicit.strip():
        return _check_base(explicit.strip(), "api_base", explicit=True)
    for name in adapter.api_base_env_vars:
        value = environ.get(name, "").strip()
        if value:
            return _check_base(value, name, explicit=False)
    return adapter.default_api_base
