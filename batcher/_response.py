"""The normalised response every provider call returns: OpenAI's ``chat.completion`` shape.

Shape followed: the OpenAI Chat Completions reference, "The chat completion object", as
typed in the ``openai`` Python SDK 3.57 (``openai/types/chat/chat_completion.py``,
``chat_completion_message.py``, ``chat_completion_message_function_tool_call.py``,
``openai/types/completion_usage.py``). Anthropic and Cohere answers are translated into it
by ``batcher._providers``; LiteLLM's ``ModelResponse`` is the model for the dict-style
access (``resp["choices"][0]["message"]["content"]``) that code written for LiteLLM uses.

Every model allows extra fields (``extra="allow"``) so nothing a provider sends is lost and
a stored response round-trips through ``model_dump(mode="json")`` / ``model_validate``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = [
    "Choice",
    "FinishReason",
    "Function",
    "Message",
    "ModelResponse",
    "ToolCall",
    "Usage",
    "mock_model_response",
]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
"""Every provider's stop reason is mapped onto OpenAI's four values (or None: unknown)."""


class _DictAccess(BaseModel):
    """Attribute access plus LiteLLM-style item access; prints as JSON."""

    model_config = ConfigDict(extra="allow")

    def _has_key(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in type(self).model_fields:
            return True
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
        names = list(type(self).model_fields)
        if self.model_extra:
            names.extend(self.model_extra)
        return names

    def __str__(self) -> str:
        return self.model_dump_json()


class Function(_DictAccess):
    """The function a tool call invokes; ``arguments`` is a JSON string, as in OpenAI's API."""

    name: str
    arguments: str = "{}"


class ToolCall(_DictAccess):
    """One tool call the model asked for."""

    id: str
    type: str = "function"
    function: Function


class Message(_DictAccess):
    """The assistant's message. ``content`` is None when the model only called tools."""

    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(_DictAccess):
    """One completion. ``finish_reason`` is normalised; the provider's own value is kept in
    ``native_finish_reason`` (an extra field) whenever it differs."""

    index: int = 0
    message: Message
    finish_reason: FinishReason | None = None


class Usage(_DictAccess):
    """Token counts. ``total_tokens`` is filled in when a provider leaves it out."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @model_validator(mode="before")
    @classmethod
    def _fill_total(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("total_tokens") is None:
            data = dict(data)
            data["total_tokens"] = int(data.get("prompt_tokens") or 0) + int(data.get("completion_tokens") or 0)
        return data


class ModelResponse(_DictAccess):
    """A chat completion in OpenAI's shape, whatever provider produced it.

    ``provider`` (``"openai"``, ``"anthropic"``, ``"cohere"``) and ``latency_ms`` (time from
    sending the request to having the whole answer) are batcher's additions.
    """

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    provider: str | None = None
    latency_ms: float | None = None


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
