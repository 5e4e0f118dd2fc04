"""Logs: one JSON object per line for machines (``BATCHER_LOG_FORMAT=json``) or plain text for people.

Every line emitted while a job's request runs carries the job's id, whichever logger wrote it
(batcher's, Celery's, httpx's). The job context (``job_id``, ``idx``, then ``provider``, ``model``,
``attempt`` once the request is claimed) lives in a ``ContextVar`` set when a task starts
(Celery's ``task_prerun``) and cleared when it ends; a filter on the handler copies it onto each
record. With the threads pool each task runs on one pool thread, and context variables are per
thread, so concurrent tasks never see each other's context. Celery logs a task's "received"
line on the consumer thread before the task starts, so for Celery's own task lines the filter
reads the job from the task id instead (``<job>:<index>``, see ``batcher._publish.task_id``).

Provider keys found in this process's environment are masked in every formatted line, as a
last line of defence: batcher itself never logs them.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from batcher._publish import FINALIZE_JOB_TASK, RUN_REQUEST_TASK

LogFormat = Literal["json", "text"]

FIELDS = ("job_id", "idx", "provider", "model", "attempt")
"""Request context that log lines carry when known, in this order."""
NOISY_LOGGERS = ("httpx", "httpcore", "celery.worker.strategy", "celery.app.trace")
"""One INFO line per HTTP call, and Celery's two per task ("Task ... received", "Task ... succeeded in"):
kept at WARNING unless the level is DEBUG, so a worker's log grows with jobs, not with requests (a task's
failure is still an ERROR line of ``celery.app.trace``)."""
MIN_SECRET_LEN = 8
_MASK = "***"
_HANDLER_MARK = "_batcher_handler"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_job: ContextVar[Mapping[str, Any] | None] = ContextVar("batcher_job_context", default=None)


# --- request context ------------------------------------------------------------------------


def bind(**fields: Any) -> None:
    """Add fields to the current task's log context (this thread only)."""
    _job.set({**(_job.get() or {}), **fields})


def clear() -> None:
    _job.set(None)


def current() -> Mapping[str, Any]:
    return _job.get() or {}


def _from_task_id(task_id: object) -> dict[str, Any]:
    """``<job uuid>:<index>`` -> job_id, idx; anything else -> nothing."""
    if not isinstance(task_id, str):
        return {}
    job_id, sep, idx = task_id.rpartition(":")
    if not sep or len(job_id) != 36 or not idx.isdigit():
        return {}
    return {"job_id": job_id, "idx": int(idx)}


class ContextFilter(logging.Filter):
    """Copies the job context onto every record (fields given with ``extra=`` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = dict(current())
        data = getattr(record, "data", None)
        if not isinstance(data, Mapping):
            data = record.args if isinstance(record.args, Mapping) else None
        if data is not None and record.name.startswith("celery") and "id" in data:
            # Celery's "Task name[id] received / succeeded / retry" lines: the task id names the request,
            # and a finalizer (random task id) names its job in its arguments.
            fields.update(_from_task_id(data.get("id")))
            found = _UUID.search(str(data.get("args", ""))) if data.get("name") == FINALIZE_JOB_TASK else None
            if found and "job_id" not in fields:
                fields["job_id"] = found.group(0)
            record.task_id = data.get("id")
            if isinstance(data.get("name"), str):
                record.task = data["name"]
        for key, value in fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# --- formatters -----------------------------------------------------------------------------


def environment_secrets() -> list[str]:
    """Values of the provider key variables (and batcher's own secrets) in this process's environment."""
    from batcher._providers import PROVIDERS

    names = {name for adapter in PROVIDERS.values() for name in adapter.api_key_env_vars}
    names |= {"BATCHER_SECRET_KEY", "BATCHER_API_KEY"}
    return sorted({v for n in names if len(v := os.environ.get(n, "")) >= MIN_SECRET_LEN}, key=len, reverse=True)


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


class JsonFormatter(_JsonFormatter):
    """``{"time", "level", "logger", "message", job_id, idx, provider, model, attempt, ...extra}``."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            reserved_attrs=[*RESERVED_ATTRS, "data", "taskName", _HANDLER_MARK],
        )
        self._secrets = environment_secrets()

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)

    def format(self, record: logging.LogRecord) -> str:
        return _mask(super().format(record), self._secrets)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [job_id=... idx=... provider=... model=... attempt=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self._secrets = environment_secrets()

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None) is not None)
        if context:
            head, nl, tail = line.partition("\n")  # keep a traceback below the context
            line = f"{head} [{context}]{nl}{tail}"
        return _mask(line, self._secrets)


