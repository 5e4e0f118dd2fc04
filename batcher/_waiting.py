"""What ``Job.wait`` and ``AsyncJob.wait`` share: deadlines, the progress bar, riding out an outage.

The two loops are a few lines each (one blocks its thread, one awaits); every decision they take is
made here, once: how long the next poll may block, when the timeout is reached and what it says,
how long an outage of the store (or the service) is ridden out, and how a race nobody won is told.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from batcher._exceptions import AllModelsFailedError, NoWorkerError, ServiceUnavailableError, WaitTimeoutError
from batcher._jobs import JobStatus, Result
from batcher._progress import ProgressBar
from batcher._transport import Consumers

T = TypeVar("T")

PROGRESS_REFRESH_S = 0.25
DB_OUTAGE_TOLERANCE_S = 300.0
"""How long a wait keeps going through an outage of the store (or the service) before it says so."""
OUTAGE_RETRY_S = 1.0
NO_WORKER_GRACE_S = 3.0
"""How long a wait sees no live worker consuming its job's queue, and no progress, before it raises
``NoWorkerError`` (the job stays stored and runs once a worker starts): the first look is at once, so
a job submitted with no worker running fails this long (plus one check) after its wait began."""
NO_WORKER_CHECK_S = 1.0
"""How often a wait reads the workers' heartbeats (one small query)."""


class Waiting:
    """One wait for a job to be final: its deadline and its progress bar (a context manager)."""

    def __init__(self, job_id: uuid.UUID, timeout: float | None, *, progress: bool, slice_s: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.slice_s = PROGRESS_REFRESH_S if progress else slice_s
        self.bar = ProgressBar(f"job {str(job_id)[:8]}") if progress else None

    def __enter__(self) -> Waiting:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def next_slice(self, status: JobStatus) -> float | None:
        """``None`` once ``status`` is final; else how long the next poll may block.

        Raises ``WaitTimeoutError`` once the deadline has passed (the job goes on)."""
        if self.bar is not None:
            self.bar.update(status)
        if status.is_final:
            return None
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise WaitTimeoutError(
                f"job {self.job_id} is still {status.state.value} after {self.timeout} s "
                f"({status.done}/{status.total} done); it goes on running"
            )
        return self.slice_s if remaining is None else min(self.slice_s, remaining)


class Race:
    """One wait for a race's first successful answer."""

    def __init__(self, job_id: uuid.UUID, timeout: float | None, *, slice_s: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.slice_s = slice_s

    def next_slice(self) -> float:
        """How long the next poll may block; ``WaitTimeoutError`` once the deadline has passed."""
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise WaitTimeoutError(f"no model of job {self.job_id} answered within {self.timeout} s")
        return self.slice_s if remaining is None else min(self.slice_s, remaining)


def all_models_failed(results: Iterable[Result]) -> AllModelsFailedError:
    """A race that ended with no winner: each model's failure, by name (``name (#i)`` when repeated)."""
    errors: dict[str, BaseException] = {}
    for result in results:
        if result.error is not None:
            key = f"{result.model} (#{result.index})" if result.model in errors else result.model
            errors[key] = result.error
    return AllModelsFailedError(errors)


class Outage:
    """Rides out a store (or service) that is briefly away while a job is waited for."""

    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        self.since: float | None = None
        self.last_seen: float | None = None
        """When the last failed call was (monotonic): the workers' heartbeats may lag for a while after."""

    def ride(self, call: Callable[[], T], deadline: float | None) -> T:
        """``call()``; while it raises ``ServiceUnavailableError``, retry for up to the tolerance."""
        while True:
            try:
                value = call()
                self.since = None
                return value
            except ServiceUnavailableError as exc:
                time.sleep(self.retry_in(exc, deadline))

    async def aride(self, call: Callable[[], Awaitable[T]], deadline: float | None) -> T:
        """``ride`` for a coroutine: the pause between attempts holds no thread."""
        while True:
            try:
                value = await call()
                self.since = None
                return value
            except ServiceUnavailableError as exc:
                await asyncio.sleep(self.retry_in(exc, deadline))

    def retry_in(self, exc: ServiceUnavailableError, deadline: float | None) -> float:
        """How long to pause before trying again; raises once the outage lasted too long (or the deadline passed)."""
        now = time.monotonic()
        self.since = self.since or now
        self.last_seen = now
        if now - self.since > DB_OUTAGE_TOLERANCE_S:
            raise ServiceUnavailableError(
                f"{exc} for {now - self.since:.0f} s while waiting for job {self.job_id}; the job goes "
                "on: wait again once it is back"
            ) from None
        if deadline is not None and now >= deadline:
            raise WaitTimeoutError(f"job {self.job_id}: unreachable until the timeout ({exc})") from None
        return OUTAGE_RETRY_S


class WorkerWatch:
    """Says when nobody will run a job: no live worker consumes its queue, and it makes no progress,
    for ``NO_WORKER_GRACE_S``. Keeps quiet while a worker is there or appears, on transports that cannot
    tell (HTTP, embedded mode's own worker), and for a while after an outage (heartbeats written during
    it failed: the workers' next beats are on their way).

    Sans I/O: ``due(done)`` says whether to read the heartbeats now; ``observe(consumers)`` judges what
    was read (``Transport.consumers``) and raises ``NoWorkerError``; ``outage_seen()`` after a failed read.
    """

    def __init__(self, job_id: uuid.UUID, outage: Outage | None, *, heartbeat_s: float) -> None:
        self.job_id = job_id
        self.outage = outage
        self.heartbeat_s = heartbeat_s
        self.since: float | None = None
        self.done = -1
        self.next_check = 0.0
        self.off = False

    def due(self, done: int) -> bool:
        if self.off:
            return False
        now = time.monotonic()
        if done != self.done:  # progress: someone is working on it
            self.done, self.since = done, None
        if now < self.next_check:
            return False
        self.next_check = now + NO_WORKER_CHECK_S
        return True

    def outage_seen(self) -> None:
        self.since = None  # riding the outage out is the wait's business

    def observe(self, consumers: Consumers | None) -> None:
        if consumers is None:
            self.off = True
            return
        if consumers.live:
            self.since = None
            return
        now = time.monotonic()
        if self.since is None:
            self.since = now
        last_outage = self.outage.last_seen if self.outage is not None else None
        if last_outage is not None and now - last_outage < NO_WORKER_GRACE_S + self.heartbeat_s:
            return
        if now - self.since >= NO_WORKER_GRACE_S:
            raise NoWorkerError(consumers.queue, job_id=str(self.job_id))
