"""A hostile tenant against the live ``batcher api`` and a real worker: can it get a request, let alone
one of the workers' provider keys, to a server of its own?

Two recording servers (``tests/support/recorder.py``) stand for servers the tenant controls: ``trap``,
which the operator never allowed, and ``allowed``, listed in the cluster's ``BATCHER_ALLOWED_API_BASES``
(its ``/redirect/`` paths answer 307 to ``trap``). For every operation of the live ``/openapi.json`` that
takes a body, and every field of that body, a non-admin key tries every way we know to name a URL, a
header or a model. What must hold, and is checked after every job the tenant made has finished:

* no request carrying a worker key (``OPENAI_API_KEY`` ...) ever reaches either server;
* ``trap`` receives nothing at all;
* ``allowed`` receives only requests made with the tenant's own key, and its echo of that key is not
  stored in clear.

The coverage table is checked against ``/openapi.json``: a new body-taking route, or a new field of a
body, fails ``test_every_body_field_of_every_operation_is_covered`` until a scenario here covers it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

import batcher
from batcher._config import Settings
from batcher._db.engine import get_engine
from batcher._egress import EgressDeniedError
from batcher._exceptions import InvalidRequestError, MissingAPIKeyError, UnsupportedParamsError
from batcher._files import read_jsonl
from batcher._publish import RUN_REQUEST_TASK
from batcher._transport_http import APIError
from batcher.api.auth import create_key
from batcher.testing import FakeProvider
from tests.conftest import FAKE_KEYS
from tests.support.api_server import ApiServer
from tests.support.recorder import Recorder
from tests.support.workers import IsolatedCluster

TENANT_KEY = "sk-tenant-own-key-0123456789abcdef"
WORKER_KEYS = tuple(FAKE_KEYS.values())
CONVERSATION = [{"role": "user", "content": "hello"}]
FINAL_BATCH = {"completed", "failed", "expired", "cancelled"}

# operationId -> the body fields the scenarios below exercise (checked against the live /openapi.json)
COVERAGE: dict[str, frozenset[str]] = {
    "create_job_v1_jobs_post": frozenset({"kind", "model", "models", "messages", "input_file_id", "params"}),
    "run_job_v1_jobs_run_post": frozenset(
        {"kind", "model", "models", "messages", "input_file_id", "params", "timeout"}
    ),
    "upload_file_v1_files_post": frozenset(
        {"file", "purpose", "expires_after[anchor]", "expires_after[seconds]", "batcher_format"}
    ),
    "create_batch_v1_batches_post": frozenset(
        {
            "input_file_id",
            "endpoint",
            "completion_window",
            "metadata",
            "output_expires_after",
            "batcher_completion_window",
            "batcher_priority",
        }
    ),
}
_COVERED: set[tuple[str, str]] = set()


def covers(operation: str, *fields: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register which (operation, body field) pairs a scenario exercises."""

    def mark(fn: Callable[..., None]) -> Callable[..., None]:
        _COVERED.update((operation, f) for f in fields)
        return fn

    return mark


CREATE, RUN, UPLOAD, BATCH = COVERAGE


@dataclass
class Tenant:
    """The cluster (worker, API) of this module, the tenant's keys, and what it created."""

    api: ApiServer
    cluster: IsolatedCluster
    engine: Engine
    trap: Recorder
    allowed: Recorder
    fake: FakeProvider
    plain: httpx.Client
    """A tenant key without the api_base permission."""
    based: httpx.Client
    """A tenant key made with ``--allow-api-base``."""
    admin: httpx.Client
    owner_ids: dict[str, uuid.UUID]
    jobs: list[tuple[httpx.Client, str]] = field(default_factory=list)

    def jobs_of(self, who: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM jobs WHERE owner_id = :o"), {"o": self.owner_ids[who]}
                ).scalar_one()
            )

    def wait_all(self) -> None:
        """Every job the tenant created is final (so anything it could send has been sent)."""
        for client, job_id in self.jobs:
            for _ in range(10):
                waited = client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": 30}).json()
                if waited["done"]:
                    break
            else:
                raise AssertionError(f"job {job_id} is not final")
        self.jobs.clear()

    def assert_no_leak(self) -> None:
        self.wait_all()
        for server in (self.trap, self.allowed):
            values = server.header_values()
            for key in WORKER_KEYS:
                assert not any(key in v for v in values), f"a worker key reached {server.url}"
        assert self.trap.received() == [], "a request reached a server the operator never allowed"
        for request in self.allowed.received():
            if request["path"].startswith("/redirect/") or request["path"].endswith("/chat/completions"):
                assert request["headers"].get("authorization") == f"Bearer {TENANT_KEY}", request


