"""The provider layer's share of the egress rules: ``extra_headers`` checked where requests are built,
unsendable requests failing cleanly (never a crash, never a retry), an echoed key redacted from the
stored answer, and short error texts for answers from a base a caller named."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from batcher._egress import EGRESS_EXTENSION
from batcher._exceptions import InvalidRequestError, MalformedResponseError, ProviderError
from batcher._providers import PROVIDERS, Route, build_request, check_params, complete, send
from batcher._providers._errors import MAX_ERROR_CHARS, NAMED_BASE_ERROR_CHARS, parse_http_response
from batcher.testing import get_format

KEY = "sk-tenant-own-0123456789abcdef"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "cohere": "command-r"}
ROUTES = {
    name: (Route(name, MODELS.get(name, f"{name}-model")), adapter.default_api_base)
    for name, adapter in PROVIDERS.items()
}
KEY_HEADERS = {"anthropic": "x-api-key"}  # the header that carries the key, where it is not Authorization
MESSAGES = [{"role": "user", "content": "hi"}]


def echo_body(provider: str, text: str) -> dict[str, Any]:
    """A success answering ``text`` in ``provider``'s shape, as the fake provider's format writes one."""
    _, body = get_format(provider).success(ROUTES[provider][0].model, text, False, 1, 1, {})
    return body


def call(
    provider: str, handler: Callable[[httpx.Request], httpx.Response], params: dict[str, Any] | None = None
) -> Any:
    route, base = ROUTES[provider]
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        return complete(client, route, MESSAGES, params or {}, api_key=KEY, api_base=base, timeout_s=5)


@pytest.mark.parametrize("provider", sorted(ROUTES))
def test_auth_headers_cannot_be_set_through_extra_headers_for_any_provider(provider: str) -> None:
    for name in ("Authorization", "x-api-key", "Cookie", "Host", "Content-Length"):
        with pytest.raises(InvalidRequestError) as caught:
            check_params(provider, {"extra_headers": {name: "x"}}, drop_params=True)  # never dropped
        assert caught.value.field == f"extra_headers.{name}"


@pytest.mark.parametrize("provider", sorted(ROUTES))
def test_extra_headers_reach_the_request_and_the_key_header_stays_batchers(provider: str) -> None:
    route, base = ROUTES[provider]
    request = build_request(
        route, MESSAGES, {"extra_headers": {"X-Team": "a", "Accept": "*/*"}}, api_key=KEY, api_base=base
    )
    assert request.headers["x-team"] == "a"
    assert request.headers.get_list("accept") == ["*/*"]
    assert KEY in request.headers[KEY_HEADERS.get(provider, "authorization")]


def test_an_extra_header_may_choose_the_anthropic_version_but_never_the_key() -> None:
    route, base = ROUTES["anthropic"]
    request = build_request(
        route, MESSAGES, {"extra_headers": {"anthropic-version": "2099-01-01"}}, api_key=KEY, api_base=base
    )
    assert request.headers["anthropic-version"] == "2099-01-01"
    assert request.headers["x-api-key"] == KEY


def test_a_key_httpx_cannot_encode_is_an_invalid_request_not_a_crash() -> None:
    route, base = ROUTES["openai"]
    with pytest.raises(InvalidRequestError) as caught:
        build_request(route, MESSAGES, {}, api_key="sk-clé", api_base=base)
    assert "clé" not in str(caught.value)


def test_a_request_h11_refuses_to_send_is_an_invalid_request_never_retried() -> None:
    # A header that slipped past the checks (e.g. a job stored before them) fails the request cleanly.
    with socket.socket() as listener:  # connections are accepted by the kernel: h11 refuses at the first write
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        base = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        request = build_request(ROUTES["openai"][0], MESSAGES, {}, api_key=KEY, api_base=base)
        request.headers["x-bad"] = "a\r\nInjected: 1"
        with httpx.Client() as client, pytest.raises(InvalidRequestError) as caught:
            send(client, request, timeout_s=5, provider="openai", secrets=[KEY])
    assert not isinstance(caught.value, ProviderError)
    assert KEY not in str(caught.value)


@pytest.mark.parametrize("provider", sorted(ROUTES))
def test_an_echoed_key_is_redacted_from_the_answer_before_it_is_stored(provider: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        sent = request.headers[KEY_HEADERS.get(provider, "authorization")]
        return httpx.Response(200, json={**echo_body(provider, f"you sent {sent}"), "echo": {"key": KEY}})

    response = call(provider, handler)
    dumped = json.dumps(response.model_dump(mode="json"))
    assert KEY not in dumped
    assert "***" in response.choices[0].message.content
    assert response.latency_ms is not None and response.provider == provider


def test_an_echoed_key_spelled_with_json_escapes_is_redacted_too() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.dumps(echo_body("openai", "KEY")).replace('"KEY"', f'"{escaped}"')
        return httpx.Response(200, content=body.encode(), headers={"content-type": "application/json"})

    assert KEY not in json.dumps(call("openai", handler).model_dump(mode="json"))


def test_an_answer_without_the_key_is_returned_as_is() -> None:
    body = echo_body("openai", "plain answer")
    response = call("openai", lambda r: httpx.Response(200, json=body))
    assert response.choices[0].message.content == "plain answer"


def _response(status: int, text: str, named: bool) -> httpx.Response:
    request = httpx.Request("POST", "https://tenant.example/v1/chat/completions")
    extensions = {EGRESS_EXTENSION: "named"} if named else {}
    return httpx.Response(status, text=text, request=request, extensions=extensions)


def test_answers_from_a_named_base_are_quoted_short_in_errors() -> None:
    from batcher._providers import get_adapter

    internal = "internal reply " + "x" * 2_000
    for status, cls in ((502, ProviderError), (200, MalformedResponseError)):
        with pytest.raises(cls) as named:
            parse_http_response(get_adapter("openai"), "m", _response(status, internal, named=True))
        with pytest.raises(cls) as configured:
            parse_http_response(get_adapter("openai"), "m", _response(status, internal, named=False))
        assert len(str(named.value)) < NAMED_BASE_ERROR_CHARS + 120
        assert len(str(configured.value)) > MAX_ERROR_CHARS
