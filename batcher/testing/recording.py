"""What the fake provider saw: one ``RecordedRequest`` per request, and counting them in time windows."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["RecordedRequest", "SlidingWindow", "max_in_window"]


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake saw it.

    ``status`` is None while the request is being served, 0 when no answer was sent (outcome
    ``dropped``: ``drop_connection``; ``cancelled``: the server stopped), 499 when the client
    went away during the latency (outcome ``client_gone``). Other outcomes: ``ok``, ``auth``,
    ``bad_request``, ``rpm_limited``, ``concurrency_limited``, ``context_window``, ``fail_always``, ``fail_first_n``,
    ``fail_every_n``, ``error_429``, ``error_5xx``, ``malformed:<mode>``, ``unknown_path``.
    """

    seq: int
    provider: str
    method: str
    path: str
    model: str | None
    prompt: str | None  # text of the last user message
    raw_body: bytes  # as received (b"" when record_bodies=False)
    headers: dict[str, str]  # lower-cased names -> values, auth values included
    api_key: str | None  # the key as sent (Bearer token / x-api-key)
    arrived_monotonic: float
    arrived_wall: float
    attempt: int = 0  # 1-based attempt number for (model, prompt); 0 if not reached
    status: int | None = None
    outcome: str = "pending"
    finished_monotonic: float | None = None
    response_id: str | None = None
    reply: str | None = None

    # The parsed body is not kept: thousands of recorded dicts would make every garbage
    # collection walk them and cost the server a large share of its throughput.
    @property
    def body(self) -> Any:
        """The request body parsed as JSON (None if it was not JSON or not recorded)."""
        if not self.raw_body:
            return None
        try:
            return json.loads(self.raw_body)
        except ValueError:
            return None

    @property
    def header_names(self) -> list[str]:
        return sorted(self.headers)

    def to_dict(self, *, body: bool = True) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "provider": self.provider,
            "method": self.method,
            "path": self.path,
            "model": self.model,
            "prompt": self.prompt,
            "body": self.body if body else None,
            "headers": self.headers,
            "api_key": self.api_key,
            "arrived_monotonic": self.arrived_monotonic,
            "arrived_wall": self.arrived_wall,
            "attempt": self.attempt,
            "status": self.status,
            "outcome": self.outcome,
            "finished_monotonic": self.finished_monotonic,
            "response_id": self.response_id,
            "reply": self.reply,
        }


def max_in_window(times: Iterable[float], window_s: float) -> int:
    """Largest number of timestamps inside any half-open window ``[t, t + window_s)``."""
    ts = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(ts):
        while ts[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class SlidingWindow:
    """Sliding window of admitted request times (the fake's RPM limits)."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def prune(self, now: float, window_s: float) -> None:
        times = self.times
        cutoff = now - window_s
        while times and times[0] <= cutoff:
            times.popleft()
