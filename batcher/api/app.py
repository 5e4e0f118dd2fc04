"""The FastAPI application: ``create_app(settings)``; served by ``batcher api`` (uvicorn).

Stateless: everything lives in Postgres (jobs, files, batches, keys) and Redis (queues,
wake-ups), so any number of replicas can sit behind a load balancer.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batcher import _metrics
from batcher._config import Settings, get_settings
from batcher.api import errors
from batcher.api.batches_routes import router as batches_router
from batcher.api.context import ApiContext
from batcher.api.errors import ApiError
from batcher.api.files_routes import router as files_router
from batcher.api.jobs_routes import router as jobs_router
from batcher.api.schemas import Health

DESCRIPTION = """\
Durable batch completion for LLMs, over HTTP.

* **Native jobs** (`/v1/jobs`): the three kinds of `batcher.Client` (batch, fastest, all).
* **OpenAI Batch API** (`/v1/files`, `/v1/batches`): point the official `openai` SDK at
  `http://HOST:PORT/v1`; input lines may name models of any provider batcher supports.

Every call needs `Authorization: Bearer KEY` (`batcher keys create --name NAME`).
"""

MULTIPART_OVERHEAD = 1_048_576
"""Room for multipart boundaries and form fields on top of the largest accepted file."""


class UploadLimit:
    """Refuse a body whose declared length is over the limit before Starlette spools any of it.

    Pure ASGI (not ``BaseHTTPMiddleware``), so streamed downloads pass through untouched.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit + MULTIPART_OVERHEAD:
                err = ApiError(
                    413, f"The request body is larger than the limit of {self.limit:,} bytes.", code="file_too_large"
                )
                response = JSONResponse(err.body(), status_code=413, headers={"x-should-retry": "false"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestId:
    """An ``x-request-id`` (``req_`` and 32 hex digits, as OpenAI's) on every response, errors and 404s included;
    the ``openai`` SDK exposes it as ``_request_id``. The outermost middleware; a 500, answered outside every
    middleware, takes the id from ``scope["state"]`` (``errors``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{secrets.token_hex(16)}"
        scope.setdefault("state", {})[errors.REQUEST_ID_STATE] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["x-request-id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


def _health(ctx: ApiContext) -> Health:
    postgres = redis_state = "ok"
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"
        postgres = f"error: {type(exc).__name__}"
    try:
        ctx.redis.ping()
    except Exception as exc:
        redis_state = f"error: {type(exc).__name__}"
    ok = postgres == "ok" and redis_state == "ok"
    return Health(status="ok" if ok else "unavailable", postgres=postgres, redis=redis_state)


def create_app(settings: Settings | None = None) -> FastAPI:
    ctx = ApiContext(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await ctx.aclose()

    from batcher import __version__

    app = FastAPI(title="batcher", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.ctx = ctx
    errors.install(app)

    app.add_middleware(UploadLimit, limit=ctx.settings.max_file_bytes)
    app.add_middleware(RequestId)  # added last: the outermost, so the 413 above carries an id too

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["health"],
        summary="Postgres and Redis reachable",
        responses={503: {"model": Health, "description": "Postgres or Redis is not reachable."}},
    )
    async def healthz() -> JSONResponse:
        health = await run_in_threadpool(_health, ctx)
        return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)

    metrics_registry = _metrics.api_registry(ctx.settings, lambda: ctx.engine, lambda: ctx.redis)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus: this process's metrics plus jobs by state and queue depth (unauthenticated, like /healthz)."""
        body, content_type = await run_in_threadpool(_metrics.render, metrics_registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    app.include_router(jobs_router)
    app.include_router(files_router)
    app.include_router(batches_router)
    return app
