"""The provider contract: everything one provider module declares about itself.

A provider is one module with one ``ProviderAdapter`` subclass; the registry
(``batcher._providers._registry``) holds one instance each and builds routing, the key and
base-URL lookups and the error vocabulary from their declarations:

=========================  ===============================================================
routing                    ``name``; ``prefixes`` (LiteLLM's ``provider/`` prefixes),
                           ``families`` (regular expressions matched against a bare,
                           lower-cased model name), ``routing_hint``
where it lives             ``api_key_env_vars`` and ``api_base_env_vars`` (in the order
                           they are read), ``default_api_base``, ``endpoint_path``,
                           ``base_suffixes`` (version suffixes tolerated at a base's end)
parameters                 ``supported_params`` and ``check_value`` (values it cannot take)
auth                       ``authenticate(request, api_key)``: puts the credentials on the
                           request once it is complete (method, URL, headers, body), so a
                           header key, an OAuth bearer token or a signature over the whole
                           request (SigV4) all fit; ``add_auth_headers`` does the first
wire format               ``build_body`` (OpenAI-style messages and checked params to the
                           provider's JSON), ``parse_body`` (its 2xx JSON to a
                           ``ModelResponse``), ``is_success_body`` (a 2xx that is an error)
errors                     ``error_details`` (message and code from its error bodies),
                           ``error_type_statuses`` (error types/codes to the HTTP status
                           they stand for), ``status_errors`` (statuses of its own, such as
                           Cohere's 498), ``context_window_patterns`` / ``_codes``,
                           ``request_id_headers``
rate limits                ``rate_limit_wait`` (its rate-limit reset headers),
                           ``rate_limit_info`` (its limit, remaining and reset headers as a
                           ``RateLimitInfo``, what the adaptive limiter learns from)
=========================  ===============================================================

Error quirks and rate-limit headers are honoured on every route, not only the declaring
provider's: a proxy or an OpenAI-compatible server may pass another provider's errors and
headers through unchanged. The registry merges them once, when a provider is registered.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar

import httpx

from batcher._exceptions import InvalidRequestError, ProviderError
from batcher._providers._params import check_params_for
from batcher._providers._retry_after import RateLimitInfo
from batcher._providers._urls import endpoint_url
from batcher._response import ModelResponse

__all__ = ["ProviderAdapter", "add_auth_headers", "bearer_headers"]

_NO_STATUSES: Mapping[str, int] = MappingProxyType({})
_NO_ERRORS: Mapping[int, type[ProviderError]] = MappingProxyType({})


class ProviderAdapter(abc.ABC):
    """One provider's declarations and wire format (see the module docstring for the list).

    Adapters are stateless; the registry (``PROVIDERS``) holds one instance each.
    """

    # --- routing -------------------------------------------------------------------------
    name: ClassVar[str]
    prefixes: ClassVar[tuple[str, ...]] = ()
    """``provider/`` prefixes (``"cohere/"``, ``"cohere_chat/"``): the rest is the provider's model name."""
    families: ClassVar[tuple[str, ...]] = ()
    """Regular expressions a bare model name (lower-cased) is matched against, from its start."""
    routing_hint: ClassVar[str] = ""
    """Said to a caller whose model routes nowhere (OpenAI's: ``openai/`` serves any compatible server)."""

    # --- where it lives ------------------------------------------------------------------
    api_key_env_vars: ClassVar[tuple[str, ...]]
    api_base_env_vars: ClassVar[tuple[str, ...]]
    default_api_base: ClassVar[str]
    endpoint_path: ClassVar[str]
    base_suffixes: ClassVar[tuple[str, ...]] = ()
    """Version suffixes tolerated at the end of a base URL (``.../v1`` for Anthropic)."""

    # --- parameters ----------------------------------------------------------------------
    supported_params: ClassVar[frozenset[str]]

    # --- errors --------------------------------------------------------------------------
    error_type_statuses: ClassVar[Mapping[str, int]] = _NO_STATUSES
    """Error ``type``s / ``code``s to the HTTP status they stand for, for error bodies sent with a 2xx."""
    status_errors: ClassVar[Mapping[int, type[ProviderError]]] = _NO_ERRORS
    """Statuses this provider gives a meaning of its own (Cohere's 498 invalid token)."""
    context_window_patterns: ClassVar[tuple[str, ...]] = ()
    """Regular expressions (case-insensitive) of its "the prompt is too long" messages."""
    context_window_codes: ClassVar[frozenset[str]] = frozenset()
    """Error codes that mean the prompt is too long."""
    request_id_headers: ClassVar[tuple[str, ...]] = ()
    """Response headers that carry its request id (quoted in error texts)."""

    def check_value(self, name: str, value: Any) -> str | None:
        """Why this provider cannot take ``name=value`` (None: it can)."""
        return None

    @abc.abstractmethod
    def authenticate(self, request: httpx.Request, api_key: str | None) -> None:
        """Put the credentials on ``request``, which is otherwise complete (called last).

        Header keys: ``add_auth_headers(request, api_key, {...})``. A signing scheme (SigV4) signs
        the method, URL, headers and body it finds; an OAuth adapter puts its bearer token.
        Must not do I/O per request (cache any token it fetches).
        """

    @abc.abstractmethod
    def build_body(
        self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The JSON body for already-checked OpenAI-style ``params``."""

    @abc.abstractmethod
    def parse_body(self, model: str, body: Mapping[str, Any]) -> ModelResponse:
        """A 2xx JSON body as a ``ModelResponse``. KeyError/TypeError/ValueError mean the
        body is malformed; a ``ProviderError`` means the provider reported a failure."""

    def is_success_body(self, body: Mapping[str, Any]) -> bool:
        """False when a 2xx body is really an error report (OpenAI-style ``{"error": ...}``)."""
        return "error" not in body or "choices" in body

    def error_details(self, body: Mapping[str, Any]) -> tuple[Any, Any] | None:
        """(message, code-or-type) as found in an error body of this provider's shape (non-strings are
        quoted as JSON); None if the body is not one."""
        return None

    def rate_limit_wait(self, headers: httpx.Headers, now: datetime) -> float | None:
        """Seconds until the rate limit this provider's headers describe resets (None: no such headers)."""
        return None

    def rate_limit_info(self, headers: httpx.Headers, now: datetime) -> RateLimitInfo | None:
        """The limits, remaining amounts and reset times this provider's own headers state (None: it sent
        none). ``retry-after`` is read for every provider by the caller."""
        return None

    def endpoint_url(self, api_base: str) -> httpx.URL:
        """``api_base`` joined with the endpoint path, keeping any query string.

        A base that already ends with the full endpoint path is used as is.
        """
        return endpoint_url(api_base, self.endpoint_path, self.base_suffixes)

    def build_request(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        *,
        api_key: str | None,
        api_base: str,
    ) -> httpx.Request:
        """The complete HTTP request; raises InvalidRequestError for input it cannot send."""
        checked = check_params_for(self, params, drop_params=False)
        extra_body = checked.pop("extra_body", None) or {}
        extra_headers = checked.pop("extra_headers", None) or {}
        body = self.build_body(model, messages, checked)
        body.update(extra_body)
        try:
            content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"the request cannot be encoded as JSON: {exc}", field="messages") from None
        url = self.endpoint_url(api_base)
        try:
            headers = httpx.Headers({"content-type": "application/json", "accept": "application/json"})
            headers["user-agent"] = "batcher"
            for name, value in extra_headers.items():  # checked: no auth, framing or routing header
                headers[name] = value
            request = httpx.Request("POST", url, headers=headers, content=content)
            self.authenticate(request, api_key)
            return request
        except (UnicodeError, ValueError, TypeError) as exc:  # e.g. a non-ASCII api_key: never a worker crash
            raise InvalidRequestError(f"the request cannot be sent: {type(exc).__name__}", field="api_key") from None


def add_auth_headers(request: httpx.Request, api_key: str | None, headers: Mapping[str, str]) -> None:
    """Set ``headers`` on ``request``. An extra header the caller set may choose what carries no key
    (``anthropic-version``); a header that carries the key is always batcher's."""
    current = request.headers
    for name, value in headers.items():
        if name in current and not (api_key and api_key in value):
            continue
        current[name] = value


def bearer_headers(api_key: str | None) -> dict[str, str]:
    """``Authorization: Bearer <key>``; nothing at all without a key (keyless local servers)."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}
