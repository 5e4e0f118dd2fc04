"""Summaries, comparisons, cron arithmetic, charts and the HTML report, on data built in memory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from batcher.evals.charts import bar_chart, trend_chart
from batcher.evals.compare import compare_runs, regression_text, webhook_payload
from batcher.evals.prices import Price, cost_usd, format_usd, price_for
from batcher.evals.report import ReportData, render_html
from batcher.evals.schedules import due_tick, next_tick
from batcher.evals.store import Outcome
from batcher.evals.suite import Item, SuiteSpec
from batcher.evals.summary import percentile, summarise

SPEC = SuiteSpec.model_validate(
    {
        "name": "caps",
        "dataset": "d.jsonl",
        "models": ["gpt-4o-mini", {"model": "openai/local", "name": "local"}],
        "scorers": [{"type": "contains"}, {"type": "llm_judge", "name": "judge", "model": "gpt-4o", "rubric": "r"}],
    }
)


def row(model_idx: int, item: str, *, passed: bool, score: float, **extra: Any) -> dict[str, Any]:
    base = {
        "model_idx": model_idx,
        "item_idx": {"fr": 0, "de": 1, "it": 2}[item],
        "item_id": item,
        "model": ["gpt-4o-mini", "local"][model_idx],
        "output": "answer",
        "error": None,
        "error_type": None,
        "cached": False,
        "latency_ms": 100.0,
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "passed": passed,
        "score": score,
        "scores": {"contains": {"score": score, "passed": passed}, "judge": {"score": score, "passed": passed}},
    }
    return {**base, **extra}


def test_percentile_interpolates() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(i) for i in range(1, 101)], 0.95) == pytest.approx(95.05)


def test_prices_cost_and_unknown_models() -> None:
    assert price_for("gpt-4o-mini") == Price(input=0.15, output=0.60)
    assert price_for("openai/gpt-4o-mini") == Price(input=0.15, output=0.60)
    assert price_for("openai/local") is None
    assert price_for("openai/local", table={"openai/local": Price(input=0, output=0)}) == Price(input=0, output=0)
    assert price_for("gpt-4o-mini", override=Price(input=1, output=1)) == Price(input=1, output=1)
    assert cost_usd(Price(input=2, output=10), 1_000_000, 100_000) == pytest.approx(3.0)
    assert cost_usd(None, 10, 10) is None
    assert (format_usd(None), format_usd(0.0), format_usd(0.5), format_usd(0.00003)) == (
        "n/a",
        "$0.0000",
        "$0.5000",
        "$0.000030",
    )


def test_summary_counts_only_what_this_run_paid_for() -> None:
    rows = [
        row(0, "fr", passed=True, score=1.0, latency_ms=100.0),
        row(0, "de", passed=True, score=1.0, latency_ms=300.0),
        row(0, "it", passed=False, score=0.0, cached=True, latency_ms=5.0),
        row(1, "fr", passed=False, score=0.0, output=None, error="boom", prompt_tokens=None, completion_tokens=None),
        row(1, "de", passed=True, score=1.0),
        row(1, "it", passed=True, score=0.5),
    ]
    judged = {"judge": {"k1": Outcome("k1", output="VERDICT: PASS", prompt_tokens=200, completion_tokens=10)}}
    summary = summarise(SPEC, rows, judged, {})
    mini, local = summary["models"]
    assert mini["model"] == "gpt-4o-mini" and mini["score"] == pytest.approx(2 / 3)
    assert (mini["passed"], mini["pass_rate"], mini["errors"], mini["cached"]) == (2, pytest.approx(2 / 3), 0, 1)
    assert (mini["latency_p50_ms"], mini["latency_p95_ms"]) == (200.0, 290.0)  # the cached answer's is left out
    assert (mini["prompt_tokens"], mini["completion_tokens"]) == (2000, 200)
    assert mini["cost_usd"] == pytest.approx((2000 * 0.15 + 200 * 0.60) / 1e6)
    assert (local["errors"], local["error_rate"], local["cost_usd"]) == (1, pytest.approx(1 / 3), None)
    assert local["scorers"] == {"contains": pytest.approx(0.5), "judge": pytest.approx(0.5)}
    assert summary["judge"] == {
        "requests": 1,
        "prompt_tokens": 200,
        "completion_tokens": 10,
        "cost_usd": pytest.approx((200 * 2.5 + 10 * 10) / 1e6),
    }


def run(created: datetime, **extra: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "suite_name": "caps", "created_at": created, **extra}


def test_comparison_flags_drops_beyond_the_threshold_and_names_flipped_items() -> None:
    t0 = datetime(2026, 1, 1, 2, tzinfo=UTC)
    before = [row(0, i, passed=True, score=1.0) for i in ("fr", "de", "it")]
    before += [row(1, "fr", passed=False, score=0.0, output="Lyon"), row(1, "de", passed=True, score=1.0)]
    after = [
        row(0, "fr", passed=True, score=1.0),
        row(0, "de", passed=False, score=0.0, output="Paris"),
        row(0, "it", passed=True, score=0.9),
    ]
    after += [
        row(1, "fr", passed=True, score=1.0),
        row(1, "de", passed=True, score=1.0),
        row(1, "it", passed=True, score=1.0),
    ]
    previous, current = run(t0), run(t0 + timedelta(days=1))
    comparison = compare_runs(previous, before, current, after, threshold=0.05)
    mini, local = comparison["models"]
    assert comparison["regressed"] is True
    assert (mini["previous_score"], mini["score"], mini["regressed"]) == (1.0, pytest.approx(1.9 / 3), True)
    assert [f["item_id"] for f in mini["newly_failing"]] == ["de"] and mini["fixed"] == []
    flip = mini["newly_failing"][0]
    assert (flip["previous_output"], flip["output"], flip["previous_score"], flip["score"]) == (
        "answer",
        "Paris",
        1.0,
        0.0,
    )
    assert flip["why"] == "contains: failed"
    assert local["regressed"] is False and [f["item_id"] for f in local["fixed"]] == ["fr"]  # "it" is new: no flip
    # A drop no larger than the threshold is no regression.
    assert not compare_runs(previous, before, current, after, threshold=0.5)["regressed"]

    text = regression_text("caps", comparison)
    assert text == "batcher eval: suite 'caps' regressed\ngpt-4o-mini: score 1.000 -> 0.633 (-0.367); now failing: de"
    payload = webhook_payload(current, comparison)
    assert payload["event"] == "batcher.eval.regression" and payload["text"] == text
    assert payload["models"] == [
        {
            "model": "gpt-4o-mini",
            "previous_score": 1.0,
            "score": pytest.approx(1.9 / 3),
            "delta": pytest.approx(1.9 / 3 - 1),
            "newly_failing": ["de"],
            "fixed": [],
        }
    ]


def test_due_and_next_ticks_in_a_time_zone_across_dst() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 02:00 Paris is 01:00 UTC in winter, 00:00 UTC in summer.
    assert due_tick("0 2 * * *", "Europe/Paris", datetime(2026, 1, 10, 1, 0, 0, tzinfo=UTC)) == datetime(
        2026, 1, 10, 1, 0, tzinfo=UTC
    )
    assert due_tick("0 2 * * *", "Europe/Paris", datetime(2026, 1, 10, 0, 59, 59, 999999, tzinfo=UTC)) == datetime(
        2026, 1, 9, 1, 0, tzinfo=UTC
    )
    assert due_tick("0 2 * * *", "Europe/Paris", datetime(2026, 7, 10, 12, tzinfo=UTC)) == datetime(
        2026, 7, 10, 0, 0, tzinfo=UTC
    )
    assert next_tick("0 2 * * *", "Europe/Paris", datetime(2026, 7, 10, 0, 0, tzinfo=UTC)) == datetime(
        2026, 7, 11, 0, 0, tzinfo=UTC
    )
    # 02:30 does not exist on 29 March 2026 in Paris: like Debian's cron, it runs at 03:00 that day.
    spring = due_tick("30 2 * * *", "Europe/Paris", datetime(2026, 3, 29, 12, tzinfo=UTC))
    assert spring is not None and spring.astimezone(paris).hour == 3
    assert due_tick("*/5 * * * *", "UTC", datetime(2026, 1, 1, 10, 7, 30, tzinfo=UTC)) == datetime(
        2026, 1, 1, 10, 5, tzinfo=UTC
    )


def test_charts_escape_labels_and_draw_every_point() -> None:
    bars = bar_chart([("<script>x</script>", 0.5), ("b", None)], chart_id="c", title="t & u")
    assert "<script>" not in bars and "&lt;script&gt;" in bars and "t &amp; u" in bars
    assert bars.count('class="bar"') == 2 and "n/a" in bars
    runs = [(str(uuid.uuid4()), f"01-0{i} 02:00") for i in range(1, 4)]
    trend = trend_chart(runs, {"a": [0.5, 0.6, None], "b": [1.0, 1.0, 1.0]}, chart_id="t", title="t", current=2)
    assert trend.count('class="point"') == 5 and trend.count('class="line"') == 2 and 'class="current"' in trend


def test_report_html_is_self_contained_and_escapes_answers() -> None:
    t0 = datetime(2026, 1, 1, 2, tzinfo=UTC)
    config = SPEC.model_dump(mode="json", by_alias=True)
    previous_rows = [row(0, i, passed=True, score=1.0) for i in ("fr", "de")]
    rows = [row(0, "fr", passed=True, score=1.0), row(0, "de", passed=False, score=0.0, output="<img src=x onerror=1>")]
    rows += [row(1, "fr", passed=True, score=1.0)]  # (no row for local x de: shown as a blank cell)
    summary = summarise(SPEC, rows, {}, {})
    previous = run(t0, summary=summarise(SPEC, previous_rows, {}, {}), state="completed")
    current = run(t0 + timedelta(days=1), summary=summary, config=config, trigger="schedule", state="completed")
    current.update(scheduled_for=t0 + timedelta(days=1), finished_at=t0 + timedelta(days=1, minutes=1))
    comparison = compare_runs(previous, previous_rows, current, rows, 0.05)
    items = {0: Item(0, "fr", [{"role": "user", "content": "Q fr"}], "Paris"), 1: Item(1, "de", [], "Berlin")}
    html = render_html(ReportData(current, rows, items, comparison, previous, [previous, current]))
    assert "<script" not in html and "<img" not in html and "&lt;img src=x onerror=1&gt;" in html
    assert 'id="chart-scores"' in html and 'id="chart-trend"' in html and 'id="regression-badge"' in html
    assert '<tr class="flip newly-failing"><td class="item-id">de</td>' in html
    assert "$" in html and "n/a" in html  # gpt-4o-mini has a price; "local" has none
