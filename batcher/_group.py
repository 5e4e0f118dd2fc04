"""Group commit: many threads' writes of one kind, run by one thread in one round trip.

A worker's 100 threads each store an answer after their call. Run one by one, every store is a
round trip of its own on a connection of its own: a send, a wait for the server, a wake-up to re-take
the GIL, and a commit on the server. ``GroupRunner`` lets them queue instead: one runner thread per
process takes *whatever is queued* (never waiting on a timer, so an idle worker adds no latency: a
lone write goes at once) and runs it as one batch; each submitting thread blocks until its own item's
outcome is known, and gets its result or its exception. A task therefore still returns (and its
message is acknowledged) only after its write committed: a worker killed at any point loses nothing
that was acknowledged.

A write whose outcome its thread does not need (the rate limiter's lease given back after a call) is
*posted* instead (``post``): queued the same way, its outcome handed to a callback on the runner
thread, and the submitting thread goes on at once. Waking a thread is not free: with a worker's ~100
threads taking turns at the GIL, each wait for the runner cost ~0.1 CPU-ms per completion
(docs/benchmarks.md). Only a write that may be lost with the process can be posted; ``drain`` runs
what is queued at a graceful shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("batcher.group")

GROUP_MAX_ITEMS = 64
"""At most this many items in one batch (one round trip); more wait for the next."""

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


class _Pending(Generic[I, R]):
    __slots__ = ("done", "error", "item", "result", "then")

    def __init__(self, item: I, then: Callable[[R | BaseException], None] | None = None) -> None:
        self.item = item
        self.then = then  # posted: the outcome goes here, on the runner thread, and nobody waits on ``done``
        self.done = threading.Event()
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupRunner(Generic[I, R]):
    """Runs ``run_batch`` over the items queued by ``submit``, on a thread of its own.

    ``run_batch(items)`` returns one outcome per item, in order: a result, or an exception that
    ``submit`` raises in that item's thread (or that ``post`` hands to its callback). An exception out
    of ``run_batch`` itself is every item's.
    """

    def __init__(self, run_batch: Callable[[Sequence[I]], list[R | BaseException]], *, name: str) -> None:
        self._run_batch = run_batch
        self._name = name
        self._queue: list[_Pending[I, R]] = []
        self._running = 0  # items taken from the queue whose batch has not finished
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, item: I) -> R:
        """Queue ``item`` and wait for its outcome: its result, or its exception raised here."""
        pending: _Pending[I, R] = _Pending(item)
        self._enqueue(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def post(self, item: I, then: Callable[[R | BaseException], None]) -> None:
        """Queue ``item`` and return at once; ``then`` gets its outcome (result or exception) on the runner
        thread, with the batch it ran in. What ``then`` raises is logged, never anyone else's."""
        self._enqueue(_Pending(item, then))

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued item has run (True), or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._ready:
            while self._queue or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(left)
        return True

    def _enqueue(self, pending: _Pending[I, R]) -> None:
        with self._ready:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._queue.append(pending)
            self._ready.notify_all()  # the runner, and nobody else unless a drain waits

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch, self._queue = self._queue[:GROUP_MAX_ITEMS], self._queue[GROUP_MAX_ITEMS:]
                self._running = len(batch)
            try:
                self._run(batch)
            finally:
                with self._ready:
                    self._running = 0
                    self._ready.notify_all()  # a drain waiting for this batch

    def _run(self, batch: list[_Pending[I, R]]) -> None:
        try:
            outcomes = self._run_batch([p.item for p in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{self._name}: {len(outcomes)} outcomes for {len(batch)} items")
        except BaseException as exc:  # every item's: each thread decides (retry, raise) as it would alone
            outcomes = [exc] * len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.then is not None:
                try:
                    pending.then(outcome)
                except Exception:
                    log.exception("%s: the callback of a posted item failed", self._name)
                continue
            if isinstance(outcome, BaseException):
                pending.error = outcome
            else:
                pending.result = outcome
            pending.done.set()