@pytest.fixture(scope="module")
def tenant(
    cluster_env: dict[str, str], fake_provider: FakeProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tenant]:
    logs = tmp_path_factory.mktemp("hostile")
    trap = Recorder()
    allowed = Recorder(redirect_to=trap.url)
    overrides = {
        # the allowed recorder, and the fake provider under another name (an operator-trusted local server)
        "BATCHER_ALLOWED_API_BASES": f"{allowed.url},http://localhost:{fake_provider.port}",
        "BATCHER_MAX_ATTEMPTS": "2",
    }
    engine = get_engine(Settings())
    keys = {
        who: create_key(engine, f"hostile-{who}", admin=who == "admin", allow_api_base=who == "based")
        for who in ("plain", "based", "admin")
    }
    with IsolatedCluster(cluster_env, logs, overrides, n_workers=1) as cluster:
        api = ApiServer(cluster.env, logs / "api.log").start()
        clients = {
            who: httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=90)
            for who, (_, key) in keys.items()
        }
        try:
            t = Tenant(
                api=api,
                cluster=cluster,
                engine=engine,
                trap=trap,
                allowed=allowed,
                fake=fake_provider,
                owner_ids={who: info.id for who, (info, _) in keys.items()},
                **clients,
            )
            yield t
            t.assert_no_leak()
        finally:
            for c in clients.values():
                c.close()
            api.stop()
            trap.close()
            allowed.close()


def refused(
    t: Tenant, client: httpx.Client, who: str, path: str, body: dict[str, Any], status: int, param: str
) -> dict[str, Any]:
    """POST ``body``; expect ``status`` naming ``param`` in OpenAI's error shape, and nothing stored."""
    before = t.jobs_of(who)
    response = client.post(path, json=body)
    assert response.status_code == status, (body, response.text)
    error = response.json()["error"]
    assert error["param"] == param, (body, error)
    assert t.jobs_of(who) == before
    return dict(error)


