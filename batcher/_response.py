"""The normalised response every provider call returns: the ``openai`` SDK's own types.

``ModelResponse`` *is* an ``openai.types.chat.ChatCompletion`` (and its parts are the SDK's
``Choice``, ``ChatCompletionMessage``, ``ChatCompletionMessageFunctionToolCall``,
``CompletionUsage`` with ``PromptTokensDetails`` / ``CompletionTokensDetails`` objects), so
``isinstance(resp, ChatCompletion)`` holds, ``to_dict()`` / ``to_json()`` are the SDK's, and
``ChatCompletion.model_validate(resp.model_dump())`` round-trips every provider's answer.
Anthropic and Cohere answers are translated into it by ``batcher._providers``.

On top, LiteLLM's additions (``litellm/types/utils.py``, ``ModelResponse``, ``Message``,
``Choices``, ``Usage``), so code written for LiteLLM keeps working:

* item access ``resp["choices"][0]["message"]["content"]``, ``.get``, ``in``, ``keys()``;
* ``json()`` returns a dict (LiteLLM's), not pydantic's deprecated JSON string;
* ``_hidden_params`` (``custom_llm_provider``, ``api_base`` without credentials, ``model_id``,
  ``response_cost``) and ``_response_ms``: private, so not in ``model_dump()``;
* ``message.reasoning_content`` / ``thinking_blocks`` / ``provider_specific_fields`` and
  ``choice.provider_specific_fields`` (``native_finish_reason``), dumped only when set;
* ``finish_reason`` is always one of OpenAI's five values: a provider's own reason is mapped
  as LiteLLM's ``map_finish_reason`` does (unknown -> ``stop``) and kept in
  ``choice.provider_specific_fields["native_finish_reason"]``.

Storage: the private values are not part of the model's dump, so the body batcher stores and
ships (``stored_body()``) is the dump plus two reserved keys, ``_hidden_params`` and
``_response_ms``; ``model_validate`` takes them back out into the private attributes.
``public_body`` strips them for consumers that want OpenAI's object only (batch output files).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from openai import BaseModel as OpenAIBaseModel
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as OpenAIChoice
from openai.types.chat.chat_completion_message import FunctionCall as OpenAIFunctionCall
from openai.types.chat.chat_completion_message_custom_tool_call import (
    ChatCompletionMessageCustomToolCall,
)
from openai.types.chat.chat_completion_message_custom_tool_call import Custom as OpenAICustom
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
)
from openai.types.chat.chat_completion_message_function_tool_call import Function as OpenAIFunction
from openai.types.completion_usage import CompletionTokensDetails as OpenAICompletionTokensDetails
from openai.types.completion_usage import CompletionUsage
from openai.types.completion_usage import PromptTokensDetails as OpenAIPromptTokensDetails
from pydantic import Discriminator, Field, ModelWrapValidatorHandler, PrivateAttr, Tag, model_validator

__all__ = [
    "HIDDEN_PARAMS_KEY",
    "RESERVED_KEYS",
    "RESPONSE_MS_KEY",
    "Choice",
    "CompletionTokensDetails",
    "CustomToolCall",
    "FinishReason",
    "Function",
    "FunctionCall",
    "Message",
    "ModelResponse",
    "PromptTokensDetails",
    "ToolCall",
    "Usage",
    "map_finish_reason",
    "mock_model_response",
    "public_body",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
"""OpenAI's finish reasons (``openai.types.chat.chat_completion.Choice.finish_reason``)."""

HIDDEN_PARAMS_KEY = "_hidden_params"
RESPONSE_MS_KEY = "_response_ms"
RESERVED_KEYS = (HIDDEN_PARAMS_KEY, RESPONSE_MS_KEY)
"""Keys of a stored body that hold ``ModelResponse``'s private values (see the module docstring)."""

# LiteLLM's map_finish_reason table (litellm/litellm_core_utils/core_helpers.py): every
# provider's reason as one of OpenAI's; anything else is "stop", as LiteLLM does.
_FINISH_REASON_MAP: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "function_call",
    "content_filter": "content_filter",
    # Anthropic
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "content_filtered": "content_filter",
    # Cohere
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR_TOXIC": "content_filter",
    "ERROR_LIMIT": "length",
    # OpenAI-compatible servers (vLLM, TGI, Together, ...)
    "eos": "stop",
    "eos_token": "stop",
}


def map_finish_reason(native: str | None) -> FinishReason:
    """A provider's stop reason as one of OpenAI's five (LiteLLM's rule: unknown or missing -> ``stop``)."""
    return _FINISH_REASON_MAP.get(native, "stop") if native is not None else "stop"


def _is_none(value: Any) -> bool:
    return value is None


def _omit_if_none() -> Any:
    """A LiteLLM addition: None by default and then left out of the dump, so an answer
    without it dumps exactly as OpenAI's object."""
    return Field(default=None, exclude_if=_is_none)


