"""HTTP statuses, bodies and transport failures mapped to batcher's errors, over MockTransport.

Every test runs twice: the MockTransport handed the request as is (as a worker's transport is), and
wrapped in an ``httpx.Client`` (what a caller of ``complete`` may pass)."""

from __future__ import annotations

import email.utils
import gzip
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import openai
import pytest

from batcher._exceptions import (
    AuthenticationError,
    BadRequestError,
    ContextWindowExceededError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
    UnprocessableEntityError,
)
from batcher._providers import PROVIDERS, Route, complete, parse_response, redact, retry_after_seconds
from batcher._providers._http import send
from batcher._providers._retry_after import parse_duration
from batcher.testing import Failure, get_format

KEY = "sk-secret-0123456789abcdef"
PROVIDER_NAMES = list(PROVIDERS)  # every registered provider: each brings its fake format (the error bodies)
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "cohere": "command-r"}
ROUTES = {
    name: (Route(name, MODELS.get(name, f"{name}-model")), adapter.default_api_base)
    for name, adapter in PROVIDERS.items()
}


def error_body(provider: str, message: str) -> dict[str, Any]:
    """A 400's body in ``provider``'s shape, as the fake provider's format for it writes one."""
    return get_format(provider).error_body(Failure(400, "bad_request", message), ROUTES[provider][0].model, "req_1")


