"""The same calls through ``litellm.batch_completion*`` and ``batcher.litellm.batch_completion*``.

Both sides talk to the same fake provider; results are compared field by field: types, attributes,
exception classes, positions. The only differences allowed are the README's ("Compatibility with
LiteLLM"): ``id``/``created`` (each call's own), mocked ``usage`` (LiteLLM's fixed 10/20 tokens,
batcher's word counts), and the deliberate divergences listed there.
"""

from __future__ import annotations

from typing import Any

import pytest

import batcher
from batcher import litellm as drop_in
from batcher.testing import FakeProvider, ModelBehaviour

HI = [{"role": "user", "content": "good morning?"}]
CONVERSATIONS = [[{"role": "user", "content": f"prompt {i}"}] for i in range(3)]


def _same_answer(ours: Any, theirs: Any, litellm: Any) -> None:
    """Field by field, everything but the per-call ``id`` and ``created``."""
    assert type(ours) is type(theirs) is litellm.ModelResponse
    assert ours.object == theirs.object == "chat.completion"
    assert ours.model == theirs.model
    assert len(ours.choices) == len(theirs.choices)
    for a, b in zip(ours.choices, theirs.choices, strict=True):
        assert type(a) is type(b)
        assert (a.index, a.finish_reason) == (b.index, b.finish_reason)
        assert type(a.message) is type(b.message)
        assert (a.message.role, a.message.content, a.message.tool_calls) == (
            b.message.role,
            b.message.content,
            b.message.tool_calls,
        )
    assert type(ours.usage) is type(theirs.usage)
    assert ours["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]
    assert ours._hidden_params["custom_llm_provider"] == theirs._hidden_params["custom_llm_provider"]
    assert isinstance(ours._response_ms, float | int)


def _same_usage(ours: Any, theirs: Any) -> None:
    assert (ours.usage.prompt_tokens, ours.usage.completion_tokens, ours.usage.total_tokens) == (
        theirs.usage.prompt_tokens,
        theirs.usage.completion_tokens,
        theirs.usage.total_tokens,
    )


def test_batch_completion_answers_match(litellm_env: Any) -> None:
    litellm = litellm_env
    theirs = litellm.batch_completion(model="gpt-4o-mini", messages=CONVERSATIONS, max_tokens=20)
    ours = drop_in.batch_completion(model="gpt-4o-mini", messages=CONVERSATIONS, max_tokens=20)
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs, strict=True):
        _same_answer(a, b, litellm)
        _same_usage(a, b)
        assert litellm.completion_cost(a) == pytest.approx(litellm.completion_cost(b))
    assert "prompt 1" in (ours[1].choices[0].message.content or "")


def test_failed_prompt_is_the_same_exception_class_in_the_same_slot(
    litellm_env: Any, fake_provider: FakeProvider
) -> None:
    litellm = litellm_env
    fake_provider.set_behaviour("gpt-compat-ctx", ModelBehaviour(context_window=5))
    conversations = [
        [{"role": "user", "content": "short"}],
        [{"role": "user", "content": "word " * 50}],
        [{"role": "user", "content": "short too"}],
    ]
    theirs = litellm.batch_completion(model="openai/gpt-compat-ctx", messages=conversations)
    ours = drop_in.batch_completion(model="openai/gpt-compat-ctx", messages=conversations)
    assert [type(x) for x in ours] == [type(x) for x in theirs]
    assert isinstance(ours[1], litellm.ContextWindowExceededError)
    assert isinstance(ours[1], litellm.BadRequestError) and ours[1].status_code == theirs[1].status_code == 400
    _same_answer(ours[0], theirs[0], litellm)


@pytest.mark.parametrize(("status", "name"), [(401, "AuthenticationError"), (400, "BadRequestError")])
def test_provider_errors_are_litellms_classes(
    litellm_env: Any, fake_provider: FakeProvider, status: int, name: str
) -> None:
    litellm = litellm_env
    model = f"openai/gpt-compat-fail-{status}"
    fake_provider.set_behaviour(model.removeprefix("openai/"), ModelBehaviour(fail_always_status=status))
    [theirs] = litellm.batch_completion(model=model, messages=[HI])
    [ours] = drop_in.batch_completion(model=model, messages=[HI])
    assert type(ours) is type(theirs) is getattr(litellm, name)
    assert ours.status_code == theirs.status_code == status
    assert ours.llm_provider == "openai"  # LiteLLM leaves it empty on some 400s
    with pytest.raises(getattr(litellm, name)):
        raise ours


def test_unknown_model_is_an_exception_in_every_slot(litellm_env: Any) -> None:
    litellm = litellm_env
    theirs = litellm.batch_completion(model="no-such-provider-model", messages=CONVERSATIONS[:2])
    ours = drop_in.batch_completion(model="no-such-provider-model", messages=CONVERSATIONS[:2])
    assert len(ours) == len(theirs) == 2
    assert all(isinstance(x, litellm.BadRequestError) for x in [*ours, *theirs])


