"""A poison request, for fault tests: loaded into a test worker with ``--include tests.support.poison``.

A request whose messages contain ``POISON`` kills its worker in the middle of its provider call,
as a request whose answer exhausts the worker's memory would: no Python exception, no clean-up.
"""

from __future__ import annotations

import os
from typing import Any

from batcher import _providers

MARKER = "POISON"
_real_complete = _providers.complete


def _complete(client: Any, route: Any, messages: Any, params: Any, **kwargs: Any) -> Any:
    if any(MARKER in str(message.get("content")) for message in messages):
        os._exit(137)
    return _real_complete(client, route, messages, params, **kwargs)


_providers.complete = _complete
