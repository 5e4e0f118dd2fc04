"""The official ``openai`` SDK, unchanged, against ``batcher api``: files, batches, pagination, cancel, errors.

The real service runs as a child process with the real worker, Postgres and Redis; the only
stand-in is the fake provider behind the worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import text

from batcher._config import Settings
from batcher._db.engine import get_engine
from batcher.api.auth import create_key
from batcher.testing import FakeProvider, ModelBehaviour
from tests.support.api_server import ApiServer

pytestmark = pytest.mark.acceptance

FINAL = ("completed", "failed", "expired", "cancelled")


def _sdk(api: ApiServer, settings: Settings, name: str) -> openai.OpenAI:
    _, key = create_key(get_engine(settings), name)
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def sdk(api: ApiServer, settings: Settings) -> Iterator[openai.OpenAI]:
    with _sdk(api, settings, "sdk-a") as client:
        yield client


@pytest.fixture(scope="module")
def other_sdk(api: ApiServer, settings: Settings) -> Iterator[openai.OpenAI]:
    with _sdk(api, settings, "sdk-b") as client:
        yield client


def line(custom_id: str, model: str, content: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def upload(client: openai.OpenAI, lines: list[Any], name: str = "input.jsonl") -> str:
    raw = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode() + b"\n"
    return client.files.create(file=(name, raw), purpose="batch").id


def wait_final(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    seen = set()
    while True:
        batch = client.batches.retrieve(batch_id)
        seen.add(batch.status)
        if batch.status in FINAL:
            return batch, seen
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in data.decode().splitlines() if x.strip()]


def test_batch_round_trip_across_providers(sdk: openai.OpenAI, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-sdk-broken", ModelBehaviour(fail_always_status=400))
    lines = [line(f"ok-{i}", "gpt-4o-mini", f"openai {i}") for i in range(6)]
    lines += [line("claude-1", "anthropic/claude-3-5-haiku", "anthropic", max_tokens=50)]
    lines += [line("cohere-1", "cohere/command-r", "cohere")]
    lines += [line(f"bad-{i}", "gpt-sdk-broken", f"doomed {i}") for i in range(3)]
    file_id = upload(sdk, lines)
    assert sdk.files.retrieve(file_id).purpose == "batch"

    created = sdk.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "rt"}
    )
    assert created.status == "validating" and created.object == "batch"
    assert created.created_at > 1_600_000_000 and created.expires_at == created.created_at + 24 * 3600
    batch, _ = wait_final(sdk, created.id)

    assert batch.status == "completed" and batch.metadata == {"run": "rt"}
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (11, 8, 3)
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at  # type: ignore[operator]
    assert batch.failed_at is None and batch.cancelled_at is None and batch.errors is None

    assert batch.output_file_id and batch.error_file_id
    out_meta = sdk.files.retrieve(batch.output_file_id)
    assert out_meta.purpose == "batch_output"
    output = sdk.files.content(batch.output_file_id).read()
    assert len(output) == out_meta.bytes
    out = jsonl(output)
    assert [o["custom_id"] for o in out] == [f"ok-{i}" for i in range(6)] + ["claude-1", "cohere-1"]
    for o in out:
        assert o["error"] is None and o["id"].startswith("batch_req_")
        assert o["response"]["status_code"] == 200 and o["response"]["request_id"]
        assert o["response"]["body"]["object"] == "chat.completion"
        assert not {"_hidden_params", "_response_ms"} & set(o["response"]["body"])  # OpenAI's object only
        openai.types.chat.ChatCompletion.model_validate(o["response"]["body"])
    assert "openai 3" in out[3]["response"]["body"]["choices"][0]["message"]["content"]

    errors = jsonl(sdk.files.content(batch.error_file_id).read())
    assert sorted(e["custom_id"] for e in errors) == ["bad-0", "bad-1", "bad-2"]
    for e in errors:
        assert e["response"]["status_code"] == 400
        assert set(e["response"]["body"]["error"]) == {"message", "type", "param", "code"}


def test_invalid_lines_fail_the_batch_and_enqueue_nothing(sdk: openai.OpenAI, settings: Settings) -> None:
    good = line("a", "gpt-4o-mini", "fine")
    lines: list[Any] = [
        good,
        "{not json",
        line("a", "gpt-4o-mini", "duplicate id"),
        {**line("m", "gpt-4o-mini", "x"), "method": "GET"},
        {**line("u", "gpt-4o-mini", "x"), "url": "/v1/embeddings"},
        {"custom_id": "nomodel", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}},
        {**line("r", "gpt-4o-mini", "x"), "body": {"model": "gpt-4o-mini", "messages": [{"role": "robot"}]}},
        line("nul", "gpt-4o-mini", "a NUL \u0000 Postgres cannot store"),
    ]
    file_id = upload(sdk, lines)
    with get_engine(settings).connect() as conn:
        jobs_before = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    batch, _ = wait_final(
        sdk, sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert batch.status == "failed" and batch.failed_at is not None and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.data is not None
    codes = {(e.line, e.code) for e in batch.errors.data}
    assert codes == {
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "invalid_method"),
        (5, "invalid_url"),
        (6, "missing_required_parameter"),
        (7, "invalid_request"),
        (8, "invalid_request"),
    }
    assert [e.param for e in batch.errors.data if e.line == 7] == ["messages[0].role"]
    assert all(e.message for e in batch.errors.data)
    assert batch.output_file_id is None and batch.request_counts is not None and batch.request_counts.total == 0
    with get_engine(settings).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == jobs_before


def test_a_retried_create_runs_the_file_once(sdk: openai.OpenAI, settings: Settings) -> None:
    file_id = upload(sdk, [line(f"d{i}", "gpt-4o-mini", f"d{i}") for i in range(3)])
    first = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    again = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert again.id == first.id
    batch, _ = wait_final(sdk, first.id)
    assert batch.request_counts is not None and batch.request_counts.completed == 3
    with get_engine(settings).connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM batches WHERE input_file_id = :f"), {"f": file_id}).scalar_one()
    assert n == 1


def test_list_pages_with_after_until_has_more_is_false(sdk: openai.OpenAI, api: ApiServer, settings: Settings) -> None:
    with _sdk(api, settings, "pager") as client:  # a fresh key: exactly the batches made here
        _pages(client)


def _pages(client: openai.OpenAI) -> None:
    ids = []
    for i in range(3):
        file_id = upload(client, [line("p", "gpt-4o-mini", f"page {i}")], name=f"p{i}.jsonl")
        ids.append(
            client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
        )
    first_page = client.batches.list(limit=2)
    assert len(first_page.data) == 2 and first_page.has_more is True
    listed = [b.id for b in client.batches.list(limit=2)]  # auto-paging follows after=<last id>
    assert listed == list(reversed(ids))  # newest first, each once
    files = [f.id for f in client.files.list(limit=1)]
    assert len(files) == len(set(files)) >= 3


def test_cancel_keeps_partial_results(sdk: openai.OpenAI, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-sdk-slow", ModelBehaviour(latency_ms=250))
    file_id = upload(sdk, [line(f"c{i}", "gpt-sdk-slow", f"c{i}") for i in range(120)])
    batch = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    while (b := sdk.batches.retrieve(batch.id)).request_counts is None or b.request_counts.completed < 5:
        time.sleep(0.05)
    cancelled = sdk.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at is not None
    final, _ = wait_final(sdk, batch.id)
    assert final.status == "cancelled" and final.cancelled_at is not None
    counts = final.request_counts
    assert counts is not None and counts.completed >= 5 and counts.completed + counts.failed == 120
    out = jsonl(sdk.files.content(final.output_file_id).read()) if final.output_file_id else []
    err = jsonl(sdk.files.content(final.error_file_id).read())
    assert len(out) == counts.completed and len(err) == counts.failed
    assert {e["error"]["code"] for e in err} == {"batch_cancelled"}
    assert {o["custom_id"] for o in out}.isdisjoint(e["custom_id"] for e in err)
    with pytest.raises(openai.BadRequestError):  # a 400, never a 409 the SDK would retry
        sdk.batches.cancel(wait_final(sdk, _done_batch(sdk))[0].id)


def _done_batch(sdk: openai.OpenAI) -> str:
    file_id = upload(sdk, [line("x", "gpt-4o-mini", "x")])
    return sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id


def test_errors_have_openai_shape_and_status(sdk: openai.OpenAI, api: ApiServer) -> None:
    with (
        openai.OpenAI(base_url=f"{api.url}/v1", api_key="bk-wrong", max_retries=0) as anonymous,
        pytest.raises(openai.AuthenticationError) as auth,
    ):
        anonymous.batches.list()
    assert auth.value.status_code == 401 and auth.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        sdk.files.content("file-nope")
    file_id = upload(sdk, [line("e", "gpt-4o-mini", "e")])
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")  # type: ignore[arg-type]
    assert bad.value.param == "endpoint"
    assert set(bad.value.body) >= {"message", "type", "param", "code"}  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        sdk.files.create(file=("x.jsonl", b"{}"), purpose="fine-tune")
    deleted = sdk.files.delete(file_id)
    assert deleted.deleted is True and deleted.id == file_id
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(file_id)


def test_another_key_sees_nothing(sdk: openai.OpenAI, other_sdk: openai.OpenAI) -> None:
    file_id = upload(sdk, [line("o", "gpt-4o-mini", "mine")])
    batch, _ = wait_final(
        sdk, sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert batch.output_file_id
    for call in (
        lambda: other_sdk.batches.retrieve(batch.id),
        lambda: other_sdk.batches.cancel(batch.id),
        lambda: other_sdk.files.retrieve(file_id),
        lambda: other_sdk.files.content(file_id),
        lambda: other_sdk.files.content(batch.output_file_id),  # type: ignore[arg-type]
        lambda: other_sdk.files.delete(file_id),
        lambda: other_sdk.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in {b.id for b in other_sdk.batches.list()}
    assert file_id not in {f.id for f in other_sdk.files.list()}
    assert sdk.files.retrieve(file_id).id == file_id  # still there for its owner


def test_a_batch_past_its_window_expires_with_partial_results(sdk: openai.OpenAI, fake_provider: FakeProvider) -> None:
    fake_provider.set_behaviour("gpt-sdk-late", ModelBehaviour(latency_ms=1_500))
    file_id = upload(sdk, [line(f"late-{i}", "gpt-sdk-late", f"l{i}") for i in range(30)])
    batch = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="1s")
    final, _ = wait_final(sdk, batch.id)
    assert final.status == "expired" and final.expired_at is not None and final.completed_at is None
    counts = final.request_counts
    assert counts is not None and counts.failed > 0 and counts.completed + counts.failed == 30
    errors = jsonl(sdk.files.content(final.error_file_id).read())  # type: ignore[arg-type]
    assert len(errors) == counts.failed and {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert all(e["response"] is None for e in errors)


def test_a_validation_that_died_is_resumed_by_the_next_read(sdk: openai.OpenAI, settings: Settings) -> None:
    file_id = upload(sdk, [line("z", "gpt-4o-mini", "resumed")])
    batch = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_final(sdk, batch.id)
    # Rewind it to what a replica killed mid-validation leaves behind: validating, no job, lock free.
    with get_engine(settings).begin() as conn:
        conn.execute(
            text(
                "UPDATE batches SET status = 'validating', job_id = NULL, in_progress_at = NULL, "
                "finalizing_at = NULL, completed_at = NULL, output_file_id = NULL, "
                "created_at = now() - interval '1 minute' WHERE id = :id"
            ),
            {"id": batch.id},
        )
    assert sdk.batches.retrieve(batch.id).status == "validating"
    final, _ = wait_final(sdk, batch.id)
    assert final.status == "completed" and final.request_counts.completed == 1  # type: ignore[union-attr]
    out = jsonl(sdk.files.content(final.output_file_id).read())  # type: ignore[arg-type]
    assert [o["custom_id"] for o in out] == ["z"]
