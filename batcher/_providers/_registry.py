"""The providers batcher knows, and what is built from their declarations: routing, keys, base URLs.

Routing follows LiteLLM's conventions: a ``provider/`` prefix names the provider (the rest is its
model name); a bare name is routed by model family. Both come from the adapters (``prefixes``,
``families``); prefixes are tried longest first, then families in registration order. With the
built-in providers:

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

**Adding a provider** is its module (a ``ProviderAdapter`` subclass, see ``_adapter``) and one
line in ``BUILTIN`` below, as kombu adds a transport; a provider that lives outside batcher is
registered at import of its own module with ``batcher.providers.register_provider(adapter)``
(import that module where jobs are submitted and in the workers, e.g. ``celery -A workers worker
--include=yourpackage.provider``).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from batcher._exceptions import ConfigurationError, InvalidRequestError, ProviderError, UnknownModelError
from batcher._providers._adapter import ProviderAdapter
from batcher._providers._urls import check_base

__all__ = [
    "BUILTIN",
    "PROVIDERS",
    "Route",
    "did_you_mean",
    "get_adapter",
    "model_pattern",
    "register_provider",
    "resolve_api_base",
    "resolve_api_key",
    "resolve_route",
    "unregister_provider",
    "vocabulary",
]

BUILTIN: Mapping[str, str] = MappingProxyType(
    {
        "openai": "batcher._providers._openai:OpenAIAdapter",
        "anthropic": "batcher._providers._anthropic:AnthropicAdapter",
        "cohere": "batcher._providers._cohere:CohereAdapter",
    }
)
"""The providers batcher ships, by name: ``module:class`` of each adapter (one line each)."""

_registered: dict[str, ProviderAdapter] = {}
PROVIDERS: Mapping[str, ProviderAdapter] = MappingProxyType(_registered)
"""Every registered provider by name, in registration order (a live, read-only view)."""

_GENERIC_CONTEXT_PATTERNS = (r"context (?:window|limit)",)
_GENERIC_REQUEST_ID_HEADERS = ("x-trace-id",)


@dataclass(frozen=True)
class Route:
    """Where a model name goes: the provider and the provider's own model name."""

    provider: str
    model: str


@dataclass(frozen=True)
class Vocabulary:
    """What is built from every registered adapter, once per registration (never per request)."""

    adapters: tuple[ProviderAdapter, ...]
    prefixes: tuple[tuple[str, str], ...]  # (prefix, provider), longest first
    families: tuple[tuple[re.Pattern[str], str], ...]
    fix: str  # how to route an unknown model
    error_type_statuses: Mapping[str, int]
    status_errors: Mapping[int, type[ProviderError]]
    context_window_codes: frozenset[str]
    context_window_re: re.Pattern[str]
    request_id_headers: tuple[str, ...]


def _build(adapters: tuple[ProviderAdapter, ...]) -> Vocabulary:
    prefixes = sorted(((p, a.name) for a in adapters for p in a.prefixes), key=lambda pair: -len(pair[0]))
    families = tuple((re.compile(f), a.name) for a in adapters for f in a.families)
    firsts = [a.prefixes[0] for a in adapters if a.prefixes]
    named = f"{', '.join(firsts[:-1])} or {firsts[-1]}" if len(firsts) > 1 else "".join(firsts) or "a provider/"
    hints = [a.routing_hint for a in adapters if a.routing_hint]
    statuses: dict[str, int] = {}
    errors: dict[int, type[ProviderError]] = {}
    headers: list[str] = []
    for adapter in adapters:
        statuses.update({k.lower(): v for k, v in adapter.error_type_statuses.items()})
        errors.update(adapter.status_errors)
        headers += [h for h in adapter.request_id_headers if h not in headers]
    patterns = [p for a in adapters for p in a.context_window_patterns] + list(_GENERIC_CONTEXT_PATTERNS)
    return Vocabulary(
        adapters=adapters,
        prefixes=tuple(prefixes),
        families=families,
        fix="; ".join([f"prefix it with {named}", *hints]),
        error_type_statuses=MappingProxyType(statuses),
        status_errors=MappingProxyType(errors),
        context_window_codes=frozenset(c.lower() for a in adapters for c in a.context_window_codes),
        context_window_re=re.compile("|".join(patterns), re.IGNORECASE),
        request_id_headers=(*headers, *(h for h in _GENERIC_REQUEST_ID_HEADERS if h not in headers)),
    )


