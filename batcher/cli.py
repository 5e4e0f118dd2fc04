"""The ``batcher`` command line."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from batcher._config import Settings

# Imports stay inside the commands: ``batcher --help`` loads click and this file only (see
# ``bench/startup.py``; tests/unit/test_cli_startup.py keeps the heavy modules out).


def get_settings() -> Settings:
    from batcher._config import get_settings as settings

    return settings()


EXIT_OK = 0
EXIT_REQUESTS_FAILED = 1
"""``wait`` / ``submit --wait``: the job ran and some of its requests failed (or a race had no winner)."""
EXIT_ERROR = 2
"""Bad input, a configuration mistake, an unknown job (and click's usage errors)."""
EXIT_JOB_DID_NOT_RUN = 3
"""``wait`` / ``submit --wait``: the job could not run: cancelled, expired, no worker, database or broker away."""
EXIT_WAIT_TIMEOUT = 4
"""``wait --timeout``: the time ran out; the job goes on."""

EXIT_CODES_HELP = f"""\b
Exit status of wait and submit --wait:
  {EXIT_OK}  every request succeeded
  {EXIT_REQUESTS_FAILED}  the job ran and some requests failed
  {EXIT_ERROR}  bad input or configuration (as for every command)
  {EXIT_JOB_DID_NOT_RUN}  the job could not run: cancelled, expired, no worker, database or broker away
  {EXIT_WAIT_TIMEOUT}  --timeout ran out (the job goes on)
"""


def _client() -> Any:
    from batcher._client import Client
    from batcher._mode import work_only_while_waiting

    with work_only_while_waiting():  # embedded mode: only a command that waits runs the work
        client = Client(get_settings())  # local, or over HTTP when BATCHER_API_URL is set
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(client.close)
    return client


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``-p temperature=0.2 -p stop='["x"]'``: values are JSON when they parse, else strings.

    The values are checked by the client like any keyword argument (``temperature=hot`` is refused
    with one line naming ``temperature``)."""
    from batcher._validation import MAX_JSON_DEPTH, NestedTooDeeplyError

    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key] = json.loads(raw)  # numbers, true/false/null, lists and objects
        except json.JSONDecodeError:
            params[key] = _PYTHON_WORDS.get(raw, raw)
        except RecursionError:
            raise NestedTooDeeplyError(
                f"is nested too deeply (batcher takes at most {MAX_JSON_DEPTH} levels)", field=f"--param {key}"
            ) from None
    return params


_PYTHON_WORDS: dict[str, Any] = {"True": True, "False": False, "None": None}

_JOB_ID_CHARS = frozenset("0123456789abcdef-")
MIN_JOB_PREFIX = 6


def _job(ident: str) -> Any:
    """The job named by its id or a unique prefix of it (the ``job 1a2b3c4d`` of the progress bar)."""
    client = _client()
    return client.job(_resolve_job_id(client, ident))


def _resolve_job_id(client: Any, ident: str) -> str:
    import uuid

    from batcher._exceptions import JobNotFoundError

    ident = ident.strip().lower()
    try:
        return str(uuid.UUID(ident))
    except ValueError:
        pass
    if not ident or not set(ident) <= _JOB_ID_CHARS or len(ident.replace("-", "")) < MIN_JOB_PREFIX:
        raise JobNotFoundError(
            f"{ident!r} is not a job id: give the id `batcher submit` printed, or at least its first "
            f"{MIN_JOB_PREFIX} characters"
        )
    engine = getattr(client.transport, "engine", None)
    if engine is None:  # over HTTP (BATCHER_API_URL): the service takes full ids only
        raise JobNotFoundError(f"{ident!r} is not a whole job id: over HTTP give the full id `batcher submit` printed")
    from sqlalchemy import String, cast, func, select

    from batcher._db.models import Job

    digits = ident.replace("-", "")
    with engine.connect() as conn:
        found = conn.execute(
            select(Job.id).where(func.replace(cast(Job.id, String), "-", "").like(f"{digits}%")).limit(3)
        ).all()
    if not found:
        raise JobNotFoundError(f"no job id starts with {ident!r}")
    if len(found) > 1:
        some = ", ".join(str(row.id) for row in found[:2])
        raise JobNotFoundError(f"{ident!r} is the start of several job ids ({some}, ...): give more of the id")
    return str(found[0].id)


class _Group(click.Group):
    """Turns batcher errors into one clear line and exit status 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from batcher._exceptions import BatcherError  # here: it imports the openai SDK (a second)

            if not isinstance(exc, BatcherError):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)


