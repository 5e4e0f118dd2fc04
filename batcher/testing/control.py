"""The fake provider's ``/_fake`` endpoints: what a test or benchmark in another process reads and changes.

``GET /_fake/health``; ``GET /_fake/requests`` (``model``, ``status``, ``provider``, ``prompt``,
``outcome`` filters, ``since=<seq>``, ``limit``, ``bodies=0``); ``GET /_fake/stats``;
``POST /_fake/reset`` (``config=1`` also restores the configuration); ``GET``/``POST
/_fake/behaviour`` (``{"model": str | null, "behaviour": {...} | null}``); ``GET``/``POST
/_fake/config`` (``FakeProviderConfig`` fields).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import ValidationError

if TYPE_CHECKING:
    from batcher.testing.server import FakeProvider

__all__ = ["add_control_routes"]


def add_control_routes(app: web.Application, fp: FakeProvider) -> None:
    """Serve ``fp``'s ``/_fake`` endpoints from ``app``."""
    control = _Control(fp)
    app.router.add_get("/_fake/health", control.health)
    app.router.add_get("/_fake/requests", control.requests)
    app.router.add_get("/_fake/stats", control.stats)
    app.router.add_post("/_fake/reset", control.reset)
    app.router.add_get("/_fake/behaviour", control.get_config)
    app.router.add_post("/_fake/behaviour", control.behaviour)
    app.router.add_get("/_fake/config", control.get_config)
    app.router.add_post("/_fake/config", control.config)


class _Control:
    def __init__(self, fp: FakeProvider) -> None:
        self.fp = fp

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "url": self.fp.url})

    async def requests(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            status = int(q["status"]) if "status" in q else None
            since = int(q.get("since", "0"))
            limit = int(q["limit"]) if "limit" in q else None
        except ValueError:
            return web.json_response({"error": "status, since and limit are integers"}, status=400)
        records = self.fp._select(q.get("model"), status, q.get("provider"), q.get("prompt"), q.get("outcome"))
        records = [r for r in records if r.seq > since]
        if limit is not None:
            records = records[:limit]
        bodies = q.get("bodies", "1") not in ("0", "false", "no")
        return web.json_response({"count": len(records), "requests": [r.to_dict(body=bodies) for r in records]})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.fp.stats())

    async def reset(self, request: web.Request) -> web.Response:
        q = request.query
        self.fp.reset(config=q.get("config", "0") in ("1", "true", "yes"))
        return web.json_response({"ok": True})

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.fp.config.model_dump(mode="json"))

    async def behaviour(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict) or set(data) - {"model", "behaviour"}:
                raise ValueError('expected {"model": str | null, "behaviour": {...} | null}')
            model = data.get("model")
            if model is not None and not isinstance(model, str):
                raise ValueError("model must be a string or null")
            behaviour = data.get("behaviour")
            if behaviour is not None and not isinstance(behaviour, dict):
                raise ValueError("behaviour must be an object or null")
            self.fp.set_behaviour(model, behaviour)
        except (ValueError, ValidationError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.fp.config.model_dump(mode="json"))

    async def config(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("expected an object of FakeProviderConfig fields")
            cfg = self.fp.configure(**data)
        except (ValueError, ValidationError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(cfg.model_dump(mode="json"))
