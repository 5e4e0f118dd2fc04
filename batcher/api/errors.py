"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the status the SDKs expect.

Client mistakes are 4xx, never 5xx. A state conflict (cancelling a finished batch) is OpenAI's 409; every
4xx carries ``x-should-retry: false``, which the ``openai`` SDK honours, so the 409 it would otherwise retry
is not retried. Every answer carries an ``x-request-id`` (``app.RequestId``), errors included. Postgres or Redis being
unreachable (or Redis full) is a 503 with ``Retry-After``, which clients retry; anything else unexpected
is a generic 500 (logged, never echoed).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import psycopg
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from batcher._exceptions import (
    ConfigurationError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    JobNotFoundError,
    MissingAPIKeyError,
    QuotaExceededError,
    ServiceUnavailableError,
    UnknownModelError,
    UnsupportedParamsError,
)
from batcher._validation import MAX_JSON_DEPTH, NestedTooDeeplyError, UnstorableValueError

log = logging.getLogger("batcher.api")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

# Codes of InvalidRequestError subclasses, so the remote client can raise the same class.
INVALID_REQUEST_CODES: dict[type[InvalidRequestError], str] = {
    UnknownModelError: "unknown_model",
    IdempotencyKeyReusedError: "idempotency_key_reused",
    MissingAPIKeyError: "missing_api_key",
    UnsupportedParamsError: "unsupported_params",
    UnstorableValueError: UnstorableValueError.code,
    NestedTooDeeplyError: NestedTooDeeplyError.code,
}

REQUEST_ID_STATE = "request_id"
"""Where ``app.RequestId`` keeps the request's ``x-request-id`` in ``scope["state"]``."""

RETRY_AFTER_S = 5
"""``Retry-After`` of a 503: Postgres restarts and Redis failovers take seconds."""

# What Postgres or Redis raise when they cannot be reached or cannot take the call right now
# (restarting, connection lost, full): a 503 to retry, never a 500.
_REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # BusyLoadingError (a restart loading its data) is one
    redis.exceptions.TimeoutError,
)
_REDIS_OOM: type[Exception] | None = getattr(redis.exceptions, "OutOfMemoryError", None)  # redis-py >= 5
_DB_DOWN: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection free in time
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def _kombu_errors() -> tuple[type[Exception], ...]:
    from kombu.exceptions import OperationalError  # what a publish raises when its broker is away

    return (OperationalError,)


def _redis_full(exc: BaseException) -> bool:
    """Redis at ``maxmemory`` (it refuses writes) or a read-only replica during a failover."""
    return (_REDIS_OOM is not None and isinstance(exc, _REDIS_OOM)) or isinstance(exc, redis.exceptions.ReadOnlyError)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Postgres or Redis cannot serve the call now (retry later), not a bug."""
    if isinstance(exc, (ServiceUnavailableError, *_DB_DOWN, *_REDIS_DOWN, *_kombu_errors())) or _redis_full(exc):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):  # e.g. a connection the server closed mid-statement
        return exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError | psycopg.InterfaceError)
    return False


def unavailable(exc: BaseException) -> ApiError:
    """The 503 for an ``is_unavailable`` error: which store, and that the caller should retry."""
    if isinstance(exc, ServiceUnavailableError):
        message = str(exc)
    elif _redis_full(exc):
        message = "The queue (Redis) is full or read-only; retry later."
    elif isinstance(exc, (*_REDIS_DOWN, *_kombu_errors())):
        message = "The queue (Redis) is unavailable; retry later."
    else:
        message = "The database is unavailable; retry later."
    return ApiError(
        503, message, type="server_error", code="service_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"No {what} found with id '{ident}'.", param=f"{what}_id", code="not_found")


def from_invalid_request(exc: InvalidRequestError) -> ApiError:
    # 422 for a reused Idempotency-Key, as the IETF's Idempotency-Key header draft says.
    return ApiError(
        422 if isinstance(exc, IdempotencyKeyReusedError) else 400,
        str(exc),
        param=exc.field,
        code=next((c for cls, c in INVALID_REQUEST_CODES.items() if isinstance(exc, cls)), "invalid_request"),
    )


QUOTA_EXCEEDED_CODE = "quota_exceeded"


def from_quota_exceeded(exc: QuotaExceededError) -> ApiError:
    """A key's quota: OpenAI's 429 shape (``rate_limit_error``), with ``Retry-After`` when it can be estimated.
    ``x-should-retry: false`` (every 4xx) keeps the SDKs from retrying at once: the quota frees as work finishes."""
    headers = {"Retry-After": str(math.ceil(exc.retry_after_s))} if exc.retry_after_s else None
    return ApiError(429, str(exc), param="max_queued_prompts", code=QUOTA_EXCEEDED_CODE, headers=headers)


def data_error_detail(exc: DataError | psycopg.DataError) -> str:
    """The first line of Postgres's complaint (later lines quote the data; they stay out of the answer)."""
    orig = exc.orig if isinstance(exc, DataError) else exc
    return (str(orig).splitlines() or ["invalid value"])[0]


def _response(err: ApiError) -> JSONResponse:
    headers = dict(err.headers or {})
    if 400 <= err.status_code < 500:
        headers.setdefault("x-should-retry", "false")  # the openai SDK honours it
    return JSONResponse(err.body(), status_code=err.status_code, headers=headers)


def _loc(loc: Any) -> str:
    """pydantic's location as a field path: ``("body", "messages", 0)`` -> ``messages[0]``."""
    path = ""
    for p in loc:
        if p in ("body", "query", "path", "header", "form", "cookie"):
            continue
        path += f"[{p}]" if isinstance(p, int) else f".{p}" if path else str(p)
    return path or "body"


_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def _allowed_methods(request: Request) -> list[str]:
    """Every method some operation serves at this path, from the OpenAPI document (Starlette's 405 names
    only the methods of the first route whose path matched)."""
    matched: dict[str, Any] = {}
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, request.url.path):
            matched[template] = operations
    # The most specific paths, as the schema reads them: /v1/jobs/run is itself, not /v1/jobs/{job_id}.
    fewest = min((t.count("{") for t in matched), default=0)
    methods = {m.upper() for t, ops in matched.items() if t.count("{") == fewest for m in ops if m in _METHODS}
    if "GET" in methods:
        methods.add("HEAD")  # served for every GET
    return sorted(methods)


def _body_problem(exc: StarletteHTTPException) -> tuple[str, str] | None:
    """A clear message (and code) for a body FastAPI could not parse, from the parser's own exception."""
    cause = exc.__cause__
    if isinstance(cause, RecursionError):
        message = f"The JSON body is nested too deeply (batcher takes at most {MAX_JSON_DEPTH} levels)."
        return message, NestedTooDeeplyError.code
    if isinstance(cause, UnicodeDecodeError):
        return f"The body is not UTF-8 (byte at position {cause.start}); send JSON encoded as UTF-8.", "invalid_json"
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _response(exc)

    @app.exception_handler(InvalidRequestError)
    async def _invalid(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return _response(from_invalid_request(exc))

    @app.exception_handler(QuotaExceededError)
    async def _quota(request: Request, exc: QuotaExceededError) -> JSONResponse:
        return _response(from_quota_exceeded(exc))

    @app.exception_handler(JobNotFoundError)
    async def _job_not_found(request: Request, exc: JobNotFoundError) -> JSONResponse:
        return _response(ApiError(404, str(exc), param="job_id", code="not_found"))

    @app.exception_handler(ConfigurationError)
    async def _configuration(request: Request, exc: ConfigurationError) -> JSONResponse:
        # e.g. api_key= passed per call while the service has no BATCHER_SECRET_KEY: the caller can drop it.
        return _response(ApiError(400, str(exc), code="unsupported_by_server"))

    @app.exception_handler(DataError)
    @app.exception_handler(psycopg.DataError)  # raised unwrapped by COPY, which runs on the driver's cursor
    async def _data(request: Request, exc: DataError | psycopg.DataError) -> JSONResponse:
        # Postgres refused a value the client sent (a NUL character, a number out of range): a 400, not a 500.
        detail = data_error_detail(exc)
        return _response(
            ApiError(400, f"The request holds a value that cannot be stored: {detail}.", code="invalid_value")
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            position = first.get("loc", ("body", 0))[-1]
            ctx: dict[str, Any] = first.get("ctx") or {}
            detail = ctx.get("error", "invalid JSON")
            message = f"The body is not valid JSON ({detail} at position {position})."
            return _response(ApiError(400, message, param="body", code="invalid_json"))
        param = _loc(first.get("loc", ()))
        message = "; ".join(f"{_loc(e.get('loc', ()))}: {e.get('msg')}" for e in errors[:5])
        return _response(ApiError(400, message, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        headers = dict(exc.headers or {})
        code = None
        if exc.status_code == 404 and message == "Not Found":
            message = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            if allowed := _allowed_methods(request):
                headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed on {request.url.path}; use {headers.get('Allow', 'another')}."
        elif exc.status_code == 400 and (problem := _body_problem(exc)) is not None:
            message, code = problem
        return _response(ApiError(exc.status_code, message, code=code, headers=headers))

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        if not is_unavailable(exc):
            return await _unexpected(request, exc)
        log.warning("%s %s: %s (%s); answered 503", request.method, request.url.path, type(exc).__name__, exc)
        return _response(unavailable(exc))

    for cls in (
        ServiceUnavailableError,
        sqlalchemy.exc.DBAPIError,  # DataError keeps its own handler (more specific)
        sqlalchemy.exc.TimeoutError,
        psycopg.OperationalError,
        psycopg.InterfaceError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.ResponseError,
        *_kombu_errors(),
    ):
        app.add_exception_handler(cls, _unavailable)

    @app.exception_handler(RecursionError)
    async def _recursion(request: Request, exc: RecursionError) -> JSONResponse:
        # The checks bound nesting before anything deep is parsed or stored; this is the guard behind them.
        log.warning("%s %s: recursion limit reached; answered 400", request.method, request.url.path)
        return _response(
            ApiError(
                400,
                f"The request is nested too deeply (batcher takes at most {MAX_JSON_DEPTH} levels).",
                code=NestedTooDeeplyError.code,
            )
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        # Answered by Starlette's outermost middleware, outside RequestId: the id is added here.
        request_id = request.scope.get("state", {}).get(REQUEST_ID_STATE)
        headers = {"x-request-id": request_id} if request_id else None
        error = ApiError(500, "The server had an error while processing your request.", type="server_error")
        error.headers = headers
        return _response(error)