@click.group(cls=_Group, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="batcher-llm")
def main() -> None:
    """batcher: durable, distributed batch completion for LLMs."""
    from batcher._logging import configure_from_settings

    configure_from_settings()  # BATCHER_LOG_FORMAT=json|text, BATCHER_LOG_LEVEL; workers re-apply it with --loglevel


@main.command()
@click.argument("file", type=click.File("r"))
@click.option("--model", "-m", help="Model for lines that do not name one.")
@click.option("--param", "-p", "params", multiple=True, help="Provider parameter KEY=VALUE (repeatable).")
@click.option("--completion-window", help="Deadline such as 24h; unsent requests then end expired.")
@click.option(
    "--priority",
    type=int,
    help="0-9, higher first (default 5): a higher priority's prompts are released to the workers first.",
)
@click.option("--wait/--no-wait", default=False, help="Wait for the job with a progress bar.")
def submit(
    file: IO[str],
    model: str | None,
    params: tuple[str, ...],
    completion_window: str | None,
    priority: int | None,
    wait: bool,
) -> None:
    """Submit a JSONL file of prompts (one per line). Prints the job id.

    With --wait, the exit status tells the outcome (see batcher --help)."""
    with _job_outcome():
        client = _client()
        kwargs = _parse_params(params)
        if completion_window:
            kwargs["completion_window"] = completion_window
        if priority is not None:
            kwargs["priority"] = priority  # checked by the client, as -p priority=... would be
        # Streamed either way: read line by line here, or uploaded as it is to a service (BATCHER_API_URL).
        job = client.submit_file(file.buffer if hasattr(file, "buffer") else file, default_model=model, **kwargs)
        click.echo(str(job.id))
        if wait:
            _exit_with_outcome(job.wait(progress=True))


@contextlib.contextmanager
def _job_outcome() -> Iterator[None]:
    """``wait`` / ``submit --wait``: a job that could not run, or a wait that ran out, as one line and its
    exit status (``EXIT_JOB_DID_NOT_RUN``, ``EXIT_WAIT_TIMEOUT``); other batcher errors go on to the group."""
    from batcher._exceptions import ServiceUnavailableError, WaitTimeoutError  # here: it imports the openai SDK

    try:
        yield
    except WaitTimeoutError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_WAIT_TIMEOUT)
    except ServiceUnavailableError as exc:  # NoWorkerError, an outage, a broker that refused the job
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_JOB_DID_NOT_RUN)


def outcome_exit_code(status: Any) -> int:
    """The exit status of a final job (see ``EXIT_CODES_HELP``)."""
    from batcher._states import JobKind, JobState

    if status.state in (JobState.CANCELLED, JobState.EXPIRED):
        return EXIT_JOB_DID_NOT_RUN
    if status.state is JobState.FAILED:
        return EXIT_REQUESTS_FAILED
    if status.kind is not JobKind.FASTEST and status.failed:  # a race with a winner succeeded
        return EXIT_REQUESTS_FAILED
    return EXIT_OK


def _exit_with_outcome(status: Any) -> None:
    _print_status(status)
    code = outcome_exit_code(status)
    if code != EXIT_OK:
        sys.exit(code)


