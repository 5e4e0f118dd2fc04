"""The providers' wire formats as the fake provider serves them: one module per provider.

Each module fills in ``FakeFormat`` (``_base``) for one provider of batcher's registry, under the
same name. ``BUILTIN`` names the formats batcher ships (one line each, as the provider registry
does); ``register_format`` adds one for a provider registered from outside batcher. A
``FakeProvider`` serves every format registered when it starts, each on its own path.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from batcher._providers._registry import load_aliases
from batcher.testing.formats._base import Failure, FakeFormat

__all__ = ["BUILTIN", "FORMATS", "Failure", "FakeFormat", "get_format", "register_format", "unregister_format"]

_registered: dict[str, FakeFormat] = {}
FORMATS: Mapping[str, FakeFormat] = MappingProxyType(_registered)
"""Every registered format by provider name, in registration order (a live, read-only view)."""

# The formats batcher ships, by provider name: ``module:class`` (one line each).
BUILTIN: Mapping[str, str] = MappingProxyType(
    {
        "openai": "batcher.testing.formats.openai:OpenAIFormat",
        "anthropic": "batcher.testing.formats.anthropic:AnthropicFormat",
        "cohere": "batcher.testing.formats.cohere:CohereFormat",
    }
)


def register_format(fmt: FakeFormat, *, replace: bool = False) -> FakeFormat:
    """Teach the fake provider ``fmt``'s wire format (servers started from now on serve it).

    Raises ValueError for a provider name taken (without ``replace``) or a path another format serves.
    """
    name = getattr(fmt, "name", None)
    if not isinstance(fmt, FakeFormat) or not isinstance(name, str) or not name:
        raise ValueError(f"{fmt!r} is not a FakeFormat with a name")
    if name in _registered and not replace:
        raise ValueError(f"a fake format for {name!r} is registered already (pass replace=True to swap it)")
    path = getattr(fmt, "path", None)
    if not isinstance(path, str) or not path.startswith("/") or path.startswith("/_fake"):
        raise ValueError(f"{name}: path {path!r} must start with '/' (and not with /_fake)")
    if fmt.base_path and not (fmt.base_path.startswith("/") and path.startswith(fmt.base_path + "/")):
        raise ValueError(f"{name}: base_path {fmt.base_path!r} must be a leading part of path {path!r}")
    taken = next((f.name for f in _registered.values() if f.path == path and f.name != name), None)
    if taken is not None:
        raise ValueError(f"{name}: path {path!r} is served for {taken!r} already")
    _registered[name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    """Forget the format of provider ``name`` (a no-op if there is none)."""
    _registered.pop(name, None)


def get_format(name: str) -> FakeFormat:
    """The format of provider ``name``; ValueError naming the known ones if there is none."""
    try:
        return _registered[name]
    except KeyError:
        known = ", ".join(_registered) or "none"
        raise ValueError(f"the fake provider speaks no provider named {name!r} (known: {known})") from None


load_aliases(BUILTIN, FakeFormat, register_format)
