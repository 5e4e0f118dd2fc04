"""Where a ``Client``'s jobs live: the transport contract.

    Client / Job ──► Transport ──┬── LocalTransport  (batcher/_transport_local.py)
    (validation,                  │     Postgres and the broker from this process: a cluster's,
     waiting loops,               │     or embedded mode's SQLite + in-memory broker + worker
     progress bar)                └── HttpTransport   (batcher/_transport_http.py)
                                        a batcher service (``batcher api``) over HTTP

A transport does I/O and nothing else: ``Client`` checks the call (the same errors whatever the
transport), and ``Job`` owns the loops (wait with a progress bar, first response, riding out an
outage). The two meet in this small contract, so the three ways of running batcher are one
``Client`` with three transports, not a class hierarchy (as httpx swaps a transport).
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from batcher._jobs import JobStatus, Result
from batcher._response import ModelResponse
from batcher._states import JobKind
from batcher._submit import RequestSpec

Until = Literal["final", "first_response"]


@dataclass(frozen=True, slots=True)
class Poll:
    """What one bounded wait saw: the job's status, and the winning answer once a race has one.

    ``status`` is None only when the race's answer came with the wake-up itself: its caller returns the
    answer at once, so no status is read for it (a Postgres read less on the path to a race's answer).
    """

    status: JobStatus | None
    response: ModelResponse | None = None

    @property
    def job_status(self) -> JobStatus:
        """The status this wait read: there is one whenever it did not end with the race's answer."""
        if self.status is None:
            raise RuntimeError("this wait ended with the race's answer and read no status")
        return self.status


@dataclass(frozen=True, slots=True)
class Consumers:
    """Who consumes a job's queue now: the queue's name and how many live workers take from it."""

    queue: str
    live: int


class Transport(abc.ABC):
    """The I/O of a client: submit jobs, read them, wait for them, cancel them."""

    wait_slice_s: float
    """The longest one ``poll`` blocks (the client re-checks its own deadline in between)."""

    # --- submission (arguments already checked by ``Client``): each returns the new job's id ------

    @abc.abstractmethod
    def submit_conversations(self, model: str, conversations: Sequence[Any], kwargs: dict[str, Any]) -> uuid.UUID:
        """A batch job: one request per conversation, all to ``model``."""

    @abc.abstractmethod
    def submit_fanout(self, kind: JobKind, models: list[str], messages: Any, kwargs: dict[str, Any]) -> uuid.UUID:
        """A fastest-response or gather-all job: one conversation to every model."""

    @abc.abstractmethod
    def submit_requests(self, requests: Iterable[RequestSpec], kwargs: dict[str, Any]) -> uuid.UUID:
        """A batch job of requests that each name their model (streamed, never held whole)."""

    @abc.abstractmethod
    def submit_file(self, file: IO[bytes] | str | Path, default_model: str | None, kwargs: dict[str, Any]) -> uuid.UUID:
        """A batch job from a JSONL prompt file (``batcher submit``'s format)."""

    # --- reading ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def status(self, job_id: uuid.UUID) -> JobStatus:
        """The job now. Raises ``JobNotFoundError``; ``ServiceUnavailableError`` while the store is away."""

    @abc.abstractmethod
    def poll(self, job_id: uuid.UUID, timeout_s: float, until: Until) -> Poll:
        """Block up to ``timeout_s`` for the job to be final (or, ``first_response``, to have a winner);
        return what it is then, whether or not that happened."""

    def consumers(self, job_id: uuid.UUID) -> Consumers | None:
        """The live workers consuming the job's queue (from their heartbeats), so a wait can say that
        nobody will run the job; None when this transport cannot tell or always has a worker."""
        return None

    @abc.abstractmethod
    def results(self, job_id: uuid.UUID) -> Iterator[Result]:
        """Every request in input order, streamed."""

    @abc.abstractmethod
    def write_jsonl(self, job_id: uuid.UUID, out: IO[bytes]) -> None:
        """Every result as one ``Result.as_line`` JSON line, in input order."""

    @abc.abstractmethod
    def cancel(self, job_id: uuid.UUID) -> JobStatus:
        """Stop every request not yet sent; in-flight ones are recorded when they return."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what this transport opened (connections, sockets)."""