def _print_status(status: Any, as_json: bool = False) -> None:
    if as_json:
        data = status.model_dump(mode="json")
        # One level of parameters, as they were passed (stored as {"params": {...}, "timeout": ...}).
        stored = dict(data.get("params") or {})
        data["params"] = {**{k: v for k, v in stored.items() if k != "params"}, **(stored.get("params") or {})}
        data.update(done=status.done, progress=status.progress)
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"{status.id}  {status.kind.value}  {status.state.value}  "
        f"{status.done}/{status.total} done: {status.succeeded} succeeded, {status.failed} failed, "
        f"{status.cancelled} cancelled, {status.expired} expired"
    )
    standing = status.standing_text()  # None when final or when no dispatcher publishes one (then --json has it all)
    if standing:  # where it stands in line: its priority, its backlog, the dispatcher's standing
        click.echo(f"  priority {status.priority}, {status.queued:,} queued · {standing}")


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole status as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's state and counts (JOB_ID: the id, or a unique prefix of it)."""
    _print_status(_job(job_id).status(), as_json)


@main.command()
@click.argument("job_id")
@click.option("--timeout", type=float, help="Give up after this many seconds (the job goes on).")
def wait(job_id: str, timeout: float | None) -> None:
    """Wait for a job with a live progress bar. The exit status tells the outcome (see batcher --help)."""
    with _job_outcome():
        _exit_with_outcome(_job(job_id).wait(timeout=timeout, progress=True))


@main.command()
@click.argument("job_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write JSONL here.")
def results(job_id: str, output: Path | None) -> None:
    """Stream a job's results as JSONL, in input order (to stdout, or to a file with -o)."""
    job = _job(job_id)
    if output is None:
        job.write_jsonl(sys.stdout.buffer)  # local: Postgres writes the lines; remote: the service streams them
        sys.stdout.buffer.flush()
        return
    with output.open("wb") as handle:
        counted = _LineCounter(handle)
        job.write_jsonl(counted)  # only write() and flush() are used
    lines = f"{counted.lines:,} line" + ("" if counted.lines == 1 else "s")
    click.echo(f"wrote {lines} (one per request, in input order) of job {job.id} to {output}", err=True)


class _LineCounter:
    """A binary writer that passes bytes on and counts the lines written."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.lines = 0

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.lines += chunk.count(b"\n")
        self._out.write(chunk)
        return len(chunk)

    def flush(self) -> None:
        self._out.flush()


@main.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel every request not yet sent; in-flight ones are recorded when they return."""
    _print_status(_job(job_id).cancel())


@main.command()
@click.option("--markdown", is_flag=True, help="Print the documentation table of every setting (docs/settings.md).")
def settings(markdown: bool) -> None:
    """Print every setting (BATCHER_* variable) as this process reads it; secrets are hidden."""
    from batcher import _settings_doc

    if markdown:
        click.echo(_settings_doc.markdown(), nl=False)
        return
    for line in _settings_doc.current_values(get_settings()):
        click.echo(line)


