"""The official ``openai`` SDK, unchanged, against ``batcher api``: files, batches, pagination, cancel, errors.

The real service runs as a child process with the real worker, Postgres and Redis; the only
stand-in is the fake provider behind the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types import Batch, FileObject
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
        good,  # (a line that is not JSON is refused at upload: test_an_upload_is_checked_at_upload)
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
        (2, "duplicate_custom_id"),
        (3, "invalid_method"),
        (4, "invalid_url"),
        (5, "missing_required_parameter"),
        (6, "invalid_request"),
        (7, "invalid_request"),
    }
    assert [e.param for e in batch.errors.data if e.line == 6] == ["messages[0].role"]
    assert all(e.message for e in batch.errors.data)
    assert batch.output_file_id is None and batch.request_counts is not None and batch.request_counts.total == 0
    with get_engine(settings).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == jobs_before


def test_a_second_create_runs_the_file_again_unless_an_idempotency_key_says_otherwise(
    sdk: openai.OpenAI, settings: Settings
) -> None:
    file_id = upload(sdk, [line(f"d{i}", "gpt-4o-mini", f"d{i}") for i in range(3)])
    first = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    second = sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert second.id != first.id  # as on OpenAI: the same file, a new batch
    key = {"Idempotency-Key": f"retry-{file_id}"}
    keyed = sdk.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers=key
    )
    retried = sdk.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers=key
    )
    assert retried.id == keyed.id and keyed.id not in (first.id, second.id)
    with pytest.raises(openai.UnprocessableEntityError) as reused:  # the same key, another body
        sdk.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"other": "body"},
            extra_headers=key,
        )
    assert reused.value.code == "idempotency_key_reused" and keyed.id in _said(reused.value)
    for batch_id in (first.id, second.id, keyed.id):
        batch, _ = wait_final(sdk, batch_id)
        assert batch.request_counts is not None and batch.request_counts.completed == 3
    with get_engine(settings).connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM batches WHERE input_file_id = :f"), {"f": file_id}).scalar_one()
    assert n == 3


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
    done = wait_final(sdk, _done_batch(sdk))[0]
    with pytest.raises(openai.ConflictError) as conflict:  # OpenAI's 409; x-should-retry: false, so not retried
        sdk.batches.cancel(done.id)
    assert _said(conflict.value) == "Cannot cancel a batch with status 'completed'."
    assert conflict.value.response.headers["x-should-retry"] == "false"


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
    batch = sdk.batches.create(  # batcher's extension: a window of its own; completion_window stays as sent
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"batcher_completion_window": "1s"},
    )
    assert batch.completion_window == "24h" and batch.expires_at == batch.created_at + 1
    assert (batch.model_extra or {})["batcher_completion_window"] == "1s"
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


# --- issue #13: the Batch API behaves as OpenAI's -------------------------------------------------


def _said(error: openai.APIStatusError) -> str:
    """The error body's own ``message`` (the SDK's ``message`` prefixes the status)."""
    body = error.body
    assert isinstance(body, dict)
    return str(body["message"])


def _strict(raw: Any, model: type[Batch] | type[FileObject]) -> dict[str, Any]:
    """The raw JSON of an SDK call, every key of the SDK's type present, validated strictly."""
    data: dict[str, Any] = raw.http_response.json()
    assert set(model.model_fields) <= set(data), set(model.model_fields) - set(data)
    model.model_validate(data, strict=True)
    return data


def test_a_batch_names_its_model_and_sums_its_usage(sdk: openai.OpenAI, settings: Settings) -> None:
    file_id = upload(sdk, [line(f"u{i}", "gpt-4o-mini", f"usage {i}") for i in range(4)])
    created = sdk.batches.with_raw_response.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    _strict(created, Batch)
    batch, _ = wait_final(sdk, created.parse().id)
    data = _strict(sdk.batches.with_raw_response.retrieve(batch.id), Batch)
    assert data["model"] == "gpt-4o-mini"
    with get_engine(settings).connect() as conn:
        sums = conn.execute(
            text(
                "SELECT sum(prompt_tokens), sum(completion_tokens), sum(total_tokens) FROM responses r "
                "JOIN batches b ON b.job_id = r.job_id WHERE b.id = :id"
            ),
            {"id": batch.id},
        ).one()
    usage = data["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == tuple(sums)
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    # the same in a listing, and in the SDK's own parsed object
    listed = next(b for b in sdk.batches.list(limit=100) if b.id == batch.id)
    assert listed.usage is not None and listed.usage.total_tokens == usage["total_tokens"]
    assert listed.model == "gpt-4o-mini"


def test_a_window_other_than_24h_is_refused_as_openai_does(sdk: openai.OpenAI, settings: Settings) -> None:
    file_id = upload(sdk, [line("w", "gpt-4o-mini", "w")])
    with get_engine(settings).connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM batches")).scalar_one()
    for window in ("48h", "1h", "30m"):
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window=window)  # type: ignore[arg-type]
        assert _said(bad.value) == f"Invalid value: '{window}'. Supported values are: '24h'."
        assert (bad.value.param, bad.value.code, bad.value.type) == (
            "completion_window",
            "invalid_value",
            "invalid_request_error",
        )
    with get_engine(settings).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM batches")).scalar_one() == before


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"", "the file is empty"),
        (b"\n  \n", "the file is empty"),
        (b'{"custom_id": "a"}\n{not json\n', "line 2 is not valid JSON"),
        (b'{"custom_id": "a"}\n{"custom_id": "b"}\n["a", "list"]\n', "line 3 is not a JSON object"),
        (b'{"custom_id": "\xff"}\n', "line 1 is not UTF-8"),
    ],
)
def test_an_upload_is_checked_at_upload(sdk: openai.OpenAI, settings: Settings, content: bytes, named: str) -> None:
    with get_engine(settings).connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM files")).scalar_one()
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.create(file=("input.jsonl", content), purpose="batch")
    assert named in _said(bad.value) and _said(bad.value).startswith("Invalid file format for Batch API")
    assert bad.value.param == "file"
    with get_engine(settings).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM files")).scalar_one() == before  # nothing stored


