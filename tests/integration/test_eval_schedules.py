"""Schedules: stored in Postgres, managed from the CLI, fired exactly once per tick.

The tick is driven directly (``tick(runner, now=...)``) instead of waiting for a night; two
tickers run at the same time to stand for two beat processes started by mistake.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from click.testing import CliRunner

from batcher import Client, get_settings
from batcher.cli import main
from batcher.evals.runner import EvalRunner
from batcher.evals.schedules import add_schedule, remove_schedule, set_paused, tick
from batcher.testing import FakeProvider, ModelBehaviour
from tests.integration.helpers import rows


def batcher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args],
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def small_suite(tmp_path: Path, name: str, model: str, extra: str = "") -> Path:
    (tmp_path / "data.jsonl").write_text(json.dumps({"id": "one", "prompt": "say one", "expected": "one"}) + "\n")
    suite = tmp_path / f"{name}.yaml"
    suite.write_text(f"name: {name}\ndataset: data.jsonl\nmodels: [{model}]\nscorers: [{{type: contains}}]\n{extra}")
    return suite


def runs_of(client: Client, schedule_id: Any) -> list[dict[str, Any]]:
    return rows(
        client,
        "SELECT id, state, trigger, scheduled_for, error FROM eval_runs WHERE schedule_id = :id ORDER BY scheduled_for",
        id=schedule_id,
    )


def test_schedule_commands_store_list_pause_and_remove(
    client: Client, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    suite = small_suite(tmp_path, "evs-cli", "gpt-evs-cli", "schedule: {cron: '30 1 * * *', timezone: Asia/Tokyo}\n")
    added = batcher(cluster_env, "eval", "schedule", "add", str(suite), "--cron", "0 2 * * *", "--tz", "Europe/Paris")
    assert added.returncode == 0, added.stderr
    schedule_id = added.stdout.split()[1].rstrip(":")
    assert "'0 2 * * *' (Europe/Paris)" in added.stdout
    stored = rows(client, "SELECT * FROM eval_schedules WHERE id = :id", id=schedule_id)[0]
    assert (stored["cron"], stored["timezone"], stored["paused"]) == ("0 2 * * *", "Europe/Paris", False)
    assert stored["suite_path"] == str(suite.resolve())

    # The other commands in-process (the same click commands, without a Python start-up each).
    def cli(*args: str) -> Any:
        get_settings.cache_clear()  # read the session's environment, whatever read settings before
        return CliRunner().invoke(main, ["eval", "schedule", *args], env={"COLUMNS": "250"})

    own = cli("add", str(suite))  # no --cron: the suite's own schedule
    assert own.exit_code == 0 and "'30 1 * * *' (Asia/Tokyo)" in own.stdout
    twice = cli("add", str(suite))
    assert twice.exit_code == 2 and "already scheduled" in twice.stderr
    bad = cli("add", str(suite), "--cron", "0 2 * *", "--tz", "UTC")
    assert bad.exit_code == 2 and "not a 5-field cron expression" in bad.stderr

    assert cli("pause", schedule_id[:8]).exit_code == 0
    line = next(row for row in cli("list").stdout.splitlines() if schedule_id in row)
    assert "0 2 * * *" in line and "Europe/Paris" in line and "paused" in line
    assert cli("resume", schedule_id).exit_code == 0
    assert rows(client, "SELECT paused FROM eval_schedules WHERE id = :id", id=schedule_id)[0]["paused"] is False

    for ident in (schedule_id, own.stdout.split()[1].rstrip(":")):
        assert cli("remove", ident).exit_code == 0
    assert rows(client, "SELECT count(*) AS n FROM eval_schedules WHERE suite_name = 'evs-cli'")[0]["n"] == 0
    unknown = cli("remove", schedule_id)
    assert unknown.exit_code == 2 and "no schedule" in unknown.stderr


def test_a_tick_fires_once_even_with_two_tickers(client: Client, settings: Any, tmp_path: Path) -> None:
    """Two beats by mistake: both tick at the same moments; each due time fires exactly one run."""
    suite = small_suite(tmp_path, "evs-once", "gpt-evs-once")
    schedule = add_schedule(client.engine, suite, cron="*/5 * * * *", timezone="UTC")
    base = schedule["active_since"].replace(second=0, microsecond=0) + timedelta(minutes=10)
    base -= timedelta(minutes=base.minute % 5)  # a due time of the cron expression
    runners = [EvalRunner(Client(settings)), EvalRunner(Client(settings))]
    try:
        for k in range(4):
            now = base + timedelta(minutes=5 * k, seconds=20)
            barrier = threading.Barrier(2)

            def beat(runner: EvalRunner, now: datetime = now, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                tick(runner, now=now)

            threads = [threading.Thread(target=beat, args=(r,)) for r in runners]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            # The same tick again, later within the same five minutes: nothing new.
            tick(runners[0], now=now + timedelta(minutes=2))
    finally:
        for r in runners:
            r.client.close()
    remove_schedule(client.engine, str(schedule["id"]))  # its runs stay
    fired = rows(
        client, "SELECT scheduled_for, trigger FROM eval_runs WHERE suite_name = 'evs-once' ORDER BY scheduled_for"
    )
    assert [r["scheduled_for"] for r in fired] == [base + timedelta(minutes=5 * k) for k in range(4)]
    assert all(r["trigger"] == "schedule" for r in fired)


def test_scheduled_run_completes_through_ticks_and_pause_stops_it(
    client: Client, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    fake_provider.set_behaviour("gpt-evs-night", ModelBehaviour(answer="it is one"))
    suite = small_suite(tmp_path, "evs-night", "gpt-evs-night")
    schedule = add_schedule(client.engine, suite, cron="0 2 * * *", timezone="Europe/Paris")
    runner = EvalRunner(client)
    # The first 2 am in Paris after the schedule started (its tick one minute before still after the start),
    # so no other 2 am falls between: between midnight and 2 am in Paris that is today's, not tomorrow's.
    paris = ZoneInfo("Europe/Paris")
    since = schedule["active_since"].astimezone(paris)
    two_am_paris = datetime(since.year, since.month, since.day, 2, 0, tzinfo=paris)
    if two_am_paris - timedelta(minutes=1) <= since:
        day = since.date() + timedelta(days=1)
        two_am_paris = datetime(day.year, day.month, day.day, 2, 0, tzinfo=paris)
    tick(runner, now=two_am_paris - timedelta(minutes=1))
    assert runs_of(client, schedule["id"]) == []

    tick(runner, now=two_am_paris + timedelta(seconds=30))
    (run,) = runs_of(client, schedule["id"])
    assert run["scheduled_for"] == two_am_paris and run["state"] == "answering"
    deadline = time.monotonic() + 60
    while run["state"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
        tick(runner, now=two_am_paris + timedelta(minutes=1))
        (run,) = runs_of(client, schedule["id"])
    assert run["state"] == "completed"
    result = rows(client, "SELECT output, passed FROM eval_results WHERE run_id = :id", id=run["id"])
    assert result == [{"output": "it is one", "passed": True}]

    # Paused: the next night passes without a run; resumed: it fires again from then on.
    set_paused(client.engine, str(schedule["id"]), True)
    tick(runner, now=two_am_paris + timedelta(days=1, seconds=5))
    set_paused(client.engine, str(schedule["id"]), False, now=two_am_paris + timedelta(days=1, minutes=2))
    tick(runner, now=two_am_paris + timedelta(days=1, minutes=3))  # the night missed while paused is not made up
    assert len(runs_of(client, schedule["id"])) == 1
    remove_schedule(client.engine, str(schedule["id"]))


def test_schedule_whose_suite_broke_records_one_failed_run(client: Client, tmp_path: Path) -> None:
    suite = small_suite(tmp_path, "evs-broken", "gpt-evs-broken")
    schedule = add_schedule(client.engine, suite, cron="0 3 * * *", timezone="UTC")
    suite.write_text(suite.read_text().replace("type: contains", "type: containz"))
    runner = EvalRunner(client)
    day = schedule["active_since"].date() + timedelta(days=1)
    now = datetime(day.year, day.month, day.day, 3, 0, 10, tzinfo=UTC)
    tick(runner, now=now)
    tick(runner, now=now + timedelta(minutes=1))
    (run,) = runs_of(client, schedule["id"])
    assert run["state"] == "failed" and "'containz' is not a scorer type" in run["error"]
    remove_schedule(client.engine, str(schedule["id"]))