_vocabulary = _build(())


def vocabulary() -> Vocabulary:
    """The routing tables and error vocabulary of the providers registered now."""
    return _vocabulary


def register_provider(adapter: ProviderAdapter, *, replace: bool = False) -> ProviderAdapter:
    """Make ``adapter``'s provider known to batcher in this process: its prefixes and families route
    to it, its key and base-URL variables are read, its error quirks are understood.

    Call it at import of the module that defines the adapter, and import that module in every
    process that submits or runs jobs. ``replace=True`` swaps a provider of the same name (tests).
    Raises ValueError for a name taken (without ``replace``), a prefix another provider routes, or
    declarations that are not well-formed.
    """
    global _vocabulary
    name = getattr(adapter, "name", None)
    if not isinstance(adapter, ProviderAdapter) or not isinstance(name, str) or not name:
        raise ValueError(f"{adapter!r} is not a ProviderAdapter with a name")
    if name in _registered and not replace:
        raise ValueError(f"a provider named {name!r} is registered already (pass replace=True to swap it)")
    for prefix in adapter.prefixes:
        if not prefix.endswith("/") or len(prefix) < 2:
            raise ValueError(f"{name}: prefix {prefix!r} must be a name followed by '/'")
        owner = next((a for p, a in _vocabulary.prefixes if p == prefix and a != name), None)
        if owner is not None:
            raise ValueError(f"{name}: prefix {prefix!r} already routes to {owner!r}")
    for family in adapter.families:
        try:
            re.compile(family)
        except re.error as exc:
            raise ValueError(f"{name}: family {family!r} is not a regular expression ({exc})") from None
    for attr in ("api_key_env_vars", "api_base_env_vars", "default_api_base", "endpoint_path", "supported_params"):
        if not hasattr(adapter, attr):
            raise ValueError(f"{name}: {attr} is not declared")
    try:
        check_base(adapter.default_api_base, f"{name}.default_api_base", explicit=False)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None
    adapters = dict(_registered)
    adapters[name] = adapter
    _vocabulary = _build(tuple(adapters.values()))
    _registered[name] = adapter
    return adapter


def unregister_provider(name: str) -> None:
    """Forget the provider ``name`` (a no-op if it is not registered)."""
    global _vocabulary
    if _registered.pop(name, None) is not None:
        _vocabulary = _build(tuple(_registered.values()))


def load_aliases(aliases: Mapping[str, str], kind: type[object], register: Callable[[Any], object]) -> None:
    """Instantiate and register each ``name: "module:Class"`` of ``aliases`` (kombu's transport aliases);
    each must be a ``kind`` named as its alias."""
    for alias, path in aliases.items():
        module, _, attr = path.partition(":")
        loaded = getattr(importlib.import_module(module), attr)()
        if not isinstance(loaded, kind) or getattr(loaded, "name", None) != alias:
            raise TypeError(f"{path} is not a {kind.__name__} named {alias!r}")
        register(loaded)


def resolve_route(model: str) -> Route:
    """The provider for a LiteLLM-style model name; UnknownModelError if none serves it."""
    words = _vocabulary
    if not isinstance(model, str) or not model:
        raise UnknownModelError(f"no model given ({model!r}); {words.fix}", field="model")
    for prefix, provider in words.prefixes:
        if model.startswith(prefix):
            rest = model[len(prefix) :]
            if not rest:
                raise UnknownModelError(f"{model!r} names no model after the {prefix!r} prefix", field="model")
            return Route(provider=provider, model=rest)
    lowered = model.lower()
    for pattern, provider in words.families:
        if pattern.match(lowered):
            return Route(provider=provider, model=model)
    guess = did_you_mean(model)
    hint = f" (did you mean {guess!r}?)" if guess else ""
    raise UnknownModelError(f"no provider is known for model {model!r}{hint}: {words.fix}", field="model")


