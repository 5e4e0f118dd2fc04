"""The HTTP transport: a batcher service (``batcher api``) reached over HTTP.

Selected by ``Client(base_url=..., api_key=...)`` or ``BATCHER_API_URL`` / ``BATCHER_API_KEY``: the
caller then needs no database or broker credentials. Creates carry an ``Idempotency-Key`` reused
across this transport's retries, so a retried create never runs the work twice. The service's
OpenAI-shaped errors come back as batcher's exceptions (``checked``).

Each verb is written once, as a *flow* (the requests it makes, sans I/O); ``HttpTransport`` drives
the flows with ``httpx.Client``, ``AsyncHttpTransport`` (``batcher/_transport_async_http.py``) with
``httpx.AsyncClient``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import tempfile
import time
import uuid
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import httpx

from batcher._config import Settings
from batcher._exceptions import (
    BatcherError,
    ConfigurationError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    JobNotFoundError,
    MissingAPIKeyError,
    QuotaExceededError,
    ServiceUnavailableError,
    UnknownModelError,
    UnsupportedParamsError,
)
from batcher._jobs import JobStatus, Result
from batcher._response import ModelResponse
from batcher._states import JobKind
from batcher._submit import RequestSpec
from batcher._transport import Poll, Transport, Until
from batcher._validation import check_json_value, mock_response_string

RETRIES = 2
"""Extra attempts after a connection error or a 5xx (creates are safe: they carry an idempotency key)."""
LONG_POLL_S = 20.0
"""Longest one ``/wait`` call blocks on the server."""
TIMEOUT = httpx.Timeout(60.0, connect=10.0)

_INVALID_CODES: dict[str, type[InvalidRequestError]] = {
    "unknown_model": UnknownModelError,
    "missing_api_key": MissingAPIKeyError,
    "unsupported_params": UnsupportedParamsError,
    "idempotency_key_reused": IdempotencyKeyReusedError,
}


class APIError(BatcherError):
    """The service answered with an error this client has no better exception for."""

    def __init__(self, message: str, *, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(message)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request a verb needs: sent (and retried) by ``HttpTransport`` or ``AsyncHttpTransport``."""

    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = RETRIES


Flow = Generator[Call, httpx.Response, T]
"""A verb as the requests it makes (sans I/O): it yields each ``Call`` and is sent its checked
response (or thrown the batcher exception it became), then returns the verb's value. Written once,
driven by the blocking transport and by the asyncio one (``batcher/_transport_async_http.py``)."""


class Driving(Generic[T]):
    """One run of a ``Flow``: the next call to send, given the outcome of the last one."""

    def __init__(self, flow: Flow[T]) -> None:
        self.flow = flow
        self.outcome: httpx.Response | BatcherError | None = None
        self.value: T

    def next_call(self) -> Call | None:
        """The next request, or ``None`` once the flow has returned (its value in ``self.value``)."""
        try:
            if isinstance(self.outcome, BatcherError):
                return self.flow.throw(self.outcome)
            return self.flow.send(self.outcome)  # type: ignore[arg-type]
        except StopIteration as stop:
            self.value = stop.value
            return None


