"""The job commands as a newcomer uses them (issue #14): the short id of the progress bar is enough,
``results -o`` says what it wrote, ``status --json`` shows parameters as they were passed, progress
reaches a pipe, bad parameters are one line, and ``recover`` on a healthy cluster reports nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from batcher import Client, get_settings
from batcher._config import Settings
from batcher._db.engine import dispose_engines
from batcher.cli import main
from tests.conftest import PG_ADMIN_URL
from tests.integration.helpers import count_jobs


def batcher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _prompts(tmp_path: Path, count: int = 3) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(f"prompt {i}") + "\n" for i in range(count)))
    return prompts


def test_the_short_id_of_the_progress_bar_is_enough(
    client: Client, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    submitted = batcher(
        cluster_env, "submit", str(_prompts(tmp_path)), "-m", "gpt-4o-mini", "-p", "temperature=0.2", "-p", "seed=7"
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    short = job_id[:8]  # what the bar shows: "job 1a2b3c4d"

    # Piped (stderr is not a terminal): plain progress lines instead of a silent wait.
    waited = batcher(cluster_env, "wait", short, "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    assert f"job {short}: 3/3 done, 3 ok, 0 failed," in waited.stderr
    assert "\x1b[" not in waited.stderr

    status = batcher(cluster_env, "status", short, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["id"] == job_id
    assert data["params"] == {"temperature": 0.2, "seed": 7}  # one level, as passed (was {"params": {...}})

    out = tmp_path / "out.jsonl"
    got = batcher(cluster_env, "results", short.upper(), "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert got.stderr.strip() == f"wrote 3 lines (one per request, in input order) of job {job_id} to {out}"
    assert len(out.read_text().splitlines()) == 3

    cancelled = batcher(cluster_env, "cancel", job_id[:13])  # with its dash
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"{job_id}  batch  completed  3/3 done")


NOT_AN_ID = "is not a job id: give the id `batcher submit` printed, or at least its first 6 characters"


@pytest.mark.parametrize(
    ("ident", "message"),
    [
        ("1a2b", f"error: '1a2b' {NOT_AN_ID}"),
        ("job-1", f"error: 'job-1' {NOT_AN_ID}"),
        ("ffffffffffff", "error: no job id starts with 'ffffffffffff'"),
    ],
)
def test_job_ids_that_name_no_job_are_one_line(cluster_env: dict[str, str], ident: str, message: str) -> None:
    result = batcher(cluster_env, "status", ident)
    assert result.returncode == 2
    assert result.stderr.strip() == message


def test_an_ambiguous_prefix_is_refused(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs share a first hex digit once there are 17: with prefixes of one digit allowed, that digit is
    ambiguous and the command says so instead of picking one."""
    import batcher.cli as cli

    by_digit: dict[str, list[str]] = defaultdict(list)
    for _ in range(17):
        job = client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "x"}]], mock_response="ok")
        by_digit[str(job.id)[0]].append(str(job.id))
    digit = next(d for d, ids in by_digit.items() if len(ids) > 1)
    monkeypatch.setattr(cli, "MIN_JOB_PREFIX", 1)
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["status", digit])
    get_settings.cache_clear()
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith(f"error: '{digit}' is the start of several job ids (")
    assert line.endswith(", ...): give more of the id")


def test_a_bad_parameter_value_is_refused_naming_it(
    client: Client, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    before = count_jobs(client)
    result = batcher(cluster_env, "submit", str(_prompts(tmp_path)), "-m", "gpt-4o-mini", "-p", "temperature=hot")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: temperature: must be a number from 0 to 2, got 'hot'"
    assert count_jobs(client) == before


def test_a_mistyped_model_is_one_line_with_did_you_mean(cluster_env: dict[str, str], tmp_path: Path) -> None:
    result = batcher(cluster_env, "submit", str(_prompts(tmp_path)), "-m", "gtp-4o-mini")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: model: no provider is known for model 'gtp-4o-mini' (did you mean 'gpt-4o-mini'?): prefix it with"
    )
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def fresh_cluster_env(cluster_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A cluster of its own (new database, own queues) with no worker: nothing has ever gone wrong in it."""
    name = f"batcher_recover_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    tag = uuid.uuid4().hex[:8]
    queues = {"BATCHER_QUEUE": f"rec-{tag}", "BATCHER_RACE_QUEUE": f"rec-{tag}.r"}
    env = {**cluster_env, "BATCHER_DATABASE_URL": url, **queues}
    from batcher._migrate import upgrade

    upgrade(Settings(database_url=url))
    yield env
    settings = Settings(**{"database_url": url, "queue": env["BATCHER_QUEUE"], "race_queue": env["BATCHER_RACE_QUEUE"]})
    with Client(settings) as fresh:
        fresh.redis.delete(settings.queue, settings.race_queue)
    dispose_engines()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_recover_on_a_healthy_cluster_reports_nothing(fresh_cluster_env: dict[str, str], tmp_path: Path) -> None:
    """The first ``batcher recover`` of a new cluster, and the next, find nothing to repair: a job waits
    in its queue, fully published, and no worker was ever lost."""
    submitted = batcher(fresh_cluster_env, "submit", str(_prompts(tmp_path, 5)), "-m", "gpt-4o-mini")
    assert submitted.returncode == 0, submitted.stderr
    for _ in range(2):
        swept = batcher(fresh_cluster_env, "recover")
        assert swept.returncode == 0, swept.stderr
        report = json.loads(swept.stdout)
        assert report == dict.fromkeys(report, 0), report
        assert "broker_data_lost" not in report


def test_beat_leaves_nothing_in_the_working_directory(cluster_env: dict[str, str], tmp_path: Path) -> None:
    """``batcher beat`` keeps no schedule file (schedules live in Postgres): the directory it runs in stays empty."""
    with subprocess.Popen(
        [sys.executable, "-m", "batcher.cli", "beat"],
        env=cluster_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert first.startswith("batcher beat: contending for leadership"), first + err
    assert proc.returncode == 0, err
    assert list(tmp_path.iterdir()) == []
