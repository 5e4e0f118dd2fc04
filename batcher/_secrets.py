"""Keeping provider keys out of everything that is stored or logged.

A per-call ``api_key=`` has to reach the worker that makes the call, possibly on another
machine and possibly after Redis lost its data. It travels and rests only as Fernet
ciphertext (``jobs.credentials``), under ``BATCHER_SECRET_KEY``, which submitters and
workers share and Postgres never sees. Keys from the environment (``OPENAI_API_KEY`` ...)
are read by each worker from its own environment and are never copied anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet, InvalidToken

from batcher._config import Settings
from batcher._exceptions import ConfigurationError

REDACTED = "***"


def _fernet(settings: Settings) -> Fernet:
    if settings.secret_key is None:
        raise ConfigurationError(
            "api_key= per call needs BATCHER_SECRET_KEY, shared by submitters and workers, so the key "
            "can travel encrypted; create one with `batcher secret-key`, or set the provider's key "
            "variable (e.g. OPENAI_API_KEY) in the workers' environment instead"
        )
    try:
        return Fernet(settings.secret_key.get_secret_value().encode())
    except ValueError:
        raise ConfigurationError(
            "BATCHER_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes); "
            "create one with `batcher secret-key`"
        ) from None


def seal(api_key: str, settings: Settings) -> str:
    """Encrypt a per-call API key for storage on the job."""
    return _fernet(settings).encrypt(api_key.encode()).decode()


def unseal(token: str, settings: Settings) -> str:
    """Decrypt a sealed key; raises ``ConfigurationError`` if this process has the wrong secret key."""
    try:
        return _fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ConfigurationError(
            "this worker cannot decrypt the job's api_key: its BATCHER_SECRET_KEY differs from the submitter's"
        ) from None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each non-empty secret with ``***``.

    Longest first, so a key that contains another secret is still hidden whole.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def redact_json(value: Any, secrets: Iterable[str | None]) -> Any:
    """``value`` (decoded JSON) with ``redact`` applied to every string in it, keys included."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {redact(str(k), secrets): redact_json(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v, secrets) for v in value]
    return value


def strip_url_credentials(url: str) -> str:
    """``https://user:pass@host/v1`` -> ``https://***@host/v1`` so a base URL can be stored."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))