@main.command()
def recover() -> None:
    """Run the recovery sweep once, now (the workers' leader runs it every few seconds anyway)."""
    from batcher._celery import make_celery_app
    from workers._context import WorkerContext
    from workers._recovery import sweep

    settings = get_settings()
    report = sweep(WorkerContext(settings=settings, app=make_celery_app(settings)))
    click.echo(json.dumps(report.as_dict()))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(min=0),
    help="Worker processes; default BATCHER_WORKER_PROCESSES (0: one per core). 1: one plain Celery worker.",
)
@click.option(
    "--concurrency", "-c", type=int, help="Threads (in-flight calls) per process; default BATCHER_WORKER_CONCURRENCY."
)
@click.option("--log-level", "--loglevel", "-l", "loglevel", default="INFO", show_default=True, help="Log level.")
@click.option(
    "--name",
    default=None,
    help="Worker names: NAME-1@host, NAME-2@host, ... and NAME-race@host (NAME@host with -p 1). Default batcher, "
    "or batcher2, batcher3... when another `batcher worker` on this host runs as batcher.",
)
@click.pass_context
def worker(ctx: click.Context, processes: int | None, concurrency: int | None, loglevel: str, name: str | None) -> None:
    """Start the workers, tuned for LLM calls: one Celery worker process per core (threads pool, both queues)
    and one small process for races only, supervised (restarted if one dies; SIGTERM stops them warm).
    Extra args go to Celery."""
    from batcher._mode import refuse_embedded_worker

    settings = get_settings()
    refuse_embedded_worker(settings)  # one line, before Celery joins a queue nobody sends to

    from batcher._migrate import ensure_schema
    from batcher._supervisor import NameTakenError, claim_name, processes_for

    try:
        claimed = claim_name(name)  # held while this command (or the Celery it execs into) runs
    except NameTakenError as exc:  # one line, before anything starts
        raise click.ClickException(str(exc)) from None
    if claimed.moved_from:
        click.echo(
            f"batcher worker: another `batcher worker` on this host runs as {claimed.moved_from}; "
            f"this one runs as {claimed.name}",
            err=True,
        )

    ensure_schema(settings)  # creates and migrates the database if it may (BATCHER_AUTO_MIGRATE), else one line
    count = processes_for(settings.worker_processes if processes is None else processes)
    threads = concurrency or settings.worker_concurrency
    if count == 1:  # the single worker of old, in this process: nothing to supervise
        from batcher._celery import worker_argv
        from workers.celery_app import app

        argv = worker_argv(
            concurrency=threads,
            queues=[settings.queue, settings.race_queue],
            loglevel=loglevel,
            hostname=f"{claimed.name}@%h" if name or claimed.moved_from else None,
        )
        app.worker_main([*argv, *ctx.args])
        return
    from batcher._supervisor import Supervisor, worker_specs

    specs = worker_specs(
        processes=count,
        concurrency=threads,
        race_concurrency=settings.worker_race_concurrency,
        queue=settings.queue,
        race_queue=settings.race_queue,
        loglevel=loglevel,
        name=claimed.name,
        extra=ctx.args,
        batch_nice=settings.worker_batch_nice,
    )
    race = f" + 1 for races ({settings.worker_race_concurrency} threads)" if len(specs) > count else ""
    click.echo(f"batcher worker: {count} worker processes x {threads} threads{race}", err=True)
    sys.exit(Supervisor(specs).run())


@main.command()
def beat() -> None:
    """Optional: one more contender for the cluster's leadership (the recovery sweep and the evaluation
    schedules), without being a worker. Workers elect a leader among themselves: nothing needs this."""
    import signal
    import threading

    from batcher._celery import make_celery_app
    from workers._context import WorkerContext
    from workers._liveness import Liveness

    settings = get_settings()
    ctx = WorkerContext(settings=settings, app=make_celery_app(settings))

    def eval_tick() -> Any:
        from batcher.evals.schedules import tick
        from workers.eval_tasks import _get_runner

        return tick(_get_runner(ctx.app))

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    liveness = Liveness(ctx, heartbeat=False, eval_tick=eval_tick).start()
    click.echo("batcher beat: contending for leadership (recovery sweep, evaluation schedules); Ctrl-C stops")
    done.wait()
    liveness.stop()


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", default=5555, show_default=True, type=int, help="Port of Flower's web UI.")
@click.pass_context
def flower(ctx: click.Context, port: int) -> None:
    """Start Flower, the Celery web monitor, on this cluster's broker. Extra args go to Flower."""
    import importlib.util

    if importlib.util.find_spec("flower") is None:
        raise click.ClickException("Flower is not installed: pip install 'batcher-llm[monitoring]'")
    from workers.celery_app import app

    # Flower only reads events and inspects workers: kombu's stock transport (and its redis:// name
    # in Flower's pages) suits it; the full-Redis-tolerant one is for consumers of tasks.
    app.conf.broker_transport = None
    app.start(["flower", f"--port={port}", *ctx.args])


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
@click.option(
    "--concurrency", "-c", default=50, show_default=True, help="Calls in flight, split over the worker processes."
)
def demo(prompts: int, latency_ms: int, concurrency: int) -> None:
    """Run a real batch end to end against a local fake provider, with progress."""
    from batcher._demo import run_demo

    run_demo(prompts=prompts, latency_ms=latency_ms, concurrency=concurrency)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes (the service is stateless).")
