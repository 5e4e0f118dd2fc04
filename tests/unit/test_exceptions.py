"""batcher's errors are the openai SDK's too (as LiteLLM's are): the classes, the attributes, pickling."""

from __future__ import annotations

import pickle
from typing import Any

import httpx
import openai
import pytest

import batcher
from batcher._exceptions import (
    AllModelsFailedError,
    AuthenticationError,
    BadRequestError,
    BatcherError,
    ContextWindowExceededError,
    MalformedResponseError,
    NotFoundError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
    RequestCancelledError,
    RequestError,
    RequestExpiredError,
    UnprocessableEntityError,
    WorkerLostError,
    error_from_stored,
)

KEY = "sk-secret-0123456789abcdef"

# batcher class -> (the openai SDK class it is, like LiteLLM's of the same meaning; its status_code by default)
SDK_CLASSES: dict[type[RequestError], tuple[type[openai.APIError], int | None]] = {
    RateLimitError: (openai.RateLimitError, 429),
    ProviderServerError: (openai.InternalServerError, 500),
    ProviderTimeoutError: (openai.APITimeoutError, 408),
    ProviderConnectionError: (openai.APIConnectionError, 500),
    MalformedResponseError: (openai.APIResponseValidationError, 500),
    BadRequestError: (openai.BadRequestError, 400),
    ContextWindowExceededError: (openai.BadRequestError, 400),
    AuthenticationError: (openai.AuthenticationError, 401),
    PermissionDeniedError: (openai.PermissionDeniedError, 403),
    NotFoundError: (openai.NotFoundError, 404),
    UnprocessableEntityError: (openai.UnprocessableEntityError, 422),
    ProviderError: (openai.APIError, None),
    RequestCancelledError: (openai.APIError, None),
    RequestExpiredError: (openai.APIError, None),
    WorkerLostError: (openai.APIError, None),
    RequestError: (openai.APIError, None),
}
PROVIDER_CLASSES = [cls for cls in SDK_CLASSES if issubclass(cls, ProviderError)]


def _answer(status: int, body: Any) -> httpx.Response:
    """A provider's error answer to a request that carried the key in a header and in the query string."""
    request = httpx.Request(
        "POST",
        f"https://user:pass@api.example.com/v1/chat/completions?key={KEY}",
        headers={"Authorization": f"Bearer {KEY}", "x-api-key": KEY},
        json={"messages": [{"role": "user", "content": "a private prompt"}]},
    )
    return httpx.Response(status, json=body, headers={"x-request-id": "req_123"}, request=request)


@pytest.mark.parametrize("cls", list(SDK_CLASSES), ids=lambda c: c.__name__)
def test_each_error_is_the_openai_sdks_and_batchers(cls: type[RequestError]) -> None:
    sdk_cls, status = SDK_CLASSES[cls]
    err = cls("it went wrong", model="gpt-4o-mini", llm_provider="openai")
    assert isinstance(err, sdk_cls) and isinstance(err, openai.APIError) and isinstance(err, openai.OpenAIError)
    assert isinstance(err, RequestError) and isinstance(err, BatcherError)
    assert err.status_code == status
    assert (err.llm_provider, err.provider, err.model, err.message, str(err)) == (
        "openai",
        "openai",
        "gpt-4o-mini",
        "it went wrong",
        "it went wrong",
    )
    assert isinstance(err.request, httpx.Request)
    if status is None:
        assert err.response is None
    else:  # no answer to show: a stand-in with the status, as LiteLLM builds one
        assert isinstance(err.response, httpx.Response) and err.response.status_code == status
    # `except openai.APIError` catches it where a caller around LiteLLM would catch LiteLLM's.
    with pytest.raises(sdk_cls):
        raise err


def test_the_public_package_exports_the_new_classes() -> None:
    for name in ("NotFoundError", "PermissionDeniedError", "UnprocessableEntityError"):
        assert getattr(batcher, name) is globals()[name]


def test_a_timeout_is_408_whatever_was_received() -> None:
    assert ProviderTimeoutError("no answer within 5s").status_code == 408
    stalled = ProviderTimeoutError("the answer (HTTP 200) stalled", status_code=200)
    assert (stalled.status_code, stalled.http_status) == (408, 200)
    assert isinstance(stalled, openai.APITimeoutError) and isinstance(stalled, openai.APIConnectionError)


