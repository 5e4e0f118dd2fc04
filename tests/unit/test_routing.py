"""Routing a model name to a provider, and resolving keys and base URLs."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx
import pytest

from batcher._exceptions import (
    BadRequestError,
    ConfigurationError,
    ContextWindowExceededError,
    InvalidRequestError,
    RateLimitError,
    UnknownModelError,
)
from batcher._providers import (
    PROVIDERS,
    Route,
    parse_response,
    resolve_api_base,
    resolve_api_key,
    resolve_route,
    retry_after_seconds,
)
from batcher._providers._registry import BUILTIN, model_pattern
from batcher.api.schemas import MODEL_PATTERN
from batcher.providers import ProviderAdapter, bearer_headers, register_provider, unregister_provider
from batcher.testing import provider_registered

ROUTED = [
    # explicit prefixes: the prefix goes, the rest is the provider's model name
    ("openai/gpt-4o-mini", Route("openai", "gpt-4o-mini")),
    ("openai/meta-llama/Llama-3.1-8B-Instruct", Route("openai", "meta-llama/Llama-3.1-8B-Instruct")),
    ("openai/llama3", Route("openai", "llama3")),
    ("anthropic/claude-sonnet-4-5", Route("anthropic", "claude-sonnet-4-5")),
    ("anthropic/my-proxy-alias", Route("anthropic", "my-proxy-alias")),
    ("cohere/command-r-plus", Route("cohere", "command-r-plus")),
    ("cohere_chat/command-r", Route("cohere", "command-r")),
    # bare names by family
    ("gpt-4o", Route("openai", "gpt-4o")),
    ("gpt-5-mini", Route("openai", "gpt-5-mini")),
    ("chatgpt-4o-latest", Route("openai", "chatgpt-4o-latest")),
    ("ft:gpt-4o-mini:acme::abc123", Route("openai", "ft:gpt-4o-mini:acme::abc123")),
    ("o1", Route("openai", "o1")),
    ("o1-mini", Route("openai", "o1-mini")),
    ("o3", Route("openai", "o3")),
    ("o3-mini", Route("openai", "o3-mini")),
    ("o4-mini", Route("openai", "o4-mini")),
    ("claude-3-5-haiku-20241022", Route("anthropic", "claude-3-5-haiku-20241022")),
    ("claude-opus-4-1", Route("anthropic", "claude-opus-4-1")),
    ("command", Route("cohere", "command")),
    ("command-r", Route("cohere", "command-r")),
    ("command-a-03-2025", Route("cohere", "command-a-03-2025")),
    ("c4ai-aya-expanse-32b", Route("cohere", "c4ai-aya-expanse-32b")),
]


@pytest.mark.parametrize(("model", "route"), ROUTED)
def test_routes(model: str, route: Route) -> None:
    assert resolve_route(model) == route


UNROUTED = [
    "llama3",
    "mistral-large",
    "azure/gpt-4o",
    "bedrock/anthropic.claude-3",
    "groq/llama3-70b",
    "text-embedding-3-small",
    "text-davinci-003",
    "oxford",  # starts with "o" but is no o-series model
    "o",
    "claude",  # no dash: not a Claude model id
    "commander",
    "gemini-2.0-flash",
]


@pytest.mark.parametrize("model", UNROUTED)
def test_unknown_models_say_how_to_fix(model: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_route(model)
    text = str(info.value)
    assert repr(model) in text
    assert "openai/, anthropic/ or cohere/" in text
    assert "OPENAI_BASE_URL" in text
    assert "api_base=" in text
    assert "vLLM" in text
    assert info.value.field == "model"


@pytest.mark.parametrize("model", ["", "openai/", "anthropic/"])
def test_empty_model_names_are_refused(model: str) -> None:
    with pytest.raises(UnknownModelError):
        resolve_route(model)


def test_route_is_frozen_and_hashable() -> None:
    route = resolve_route("gpt-4o")
    with pytest.raises(AttributeError):
        route.model = "other"  # type: ignore[misc]
    assert {route: 1}[Route("openai", "gpt-4o")] == 1


def test_adapter_settings() -> None:
    assert set(PROVIDERS) == {"openai", "anthropic", "cohere"}
    openai, anthropic, cohere = PROVIDERS["openai"], PROVIDERS["anthropic"], PROVIDERS["cohere"]
    assert openai.name == "openai"
    assert openai.api_key_env_vars == ("OPENAI_API_KEY",)
    assert anthropic.api_key_env_vars == ("ANTHROPIC_API_KEY",)
    assert cohere.api_key_env_vars == ("COHERE_API_KEY", "CO_API_KEY")
    assert openai.api_base_env_vars == ("OPENAI_BASE_URL", "OPENAI_API_BASE")
    assert anthropic.api_base_env_vars == ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_BASE")
    assert cohere.api_base_env_vars == ("CO_API_URL", "COHERE_API_BASE")
    assert openai.default_api_base == "https://api.openai.com/v1"
    assert anthropic.default_api_base == "https://api.anthropic.com"
    assert cohere.default_api_base == "https://api.cohere.com"
    for adapter in PROVIDERS.values():
        assert isinstance(adapter.supported_params, frozenset)
        assert "stream" not in adapter.supported_params
        assert {"temperature", "max_tokens", "stop", "tools"} <= adapter.supported_params


def test_api_key_explicit_wins_then_env_in_order() -> None:
    env = {"COHERE_API_KEY": "from-cohere", "CO_API_KEY": "from-co"}
    assert resolve_api_key("cohere", "explicit", env) == "explicit"
    assert resolve_api_key("cohere", None, env) == "from-cohere"
    assert resolve_api_key("cohere", None, {"CO_API_KEY": "from-co"}) == "from-co"
    assert resolve_api_key("cohere", None, {"COHERE_API_KEY": "", "CO_API_KEY": "from-co"}) == "from-co"
    assert resolve_api_key("openai", None, {"OPENAI_API_KEY": " sk-1\n"}) == "sk-1"
    assert resolve_api_key("anthropic", "", {"ANTHROPIC_API_KEY": "a"}) == "a"
    assert resolve_api_key("anthropic", None, {"OPENAI_API_KEY": "x"}) is None


def test_api_base_explicit_then_env_then_default() -> None:
    assert resolve_api_base("openai", None, {}) == "https://api.openai.com/v1"
    assert resolve_api_base("anthropic", None, {}) == "https://api.anthropic.com"
    assert resolve_api_base("cohere", None, {}) == "https://api.cohere.com"
    env = {"OPENAI_BASE_URL": "http://localhost:8000/v1/", "OPENAI_API_BASE": "http://other/v1"}
    assert resolve_api_base("openai", None, env) == "http://localhost:8000/v1"
    assert resolve_api_base("openai", None, {"OPENAI_API_BASE": "http://other/v1"}) == "http://other/v1"
    assert resolve_api_base("openai", "http://explicit:1/v1", env) == "http://explicit:1/v1"
    assert resolve_api_base("anthropic", None, {"ANTHROPIC_API_BASE": "https://p.example"}) == "https://p.example"
    assert resolve_api_base("cohere", None, {"CO_API_URL": "https://c.example/"}) == "https://c.example"


def test_bad_api_base_is_refused_with_its_source() -> None:
    with pytest.raises(InvalidRequestError) as info:
        resolve_api_base("openai", "localhost:8000", {})
    assert info.value.field == "api_base"
    with pytest.raises(ConfigurationError, match="OPENAI_BASE_URL"):
        resolve_api_base("openai", None, {"OPENAI_BASE_URL": "ftp://x"})


def test_unknown_provider_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="azure"):
        resolve_api_key("azure", None, {})


# --- the registry: what a provider module declares is what batcher does ---------------------------


class Toy(ProviderAdapter):
    """A provider of the tests' own: a prefix, a family, variables, a status, an error type and a wait header."""

    name = "toy"
    prefixes = ("toy/", "toy_chat/")
    families = (r"^toy-\d",)
    routing_hint = "toy/ is for toys"
    api_key_env_vars = ("TOY_API_KEY", "TOY_KEY")
    api_base_env_vars = ("TOY_BASE_URL",)
    default_api_base = "https://api.toy.example"
    endpoint_path = "/v0/play"
    supported_params = frozenset({"temperature"})
    status_errors = {420: RateLimitError}
    error_type_statuses = {"toy_overheated": 503}
    context_window_patterns = (r"the toy box is full",)

    def authenticate(self, request: httpx.Request, api_key: str | None) -> None:
        request.headers.update(bearer_headers(api_key))

    def build_body(
        self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {"model": model, **params}

    def parse_body(self, model: str, body: Mapping[str, Any]) -> Any:
        raise KeyError("choices")

    def rate_limit_wait(self, headers: httpx.Headers, now: datetime) -> float | None:
        wait = headers.get("toy-wait-s")
        return float(wait) if wait else None


def test_the_providers_are_the_builtin_aliases_one_module_each() -> None:
    assert list(PROVIDERS) == list(BUILTIN)
    for name, path in BUILTIN.items():
        module, _, cls = path.partition(":")
        assert (type(PROVIDERS[name]).__module__, type(PROVIDERS[name]).__name__) == (module, cls)
        assert PROVIDERS[name].name == name


def test_a_registered_provider_routes_and_resolves_and_is_forgotten_again() -> None:
    with provider_registered(Toy()):
        assert resolve_route("toy/blocks") == Route("toy", "blocks")
        assert resolve_route("toy_chat/x") == Route("toy", "x")
        assert resolve_route("TOY-3") == Route("toy", "TOY-3")
        assert resolve_api_key("toy", None, {"TOY_KEY": " k\n"}) == "k"
        assert resolve_api_base("toy", None, {}) == "https://api.toy.example"
        assert resolve_api_base("toy", None, {"TOY_BASE_URL": "http://localhost:1/"}) == "http://localhost:1"
        with pytest.raises(UnknownModelError) as info:
            resolve_route("llama3")
        assert "openai/, anthropic/, cohere/ or toy/" in str(info.value)
        assert "toy/ is for toys" in str(info.value)
    assert "toy" not in PROVIDERS
    with pytest.raises(UnknownModelError):
        resolve_route("toy/blocks")
    assert list(PROVIDERS) == list(BUILTIN)


def test_registration_refuses_what_would_be_ambiguous_or_malformed() -> None:
    class Clash(Toy):
        name = "clash"
        prefixes = ("openai/",)

    class BadPrefix(Toy):
        prefixes = ("toy",)

    class BadFamily(Toy):
        families = ("(",)

    class BadBase(Toy):
        default_api_base = "api.toy.example"

    with pytest.raises(ValueError, match="already"):
        register_provider(PROVIDERS["openai"])
    for adapter in (Clash(), BadPrefix(), BadFamily(), BadBase()):
        with pytest.raises(ValueError):
            register_provider(adapter)
        assert adapter.name not in PROVIDERS
    with pytest.raises(ValueError):
        register_provider(object())  # type: ignore[arg-type]
    unregister_provider("never-registered")  # a no-op
    assert list(PROVIDERS) == list(BUILTIN)


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "https://api.openai.com/v1/chat/completions")
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_a_providers_error_quirks_and_wait_header_are_understood_while_it_is_registered() -> None:
    route = Route("openai", "gpt-4o")  # quirks hold on every route: proxies pass other providers' errors on
    calm = _answer(420, {"message": "calm down"}, {"toy-wait-s": "2.5"})
    full = _answer(400, {"message": "the toy box is full"})
    with provider_registered(Toy()):
        with pytest.raises(RateLimitError) as limited:
            parse_response(route, calm)
        assert limited.value.retry_after_s == 2.5
        with pytest.raises(ContextWindowExceededError):
            parse_response(route, full)
        assert retry_after_seconds(httpx.Headers({"toy-wait-s": "1"})) == 1.0
        with pytest.raises(Exception, match="toy_overheated") as hot:
            parse_response(route, _answer(200, {"error": {"message": "hot", "type": "toy_overheated"}}))
        assert getattr(hot.value, "retryable", False)  # 503: a server error, retried
    with pytest.raises(BadRequestError) as plain:
        parse_response(route, calm)
    assert type(plain.value) is BadRequestError
    assert type(_raises(route, full)) is BadRequestError
    assert retry_after_seconds(httpx.Headers({"toy-wait-s": "1"})) is None


def _raises(route: Route, response: httpx.Response) -> Exception:
    with pytest.raises(Exception) as info:
        parse_response(route, response)
    return info.value


@pytest.mark.parametrize(("model", "routed"), [*((m, True) for m, _ in ROUTED), *((m, False) for m in UNROUTED)])
def test_the_model_pattern_matches_exactly_what_routes(model: str, routed: bool) -> None:
    """``model_pattern()`` is built from the registry; the API schema's pattern says the same."""
    assert bool(re.search(model_pattern(), model)) is routed
    assert bool(re.search(MODEL_PATTERN, model)) is routed
    assert bool(re.search(model_pattern(), model.upper())) is bool(re.search(MODEL_PATTERN, model.upper()))


def test_the_model_pattern_follows_registration() -> None:
    with provider_registered(Toy()):
        assert re.search(model_pattern(), "toy/x") and re.search(model_pattern(), "Toy-1")
        assert not re.search(model_pattern(), "toy/") and not re.search(model_pattern(), "toy-x")
    assert not re.search(model_pattern(), "toy/x")
