"""Bad input is refused at submission with an error naming the field; nothing is stored or enqueued."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batcher import (
    Client,
    InvalidRequestError,
    MissingAPIKeyError,
    UnknownModelError,
    UnsupportedParamsError,
)
from batcher._submit import RequestSpec
from tests.integration.helpers import count_jobs, queue_length

HI = [{"role": "user", "content": "hi"}]


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


CASES: list[tuple[str, Callable[[Client], Any], type[Exception], str]] = [
    (
        "empty messages",
        lambda c: c.submit(model="gpt-4o", messages=[]),
        InvalidRequestError,
        "messages: is empty",
    ),
    (
        "flat list where conversations are expected",
        lambda c: c.submit(model="gpt-4o", messages=HI),
        InvalidRequestError,
        "flat list of messages",
    ),
    (
        "empty conversation",
        lambda c: c.submit(model="gpt-4o", messages=[HI, []]),
        InvalidRequestError,
        "messages[1]: is empty",
    ),
    (
        "missing role",
        lambda c: c.submit(model="gpt-4o", messages=[HI, [{"content": "x"}]]),
        InvalidRequestError,
        "messages[1][0].role: is missing",
    ),
    (
        "missing content",
        lambda c: c.submit(model="gpt-4o", messages=[[{"role": "user"}]]),
        InvalidRequestError,
        "messages[0][0].content: is missing",
    ),
    (
        "unknown role",
        lambda c: c.submit(model="gpt-4o", messages=[[{"role": "wizard", "content": "x"}]]),
        InvalidRequestError,
        "'wizard' is not a role",
    ),
    (
        "unknown model",
        lambda c: c.submit(model="llama-mystery", messages=[HI]),
        UnknownModelError,
        "llama-mystery",
    ),
    (
        "unknown provider prefix",
        lambda c: c.submit(model="nosuch/model", messages=[HI]),
        UnknownModelError,
        "nosuch/model",
    ),
    (
        "unsupported parameter",
        lambda c: c.submit(model="command-r", messages=[HI], logit_bias={"1": 2}),
        UnsupportedParamsError,
        "logit_bias",
    ),
    (
        "fastest with a list of conversations",
        lambda c: c.submit_fastest(models=["gpt-4o"], messages=[HI]),
        InvalidRequestError,
        "list of conversations",
    ),
    (
        "fastest with no models",
        lambda c: c.submit_fastest(models=[], messages=HI),
        InvalidRequestError,
        "models",
    ),
    (
        "bad timeout",
        lambda c: c.submit(model="gpt-4o", messages=[HI], timeout=-1),
        InvalidRequestError,
        "timeout",
    ),
    # Issue 11: values JSON or Postgres cannot hold, and wrong parameter types, are refused by name.
    (
        "NUL character in a message",
        lambda c: c.submit(model="gpt-4o", messages=[HI, [{"role": "user", "content": "a\x00b"}]]),
        InvalidRequestError,
        "messages[1][0].content: holds a NUL character",
    ),
    (
        "unpaired surrogate in a message",
        lambda c: c.submit(model="gpt-4o", messages=[[{"role": "user", "content": "a\ud800b"}]]),
        InvalidRequestError,
        "messages[0][0].content: holds an unpaired UTF-16 surrogate",
    ),
    (
        "NaN in a message",
        lambda c: c.submit(model="gpt-4o", messages=[[{"role": "user", "content": "x", "weight": float("nan")}]]),
        InvalidRequestError,
        "messages[0][0].weight: is nan",
    ),
    (
        "a set in a message",
        lambda c: c.submit(model="gpt-4o", messages=[[{"role": "user", "content": "x", "tags": {"a"}}]]),
        InvalidRequestError,
        "messages[0][0].tags: is a set",
    ),
    (
        "messages nested too deeply",
        lambda c: c.submit(model="gpt-4o", messages=[[{"role": "user", "content": "x", "deep": _nested(5_000)}]]),
        InvalidRequestError,
        "messages[0][0]: is nested more than 64 levels deep",
    ),
    (
        "parameters nested too deeply",
        lambda c: c.submit(model="gpt-4o", messages=[HI], extra_body={"a": _nested(100)}),
        InvalidRequestError,
        "extra_body: is nested more than 64 levels deep",
    ),
    (
        "temperature hot",
        lambda c: c.submit(model="gpt-4o", messages=[HI], temperature="hot"),
        InvalidRequestError,
        "temperature: must be a number from 0 to 2, got 'hot'",
    ),
    (
        "top_p out of range",
        lambda c: c.submit_fastest(models=["gpt-4o"], messages=HI, top_p=1.5),
        InvalidRequestError,
        "top_p: must be a number from 0 to 1",
    ),
    (
        "a huge completion window",
        lambda c: c.submit_all(models=["gpt-4o"], messages=HI, completion_window="99999999999999d"),
        InvalidRequestError,
        "completion_window: '99999999999999d' is too long",
    ),
    (
        "NUL character in a model name",
        lambda c: c.submit(model="gpt-4o\x00", messages=[HI]),
        InvalidRequestError,
        "model: holds a NUL character",
    ),
    (
        "NUL character in metadata",
        lambda c: c.submit(model="gpt-4o", messages=[HI], metadata={"team": "a\x00"}),
        InvalidRequestError,
        "metadata.team: holds a NUL character",
    ),
    (
        "a request's own parameters",
        lambda c: c.submit_requests([RequestSpec(model="gpt-4o", messages=HI, params={"n": "two"})]),
        InvalidRequestError,
        "n: must be a whole number from 1 to 128",
    ),
    (
        "a custom_id that is not text",
        lambda c: c.submit_requests([RequestSpec(model="gpt-4o", messages=HI, custom_id=7)]),  # type: ignore[arg-type]
        InvalidRequestError,
        "custom_id must be a string",
    ),
]


@pytest.fixture
def client(any_client: Client) -> Client:
    """Every scenario here runs twice: against the cluster and embedded in-process."""
    return any_client


@pytest.mark.parametrize(("name", "call", "error", "text"), CASES, ids=[c[0] for c in CASES])
def test_refused_before_anything_is_stored(
    client: Client, name: str, call: Callable[[Client], Any], error: type[Exception], text: str
) -> None:
    jobs_before, queued_before = count_jobs(client), queue_length(client)
    with pytest.raises(error) as info:
        call(client)
    assert text in str(info.value)
    assert count_jobs(client) == jobs_before
    assert queue_length(client) == queued_before


def test_bad_item_late_in_a_large_batch_stores_nothing(client: Client) -> None:
    jobs_before = count_jobs(client)
    messages = [[{"role": "user", "content": f"p{i}"}] for i in range(5_000)]
    messages[4_321] = [{"role": "user"}]
    with pytest.raises(InvalidRequestError, match=r"messages\[4321\]\[0\]\.content"):
        client.submit(model="gpt-4o", messages=messages)
    assert count_jobs(client) == jobs_before


def test_missing_api_key(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COHERE_API_KEY")
    monkeypatch.delenv("CO_API_KEY", raising=False)
    jobs_before = count_jobs(client)
    with pytest.raises(MissingAPIKeyError) as info:
        client.submit(model="command-r", messages=[HI])
    assert "COHERE_API_KEY" in str(info.value)
    assert info.value.field == "api_key"
    assert count_jobs(client) == jobs_before


def test_too_many_prompts(client: Client) -> None:
    small = client.settings.model_copy(update={"max_prompts_per_job": 10})
    with Client(small) as limited, pytest.raises(InvalidRequestError, match="more than 10 prompts"):
        limited.submit(model="gpt-4o", messages=[HI] * 11)


def test_request_too_large(client: Client) -> None:
    with pytest.raises(InvalidRequestError, match=r"messages\[0\].*over the limit"):
        client.submit(model="gpt-4o", messages=[[{"role": "user", "content": "x" * 2_000_000}]])


def test_the_three_functions_refuse_bad_input_with_a_field(client: Client) -> None:
    from batcher import batch_completion, batch_completion_models, batch_completion_models_all_responses

    jobs_before = count_jobs(client)
    with pytest.raises(InvalidRequestError, match="temperature"):
        batch_completion(model="gpt-4o", messages=[HI], temperature="hot", client=client)
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content: holds a NUL"):
        batch_completion_models(models=["gpt-4o"], messages=[{"role": "user", "content": "\x00"}], client=client)
    with pytest.raises(InvalidRequestError, match="completion_window"):
        batch_completion_models_all_responses(
            models=["gpt-4o"], messages=HI, completion_window=float("inf"), client=client
        )
    assert count_jobs(client) == jobs_before


# --- the command line: one line "error: ...", exit status 2, nothing stored ------------------------


def _batcher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("content", "args", "expected"),
    [
        (b'"hi"\n', ["-p", "temperature=hot"], "error: temperature: must be a number from 0 to 2, got 'hot'"),
        (b'"hi"\n', ["-p", "n=NaN"], "error: n: must be a whole number from 1 to 128, got nan"),
        (b'"hi"\n', ["-p", "extra_body=" + "[" * 3000 + "]" * 3000], "error: --param extra_body: is nested too"),
        (b'"hi"\n', ["--completion-window", "99999999999999d"], "error: completion_window: '99999999999999d'"),
        (b'"one"\n"two"\n"th\xffree"\n', [], "error: line 3: is not UTF-8 (byte 0xff at column 4)"),
        (b'"one"\n' + b"[" * 5_000 + b"]" * 5_000 + b"\n", [], "error: line 2: is nested too deeply"),
        (b'"one"\n"nul \\u0000"\n', [], "error: line 2: messages[0].content: holds a NUL character"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}\n', [], "error: line 1: temperature"),
    ],
    ids=["temperature-hot", "nan", "deep-param", "huge-window", "not-utf8", "deep-line", "nul", "line-param"],
)
def test_cli_refuses_with_one_line(
    client: Client, cluster_env: dict[str, str], tmp_path: Path, content: bytes, args: list[str], expected: str
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(content)
    jobs_before = count_jobs(client)
    run = _batcher(cluster_env, "submit", str(prompts), "--model", "gpt-4o-mini", *args)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert run.stderr.startswith(expected), run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stdout == ""
    assert count_jobs(client) == jobs_before