def _recover(env: dict[str, str]) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "recover"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_files_expire_as_asked_and_are_pruned(
    sdk: openai.OpenAI, settings: Settings, cluster_env: dict[str, str]
) -> None:
    default = sdk.files.create(file=("d.jsonl", json.dumps(line("d", "gpt-4o-mini", "d")).encode()), purpose="batch")
    assert default.expires_at == default.created_at + 30 * 86_400  # OpenAI's default for purpose=batch
    raw = sdk.files.with_raw_response.create(
        file=("e.jsonl", json.dumps(line("e", "gpt-4o-mini", "e")).encode()),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    _strict(raw, FileObject)
    short = raw.parse()
    assert short.expires_at == short.created_at + 3600
    for bad in ({"anchor": "created_at", "seconds": 59}, {"anchor": "last_active_at", "seconds": 3600}):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.files.create(file=("x.jsonl", b"{}\n"), purpose="batch", expires_after=bad)  # type: ignore[arg-type]
        assert refused.value.param is not None and refused.value.param.startswith("expires_after.")

    batch = sdk.batches.create(
        input_file_id=short.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    final, _ = wait_final(sdk, batch.id)
    assert final.output_file_id
    output = sdk.files.retrieve(final.output_file_id)
    assert (
        output.expires_at is not None and output.created_at + 7200 - 2 <= output.expires_at <= output.created_at + 7202
    )

    # An hour later (moved back rather than waited for): gone for every reader at once, then pruned.
    expired = (short.id, final.output_file_id)
    with get_engine(settings).begin() as conn:
        conn.execute(
            text("UPDATE files SET expires_at = now() - interval '1 second' WHERE id = ANY(:ids)"),
            {"ids": list(expired)},
        )
    for file_id in expired:
        with pytest.raises(openai.NotFoundError) as gone:
            sdk.files.retrieve(file_id)
        assert _said(gone.value) == f"No such File object: {file_id}"
        with pytest.raises(openai.NotFoundError):
            sdk.files.content(file_id)
    assert not set(expired) & {f.id for f in sdk.files.list()}
    assert sdk.files.retrieve(default.id).id == default.id  # not expired: still there
    _recover(cluster_env)
    with get_engine(settings).connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM files WHERE id = ANY(:ids)"), {"ids": list(expired)})
        assert left.scalar_one() == 0
        chunks = conn.execute(text("SELECT count(*) FROM file_chunks WHERE file_id = :id"), {"id": short.id})
        assert chunks.scalar_one() == 0


def test_every_response_has_a_request_id(sdk: openai.OpenAI, api: ApiServer) -> None:
    ids = set()
    batches = sdk.batches.list()
    ids.add(batches._request_id)  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.batches.retrieve("batch_nope")
    assert _said(missing.value) == "No batch found with id 'batch_nope'."
    ids.add(missing.value.request_id)
    with pytest.raises(openai.NotFoundError) as missing_file:
        sdk.files.retrieve("file-nope")
    assert _said(missing_file.value) == "No such File object: file-nope"
    ids.add(missing_file.value.request_id)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.files.create(file=("x.jsonl", b""), purpose="batch")
    ids.add(bad.value.request_id)
    import httpx

    for response in (httpx.get(f"{api.url}/v1/nowhere"), httpx.get(f"{api.url}/healthz")):
        ids.add(response.headers["x-request-id"])
    assert len(ids) == 6 and all(i and i.startswith("req_") and len(i) == 36 for i in ids)


def test_errors_are_worded_as_openai_words_them(sdk: openai.OpenAI) -> None:
    file_id = upload(sdk, [line("m", "gpt-4o-mini", "m")])
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    assert _said(missing.value) == "No such File object: file-nope" and missing.value.param == "input_file_id"
    output = wait_final(sdk, _done_batch(sdk))[0].output_file_id
    assert output
    with pytest.raises(openai.BadRequestError) as purpose:
        sdk.batches.create(input_file_id=output, endpoint="/v1/chat/completions", completion_window="24h")
    assert "purpose 'batch'" in _said(purpose.value) and purpose.value.param == "input_file_id"
    with pytest.raises(openai.BadRequestError) as purpose_upload:
        sdk.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    assert _said(purpose_upload.value) == "Invalid value: 'assistants'. Supported values are: 'batch'."
    with pytest.raises(openai.BadRequestError) as window:
        sdk.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 3_000_000},
        )
    assert _said(window.value) == (
        "Invalid 'output_expires_after.seconds': integer above maximum value. Expected a value <= 2592000, "
        "but got 3000000 instead."
    )
