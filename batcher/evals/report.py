"""The HTML report of a run: one self-contained file (inline CSS and SVG; nothing is fetched).

Per model: score, pass and error rates, latency p50/p95, tokens and cost; charts of the score
per model and of the trend over past runs; the comparison with the previous run, naming the
items that flipped; and every answer with its scores.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment
from markupsafe import Markup
from sqlalchemy import Connection, Engine

from batcher.evals import store
from batcher.evals.charts import bar_chart, colour, trend_chart
from batcher.evals.compare import compare_runs
from batcher.evals.errors import RunNotFoundError
from batcher.evals.prices import format_usd
from batcher.evals.settings import EvalSettings
from batcher.evals.suite import peek_suite_name


@dataclass
class ReportData:
    run: dict[str, Any]
    rows: list[dict[str, Any]]
    items: dict[int, Any]
    comparison: dict[str, Any] | None
    previous: dict[str, Any] | None
    history: list[dict[str, Any]]


def resolve_run(conn: Connection, ident: str) -> dict[str, Any]:
    """A run by id or unique id prefix (at least 6 characters)."""
    ident = ident.strip()
    try:
        run = store.get_run(conn, uuid.UUID(ident))
    except ValueError:
        matches = store.find_runs_by_prefix(conn, ident) if len(ident) >= 6 else []
        if len(matches) > 1:
            raise RunNotFoundError(f"{ident!r} matches several runs; give more of the id") from None
        run = store.get_run(conn, matches[0]) if matches else None
    if run is None:
        raise RunNotFoundError(f"no evaluation run {ident!r}; see `batcher eval runs`")
    return run


def suite_name_of(suite: str) -> str:
    """``SUITE`` on the command line: a suite file (its ``name``) or a suite name."""
    path = Path(suite)
    if path.is_file():
        name = peek_suite_name(path)
        if name is None:
            raise RunNotFoundError(f"{suite} has no suite name (is it a suite file?)")
        return name
    return suite


def gather(engine: Engine, suite: str | None, run_ident: str | None, *, history: int) -> ReportData:
    """Everything a report shows, read from Postgres."""
    with engine.connect() as conn:
        if run_ident:
            run = resolve_run(conn, run_ident)
            if suite is not None and run["suite_name"] != suite_name_of(suite):
                raise RunNotFoundError(f"run {run['id']} is a run of suite {run['suite_name']!r}, not {suite!r}")
        else:
            assert suite is not None
            name = suite_name_of(suite)
            found = store.latest_run(conn, name)
            if found is None:
                raise RunNotFoundError(f"suite {name!r} has no completed run yet; run `batcher eval run SUITE.yaml`")
            run = found
        if run["state"] != "completed":
            why = f": {run['error']}" if run.get("error") else ""
            raise RunNotFoundError(f"run {run['id']} is {run['state']}{why}; a report needs a completed run")
        rows = store.results_of(conn, run["id"])
        items = {item.idx: item for item in store.items_of(conn, run["id"])}
        previous = store.previous_completed_run(conn, run["suite_name"], run["id"])
        comparison = run["comparison"]
        if previous is not None and (comparison is None or comparison.get("previous_run_id") != str(previous["id"])):
            threshold = float(run["config"].get("regression", {}).get("threshold", 0.05))
            comparison = compare_runs(previous, store.results_of(conn, previous["id"]), run, rows, threshold)
        past = store.runs_of_suite(conn, run["suite_name"], limit=history, until=run["created_at"])
    return ReportData(run, rows, items, comparison if previous else None, previous, past)


def render_html(data: ReportData) -> str:
    run, summary = data.run, data.run["summary"] or {"models": []}
    models = summary["models"]
    scores_chart = bar_chart(
        [(m["model"], m["score"]) for m in models], chart_id="chart-scores", title="Mean score by model"
    )
    labels = [m["model"] for m in models]
    series: dict[str, list[float | None]] = {label: [] for label in labels}
    for past in data.history:
        by_model = {m["model"]: m["score"] for m in (past["summary"] or {}).get("models", [])}
        for label in labels:
            series[label].append(by_model.get(label))
    current = next((i for i, past in enumerate(data.history) if past["id"] == run["id"]), None)
    trend = trend_chart(
        [(str(p["id"]), p["created_at"].strftime("%m-%d %H:%M")) for p in data.history],
        series,
        chart_id="chart-trend",
        title=f"Score over the last {len(data.history)} runs",
        current=current,
    )
    # In suite order (the stored JSON objects do not keep key order).
    scorer_names = [s.get("name") or s["type"] for s in run["config"].get("scorers", [])]
    grid: dict[int, dict[int, dict[str, Any]]] = {}
    for row in data.rows:
        grid.setdefault(row["item_idx"], {})[row["model_idx"]] = row
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, pct=_pct, money=format_usd, ms=_ms, prompt=_prompt, colour=colour, json=_json_text)
    return env.from_string(_template()).render(
        run=run,
        summary=summary,
        models=models,
        scorer_names=scorer_names,
        comparison=data.comparison,
        previous=data.previous,
        charts=Markup(scores_chart + trend),  # noqa: S704 -- built from escaped parts in batcher.evals.charts
        items=data.items,
        grid=grid,
        threshold=float(run["config"].get("regression", {}).get("threshold", 0.05)),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def write_report(
    engine: Engine, suite: str | None, run_ident: str | None, output: Path, settings: EvalSettings | None = None
) -> ReportData:
    data = gather(engine, suite, run_ident, history=(settings or EvalSettings()).history_runs)
    output.write_text(render_html(data), encoding="utf-8")
    return data


# --- formatting ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} ms"


def _prompt(messages: Sequence[Mapping[str, Any]], limit: int = 160) -> str:
    text = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            text = content if isinstance(content, str) else str(content)
            break
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _template() -> str:
    return resources.files("batcher.evals").joinpath("templates/report.html.j2").read_text(encoding="utf-8")


def _json_text(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)