def connection(settings: Settings, base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The service's base URL and the headers of every call (``ConfigurationError`` naming what is missing)."""
    url = base_url or settings.api_url
    if not url:
        raise ConfigurationError("no service URL: pass base_url= or set BATCHER_API_URL")
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        raise ConfigurationError("no API key for the batcher service: pass api_key= or set BATCHER_API_KEY")
    return url.rstrip("/").removesuffix("/v1"), {"Authorization": f"Bearer {key}", "User-Agent": "batcher-remote"}


def next_attempt(
    base_url: str, attempt: int, retries: int, outcome: httpx.Response | httpx.TransportError
) -> httpx.Response | float:
    """The response to keep (checked), or the pause before another attempt after a connection error or
    a 5xx. The last attempt's connection error is ``ConfigurationError``."""
    if isinstance(outcome, httpx.TransportError):
        if attempt >= retries:
            raise ConfigurationError(f"cannot reach the batcher service at {base_url}: {outcome}") from None
        return 0.5 * (1 << attempt)
    if outcome.status_code >= 500 and attempt < retries:
        return 0.5 * (1 << attempt)
    return checked(outcome)


# --- the verbs, as flows ----------------------------------------------------------------------------


def create_flow(body: dict[str, Any], kwargs: dict[str, Any]) -> Flow[uuid.UUID]:
    # The body must survive JSON encoding: NaN, deep nesting, sets or lone surrogates would fail
    # inside httpx with no field named. Refused here with the line the service would answer.
    if body.get("messages") is not None:
        check_json_value(body["messages"], "messages")
    body["params"] = {k: _jsonable(v) for k, v in kwargs.items() if v is not None}
    check_json_value(body["params"], "params")
    created = yield Call("POST", "/v1/jobs", {"json": body, "headers": {"Idempotency-Key": str(uuid.uuid4())}})
    return uuid.UUID(created.json()["id"])


def conversations_flow(model: str, conversations: Sequence[Any], kwargs: dict[str, Any]) -> Flow[uuid.UUID]:
    return create_flow({"kind": "batch", "model": model, "messages": list(conversations)}, kwargs)


def fanout_flow(kind: JobKind, models: list[str], messages: Any, kwargs: dict[str, Any]) -> Flow[uuid.UUID]:
    return create_flow({"kind": kind.value, "models": models, "messages": messages}, kwargs)


def requests_flow(requests: Iterable[RequestSpec], kwargs: dict[str, Any]) -> Flow[uuid.UUID]:
    """Spooled to a temporary JSONL file (never whole in memory), uploaded, then run as one job."""
    with tempfile.TemporaryFile("w+b") as spool:
        for idx, spec in enumerate(requests):
            where = spec.where or f"requests[{idx}]"
            check_json_value(spec.messages, f"{where}.messages")
            if spec.params:
                check_json_value(spec.params, f"{where}.params")
            line: dict[str, Any] = {**(spec.params or {}), "model": spec.model, "messages": spec.messages}
            if spec.custom_id is not None:
                line["custom_id"] = spec.custom_id
            spool.write(json.dumps(line).encode() + b"\n")
        spool.seek(0)
        return (yield from file_flow(spool, None, kwargs))


def file_flow(file: IO[bytes] | str | Path, default_model: str | None, kwargs: dict[str, Any]) -> Flow[uuid.UUID]:
    """Upload the JSONL file as it is (the service parses it) and run it as one batch job."""
    if isinstance(file, str | Path):
        with Path(file).open("rb") as handle:
            return (yield from file_flow(handle, default_model, kwargs))
    raw_name = getattr(file, "name", None)
    name = Path(raw_name).name if isinstance(raw_name, str) and raw_name else "prompts.jsonl"
    # Not retried: the stream is consumed. (A create is, with its idempotency key.)
    upload = {"files": {"file": (name, file)}, "data": {"purpose": "batch", "batcher_format": "prompts"}}
    uploaded = (yield Call("POST", "/v1/files", upload, retries=0)).json()
    try:
        return (
            yield from create_flow({"kind": "batch", "model": default_model, "input_file_id": uploaded["id"]}, kwargs)
        )
    finally:
        # The job holds its own copy of every request; a leftover upload would only be clutter.
        with contextlib.suppress(BatcherError):
            yield Call("DELETE", f"/v1/files/{uploaded['id']}")


def status_flow(job_id: uuid.UUID) -> Flow[JobStatus]:
    return JobStatus.model_validate((yield Call("GET", f"/v1/jobs/{job_id}")).json())


def poll_flow(job_id: uuid.UUID, timeout_s: float, until: Until) -> Flow[Poll]:
    params = {"timeout": timeout_s, "until": until}
    timeout = httpx.Timeout(timeout_s + 30.0, connect=10.0)
    data = (yield Call("GET", f"/v1/jobs/{job_id}/wait", {"params": params, "timeout": timeout})).json()
    response = data.get("response")
    return Poll(
        JobStatus.model_validate(data["job"]),
        ModelResponse.model_validate(response) if response is not None else None,
    )


def cancel_flow(job_id: uuid.UUID) -> Flow[JobStatus]:
    return JobStatus.model_validate((yield Call("POST", f"/v1/jobs/{job_id}/cancel")).json())


def results_path(job_id: uuid.UUID) -> str:
    return f"/v1/jobs/{job_id}/results"


def result_of(line: str) -> Result | None:
    """One line of the results stream (blank lines are keep-alives)."""
    return Result.from_line(json.loads(line)) if line.strip() else None


def write_line(out: IO[bytes], result: Result) -> None:
    out.write(json.dumps(result.as_line()).encode() + b"\n")


class HttpTransport(Transport):
    """Talks to a batcher HTTP service; the same verbs as the local transport."""

    wait_slice_s = LONG_POLL_S

    def __init__(self, settings: Settings, *, base_url: str | None = None, api_key: str | None = None) -> None:
        self.settings = settings
        self.base_url, headers = connection(settings, base_url, api_key)
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=TIMEOUT)

    def __repr__(self) -> str:
        return f"<HttpTransport {self.base_url}>"

    def close(self) -> None:
        self._http.close()

    def request(self, call: Call) -> httpx.Response:
        """One call, retried after connection errors and 5xx; errors raised as batcher's exceptions."""
        for attempt in itertools.count():
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(
                    call.method, call.path, **call.kwargs
                )
            except httpx.TransportError as exc:
                outcome = exc
            decision = next_attempt(self.base_url, attempt, call.retries, outcome)
            if isinstance(decision, httpx.Response):
                return decision
            time.sleep(decision)
        raise AssertionError("unreachable")

    def run(self, flow: Flow[T]) -> T:
        driving = Driving(flow)
        while (call := driving.next_call()) is not None:
            try:
                driving.outcome = self.request(call)
            except BatcherError as exc:
                driving.outcome = exc
        return driving.value

    # --- submission --------------------------------------------------------------------------------

    def submit_conversations(self, model: str, conversations: Sequence[Any], kwargs: dict[str, Any]) -> uuid.UUID:
        return self.run(conversations_flow(model, conversations, kwargs))

    def submit_fanout(self, kind: JobKind, models: list[str], messages: Any, kwargs: dict[str, Any]) -> uuid.UUID:
        return self.run(fanout_flow(kind, models, messages, kwargs))

    def submit_requests(self, requests: Iterable[RequestSpec], kwargs: dict[str, Any]) -> uuid.UUID:
        return self.run(requests_flow(requests, kwargs))

    def submit_file(self, file: IO[bytes] | str | Path, default_model: str | None, kwargs: dict[str, Any]) -> uuid.UUID:
        return self.run(file_flow(file, default_model, kwargs))

    # --- reading -----------------------------------------------------------------------------------

    def status(self, job_id: uuid.UUID) -> JobStatus:
        return self.run(status_flow(job_id))

    def poll(self, job_id: uuid.UUID, timeout_s: float, until: Until) -> Poll:
        return self.run(poll_flow(job_id, timeout_s, until))

    def results(self, job_id: uuid.UUID) -> Iterator[Result]:
        """Streamed JSONL from the service, in input order (never the whole job in memory)."""
        with self._http.stream("GET", results_path(job_id)) as response:
            if response.status_code >= 400:
                response.read()
                checked(response)
            for line in response.iter_lines():
                if (result := result_of(line)) is not None:
                    yield result

    def write_jsonl(self, job_id: uuid.UUID, out: IO[bytes]) -> None:
        for result in self.results(job_id):
            write_line(out, result)

    def cancel(self, job_id: uuid.UUID) -> JobStatus:
        return self.run(cancel_flow(job_id))


def _jsonable(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, BaseException):  # mock_response=<an exception>: its LiteLLM error string travels
        return mock_response_string(value)
    return value


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def checked(response: httpx.Response) -> httpx.Response:
    """Turn the service's OpenAI-shaped errors back into batcher's exceptions."""
    if response.status_code < 400:
        return response
    try:
        error = response.json()["error"]
        message, param, code = str(error.get("message")), error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, param, code = response.text[:500], None, None
    if response.status_code == 401:
        raise ConfigurationError(f"the batcher service refused the API key: {message}")
    if response.status_code == 404:
        raise JobNotFoundError(message)
    if response.status_code in (400, 413, 422):
        cls = _INVALID_CODES.get(code or "", InvalidRequestError)
        field = param if isinstance(param, str) else None
        text = message.removeprefix(f"{field}: ") if field else message
        raise cls(text, field=field)
    if response.status_code == 429 and code == "quota_exceeded":
        raise QuotaExceededError(message, retry_after_s=_retry_after(response))
    if response.status_code == 503:
        raise ServiceUnavailableError(f"the batcher service is unavailable: {message}")
    raise APIError(f"batcher service error {response.status_code}: {message}", status_code=response.status_code)