def accepted(t: Tenant, client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code in (200, 201), (body, response.text)
    data = response.json()
    job = data.get("job", data)
    t.jobs.append((client, job["id"]))
    return dict(data)


def job_body(path: str, **fields: Any) -> dict[str, Any]:
    """A create (batch: one conversation to ``model``) or run (fastest: ``models``) body."""
    if path == "/v1/jobs":
        return {"kind": "batch", "model": "gpt-4o-mini", "messages": [CONVERSATION], **fields}
    return {"kind": "fastest", "models": ["gpt-4o-mini"], "messages": CONVERSATION, "timeout": 30, **fields}


JOB_ROUTES = [pytest.param("/v1/jobs", id="create"), pytest.param("/v1/jobs/run", id="run")]


# --- the coverage table against the live schema ---------------------------------------------------


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_body_field_of_every_operation_is_covered(tenant: Tenant) -> None:
    spec = httpx.get(f"{tenant.api.url}/openapi.json").json()
    live: dict[str, frozenset[str]] = {}
    for ops in spec["paths"].values():
        for op in ops.values():
            if "requestBody" in op:
                (content,) = op["requestBody"]["content"].values()
                schema = _resolve(spec, content["schema"])
                live[op["operationId"]] = frozenset(schema.get("properties", {}))
    assert live == COVERAGE, "a body-taking route or field changed: add hostile scenarios for it"
    missing = {(op, f) for op, fields in COVERAGE.items() for f in fields} - _COVERED
    assert not missing, f"no scenario covers {sorted(missing)}"
    # No operation takes a URL- or header-like parameter outside its body.
    for path, ops in spec["paths"].items():
        for op in ops.values():
            for parameter in op.get("parameters", []):
                name = parameter["name"].lower()
                assert not any(w in name for w in ("url", "base", "host")), (path, parameter)


# --- the permission -------------------------------------------------------------------------------


@covers(CREATE, "params", "model", "messages", "kind")
@covers(RUN, "params", "models", "messages", "kind", "timeout")
@pytest.mark.parametrize("path", JOB_ROUTES)
def test_a_key_without_the_permission_cannot_name_any_base(tenant: Tenant, path: str) -> None:
    t = tenant
    for params in (
        {"api_base": f"{t.trap.url}/v1"},
        {"base_url": f"{t.trap.url}/v1"},
        {"api_base": f"{t.trap.url}/v1", "api_key": TENANT_KEY},
        {"api_base": f"{t.allowed.url}/v1", "api_key": TENANT_KEY},  # allowed by the operator: still a permission
        {"api_base": "https://api.openai.com/v1"},
        {"api_base": "http://[::1"},
        {"api_base": f"{t.trap.url}/v1", "mock_response": "canned"},
    ):
        error = refused(t, t.plain, "plain", path, job_body(path, params=params), 403, "api_base")
        assert error["type"] == "permission_error" and "--allow-api-base" in error["message"]
    for kind in ("fastest", "all"):
        body = {"kind": kind, "models": ["gpt-4o-mini", "claude-3-5-haiku"], "messages": CONVERSATION}
        refused(t, t.plain, "plain", path, {**body, "params": {"api_base": f"{t.trap.url}/v1"}}, 403, "api_base")


# --- a base of its own needs a key of its own, and must be public --------------------------------


@covers(CREATE, "params", "model", "models", "kind")
@covers(RUN, "params", "models")
@pytest.mark.parametrize("path", JOB_ROUTES)
def test_with_the_permission_a_base_of_its_own_needs_its_own_key(tenant: Tenant, path: str) -> None:
    t = tenant
    for model in ("gpt-4o-mini", "claude-3-5-haiku", "command-r", "openai/anything"):
        for name in ("api_base", "base_url"):
            body = (
                job_body(path, model=model, params={name: f"{t.trap.url}/v1"})
                if path == "/v1/jobs"
                else job_body(path, models=[model], params={name: f"{t.trap.url}/v1"})
            )
            error = refused(t, t.based, "based", path, body, 400, "api_key")
            assert error["code"] == "missing_api_key" and "BATCHER_ALLOWED_API_BASES" in error["message"]
    fan_out = {"kind": "all", "models": ["gpt-4o-mini", "claude-3-5-haiku"], "messages": CONVERSATION}
    refused(t, t.based, "based", path, {**fan_out, "params": {"api_base": f"{t.trap.url}/v1"}}, 400, "api_key")


def _internal_bases(trap: Recorder) -> list[str]:
    port = trap.port
    return [
        f"{trap.url}/v1",
        f"http://localhost:{port}/v1",
        f"http://[::1]:{port}/v1",
        f"http://[::ffff:127.0.0.1]:{port}/v1",
        f"http://0x7f.1:{port}/v1",
        f"http://2130706433:{port}/v1",
        f"http://127.1:{port}/v1",
        f"http://0.0.0.0:{port}/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/v1",
        "http://10.0.0.1/v1",
        "http://192.168.0.1/v1",
        "http://100.64.0.1/v1",
        "http://[fd00::1]/v1",
        "http://224.0.0.1/v1",
    ]


@covers(CREATE, "params")
@covers(RUN, "params")
@pytest.mark.parametrize("path", JOB_ROUTES)
def test_internal_addresses_are_refused_even_with_a_key_of_its_own_and_even_for_admins(
    tenant: Tenant, path: str
) -> None:
    t = tenant
    for base in _internal_bases(t.trap):
        for who, client in (("based", t.based), ("admin", t.admin)):
            params = {"api_base": base, "api_key": TENANT_KEY}
            error = refused(t, client, who, path, job_body(path, params=params), 400, "api_base")
            assert "BATCHER_ALLOWED_API_BASES" in error["message"], error
    for base in ("http://[::1", "ftp://host/v1", "file:///etc/passwd", "gopher://x", "http://exa$mple/v1"):
        refused(
            t, t.based, "based", path, job_body(path, params={"api_base": base, "api_key": TENANT_KEY}), 400, "api_base"
        )


# --- extra_headers ----------------------------------------------------------------------------------

BAD_HEADERS = [
    ({"Authorization": "Bearer mine"}, "extra_headers.Authorization"),
    ({"x-api-key": "mine"}, "extra_headers.x-api-key"),
    ({"api-key": "mine"}, "extra_headers.api-key"),
    ({"Cookie": "session=1"}, "extra_headers.Cookie"),
    ({"Proxy-Authorization": "Basic eA=="}, "extra_headers.Proxy-Authorization"),
    ({"Host": "evil.example"}, "extra_headers.Host"),
    ({"Content-Length": "0"}, "extra_headers.Content-Length"),
    ({"Transfer-Encoding": "chunked"}, "extra_headers.Transfer-Encoding"),
    ({"X-Forwarded-For": "127.0.0.1"}, "extra_headers.X-Forwarded-For"),
    ({"X-Note": "a\r\nAuthorization: Bearer x"}, "extra_headers.X-Note"),
    ({"X-Note": "caf\u00e9"}, "extra_headers.X-Note"),
    ({"X-Note": "nul\u0000"}, "extra_headers.X-Note"),
    ({"bad header": "x"}, "extra_headers"),
]


@covers(CREATE, "params")
@covers(RUN, "params")
@pytest.mark.parametrize("path", JOB_ROUTES)
def test_extra_headers_cannot_authenticate_reroute_or_break_the_request(tenant: Tenant, path: str) -> None:
    t = tenant
    for headers, param in BAD_HEADERS:
        refused(t, t.plain, "plain", path, job_body(path, params={"extra_headers": headers}), 400, param)
        refused(
            t,
            t.admin,
            "admin",
            path,
            job_body(path, params={"extra_headers": headers, "drop_params": True}),
            400,
            param,
        )


# --- fields that must never move the destination ------------------------------------------------


@covers(CREATE, "params", "model", "messages", "kind")
@covers(RUN, "params", "models", "messages", "kind", "timeout")
@pytest.mark.parametrize("path", JOB_ROUTES)
def test_urls_in_bodies_models_and_messages_go_nowhere_but_the_configured_provider(tenant: Tenant, path: str) -> None:
    t = tenant
    trap_v1 = f"{t.trap.url}/v1"
    smuggled = {"api_base": trap_v1, "base_url": trap_v1, "url": trap_v1, "host": t.trap.url}
    image = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": f"{trap_v1}/img.png"}}]
    for fields in (
        {"params": {"extra_body": smuggled, "extra_headers": {"X-Target": trap_v1}, "metadata": smuggled}},
        {"messages": [[{"role": "user", "content": image}]]}
        if path == "/v1/jobs"
        else {"messages": [{"role": "user", "content": image}]},
        {"model": f"openai/{trap_v1}"}
        if path == "/v1/jobs"
        else {"models": [f"openai/{trap_v1}", "openai/x@127.0.0.1"]},
    ):
        accepted(t, t.plain, path, job_body(path, **fields))
    t.assert_no_leak()


# --- prompt files, uploads and OpenAI batches -----------------------------------------------------


def _upload(client: httpx.Client, lines: list[Any]) -> str:
    raw = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()
    response = client.post("/v1/files", files={"file": ("input.jsonl", raw)}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _batch_line(**body: Any) -> dict[str, Any]:
    return {
        "custom_id": "c1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": CONVERSATION, **body},
    }


def _batch_final(client: httpx.Client, batch_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """Read the batch until it is final: validation runs after the create answered, and a batch has no
    wake-up to block on (its job, once it has one, is waited for by ``Tenant.wait_all``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in FINAL_BATCH:
            return dict(batch)
        assert time.monotonic() < deadline, f"batch {batch_id} is still {batch['status']}"
        time.sleep(0.05)


@covers(UPLOAD, "file", "purpose")
@covers(BATCH, "input_file_id", "endpoint", "completion_window")
def test_batch_input_lines_cannot_name_a_base_a_key_or_an_auth_header(tenant: Tenant) -> None:
    t = tenant
    trap_v1 = f"{t.trap.url}/v1"
    for line, param in (
        (_batch_line(api_base=trap_v1), "body.api_base"),
        (_batch_line(base_url=trap_v1), "body.base_url"),
        (_batch_line(api_key=TENANT_KEY, api_base=trap_v1), "body.api_key"),
        (_batch_line(extra_headers={"Authorization": "Bearer mine"}), "body.extra_headers.Authorization"),
        (_batch_line(extra_headers={"Host": "evil.example"}), "body.extra_headers.Host"),
        ({**_batch_line(), "url": f"{trap_v1}/chat/completions"}, "url"),
    ):
        created = t.plain.post(
            "/v1/batches",
            json={
                "input_file_id": _upload(t.plain, [line]),
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert created.status_code == 200, created.text
        batch = _batch_final(t.plain, created.json()["id"])
        assert batch["status"] == "failed", batch
        (error,) = batch["errors"]["data"]
        assert error["line"] == 1 and (error["param"] or "").endswith(param.removeprefix("body.")), error
    response = t.plain.post(
        "/v1/batches",
        json={
            "input_file_id": _upload(t.plain, [_batch_line()]),
            "endpoint": f"{trap_v1}/chat/completions",
            "completion_window": "24h",
        },
    )
    assert response.status_code == 400, response.text
    t.assert_no_leak()


@covers(UPLOAD, "expires_after[anchor]", "expires_after[seconds]", "batcher_format")
@covers(BATCH, "output_expires_after", "batcher_completion_window", "batcher_priority")
def test_expiry_and_window_fields_are_bounded(tenant: Tenant) -> None:
    """Out-of-range expiries and windows are clean 400s naming the field: nothing stored, nothing sent."""
    t = tenant
    line = json.dumps(_batch_line()).encode() + b"\n"
    for data, param in (
        ({"expires_after[seconds]": str(10**12)}, "expires_after.seconds"),
        ({"expires_after[seconds]": "-1"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "\u0000", "expires_after[seconds]": "3600"}, "expires_after.anchor"),
        ({"batcher_format": "../../etc"}, "batcher_format"),
    ):
        response = t.plain.post("/v1/files", files={"file": ("x.jsonl", line)}, data={"purpose": "batch", **data})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, (data, response.text)
    file_id = _upload(t.plain, [_batch_line()])
    base = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for extra, param in (
        ({"output_expires_after": {"anchor": "created_at", "seconds": 2**62}}, "output_expires_after.seconds"),
        ({"output_expires_after": {"anchor": "now", "seconds": 3600}}, "output_expires_after.anchor"),
        ({"batcher_completion_window": "99999999999999d"}, "batcher_completion_window"),
        ({"batcher_completion_window": "0s"}, "batcher_completion_window"),
        ({"batcher_priority": 10}, "batcher_priority"),
        ({"batcher_priority": "urgent"}, "batcher_priority"),
    ):
        refused(t, t.plain, "plain", "/v1/batches", {**base, **extra}, 400, param)
    t.assert_no_leak()


@covers(BATCH, "metadata", "input_file_id", "completion_window", "endpoint")
def test_batch_metadata_is_only_stored(tenant: Tenant) -> None:
    t = tenant
    file_id = _upload(t.plain, [_batch_line(extra_body={"api_base": f"{t.trap.url}/v1"})])
    created = t.plain.post(
        "/v1/batches",
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"api_base": f"{t.trap.url}/v1", "base_url": t.trap.url},
        },
    )
    assert created.status_code == 200, created.text
    batch = _batch_final(t.plain, created.json()["id"])
    assert batch["status"] == "completed", batch
    t.assert_no_leak()


@covers(CREATE, "input_file_id", "model")
@covers(UPLOAD, "file")
def test_prompt_file_lines_cannot_name_a_base_or_an_auth_header(tenant: Tenant) -> None:
    t = tenant
    trap_v1 = f"{t.trap.url}/v1"
    for line, param in (
        ({"messages": CONVERSATION, "api_base": trap_v1}, "api_base"),
        ({"messages": CONVERSATION, "base_url": trap_v1}, "base_url"),
        ({"messages": CONVERSATION, "api_key": TENANT_KEY}, "api_key"),
        ({"messages": CONVERSATION, "extra_headers": {"X-API-Key": "mine"}}, "extra_headers.X-API-Key"),
        ({"messages": CONVERSATION, "extra_headers": {"X-Note": "a\nb"}}, "extra_headers.X-Note"),
        (_batch_line(api_base=trap_v1), "api_base"),
    ):
        for who, client in (("plain", t.plain), ("based", t.based)):
            body = {"kind": "batch", "model": "gpt-4o-mini", "input_file_id": _upload(client, [line])}
            refused(t, client, who, "/v1/jobs", body, 400, param)
    # a file can't smuggle a base into a job that names one either: the job's own base is the only one
    body = {"kind": "batch", "model": "gpt-4o-mini", "input_file_id": _upload(t.based, [{"messages": CONVERSATION}])}
    refused(t, t.based, "based", "/v1/jobs", {**body, "params": {"api_base": trap_v1}}, 400, "api_key")


@covers(RUN, "input_file_id", "model")
def test_run_takes_no_file_and_no_single_model(tenant: Tenant) -> None:
    t = tenant
    file_id = _upload(t.plain, [{"messages": CONVERSATION, "api_base": f"{t.trap.url}/v1"}])
    for extra in ({"input_file_id": file_id}, {"model": f"openai/{t.trap.url}/v1"}):
        body = {"kind": "fastest", "models": ["gpt-4o-mini"], "messages": CONVERSATION, **extra}
        assert t.plain.post("/v1/jobs/run", json=body).status_code == 400


# --- what the operator allowed --------------------------------------------------------------------


@covers(CREATE, "params")
@covers(RUN, "params")
def test_an_allowed_base_gets_only_the_tenants_own_key_and_its_echo_is_not_stored(tenant: Tenant) -> None:
    t = tenant
    params = {"api_base": f"{t.allowed.url}/v1", "api_key": TENANT_KEY}
    job = accepted(t, t.based, "/v1/jobs", job_body("/v1/jobs", params=params))
    run = accepted(t, t.based, "/v1/jobs/run", job_body("/v1/jobs/run", models=["openai/m"], params=params))
    t.wait_all()
    assert run["done"] and TENANT_KEY not in json.dumps(run)
    results = t.based.get(f"/v1/jobs/{job['id']}/results").text
    assert json.loads(results)["state"] == "succeeded", results
    assert "echo ***" in results and TENANT_KEY not in results
    with t.engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM responses WHERE body::text LIKE :k"), {"k": f"%{TENANT_KEY}%"})
        assert stored.scalar_one() == 0
    sent = [r["headers"]["authorization"] for r in t.allowed.received() if not r["path"].startswith("/redirect/")]
    assert sent == [f"Bearer {TENANT_KEY}"] * 2
    t.assert_no_leak()


@covers(CREATE, "params")
def test_a_redirect_from_an_allowed_base_is_never_followed(tenant: Tenant) -> None:
    t = tenant
    params = {"api_base": f"{t.allowed.url}/redirect/v1", "api_key": TENANT_KEY}
    job = accepted(t, t.based, "/v1/jobs", job_body("/v1/jobs", params=params))
    t.wait_all()
    result = json.loads(t.based.get(f"/v1/jobs/{job['id']}/results").text)
    assert result["state"] == "failed" and "307" in result["error"]["message"], result
    assert any(r["path"].startswith("/redirect/") for r in t.allowed.received())
    assert t.trap.received() == []
    t.assert_no_leak()


@covers(CREATE, "params")
def test_an_allowed_operator_server_gets_the_workers_key_as_documented(tenant: Tenant) -> None:
    # The operator's trust, not the tenant's: an allowed base is a server the workers' keys may go to.
    t = tenant
    marker = f"operator-allowed-{uuid.uuid4().hex}"
    body = {"kind": "batch", "model": "gpt-4o-mini", "messages": [[{"role": "user", "content": marker}]]}
    job = accepted(t, t.based, "/v1/jobs", {**body, "params": {"api_base": f"http://localhost:{t.fake.port}/v1"}})
    t.wait_all()
    assert json.loads(t.based.get(f"/v1/jobs/{job['id']}/results").text)["state"] == "succeeded"
    (seen,) = [r for r in t.fake.requests if r.prompt == marker]
    assert seen.api_key == FAKE_KEYS["OPENAI_API_KEY"]
    # the same server under a name the operator did not allow: refused at submission
    other = {**body, "params": {"api_base": f"http://127.0.0.1:{t.fake.port}/v9"}}
    refused(t, t.based, "based", "/v1/jobs", other, 400, "api_key")


# --- in-process callers, the remote client and the worker's own checks ----------------------------


def _local_client(t: Tenant, **overrides: Any) -> batcher.Client:
    env = t.cluster.env
    return batcher.Client(Settings(queue=env["BATCHER_QUEUE"], race_queue=env["BATCHER_RACE_QUEUE"], **overrides))


def test_in_process_callers_keep_the_key_and_header_rules(tenant: Tenant) -> None:
    t = tenant
    messages = [CONVERSATION]
    with _local_client(t) as client:
        # As LiteLLM, a missing key is the failure in the prompt's slot; nothing is sent anywhere.
        [slot] = batcher.batch_completion("gpt-4o-mini", messages, api_base=f"{t.trap.url}/v1", client=client)
        assert isinstance(slot, MissingAPIKeyError)
        with pytest.raises(EgressDeniedError):
            batcher.batch_completion_models(
                ["gpt-4o-mini"], CONVERSATION, api_base=f"{t.trap.url}/v1", api_key=TENANT_KEY, client=client
            )
        with pytest.raises(InvalidRequestError) as caught:
            batcher.batch_completion_models_all_responses(
                ["gpt-4o-mini"], CONVERSATION, extra_headers={"Authorization": "Bearer x"}, client=client
            )
        assert caught.value.field == "extra_headers.Authorization"
        with pytest.raises(InvalidRequestError):
            client.submit("gpt-4o-mini", messages, api_base="http://[::1", api_key=TENANT_KEY)
        lines = io.StringIO(
            json.dumps({"messages": CONVERSATION, "api_base": f"{t.trap.url}/v1"})
            + "\n"
            + json.dumps({"messages": CONVERSATION, "extra_headers": {"Cookie": "a=b"}})
            + "\n"
        )
        with pytest.raises(UnsupportedParamsError):
            client.submit_requests(read_jsonl(lines, default_model="gpt-4o-mini"))


def test_the_remote_client_is_a_tenant(tenant: Tenant) -> None:
    t = tenant
    key = t.plain.headers["Authorization"].removeprefix("Bearer ")
    with batcher.Client(base_url=t.api.url, api_key=key) as client:
        with pytest.raises(APIError) as caught:
            batcher.batch_completion("gpt-4o-mini", [CONVERSATION], api_base=f"{t.allowed.url}/v1", client=client)
        assert caught.value.status_code == 403
        with pytest.raises(InvalidRequestError):
            client.submit("gpt-4o-mini", [CONVERSATION], extra_headers={"X-Api-Key": "x"})


def test_the_worker_enforces_the_rules_again_whatever_the_submitter_believed(tenant: Tenant) -> None:
    """A submitter whose settings allow the trap (the workers' do not): the job is stored, the worker refuses."""
    t = tenant
    with _local_client(t, allowed_api_bases=[t.trap.url, f"http://localhost:{t.trap.port}"]) as client:
        without_key = client.submit("gpt-4o-mini", [CONVERSATION], api_base=f"{t.trap.url}/v1")
        by_name = client.submit(
            "gpt-4o-mini", [CONVERSATION], api_base=f"http://localhost:{t.trap.port}/v1", api_key=TENANT_KEY
        )
        for job, error_type, text_part in (
            (without_key, "AuthenticationError", "send their keys only"),
            (by_name, "EgressDeniedError", "loopback"),
        ):
            job.wait(timeout=60)
            with t.engine.connect() as conn:
                row = conn.execute(
                    text("SELECT state, error_type, error, attempts FROM requests WHERE job_id = :j"), {"j": job.id}
                ).one()
            assert (row.state, row.error_type, row.attempts) == ("failed", error_type, 1), row
            assert text_part in row.error and len(row.error) < 300, row
    t.assert_no_leak()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_cli_grants_and_shows_the_permission_and_checks_prompt_files(tenant: Tenant, tmp_path: Path) -> None:
    t = tenant
    env = t.cluster.env
    created = _cli(env, "keys", "create", "--name", "cli-based", "--allow-api-base")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id = created.stderr.split()[2]
    assert "api_base" in created.stderr
    listed = {line.split()[0]: line for line in _cli(env, "keys", "list").stdout.splitlines()}
    assert listed[key_id].endswith("api_base"), listed[key_id]
    plain = _cli(env, "keys", "create", "--name", "cli-plain")
    assert (
        "api_base"
        not in {line.split()[0]: line for line in _cli(env, "keys", "list").stdout.splitlines()}[
            plain.stderr.split()[2]
        ]
    )
    with httpx.Client(base_url=t.api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        response = c.post("/v1/jobs", json=job_body("/v1/jobs", params={"api_base": f"{t.trap.url}/v1"}))
    assert response.status_code == 400 and response.json()["error"]["param"] == "api_key"  # permitted, then checked
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": CONVERSATION, "extra_headers": {"Authorization": "Bearer x"}}) + "\n")
    submitted = _cli(env, "submit", str(prompts), "--model", "gpt-4o-mini")
    assert submitted.returncode == 2 and "extra_headers.Authorization" in submitted.stderr, submitted.stderr
    submitted = _cli(env, "submit", str(prompts), "--model", "gpt-4o-mini", "-p", f"api_base={t.trap.url}/v1")
    assert submitted.returncode == 2 and "api_key" in submitted.stderr, submitted.stderr


def test_an_unsendable_header_that_slipped_through_fails_its_request_once(tenant: Tenant) -> None:
    """A stored job holding what submission now refuses (an older version stored it, or a bug let it by):
    the worker fails that request at once, sends nothing, and goes on."""
    t = tenant
    parked_queue = f"hostile-parked-{uuid.uuid4().hex[:8]}"  # no worker consumes it: the job waits for us
    with batcher.Client(Settings(queue=parked_queue, race_queue=f"{parked_queue}.race")) as parked:
        jobs = [parked.submit("gpt-4o-mini", [CONVERSATION], extra_headers={"X-Ok": "fine"}) for _ in range(2)]
    bad_headers = ({"X-Bad": "a\r\nInjected: 1"}, {"X-Bad": "caf\u00e9", "Authorization": f"Bearer {TENANT_KEY}"})
    with t.engine.begin() as conn:
        for job, headers in zip(jobs, bad_headers, strict=True):
            conn.execute(
                text(
                    "UPDATE jobs SET params = jsonb_set(params, '{params,extra_headers}', CAST(:h AS jsonb)) "
                    "WHERE id = :j"
                ),
                {"h": json.dumps(headers), "j": job.id},
            )
    with _local_client(t) as client:
        for job in jobs:
            client.celery.send_task(
                RUN_REQUEST_TASK, args=(str(job.id), 0), queue=t.cluster.env["BATCHER_QUEUE"], ignore_result=True
            )
        for job in jobs:
            assert client.job(job.id).wait(timeout=60).state in ("completed", "failed")
    with t.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT state, error_type, error, attempts FROM requests WHERE job_id IN (:a, :b)"),
            {"a": jobs[0].id, "b": jobs[1].id},
        ).all()
    assert [(r.state, r.error_type, r.attempts) for r in rows] == [("failed", "InvalidRequestError", 1)] * 2, rows
    assert all("extra_headers" in r.error for r in rows), rows
    t.assert_no_leak()