@click.option("--log-level", "--loglevel", "log_level", default="info", show_default=True, help="Log level.")
def api(host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the HTTP API: native jobs (/v1/jobs) and the OpenAI Batch API (/v1/files, /v1/batches)."""
    import uvicorn

    from batcher._logging import uvicorn_options
    from batcher._migrate import ensure_schema

    ensure_schema(get_settings())  # as a worker does: creates and migrates the database if it may, else one line
    logs = uvicorn_options(get_settings().log_format, log_level)  # JSON mode: uvicorn's lines as JSON too
    if workers > 1:
        uvicorn.run(
            "batcher.api:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level, **logs
        )
    else:
        from batcher.api import create_app

        uvicorn.run(create_app(get_settings()), host=host, port=port, log_level=log_level, **logs)


@main.group()
def keys() -> None:
    """API keys of the HTTP service (only their SHA-256 is stored)."""
    from batcher._migrate import ensure_schema

    ensure_schema(get_settings())  # the keys table may be the first thing a new deployment touches


_QUOTA_CLEAR = "none"


def _quota_option(value: str | None, flag: str) -> tuple[bool, int | None]:
    """``--max-queued 5000`` / ``--max-queued none`` (clears it): (given, value)."""
    if value is None:
        return False, None
    if value.strip().lower() == _QUOTA_CLEAR:
        return True, None
    try:
        return True, int(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a whole number; give one of at least 1, or '{_QUOTA_CLEAR}' for no quota",
            param_hint=flag,
        ) from None


def _limits_text(info: Any) -> str:
    """``weight 2, max-concurrent 50, max-queued 10,000`` (quotas shown only when set)."""
    parts = [f"weight {info.weight:g}"]
    if info.max_concurrent_requests is not None:
        parts.append(f"max-concurrent {info.max_concurrent_requests:,}")
    if info.max_queued_prompts is not None:
        parts.append(f"max-queued {info.max_queued_prompts:,}")
    return ", ".join(parts)


_WEIGHT_HELP = "Share of the cluster against other keys with work waiting (default 1; 2 = twice another key's)."
_MAX_CONCURRENT_HELP = "At most N of the key's requests in flight at once (the dispatcher holds the rest back)."
_MAX_QUEUED_HELP = "At most N unfinished prompts; a submission past it is refused with 429, nothing stored."


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--admin", is_flag=True, help="May read and list every key's jobs, files and batches (and set api_base).")
@click.option(
    "--allow-api-base",
    is_flag=True,
    help="May send jobs naming their own api_base (with their own api_key; a public address unless it is in "
    "BATCHER_ALLOWED_API_BASES).",
)
@click.option("--weight", type=float, default=1.0, show_default=True, help=_WEIGHT_HELP)
@click.option("--max-concurrent", type=int, help=_MAX_CONCURRENT_HELP + " Default: no quota.")
@click.option("--max-queued", type=int, help=_MAX_QUEUED_HELP + " Default: no quota.")
def keys_create(
    name: str, admin: bool, allow_api_base: bool, weight: float, max_concurrent: int | None, max_queued: int | None
) -> None:
    """Create a key and print it. It is shown this once: store it now."""
    from batcher._db.engine import get_engine
    from batcher.api.auth import create_key

    info, key = create_key(
        get_engine(get_settings()),
        name,
        admin=admin,
        allow_api_base=allow_api_base,
        weight=weight,
        max_concurrent_requests=max_concurrent,
        max_queued_prompts=max_queued,
    )
    click.echo(key)
    flags = "".join(f"{f}, " for f, on in (("admin", admin), ("api_base", allow_api_base)) if on)
    click.echo(
        f"key id {info.id} ({flags}name {info.name!r}, {_limits_text(info)}): shown once, store it now", err=True
    )


@keys.command("set")
@click.argument("key_id", type=click.UUID)
@click.option("--weight", type=float, help=_WEIGHT_HELP)
@click.option("--max-concurrent", metavar="N|none", help=_MAX_CONCURRENT_HELP + " 'none' clears it.")
@click.option("--max-queued", metavar="N|none", help=_MAX_QUEUED_HELP + " 'none' clears it.")
def keys_set(key_id: Any, weight: float | None, max_concurrent: str | None, max_queued: str | None) -> None:
    """Change a key's share or quotas; unnamed settings stay as they are. Takes effect at once."""
    from batcher._db.engine import get_engine
    from batcher.api.auth import set_key_limits

    limits: dict[str, Any] = {}
    if weight is not None:
        limits["weight"] = weight
    for column, raw, flag in (
        ("max_concurrent_requests", max_concurrent, "--max-concurrent"),
        ("max_queued_prompts", max_queued, "--max-queued"),
    ):
        given, value = _quota_option(raw, flag)
        if given:
            limits[column] = value
    if not limits:
        raise click.UsageError("nothing to change: give --weight, --max-concurrent or --max-queued")
    info = set_key_limits(get_engine(get_settings()), key_id, limits)
    if info is None:
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"{info.id}  {info.name}  {_limits_text(info)}")


