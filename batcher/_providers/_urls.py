"""Base URLs: checking one, and joining it with a provider's endpoint path.

Both are cached (URLs are immutable strings): a worker sends every request of a job to the same
endpoint, and resolves the same few bases for every request.
"""

from __future__ import annotations

import functools

import httpx

from batcher._exceptions import ConfigurationError, InvalidRequestError

__all__ = ["check_base", "endpoint_url", "is_http_url"]


@functools.lru_cache(maxsize=256)
def endpoint_url(api_base: str, endpoint_path: str, base_suffixes: tuple[str, ...]) -> httpx.URL:
    """``api_base`` joined with ``endpoint_path``, keeping any query string.

    A base that already ends with the full endpoint path is used as is; one that ends with a
    tolerated version suffix (``base_suffixes``, e.g. ``/v1`` for Anthropic) loses it first.
    """
    try:
        url = httpx.URL(api_base)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidRequestError(f"{api_base!r} is not a valid URL ({exc})", field="api_base") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequestError(f"{api_base!r} is not an http(s) URL with a host", field="api_base")
    path = url.path.rstrip("/")
    if not path.endswith(endpoint_path):
        for suffix in base_suffixes:
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        path += endpoint_path
    return url.copy_with(path=path)


@functools.lru_cache(maxsize=256)
def is_http_url(value: str) -> bool:
    """Whether ``value`` is an http(s) URL with a host."""
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError):
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def check_base(value: str, source: str, *, explicit: bool) -> str:
    """``value`` without a trailing slash; an error naming ``source`` if it is no http(s) URL
    (``InvalidRequestError`` for a caller's ``api_base``, ``ConfigurationError`` for a variable)."""
    if not is_http_url(value):
        message = f"{source}={value!r} is not an http(s) URL such as https://host/v1"
        if explicit:
            raise InvalidRequestError(message, field="api_base")
        raise ConfigurationError(message)
    return value.rstrip("/")
