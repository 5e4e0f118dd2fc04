"""Fuzzing every route that takes a body or a file, against the real service.

Bad input (nesting thousands of levels deep, huge lines and bodies, invalid UTF-8, NUL characters,
unpaired surrogates, NaN, wrong types everywhere, ``"temperature": "hot"``) must get one clean 4xx
line, never a 5xx, and leave nothing stored: the rows of ``jobs`` and ``requests`` are counted
before and after each refused request. A bad batch input file ends ``failed`` with the line named.
Sizes are bounded and the examples derandomized, so the run is quick and the same every time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from batcher._config import Settings
from batcher._db.engine import get_engine
from batcher._exceptions import InvalidRequestError
from batcher._validation import MAX_JSON_DEPTH, PARAM_TYPES, check_param
from batcher.api.auth import create_key
from tests.support.api_server import ApiServer

HI = [{"role": "user", "content": "hi"}]
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)

# JSON text that a Python dict cannot hold, spliced into a body where ``"@POISON@"`` stands.
MARK = '"@POISON@"'
DEPTHS = [MAX_JSON_DEPTH + 1, 300, 990, 5_000, 50_000]
POISONS = [
    *("[" * d + "]" * d for d in DEPTHS),
    *('{"a":' * d + "1" + "}" * d for d in DEPTHS[:3]),
    '"nul \\u0000 here"',
    '"\\u0000"',
    '"lone \\ud800 high"',
    '"lone \\udfff low"',
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
]
# Where a poison goes: a path into the body (a job of each kind).
PLACES: list[tuple[str, list[str | int]]] = [
    ("batch", ["messages", 0, 0, "content"]),
    ("batch", ["messages", 0, 0, "name"]),
    ("batch", ["messages", 0, 0, "content", 0, "text"]),
    ("batch", ["messages", 0, 0, "role"]),
    ("batch", ["model"]),
    ("batch", ["params", "temperature"]),
    ("batch", ["params", "extra_body", "x"]),
    ("batch", ["params", "metadata", "x"]),
    ("batch", ["params", "mock_response"]),
    ("batch", ["params", "completion_window"]),
    ("batch", ["params", "stop"]),
    ("batch", ["params", "tools", 0, "function", "parameters"]),
    ("fastest", ["messages", 0, "content"]),
    ("fastest", ["models", 0]),
    ("all", ["params", "logit_bias", "42"]),
]
# Wrong values for batcher's options (the provider parameters get theirs from PARAM_TYPES).
BAD_OPTIONS: dict[str, list[Any]] = {
    "timeout": [-1, 0, "10", 10**12, True],
    "completion_window": ["tomorrow", "0s", "99999999999999d", "1.5h", 1e300, -5, "31d"],
    "num_retries": [-1, 50, 1.5, "3"],
    "drop_params": ["yes", 1],
    "mock_response": [1, {}],
    "metadata": ["x", [1]],
    "api_key": ["", " ", 5],
    "max_workers": [0, "8"],
}


@pytest.fixture(scope="module")
def http(api: ApiServer, settings: Settings) -> Iterator[httpx.Client]:
    key = create_key(get_engine(settings), "fuzz")[1]
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def stored(settings: Settings) -> Callable[[], tuple[int, int]]:
    engine = get_engine(settings)

    def counts() -> tuple[int, int]:
        with engine.connect() as conn:
            jobs, requests = conn.execute(
                text("SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM requests)")
            ).one()
        return int(jobs), int(requests)

    return counts


def refused(response: httpx.Response, *, naming: str | None = None) -> dict[str, Any]:
    """One clean 4xx: OpenAI's error shape, a one-line message (naming ``naming``), no traceback."""
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:800]}"
    error = response.json()["error"]
    message = error["message"]
    assert isinstance(message, str) and message.strip(), error
    assert "\n" not in message and "Traceback" not in message and len(message) < 2_000, message
    assert response.headers.get("x-should-retry") == "false"
    if naming is not None:
        assert naming in message or naming in (error.get("param") or ""), error
    return dict(error)