class _DictAccess(OpenAIBaseModel):
    """Attribute access plus LiteLLM-style item access; prints as JSON."""

    def _has_key(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        fields = type(self).model_fields
        if key in fields:
            # A LiteLLM addition that is not set is not in the dump, nor an item.
            return fields[key].exclude_if is None or getattr(self, key) is not None
        extra = self.model_extra
        return extra is not None and key in extra

    def __getitem__(self, key: str) -> Any:
        # Only fields (declared or extra) are items: resp["model_dump"] must not be a method.
        if not self._has_key(key):
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return self._has_key(key)

    def get(self, key: str, default: Any = None) -> Any:
        """``dict.get`` for code that treats the response as a dict."""
        return self[key] if self._has_key(key) else default

    def keys(self) -> list[str]:
        """The field names (declared then extra), as ``dict.keys`` would list them."""
        names = [name for name in type(self).model_fields if self._has_key(name)]
        if self.model_extra:
            names.extend(self.model_extra)
        return names

    def json(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The object as a dict, as LiteLLM's ``json()`` returns it (pydantic's deprecated
        ``json()`` returned a string); ``model_dump_json()`` / ``to_json()`` give JSON text."""
        return self.model_dump(**kwargs)

    def __str__(self) -> str:
        return self.model_dump_json()


class Function(_DictAccess, OpenAIFunction):
    """The function a tool call invokes; ``arguments`` is a JSON string, as in OpenAI's API."""

    arguments: str = "{}"


class FunctionCall(_DictAccess, OpenAIFunctionCall):
    """The deprecated ``function_call`` of a message (None unless a server sends one)."""

    arguments: str = "{}"


class ToolCall(_DictAccess, ChatCompletionMessageFunctionToolCall):
    """One function tool call the model asked for."""

    type: Literal["function"] = "function"
    function: Function


class Custom(_DictAccess, OpenAICustom):
    """The input of a custom (free-form) tool call."""


class CustomToolCall(_DictAccess, ChatCompletionMessageCustomToolCall):
    """One custom tool call (OpenAI's ``type: "custom"`` tools); batcher also exposes it as a
    ``function`` (``name``, ``arguments`` = the free-form input) for code that only reads those."""

    custom: Custom
    function: Function | None = _omit_if_none()


def _tool_call_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)
    return "custom" if kind == "custom" else "function"


AnyToolCall = Annotated[
    Annotated[ToolCall, Tag("function")] | Annotated[CustomToolCall, Tag("custom")],
    Discriminator(_tool_call_kind),
]


class Message(_DictAccess, ChatCompletionMessage):
    """The assistant's message. ``content`` is None when the model only called tools.

    LiteLLM's additions: ``reasoning_content`` (the model's thinking as text: Anthropic's
    ``thinking`` blocks, Cohere's ``thinking`` items, ``reasoning_content`` of compatible
    servers), ``thinking_blocks`` (Anthropic's blocks as sent, so they can be sent back) and
    ``provider_specific_fields``.
    """

    role: Literal["assistant"] = "assistant"
    function_call: FunctionCall | None = None
    tool_calls: list[AnyToolCall] | None = None  # type: ignore[assignment]
    reasoning_content: str | None = _omit_if_none()
    thinking_blocks: list[dict[str, Any]] | None = _omit_if_none()
    provider_specific_fields: dict[str, Any] | None = _omit_if_none()


