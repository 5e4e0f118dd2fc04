"""The fake provider server: a real HTTP server on loopback that speaks the providers' wire formats.

``FakeProvider`` serves every registered format (``batcher.testing.formats``) on its own path,
plus ``/_fake`` control endpoints; it runs in a background thread (``with FakeProvider():``,
``start()`` / ``stop()``) or in the running event loop (``async with``, ``astart()`` /
``astop()``), and is reconfigured at run time (``configure``, ``set_behaviour``).

Answers are deterministic: the assistant text is ``"echo: <last user message>"`` (or a fixed
``answer``), token counts are whitespace word counts, and a ``max_tokens`` smaller than the answer
cuts it to that many words with the provider's "length" finish reason. Where the documentation
shows no wording (Cohere's messages for a missing ``model``, an unknown field or unparsable JSON;
OpenAI's and Anthropic's wording for rarer cases such as 403), the message follows the provider's
style but is not verbatim: match error *types*, codes and statuses in tests, not these sentences.
Only non-streaming calls are served (``stream: true`` gets a 400).

For an authenticated, valid request the order of evaluation is: RPM limits (the model's and the
server-wide one) -> ``ModelBehaviour`` (see ``batcher.testing.config``) -> success. Every request
is recorded (``RecordedRequest``); tests read them through ``FakeProvider`` and other processes
through ``GET /_fake/requests`` and ``GET /_fake/stats``; ``POST /_fake/reset``,
``POST /_fake/behaviour`` and ``POST /_fake/config`` change it at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fnmatch
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from batcher._providers import PROVIDERS
from batcher.testing._answers import behaviour_failure, error_response, malformed_response
from batcher.testing.config import FakeProviderConfig, ModelBehaviour
from batcher.testing.control import add_control_routes
from batcher.testing.formats import FORMATS, Failure, FakeFormat, get_format
from batcher.testing.recording import RecordedRequest, SlidingWindow, max_in_window

__all__ = ["FakeProvider"]

logger = logging.getLogger(__name__)

_MAX_BODY_BYTES = 32 * 1024 * 1024  # Anthropic's documented Messages API request limit
_SHUTDOWN_TIMEOUT_S = 0.5  # in-flight handlers get this long at stop(), then are cancelled
_LISTEN_BACKLOG = 2048  # 500 clients connecting at once must not overflow the accept queue


class FakeProvider:
    """The fake provider server. Start it in a background thread (``with FakeProvider():``,
    ``start()`` / ``stop()``) or in the running loop (``async with``, ``astart()`` /
    ``astop()``).

    ``config`` is a :class:`FakeProviderConfig` or a mapping of its fields; keyword
    arguments override single fields (``FakeProvider(expected_api_key="k")``).
    """

    def __init__(
        self,
        port: int = 0,
        config: FakeProviderConfig | Mapping[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        **overrides: Any,
    ) -> None:
        if config is None:
            cfg = FakeProviderConfig(**overrides)
        elif isinstance(config, FakeProviderConfig):
            cfg = config.model_copy(update=overrides) if overrides else config
            cfg = FakeProviderConfig.model_validate(cfg.model_dump())
        else:
            cfg = FakeProviderConfig.model_validate({**dict(config), **overrides})
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._initial_config = cfg
        self._lock = threading.Lock()
        self._apply_config(cfg)
        self._reset_state()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested: asyncio.Event | None = None

    # --- configuration ------------------------------------------------------------------

    def _apply_config(self, cfg: FakeProviderConfig) -> None:
        with self._lock:
            self._default = cfg.default
            self._models: dict[str, ModelBehaviour] = dict(cfg.models)
            self._rpm_limit = cfg.rpm_limit
            self._rpm_window_s = cfg.rpm_window_s
            self._expected_key = cfg.expected_api_key
            self._expected_keys: dict[str, str] = {str(k): v for k, v in cfg.expected_api_keys.items()}
            self._seed = cfg.seed
            self._rng = random.Random(cfg.seed)
            self._strict = cfg.strict_params
            self._record_bodies = cfg.record_bodies
            self._record_headers = cfg.record_headers
            self._behaviour_cache: dict[str, ModelBehaviour] = {}

    def _reset_state(self) -> None:
        with self._lock:
            self._records: list[RecordedRequest] = []
            self._seq = 0
            self._model_counts: dict[str, int] = {}
            self._attempts: dict[str, dict[str, int]] = {}
            self._global_window = SlidingWindow()
            self._model_windows: dict[str, SlidingWindow] = {}
            if not hasattr(self, "_in_flight"):
                self._in_flight = 0
                self._model_in_flight: dict[str, int] = {}
                self._admitted: dict[int, str] = {}  # seq -> model, while counted in _model_in_flight
            self._max_in_flight = self._in_flight

    @property
    def config(self) -> FakeProviderConfig:
        """A snapshot of the configuration in force."""
        with self._lock:
            return FakeProviderConfig(
                default=self._default,
                models=dict(self._models),
                rpm_limit=self._rpm_limit,
                rpm_window_s=self._rpm_window_s,
                expected_api_key=self._expected_key,
                expected_api_keys=dict(self._expected_keys),  # type: ignore[arg-type]
                seed=self._seed,
                strict_params=self._strict,
                record_bodies=self._record_bodies,
                record_headers=self._record_headers,
            )

    def configure(self, **changes: Any) -> FakeProviderConfig:
        """Change server-wide fields at run time (``rpm_limit=600``, ``expected_api_key=...``).

        Recordings and counters are kept; a new ``seed`` restarts the latency RNG.
        """
        merged = {**self.config.model_dump(), **changes}
        cfg = FakeProviderConfig.model_validate(merged)
        self._apply_config(cfg)
        return cfg

    def set_behaviour(
        self, model: str | None, behaviour: ModelBehaviour | Mapping[str, Any] | None = None, **fields: Any
    ) -> None:
        """Set how ``model`` (a name or a glob pattern; None: the default) is answered.

        ``behaviour=None`` without fields removes the model's override (back to the default).
        The model's counters (``fail_first_n``, ``fail_every_n``, attempts) restart.
        """
        new: ModelBehaviour | None
        if behaviour is None and not fields:
            new = None
        elif isinstance(behaviour, ModelBehaviour):
            new = behaviour.model_copy(update=fields) if fields else behaviour
            new = ModelBehaviour.model_validate(new.model_dump())
        else:
            new = ModelBehaviour.model_validate({**dict(behaviour or {}), **fields})
        with self._lock:
            if model is None:
                self._default = new if new is not None else ModelBehaviour()
                self._model_counts.clear()
                self._attempts.clear()
            else:
                models = dict(self._models)
                if new is None:
                    models.pop(model, None)
                else:
                    models[model] = new
                self._models = models
                for name in [m for m in self._model_counts if fnmatch.fnmatchcase(m, model)]:
                    del self._model_counts[name]
                for name in [m for m in self._attempts if fnmatch.fnmatchcase(m, model)]:
                    del self._attempts[name]
            self._behaviour_cache = {}

    def behaviour_for(self, model: str) -> ModelBehaviour:
        """The behaviour a request for ``model`` gets."""
        # Read the cache before the models: set_behaviour() swaps the models first and the
        # cache second, so a result computed from stale models lands in a discarded cache.
        cache = self._behaviour_cache
        cached = cache.get(model)
        if cached is not None:
            return cached
        models = self._models
        found = models.get(model)
        if found is None:
            for pattern, b in models.items():
                if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern):
                    found = b
                    break
        result = found if found is not None else self._default
        cache[model] = result
        return result

    def reset(self, *, config: bool = False) -> None:
        """Forget recordings, counters and RPM windows; with ``config=True`` also go back to
        the configuration the server was created with."""
        if config:
            self._apply_config(self._initial_config)
        self._reset_state()

    # --- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake provider is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base(self) -> str:
        """OpenAI SDK convention: the base includes ``/v1``."""
        return self.base_url("openai")

    @property
    def anthropic_base(self) -> str:
        """Anthropic SDK convention: the base has no ``/v1``; the path is ``/v1/messages``."""
        return self.base_url("anthropic")

    @property
    def cohere_base(self) -> str:
        """Cohere convention: the base has no version; the path is ``/v2/chat``."""
        return self.base_url("cohere")

    def base_url(self, provider: str) -> str:
        """The base URL ``provider``'s SDK (and batcher's ``api_base``) takes for this server;
        ValueError for a provider the fake does not speak."""
        return f"{self.url}{get_format(provider).base_path}"

    def environ(self) -> dict[str, str]:
        """The base-URL variable of every provider the fake speaks, pointing here
        (``{"OPENAI_BASE_URL": ..., "ANTHROPIC_BASE_URL": ..., "CO_API_URL": ...}``): the environment
        to give workers (and submitters) so every provider's requests come to this server."""
        env: dict[str, str] = {}
        for name in FORMATS:
            adapter = PROVIDERS.get(name)
            if adapter is not None and adapter.api_base_env_vars:
                env[adapter.api_base_env_vars[0]] = self.base_url(name)
        return env

    # --- recordings ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Copies of every recorded request, in arrival order."""
        with self._lock:
            return [copy.copy(r) for r in self._records]

    def _select(
        self,
        model: str | None,
        status: int | None,
        provider: str | None,
        prompt: str | None,
        outcome: str | None,
    ) -> list[RecordedRequest]:
        with self._lock:
            records = list(self._records)
        return [
            r
            for r in records
            if (model is None or r.model == model)
            and (status is None or r.status == status)
            and (provider is None or r.provider == provider)
            and (prompt is None or r.prompt == prompt)
            and (outcome is None or r.outcome == outcome)
        ]

    def count(
        self,
        model: str | None = None,
        status: int | None = None,
        *,
        provider: str | None = None,
        prompt: str | None = None,
        outcome: str | None = None,
    ) -> int:
        """How many recorded requests match every filter given."""
        if model is None and status is None and provider is None and prompt is None and outcome is None:
            with self._lock:
                return len(self._records)
        return len(self._select(model, status, provider, prompt, outcome))

    def max_in_window(
        self,
        window_s: float = 60.0,
        *,
        model: str | None = None,
        status: int | None = None,
        provider: str | None = None,
    ) -> int:
        """Most requests (by arrival) in any sliding window of ``window_s`` seconds."""
        records = self._select(model, status, provider, None, None)
        return max_in_window((r.arrived_monotonic for r in records), window_s)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """Most requests being served at the same time since the last reset."""
        return self._max_in_flight

    def wait_for_requests(
        self, n: int, timeout: float = 10.0, *, finished: bool = True, **filters: Any
    ) -> list[RecordedRequest]:
        """Block until at least ``n`` requests matching ``filters`` (see :meth:`count`) have
        arrived (and, with ``finished``, been answered). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            matching = self._select(
                filters.get("model"),
                filters.get("status"),
                filters.get("provider"),
                filters.get("prompt"),
                filters.get("outcome"),
            )
            if finished:
                matching = [r for r in matching if r.status is not None]
            if len(matching) >= n:
                return [copy.copy(r) for r in matching]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(matching)} of {n} requests after {timeout}s")
            time.sleep(0.01)

    def stats(self) -> dict[str, Any]:
        """Counts by status, model, provider and outcome, and concurrency figures."""
        with self._lock:
            records = list(self._records)
            window_s = self._rpm_window_s
        by_status: dict[str, int] = {}
        by_model: dict[str, int] = {}
        by_provider: dict[str, int] = {}
        by_outcome: dict[str, int] = {}
        for r in records:
            key = "pending" if r.status is None else str(r.status)
            by_status[key] = by_status.get(key, 0) + 1
            by_model[str(r.model)] = by_model.get(str(r.model), 0) + 1
            by_provider[r.provider] = by_provider.get(r.provider, 0) + 1
            by_outcome[r.outcome] = by_outcome.get(r.outcome, 0) + 1
        return {
            "total": len(records),
            "by_status": by_status,
            "by_model": by_model,
            "by_provider": by_provider,
            "by_outcome": by_outcome,
            "in_flight": self._in_flight,
            "max_in_flight": self._max_in_flight,
            "rpm_window_s": window_s,
            "max_in_rpm_window": max_in_window((r.arrived_monotonic for r in records), window_s),
            "max_200_in_rpm_window": max_in_window((r.arrived_monotonic for r in records if r.status == 200), window_s),
        }

    # --- lifecycle: background thread ---------------------------------------------------

    def start(self, timeout: float = 10.0) -> FakeProvider:
        """Serve from a background thread with its own event loop; returns once listening."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("the fake provider is already running")
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                try:
                    loop.run_until_complete(self._astart_server())
                except BaseException as exc:
                    errors.append(exc)
                    ready.set()
                    return
                ready.set()
                loop.run_forever()
                loop.run_until_complete(self._astop_server())
            finally:
                _close_loop(loop)

        self._thread = threading.Thread(target=run, name=f"fake-provider:{self._requested_port}")
        self._thread.daemon = True
        self._thread.start()
        if not ready.wait(timeout):
            self.stop()
            raise TimeoutError("the fake provider did not start in time")
        if errors:
            self._thread.join()
            self._thread = None
            self._loop = None
            raise errors[0]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the server (in-flight requests get ~0.5 s) and join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("the fake provider thread did not stop in time")
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- lifecycle: current event loop --------------------------------------------------

    async def astart(self) -> FakeProvider:
        """Serve from the running event loop."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("the fake provider is already running")
        self._loop = asyncio.get_running_loop()
        await self._astart_server()
        return self

    async def astop(self) -> None:
        await self._astop_server()
        self._loop = None

    async def __aenter__(self) -> FakeProvider:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    async def _astart_server(self) -> None:
        app = self.make_app()
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
            keepalive_timeout=75.0,
        )
        await runner.setup()
        try:
            sock = _bind(self.host, self._requested_port)
            self._port = sock.getsockname()[1]
            site = web.SockSite(runner, sock, backlog=_LISTEN_BACKLOG)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info("fake provider listening on %s", self.url)

    async def _astop_server(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    # --- the app ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application (a route for each registered format's API, and ``/_fake``)."""
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        for fmt in FORMATS.values():
            app.router.add_post(fmt.path, self._make_handler(fmt))
        add_control_routes(app, self)
        app.router.add_route("*", "/{tail:.*}", self._h_unknown)
        return app

    def _make_handler(self, fmt: FakeFormat) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._serve(fmt, request)

        return handler

    async def _serve(self, fmt: FakeFormat, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        wall = time.time()
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        body: Any = None
        parse_ok = True
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            parse_ok = False
        if not isinstance(body, dict):
            parse_ok = False
        model = fmt.model(body) if parse_ok else None
        prompt = fmt.prompt(body) if parse_ok else None
        api_key = fmt.api_key(headers)

        with self._lock:
            self._seq += 1
            rec = RecordedRequest(
                seq=self._seq,
                provider=fmt.name,
                method=request.method,
                path=request.path,
                model=model,
                prompt=prompt,
                raw_body=raw if self._record_bodies else b"",
                headers=headers if self._record_headers else {},
                api_key=api_key,
                arrived_monotonic=arrived,
                arrived_wall=wall,
            )
            self._records.append(rec)
            self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight
        try:
            return await self._answer(fmt, request, rec, body if parse_ok else None, headers, raw)
        finally:
            with self._lock:
                self._in_flight -= 1
                counted = self._admitted.pop(rec.seq, None)
                if counted is not None:
                    self._model_in_flight[counted] -= 1
            rec.finished_monotonic = time.monotonic()
            if rec.status is None:  # cancelled (server stopping / client gone)
                rec.outcome = "cancelled"
                rec.status = 0
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s %s model=%s -> %s (%s)",
                    fmt.name,
                    rec.path,
                    rec.model,
                    rec.status,
                    rec.outcome,
                )

    async def _answer(
        self,
        fmt: FakeFormat,
        request: web.Request,
        rec: RecordedRequest,
        body: dict[str, Any] | None,
        headers: dict[str, str],
        raw: bytes,
    ) -> web.StreamResponse:
        # 1. auth and required headers (before the body, as the real APIs do)
        key = rec.api_key
        if key is None:
            return error_response(fmt, rec, Failure(401, "auth_missing"), "auth")
        expected = self._expected_keys.get(fmt.name, self._expected_key)
        if expected is not None and key != expected:
            return error_response(fmt, rec, Failure(401, "auth_invalid", param=key), "auth")
        failure = fmt.check_auth(headers, raw, key)
        if failure is not None:
            return error_response(fmt, rec, failure, "auth")
        failure = fmt.check_headers(headers)
        if failure is not None:
            return error_response(fmt, rec, failure, "bad_request")
        # 2. body
        if body is None:
            return error_response(fmt, rec, fmt.invalid_json(), "bad_request")
        failure = fmt.validate(body, self._strict)
        if failure is not None:
            return error_response(fmt, rec, failure, "bad_request")
        model = fmt.model(body) or ""  # validated: the body names one
        behaviour = self.behaviour_for(model)
        prompt = rec.prompt or ""

        # 3. admission: RPM limits, counters
        with self._lock:
            now = time.monotonic()
            window_s = self._rpm_window_s
            limits: list[tuple[int, SlidingWindow]] = []
            if self._rpm_limit is not None:
                limits.append((self._rpm_limit, self._global_window))
            if behaviour.rpm_limit is not None:
                win = self._model_windows.get(model)
                if win is None:
                    win = self._model_windows[model] = SlidingWindow()
                limits.append((behaviour.rpm_limit, win))
            rejected: Failure | None = None
            outcome_rejected = "rpm_limited"
            rl_headers: tuple[int, int, float] | None = None
            for limit, win in limits:
                win.prune(now, window_s)
                if len(win.times) >= limit:
                    wait = win.times[0] + window_s - now
                    rejected = Failure(
                        429,
                        "rate_limit",
                        retry_after_s=max(wait, 0.001),
                        rl_limit=limit,
                        rl_remaining=0,
                        rl_reset_s=max(wait, 0.001),
                    )
                    break
            busy = self._model_in_flight.get(model, 0)
            if rejected is None and behaviour.max_concurrency is not None and busy >= behaviour.max_concurrency:
                # A concurrency limit has no window to reset: a bare 429, no rate-limit headers.
                rejected = Failure(429, "rate_limit", retry_after_s=None)
                outcome_rejected = "concurrency_limited"
            if rejected is None:
                self._model_in_flight[model] = self._model_in_flight.get(model, 0) + 1
                self._admitted[rec.seq] = model
                for limit, win in limits:
                    win.times.append(now)
                    remaining = limit - len(win.times)
                    reset = win.times[0] + window_s - now
                    if rl_headers is None or remaining < rl_headers[1]:
                        rl_headers = (limit, remaining, reset)
                count = self._model_counts.get(model, 0) + 1
                self._model_counts[model] = count
                per_model = self._attempts.get(model)
                if per_model is None:
                    per_model = self._attempts[model] = {}
                attempt = per_model.get(prompt, 0) + 1
                per_model[prompt] = attempt
                rec.attempt = attempt
                jitter = self._rng.random() * behaviour.latency_jitter_ms if behaviour.latency_jitter_ms else 0.0
        if rejected is not None:
            return error_response(fmt, rec, rejected, outcome_rejected)
        extra = fmt.rate_limit_headers(*rl_headers) if rl_headers is not None else None

        # 4. behaviour
        failure, outcome = behaviour_failure(
            fmt, behaviour, body, model, prompt, count, attempt, seed=self._seed, rpm_limit=self._rpm_limit
        )
        delay = (behaviour.latency_ms + jitter) / 1000.0
        if delay > 0 and not (failure is not None and failure.status == 429):
            await asyncio.sleep(delay)
            transport = request.transport
            if transport is None or transport.is_closing():
                # The client gave up (timeout, cancellation) while we were "thinking".
                rec.status = 499
                rec.outcome = "client_gone"
                return web.Response(status=499)
        if failure is not None:
            return error_response(fmt, rec, failure, outcome, extra)
        if behaviour.drop_connection:
            rec.status = 0
            rec.outcome = "dropped"
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError

        # 5. the answer
        text = behaviour.answer if behaviour.answer is not None else f"echo: {prompt}"
        words = text.split()
        limit_tokens = fmt.max_tokens(body)
        truncated = limit_tokens is not None and len(words) > limit_tokens
        if truncated:
            assert limit_tokens is not None
            text = " ".join(words[:limit_tokens])
            completion_tokens = limit_tokens
        else:
            completion_tokens = len(words)
        response_id, payload = fmt.success(model, text, truncated, fmt.prompt_words(body), completion_tokens, body)
        rec.response_id = response_id
        rec.reply = text
        _, resp_headers = fmt.request_id_headers()
        if extra:
            resp_headers.update(extra)
        resp_headers.update(fmt.success_headers(delay))
        mode = behaviour.malformed
        if mode is not None:
            return malformed_response(rec, mode, payload, resp_headers)
        rec.status = 200
        rec.outcome = "ok"
        return web.Response(
            body=json.dumps(payload).encode(),
            status=200,
            headers=resp_headers,
            content_type="application/json",
        )

    # --- any other path ----------------------------------------------------------------

    async def _h_unknown(self, request: web.Request) -> web.Response:
        """Any other path: recorded (provider "unknown") and answered like OpenAI does."""
        now, wall = time.monotonic(), time.time()
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self._seq += 1
            rec = RecordedRequest(
                seq=self._seq,
                provider="unknown",
                method=request.method,
                path=request.path,
                model=None,
                prompt=None,
                raw_body=raw if self._record_bodies else b"",
                headers=headers if self._record_headers else {},
                api_key=next((k for f in FORMATS.values() if (k := f.api_key(headers))), None),
                arrived_monotonic=now,
                arrived_wall=wall,
                status=404,
                outcome="unknown_path",
                finished_monotonic=now,
            )
            self._records.append(rec)
        error = {
            "message": f"Invalid URL ({request.method} {request.path})",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        return web.json_response({"error": error}, status=404)


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# --------------------------------------------------------------------------------------
# Serving from the command line
# --------------------------------------------------------------------------------------
