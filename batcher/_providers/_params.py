"""Checking OpenAI-style parameters against what one provider takes (``batcher._providers.check_params``).

The rules every provider shares live here; what a provider takes is declared by its adapter
(``supported_params``, ``check_value``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from batcher._egress import check_extra_headers
from batcher._exceptions import UnsupportedParamsError

if TYPE_CHECKING:
    from batcher._providers._adapter import ProviderAdapter

__all__ = ["CHAT_PARAMS", "DROP_PARAMS_HINT", "PASSTHROUGH_PARAMS", "check_params_for"]

DROP_PARAMS_HINT = "pass drop_params=True to drop unsupported parameters"

# Parameters every adapter takes: the SDKs' escape hatches for anything batcher does not map.
# ``extra_body`` is merged into the JSON body, ``extra_headers`` into the HTTP headers.
PASSTHROUGH_PARAMS = frozenset({"extra_body", "extra_headers"})

CHAT_PARAMS = frozenset(
    {
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "top_p",
        "stop",
        "n",
        "tools",
        "tool_choice",
        "response_format",
    }
)
"""OpenAI chat parameters that every built-in provider maps: an adapter's ``supported_params`` starts here."""


def check_params_for(adapter: ProviderAdapter, params: Mapping[str, Any], *, drop_params: bool) -> dict[str, Any]:
    """The params ``adapter`` can take; see ``batcher._providers.check_params``."""
    kept: dict[str, Any] = {}
    for name, value in params.items():
        if name == "stream":
            if value:
                raise UnsupportedParamsError(
                    "streaming is not supported: batcher stores each whole response; "
                    "drop stream=True (results are returned complete)",
                    field="stream",
                )
            continue
        if value is None:
            continue  # LiteLLM convention: a None parameter is an unset one
        if name in PASSTHROUGH_PARAMS:
            if not isinstance(value, Mapping):
                raise UnsupportedParamsError(f"{name} must be a dict", field=name)
            kept[name] = check_extra_headers(value) if name == "extra_headers" else dict(value)
            continue
        if name not in adapter.supported_params:
            reason = f"{adapter.name} does not support the {name!r} parameter"
        else:
            why = adapter.check_value(name, value)
            reason = f"{adapter.name} does not support {name}={value!r}: {why}" if why else ""
        if reason:
            if drop_params:
                continue
            raise UnsupportedParamsError(f"{reason}; {DROP_PARAMS_HINT}", field=name)
        kept[name] = value
    return kept
