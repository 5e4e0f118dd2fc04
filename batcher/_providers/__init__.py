"""The provider layer: from a LiteLLM-style call to one HTTP request and back.

    route = resolve_route("claude-sonnet-4-5")                 # Route("anthropic", ...)
    params = check_params(route.provider, params, drop_params=False)   # before submitting
    api_key = resolve_api_key(route.provider, api_key, os.environ)
    api_base = resolve_api_base(route.provider, api_base, os.environ)
    response = complete(transport, route, messages, params,
                        api_key=api_key, api_base=api_base, timeout_s=60)

``build_request`` and ``parse_response`` are pure, so each provider's wire format can be
tested without a network; ``send`` does the I/O, through a transport handed the request as is (a
worker's ``EgressTransport``) or an ``httpx.Client`` (``_http.Sender``).

A provider is one module that declares everything about itself (``_adapter.ProviderAdapter``):
``_openai`` (Chat Completions), ``_anthropic`` (Messages API), ``_cohere`` (Chat v2), each
naming the documentation and SDK types it follows. The rest is shared:

==================  =========================================================================
``_adapter``        the contract a provider module fills in, and the request built from it
``_registry``       the registered providers (``BUILTIN`` aliases, ``register_provider``);
                    routing, key and base-URL lookups, the merged error vocabulary
``_params``         which parameters a provider takes (``check_params``)
``_urls``           checking a base URL and joining it with the endpoint path
``_errors``         an HTTP answer as a ``ModelResponse`` or the batcher error it stands for
``_retry_after``    how long a 429 asked us to wait
``_http``           sending, with transport failures mapped to batcher errors
``_translate``      helpers for translating OpenAI's chat format to another provider's
==================  =========================================================================

Providers outside batcher register through the public ``batcher.providers`` module.

``check_params`` rules:

* ``stream=True`` is always refused (UnsupportedParamsError, field ``stream``), even with
  ``drop_params=True``: batcher stores whole responses. ``stream=False`` is dropped.
* A parameter whose value is None is dropped, as LiteLLM does.
* A parameter the provider does not take, or a value it cannot express (``n=2`` for
  Anthropic or Cohere, a named ``tool_choice`` for Cohere, ``response_format`` json_object
  for Anthropic, non-function tools), raises UnsupportedParamsError naming it, unless
  ``drop_params=True`` drops it.
* ``extra_body`` / ``extra_headers`` (dicts) are taken by every provider and merged into the
  JSON body / headers verbatim: the escape hatch for provider options batcher does not map
  (e.g. vLLM's ``top_k`` via ``openai/``). ``extra_headers`` may not set authentication,
  framing or routing headers, and each must be sendable (``batcher._egress.check_extra_headers``):
  refused with ``InvalidRequestError`` naming ``extra_headers.<name>``, even with ``drop_params``.

``complete`` redacts the key it sent from the answer too, should the provider echo it.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from batcher._cost import response_cost
from batcher._providers._adapter import ProviderAdapter
from batcher._providers._anthropic import ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS
from batcher._providers._errors import parse_http_response, request_secrets
from batcher._providers._http import Sender, send
from batcher._providers._params import check_params_for
from batcher._providers._registry import (
    PROVIDERS,
    Route,
    get_adapter,
    register_provider,
    resolve_api_base,
    resolve_api_key,
    resolve_route,
    unregister_provider,
)
from batcher._providers._retry_after import RateLimitInfo, rate_limit_info, retry_after_seconds
from batcher._ratelimit import deployment_id
from batcher._response import ModelResponse
from batcher._secrets import redact

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "PROVIDERS",
    "ProviderAdapter",
    "RateLimitInfo",
    "Route",
    "Sender",
    "build_request",
    "check_params",
    "complete",
    "fill_hidden_params",
    "get_adapter",
    "parse_response",
    "public_base_url",
    "rate_limit_info",
    "redact",
    "redact_response",
    "register_provider",
    "resolve_api_base",
    "resolve_api_key",
    "resolve_route",
    "retry_after_seconds",
    "send",
    "unregister_provider",
]

PUBLIC_BASE_URLS_CACHED = 256
"""Distinct ``api_base`` values whose public form each process remembers."""


def check_params(provider: str, params: Mapping[str, Any], *, drop_params: bool) -> dict[str, Any]:
    """The OpenAI-style params to keep for ``provider``; refuses (or, with ``drop_params``,
    drops) what it cannot take. Call it before anything is stored or sent."""
    return check_params_for(get_adapter(provider), params, drop_params=drop_params)


def build_request(
    route: Route,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    *,
    api_key: str | None,
    api_base: str,
) -> httpx.Request:
    """The exact HTTP request (method, URL, headers with auth, JSON body) for ``route``.

    Pure: no I/O. Raises InvalidRequestError (incl. UnsupportedParamsError) for messages or
    params the provider cannot take, so it can double as a dry run at submission time.
    """
    adapter = get_adapter(route.provider)
    return adapter.build_request(route.model, messages, params, api_key=api_key, api_base=api_base)


def parse_response(route: Route, response: httpx.Response) -> ModelResponse:
    """The provider's answer as a ``ModelResponse``; a failure raises the matching
    ``batcher._exceptions`` error (with ``model``, ``provider``, ``status_code``).

    Any key carried by ``response.request`` is redacted from error messages.
    """
    return parse_http_response(get_adapter(route.provider), route.model, response)


def complete(
    via: Sender,
    route: Route,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    *,
    api_key: str | None,
    api_base: str,
    timeout_s: float,
    on_headers: Callable[[httpx.Headers], None] | None = None,
) -> ModelResponse:
    """One completion: build, send, parse. ``_response_ms`` (``latency_ms``) is the time from
    sending to having the whole answer; ``_hidden_params`` as ``fill_hidden_params`` fills them.
    ``on_headers`` is handed the answer's headers (whatever its status) before it is parsed: the
    adaptive limiter learns the deployment's limits from them."""
    adapter = get_adapter(route.provider)
    request = adapter.build_request(route.model, messages, params, api_key=api_key, api_base=api_base)
    started = time.perf_counter()
    response = send(
        via,
        request,
        timeout_s=timeout_s,
        provider=adapter.name,
        model=route.model,
        secrets=[api_key],
    )
    latency_ms = (time.perf_counter() - started) * 1000.0
    if on_headers is not None:
        on_headers(response.headers)
    secrets = [api_key, *request_secrets(request)]
    result = parse_http_response(adapter, route.model, response, secrets=secrets)
    if _may_echo(response.content, secrets):
        result = redact_response(result, secrets)
    fill_hidden_params(result, route, api_base=api_base, api_key=api_key)
    result._response_ms = latency_ms
    return result


