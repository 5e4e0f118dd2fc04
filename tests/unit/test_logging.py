"""Log lines: JSON or text, carrying the job context, never a provider key."""

from __future__ import annotations

import json
import logging
import sys
import threading
import uuid
from types import SimpleNamespace

import pytest

from batcher import _logging
from batcher._publish import RUN_REQUEST_TASK


def _record(name: str, msg: str, args: object = None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args if args is not None else (), None)  # type: ignore[arg-type]
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def _emit_json(record: logging.LogRecord) -> dict[str, object]:
    assert _logging.ContextFilter().filter(record)
    line = _logging.JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _no_context() -> None:
    _logging.clear()


def test_json_line_has_the_fields_in_order_and_the_bound_context() -> None:
    job_id = str(uuid.uuid4())
    _logging._on_task_prerun(task_id=f"{job_id}:4", task=SimpleNamespace(name=RUN_REQUEST_TASK), args=(job_id, 4))
    _logging.bind(provider="openai", model="gpt-4o-mini", attempt=2)
    try:
        data = _emit_json(_record("batcher.worker", "attempt failed (%s)", ("boom",)))
    finally:
        _logging._on_task_postrun()
    assert list(data)[:4] == ["time", "level", "logger", "message"]
    assert data["level"] == "INFO" and data["logger"] == "batcher.worker"
    assert data["message"] == "attempt failed (boom)"
    assert str(data["time"]).endswith("+00:00")
    assert {k: data[k] for k in _logging.FIELDS} == {
        "job_id": job_id,
        "idx": 4,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "attempt": 2,
    }
    # After the task, lines carry no job.
    assert "job_id" not in _emit_json(_record("batcher.worker", "idle"))


def test_celery_received_line_gets_the_job_from_the_task_id() -> None:
    """Celery logs "received" on its consumer thread, before any task context exists."""
    job_id = str(uuid.uuid4())
    context = {"id": f"{job_id}:17", "name": RUN_REQUEST_TASK, "args": "(...)", "kwargs": "{}"}
    record = _record("celery.worker.strategy", "Task %(name)s[%(id)s] received", context, data=context)
    data = _emit_json(record)
    assert (data["job_id"], data["idx"], data["task_id"], data["task"]) == (
        job_id,
        17,
        f"{job_id}:17",
        RUN_REQUEST_TASK,
    )
    assert "data" not in data  # Celery's raw context is not repeated


def test_context_of_one_thread_never_shows_on_another() -> None:
    _logging.bind(job_id="main-thread-job")
    seen: list[object] = []

    def other() -> None:
        record = _record("batcher.worker", "from the pool")
        _logging.ContextFilter().filter(record)
        seen.append(getattr(record, "job_id", None))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [None]


def test_extra_fields_win_over_the_context() -> None:
    _logging.bind(job_id="from-context", idx=1)
    data = _emit_json(_record("batcher.worker", "x", idx=9))
    assert (data["job_id"], data["idx"]) == ("from-context", 9)


def test_text_format_appends_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    _logging.bind(job_id="j1", idx=3, model="claude-3-5-haiku")
    record = _record("batcher.worker", "request failed")
    _logging.ContextFilter().filter(record)
    line = _logging.TextFormatter().format(record)
    assert line.endswith("INFO    batcher.worker: request failed [job_id=j1 idx=3 model=claude-3-5-haiku]")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_provider_keys_in_the_environment_are_masked(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    key = "sk-live-very-secret-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    formatter = _logging.make_formatter(fmt)  # type: ignore[arg-type]
    try:
        raise RuntimeError(f"upstream said: bad key {key}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "call with %s failed", (key,), sys.exc_info())
    line = formatter.format(record)
    assert key not in line
    assert "***" in line


def test_configure_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        first = _logging.configure_logging("json", "INFO")
        second = _logging.configure_logging("text", "WARNING")
        assert first not in root.handlers and second in root.handlers
        # Handlers of others (pytest's) are untouched; an earlier one of ours (a CLI call) is replaced.
        theirs = [h for h in before if not getattr(h, _logging._HANDLER_MARK, False)]
        assert [h for h in root.handlers if h is not second] == theirs
        assert logging.getLogger("httpx").level == logging.WARNING
    finally:
        root.handlers[:] = before
        root.setLevel(level)


def test_uvicorn_lines_are_json_in_json_mode(capsys: pytest.CaptureFixture[str]) -> None:
    """``batcher api`` hands this dict to uvicorn, which applies it (in each server process)."""
    from uvicorn.config import Config

    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access"]
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names
    }
    try:
        Config(app=None, **_logging.uvicorn_options("json", "info")).configure_logging()
        logging.getLogger("uvicorn.error").info("Application startup complete.")
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "1.2.3.4", "GET", "/metrics", "1.1", 200)
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["logger"], r["message"]) for r in lines] == [
        ("uvicorn.error", "Application startup complete."),
        ("uvicorn.access", '1.2.3.4 - "GET /metrics HTTP/1.1" 200'),
    ]
    assert _logging.uvicorn_options("text", "info") == {}
