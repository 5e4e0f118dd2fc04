"""A Celery worker started exactly as ``python -m celery -A workers worker ...``, plus the what-ifs.

``--experiments`` measures proposed changes to files the benchmark does not own: the workers of
the variant run with one change applied here at start-up (``BATCHER_BENCH_EXPERIMENTS``), the
baseline runs the code as it is, alternately, on the same W1 batch.
"""

from __future__ import annotations

import os
import sys
from typing import Any

EXPERIMENTS = {
    "task-events": "task events on (what a running Flower switches on): 3 events per task published to Redis",
    "prefetch-4": "worker_prefetch_multiplier=4: a freed thread finds its next message already fetched",
    "loop-http": "provider calls on one asyncio event-loop thread per worker (httpx.AsyncClient over aiohttp)",
    "switch-1ms": "sys.setswitchinterval(0.001): a thread waiting for the GIL gets it sooner",
    "store-one-by-one": "each answer stored in a round trip of its own (no group commit, as before issue #16)",
    "claim-one-by-one": "each claim in a round trip of its own (no grouped claims, as before issue #16)",
    "ack-one-by-one": "each broker acknowledgement in a round trip of its own (kombu's way, as before issue #16)",
    "delivery-two-trips": (
        "each delivery recorded in a round trip of its own after its BRPOP, acks apart (kombu's way, before H2 of #16)"
    ),
    "fetch-one-by-one": "one BRPOP per message, kombu's way, instead of one BLMPOP for the free slots (#16)",
    "limiter-one-by-one": "each adaptive-limiter script (take, release) in a round trip of its own (as before #16)",
    "http-client-path": "the provider call as before issue #16's H1: through an httpx.Client around the thread's "
    "transport, the answer rebuilt as a new Response, the price and the public base URL worked out per answer",
}
_chosen = {e for e in os.environ.get("BATCHER_BENCH_EXPERIMENTS", "").split(",") if e}


def _loop_http() -> None:
    """Route ``_providers.complete`` through an event loop (needs the bench extra's httpx-aiohttp)."""
    import asyncio
    import threading
    import time

    import httpx
    from httpx_aiohttp import AiohttpTransport

    from batcher import _providers
    from batcher._providers._errors import parse_http_response
    from workers import _execute

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="bench-http-loop", daemon=True).start()

    async def make_client() -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=AiohttpTransport(limits=httpx.Limits(max_connections=1_000)))

    client = asyncio.run_coroutine_threadsafe(make_client(), loop).result()

    async def acomplete(route: Any, messages: Any, params: Any, *, api_key: str, api_base: str, **_: Any) -> Any:
        adapter = _providers.get_adapter(route.provider)
        request = adapter.build_request(route.model, messages, params, api_key=api_key, api_base=api_base)
        started = time.perf_counter()
        response = await client.send(request)
        await response.aread()
        result = parse_http_response(adapter, route.model, response, secrets=[api_key])
        result.latency_ms = (time.perf_counter() - started) * 1000.0
        return result

    def complete(http: Any, route: Any, messages: Any, params: Any, **kwargs: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(acomplete(route, messages, params, **kwargs), loop).result()

    class Providers:  # the module as _execute sees it, with complete() replaced
        def __getattr__(self, name: str) -> Any:
            return complete if name == "complete" else getattr(_providers, name)

    _execute._providers = Providers()  # type: ignore[assignment]


def _http_client_path() -> None:
    """Restore the provider call's old path: ``Client.send`` (auth, redirects, cookie jar, hooks, a log
    record) around the thread's transport, the answer rebuilt as a new ``httpx.Response``, genai-prices'
    whole ``calc_price`` per answer (cached per token counts and day, as it was) and ``public_base_url``
    parsed per answer."""
    import functools
    import threading
    from datetime import UTC, datetime

    import httpx

    from batcher import _cost, _providers
    from batcher._providers import _http

    clients = threading.local()

    def send(via: Any, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if not isinstance(via, httpx.Client):  # the thread's transport: a client around it, once
            if getattr(clients, "transport", None) is not via:
                clients.transport, clients.client = via, httpx.Client(transport=via, follow_redirects=False)
            via = clients.client
        response = _http.send(via, request, **kwargs)
        return httpx.Response(  # the old send's last step: a new Response around the decoded body
            response.status_code,
            headers=list(response.headers.multi_items()),
            content=response.content,
            request=request,
            extensions=response.extensions,
        )

    @functools.lru_cache(maxsize=65_536)
    def price(provider: str, models: tuple[str, ...], counts: tuple[int, int, int, int], day: int) -> float | None:
        for model in models:
            found = _cost._priced_model(provider, model) if model else None
            if found is not None:
                return _cost._calc_price(found[0], found[1], counts, datetime.now(UTC))
        return None

    def response_cost(provider: str, models: tuple[str, ...], **counts: int) -> float | None:
        keys = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens")
        day = datetime.now(UTC).date().toordinal()
        return price(provider, models, tuple(counts.get(k, 0) for k in keys), day)  # type: ignore[arg-type]

    _providers.send = send  # type: ignore[assignment]
    _providers.response_cost = response_cost  # type: ignore[attr-defined,assignment]
    _providers.public_base_url = _providers.public_base_url.__wrapped__  # type: ignore[assignment]


if _chosen:
    from workers.celery_app import app

    if "task-events" in _chosen:
        app.conf.worker_send_task_events = True
    if "prefetch-4" in _chosen:
        app.conf.worker_prefetch_multiplier = 4
    if "switch-1ms" in _chosen:
        sys.setswitchinterval(0.001)
    if "loop-http" in _chosen:
        _loop_http()
    if "store-one-by-one" in _chosen:
        from workers import _execute

        _execute.GROUP_STORES = False
    if "fetch-one-by-one" in _chosen:
        from workers import _broker

        _broker.MULTI_FETCH = False
    if "ack-one-by-one" in _chosen:
        from workers import _broker

        _broker.GROUP_ACKS = False
    if "delivery-two-trips" in _chosen:
        from workers import _broker

        _broker.DELIVERY_ONE_TRIP = False
    if "claim-one-by-one" in _chosen:
        from workers import _execute

        _execute.GROUP_CLAIMS = False
    if "http-client-path" in _chosen:
        _http_client_path()
    if "limiter-one-by-one" in _chosen:
        from batcher._ratelimit import RateLimiter

        RateLimiter._call = lambda self, script, keys, args: script(keys=keys, args=args)  # type: ignore[method-assign]

if __name__ == "__main__":
    from celery.__main__ import main

    sys.argv = ["celery", *sys.argv[1:]]
    sys.exit(main())