def fill_hidden_params(response: ModelResponse, route: Route, *, api_base: str, api_key: str | None) -> None:
    """LiteLLM's ``_hidden_params`` of an answer: ``custom_llm_provider``, ``api_base`` (without
    userinfo, query or fragment: nothing secret), ``model_id`` (the deployment, base URL and key,
    as the rate limiter names it: a hash, never the key) and ``response_cost`` (USD, None for a
    model without a known price)."""
    usage = response.usage
    details = usage.prompt_tokens_details if usage is not None else None
    extra = usage.model_extra or {} if usage is not None else {}
    cost = (
        response_cost(
            route.provider,
            (response.model, route.model),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=(details.cached_tokens or 0) if details is not None else 0,
            cache_write_tokens=int(extra.get("cache_creation_input_tokens") or 0),
        )
        if usage is not None
        else None
    )
    response._hidden_params.update(
        custom_llm_provider=route.provider,
        api_base=public_base_url(api_base),
        model_id=deployment_id(api_base, api_key),
        response_cost=cost,
    )


@functools.lru_cache(maxsize=PUBLIC_BASE_URLS_CACHED)
def public_base_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: what may be shown and stored.

    Remembered per base: parsing it is ~0.1 ms of CPU, and every answer of a job has the same base."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return ""
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def _may_echo(body: bytes, secrets: Sequence[str | None]) -> bool:
    """A cheap first look at the raw body: a secret in it as is, or JSON ``\\u`` escapes that could spell one."""
    return any(s.encode() in body for s in secrets if s) or b"\\u" in body


def redact_response(response: ModelResponse, secrets: Sequence[str | None]) -> ModelResponse:
    """``response`` without any of ``secrets`` (a provider that echoes the key it was sent, which would
    then be stored in clear): a substring check per secret on the serialised answer, and a re-parse
    only when one is there."""
    found = [s for s in secrets if s]
    if not found:
        return response
    text = response.model_dump_json()
    hidden = [*found, *(json.dumps(s)[1:-1] for s in found)]  # also as JSON text spells them
    if not any(s in text for s in hidden):
        return response
    redacted = ModelResponse.model_validate_json(redact(text, hidden))
    redacted._hidden_params = dict(response._hidden_params)
    redacted._response_ms = response._response_ms
    return redacted
