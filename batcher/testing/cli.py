"""``batcher fake-provider``: the fake provider as a process of its own (demos, benchmarks, other
languages' tests), and ``serve`` / ``serve_async`` to run it without the command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Mapping
from typing import Any

import click
from click.core import ParameterSource
from pydantic import ValidationError

from batcher.testing.config import FakeProviderConfig
from batcher.testing.formats import FORMATS
from batcher.testing.server import FakeProvider

__all__ = ["fake_provider_command", "serve", "serve_async"]


def _banner(fp: FakeProvider) -> str:
    lines = [f"fake provider listening on {fp.url}"]
    lines += [f"  {name + ':':<11}{fp.url}{fmt.path}" for name, fmt in FORMATS.items()]
    lines.append(f"  {'control:':<11}{fp.url}/_fake/requests | /_fake/stats | /_fake/reset | /_fake/behaviour")
    return "\n".join(lines)


async def serve_async(
    host: str = "127.0.0.1",
    port: int = 9999,
    config: FakeProviderConfig | Mapping[str, Any] | None = None,
    *,
    stop: asyncio.Event | None = None,
    announce: bool = True,
) -> None:
    """Serve in the running loop until ``stop`` is set (or the task is cancelled)."""
    fp = FakeProvider(port=port, config=config, host=host)
    await fp.astart()
    try:
        if announce:
            click.echo(_banner(fp), err=True)
        await (stop or asyncio.Event()).wait()
    finally:
        await fp.astop()


def serve(
    host: str = "127.0.0.1",
    port: int = 9999,
    config: FakeProviderConfig | Mapping[str, Any] | None = None,
) -> None:
    """Serve until SIGINT / SIGTERM (blocks). What ``batcher fake-provider`` runs."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        await serve_async(host, port, config, stop=stop)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


@click.command("fake-provider")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9999, show_default=True, type=int, help="0: any free port.")
@click.option("--latency-ms", default=0.0, type=click.FloatRange(min=0), show_default=True)
@click.option("--rpm-limit", default=None, type=click.IntRange(min=1), help="All models.")
@click.option("--error-rate-429", default=0.0, type=click.FloatRange(0, 1), show_default=True)
@click.option("--error-rate-5xx", default=0.0, type=click.FloatRange(0, 1), show_default=True)
@click.option("--retry-after-s", default=1.0, type=click.FloatRange(min=0), show_default=True)
@click.option("--seed", default=0, type=int, show_default=True, help="Seed of error draws.")
@click.option("--expected-key", default=None, help="Answer 401 to any other API key.")
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="JSON file of FakeProviderConfig fields (per-model behaviours); options override it.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every request (slow).")
def fake_provider_command(
    host: str,
    port: int,
    latency_ms: float,
    rpm_limit: int | None,
    error_rate_429: float,
    error_rate_5xx: float,
    retry_after_s: float,
    seed: int,
    expected_key: str | None,
    config_file: str | None,
    verbose: bool,
) -> None:
    """Serve a fake OpenAI / Anthropic / Cohere API for demos and benchmarks.

    Answers POST /v1/chat/completions (OpenAI), /v1/messages (Anthropic) and /v2/chat
    (Cohere v2) with "echo: <last user message>"; GET /_fake/stats and /_fake/requests show
    what arrived. Stop with Ctrl-C or SIGTERM.
    """
    ctx = click.get_current_context()
    data: dict[str, Any] = {}
    if config_file:
        with open(config_file, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise click.UsageError("--config must hold a JSON object of FakeProviderConfig fields")

    def given(name: str) -> bool:
        # Without a config file every option applies; with one, only those given explicitly.
        return not config_file or ctx.get_parameter_source(name) is not ParameterSource.DEFAULT

    default = dict(data.get("default") or {})
    for name, value in (
        ("latency_ms", latency_ms),
        ("error_rate_429", error_rate_429),
        ("error_rate_5xx", error_rate_5xx),
        ("retry_after_s", retry_after_s),
    ):
        if given(name):
            default[name] = value
    data["default"] = default
    if given("seed"):
        data["seed"] = seed
    if rpm_limit is not None:
        data["rpm_limit"] = rpm_limit
    if expected_key is not None:
        data["expected_api_key"] = expected_key
    try:
        config = FakeProviderConfig.model_validate(data)
    except ValidationError as exc:
        raise click.UsageError(f"invalid fake provider configuration:\n{exc}") from exc
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
    try:
        serve(host, port, config)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc


if __name__ == "__main__":  # pragma: no cover
    fake_provider_command()