def did_you_mean(model: str) -> str | None:
    """The routable model name closest to a mistyped one, or None: a misspelt ``provider/`` prefix
    (``opneai/gpt-4o`` -> ``openai/gpt-4o``), else the nearest name the registered providers are known
    to serve (``gtp-4o-mini`` -> ``gpt-4o-mini``, ``cluade-sonnet-4-5`` -> ``claude-sonnet-4-5``)."""
    head, slash, rest = model.partition("/")
    if slash and rest:
        prefixes = [prefix for prefix, _ in _vocabulary.prefixes]
        close = difflib.get_close_matches(f"{head.lower()}/", prefixes, n=1, cutoff=0.7)
        return f"{close[0]}{rest}" if close else None
    close = difflib.get_close_matches(model.lower(), _known_models(tuple(_registered)), n=1, cutoff=0.8)
    return close[0] if close else None


@functools.lru_cache(maxsize=4)
def _known_models(providers: tuple[str, ...]) -> tuple[str, ...]:
    """Model names of the registered providers from ``genai-prices``' table (shipped with it, read on the
    first unknown model only), kept when they route to that provider."""
    from genai_prices import data_snapshot

    names: list[str] = []
    for priced in data_snapshot.get_snapshot().providers:
        if priced.id not in providers:
            continue
        for entry in priced.models:
            name = str(entry.id)
            if _PLAIN_NAME.fullmatch(name) and _routes_to(name) == priced.id:
                names.append(name)
    return tuple(names)


_PLAIN_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]*[a-z0-9]")


def _routes_to(model: str) -> str | None:
    lowered = model.lower()
    return next((provider for pattern, provider in _vocabulary.families if pattern.match(lowered)), None)


def get_adapter(provider: str) -> ProviderAdapter:
    """The adapter for a provider name."""
    try:
        return _registered[provider]
    except KeyError:
        known = ", ".join(sorted(_registered))
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
        return check_base(explicit.strip(), "api_base", explicit=True)
    for name in adapter.api_base_env_vars:
        value = environ.get(name, "").strip()
        if value:
            return check_base(value, name, explicit=False)
    return adapter.default_api_base


def model_pattern() -> str:
    """A regular expression (JSON Schema dialect: no flags) that matches exactly the model names
    ``resolve_route`` routes now: a prefix and at least one character, or a family (any case)."""
    words = _vocabulary
    prefixes = "|".join(re.escape(p) for p, _ in words.prefixes)
    families = "|".join(_any_case(pattern.pattern.removeprefix("^")) for pattern, _ in words.families)
    alternatives = [f"(?:{prefixes})[\\s\\S]"] if prefixes else []
    if families:
        alternatives.append(families)
    return f"^(?:{'|'.join(alternatives)})" if alternatives else "^(?!)"


def _any_case(pattern: str) -> str:
    """``pattern`` matching either case of its ASCII letters (``claude-`` -> ``[cC][lL]...-``)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":  # an escape (\d, \.) stays as it is
            out.append(pattern[i : i + 2])
            i += 2
        elif char == "[":  # a class: add the other case of its letters (classes with escapes stay as they are)
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            negated = body.startswith("^")
            inner = body[1:] if negated else body
            if "\\" not in inner and inner != inner.swapcase():
                inner += inner.swapcase()
            out.append(f"[{'^' if negated else ''}{inner}]")
            i = end + 1
        elif char.isascii() and char.isalpha():
            out.append(f"[{char.lower()}{char.upper()}]")
            i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


load_aliases(BUILTIN, ProviderAdapter, register_provider)
