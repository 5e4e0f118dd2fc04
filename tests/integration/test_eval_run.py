"""Evaluation runs end to end: a suite file, real workers, the fake provider, Postgres.

Models that answer right (the fake's echo repeats the prompt, which contains the answer),
wrong (a fixed answer), flakily (the first attempts fail with 500s) and not at all (400s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from batcher import Client
from batcher.evals.runner import EvalRunner
from batcher.evals.states import RunState
from batcher.evals.suite import Suite, load_suite
from batcher.testing import FakeProvider, ModelBehaviour
from tests.integration.helpers import rows

CAPITALS = [
    ("fr", "Paris is the capital of France. Which city is the capital of France?", "Paris"),
    ("de", "Berlin is the capital of Germany. Which city is the capital of Germany?", "Berlin"),
    ("it", "Rome is the capital of Italy. Which city is the capital of Italy?", "Rome"),
]


def write_suite(tmp_path: Path, name: str, body: str, items: list[dict[str, Any]]) -> Path:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: {name}\ndataset: data.jsonl\n{body}")
    return suite


def capitals(tmp_path: Path, name: str, models: str, scorers: str | None = None, extra: str = "") -> Path:
    scorers = scorers or (
        'scorers:\n  - type: contains\n  - type: regex\n    name: answered\n    pattern: "^(?!.*(?i:do not know))"\n'
    )
    items = [{"id": i, "prompt": p, "expected": e} for i, p, e in CAPITALS]
    return write_suite(tmp_path, name, f"models:\n{models}{scorers}{extra}", items)


def results(client: Client, run_id: uuid.UUID) -> dict[tuple[str, str], dict[str, Any]]:
    found = rows(
        client,
        "SELECT r.*, i.item_id FROM eval_results r JOIN eval_items i ON i.run_id = r.run_id AND i.idx = r.item_idx "
        "WHERE r.run_id = :id",
        id=run_id,
    )
    return {(r["model"], r["item_id"]): r for r in found}


def run_jobs(client: Client, run_id: uuid.UUID) -> list[dict[str, Any]]:
    return rows(
        client,
        "SELECT e.stage, j.id, j.total, j.state, j.cancelled, j.user_metadata FROM eval_run_jobs e "
        "JOIN jobs j ON j.id = e.job_id WHERE e.run_id = :id ORDER BY e.created_at",
        id=run_id,
    )


def test_suite_runs_as_one_job_and_scores_every_item(
    client: Client, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    fake_provider.set_behaviour("gpt-ev1-wrong", ModelBehaviour(answer="I do not know."))
    fake_provider.set_behaviour("claude-ev1-flaky", ModelBehaviour(fail_first_n=2, fail_first_status=500))
    fake_provider.set_behaviour("gpt-ev1-paris", ModelBehaviour(answer="Paris"))
    fake_provider.set_behaviour("command-ev1-down", ModelBehaviour(fail_always_status=400))
    suite_file = capitals(
        tmp_path,
        "ev1-capitals",
        "  - gpt-ev1-right\n"
        "  - gpt-ev1-wrong\n"
        "  - model: claude-ev1-flaky\n"
        "    params: {max_tokens: 64}\n"
        "  - gpt-ev1-paris\n"
        "  - command-ev1-down\n",
    )
    runner = EvalRunner(client)
    run_id, resumed = runner.start(load_suite(suite_file))
    assert not resumed
    assert runner.run(run_id, timeout=90) is RunState.COMPLETED

    # One batcher job carried every item x model, through the workers.
    jobs = run_jobs(client, run_id)
    assert [(j["stage"], j["total"], j["state"]) for j in jobs] == [("answers", 15, "completed")]
    assert jobs[0]["user_metadata"] == {"eval_run": str(run_id), "eval_stage": "answers"}
    flaky_sent = fake_provider.requests
    assert [r.status for r in flaky_sent if r.model == "claude-ev1-flaky"].count(500) == 2
    assert next(r for r in flaky_sent if r.model == "claude-ev1-flaky").body["max_tokens"] == 64

    got = results(client, run_id)
    expected_scores = {
        "gpt-ev1-right": {"fr": (1, 1), "de": (1, 1), "it": (1, 1)},
        "gpt-ev1-wrong": {"fr": (0, 0), "de": (0, 0), "it": (0, 0)},
        "claude-ev1-flaky": {"fr": (1, 1), "de": (1, 1), "it": (1, 1)},
        "gpt-ev1-paris": {"fr": (1, 1), "de": (0, 1), "it": (0, 1)},
        "command-ev1-down": {"fr": (0, 0), "de": (0, 0), "it": (0, 0)},
    }
    for model, by_item in expected_scores.items():
        for item_id, (contains, answered) in by_item.items():
            row = got[(model, item_id)]
            assert row["scores"]["contains"]["score"] == contains, (model, item_id, row)
            assert row["scores"]["answered"]["score"] == answered, (model, item_id, row)
            assert row["score"] == pytest.approx((contains + answered) / 2)
            assert row["passed"] is (contains == answered == 1)
    assert got[("gpt-ev1-right", "de")]["output"] == f"echo: {CAPITALS[1][1]}"
    assert got[("gpt-ev1-paris", "de")]["scores"]["contains"]["reason"] == "does not contain 'Berlin'"
    down = got[("command-ev1-down", "fr")]
    assert down["output"] is None and down["error_type"] == "BadRequestError"
    assert down["scores"]["contains"]["reason"].startswith("no answer: ")
    assert sum(got[("claude-ev1-flaky", i)]["attempts"] for i in ("fr", "de", "it")) == 5
    assert all(r["prompt_tokens"] and r["latency_ms"] is not None for k, r in got.items() if k[0] != "command-ev1-down")

    run = rows(client, "SELECT * FROM eval_runs WHERE id = :id", id=run_id)[0]
    assert run["comparison"] is None and run["regressed"] is False  # the suite's first run
    summary = {m["model"]: m for m in run["summary"]["models"]}
    assert summary["gpt-ev1-right"]["score"] == 1.0 and summary["gpt-ev1-right"]["pass_rate"] == 1.0
    assert summary["gpt-ev1-paris"]["score"] == pytest.approx(4 / 6)
    assert summary["gpt-ev1-paris"]["passed"] == 1
    assert summary["command-ev1-down"]["error_rate"] == 1.0 and summary["command-ev1-down"]["cost_usd"] is None
    assert summary["gpt-ev1-right"]["latency_p95_ms"] >= summary["gpt-ev1-right"]["latency_p50_ms"] > 0


def test_rerun_of_unchanged_suite_with_cache_sends_nothing(
    client: Client, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    fake_provider.set_behaviour("gpt-ev2-wrong", ModelBehaviour(answer="I do not know."))
    suite_file = capitals(tmp_path, "ev2-cached", "  - gpt-ev2-right\n  - gpt-ev2-wrong\n", extra="cache: true\n")
    runner = EvalRunner(client)
    first, _ = runner.start(load_suite(suite_file))
    assert runner.run(first, timeout=60) is RunState.COMPLETED
    sent = fake_provider.count(model="gpt-ev2-right") + fake_provider.count(model="gpt-ev2-wrong")
    assert sent == 6

    second, resumed = runner.start(load_suite(suite_file))
    assert second != first and not resumed
    assert runner.run(second, timeout=60) is RunState.COMPLETED
    assert fake_provider.count(model="gpt-ev2-right") + fake_provider.count(model="gpt-ev2-wrong") == sent
    assert run_jobs(client, second) == []
    again, before = results(client, second), results(client, first)
    assert all(row["cached"] for row in again.values())
    assert {k: (r["output"], r["score"]) for k, r in again.items()} == {
        k: (r["output"], r["score"]) for k, r in before.items()
    }
    summary = rows(client, "SELECT summary FROM eval_runs WHERE id = :id", id=second)[0]["summary"]
    right = next(m for m in summary["models"] if m["model"] == "gpt-ev2-right")
    assert (right["cached"], right["prompt_tokens"], right["cost_usd"]) == (3, 0, None)

    # Without the cache, the same suite is asked again.
    loaded = load_suite(suite_file)
    no_cache, _ = runner.start(Suite(loaded.spec.model_copy(update={"cache": False}), loaded.items, loaded.path))
    assert runner.run(no_cache, timeout=60) is RunState.COMPLETED
    assert fake_provider.count(model="gpt-ev2-right") == 6


def batcher_cli(env: dict[str, str], *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batcher.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_interrupted_run_resumes_without_paying_twice(
    client: Client, fake_provider: FakeProvider, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    """`eval run` is killed mid-run and its job cancelled; running it again finishes the same run,
    sending only what was never answered."""
    fake_provider.set_behaviour("gpt-ev3-slow", ModelBehaviour(latency_ms=1000))  # 2 waves of 20: time to cancel
    items = [{"id": f"q{i}", "prompt": f"question {i}", "expected": f"question {i}"} for i in range(30)]
    suite_file = write_suite(tmp_path, "ev3-resume", "models: [gpt-ev3-slow]\nscorers: [{type: contains}]\n", items)
    first = batcher_cli(cluster_env, "eval", "run", str(suite_file), "--no-progress")
    try:
        deadline = time.monotonic() + 60
        linked: list[dict[str, Any]] = []
        while not linked and time.monotonic() < deadline:
            linked = rows(
                client,
                "SELECT e.run_id, e.job_id FROM eval_run_jobs e JOIN eval_runs r ON r.id = e.run_id "
                "WHERE r.suite_name = 'ev3-resume'",
            )
            time.sleep(0.05)
        assert linked, "the run never submitted its job"
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.communicate(timeout=10)
    run_id, job_id = linked[0]["run_id"], linked[0]["job_id"]
    client.job(job_id).cancel()  # the interrupted job stops part-way
    first_job = client.job(job_id).wait(timeout=30)
    assert 0 < first_job.cancelled < 30 and first_job.succeeded == 30 - first_job.cancelled

    second = batcher_cli(cluster_env, "eval", "run", str(suite_file), "--no-progress")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"resuming run {run_id}" in out
    jobs = run_jobs(client, run_id)
    assert [j["total"] for j in jobs] == [30, first_job.cancelled]
    assert fake_provider.count(model="gpt-ev3-slow") == 30  # each question asked exactly once
    got = results(client, run_id)
    assert all(r["passed"] for r in got.values()) and len(got) == 30
    assert rows(client, "SELECT state FROM eval_runs WHERE id = :id", id=run_id)[0]["state"] == "completed"


def test_llm_judge_verdicts_come_through_the_queue(client: Client, fake_provider: FakeProvider, tmp_path: Path) -> None:
    fake_provider.set_behaviour("gpt-ev4-wrong", ModelBehaviour(answer="I do not know."))
    fake_provider.set_behaviour("gpt-ev4-judge", ModelBehaviour(answer="The answer names the city.\nVERDICT: PASS"))
    fake_provider.set_behaviour("claude-ev4-vague", ModelBehaviour(answer="It is hard to say."))
    suite_file = capitals(
        tmp_path,
        "ev4-judged",
        "  - gpt-ev4-right\n  - gpt-ev4-wrong\n",
        scorers=(
            "scorers:\n"
            "  - type: llm_judge\n"
            "    name: names-city\n"
            "    model: gpt-ev4-judge\n"
            "    rubric: The answer names the capital city.\n"
            "    params: {temperature: 0}\n"
            "  - type: llm_judge\n"
            "    name: vague-judge\n"
            "    model: claude-ev4-vague\n"
            "    rubric: Rate the answer.\n"
            "    scale: 10\n"
        ),
    )
    runner = EvalRunner(client)
    run_id, _ = runner.start(load_suite(suite_file))
    assert runner.run(run_id, timeout=90) is RunState.COMPLETED

    jobs = run_jobs(client, run_id)
    assert [(j["stage"], j["total"], j["state"]) for j in jobs] == [
        ("answers", 6, "completed"),
        ("judge", 12, "completed"),
    ]
    judged = [r for r in fake_provider.requests if r.model == "gpt-ev4-judge"]
    assert len(judged) == 6
    grading = judged[0].body["messages"]
    assert grading[0]["role"] == "system" and "VERDICT: PASS" in grading[0]["content"]
    assert "The answer names the capital city." in grading[1]["content"]
    assert any("I do not know." in r.body["messages"][1]["content"] for r in judged)
    assert judged[0].body["temperature"] == 0

    got = results(client, run_id)
    for item_id, _, _ in CAPITALS:
        for model in ("gpt-ev4-right", "gpt-ev4-wrong"):
            scores = got[(model, item_id)]["scores"]
            assert scores["names-city"] == {
                "score": 1.0,
                "passed": True,
                "reason": "The answer names the city. VERDICT: PASS",
            }
            assert scores["vague-judge"]["score"] == 0.0
            assert scores["vague-judge"]["reason"].startswith("judge verdict not understood")
    summary = rows(client, "SELECT summary FROM eval_runs WHERE id = :id", id=run_id)[0]["summary"]
    assert summary["judge"]["requests"] == 12 and summary["judge"]["prompt_tokens"] > 0
