"""Helpers the adapters share to translate OpenAI's chat format into another provider's and back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batcher._exceptions import InvalidRequestError
from batcher._response import FinishReason, map_finish_reason

__all__ = [
    "content_text",
    "finish_reason_fields",
    "named_tool_choice",
    "openai_function_tools",
    "stop_list",
    "tool_arguments",
]


def content_text(content: Any, *, field: str) -> str:
    """The text of an OpenAI message ``content`` that may only hold text (str or text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise InvalidRequestError("only text parts are allowed here", field=f"{field}[{i}]")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise InvalidRequestError("content must be a string or a list of parts", field=field)


def tool_arguments(arguments: Any, *, field: str) -> dict[str, Any]:
    """An OpenAI tool call's ``arguments`` (a JSON string) as the object Anthropic wants."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        raise InvalidRequestError("must be a JSON object string", field=field) from None
    if not isinstance(parsed, dict):
        raise InvalidRequestError("must be a JSON object string", field=field)
    return parsed


def stop_list(stop: Any) -> list[str]:
    """OpenAI's ``stop`` (a string or a list of strings) as a list."""
    return [stop] if isinstance(stop, str) else [str(s) for s in stop]


def openai_function_tools(tools: Any) -> str | None:
    """Why ``tools`` is not a list of OpenAI function tools (None: it is)."""
    if not isinstance(tools, list):
        return "tools must be a list"
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            return f"tools[{i}] is not a function tool (only type 'function' can be translated)"
        function = tool.get("function")
        if not isinstance(function, Mapping) or not function.get("name"):
            return f"tools[{i}].function.name is missing"
    return None


def named_tool_choice(tool_choice: Any) -> str | None:
    """The function name of an OpenAI ``{"type": "function", "function": {"name"}}`` choice."""
    if isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        function = tool_choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


def finish_reason_fields(native: str | None, normalised: FinishReason | None) -> dict[str, Any]:
    """The ``finish_reason`` keys of a choice, as LiteLLM's ``Choices`` sets them: one of OpenAI's
    five (``normalised``, else LiteLLM's mapping: unknown or missing -> ``stop``), and the provider's
    own value, when it differs, in ``provider_specific_fields["native_finish_reason"]``."""
    reason = normalised or map_finish_reason(native)
    fields: dict[str, Any] = {"finish_reason": reason}
    if native is not None and native != reason:
        fields["provider_specific_fields"] = {"native_finish_reason": native}
    return fields
