"""The ``batcher`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

import click

from batcher._config import get_settings
from batcher._exceptions import BatcherError


def _client() -> Any:
    from batcher._client import Client

    return Client(get_settings())


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-p temperature=0.2 -p stop='["x"]'``: values are JSON when they parse, else strings."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


class _Group(click.Group):
    """Turns batcher errors into one clear line and exit status 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatcherError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="batcher")
def main() -> None:
    """batcher: durable, distributed batch completion for LLMs."""


@main.command()
@click.argument("file", type=click.File("r"))
@click.option("--model", "-m", help="Model for lines that do not name one.")
@click.option("--param", "-p", "params", multiple=True, help="Provider parameter KEY=VALUE (repeatable).")
@click.option("--completion-window", help="Deadline such as 24h; unsent requests then end expired.")
@click.option("--wait/--no-wait", default=False, help="Wait for the job with a progress bar.")
def submit(
    file: IO[str], model: str | None, params: tuple[str, ...], completion_window: str | None, wait: bool
) -> None:
    """Submit a JSONL file of prompts (one per line). Prints the job id."""
    from batcher._files import read_jsonl

    client = _client()
    kwargs = _parse_params(params)
    if completion_window:
        kwargs["completion_window"] = completion_window
    job = client.submit_requests(read_jsonl(file, default_model=model), **kwargs)
    click.echo(str(job.id))
    if wait:
        _print_status(job.wait(progress=True))


def _print_status(status: Any, as_json: bool = False) -> None:
    if as_json:
        data = status.model_dump(mode="json")
        data.update(done=status.done, progress=status.progress)
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"{status.id}  {status.kind.value}  {status.state.value}  "
        f"{status.done}/{status.total} done: {status.succeeded} succeeded, {status.failed} failed, "
        f"{status.cancelled} cancelled, {status.expired} expired"
    )


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole status as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's state and counts."""
    _print_status(_client().job(job_id).status(), as_json)


@main.command()
@click.argument("job_id")
@click.option("--timeout", type=float, help="Give up after this many seconds (the job goes on).")
def wait(job_id: str, timeout: float | None) -> None:
    """Wait for a job with a live progress bar."""
    _print_status(_client().job(job_id).wait(timeout=timeout, progress=True))


@main.command()
@click.argument("job_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write JSONL here.")
def results(job_id: str, output: Path | None) -> None:
    """Stream a job's results as JSONL, in input order."""
    job = _client().job(job_id)
    out = output.open("w") if output else sys.stdout
    try:
        for result in job.results():
            line = {
                "index": result.index,
                "custom_id": result.custom_id,
                "model": result.model,
                "state": result.state.value,
                "attempts": result.attempts,
                "response": result.response.model_dump(mode="json") if result.response else None,
                "error": (
                    {
                        "type": type(result.error).__name__,
                        "message": str(result.error),
                        "status_code": result.error.status_code,
                    }
                    if result.error
                    else None
                ),
            }
            out.write(json.dumps(line) + "\n")
    finally:
        if output:
            out.close()


@main.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel every request not yet sent; in-flight ones are recorded when they return."""
    _print_status(_client().job(job_id).cancel())


@main.command()
def recover() -> None:
    """Run the recovery sweep once (re-enqueue what the broker lost, finalize finished jobs)."""
    from workers._context import WorkerContext
    from workers._recovery import sweep
    from workers.celery_app import make_celery_app

    settings = get_settings()
    report = sweep(WorkerContext(settings=settings, app=make_celery_app(settings)))
    click.echo(json.dumps(report.as_dict()))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", type=int, help="Threads (in-flight requests); default BATCHER_WORKER_CONCURRENCY.")
@click.option("--loglevel", "-l", default="INFO")
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, loglevel: str) -> None:
    """Start a Celery worker tuned for LLM calls (threads pool, both queues). Extra args go to Celery."""
    from workers.celery_app import app

    settings = get_settings()
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--queues={settings.queue},{settings.race_queue}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        *ctx.args,
    ]
    app.worker_main(argv)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Start Celery beat (runs the recovery sweep every BATCHER_RECOVERY_INTERVAL_S)."""
    from workers.celery_app import app

    app.start(["beat", "--loglevel=INFO", *ctx.args])


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head")
def db_upgrade(revision: str) -> None:
    """Create the database if missing and migrate it to REVISION (default: head)."""
    from batcher._migrate import upgrade

    upgrade(get_settings(), revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (``base`` drops everything)."""
    from batcher._migrate import downgrade

    downgrade(get_settings(), revision)
    click.echo(f"database at {revision}")


@main.command("secret-key")
def secret_key() -> None:
    """Print a new BATCHER_SECRET_KEY (needed only for api_key= passed per call)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


@main.command()
@click.option("--prompts", "-n", default=1_000, show_default=True, help="Prompts in the demo batch.")
@click.option("--latency-ms", default=100, show_default=True, help="Fake provider latency.")
@click.option("--concurrency", "-c", default=50, show_default=True, help="Worker threads.")
def demo(prompts: int, latency_ms: int, concurrency: int) -> None:
    """Run a real batch end to end against a local fake provider, with progress."""
    from batcher._demo import run_demo

    run_demo(prompts=prompts, latency_ms=latency_ms, concurrency=concurrency)


def _register_fake_provider() -> None:
    from batcher.fake_provider import fake_provider_command

    main.add_command(fake_provider_command, "fake-provider")


_register_fake_provider()

if __name__ == "__main__":  # pragma: no cover
    main()