@keys.command("list")
def keys_list() -> None:
    """List keys (id, prefix, name, share and quotas when set, flags); never the keys themselves."""
    from batcher._db.engine import get_engine
    from batcher.api.auth import list_keys

    for info in list_keys(get_engine(get_settings())):
        flags = ",".join(
            f
            for f, on in (
                ("admin", info.is_admin),
                ("api_base", info.can_set_api_base),
                ("revoked", info.revoked_at is not None),
            )
            if on
        )
        # Share and quotas only where they differ from the defaults: a plain key's line stays as it always was.
        limits = [_limits_text(info)] if _has_limits(info) else []
        click.echo("  ".join([f"{info.id}", f"{info.prefix}...", info.name, *limits, *([flags] if flags else [])]))


def _has_limits(info: Any) -> bool:
    from batcher.api.auth import DEFAULT_WEIGHT

    return bool(
        info.weight != DEFAULT_WEIGHT or info.max_concurrent_requests is not None or info.max_queued_prompts is not None
    )


@keys.command("revoke")
@click.argument("key_id", type=click.UUID)
def keys_revoke(key_id: Any) -> None:
    """Revoke a key by its id: every request with it gets 401 from now on."""
    from batcher._db.engine import get_engine
    from batcher.api.auth import revoke_key

    if not revoke_key(get_engine(get_settings()), key_id):
        raise click.ClickException(f"no active key {key_id}")
    click.echo(f"revoked {key_id}")


class _LazyEvalGroup(click.Group):
    """``batcher eval``: its commands live in ``batcher.evals.cli``, imported only when it is used."""

    def _real(self) -> click.Group:
        from batcher.evals.cli import eval_group

        return eval_group

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._real().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._real().get_command(ctx, cmd_name)


main.add_command(
    _LazyEvalGroup(
        "eval", help="Evaluation runs: suites scored across models, schedules, HTML reports, run comparisons."
    )
)


class _LazyCommand(click.Command):
    """A command whose module is imported only when it runs (or shows its own ``--help``)."""

    def __init__(self, name: str, target: str, short_help: str) -> None:
        super().__init__(name, short_help=short_help)
        self._target = target

    def _real(self) -> click.Command:
        import importlib

        module, _, attr = self._target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        return self._real().make_context(info_name, args, parent=parent, **extra)


main.add_command(
    _LazyCommand(
        "fake-provider",
        "batcher.testing.cli:fake_provider_command",
        "Serve a fake OpenAI / Anthropic / Cohere API (demos, benchmarks).",
    )
)

if __name__ == "__main__":  # pragma: no cover
    main()
