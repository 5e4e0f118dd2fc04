"""Sending one provider request with httpx, with transport failures mapped to batcher errors.

httpx's exception tree (httpx 0.28 "Exceptions" docs): ``TimeoutException`` (connect, read,
write, pool) becomes ProviderTimeoutError; every other ``TransportError`` (connect errors,
read/write errors, remote protocol errors, proxy errors) becomes ProviderConnectionError.
httpx timeouts bound each network operation, not the whole exchange, so the body is read
against a deadline too: a server that trickles bytes cannot hold a worker past
``timeout_s``. Error messages name the request's method and URL (without query string or
credentials) and never its headers; any API key is redacted from them. A request httpx cannot
send (``LocalProtocolError``) is an ``InvalidRequestError``, never retried; the egress policy's
refusals (``batcher._egress.EgressDeniedError``) pass through as they are.

``send`` takes a transport (a worker's ``EgressTransport``, an ``httpx.MockTransport``) or an
``httpx.Client``. A transport is handed the request as is (``handle_request``): none of a client's
machinery runs (auth flow, redirect handling, cookie jar, event hooks, a log record per request):
~1.7 of the 7.2 seconds a profiled W1 worker spent in ``Client.send``, and no cookie jar keeps what
one tenant's base set. A client is used through ``Client.send``, with whatever it is configured to do.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TypeAlias

import httpx

from batcher._exceptions import (
    InvalidRequestError,
    MalformedResponseError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
)
from batcher._providers._errors import secrets_when_needed
from batcher._secrets import redact

__all__ = ["Sender", "send"]

Sender: TypeAlias = httpx.BaseTransport | httpx.Client
"""What ``send`` sends through: a transport, as is, or a client with its own machinery."""


def _where(request: httpx.Request) -> str:
    url = request.url
    port = f":{url.port}" if url.port else ""
    return f"{request.method} {url.scheme}://{url.host}{port}{url.path}"


def send(
    via: Sender,
    request: httpx.Request,
    *,
    timeout_s: float,
    provider: str | None = None,
    model: str | None = None,
    secrets: Iterable[str | None] = (),
) -> httpx.Response:
    """Send ``request`` through ``via`` and return the whole response (any status), read within
    ``timeout_s`` seconds; transport failures raise ProviderTimeoutError or
    ProviderConnectionError (``provider`` / ``model`` label the error).

    The response's body is read and decoded; the headers that described its encoding and framing
    (``content-encoding``, ``transfer-encoding``) go and ``content-length`` is the decoded length."""
    hidden = secrets_when_needed(secrets, request)

    deadline = time.monotonic() + timeout_s
    request.extensions["timeout"] = httpx.Timeout(timeout_s).as_dict()

    def fail(cls: type[ProviderError], what: str, status: int | None = None) -> ProviderError:
        text = f"{provider or 'provider'}: {what} ({_where(request)})"
        return cls(redact(text, hidden()), model=model, llm_provider=provider, status_code=status, request=request)

    try:
        if isinstance(via, httpx.Client):
            response = via.send(request, stream=True)
        else:
            response = via.handle_request(request)
            response.request = request
    except httpx.LocalProtocolError as exc:
        # The request itself cannot be sent (a header value h11 refuses): retrying cannot help.
        raise InvalidRequestError(
            redact(f"{provider or 'provider'}: the request cannot be sent ({_where(request)}): {exc}", hidden())
        ) from None
    except httpx.TimeoutException as exc:
        raise fail(ProviderTimeoutError, f"no answer within {timeout_s:g}s: {type(exc).__name__}") from None
    except httpx.TransportError as exc:
        raise fail(ProviderConnectionError, f"{type(exc).__name__}: {exc}") from None

    status = response.status_code
    try:
        chunks: list[bytes] = []
        for chunk in response.iter_bytes():  # decoded (gzip, br, ...) as it arrives
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise fail(
                    ProviderTimeoutError,
                    f"the answer (HTTP {status}) was not complete within {timeout_s:g}s",
                    status,
                )
    except httpx.TimeoutException as exc:
        raise fail(
            ProviderTimeoutError,
            f"the answer (HTTP {status}) stalled: {type(exc).__name__}",
            status,
        ) from None
    except httpx.DecodingError as exc:
        raise fail(MalformedResponseError, f"the body could not be decoded: {exc}", status) from None
    except httpx.TransportError as exc:
        raise fail(
            ProviderConnectionError,
            f"the connection failed while reading the answer (HTTP {status}): {type(exc).__name__}: {exc}",
            status,
        ) from None
    finally:
        response.close()

    # The response itself is returned (building another costs ~0.1 ms), its body the decoded one: what
    # Response.read() would have set. The headers that described the encoding go.
    content = b"".join(chunks)
    response._content = content
    headers = response.headers
    if (
        "content-encoding" in headers
        or "transfer-encoding" in headers
        or headers.get("content-length") != str(len(content))
    ):
        for name in ("content-encoding", "transfer-encoding", "content-length"):
            if name in headers:
                del headers[name]
        headers["content-length"] = str(len(content))
    return response
