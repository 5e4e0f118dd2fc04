"""schemathesis hooks for ``test_api_schema.py``, loaded by the ``schemathesis`` CLI (``SCHEMATHESIS_HOOKS``).

Every check runs. One is relaxed, and only for the refusals a JSON schema cannot express, each
named by the ``code`` of batcher's answer (``SEMANTIC_REFUSALS``): what the schema cannot know is
the state of the server (does the ``after`` cursor name an object of yours, is the batch still
cancellable), which provider a model goes to (each takes its own parameters), and text Postgres
cannot store (a NUL character or an unpaired surrogate, which the generator may put in any string).
Anything else that a schema-valid request is refused for fails the run.

A create that repeats an ``Idempotency-Key`` already used with another body is refused (422,
``idempotency_key_reused``): server state too, so that refusal is relaxed as well. No negative
check is relaxed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import RejectedPositiveData

SEMANTIC_REFUSALS = {
    "invalid_cursor": "`after` must name an object of this key (server state)",
    "invalid_state": "only a batch still in progress can be cancelled (server state)",
    "unsupported_params": "each provider takes its own parameters (depends on where the model is routed)",
    "idempotency_key_reused": "an Idempotency-Key an earlier create used with another body (server state)",
    "invalid_file_format": "an upload's lines must be JSON objects (a schema says only 'binary')",
}
UNSTORABLE_TEXT_CODE = "invalid_value"
"""The code of a refusal of text Postgres cannot store; relaxed only when the request holds such text."""

LONGEST_WAIT_S = 3.0
"""Generated waits (``/v1/jobs/run`` ``timeout``, ``/wait?timeout=``) are capped: they would only make the run slow."""


def _unstorable(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_unstorable(v) for v in value)
    return False


def _error_code(response: Any) -> str | None:
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    keep = _keep(failure, case, response)
    if not keep and (log := os.environ.get("BATCHER_TEST_SCHEMATHESIS_FILTERED")):  # what was relaxed, to review
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{case.method} {case.operation.path} {type(failure).__name__} {_error_code(response)}\n")
    return keep


def _keep(failure: Any, case: Any, response: Any) -> bool:
    if not isinstance(failure, RejectedPositiveData):
        return True
    code = _error_code(response)
    if code in SEMANTIC_REFUSALS:
        return False
    sent = [case.body, case.query, case.path_parameters, case.headers]
    return not (code == UNSTORABLE_TEXT_CODE and _unstorable(sent))


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    path = case.operation.path
    if path == "/v1/jobs/run" and isinstance(case.body, dict):
        timeout = case.body.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > LONGEST_WAIT_S:
            case.body["timeout"] = LONGEST_WAIT_S
    if path == "/v1/jobs/{job_id}/wait" and isinstance(case.query, dict):
        timeout = case.query.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > LONGEST_WAIT_S:
            case.query["timeout"] = LONGEST_WAIT_S
