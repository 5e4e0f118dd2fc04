"""Bad input is refused at submission with an error naming the field; nothing is stored or enqueued."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from batcher import (
    Client,
    InvalidRequestError,
    MissingAPIKeyError,
    UnknownModelError,
    UnsupportedParamsError,
)
from tests.integration.helpers import count_jobs, queue_length

HI = [{"role": "user", "content": "hi"}]

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
