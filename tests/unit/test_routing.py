"""Routing a model name to a provider, and resolving keys and base URLs."""

from __future__ import annotations

import pytest

from batcher._exceptions import ConfigurationError, InvalidRequestError, UnknownModelError
from batcher._providers import PROVIDERS, Route, resolve_api_base, resolve_api_key, resolve_route


@pytest.mark.parametrize(
    ("model", "route"),
    [
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
    ],
)
def test_routes(model: str, route: Route) -> None:
    assert resolve_route(model) == route


@pytest.mark.parametrize(
    "model",
    [
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
    ],
)
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