ERROR_BODIES: dict[str, Callable[[str], dict[str, Any]]] = {name: partial(error_body, name) for name in PROVIDER_NAMES}
HTML_502 = (
    "<html><head><title>502 Bad Gateway</title><style>body{color:red}</style></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


_VIA = ["transport"]
"""How ``call`` sends: "transport" or "client" (set by the ``_via`` fixture)."""


@pytest.fixture(autouse=True, params=["transport", "client"])
def _via(request: pytest.FixtureRequest) -> Iterator[None]:
    _VIA[0] = request.param
    yield
    _VIA[0] = "transport"


def sender(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.BaseTransport | httpx.Client:
    transport = httpx.MockTransport(handler)
    return httpx.Client(transport=transport) if _VIA[0] == "client" else transport


def call(
    provider: str,
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    timeout_s: float = 5,
) -> Any:
    route, base = ROUTES[provider]
    via = sender(handler)
    try:
        return complete(
            via,
            route,
            [{"role": "user", "content": "hi"}],
            {},
            api_key=KEY,
            api_base=base,
            timeout_s=timeout_s,
        )
    finally:
        via.close()


def fail(provider: str, handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        call(provider, handler, **kw)
    return info.value


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
@pytest.mark.parametrize(
    ("status", "cls", "sdk_cls"),
    [
        (400, BadRequestError, openai.BadRequestError),
        (404, NotFoundError, openai.NotFoundError),
        (413, BadRequestError, openai.BadRequestError),
        (422, UnprocessableEntityError, openai.UnprocessableEntityError),
        (401, AuthenticationError, openai.AuthenticationError),
        (403, PermissionDeniedError, openai.PermissionDeniedError),
        (408, ProviderTimeoutError, openai.APITimeoutError),
        (409, ProviderServerError, openai.InternalServerError),
        (429, RateLimitError, openai.RateLimitError),
        (500, ProviderServerError, openai.InternalServerError),
        (502, ProviderServerError, openai.InternalServerError),
        (503, ProviderServerError, openai.InternalServerError),
        (529, ProviderServerError, openai.InternalServerError),
    ],
)
def test_status_mapping(provider: str, status: int, cls: type[ProviderError], sdk_cls: type[Exception]) -> None:
    err = fail(provider, lambda r: httpx.Response(status, json=ERROR_BODIES[provider]("it went wrong")))
    assert type(err) is cls
    assert isinstance(err, sdk_cls)  # `except openai.RateLimitError` catches it, as it catches LiteLLM's
    assert err.status_code == status
    assert err.provider == err.llm_provider == provider
    assert err.model == ROUTES[provider][0].model
    # The provider's own answer and error object, as the openai SDK exposes them; no credential rides along.
    assert err.response is not None and err.response.status_code == status
    assert err.response.request is err.request and "authorization" not in err.request.headers
    assert KEY not in repr(err.request.headers) and KEY not in str(err.request.url)
    assert isinstance(err.body, dict) and "it went wrong" in json.dumps(err.body)
    assert "it went wrong" in str(err)
    assert f"HTTP {status}" in str(err)
    assert err.retryable == (cls in (RateLimitError, ProviderServerError, ProviderTimeoutError))


def test_cohere_invalid_token_and_client_closed() -> None:
    assert type(fail("cohere", lambda r: httpx.Response(498, json={"message": "invalid api token"}))) is (
        AuthenticationError
    )
    assert type(fail("cohere", lambda r: httpx.Response(499, json={"message": "closed"}))) is ProviderConnectionError


def test_openai_error_includes_code_and_request_id() -> None:
    body = {"error": {"message": "Model not found", "type": "invalid_request_error", "code": "model_not_found"}}
    err = fail("openai", lambda r: httpx.Response(404, json=body, headers={"x-request-id": "req_42"}))
    assert str(err) == (
        "openai returned HTTP 404 for https://api.openai.com/v1/chat/completions (model_not_found): "
        "Model not found [request id req_42]"
    )


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        (
            "openai",
            {
                "error": {
                    "message": "This model's maximum context length is 128000 tokens. However, your messages "
                    "resulted in 130000 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            },
        ),
        (
            "openai",
            {
                "error": {
                    "message": "too big",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
        ),
        (
            "anthropic",
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 208310 tokens > 200000 maximum",
                },
            },
        ),
        (
            "anthropic",
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "input length and `max_tokens` exceed context limit: 178959 + 64000 > 200000",
                },
            },
        ),
        (
            "cohere",
            {"message": "too many tokens: total number of tokens in the prompt cannot exceed 4081 - received 4292."},
        ),
    ],
)
def test_context_window_exceeded(provider: str, body: dict[str, Any]) -> None:
    err = fail(provider, lambda r: httpx.Response(400, json=body))
    assert type(err) is ContextWindowExceededError
    assert isinstance(err, BadRequestError)
    assert err.status_code == 400


def test_other_token_complaints_are_plain_bad_requests() -> None:
    body = {"message": "too many tokens: max tokens must be less than or equal to 4096, the maximum output"}
    assert type(fail("cohere", lambda r: httpx.Response(400, json=body))) is BadRequestError


def test_long_provider_messages_are_truncated() -> None:
    err = fail("openai", lambda r: httpx.Response(400, json=ERROR_BODIES["openai"]("x" * 5000)))
    assert "x" * 400 in str(err)
    assert len(str(err)) < 700


# --- Retry-After ---------------------------------------------------------------------------


def rate_limited(headers: dict[str, str]) -> RateLimitError:
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    err = fail("anthropic", lambda r: httpx.Response(429, json=body, headers=headers))
    assert isinstance(err, RateLimitError)
    return err


def test_retry_after_seconds() -> None:
    err = rate_limited({"retry-after": "17"})
    assert err.retry_after_s == 17.0
    assert "retry after 17s" in str(err)


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    err = rate_limited({"retry-after": when})
    assert err.retry_after_s is not None
    assert 27 <= err.retry_after_s <= 31


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert rate_limited({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after_s == 0.0


def test_retry_after_ms_wins() -> None:
    assert rate_limited({"retry-after-ms": "1500", "retry-after": "9"}).retry_after_s == 1.5


def test_openai_reset_durations() -> None:
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    headers = {
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-reset-tokens": "6m0s",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-remaining-tokens": "0",
    }
    err = fail("openai", lambda r: httpx.Response(429, json=body, headers=headers))
    assert isinstance(err, RateLimitError)
    assert err.retry_after_s == 360.0
    headers["x-ratelimit-remaining-tokens"] = "100"
    headers["x-ratelimit-remaining-requests"] = "0"
    err = fail("openai", lambda r: httpx.Response(429, json=body, headers=headers))
    assert isinstance(err, RateLimitError)
    assert err.retry_after_s == pytest.approx(0.02)


def test_anthropic_reset_timestamp() -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = (datetime.now(UTC) + timedelta(seconds=50)).strftime("%Y-%m-%dT%H:%M:%SZ")
    err = rate_limited(
        {
            "anthropic-ratelimit-requests-reset": soon,
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-tokens-reset": later,
            "anthropic-ratelimit-tokens-remaining": "5000",
        }
    )
    assert err.retry_after_s is not None
    assert 17 <= err.retry_after_s <= 21


def test_no_retry_hint_is_none() -> None:
    err = rate_limited({})
    assert err.retry_after_s is None
    assert "retry after" not in str(err)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5s", 0.5), ("12", 12.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s junk"])
def test_parse_duration_rejects_junk(text: str) -> None:
    assert parse_duration(text) is None


def test_retry_after_function_with_fixed_now() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    headers = httpx.Headers({"anthropic-ratelimit-tokens-reset": "2025-01-01T12:00:45Z"})
    assert retry_after_seconds(headers, now=now) == 45.0
    assert retry_after_seconds(httpx.Headers({"retry-after": "bogus"}), now=now) is None


# --- bodies that are not the expected JSON -----------------------------------------------


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_html_on_200_is_malformed(provider: str) -> None:
    page = "<html><body><h1>Welcome to our captive portal</h1></body></html>"
    err = fail(provider, lambda r: httpx.Response(200, html=page))
    assert type(err) is MalformedResponseError
    assert err.retryable
    assert err.status_code == 500  # as LiteLLM's APIResponseValidationError
    assert err.http_status == 200
    assert "Welcome to our captive portal" in str(err)
    assert "<h1>" not in str(err)


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_html_on_502_is_a_server_error_with_the_page_text(provider: str) -> None:
    err = fail(provider, lambda r: httpx.Response(502, html=HTML_502))
    assert type(err) is ProviderServerError
    assert err.status_code == 502
    assert "502 Bad Gateway" in str(err)
    assert "<title>" not in str(err)
    assert "color:red" not in str(err)


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_truncated_json_is_malformed(provider: str) -> None:
    err = fail(provider, lambda r: httpx.Response(200, content=b'{"id": "x", "choices": [{"mess'))
    assert type(err) is MalformedResponseError
    assert "not JSON" in str(err)


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_empty_and_non_object_bodies_are_malformed(provider: str) -> None:
    assert type(fail(provider, lambda r: httpx.Response(200, content=b""))) is MalformedResponseError
    assert type(fail(provider, lambda r: httpx.Response(200, json=[1, 2]))) is MalformedResponseError
    assert type(fail(provider, lambda r: httpx.Response(200, json={}))) is MalformedResponseError


def test_truncated_json_on_500_is_still_a_server_error() -> None:
    err = fail("openai", lambda r: httpx.Response(500, content=b'{"error": {"message": "boo'))
    assert type(err) is ProviderServerError
    assert "boo" in str(err)


def test_error_body_on_200_is_an_error() -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    err = fail("anthropic", lambda r: httpx.Response(200, json=overloaded))
    assert type(err) is ProviderServerError
    assert "Overloaded" in str(err)
    body = {"error": {"message": "bad key", "type": "authentication_error", "code": None}}
    assert type(fail("openai", lambda r: httpx.Response(200, json=body))) is AuthenticationError
    body = {"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}}
    assert type(fail("openai", lambda r: httpx.Response(200, json=body))) is BadRequestError
    body = {"error": {"message": "slow down", "code": 429}}
    err = fail("openai", lambda r: httpx.Response(200, json=body))
    assert type(err) is RateLimitError
    assert err.status_code == 429
    assert err.http_status == 200
    assert type(fail("openai", lambda r: httpx.Response(200, json={"error": "engine crashed"}))) is (
        ProviderServerError
    )


def test_parse_response_of_a_hand_built_response() -> None:
    with pytest.raises(ProviderServerError):
        parse_response(ROUTES["openai"][0], httpx.Response(503, text="upstream connect error"))


# --- transport failures ------------------------------------------------------------------


def raising(exc_type: type[httpx.TransportError], text: str) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(text, request=request)

    return handler


@pytest.mark.parametrize(
    ("exc_type", "cls"),
    [
        (httpx.ConnectTimeout, ProviderTimeoutError),
        (httpx.ReadTimeout, ProviderTimeoutError),
        (httpx.WriteTimeout, ProviderTimeoutError),
        (httpx.PoolTimeout, ProviderTimeoutError),
        (httpx.ConnectError, ProviderConnectionError),
        (httpx.ReadError, ProviderConnectionError),
        (httpx.RemoteProtocolError, ProviderConnectionError),
        (httpx.ProxyError, ProviderConnectionError),
    ],
)
def test_transport_errors(exc_type: type[httpx.TransportError], cls: type[ProviderError]) -> None:
    err = fail("anthropic", raising(exc_type, "boom"))
    assert type(err) is cls
    assert err.retryable
    assert err.provider == "anthropic"
    assert err.model == "claude-sonnet-4-5"
    assert err.http_status is None  # no answer: nothing is stored
    assert err.status_code == (408 if cls is ProviderTimeoutError else 500)  # LiteLLM's statuses
    assert "POST https://api.anthropic.com/v1/messages" in str(err)


def test_a_trickling_body_times_out() -> None:
    def slow() -> Iterator[bytes]:
        for _ in range(200):  # 10 s in all, were the timeout not applied to the whole read
            time.sleep(0.05)
            yield b" "

    start = time.monotonic()
    err = fail("openai", lambda r: httpx.Response(200, content=slow()), timeout_s=0.2)
    assert type(err) is ProviderTimeoutError
    assert err.status_code == 408  # as LiteLLM's Timeout, whatever the status line said
    assert err.http_status == 200
    assert time.monotonic() - start < 5  # far from the 10 s of the whole body, whatever the load


def test_a_body_that_fails_mid_read_is_a_connection_error() -> None:
    def broken() -> Iterator[bytes]:
        yield b'{"id": '
        raise httpx.ReadError("connection reset")

    err = fail("openai", lambda r: httpx.Response(200, content=broken()))
    assert type(err) is ProviderConnectionError


def test_gzip_bodies_are_decoded_and_bad_gzip_is_malformed() -> None:
    good = gzip.compress(b'{"choices": [{"message": {"content": "zipped"}, "finish_reason": "stop"}]}')
    resp = call("openai", lambda r: httpx.Response(200, headers={"content-encoding": "gzip"}, content=iter([good])))
    assert resp.choices[0].message.content == "zipped"
    err = fail(
        "openai",
        lambda r: httpx.Response(200, headers={"content-encoding": "gzip"}, content=iter([b"not gzip"])),
    )
    assert type(err) is MalformedResponseError


def test_send_returns_the_decoded_body_with_headers_that_describe_it() -> None:
    plain = b'{"choices": []}' * 100
    zipped = gzip.compress(plain)
    headers = {"content-encoding": "gzip", "content-length": str(len(zipped)), "x-request-id": "req_1"}
    via = sender(lambda r: httpx.Response(200, headers=headers, content=iter([zipped[:10], zipped[10:]])))
    response = send(via, httpx.Request("POST", "https://api.openai.com/v1/chat/completions"), timeout_s=5)
    assert response.content == response.read() == plain
    assert "content-encoding" not in response.headers
    assert response.headers["content-length"] == str(len(plain))
    assert response.headers["x-request-id"] == "req_1"
    assert response.text == plain.decode()
    chunked = sender(
        lambda r: httpx.Response(200, headers={"transfer-encoding": "chunked"}, content=iter([b"ab", b"c"]))
    )
    response = send(chunked, httpx.Request("GET", "https://api.openai.com/v1/x"), timeout_s=5)
    assert (response.content, "transfer-encoding" in response.headers, response.headers["content-length"]) == (
        b"abc",
        False,
        "3",
    )


def test_a_cookie_from_one_answer_is_never_sent_with_the_next_request() -> None:
    # One tenant's provider sets a cookie; the next request through the same worker thread may be
    # another tenant's. A worker's transport has no cookie jar; a Client's jar keeps the cookie but
    # adds it only to requests the client builds itself, never to one handed to it built.
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "tenant=a; Path=/"}, json={"choices": []})

    via = sender(handler)
    for _ in range(2):
        send(via, httpx.Request("POST", "https://api.openai.com/v1/chat/completions"), timeout_s=5)
    assert seen == [None, None]


