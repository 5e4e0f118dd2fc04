"""The fake's side of a provider's wire format: the contract each format module fills in, and the
helpers they share."""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "Failure",
    "FakeFormat",
    "fmt_duration",
    "fmt_seconds",
    "kind_for_status",
    "last_user_text",
    "random_id",
    "rfc3339_in",
    "text_of",
    "word_count",
]


@dataclass(slots=True)
class Failure:
    """An error answer before it is put in a provider's shape."""

    status: int
    kind: str  # auth_missing auth_invalid bad_request not_found permission rate_limit ...
    message: str | None = None  # None: the provider's usual message for the kind
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None
    rl_limit: int | None = None  # rate-limit header values, when a limiter is involved
    rl_remaining: int | None = None
    rl_reset_s: float | None = None


class FakeFormat:
    """One provider's wire format as the fake serves it: auth, validation, success and error bodies.

    ``name`` is the provider's name in batcher's registry (``batcher.providers``), ``path`` the
    endpoint served (``POST``), ``base_path`` what that provider's SDK puts in a base URL after the
    host (``/v1`` for OpenAI, nothing for Anthropic and Cohere). Subclasses implement the
    ``NotImplementedError`` methods; the others have the common behaviour.
    """

    name: ClassVar[str]
    path: ClassVar[str]
    base_path: ClassVar[str] = ""
    known_params: ClassVar[frozenset[str]] = frozenset()
    length_reason: ClassVar[str] = "length"

    # --- auth / headers -----------------------------------------------------------------

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        """The key a request carries (default: ``Authorization: Bearer``); None: it carries none."""
        auth = headers.get("authorization")
        if auth is None:
            return None
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    def check_headers(self, headers: Mapping[str, str]) -> Failure | None:
        """A failure for required headers that are missing (checked after the key, before the body)."""
        return None

    def check_auth(self, headers: Mapping[str, str], raw_body: bytes, key: str) -> Failure | None:
        """A failure when the request is not properly authenticated with ``key`` beyond carrying it
        (e.g. a signature over the body); called once the key is known to be the expected one."""
        return None

    # --- body ----------------------------------------------------------------------------

    def invalid_json(self) -> Failure:
        """The answer to a body that is not a JSON object."""
        raise NotImplementedError

    def validate(self, body: dict[str, Any], strict: bool) -> Failure | None:
        """The answer to a body the real API refuses (``strict``: unknown fields too)."""
        raise NotImplementedError

    def model(self, body: dict[str, Any]) -> str | None:
        """The model a body names."""
        model = body.get("model")
        return model if isinstance(model, str) else None

    def prompt(self, body: dict[str, Any]) -> str | None:
        """The text of the last user message (recorded, and echoed back)."""
        messages = body.get("messages")
        return last_user_text(messages) if isinstance(messages, list) else None

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        value = body.get("max_tokens")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def prompt_words(self, body: dict[str, Any]) -> int:
        total = 0
        for m in body.get("messages") or ():
            if isinstance(m, dict):
                total += word_count(text_of(m.get("content")))
        return total

    # --- answers -------------------------------------------------------------------------

    def success(
        self,
        model: str,
        text: str,
        truncated: bool,
        prompt_tokens: int,
        completion_tokens: int,
        body: dict[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        """(response id, JSON body)."""
        raise NotImplementedError

    def error_body(self, failure: Failure, model: str | None, request_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def context_failure(self, words: int, window: int) -> Failure:
        raise NotImplementedError

    def request_id_headers(self) -> tuple[str, dict[str, str]]:
        """(request id, the headers that carry it) for one answer."""
        raise NotImplementedError

    def rate_limit_headers(self, limit: int, remaining: int, reset_s: float) -> dict[str, str]:
        return {}

    def success_headers(self, latency_s: float) -> dict[str, str]:
        """Headers of its own on a success (OpenAI's ``openai-processing-ms``)."""
        return {}

    def error_headers(self, failure: Failure) -> dict[str, str]:
        """Headers of its own on an error (OpenAI's ``www-authenticate`` on a 401)."""
        return {}


_KIND_BY_STATUS = {
    400: "bad_request",
    401: "auth_invalid",
    403: "permission",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    422: "unprocessable",
    429: "rate_limit",
    529: "overloaded",
}


def kind_for_status(status: int) -> str:
    return _KIND_BY_STATUS.get(status, "server_error" if status >= 500 else "bad_request")


def text_of(content: Any) -> str:
    """Plain text of a message's content: a string or a list of ``{type: text, text}``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(parts)
    return ""


def last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return text_of(m.get("content"))
    return ""


def word_count(text: str) -> int:
    return len(text.split())


def fmt_seconds(s: float) -> str:
    """``1`` for whole seconds, else up to millisecond precision (``0.25``)."""
    ms = math.ceil(s * 1000 - 1e-9)
    if ms % 1000 == 0:
        return str(ms // 1000)
    return f"{ms / 1000:.3f}".rstrip("0")


def fmt_duration(s: float) -> str:
    """OpenAI's reset duration style: ``"120ms"``, ``"1s"``, ``"6.5s"``, ``"6m0s"``."""
    if s < 1:
        return f"{max(1, math.ceil(s * 1000))}ms"
    if s < 60:
        return f"{fmt_seconds(s)}s"
    minutes, sec = divmod(math.ceil(s), 60)
    return f"{minutes}m{sec}s"


def rfc3339_in(s: float) -> str:
    # Whole seconds, as the real headers are, rounded up: a reset is never announced early.
    at = _dt.datetime.fromtimestamp(math.ceil(time.time() + s), tz=_dt.UTC)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def random_id(n: int) -> str:
    return os.urandom((n + 1) // 2).hex()[:n]