def body_of(kind: str) -> dict[str, Any]:
    conversation = [{"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "u"}]
    params = {"mock_response": "ok", "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    if kind == "batch":
        return {"model": "gpt-4o-mini", "messages": [conversation], "params": params}
    return {"kind": kind, "models": ["gpt-4o-mini", "claude-3-5-haiku"], "messages": conversation, "params": params}


def spliced(kind: str, path: list[str | int], poison: str) -> str:
    body = body_of(kind)
    node: Any = body
    for step in path[:-1]:
        node = node.setdefault(step, {}) if isinstance(step, str) and isinstance(node, dict) else node[step]
    node[path[-1]] = "@POISON@"
    return json.dumps(body).replace(MARK, poison)


# --- JSON bodies ----------------------------------------------------------------------------------


def test_poisoned_bodies_are_refused_and_nothing_is_stored(
    http: httpx.Client, stored: Callable[[], tuple[int, int]]
) -> None:
    @FUZZ
    @given(place=st.sampled_from(PLACES), poison=st.sampled_from(POISONS), run=st.booleans())
    def check(place: tuple[str, list[str | int]], poison: str, run: bool) -> None:
        kind, path = place
        route = "/v1/jobs/run" if run and kind != "batch" else "/v1/jobs"
        before = stored()
        response = http.post(route, content=spliced(kind, path, poison), headers={"content-type": "application/json"})
        refused(response)
        assert stored() == before

    check()


@pytest.mark.parametrize("depth", [100, 5_000, 200_000])
def test_deep_bodies_name_the_nesting(http: httpx.Client, stored: Callable[[], tuple[int, int]], depth: int) -> None:
    before = stored()
    deep = "[" * depth + "]" * depth
    body = '{"model": "gpt-4o-mini", "messages": [[{"role": "user", "content": "x", "x": ' + deep + "}]]}"
    error = refused(http.post("/v1/jobs", content=body, headers={"content-type": "application/json"}))
    assert "nested" in error["message"], error
    assert stored() == before


def test_temperature_hot_names_the_parameter(http: httpx.Client, stored: Callable[[], tuple[int, int]]) -> None:
    before = stored()
    body = {"model": "gpt-4o-mini", "messages": [HI], "params": {"temperature": "hot"}}
    error = refused(http.post("/v1/jobs", json=body), naming="temperature")
    assert error["param"] == "temperature" and "0 to 2" in error["message"]
    run = {"kind": "all", "models": ["gpt-4o-mini"], "messages": HI, "params": {"temperature": "hot"}}
    refused(http.post("/v1/jobs/run", json=run), naming="temperature")
    assert stored() == before


def test_wrong_parameter_types_are_refused(http: httpx.Client, stored: Callable[[], tuple[int, int]]) -> None:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    )

    @FUZZ
    @given(name=st.sampled_from(sorted(PARAM_TYPES)), value=json_values)
    def check(name: str, value: Any) -> None:
        try:
            check_param(name, value, name)
        except InvalidRequestError:
            pass
        else:
            assume(False)  # a value batcher takes: not this test's business
        before = stored()
        body = {"model": "gpt-4o-mini", "messages": [HI], "params": {name: value, "mock_response": "ok"}}
        refused(http.post("/v1/jobs", json=body), naming=name)
        assert stored() == before

    check()


@pytest.mark.parametrize(("option", "value"), [(o, v) for o, values in BAD_OPTIONS.items() for v in values])
def test_wrong_options_are_refused(
    http: httpx.Client, stored: Callable[[], tuple[int, int]], option: str, value: Any
) -> None:
    before = stored()
    body = {"model": "gpt-4o-mini", "messages": [HI], "params": {option: value}}
    refused(http.post("/v1/jobs", json=body), naming=option)
    assert stored() == before


def test_wrong_types_everywhere_in_the_body(http: httpx.Client, stored: Callable[[], tuple[int, int]]) -> None:
    anything = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=8,
    )
    fields = ["kind", "model", "models", "messages", "input_file_id", "params", "timeout"]

    @FUZZ
    @given(field=st.sampled_from(fields), value=anything, kind=st.sampled_from(["batch", "fastest"]))
    def check(field: str, value: Any, kind: str) -> None:
        body = body_of(kind)
        body["params"] = {"mock_response": "ok"}
        body[field] = value
        before = stored()
        response = http.post("/v1/jobs", json=body)
        if response.status_code < 400:  # a value that happens to make a valid job: not a refusal to check
            return
        refused(response)
        assert stored() == before

    check()


def test_bodies_that_are_not_utf8_are_refused(http: httpx.Client, stored: Callable[[], tuple[int, int]]) -> None:
    @FUZZ
    @given(prefix=st.binary(max_size=200), route=st.sampled_from(["/v1/jobs", "/v1/jobs/run", "/v1/batches"]))
    def check(prefix: bytes, route: str) -> None:
        before = stored()
        raw = b'{"model": "gpt-4o-mini", "messages": [[{"role": "user", "content": "' + prefix + b'\xff\xfe"}]]}'
        refused(http.post(route, content=raw, headers={"content-type": "application/json"}))
        assert stored() == before

    check()


def test_a_huge_body_is_refused(http: httpx.Client, stored: Callable[[], tuple[int, int]]) -> None:
    before = stored()
    body = {"model": "gpt-4o-mini", "messages": [[{"role": "user", "content": "x" * 1_100_000}]]}
    error = refused(http.post("/v1/jobs", json=body), naming="messages[0]")
    assert "over the limit" in error["message"]
    assert stored() == before


def test_batch_create_refuses_bad_windows_and_metadata(http: httpx.Client) -> None:
    file_id = upload(http, [batch_line(1)])
    for window in ["99999999999999d", "0s", "1e9h", "", "24 hours"]:
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": window}
        refused(http.post("/v1/batches", json=body), naming="completion_window")
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"k": "nul \u0000"},
    }
    refused(http.post("/v1/batches", json=body), naming="metadata")
    for bad_id in ["file-\u0000", "nul\u0000\u0000", "f\u00e9"]:
        body = {"input_file_id": bad_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        assert refused(http.post("/v1/batches", json=body))["code"] == "not_found"


# --- files ----------------------------------------------------------------------------------------


def batch_line(i: int, **body: Any) -> bytes:
    line = {
        "custom_id": f"r{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 5, **body},
    }
    return json.dumps(line).encode()


POISON_LINES: list[tuple[str, bytes]] = [
    ("deep array", b"[" * 5_000 + b"]" * 5_000),
    (
        "deep line",
        b'{"custom_id": "d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": '
        b'"gpt-4o-mini", "messages": [{"role": "user", "content": "x", "x": ' + b"[" * 200 + b"]" * 200 + b"}]}}",
    ),
    ("invalid UTF-8", batch_line(0).replace(b'"hi"', b'"h\xff\xfei"')),
    ("raw NUL byte", batch_line(0).replace(b'"hi"', b'"h\x00i"')),
    ("NUL escape", batch_line(0).replace(b'"hi"', b'"h\\u0000i"')),
    ("lone surrogate", batch_line(0).replace(b'"hi"', b'"h\\ud800i"')),
    ("surrogate custom_id", batch_line(0).replace(b'"r0"', b'"r\\udc00"')),
    ("NaN temperature", batch_line(0, temperature="@")[:-2].replace(b'"@"', b"NaN") + b"}}"),
    ("hot temperature", batch_line(0, temperature="hot")),
    ("string max_tokens", batch_line(0, max_tokens="5")),
    ("wrong stop", batch_line(0, stop=[1, 2])),
    ("deep extra_body", batch_line(0, extra_body={"a": "@"}).replace(b'"@"', b"[" * 100 + b"]" * 100)),
    ("not JSON", b"{nope"),
    ("binary", bytes(b for b in range(256) if b != ord("\n"))),
]


def upload(http: httpx.Client, lines: list[bytes]) -> str:
    file_id = try_upload(http, lines)
    assert isinstance(file_id, str), file_id
    return file_id


def try_upload(http: httpx.Client, lines: list[bytes]) -> str | dict[str, Any]:
    """The file's id; or, for a file refused at upload (empty, a line not a JSON object), the error, which
    names the line (nothing is stored)."""
    content = b"\n".join(lines) + b"\n"
    response = http.post("/v1/files", files={"file": ("input.jsonl", content)}, data={"purpose": "batch"})
    if response.status_code == 400:
        error: dict[str, Any] = refused(response, naming="file")
        assert error["code"] == "invalid_file_format", error
        return error
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def wait_final(http: httpx.Client, batch_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The batch once validation is over (it runs after the create answered)."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] != "validating":
            return dict(batch)
        assert time.monotonic() < deadline, f"batch {batch_id} is still validating after {timeout_s} s"
        time.sleep(0.05)


@pytest.mark.parametrize(("name", "poison"), POISON_LINES, ids=[n for n, _ in POISON_LINES])
def test_a_bad_file_line_is_named_and_nothing_is_stored(
    http: httpx.Client, stored: Callable[[], tuple[int, int]], name: str, poison: bytes
) -> None:
    lines = [batch_line(1), batch_line(2), poison, batch_line(4)]
    before = stored()
    file_id = try_upload(http, lines)
    if not isinstance(file_id, str):  # not JSON, not UTF-8: refused at upload already, as OpenAI does
        assert "line 3 " in file_id["message"], file_id
        assert stored() == before
        return
    # A native job from the file: refused at once, naming the line.
    error = refused(http.post("/v1/jobs", json={"input_file_id": file_id}), naming="line 3")
    assert stored() == before, error
    # An OpenAI batch from the file: accepted as validating, then failed with line 3 in its errors.
    created = http.post(
        "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    )
    assert created.status_code == 200, created.text
    batch = wait_final(http, created.json()["id"])
    assert batch["status"] == "failed", batch
    errors = batch["errors"]["data"]
    assert [e["line"] for e in errors] == [3], errors
    assert errors[0]["message"] and "\n" not in errors[0]["message"], errors
    assert stored() == before


def test_random_file_contents_never_stall_a_batch(http: httpx.Client, stored: Callable[[], tuple[int, int]]) -> None:
    @settings(max_examples=12, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        lines=st.lists(
            st.one_of(
                st.binary(max_size=60),
                st.sampled_from([p for _, p in POISON_LINES]),
                st.integers(1, 9).map(batch_line),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def check(lines: list[bytes]) -> None:
        before = stored()
        file_id = try_upload(http, [*lines, b"[" * 3_000])  # always one bad line, last
        if not isinstance(file_id, str):  # refused at upload (a line not a JSON object), naming it
            assert stored() == before
            return
        refused(http.post("/v1/jobs", json={"input_file_id": file_id, "model": "gpt-4o-mini"}))
        assert stored() == before
        created = http.post(
            "/v1/batches",
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
        assert created.status_code == 200, created.text
        batch = wait_final(http, created.json()["id"])
        assert batch["status"] == "failed" and batch["errors"]["data"], batch
        assert all(e["message"] and "\n" not in e["message"] for e in batch["errors"]["data"])
        assert stored() == before

    check()


def test_a_line_over_the_limit_is_named(http: httpx.Client, stored: Callable[[], tuple[int, int]]) -> None:
    huge = batch_line(2).replace(b'"hi"', b'"' + b"x" * 2_100_000 + b'"')
    before = stored()
    error = try_upload(http, [batch_line(1), huge])  # refused at upload, naming the line
    assert isinstance(error, dict) and "line 2 is longer than" in error["message"], error
    assert stored() == before


def test_upload_refuses_a_wrong_purpose_and_stores_no_file(http: httpx.Client) -> None:
    listed = len(http.get("/v1/files").json()["data"])
    for purpose in ["", "fine-tune", "batch\u0000"]:
        response = http.post("/v1/files", files={"file": ("x.jsonl", b"{}\n")}, data={"purpose": purpose})
        refused(response, naming="purpose")
    assert len(http.get("/v1/files").json()["data"]) == listed
    refused(http.post("/v1/files", data={"purpose": "batch"}), naming="file")
