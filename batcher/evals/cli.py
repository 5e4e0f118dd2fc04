"""``batcher eval ...``: run suites, schedule them, report on them, compare runs.

Registered lazily by ``batcher.cli`` (this module is imported only when ``batcher eval`` is
used), and it defers its own heavy imports to the commands, so ``batcher --help`` stays fast.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import click


def _runner() -> Any:
    from batcher._client import Client
    from batcher._config import get_settings
    from batcher.evals.runner import EvalRunner

    return EvalRunner(Client(get_settings()))


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_summary(console: Any, run: dict[str, Any]) -> None:
    from rich.table import Table

    from batcher.evals.prices import format_usd

    summary = run["summary"] or {"models": []}
    table = Table(title=f"{run['suite_name']}: run {run['id']} ({summary.get('items', 0)} items)")
    for column in ("model", "score", "passed", "errors", "p50 ms", "p95 ms", "tokens in / out", "cost", "cached"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for m in summary["models"]:
        table.add_row(
            m["model"],
            _fmt(m["score"], ".3f"),
            f"{m['passed']}/{m['items']}",
            _fmt(m["error_rate"], ".0%"),
            _fmt(m["latency_p50_ms"], ".0f"),
            _fmt(m["latency_p95_ms"], ".0f"),
            f"{m['prompt_tokens']:,} / {m['completion_tokens']:,}",
            format_usd(m["cost_usd"]),
            str(m["cached"]),
        )
    console.print(table)


@click.group("eval")
def eval_group() -> None:
    """Evaluation runs: suites of prompts scored across models, scheduled, reported, compared."""


@eval_group.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
def validate(suite: Path) -> None:
    """Check a suite file and its dataset (every problem, with its line)."""
    from batcher.evals.suite import load_suite

    loaded = load_suite(suite)
    click.echo(
        f"ok: suite {loaded.name!r}, {len(loaded.items)} items x {len(loaded.spec.models)} models, "
        f"{len(loaded.spec.scorers)} scorers"
    )


@eval_group.command()
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cache/--no-cache", default=None, help="Reuse stored answers to identical requests (default: suite's).")
@click.option("--new", "new_run", is_flag=True, help="Start a new run even if this suite has an unfinished one.")
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 when a model regressed against the previous run.")
@click.option("--timeout", type=float, help="Stop waiting after this many seconds (the run goes on).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar while answers come in.")
def run(
    suite: Path, cache: bool | None, new_run: bool, fail_on_regression: bool, timeout: float | None, progress: bool
) -> None:
    """Run SUITE: every item x every model as one job on the workers, then score and compare.

    An unfinished run of the same suite (interrupted, or still running) is picked up where it
    stopped instead of starting again: answers already stored are not paid for twice.
    """
    from batcher.evals import store
    from batcher.evals.compare import regression_text, render_comparison
    from batcher.evals.errors import EvalError
    from batcher.evals.states import RunState
    from batcher.evals.suite import Suite, load_suite

    loaded = load_suite(suite)
    if cache is not None and cache != loaded.spec.cache:
        loaded = Suite(loaded.spec.model_copy(update={"cache": cache}), loaded.items, loaded.path)
    runner = _runner()
    console = _console()
    run_id, resumed = runner.start(loaded, resume=not new_run)
    verb = "resuming" if resumed else "started"
    console.print(
        f"{verb} run {run_id}: {len(loaded.items)} items x {len(loaded.spec.models)} models"
        + (" (response cache on)" if loaded.spec.cache else "")
    )
    try:
        state = runner.run(run_id, progress=progress and sys.stderr.isatty(), timeout=timeout)
    except KeyboardInterrupt:
        console.print(f"interrupted: run {run_id} goes on in the workers; run the same command to pick it up")
        sys.exit(130)
    with runner.engine.connect() as conn:
        finished = store.get_run(conn, run_id)
    assert finished is not None
    if state is RunState.FAILED:
        raise EvalError(f"run {run_id} failed: {finished['error']}")
    print_summary(console, finished)
    comparison = finished["comparison"]
    if comparison:
        with runner.engine.connect() as conn:
            previous = store.get_run(conn, uuid.UUID(comparison["previous_run_id"]))
        render_comparison(console, comparison, previous["summary"] if previous else None, finished["summary"])
        if finished["regressed"]:
            console.print(f"[red]{regression_text(finished['suite_name'], comparison)}[/]")
    console.print(f"report: batcher eval report {suite} --run {run_id} -o report.html", soft_wrap=True)
    if fail_on_regression and finished["regressed"]:
        sys.exit(1)


@eval_group.command()
@click.argument("suite", required=False)
@click.option("--limit", "-n", default=20, show_default=True)
def runs(suite: str | None, limit: int) -> None:
    """List recent runs (of SUITE: a suite file or name)."""
    from rich.table import Table

    from batcher.evals import store
    from batcher.evals.report import suite_name_of

    runner = _runner()
    with runner.engine.connect() as conn:
        rows = store.list_runs(conn, suite_name_of(suite) if suite else None, limit=limit)
    table = Table()
    # Whole ids, never cut to fit the terminal: they are what `eval compare` and `eval report --run` take.
    table.add_column("run", no_wrap=True, min_width=36)
    for column in ("suite", "state", "trigger", "items", "regressed", "created", "error"):
        table.add_column(column)
    for r in rows:
        regressed = "" if r["regressed"] is None else ("yes" if r["regressed"] else "no")
        table.add_row(
            str(r["id"]),
            r["suite_name"],
            r["state"],
            r["trigger"],
            str(r["item_count"]),
            regressed,
            r["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
            (r["error"] or "")[:80],
        )
    _console().print(table)


@eval_group.command()
@click.argument("suite")
@click.option("--run", "run_ident", help="Run id (or a unique prefix); default: the suite's latest completed run.")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"), show_default=True
)
def report(suite: str, run_ident: str | None, output: Path) -> None:
    """Write a self-contained HTML report of a run of SUITE (a suite file or name)."""
    from batcher.evals.report import write_report

    data = write_report(_runner().engine, suite, run_ident, output)
    flag = " (regression flagged)" if data.comparison and data.comparison["regressed"] else ""
    click.echo(f"wrote {output} for run {data.run['id']}{flag}")


@eval_group.command()
@click.argument("run_a")
@click.argument("run_b")
def compare(run_a: str, run_b: str) -> None:
    """Compare two runs (ids or unique prefixes): scores, regressions, and the items that flipped."""
    from batcher.evals import store
    from batcher.evals.compare import compare_runs, render_comparison
    from batcher.evals.report import resolve_run

    runner = _runner()
    with runner.engine.connect() as conn:
        a, b = resolve_run(conn, run_a), resolve_run(conn, run_b)
        rows_a, rows_b = store.results_of(conn, a["id"]), store.results_of(conn, b["id"])
    threshold = float((b["config"] or {}).get("regression", {}).get("threshold", 0.05))
    comparison = compare_runs(a, rows_a, b, rows_b, threshold)
    render_comparison(_console(), comparison, a["summary"], b["summary"])


@eval_group.command()
def tick() -> None:
    """Fire due schedules and move active runs on, once (what beat's batcher.eval_tick does)."""
    import json

    from batcher.evals.schedules import tick as run_tick

    click.echo(json.dumps(run_tick(_runner()).as_dict()))


@eval_group.group()
def schedule() -> None:
    """Nightly (or any cron) runs of a suite, fired by `batcher beat`."""


@schedule.command("add")
@click.argument("suite", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cron", help="Cron expression, e.g. '0 2 * * *' (default: the suite's schedule.cron).")
@click.option("--tz", "timezone", help="IANA time zone of the cron expression (default: the suite's, else UTC).")
def schedule_add(suite: Path, cron: str | None, timezone: str | None) -> None:
    """Schedule SUITE. Beat picks it up at its next tick; no restart needed."""
    from datetime import UTC, datetime

    from batcher.evals.schedules import add_schedule, next_tick

    row = add_schedule(_runner().engine, suite, cron=cron, timezone=timezone)
    upcoming = next_tick(row["cron"], row["timezone"], datetime.now(UTC))
    when = upcoming.strftime("%Y-%m-%d %H:%M UTC") if upcoming else "never"
    click.echo(f"schedule {row['id']}: {row['suite_name']} at {row['cron']!r} ({row['timezone']}); next run {when}")


@schedule.command("list")
def schedule_list() -> None:
    """Every schedule, its next firing and its last run."""
    from rich.table import Table

    from batcher.evals.schedules import list_schedules

    table = Table()
    for column in ("id", "suite", "cron", "time zone", "state", "next run (UTC)", "last run"):
        table.add_column(column)
    for s in list_schedules(_runner().engine):
        last = "-"
        if s["last_run_id"]:
            last = f"{s['last_scheduled_for']:%Y-%m-%d %H:%M} {s['last_run_state']}"
            if s["last_regressed"]:
                last += " (regressed)"
        table.add_row(
            str(s["id"]),
            f"{s['suite_name']}\n{s['suite_path']}",
            s["cron"],
            s["timezone"],
            "paused" if s["paused"] else "active",
            f"{s['next_at']:%Y-%m-%d %H:%M}" if s["next_at"] else "-",
            last,
        )
    _console().print(table)


@schedule.command("remove")
@click.argument("schedule_id")
def schedule_remove(schedule_id: str) -> None:
    """Delete a schedule (its past runs are kept)."""
    from batcher.evals.schedules import remove_schedule

    click.echo(f"removed schedule {remove_schedule(_runner().engine, schedule_id)}")


@schedule.command("pause")
@click.argument("schedule_id")
def schedule_pause(schedule_id: str) -> None:
    """Stop firing a schedule until it is resumed."""
    from batcher.evals.schedules import set_paused

    click.echo(f"paused schedule {set_paused(_runner().engine, schedule_id, True)}")


@schedule.command("resume")
@click.argument("schedule_id")
def schedule_resume(schedule_id: str) -> None:
    """Fire a paused schedule again from its next tick (missed ticks are not made up)."""
    from batcher.evals.schedules import set_paused

    click.echo(f"resumed schedule {set_paused(_runner().engine, schedule_id, False)}")