# --- secrets never leak ------------------------------------------------------------------


def leaky_handlers() -> list[Callable[[httpx.Request], httpx.Response]]:
    def echo_header(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        return httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {auth}"}})

    return [
        echo_header,
        lambda r: httpx.Response(
            401, json={"type": "error", "error": {"type": "authentication_error", "message": KEY}}
        ),
        lambda r: httpx.Response(429, json={"message": f"key {KEY} is rate limited"}),
        lambda r: httpx.Response(502, html=f"<html><title>proxy</title><p>{KEY}</p></html>"),
        lambda r: httpx.Response(200, html=f"<p>hello {KEY}</p>"),
        lambda r: httpx.Response(200, json={"choices": f"{KEY}"}),
        raising(httpx.ConnectError, f"could not connect with {KEY}"),
        raising(httpx.ReadTimeout, f"timeout {KEY}"),
    ]


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
@pytest.mark.parametrize("index", range(len(leaky_handlers())))
def test_no_error_message_contains_the_api_key(provider: str, index: int) -> None:
    err = fail(provider, leaky_handlers()[index])
    assert KEY not in str(err)
    assert KEY not in err.message
    assert KEY not in repr(err)


def test_parse_response_redacts_the_key_the_request_carried() -> None:
    route, base = ROUTES["cohere"]
    request = httpx.Request("POST", base + "/v2/chat", headers={"authorization": f"Bearer {KEY}"})
    response = httpx.Response(400, json={"message": f"bad key {KEY}"}, request=request)
    with pytest.raises(BadRequestError) as info:
        parse_response(route, response)
    assert KEY not in str(info.value)
    assert "***" in str(info.value)


def test_redact() -> None:
    assert redact("a sk-1 b sk-1", ["sk-1"]) == "a *** b ***"
    assert redact("token abc-long and abc", ["abc", "abc-long"]) == "token *** and ***"
    assert redact("nothing", ["", None]) == "nothing"  # type: ignore[list-item]
