"""Settings: typed, with every default in one place, read from ``BATCHER_*`` variables and ``.env``.

Provider credentials are *not* settings: they keep the names users already export for
the providers' own SDKs (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...), see ``batcher._providers``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from batcher._ratelimit import DEFAULT_ADAPTIVE_INITIAL_CONCURRENCY, DEFAULT_ADAPTIVE_MAX_CONCURRENCY, RateLimitSpec

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/batcher"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_EMBEDDED_PATH = "batcher.db"
DEFAULT_EMBEDDED_CONCURRENCY = 32
DEFAULT_WORKER_CONCURRENCY = 100
DEFAULT_WORKER_PROCESSES = 0  # one per core
DEFAULT_WORKER_RACE_CONCURRENCY = 16
DEFAULT_WORKER_BATCH_NICE = 0
DEFAULT_DB_POOL_SIZE = 10
DEFAULT_DB_MAX_OVERFLOW = 10
DEFAULT_REQUEST_TIMEOUT_S = 600.0  # LiteLLM's default
DEFAULT_MAX_PROMPTS_PER_JOB = 10_000_000
"""The backlog is in Postgres, not Redis (issue #15): a job's size costs disk, not broker memory."""
DEFAULT_MAX_REQUEST_BYTES = 1_000_000
DEFAULT_LEASE_MARGIN_S = 30.0
DEFAULT_BROKER_VISIBILITY_TIMEOUT_S = 7_200
DEFAULT_RECOVERY_INTERVAL_S = 5.0
DEFAULT_QUEUED_GRACE_S = 30.0
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
DEFAULT_WORKER_LAPSE_S = 20.0
DEFAULT_STRANDED_MESSAGE_S = 30.0
DEFAULT_SHUTDOWN_GRACE_S = 30.0
DEFAULT_STORE_RETRY_WINDOW_S = 900.0
DEFAULT_DISPATCH_INTERVAL_S = 0.1
DEFAULT_WINDOW_PER_SLOT = 2
DEFAULT_WINDOW_MIN_REQUESTS = 64
DEFAULT_QUEUE = "batcher"
DEFAULT_RACE_QUEUE = "batcher.race"


class Settings(BaseSettings):
    """Everything an operator can tune. Each field maps to ``BATCHER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="BATCHER_", env_file=".env", extra="ignore")

    mode: Literal["auto", "embedded", "cluster"] = "auto"
    """``auto``: cluster when a URL is set or Postgres and Redis answer at the defaults, else embedded."""
    embedded_path: str = DEFAULT_EMBEDDED_PATH
    """Embedded mode's SQLite file."""
    embedded_concurrency: int = Field(DEFAULT_EMBEDDED_CONCURRENCY, ge=1, le=500)
    """Threads of embedded mode's in-process worker."""

    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy URL of the Postgres database that is the source of truth."""
    redis_url: str = DEFAULT_REDIS_URL
    """Redis: Celery's broker and the coordination store (race keys, wake-ups, rate limits)."""
    auto_migrate: bool = True
    """On first use (a client, ``batcher worker``) create the Postgres database if it is missing and run the
    migrations it lacks, under an advisory lock (concurrent first uses wait for one another). Off: a missing or
    unmigrated database is one line naming ``batcher db upgrade`` instead."""

    worker_concurrency: int = Field(DEFAULT_WORKER_CONCURRENCY, ge=1, le=2_000)
    """Threads per worker process; each holds one in-flight provider call."""
    worker_processes: int = Field(DEFAULT_WORKER_PROCESSES, ge=0, le=256)
    """Worker processes ``batcher worker`` runs and supervises (``--processes``); 0 = one per core this process
    may run on. One process is bound by its Celery consumer thread long before its threads are, so one per core
    is the measured best on 2 cores (docs/benchmarks.md). 1 runs a single plain Celery worker, no supervisor."""
    worker_race_concurrency: int = Field(DEFAULT_WORKER_RACE_CONCURRENCY, ge=0, le=500)
    """Threads of the one extra process ``batcher worker`` runs for races only (``submit_fastest``), so a race
    never waits behind a batch holding every thread; 0 = none. Not started with ``--processes 1``."""
    worker_batch_nice: int = Field(DEFAULT_WORKER_BATCH_NICE, ge=0, le=19)
    """Niceness ``batcher worker`` adds to its batch processes (not the race process), so a race gets the CPU
    first when batches keep every core busy; they still take all the CPU nothing else wants, but also yield to
    everything else on the host. 0 (the default) = same priority; 10 is the measured choice for a host that runs
    races beside large batches (W3 during a batch ~20 % faster, W1 ~8 % slower; docs/benchmarks.md, "Fifth
    round"). Only with a race process."""
    db_pool_size: int = Field(DEFAULT_DB_POOL_SIZE, ge=1, le=500)
    """Postgres connections a process keeps open. A thread holds one only for a statement (~1 ms),
    never across a provider call, so 100 threads share a few connections."""
    db_max_overflow: int = Field(DEFAULT_DB_MAX_OVERFLOW, ge=0, le=500)
    """Extra connections opened under bursts, closed when returned."""
    request_timeout_s: float = Field(DEFAULT_REQUEST_TIMEOUT_S, gt=0)
    """Default timeout of one provider call (``timeout=`` per call overrides it)."""
    lease_margin_s: float = Field(DEFAULT_LEASE_MARGIN_S, ge=0)
    """A running request's lease is its timeout plus this margin; past it, recovery re-runs it."""

    max_attempts: int = Field(5, ge=1, le=50)
    """Attempts per request for retryable failures (429, 5xx, timeouts, malformed replies)."""
    backoff_base_s: float = Field(1.0, gt=0)
    """A retry waits a random time up to this, doubled at each attempt (full jitter); a provider's Retry-After wins."""
    backoff_max_s: float = Field(60.0, gt=0)
    """Cap of that doubling: the longest wait between two attempts."""

    max_prompts_per_job: int = Field(DEFAULT_MAX_PROMPTS_PER_JOB, ge=1)
    """Most requests one job may hold; a larger submission is refused before anything is stored."""
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1_000)
    """Largest JSON size of one request's messages + parameters."""

    task_events: bool = False
    """Workers publish Celery task events from the start. Off by default: they cost ~20 % of a
    worker's throughput, and Flower switches them on by remote control while it runs."""

    queue: str = DEFAULT_QUEUE
    """Queue of batch and gather-all requests."""
    race_queue: str = DEFAULT_RACE_QUEUE
    """Queue of fastest-response races, so a race never waits behind a large batch."""
    broker_visibility_timeout_s: int = Field(DEFAULT_BROKER_VISIBILITY_TIMEOUT_S, ge=5)
    """Redis redelivers an unacknowledged message after this long; must exceed any task's run + retry delay."""

    recovery_interval_s: float = Field(DEFAULT_RECOVERY_INTERVAL_S, gt=0)
    """How often the cluster's leader (one worker, elected through Postgres) runs the recovery sweep."""
    queued_grace_s: float = Field(DEFAULT_QUEUED_GRACE_S, ge=0)
    """A retry whose delayed message is overdue by this long is published again by recovery."""
    heartbeat_interval_s: float = Field(DEFAULT_HEARTBEAT_INTERVAL_S, gt=0)
    """How often every worker writes its heartbeat to Postgres."""
    worker_lapse_s: float = Field(DEFAULT_WORKER_LAPSE_S, gt=0)
    """A worker whose heartbeat is older than this is dead: its requests go to other workers."""
    stranded_message_s: float = Field(DEFAULT_STRANDED_MESSAGE_S, gt=0)
    """A message whose holder is unknown (kombu's shared unacknowledged set), delivered this long ago,
    whose request never started, is handed back to the queue. A batcher worker's own messages go back
    as soon as it is found dead."""
    shutdown_grace_s: float = Field(DEFAULT_SHUTDOWN_GRACE_S, ge=0)
    """On SIGTERM a worker lets in-flight calls finish for this long, then hands the rest back."""
    store_retry_window_s: float = Field(DEFAULT_STORE_RETRY_WINDOW_S, gt=0)
    """How long a worker keeps retrying the write of an answer it already paid for (a Postgres outage)."""

    dispatch_interval_s: float = Field(DEFAULT_DISPATCH_INTERVAL_S, gt=0, le=60)
    """How often the leader's dispatcher tops up the broker window from the backlog in the database (a
    submission wakes it sooner). The window refills at least this often as requests finish."""
    window_per_slot: int = Field(DEFAULT_WINDOW_PER_SLOT, ge=1, le=100)
    """Requests released to the broker per worker slot (the sum of live workers' concurrency): 2 keeps every
    slot fed while the next messages wait in the queue; the rest of every job stays in the database."""
    window_min: int = Field(DEFAULT_WINDOW_MIN_REQUESTS, ge=1)
    """The broker window never shrinks below this many requests (no live worker registered yet, a small
    cluster)."""

    rate_limits: dict[str, RateLimitSpec] = Field(default_factory=dict)
    """Shared limits by ``provider/model`` pattern, e.g. ``{"openai/*": {"rpm": 600, "tpm": 200000}}``;
    ``max_concurrency`` caps the adaptive concurrency limit of the deployments it matches."""
    adaptive_concurrency: bool = True
    """Adapt the calls in flight per deployment of a model (AIMD, shared by the cluster) and learn its real
    rate limits from the providers' headers; false: only ``rate_limits`` apply (``batcher._ratelimit``)."""
    adaptive_initial_concurrency: int = Field(DEFAULT_ADAPTIVE_INITIAL_CONCURRENCY, ge=1, le=100_000)
    """Calls in flight a deployment starts with (default: the ceiling, as a plain client sends; headers and losses
    bring it down, AIMD); lower starts cautiously, with slow start (one more per success until the first loss)."""
    adaptive_max_concurrency: int = Field(DEFAULT_ADAPTIVE_MAX_CONCURRENCY, ge=1, le=100_000)
    """The most calls in flight the adaptive limit allows one deployment of a model, whatever it learns."""

    secret_key: SecretStr | None = None
    """Fernet key shared by submitters and workers; needed only to pass ``api_key=`` per call."""
    allowed_api_bases: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Base URLs (or URL prefixes) callers may name as ``api_base`` without their own key, and which may be
    private or local: ``http://10.0.0.5:8000/v1,https://gateway.internal``. Matched on scheme, host and
    port exactly and the path as a prefix ending at a ``/`` (see ``batcher._egress``). The workers' keys
    are sent to these, as to the configured bases: list only servers you would give them to. A JSON list
    or a comma-separated string."""

    api_url: str | None = None
    """Base URL of a batcher HTTP service (``http://host:8000``): ``Client()``, the batch functions and the
    CLI then submit over HTTP instead of to Postgres and Redis directly."""
    api_key: SecretStr | None = None
    """The key (``batcher keys create``) sent as ``Authorization: Bearer`` to ``api_url``."""
    file_chunk_bytes: int = Field(1_048_576, ge=4_096, le=64 * 1_048_576)
    """Uploaded files are stored in Postgres in chunks of this size (the most the service holds of one)."""
    max_file_bytes: int = Field(200 * 1_048_576, ge=1)
    """Largest accepted upload (OpenAI's Batch API limit is 200 MB)."""
    api_max_wait_s: float = Field(300.0, gt=0)
    """Longest one HTTP call may wait for a job (synchronous fastest/all, long-polled waits)."""

    log_format: Literal["json", "text"] = "text"
    """``json``: one JSON object per line (time, level, logger, message, job_id, idx, provider, model, attempt)."""
    log_level: str = "INFO"
    """Level of batcher's own log lines (``DEBUG``, ``INFO``, ``WARNING``, ...); ``--log-level`` overrides it."""

    metrics_port: int = Field(0, ge=0, le=65_535)
    """Workers serve Prometheus metrics on this port (``/metrics``); 0 turns the exporter off."""
    metrics_port_range: int = Field(10, ge=1, le=1_000)
    """Several workers on one host each take the first free port of ``metrics_port`` .. ``+ range - 1``."""
    metrics_host: str = "0.0.0.0"  # noqa: S104  # Prometheus scrapes from another host
    """Interface the workers' metrics exporter listens on."""

    @field_validator("allowed_api_bases", mode="before")
    @classmethod
    def _allowed_api_bases(cls, value: Any) -> list[str]:
        from batcher._egress import normalize_allowed_base

        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.replace(",", " ").split() if v]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("BATCHER_ALLOWED_API_BASES must be a list of base URLs")
        return [normalize_allowed_base(v) for v in value]

    @field_validator("database_url")
    @classmethod
    def _database_url_is_sqlalchemy(cls, value: str) -> str:
        """``postgres://`` (Heroku's, libpq's) is taken as ``postgresql+psycopg://``, the name SQLAlchemy knows."""
        if value.startswith("postgres://"):
            return "postgresql+psycopg://" + value.removeprefix("postgres://")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
