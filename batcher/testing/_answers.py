"""What the fake answers, once a request is admitted: the failure a behaviour calls for, error answers in
a provider's shape, and the malformed bodies a gateway or a broken server sends."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from batcher.testing.config import ModelBehaviour
from batcher.testing.formats import Failure, FakeFormat
from batcher.testing.formats._base import fmt_seconds, kind_for_status
from batcher.testing.recording import RecordedRequest

__all__ = ["behaviour_failure", "draw", "error_response", "malformed_response"]

NOMINAL_RPM = 10_000  # limit reported on behaviour-driven 429s when no RPM limit is configured

_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_HTML_200 = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    b"<body><p>Checking your browser before accessing the API.</p></body></html>"
)
_NON_JSON = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"


def behaviour_failure(
    fmt: FakeFormat,
    b: ModelBehaviour,
    body: dict[str, Any],
    model: str,
    prompt: str,
    count: int,
    attempt: int,
    *,
    seed: int | None,
    rpm_limit: int | None,
) -> tuple[Failure | None, str]:
    """The failure ``b`` calls for on the ``count``-th request for ``model`` (``attempt``-th of
    ``prompt``), with its outcome name; (None, "ok") for a success."""
    if b.context_window is not None:
        words = fmt.prompt_words(body)
        if words > b.context_window:
            return fmt.context_failure(words, b.context_window), "context_window"
    if b.fail_always_status is not None:
        return _status_failure(b, b.fail_always_status, rpm_limit), "fail_always"
    if b.fail_first_n:
        n = count if b.fail_first_scope == "model" else attempt
        if n <= b.fail_first_n:
            return _status_failure(b, b.fail_first_status, rpm_limit), "fail_first_n"
    if b.fail_every_n and count % b.fail_every_n == 0:
        return _status_failure(b, b.fail_every_status, rpm_limit), "fail_every_n"
    if b.error_rate_429 or b.error_rate_5xx:
        u = draw(seed, model, prompt, attempt)
        if u < b.error_rate_429:
            return _status_failure(b, 429, rpm_limit), "error_429"
        if u < b.error_rate_429 + b.error_rate_5xx:
            return _status_failure(b, b.error_5xx_status, rpm_limit), "error_5xx"
    return None, "ok"


def _status_failure(b: ModelBehaviour, status: int, rpm_limit: int | None) -> Failure:
    kind = kind_for_status(status)
    if status == 429:
        wait = b.retry_after_s
        return Failure(
            429,
            kind,
            b.error_message,
            retry_after_s=wait,
            rl_limit=b.rpm_limit or rpm_limit or NOMINAL_RPM,
            rl_remaining=0,
            rl_reset_s=wait if wait is not None else 1.0,
        )
    if status == 401:
        return Failure(status, kind, b.error_message, param="sk-fake-rejected-key")
    return Failure(status, kind, b.error_message)


def draw(seed: int | None, model: str, prompt: str, attempt: int) -> float:
    """Uniform [0, 1) from (seed, model, prompt, attempt); random when seed is None."""
    if seed is None:
        return random.random()
    digest = hashlib.blake2b(f"{seed}\x00{model}\x00{prompt}\x00{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def error_response(
    fmt: FakeFormat,
    rec: RecordedRequest,
    failure: Failure,
    outcome: str,
    extra: Mapping[str, str] | None = None,
) -> web.Response:
    """``failure`` in ``fmt``'s shape, with its headers (request id, rate limits, Retry-After)."""
    request_id, headers = fmt.request_id_headers()
    if extra:
        headers.update(extra)
    if failure.status == 429:
        if failure.retry_after_s is not None:
            headers["retry-after"] = fmt_seconds(failure.retry_after_s)
            headers["retry-after-ms"] = str(math.ceil(failure.retry_after_s * 1000))
        if failure.rl_limit is not None:  # a concurrency limit's 429 states no window
            headers.update(
                fmt.rate_limit_headers(
                    failure.rl_limit,
                    failure.rl_remaining or 0,
                    failure.rl_reset_s if failure.rl_reset_s is not None else 1.0,
                )
            )
    headers.update(fmt.error_headers(failure))
    payload = fmt.error_body(failure, rec.model, request_id)
    rec.status = failure.status
    rec.outcome = outcome
    return web.Response(
        body=json.dumps(payload).encode(),
        status=failure.status,
        headers=headers,
        content_type="application/json",
    )


def malformed_response(
    rec: RecordedRequest,
    mode: str,
    payload: dict[str, Any],
    headers: dict[str, str],
) -> web.Response:
    """The answer of ``ModelBehaviour.malformed`` (``payload`` is the success it spoils)."""
    rec.outcome = f"malformed:{mode}"
    if mode == "html":
        rec.status = 502
        return web.Response(body=_HTML_502, status=502, content_type="text/html")
    rec.status = 200
    if mode == "html_200":
        return web.Response(body=_HTML_200, status=200, content_type="text/html")
    if mode == "non_json":
        return web.Response(body=_NON_JSON, status=200, content_type="text/plain")
    if mode == "empty":
        return web.Response(body=b"", status=200, headers=headers, content_type="application/json")
    if mode == "wrong_shape":
        wrong = {"result": {"output": rec.reply}, "status": "succeeded"}
        return web.Response(
            body=json.dumps(wrong).encode(),
            status=200,
            headers=headers,
            content_type="application/json",
        )
    full = json.dumps(payload).encode()  # truncated
    return web.Response(
        body=full[: len(full) // 2],
        status=200,
        headers=headers,
        content_type="application/json",
    )
