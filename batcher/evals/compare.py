"""Comparing two runs of a suite: score deltas per model, regressions, and the items that flipped.

The same comparison is stored on a run when it completes (against the suite's previous run),
drives the regression webhook and ``--fail-on-regression``, is drawn in the HTML report, and is
printed by ``batcher eval compare``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batcher.evals.prices import format_usd

FLIP_TEXT_CHARS = 300
EPSILON = 1e-9


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= FLIP_TEXT_CHARS else text[: FLIP_TEXT_CHARS - 1] + "…"


def _why(row: Mapping[str, Any]) -> str | None:
    """The first failing scorer's reason: what made the item fail."""
    if row.get("output") is None:
        return f"no answer: {row.get('error_type') or 'error'}: {row.get('error') or ''}".strip()
    for name, score in (row.get("scores") or {}).items():
        if not score.get("passed"):
            return f"{name}: {score.get('reason') or 'failed'}"
    return None


def _flip(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "item_id": current["item_id"],
        "previous_output": _clip(previous.get("output")),
        "output": _clip(current.get("output")),
        "previous_score": previous.get("score"),
        "score": current.get("score"),
        "why": _clip(_why(current) if not current.get("passed") else f"was: {_why(previous)}"),
    }


def compare_runs(
    previous: Mapping[str, Any],
    previous_rows: Sequence[Mapping[str, Any]],
    run: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    threshold: float,
) -> dict[str, Any]:
    """``run`` against ``previous``. Models and items are matched by label and item id, so a suite
    that gained or lost items still compares on the ones both runs have."""
    before: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in previous_rows:
        before.setdefault(row["model"], {})[row["item_id"]] = row
    after: dict[str, dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        after.setdefault(row["model"], {})[row["item_id"]] = row
    labels = list(after) + [label for label in before if label not in after]

    models = []
    for label in labels:
        old, new = before.get(label, {}), after.get(label, {})
        common = [item_id for item_id in new if item_id in old]
        newly_failing = [_flip(old[i], new[i]) for i in common if old[i].get("passed") and not new[i].get("passed")]
        fixed = [_flip(old[i], new[i]) for i in common if not old[i].get("passed") and new[i].get("passed")]
        score = _mean([float(r["score"]) for r in new.values() if r.get("score") is not None])
        previous_score = _mean([float(r["score"]) for r in old.values() if r.get("score") is not None])
        delta = None if score is None or previous_score is None else score - previous_score
        models.append(
            {
                "model": label,
                "previous_score": previous_score,
                "score": score,
                "delta": delta,
                "regressed": delta is not None and -delta > threshold + EPSILON,
                "newly_failing": newly_failing,
                "fixed": fixed,
            }
        )
    return {
        "run_id": str(run["id"]),
        "previous_run_id": str(previous["id"]),
        "previous_created_at": previous["created_at"].isoformat() if previous.get("created_at") else None,
        "threshold": threshold,
        "regressed": any(m["regressed"] for m in models),
        "models": models,
    }


def regression_text(suite_name: str, comparison: Mapping[str, Any]) -> str:
    """One line per regressed model, e.g. for a chat message."""
    lines = []
    for m in comparison["models"]:
        if not m["regressed"]:
            continue
        failing = ", ".join(f["item_id"] for f in m["newly_failing"][:10]) or "none"
        more = f" (+{len(m['newly_failing']) - 10} more)" if len(m["newly_failing"]) > 10 else ""
        lines.append(
            f"{m['model']}: score {m['previous_score']:.3f} -> {m['score']:.3f} ({m['delta']:+.3f}); "
            f"now failing: {failing}{more}"
        )
    return f"batcher eval: suite {suite_name!r} regressed\n" + "\n".join(lines)


def webhook_payload(run: Mapping[str, Any], comparison: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON POSTed on a regression. ``text`` makes it readable by chat incoming-webhooks."""
    return {
        "event": "batcher.eval.regression",
        "suite": run["suite_name"],
        "run_id": str(run["id"]),
        "previous_run_id": comparison["previous_run_id"],
        "threshold": comparison["threshold"],
        "text": regression_text(run["suite_name"], comparison),
        "models": [
            {
                "model": m["model"],
                "previous_score": m["previous_score"],
                "score": m["score"],
                "delta": m["delta"],
                "newly_failing": [f["item_id"] for f in m["newly_failing"]],
                "fixed": [f["item_id"] for f in m["fixed"]],
            }
            for m in comparison["models"]
            if m["regressed"]
        ],
    }


# --- the terminal table --------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".3f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def render_comparison(
    console: Any,
    comparison: Mapping[str, Any],
    summary_a: Mapping[str, Any] | None,
    summary_b: Mapping[str, Any] | None,
) -> None:
    """Print the comparison as rich tables: per model, then the items that flipped."""
    from rich.table import Table

    figures_a = {m["model"]: m for m in (summary_a or {}).get("models", [])}
    figures_b = {m["model"]: m for m in (summary_b or {}).get("models", [])}
    a, b = comparison["previous_run_id"][:8], comparison["run_id"][:8]
    table = Table(title=f"run {a} -> run {b} (regression: score drop > {comparison['threshold']:.3f})")
    for column in ("model", f"score {a}", f"score {b}", "delta", "pass rate", "error rate", "p50 / p95 ms", "cost"):
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_column("status")
    for m in comparison["models"]:
        fa, fb = figures_a.get(m["model"], {}), figures_b.get(m["model"], {})
        delta = _fmt(m["delta"], "+.3f")
        status = "[red]REGRESSED[/]" if m["regressed"] else ("[green]improved[/]" if (m["delta"] or 0) > 0 else "ok")
        table.add_row(
            m["model"],
            _fmt(m["previous_score"]),
            _fmt(m["score"]),
            f"[red]{delta}[/]" if m["regressed"] else delta,
            f"{_fmt(fa.get('pass_rate'), '.0%')} -> {_fmt(fb.get('pass_rate'), '.0%')}",
            f"{_fmt(fa.get('error_rate'), '.0%')} -> {_fmt(fb.get('error_rate'), '.0%')}",
            f"{_fmt(fb.get('latency_p50_ms'), '.0f')} / {_fmt(fb.get('latency_p95_ms'), '.0f')}",
            f"{format_usd(fa.get('cost_usd'))} -> {format_usd(fb.get('cost_usd'))}",
            status,
        )
    console.print(table)
    flips = [(m["model"], "now fails", f) for m in comparison["models"] for f in m["newly_failing"]]
    flips += [(m["model"], "fixed", f) for m in comparison["models"] for f in m["fixed"]]
    if not flips:
        console.print("no item changed between pass and fail")
        return
    items = Table(title="items that flipped")
    for column in ("model", "item", "change", f"answer in {a}", f"answer in {b}", "why"):
        items.add_column(column, overflow="fold")
    for model, change, flip in flips:
        items.add_row(
            model,
            flip["item_id"],
            f"[red]{change}[/]" if change == "now fails" else f"[green]{change}[/]",
            flip["previous_output"] or "(no answer)",
            flip["output"] or "(no answer)",
            flip["why"] or "",
        )
    console.print(items)