def test_one_bad_conversation_fails_only_its_slot(litellm_env: Any) -> None:
    bad: list[Any] = [{"role": "nobody", "content": "x"}]
    ours = drop_in.batch_completion(model="gpt-4o-mini", messages=[CONVERSATIONS[0], bad, CONVERSATIONS[2]])
    assert isinstance(ours[0], litellm_env.ModelResponse) and isinstance(ours[2], litellm_env.ModelResponse)
    assert isinstance(ours[1], litellm_env.BadRequestError)
    assert "messages[1][0].role" in str(ours[1])


def test_a_previous_answer_message_feeds_back_into_messages(litellm_env: Any) -> None:
    """``resp.choices[0].message`` (LiteLLM's ``Message``, openai's, batcher's) goes straight back in."""
    litellm = litellm_env
    [first] = litellm.batch_completion(model="gpt-4o-mini", messages=[HI])
    follow_up = [*HI, first.choices[0].message, {"role": "user", "content": "and then?"}]
    [theirs] = litellm.batch_completion(model="gpt-4o-mini", messages=[follow_up])
    [ours] = drop_in.batch_completion(model="gpt-4o-mini", messages=[follow_up])
    _same_answer(ours, theirs, litellm)
    [native] = batcher.batch_completion(model="gpt-4o-mini", messages=[HI])
    assert isinstance(native, batcher.ModelResponse)
    [again] = batcher.batch_completion(model="gpt-4o-mini", messages=[[*HI, native.choices[0].message]])
    assert isinstance(again, batcher.ModelResponse)
    import openai.types.chat as oai

    message = oai.ChatCompletionMessage(role="assistant", content="hello")
    [from_openai] = drop_in.batch_completion(model="gpt-4o-mini", messages=[[*HI, message]])
    assert isinstance(from_openai, litellm.ModelResponse)


def test_mock_response_text_and_n(litellm_env: Any) -> None:
    litellm = litellm_env
    theirs = litellm.batch_completion(model="gpt-4o-mini", messages=[HI, HI], mock_response="canned", n=2)
    ours = drop_in.batch_completion(model="gpt-4o-mini", messages=[HI, HI], mock_response="canned", n=2)
    for a, b in zip(ours, theirs, strict=True):
        _same_answer(a, b, litellm)  # usage differs: LiteLLM's mock counts 10 + 20 tokens (README)
        assert [c.message.content for c in a.choices] == ["canned", "canned"]


@pytest.mark.parametrize(
    "mock", ["litellm.RateLimitError", "litellm.InternalServerError", "litellm.ContextWindowExceededError"]
)
def test_mock_error_strings(litellm_env: Any, mock: str) -> None:
    litellm = litellm_env
    theirs = litellm.batch_completion(model="gpt-4o-mini", messages=[HI], mock_response=mock)
    ours = drop_in.batch_completion(model="gpt-4o-mini", messages=[HI], mock_response=mock)
    assert type(ours[0]) is type(theirs[0]) is getattr(litellm, mock.split(".")[1])
    assert ours[0].status_code == theirs[0].status_code
    assert str(ours[0]) == str(theirs[0])


def test_mock_exception_instance_and_timeout(litellm_env: Any) -> None:
    litellm = litellm_env
    error = litellm.RateLimitError(message="slow down", llm_provider="openai", model="gpt-4o-mini")
    theirs = litellm.batch_completion(model="gpt-4o-mini", messages=[HI], mock_response=error)
    ours = drop_in.batch_completion(model="gpt-4o-mini", messages=[HI], mock_response=error)
    assert type(ours[0]) is type(theirs[0]) is litellm.RateLimitError
    assert "slow down" in str(ours[0])
    # LiteLLM sleeps the timeout out first (batcher does not: README); a short one keeps the test short.
    theirs = litellm.batch_completion(model="gpt-4o-mini", messages=[HI], mock_timeout=True, timeout=0.2)
    ours = drop_in.batch_completion(model="gpt-4o-mini", messages=[HI], mock_timeout=True, timeout=0.2)
    assert type(ours[0]) is type(theirs[0]) is litellm.Timeout


def test_models_as_a_string_and_empty(litellm_env: Any) -> None:
    litellm = litellm_env
    theirs = litellm.batch_completion_models_all_responses(models="gpt-4o-mini", messages=HI)
    ours = drop_in.batch_completion_models_all_responses(models="gpt-4o-mini", messages=HI)
    assert len(ours) == len(theirs) == 1
    _same_answer(ours[0], theirs[0], litellm)
    assert litellm.batch_completion_models_all_responses(models=[], messages=HI) == []
    assert drop_in.batch_completion_models_all_responses(models=[], messages=HI) == []
    fastest = drop_in.batch_completion_models(models="gpt-4o-mini", messages=HI)
    assert isinstance(fastest, litellm.ModelResponse) and fastest.model == "gpt-4o-mini"
    with pytest.raises(ValueError):
        litellm.batch_completion_models(models=[], messages=HI)
    with pytest.raises(ValueError):
        drop_in.batch_completion_models(models=[], messages=HI)


