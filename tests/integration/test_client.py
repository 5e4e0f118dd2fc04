"""``Client`` / ``Job``: submit returns at once, status, wait, results, cancel, reattach."""

from __future__ import annotations

import time
import uuid

import pytest

from batcher import Client, JobKind, JobNotFoundError, JobState, RequestCancelledError, WaitTimeoutError
from batcher.testing import FakeProvider, ModelBehaviour
from tests.integration.helpers import requests_of


@pytest.fixture
def client(any_client: Client) -> Client:
    """Every scenario here runs twice: against the cluster and embedded in-process."""
    return any_client


def test_submit_returns_before_the_work_is_done(client: Client, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-client-slow", ModelBehaviour(latency_ms=300))
    job = client.submit(model="gpt-client-slow", messages=[[{"role": "user", "content": f"{i}"}] for i in range(40)])
    first = job.status()
    assert first.total == 40 and first.kind is JobKind.BATCH
    assert first.state in (JobState.QUEUED, JobState.RUNNING) and first.done < 40
    with pytest.raises(WaitTimeoutError, match="goes on running"):
        job.wait(timeout=0.05)
    final = job.wait(timeout=60)
    assert final.state is JobState.COMPLETED and final.progress == 1.0


def test_reattach_from_a_new_client(client: Client, settings: object) -> None:
    job = client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "reattach me"}]])
    with Client(client.settings) as other:
        again = other.job(str(job.id))
        assert again.wait(timeout=30).succeeded == 1
        [result] = list(again.results())
        assert result.response is not None and "reattach me" in result.response.choices[0].message.content


def test_unknown_job(client: Client) -> None:
    with pytest.raises(JobNotFoundError):
        client.job(uuid.uuid4())
    with pytest.raises(JobNotFoundError, match="not a job id"):
        client.job("nope")


def test_cancel_mid_batch_keeps_partial_results(client: Client, fake_provider: FakeProvider) -> None:
    model = f"gpt-cancel-me-{uuid.uuid4().hex[:6]}"
    fake_provider.set_behaviour(model, ModelBehaviour(latency_ms=200))
    n = 200
    job = client.submit(model=model, messages=[[{"role": "user", "content": f"c{i}"}] for i in range(n)])
    while job.status().succeeded < 10:
        time.sleep(0.02)
    job.cancel()
    sent_at_cancel = fake_provider.count(model=model)
    final = job.wait(timeout=60)
    assert final.state is JobState.CANCELLED, final
    assert final.succeeded >= 10 and final.cancelled > 0, final
    assert final.succeeded + final.failed + final.cancelled == n, final
    # Only requests already in flight at the cancel reached the provider afterwards.
    in_flight_at_cancel = 20  # the worker's concurrency
    sent_total = fake_provider.count(model=model)
    assert sent_total <= sent_at_cancel + in_flight_at_cancel, (sent_total, sent_at_cancel)
    assert sent_total == final.succeeded, (sent_total, final)
    states = {r["state"] for r in requests_of(client, job.id)}
    assert states <= {"succeeded", "cancelled"}
    results = list(job.results())
    assert len(results) == n
    assert any(isinstance(r.error, RequestCancelledError) for r in results)
    assert sum(1 for r in results if r.ok) == final.succeeded


def test_results_jsonl_round_trips_any_text(client: Client, fake_provider: FakeProvider) -> None:
    """``batcher results`` lines (built by Postgres in cluster mode) parse back to exactly what was stored."""
    import io
    import json

    tricky = 'two\nlines, a tab\t, a backslash \\ and "quotes" — é ☃ \x01'
    ok = client.submit(model="gpt-4o-mini", messages=[[{"role": "user", "content": "x"}]] * 3, mock_response=tricky)
    ok.wait(timeout=30)
    fake_provider.set_behaviour("claude-jsonl-broken", ModelBehaviour(fail_always_status=400))
    bad = client.submit(model="claude-jsonl-broken", messages=[[{"role": "user", "content": "y"}]])
    bad.wait(timeout=30)
    for job, expect_ok in ((ok, True), (bad, False)):
        buffer = io.BytesIO()
        job.write_jsonl(buffer)
        lines = [json.loads(line) for line in buffer.getvalue().decode().splitlines()]
        assert lines == [result.as_line() for result in job.results()]
        if expect_ok:
            assert [line["response"]["choices"][0]["message"]["content"] for line in lines] == [tricky] * 3
        else:
            assert lines[0]["error"]["type"] == "BadRequestError" and lines[0]["error"]["status_code"] == 400