def make_formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners and Celery swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def make_handler(fmt: LogFormat = "text") -> logging.Handler:
    handler = _StderrHandler()
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_MARK, True)
    return handler


def configure_logging(fmt: LogFormat = "text", level: str | int = "INFO") -> logging.Handler:
    """Send every log record to stderr in ``fmt``; replaces a handler set up earlier by this function only."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = make_handler(fmt)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    return handler


def configure_from_settings() -> None:
    """For the CLI: ``BATCHER_LOG_FORMAT`` and ``BATCHER_LOG_LEVEL``, read afresh (not the cached settings)."""
    from pydantic import ValidationError

    from batcher._config import Settings

    try:
        settings = Settings()
    except ValidationError:  # the command itself reports bad settings; log in plain text meanwhile
        configure_logging()
        return
    configure_logging(settings.log_format, settings.log_level)


def uvicorn_options(fmt: LogFormat, level: str) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments: in JSON mode its loggers go through our handler (in every server
    process: uvicorn applies the dict in each one); in text mode uvicorn keeps its own readable format."""
    if fmt != "json":
        return {}
    return {
        "log_config": {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"default": {"()": f"{__name__}.make_handler", "fmt": "json"}},
            "root": {"handlers": ["default"], "level": level.upper()},
            "loggers": {
                name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
        }
    }


# --- Celery ---------------------------------------------------------------------------------

_worker_log_format: LogFormat | None = None


def install_celery_hooks() -> None:
    """Own the worker's and beat's logging, and give each task its job context."""
    from celery.signals import celeryd_init, setup_logging, task_postrun, task_prerun

    setup_logging.connect(_on_setup_logging, weak=False, dispatch_uid="batcher.logging.setup")
    celeryd_init.connect(_on_celeryd_init, weak=False, dispatch_uid="batcher.logging.celeryd_init")
    task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="batcher.logging.prerun")
    task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid="batcher.logging.postrun")


def _on_celeryd_init(
    sender: Any = None, instance: Any = None, conf: Any = None, options: dict[str, Any] | None = None, **_: Any
) -> None:
    global _worker_log_format
    settings = getattr(conf, "batcher_settings", None)
    if settings is None:
        return
    _worker_log_format = settings.log_format
    if settings.log_format == "json":
        # Before Celery's own setup, so its start-up warnings (e.g. running as root) are JSON lines too.
        configure_logging("json", _worker_level((options or {}).get("loglevel"), settings.log_level))
        logging.captureWarnings(True)
        if instance is not None:
            # The startup banner is printed, not logged: in JSON mode it would break one-object-per-line.
            instance.quiet = True


def _on_setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Connected, this replaces Celery's own logging setup (Celery then configures nothing)."""
    from batcher._config import get_settings

    settings = get_settings()
    configure_logging(_worker_log_format or settings.log_format, _worker_level(loglevel, settings.log_level))


def _worker_level(loglevel: int | str | None, configured: str) -> int | str:
    """The worker's ``--loglevel`` (INFO by default), or DEBUG when ``BATCHER_LOG_LEVEL=DEBUG`` asks for it."""
    return "DEBUG" if configured.upper() == "DEBUG" else (loglevel or "INFO")


def _on_task_prerun(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    name = getattr(task, "name", None)
    args = tuple(args or ())
    if name == RUN_REQUEST_TASK and len(args) >= 2:
        _job.set({"job_id": str(args[0]), "idx": args[1]})
    elif name == FINALIZE_JOB_TASK and args:
        _job.set({"job_id": str(args[0])})
    else:
        _job.set(_from_task_id(task_id) or None)


def _on_task_postrun(**_: Any) -> None:
    clear()
