"""Adding a provider touches its module, its fake format and its test data — and nothing else.

"parrot" is a provider batcher has never heard of, defined here in full: its adapter (what a module
under ``batcher/_providers/`` would hold: routing, variables, a request *signed* with the key, a JSON
wire format of its own both ways, its own error body, a status of its own and its own wait header)
and the fake provider's side of its wire format (what a module under ``batcher/testing/formats/``
would hold). ``tests/support/parrot_provider.py`` registers both, as the one alias line of a built-in
provider does; a real worker process loads it with ``--include``, this process registers them for
the test only. A batch is then submitted with ``Client``, sent by the worker, answered by the fake,
stored in Postgres and read back — with nothing in ``batcher/`` changed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from batcher import JobState, ModelResponse, RateLimitError, RequestState, WaitTimeoutError
from batcher._exceptions import InvalidRequestError
from batcher.providers import (
    PROVIDERS,
    ProviderAdapter,
    Route,
    add_auth_headers,
    finish_reason_fields,
    resolve_route,
)
from batcher.testing import (
    FORMATS,
    Failure,
    FakeFormat,
    FakeProvider,
    ModelBehaviour,
    patched_environ,
    provider_registered,
)
from batcher.testing.formats._base import word_count
from tests.support.workers import IsolatedCluster

KEY_ID = "parrot-key-7"
SECRET = "parrot-secret-0123456789abcdef"
API_KEY = f"{KEY_ID}:{SECRET}"  # PARROT_API_KEY: an access key id and the secret it signs with


def signature(secret: str, date: str, method: str, path: str, body: bytes) -> str:
    """HMAC-SHA256 over the date, method, path and the body's hash: SigV4's idea in four lines."""
    canonical = "\n".join([date, method, path, hashlib.sha256(body).hexdigest()])
    return hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).hexdigest()


# --- the provider (what batcher/_providers/_parrot.py would be) -------------------------------------


class ParrotAdapter(ProviderAdapter):
    """Parrot's API: ``POST {base}/v1/say`` with ``{"voice", "lines": [{"by", "say"}], "most"}``,
    answered with ``{"ref", "said", "why", "cost": {"heard", "said"}}``; errors are ``{"squawk": {"why",
    "kind"}}``; 420 means "calm down" and comes with ``parrot-wait-ms``."""

    name = "parrot"
    prefixes = ("parrot/",)
    families = (r"^polly-",)
    api_key_env_vars = ("PARROT_API_KEY",)
    api_base_env_vars = ("PARROT_BASE_URL",)
    default_api_base = "https://api.parrot.example"
    endpoint_path = "/v1/say"
    supported_params = frozenset({"max_tokens", "temperature", "stop", "tools"})
    status_errors = {420: RateLimitError}
    request_id_headers = ("parrot-ref",)

    def check_value(self, name: str, value: Any) -> str | None:
        return "parrot cannot use tools" if name == "tools" else None

    def authenticate(self, request: httpx.Request, api_key: str | None) -> None:
        """Signs the finished request: the secret never travels, the key id does."""
        if not api_key:
            return
        key_id, _, secret = api_key.partition(":")
        date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        sig = signature(secret, date, request.method, request.url.path, request.content)
        add_auth_headers(request, api_key, {"x-parrot-date": date})
        request.headers["authorization"] = f"PARROT-HMAC id={key_id}, signature={sig}"

    def build_body(
        self, model: str, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        lines = []
        for i, message in enumerate(messages):
            if not isinstance(message.get("content"), str):
                raise InvalidRequestError("parrot only repeats text", field=f"messages[{i}].content")
            lines.append({"by": message["role"], "say": message["content"]})
        body: dict[str, Any] = {"voice": model, "lines": lines}
        if "max_tokens" in params:
            body["most"] = params["max_tokens"]
        return body

    def is_success_body(self, body: Mapping[str, Any]) -> bool:
        return "squawk" not in body

    def parse_body(self, model: str, body: Mapping[str, Any]) -> ModelResponse:
        native = body["why"]
        heard, said = int(body["cost"]["heard"]), int(body["cost"]["said"])
        return ModelResponse.model_validate(
            {
                "id": body["ref"],
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": body["said"]},
                        **finish_reason_fields(native, {"done": "stop", "cut": "length"}.get(native)),
                    }
                ],
                "usage": {"prompt_tokens": heard, "completion_tokens": said, "total_tokens": heard + said},
            }
        )

    def error_details(self, body: Mapping[str, Any]) -> tuple[Any, Any] | None:
        squawk = body.get("squawk")
        return (squawk.get("why"), squawk.get("kind")) if isinstance(squawk, Mapping) else None

    def rate_limit_wait(self, headers: httpx.Headers, now: datetime) -> float | None:
        wait = headers.get("parrot-wait-ms")
        return int(wait) / 1000 if wait and wait.isdigit() else None


# --- its fake format (what batcher/testing/formats/parrot.py would be) ------------------------------


class ParrotFormat(FakeFormat):
    """The fake's side: checks the signature with the secrets it was given, answers in Parrot's shape."""

    name = "parrot"
    base_path = "/parrot"
    path = "/parrot/v1/say"
    length_reason = "cut"

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        self.secrets = dict(secrets or {KEY_ID: SECRET})

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        scheme, _, rest = headers.get("authorization", "").partition(" ")
        fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        return fields.get("id") if scheme == "PARROT-HMAC" else None

    def check_auth(self, headers: Mapping[str, str], raw_body: bytes, key: str) -> Failure | None:
        _, _, rest = headers.get("authorization", "").partition(" ")
        fields = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        secret = self.secrets.get(key, "")
        expected = signature(secret, headers.get("x-parrot-date", ""), "POST", self.path, raw_body)
        if not secret or not hmac.compare_digest(expected, fields.get("signature", "")):
            return Failure(401, "auth_invalid", "bad signature")
        return None

    def invalid_json(self) -> Failure:
        return Failure(400, "bad_request", "that is not JSON")

    def validate(self, body: dict[str, Any], strict: bool) -> Failure | None:
        if not isinstance(body.get("voice"), str) or not body["voice"]:
            return Failure(400, "bad_request", "voice is required")
        lines = body.get("lines")
        if not isinstance(lines, list) or not lines:
            return Failure(400, "bad_request", "lines must not be empty")
        if strict and set(body) - {"voice", "lines", "most"}:
            return Failure(400, "bad_request", f"unknown fields: {sorted(set(body) - {'voice', 'lines', 'most'})}")
        return None

    def model(self, body: dict[str, Any]) -> str | None:
        voice = body.get("voice")
        return voice if isinstance(voice, str) else None

    def prompt(self, body: dict[str, Any]) -> str | None:
        lines = body.get("lines")
        said = [x.get("say") for x in lines or () if isinstance(x, dict) and x.get("by") == "user"]
        return str(said[-1]) if said else None

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        most = body.get("most")
        return most if isinstance(most, int) else None

    def prompt_words(self, body: dict[str, Any]) -> int:
        return sum(word_count(str(x.get("say", ""))) for x in body.get("lines") or () if isinstance(x, dict))

    def success(
        self, model: str, text: str, truncated: bool, prompt_tokens: int, completion_tokens: int, body: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        ref = f"sq-{uuid.uuid4().hex[:12]}"
        why = self.length_reason if truncated else "done"
        return ref, {"ref": ref, "said": text, "why": why, "cost": {"heard": prompt_tokens, "said": completion_tokens}}

    def error_body(self, failure: Failure, model: str | None, request_id: str) -> dict[str, Any]:
        return {"squawk": {"why": failure.message or "squawk!", "kind": failure.kind}}

    def context_failure(self, words: int, window: int) -> Failure:
        return Failure(400, "context", f"too many words: {words} > {window}")

    def request_id_headers(self) -> tuple[str, dict[str, str]]:
        ref = uuid.uuid4().hex
        return ref, {"parrot-ref": ref}

    def error_headers(self, failure: Failure) -> dict[str, str]:
        return {"parrot-wait-ms": "50"} if failure.status == 420 else {}


# --- its test data ----------------------------------------------------------------------------------


@pytest.fixture
def parrot() -> Iterator[None]:
    """The provider and its fake format, registered in this process for the test only."""
    with provider_registered(ParrotAdapter(), ParrotFormat()):
        yield
    assert "parrot" not in PROVIDERS and "parrot" not in FORMATS


def test_a_registered_provider_routes_and_signs_its_requests(parrot: None) -> None:
    assert resolve_route("parrot/polly") == Route("parrot", "polly")
    assert resolve_route("polly-2").provider == "parrot"
    adapter = PROVIDERS["parrot"]
    request = adapter.build_request(
        "polly", [{"role": "user", "content": "hello"}], {"max_tokens": 3}, api_key=API_KEY, api_base="http://x/p"
    )
    assert str(request.url) == "http://x/p/v1/say"
    assert json.loads(request.content) == {"voice": "polly", "lines": [{"by": "user", "say": "hello"}], "most": 3}
    assert SECRET not in str(request.headers) and f"id={KEY_ID}" in request.headers["authorization"]


def test_a_batch_runs_end_to_end_through_a_provider_defined_in_a_test(
    parrot: None, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    with FakeProvider(expected_api_keys={"parrot": KEY_ID}) as fake:
        fake.set_behaviour("polly", ModelBehaviour(fail_first_n=1, fail_first_status=420))
        env = {"PARROT_BASE_URL": fake.base_url("parrot"), "PARROT_API_KEY": API_KEY}
        n = 6
        with (
            patched_environ(env),  # the submitter checks the key is there, as for any provider
            IsolatedCluster(
                {**cluster_env, **env},
                tmp_path,
                {},
                own_database=True,
                celery_args=("--include=tests.support.parrot_provider",),
            ) as cluster,
            cluster.client() as client,
        ):
            messages = [[{"role": "user", "content": f"hello number {i}"}] for i in range(n)]
            job = client.submit(model="parrot/polly", messages=messages, max_tokens=3)
            try:
                status = job.wait(timeout=60)
            except WaitTimeoutError:
                pytest.fail(f"the batch did not finish; the worker's log ends:\n{cluster.logs()[-4000:]}")
            results = list(job.results())

        assert (status.state, status.succeeded) == (JobState.COMPLETED, n), status
        assert [r.state for r in results] == [RequestState.SUCCEEDED] * n
        for i, result in enumerate(results):
            assert result.response is not None
            assert result.response.choices[0].message.content == "echo: hello number"  # cut to max_tokens=3
            assert result.response.choices[0].finish_reason == "length"
            assert result.response.choices[0].provider_specific_fields == {"native_finish_reason": "cut"}
            assert result.response.provider == "parrot"
            assert result.response.usage is not None and result.response.usage.prompt_tokens == 3
            assert result.model == "parrot/polly" and i == result.index
        # The fake's first answer was Parrot's own 420 "calm down": retried after its parrot-wait-ms.
        assert sorted(r.attempts for r in results) == [1] * (n - 1) + [2]
        sent = fake.requests
        assert [r.status for r in sent].count(420) == 1 and [r.status for r in sent].count(200) == n
        assert {r.provider for r in sent} == {"parrot"} and {r.api_key for r in sent} == {KEY_ID}
        assert all(SECRET not in json.dumps(r.headers) for r in sent)  # signed, never sent