def test_the_providers_answer_is_kept_without_credentials() -> None:
    body = {"message": "Rate limit reached", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    err = RateLimitError(
        "openai returned HTTP 429: Rate limit reached",
        retry_after_s=2.0,
        model="gpt-4o-mini",
        llm_provider="openai",
        response=_answer(429, {"error": body}),
        body=body,
    )
    assert (err.status_code, err.http_status, err.retry_after_s) == (429, 429, 2.0)
    assert (err.body, err.code, err.type, err.param) == (body, "rate_limit_exceeded", "requests", None)
    assert err.response is not None and err.response.json() == {"error": body}
    assert err.request_id == "req_123"
    assert err.response.request is err.request
    assert str(err.request.url) == "https://api.example.com/v1/chat/completions"  # no user info, no ?key=
    assert KEY not in repr(dict(err.request.headers)) and not err.request.content  # nor the prompt
    assert "authorization" not in err.request.headers and "x-api-key" not in err.request.headers


@pytest.mark.parametrize("cls", list(SDK_CLASSES), ids=lambda c: c.__name__)
def test_every_error_pickles_with_its_class_message_and_attributes(cls: type[RequestError]) -> None:
    status = SDK_CLASSES[cls][1] or 418
    kw: dict[str, Any] = {"retry_after_s": 1.5} if cls is RateLimitError else {}
    body = {"message": "it went wrong", "type": "invalid_request_error", "param": "messages", "code": "oops"}
    err = cls(
        "it went wrong",
        model="claude-sonnet-4-5",
        llm_provider="anthropic",
        response=_answer(status, {"error": body}),
        body=body,
        num_retries=2,
        max_retries=4,
        **kw,
    )
    back = pickle.loads(pickle.dumps(err))  # noqa: S301 (our own bytes)
    assert type(back) is cls and str(back) == str(err) and back.args == err.args
    names = ("message", "model", "llm_provider", "status_code", "http_status", "body", "code", "param", "type")
    for name in (*names, "num_retries", "max_retries", "retryable"):
        assert getattr(back, name) == getattr(err, name), name
    assert str(back.request.url) == str(err.request.url)
    assert (back.response is None) == (err.response is None)
    if back.response is not None:
        assert back.response.status_code == err.response.status_code  # type: ignore[union-attr]
    if isinstance(back, RateLimitError):
        assert back.retry_after_s == 1.5
    if isinstance(err, openai.APIStatusError):
        assert back.request_id == "req_123"


def test_all_models_failed_is_an_openai_api_error_and_pickles() -> None:
    errors: dict[str, BaseException] = {
        "gpt-4o-mini": AuthenticationError("bad key", model="gpt-4o-mini", llm_provider="openai"),
        "claude-sonnet-4-5": RateLimitError("slow down", model="claude-sonnet-4-5", llm_provider="anthropic"),
    }
    err = AllModelsFailedError(errors)
    assert isinstance(err, openai.APIError) and isinstance(err, BatcherError)
    with pytest.raises(openai.APIError):
        raise err
    # The last failure's status and provider: LiteLLM would have raised that one.
    assert (err.status_code, err.llm_provider, err.model) == (429, "anthropic", "claude-sonnet-4-5")
    assert "gpt-4o-mini: AuthenticationError: bad key" in str(err)
    back = pickle.loads(pickle.dumps(err))  # noqa: S301 (our own bytes)
    assert type(back) is AllModelsFailedError and str(back) == str(err)
    assert [type(e) for e in back.errors.values()] == [AuthenticationError, RateLimitError]
    assert back.status_code == 429


@pytest.mark.parametrize("cls", PROVIDER_CLASSES, ids=lambda c: c.__name__)
def test_an_error_read_back_from_its_row_is_the_one_stored(cls: type[ProviderError]) -> None:
    body = {"message": "it went wrong", "type": "server_error", "param": None, "code": "boom"}
    stored = 503 if cls is ProviderServerError else SDK_CLASSES[cls][1]
    err = error_from_stored(cls.__name__, "it went wrong", model="m", provider="openai", status_code=stored, body=body)
    assert type(err) is cls and isinstance(err, SDK_CLASSES[cls][0])
    assert (err.llm_provider, err.model, err.body, err.code) == ("openai", "m", body, "boom")
    assert err.status_code == (503 if cls is ProviderServerError else SDK_CLASSES[cls][1])


def test_a_stored_timeout_without_a_status_reads_back_as_408() -> None:
    err = error_from_stored("ProviderTimeoutError", "no answer within 60s", provider="openai", status_code=None)
    assert isinstance(err, openai.APITimeoutError) and err.status_code == 408 and err.http_status is None
    assert err.response is not None and err.response.status_code == 408


def test_rows_stored_before_403_404_422_had_classes_read_back_as_them() -> None:
    assert type(error_from_stored("AuthenticationError", "x", status_code=403)) is PermissionDeniedError
    assert type(error_from_stored("BadRequestError", "x", status_code=404)) is NotFoundError
    assert type(error_from_stored("BadRequestError", "x", status_code=422)) is UnprocessableEntityError
    assert type(error_from_stored("BadRequestError", "x", status_code=400)) is BadRequestError


def test_requests_that_never_ran_carry_openais_batch_codes_and_no_provider_body() -> None:
    body = {"message": "from an earlier attempt", "code": "rate_limit_exceeded"}
    cancelled = error_from_stored("RequestCancelledError", "cancelled", status_code=429, body=body)
    assert cancelled.code == "batch_cancelled" and cancelled.body is None
    assert error_from_stored("RequestExpiredError", "expired").code == "batch_expired"
    assert error_from_stored("WorkerLostError", "lost").code == "worker_lost"
