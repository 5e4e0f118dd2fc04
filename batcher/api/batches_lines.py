"""Validating a batch's input file, line by line, as OpenAI reports it: each bad line an error entry
(``code``, ``message``, ``param``, ``line``), up to ``MAX_REPORTED_ERRORS``.

A valid line becomes a request to store (``NewRequest``), checked as ``Client.submit*`` checks
one (``batcher._submit._Validator``); a batch with any bad line stores nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from batcher._db.rows import NewRequest
from batcher._exceptions import InvalidRequestError, UnknownModelError, UnsupportedParamsError
from batcher._files import OPENAI_BATCH_URLS, decode_line, parse_line
from batcher._files_store import iter_chunks, iter_lines
from batcher._submit import RequestSpec, _Validator
from batcher._validation import CallOptions, NestedTooDeeplyError
from batcher.api.context import ApiContext

MAX_REPORTED_ERRORS = 100


def line_error(errors: list[dict[str, Any]], line: int, code: str, message: str, param: str | None = None) -> None:
    """Report a bad line (only the first ``MAX_REPORTED_ERRORS`` are kept)."""
    if len(errors) < MAX_REPORTED_ERRORS:
        errors.append({"code": code, "message": message, "param": param, "line": line})


def _error_code(exc: InvalidRequestError) -> str:
    if isinstance(exc, UnknownModelError):
        return "model_not_found"
    if isinstance(exc, UnsupportedParamsError):
        return "unsupported_parameter"
    if isinstance(exc, NestedTooDeeplyError):
        return exc.code
    return "invalid_request"  # text Postgres cannot store included, as before (UnstorableValueError)


def _bare(exc: InvalidRequestError, number: int) -> str:
    """The error's text without its ``line N: `` prefix (the line is reported on its own)."""
    return str(exc).removeprefix(f"line {number}: ")


def checked_requests(
    ctx: ApiContext, file_id: str, endpoint: str, errors: list[dict[str, Any]], models: list[str] | None = None
) -> Iterator[NewRequest]:
    """Each valid line as a request to store; bad lines go to ``errors``. Stops yielding at the first error,
    but goes on reading so the batch reports every bad line (up to ``MAX_REPORTED_ERRORS``). The models the
    lines name go to ``models`` (each once, in order of first use)."""
    named: set[str] = set()
    settings = ctx.settings
    validator = _Validator(settings, CallOptions())
    seen: set[str] = set()
    idx = 0
    lines = iter_lines(iter_chunks(ctx.engine, file_id), max_line_bytes=settings.max_request_bytes * 2)
    for number, raw in lines:
        if raw is None:
            line_error(
                errors, number, "invalid_request", f"The line is longer than {settings.max_request_bytes * 2:,} bytes."
            )
            continue
        if not raw.strip():
            continue
        try:
            item = parse_line(decode_line(raw, number), f"line {number}")
        except NestedTooDeeplyError as exc:
            line_error(errors, number, exc.code, f"This line {_bare(exc, number)}.")
            continue
        except InvalidRequestError as exc:  # not UTF-8, not JSON
            line_error(errors, number, "invalid_json_line", f"This line {_bare(exc, number)}.")
            continue
        if not isinstance(item, dict):
            line_error(errors, number, "invalid_request", "Each line must be a JSON object.")
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            line_error(errors, number, "missing_required_parameter", "custom_id is missing.", "custom_id")
            continue
        if custom_id in seen:
            line_error(
                errors,
                number,
                "duplicate_custom_id",
                f"The custom_id '{custom_id}' is a duplicate of another request; each request needs its own.",
                "custom_id",
            )
            continue
        seen.add(custom_id)
        if item.get("method") != "POST":
            line_error(
                errors, number, "invalid_method", f"method must be 'POST', got {item.get('method')!r}.", "method"
            )
            continue
        if item.get("url") not in OPENAI_BATCH_URLS:
            line_error(
                errors,
                number,
                "invalid_url",
                f"url must be '{endpoint}' (the batch's endpoint), got {item.get('url')!r}.",
                "url",
            )
            continue
        body = item.get("body")
        if not isinstance(body, dict):
            line_error(errors, number, "invalid_request", "body must be a JSON object.", "body")
            continue
        model = body.get("model")
        if not isinstance(model, str) or not model:
            line_error(errors, number, "missing_required_parameter", "body.model is missing.", "body.model")
            continue
        if models is not None and model not in named and len(named) < 1_000:
            named.add(model)
            models.append(model)
        if "messages" not in body:
            line_error(errors, number, "missing_required_parameter", "body.messages is missing.", "body.messages")
            continue
        if idx >= settings.max_prompts_per_job:
            line_error(
                errors, number, "too_many_requests", f"A batch holds at most {settings.max_prompts_per_job:,} requests."
            )
            break
        params = {k: v for k, v in body.items() if k not in ("model", "messages")}
        spec = RequestSpec(
            model=model, messages=body["messages"], params=params or None, custom_id=custom_id, where=f"line {number}"
        )
        try:
            request = validator.check(idx, spec)
        except InvalidRequestError as exc:
            message = str(exc).removeprefix(f"line {number}: ")
            param = (exc.field or "").removeprefix(f"line {number}").removeprefix(": ").removeprefix(".") or None
            line_error(errors, number, _error_code(exc), message, param)
            continue
        except RecursionError:  # a guard: the checks above bound nesting, but a line must never hang a batch
            line_error(errors, number, "nested_too_deeply", "The line is nested too deeply to read.")
            continue
        if not errors:
            yield request
        idx += 1