def test_all_responses_drop_failures_unless_return_exceptions(litellm_env: Any, fake_provider: FakeProvider) -> None:
    litellm = litellm_env
    fake_provider.set_behaviour("gpt-compat-broken", ModelBehaviour(fail_always_status=400))
    models = ["gpt-4o-mini", "gpt-compat-broken", "no-such-provider-model", "anthropic/claude-3-5-haiku-latest"]
    theirs = litellm.batch_completion_models_all_responses(models=models, messages=HI)
    ours = drop_in.batch_completion_models_all_responses(models=models, messages=HI)
    assert [type(x) for x in ours] == [type(x) for x in theirs] == [litellm.ModelResponse] * 2
    assert [x.model for x in ours] == [x.model for x in theirs]
    kept = drop_in.batch_completion_models_all_responses(models=models, messages=HI, return_exceptions=True)
    assert [type(x) for x in kept] == [
        litellm.ModelResponse,
        litellm.BadRequestError,
        litellm.BadRequestError,
        litellm.ModelResponse,
    ]


def test_fastest_with_deployments_and_model_list(litellm_env: Any, fake_provider: FakeProvider) -> None:
    litellm = litellm_env
    deployments = [{"model": "gpt-4o-mini"}, {"model": "gpt-4o"}]
    theirs = litellm.batch_completion_models(deployments=[dict(d) for d in deployments], model_list=[], messages=HI)
    ours = drop_in.batch_completion_models(deployments=deployments, messages=HI)
    assert type(ours) is type(theirs) is litellm.ModelResponse
    assert ours.model in ("gpt-4o-mini", "gpt-4o")
    router_style = [{"model_name": "m", "litellm_params": {"model": "gpt-4o-mini", "temperature": 0.5}}]
    answer = drop_in.batch_completion_models(model_list=router_style, messages=HI)
    assert isinstance(answer, litellm.ModelResponse)
    with pytest.raises(batcher.InvalidRequestError, match=r"deployments\[1\]\.api_base"):
        drop_in.batch_completion_models(
            deployments=[
                {"model": "gpt-4o-mini", "api_base": fake_provider.openai_base},
                {"model": "gpt-4o", "api_base": "https://elsewhere.example/v1"},
            ],
            messages=HI,
        )


def test_custom_llm_provider(litellm_env: Any) -> None:
    litellm = litellm_env
    theirs = litellm.batch_completion(model="my-local-model", custom_llm_provider="openai", messages=[HI])
    ours = drop_in.batch_completion(model="my-local-model", custom_llm_provider="openai", messages=[HI])
    _same_answer(ours[0], theirs[0], litellm)


def test_module_settings_drop_params_and_num_retries(litellm_env: Any, fake_provider: FakeProvider) -> None:
    """``litellm.drop_params = True`` drops what a provider does not take; ``litellm.num_retries`` bounds retries."""
    litellm = litellm_env
    with pytest.raises(batcher.UnsupportedParamsError):
        drop_in.batch_completion(model="anthropic/claude-3-5-haiku-latest", messages=[HI], logit_bias={"1": 1})
    litellm.drop_params = True
    [ours] = drop_in.batch_completion(model="anthropic/claude-3-5-haiku-latest", messages=[HI], logit_bias={"1": 1})
    assert isinstance(ours, litellm.ModelResponse)
    litellm.drop_params = False
    fake_provider.set_behaviour("gpt-compat-flaky", ModelBehaviour(fail_first_n=1, fail_first_status=503))
    litellm.num_retries = 0
    [failed] = drop_in.batch_completion(model="gpt-compat-flaky", messages=[HI])
    assert isinstance(failed, litellm.ServiceUnavailableError)  # LiteLLM's class for a 503
    assert fake_provider.count(model="gpt-compat-flaky") == 1


def test_without_litellm_imported_batcher_never_imports_it() -> None:
    import subprocess
    import sys

    probe = "import sys, batcher; assert 'litellm' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=60).returncode == 0


def test_native_response_is_an_openai_chat_completion(litellm_env: Any) -> None:
    """``batcher.ModelResponse`` is openai's ``ChatCompletion`` with LiteLLM's extras."""
    import openai.types.chat as oai

    [ours] = batcher.batch_completion(model="gpt-4o-mini", messages=[HI])
    assert isinstance(ours, oai.ChatCompletion)
    assert ours._hidden_params["custom_llm_provider"] == "openai"  # type: ignore[union-attr]
    assert isinstance(ours.json(), dict)  # type: ignore[union-attr]


def test_native_exceptions_are_openai_exceptions(litellm_env: Any, fake_provider: FakeProvider) -> None:
    """batcher's provider errors subclass openai's classes and carry ``llm_provider``."""
    import openai

    fake_provider.set_behaviour("gpt-compat-auth", ModelBehaviour(fail_always_status=401))
    [ours] = batcher.batch_completion(model="gpt-compat-auth", messages=[HI])
    assert isinstance(ours, openai.AuthenticationError)
    assert ours.llm_provider == "openai"  # type: ignore[union-attr]
