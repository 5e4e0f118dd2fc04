"""``Client`` over HTTP: the same submit / status / wait / results / cancel against ``batcher api``.

Selected by ``Client(base_url=..., api_key=...)`` or ``BATCHER_API_URL`` / ``BATCHER_API_KEY``;
the caller then needs no database or broker credentials. Creates carry an ``Idempotency-Key``
reused across this client's retries, so a retried create never runs the work twice.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import httpx

from batcher._client import Client, Job
from batcher._config import Settings, get_settings
from batcher._exceptions import (
    AllModelsFailedError,
    BatcherError,
    ConfigurationError,
    InvalidRequestError,
    JobNotFoundError,
    MissingAPIKeyError,
    UnknownModelError,
    UnsupportedParamsError,
    WaitTimeoutError,
    error_from_stored,
)
from batcher._jobs import JobStatus, Result
from batcher._progress import ProgressBar
from batcher._response import ModelResponse
from batcher._states import JobKind, RequestState
from batcher._submit import RequestSpec
from batcher._validation import check_json_value, split_call_kwargs

RETRIES = 2
"""Extra attempts after a connection error or a 5xx (creates are safe: they carry an idempotency key)."""
LONG_POLL_S = 20.0
"""Longest one ``/wait`` call blocks on the server."""
TIMEOUT = httpx.Timeout(60.0, connect=10.0)

_INVALID_CODES: dict[str, type[InvalidRequestError]] = {
    "unknown_model": UnknownModelError,
    "missing_api_key": MissingAPIKeyError,
    "unsupported_params": UnsupportedParamsError,
}


class APIError(BatcherError):
    """The service answered with an error this client has no better exception for."""

    def __init__(self, message: str, *, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(message)


def _jsonable(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


class RemoteClient(Client):
    """Talks to a batcher HTTP service; same methods as the local ``Client``."""

    def __init__(
        self, settings: Settings | None = None, *, base_url: str | None = None, api_key: str | None = None
    ) -> None:
        self.settings = settings or get_settings()
        url = base_url or self.settings.api_url
        if not url:
            raise ConfigurationError("no service URL: pass base_url= or set BATCHER_API_URL")
        key = api_key or (self.settings.api_key.get_secret_value() if self.settings.api_key else None)
        if not key:
            raise ConfigurationError("no API key for the batcher service: pass api_key= or set BATCHER_API_KEY")
        self.base_url = url.rstrip("/").removesuffix("/v1")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}", "User-Agent": "batcher-remote"},
            timeout=TIMEOUT,
        )

    def __repr__(self) -> str:
        return f"<RemoteClient {self.base_url}>"

    # --- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, retries: int = RETRIES, **kwargs: Any) -> httpx.Response:
        for attempt in range(retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == retries:
                    raise ConfigurationError(f"cannot reach the batcher service at {self.base_url}: {exc}") from None
                time.sleep(0.5 * 2**attempt)
                continue
            if response.status_code >= 500 and attempt < retries:
                time.sleep(0.5 * 2**attempt)
                continue
            return _checked(response)
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # --- submission --------------------------------------------------------------------------

    def submit(self, model: str, messages: Sequence[list[dict[str, Any]]], **kwargs: Any) -> Job:
        return self._create({"kind": "batch", "model": model, "messages": list(messages)}, kwargs)

    def submit_fastest(self, models: Sequence[str], messages: list[dict[str, Any]], **kwargs: Any) -> Job:
        return self._create({"kind": "fastest", "models": _models(models), "messages": messages}, kwargs)

    def submit_all(self, models: Sequence[str], messages: list[dict[str, Any]], **kwargs: Any) -> Job:
        return self._create({"kind": "all", "models": _models(models), "messages": messages}, kwargs)

    def submit_requests(self, requests: Iterable[RequestSpec], **kwargs: Any) -> Job:
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
            return self.submit_file(spool, **kwargs)

    def submit_file(self, file: IO[bytes] | str | Path, *, default_model: str | None = None, **kwargs: Any) -> Job:
        """Upload a JSONL prompt file (as ``batcher submit`` reads it) and run it as one batch job."""
        if isinstance(file, str | Path):
            with Path(file).open("rb") as handle:
                return self.submit_file(handle, default_model=default_model, **kwargs)
        raw_name = getattr(file, "name", None)
        name = Path(raw_name).name if isinstance(raw_name, str) and raw_name else "prompts.jsonl"
        # Not retried: the stream is consumed. (A create is, with its idempotency key.)
        uploaded = self._request(
            "POST", "/v1/files", retries=0, files={"file": (name, file)}, data={"purpose": "batch"}
        ).json()
        try:
            return self._create({"kind": "batch", "model": default_model, "input_file_id": uploaded["id"]}, kwargs)
        finally:
            # The job holds its own copy of every request; a leftover upload would only be clutter.
            with contextlib.suppress(BatcherError):
                self._request("DELETE", f"/v1/files/{uploaded['id']}")

    def _create(self, body: dict[str, Any], kwargs: dict[str, Any]) -> Job:
        # What the service would refuse, refused here with the same line: the body must first survive
        # JSON encoding (NaN, nesting, sets, lone surrogates would fail inside httpx, with no field).
        split_call_kwargs(kwargs)
        if body.get("messages") is not None:
            check_json_value(body["messages"], "messages")
        body["params"] = {k: _jsonable(v) for k, v in kwargs.items() if v is not None}
        check_json_value(body["params"], "params")
        data = self._json("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
        return RemoteJob(self, uuid.UUID(data["id"]), JobKind(data["kind"]))

    # --- reading -----------------------------------------------------------------------------

    def _status(self, job_id: uuid.UUID) -> JobStatus:
        return JobStatus.model_validate(self._json("GET", f"/v1/jobs/{job_id}"))


class RemoteJob(Job):
    """A handle on a job of a batcher service."""

    client: RemoteClient

    def __init__(self, client: RemoteClient, job_id: uuid.UUID, kind: JobKind) -> None:
        super().__init__(client, job_id, kind)

    def wait(self, timeout: float | None = None, *, progress: bool = False) -> JobStatus:
        """Long-polls the service until the job is final (short polls while a progress bar is shown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(f"job {str(self.id)[:8]}") if progress else None
        try:
            if bar is not None:
                bar.__enter__()
            while True:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                slice_s = 0.25 if bar is not None else LONG_POLL_S
                poll = slice_s if remaining is None else min(slice_s, remaining)
                data = self._wait(poll, "final")
                status = JobStatus.model_validate(data["job"])
                if bar is not None:
                    bar.update(status)
                if status.is_final:
                    return status
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeoutError(
                        f"job {self.id} is still {status.state.value} after {timeout} s "
                        f"({status.done}/{status.total} done); it goes on running"
                    )
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)

    def _wait(self, timeout: float, until: str) -> Any:
        return self.client._json(
            "GET",
            f"/v1/jobs/{self.id}/wait",
            params={"timeout": timeout, "until": until},
            timeout=httpx.Timeout(timeout + 30.0, connect=10.0),
        )

    def results(self) -> Iterator[Result]:
        """Streamed JSONL from the service, in input order (never the whole job in memory)."""
        with self.client._http.stream("GET", f"/v1/jobs/{self.id}/results") as response:
            if response.status_code >= 400:
                response.read()
                _checked(response)
            for line in response.iter_lines():
                if line.strip():
                    yield _result_from_line(json.loads(line))

    def write_jsonl(self, out: IO[bytes]) -> None:
        """``batcher results`` lines, from the service's stream (same format as a local job's)."""
        for result in self.results():
            out.write(json.dumps(result.as_line()).encode() + b"\n")

    def cancel(self) -> JobStatus:
        return JobStatus.model_validate(self.client._json("POST", f"/v1/jobs/{self.id}/cancel"))

    def first_response(self, timeout: float | None = None) -> ModelResponse:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            data = self._wait(LONG_POLL_S if remaining is None else min(LONG_POLL_S, remaining), "first_response")
            if data.get("response") is not None:
                return ModelResponse.model_validate(data["response"])
            status = JobStatus.model_validate(data["job"])
            if status.is_final:
                errors: dict[str, BaseException] = {}
                for result in self.results():
                    if result.error is not None:
                        key = f"{result.model} (#{result.index})" if result.model in errors else result.model
                        errors[key] = result.error
                raise AllModelsFailedError(errors)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"no model of job {self.id} answered within {timeout} s")


def _models(models: Sequence[str]) -> list[str]:
    if isinstance(models, str) or not isinstance(models, Sequence) or not models:
        raise InvalidRequestError("must be a non-empty list of model names", field="models")
    return list(models)


def _result_from_line(line: dict[str, Any]) -> Result:
    error = None
    if line.get("error") is not None:
        err = line["error"]
        error = error_from_stored(
            err.get("type"), err.get("message"), model=line["model"], status_code=err.get("status_code")
        )
    response = line.get("response")
    return Result(
        index=line["index"],
        model=line["model"],
        state=RequestState(line["state"]),
        attempts=line["attempts"],
        response=ModelResponse.model_validate(response) if response is not None else None,
        error=error,
        custom_id=line.get("custom_id"),
        latency_ms=line.get("latency_ms"),
    )


def _checked(response: httpx.Response) -> httpx.Response:
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
    raise APIError(f"batcher service error {response.status_code}: {message}", status_code=response.status_code)


RemoteClient._job_type = RemoteJob
