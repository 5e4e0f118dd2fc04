"""Property-based: schemathesis generates requests from ``/openapi.json``; none may get a 5xx.

Bounded (a few examples per operation) so it stays a smoke test of the error paths, with an
authenticated key so the generated bodies reach the handlers rather than the 401.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from batcher._config import Settings
from batcher._db.engine import get_engine
from batcher.api.auth import create_key
from tests.support.api_server import ApiServer


@pytest.fixture(scope="module")
def fuzz_key(api: ApiServer, settings: Settings) -> str:
    return create_key(get_engine(settings), "schemathesis")[1]


EXAMPLES_PER_OPERATION = 5


def test_no_operation_answers_5xx(api: ApiServer, fuzz_key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    failures: list[str] = []
    statuses: set[int] = set()
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {fuzz_key}"
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                response = case.call(base_url=api.url, session=session, timeout=90)
                statuses.add(response.status_code)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text}")

            check()
    assert not failures, "\n".join(failures)
    # The run reached the handlers (successes) and their checks (client errors), not just the auth wall.
    assert any(200 <= s < 300 for s in statuses) and 400 in statuses, statuses
