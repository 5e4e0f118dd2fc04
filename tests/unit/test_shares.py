"""Priorities, quotas and standings as users see them (issue #15), without services: the checks, the
messages, what a status shows from a published standing, and the progress bar's place-in-line text."""

from __future__ import annotations

import io
import json
import pickle
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from batcher import InvalidRequestError, QuotaExceededError
from batcher._jobs import JobStatus, short_duration
from batcher._progress import ProgressBar
from batcher._quotas import MAX_RETRY_AFTER_S, QueueAdmission
from batcher._scheduling import DEFAULT_PRIORITY
from batcher._standing import PublishedStanding, parse, read, read_many
from batcher._validation import check_priority, split_call_kwargs
from batcher.api.auth import check_limits
from batcher.evals.spec import SuiteSpec

# --- priority ---------------------------------------------------------------------------------------


def test_priority_defaults_to_five_and_takes_zero_to_nine() -> None:
    assert split_call_kwargs({}).priority == DEFAULT_PRIORITY == 5
    assert [split_call_kwargs({"priority": p}).priority for p in (0, 9, 7.0)] == [0, 9, 7]
    assert "priority" not in split_call_kwargs({"priority": 3}).params  # batcher's option, not a provider's


@pytest.mark.parametrize("bad", [10, -1, "high", "5", True, 5.5, [5]])
def test_a_bad_priority_is_refused_naming_the_field_and_the_range(bad: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        split_call_kwargs({"priority": bad})
    assert caught.value.field == "priority"
    assert str(caught.value).startswith("priority: must be a whole number from 0 (lowest) to 9 (highest), default 5")


def test_the_batch_api_extension_is_named_as_sent() -> None:
    with pytest.raises(InvalidRequestError, match=r"^batcher_priority: must be a whole number from 0"):
        check_priority(12, "batcher_priority")


def test_a_suite_takes_a_priority_in_range() -> None:
    base: dict[str, Any] = {
        "name": "s",
        "dataset": "d.jsonl",
        "models": ["gpt-4o-mini"],
        "scorers": [{"type": "exact_match"}],
    }
    assert SuiteSpec.model_validate(base).priority == DEFAULT_PRIORITY
    assert SuiteSpec.model_validate({**base, "priority": 8}).priority == 8
    with pytest.raises(ValueError, match="priority"):
        SuiteSpec.model_validate({**base, "priority": 12})


# --- standing -----------------------------------------------------------------------------------------


def _row(**over: Any) -> dict[str, Any]:
    row = {
        "id": uuid.uuid4(),
        "kind": "batch",
        "state": "running",
        "total": 100,
        "succeeded": 10,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
        "params": {"params": {}},
        "user_metadata": None,
        "winner_index": None,
        "created_at": datetime.now(UTC),
        "started_at": None,
        "finished_at": None,
        "deadline_at": None,
        "priority": 7,
    }
    return row | over


def test_a_status_without_a_standing_shows_none() -> None:
    status = JobStatus.from_row(_row(), queued=80)
    assert (status.priority, status.queued) == (7, 80)
    assert (status.position, status.ahead, status.share, status.eta_s) == (None, None, None, None)
    assert status.standing_text() is None


def test_a_published_standing_gives_position_share_and_eta() -> None:
    standing = parse(json.dumps({"position": 2, "ahead": 1200, "share": 0.35, "rate": 3.0}))
    status = JobStatus.from_row(_row(), queued=80, standing=standing)
    assert (status.position, status.ahead, status.share) == (2, 1200, 0.35)
    assert status.eta_s == pytest.approx(90 / 3.0)  # 90 unfinished at 3/s
    assert status.standing_text() == "1,200 ahead · share 35 % · ETA 30s"


def test_no_rate_yet_means_no_eta_and_a_final_job_has_no_standing() -> None:
    standing = PublishedStanding(position=1, ahead=0, share=1.0, rate=0.0)
    assert JobStatus.from_row(_row(), standing=standing).eta_s is None
    done = JobStatus.from_row(_row(state="completed", succeeded=100), queued=3, standing=standing)
    assert (done.queued, done.position, done.share) == (0, None, None)


@pytest.mark.parametrize(
    "raw",
    [None, b"", b"not json", b"[]", json.dumps({"position": 1}), json.dumps({"position": "x", "ahead": 0, "share": 1})],
)
def test_a_missing_or_malformed_entry_is_no_standing(raw: Any) -> None:
    assert parse(raw) is None


class _DownRedis:
    def hget(self, *args: Any) -> Any:
        raise ConnectionError("Redis is away")

    def hmget(self, *args: Any) -> Any:
        raise ConnectionError("Redis is away")


def test_redis_away_is_no_standing_never_an_error() -> None:
    job = uuid.uuid4()
    assert read(_DownRedis(), job) is None and read_many(_DownRedis(), [job]) == {}
    assert read(None, job) is None


def test_short_durations() -> None:
    assert [short_duration(s) for s in (4.4, 59, 119, 3_599, 3_900, 90_000)] == [
        "4s",
        "59s",
        "2m",
        "59m",
        "1h05m",
        "1d01h",
    ]


def test_the_plain_progress_line_shows_the_place_in_line() -> None:
    out = io.StringIO()
    bar = ProgressBar("job 1234", Console(file=out, width=200), plain=True, get_time=lambda: 0.0)
    standing = PublishedStanding(position=3, ahead=40, share=0.25, rate=0.0)
    with bar:
        bar.update(JobStatus.from_row(_row(), queued=90, standing=standing))
    assert "in line: 40 ahead · share 25 %" in out.getvalue()


def test_the_live_bar_shows_the_place_in_line() -> None:
    out = io.StringIO()
    bar = ProgressBar("job 1234", Console(file=out, width=200, force_terminal=True), plain=False)
    standing = PublishedStanding(position=3, ahead=40, share=0.25, rate=2.0)
    with bar:
        bar.update(JobStatus.from_row(_row(), queued=90, standing=standing))
    assert "40 ahead · share 25 % · ETA 45s" in out.getvalue()


# --- quotas -----------------------------------------------------------------------------------------


KEY = uuid.UUID("00000000-0000-0000-0000-0000000000aa")


def test_a_job_that_fits_is_admitted_and_one_that_does_not_is_refused_with_the_counts() -> None:
    quota = QueueAdmission(key_id=KEY, limit=1_000, unfinished=900, rate=0.0)
    quota.admit(100)
    with pytest.raises(QuotaExceededError) as caught:
        quota.admit(101)
    exc = caught.value
    assert (exc.limit, exc.current, exc.requested, exc.retry_after_s) == (1_000, 900, 101, None)
    assert str(exc).startswith(
        f"max_queued_prompts: API key {KEY} may have at most 1,000 unfinished prompts (queued, running or "
        "retrying); it has 900, so this job's 101 prompts do not fit. Nothing was stored: wait for some of its "
        "jobs to finish, or ask an operator to raise the quota"
    )
    assert f"batcher keys set {KEY} --max-queued N" in str(exc)


def test_retry_after_is_when_enough_should_have_finished_at_the_key_s_rate() -> None:
    quota = QueueAdmission(key_id=KEY, limit=1_000, unfinished=900, rate=4.0)
    assert quota.refusal(300).retry_after_s == 50  # 200 must finish first, at 4/s
    assert quota.refusal(None).retry_after_s == 1  # full: one must finish
    slow = QueueAdmission(key_id=KEY, limit=1_000, unfinished=999, rate=0.001)
    assert slow.refusal(1_000).retry_after_s == MAX_RETRY_AFTER_S


def test_a_job_larger_than_the_quota_is_told_to_split_with_no_retry_after() -> None:
    refusal = QueueAdmission(key_id=KEY, limit=500, unfinished=0, rate=10.0).refusal(2_000)
    assert refusal.retry_after_s is None and "split it into jobs of at most 500 prompts" in str(refusal)


def test_quota_exceeded_pickles_with_its_figures() -> None:
    exc = QuotaExceededError("max_queued_prompts: full", limit=5, current=5, requested=1, retry_after_s=3.0)
    back = pickle.loads(pickle.dumps(exc))  # noqa: S301 (our own bytes)
    assert (str(back), back.limit, back.current, back.requested, back.retry_after_s) == (str(exc), 5, 5, 1, 3.0)


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"weight": 0}, "weight"),
        ({"weight": -1.5}, "weight"),
        ({"weight": float("inf")}, "weight"),
        ({"weight": None}, "weight"),
        ({"max_queued_prompts": 0}, "max_queued_prompts"),
        ({"max_concurrent_requests": -3}, "max_concurrent_requests"),
        ({"max_concurrent_requests": 2.5}, "max_concurrent_requests"),
        ({"priority": 3}, "priority"),
    ],
)
def test_key_limits_are_checked_naming_the_setting(limits: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_limits(limits)
    assert caught.value.field == field


def test_key_limits_that_are_fine_pass_and_none_clears_a_quota() -> None:
    ok = {"weight": 0.5, "max_concurrent_requests": 1, "max_queued_prompts": None}
    assert check_limits(ok) == ok