class Choice(_DictAccess, OpenAIChoice):
    """One completion. ``finish_reason`` is one of OpenAI's five; the provider's own value is
    kept in ``provider_specific_fields["native_finish_reason"]`` whenever it differs."""

    index: int = 0
    message: Message
    finish_reason: FinishReason = "stop"
    provider_specific_fields: dict[str, Any] | None = _omit_if_none()

    @model_validator(mode="before")
    @classmethod
    def _map_finish_reason(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        native = data.get("finish_reason")
        legacy = data.get("native_finish_reason")  # bodies stored before native reasons moved
        if native in _FINISH_REASONS and legacy is None:
            return data
        data = dict(data)
        if legacy is not None:
            del data["native_finish_reason"]
            native = legacy
        mapped = map_finish_reason(native if isinstance(native, str) else None)
        data["finish_reason"] = data["finish_reason"] if data.get("finish_reason") in _FINISH_REASONS else mapped
        if isinstance(native, str) and native != data["finish_reason"]:
            fields = dict(data.get("provider_specific_fields") or {})
            fields.setdefault("native_finish_reason", native)
            data["provider_specific_fields"] = fields
        return data


_FINISH_REASONS = frozenset(("stop", "length", "tool_calls", "content_filter", "function_call"))


class PromptTokensDetails(_DictAccess, OpenAIPromptTokensDetails):
    """``usage.prompt_tokens_details``: ``cached_tokens`` (prompt tokens read from a cache)."""


class CompletionTokensDetails(_DictAccess, OpenAICompletionTokensDetails):
    """``usage.completion_tokens_details``: ``reasoning_tokens`` and the like, when the provider says."""


class Usage(_DictAccess, CompletionUsage):
    """Token counts. ``total_tokens`` is filled in when a provider leaves it out;
    ``prompt_tokens_details`` is always an object (``cached_tokens`` 0 unless the provider
    reported cache reads)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        if data.get("total_tokens") is None or data.get("prompt_tokens_details") is None:
            data = dict(data)
            if data.get("total_tokens") is None:
                data["total_tokens"] = int(data.get("prompt_tokens") or 0) + int(data.get("completion_tokens") or 0)
            if data.get("prompt_tokens_details") is None:
                data["prompt_tokens_details"] = {"cached_tokens": 0}
        return data


class ModelResponse(_DictAccess, ChatCompletion):
    """A chat completion, an ``openai`` ``ChatCompletion``, whatever provider produced it.

    ``_hidden_params`` and ``_response_ms`` are LiteLLM's: what batcher knows about the call
    (provider, base URL without credentials, deployment id, cost in USD) and the time from
    sending the request to having the whole answer. ``provider`` and ``latency_ms`` read them
    (batcher's older names).
    """

    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]  # type: ignore[assignment]
    usage: Usage | None = None

    _hidden_params: dict[str, Any] = PrivateAttr(default_factory=dict)
    _response_ms: float | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _take_reserved_keys(cls, data: Any, handler: ModelWrapValidatorHandler[ModelResponse]) -> ModelResponse:
        """A stored body's reserved keys back into the private attributes (older bodies kept
        ``provider`` and ``latency_ms`` at the top level: read as the same)."""
        hidden: dict[str, Any] | None = None
        response_ms: Any = None
        if isinstance(data, Mapping) and any(k in data for k in (*RESERVED_KEYS, "provider", "latency_ms")):
            data = dict(data)
            hidden = dict(data.pop(HIDDEN_PARAMS_KEY, None) or {})
            response_ms = data.pop(RESPONSE_MS_KEY, None)
            legacy_provider, legacy_ms = data.pop("provider", None), data.pop("latency_ms", None)
            if legacy_provider is not None:
                hidden.setdefault("custom_llm_provider", legacy_provider)
            if response_ms is None:
                response_ms = legacy_ms
        result = handler(data)
        if hidden:
            result._hidden_params = hidden
        if response_ms is not None:
            result._response_ms = float(response_ms)
        return result

    @property
    def provider(self) -> str | None:
        """The provider that answered (``_hidden_params["custom_llm_provider"]``)."""
        value = self._hidden_params.get("custom_llm_provider")
        return str(value) if value is not None else None

    @provider.setter
    def provider(self, value: str | None) -> None:
        self._hidden_params["custom_llm_provider"] = value

    @property
    def latency_ms(self) -> float | None:
        """Time from sending the request to having the whole answer (``_response_ms``)."""
        return self._response_ms

    @latency_ms.setter
    def latency_ms(self, value: float | None) -> None:
        self._response_ms = value

    def stored_body(self) -> dict[str, Any]:
        """The body batcher stores and ships: ``model_dump(mode="json")`` plus the reserved keys
        holding ``_hidden_params`` and ``_response_ms`` (read back by ``model_validate``)."""
        body = self.model_dump(mode="json")
        if self._hidden_params:
            body[HIDDEN_PARAMS_KEY] = self._hidden_params
        if self._response_ms is not None:
            body[RESPONSE_MS_KEY] = self._response_ms
        return body


def public_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A stored body without batcher's reserved keys: OpenAI's ``chat.completion`` object only."""
    return {k: v for k, v in body.items() if k not in RESERVED_KEYS}


def _count_words(text: str) -> int:
    return len(text.split())


def mock_model_response(
    content: str,
    *,
    model: str,
    messages: Sequence[Mapping[str, Any]] | None = None,
) -> ModelResponse:
    """The canned answer for LiteLLM-style ``mock_response="..."``: no provider is called.

    Token counts are rough (one token per whitespace-separated word); pass ``messages`` to
    have ``prompt_tokens`` counted from the prompt's text too.
    """
    prompt_tokens = 0
    for message in messages or ():
        body = message.get("content")
        if isinstance(body, str):
            prompt_tokens += _count_words(body)
        elif isinstance(body, list):
            for part in body:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    prompt_tokens += _count_words(part["text"])
    completion_tokens = _count_words(content)
    return ModelResponse(
        id=f"chatcmpl-mock-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[
            Choice(
                index=0,
                message=Message(role="assistant", content=content),
                finish_reason="stop",
            )
        ],
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )
