"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the status the SDKs expect.

Client mistakes are 4xx. 409 is never used: the ``openai`` SDK retries 408/409/429/5xx, so a
state conflict (cancelling a finished batch) is a 400 that no client retries.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from batcher._exceptions import (
    ConfigurationError,
    InvalidRequestError,
    JobNotFoundError,
    MissingAPIKeyError,
    UnknownModelError,
    UnsupportedParamsError,
)

log = logging.getLogger("batcher.api")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

# Codes of InvalidRequestError subclasses, so the remote client can raise the same class.
INVALID_REQUEST_CODES: dict[type[InvalidRequestError], str] = {
    UnknownModelError: "unknown_model",
    MissingAPIKeyError: "missing_api_key",
    UnsupportedParamsError: "unsupported_params",
}


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
    return ApiError(
        400,
        str(exc),
        param=exc.field,
        code=next((c for cls, c in INVALID_REQUEST_CODES.items() if isinstance(exc, cls)), "invalid_request"),
    )


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
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _response(exc)

    @app.exception_handler(InvalidRequestError)
    async def _invalid(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return _response(from_invalid_request(exc))

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
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _loc(first.get("loc", ()))
        message = "; ".join(f"{_loc(e.get('loc', ()))}: {e.get('msg')}" for e in errors[:5])
        return _response(ApiError(400, message, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"Unknown request URL: {request.method} {request.url.path}."
        return _response(ApiError(exc.status_code, message, code=None, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _response(ApiError(500, "The server had an error while processing your request.", type="server_error"))
