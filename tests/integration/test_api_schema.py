"""schemathesis, with every check, against ``/openapi.json`` of the real service, as a tenant (non-admin) key.

The ``schemathesis`` command runs its phases (examples, coverage, fuzzing, stateful) with every check:
no 5xx, no undocumented status or content type, responses that match their schemas, ``Allow`` headers
that list each path's methods, schema-violating requests refused and schema-valid ones accepted. The
relaxations (refusals a schema cannot express) are in ``schemathesis_hooks.py``, each explained there.
Deterministic and bounded (examples per operation), so it runs the same in about a minute.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from batcher._config import Settings
from batcher._db.engine import get_engine
from batcher.api.auth import create_key
from tests.support.api_server import ApiServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_PER_OPERATION = 50
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def tenant_key(api: ApiServer, settings: Settings) -> str:
    return create_key(get_engine(settings), "schemathesis")[1]


def test_every_schemathesis_check_passes(api: ApiServer, tenant_key: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{api.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {tenant_key}",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--generation-deterministic",
        "--workers",
        "2",
        "--request-timeout",
        "60",
        "--no-color",
        "--output-sanitize",
        os.environ.get("BATCHER_TEST_SCHEMATHESIS_SANITIZE", "true"),
    ]
    # In a fresh directory: schemathesis keeps a cache of past crashes in its working directory and
    # replays them first, which would make one run depend on the last.
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    output = run.stdout + run.stderr
    if keep := os.environ.get("BATCHER_TEST_SCHEMATHESIS_OUTPUT"):  # the whole report, for debugging
        Path(keep).write_text(output)
    print(output[-8_000:])  # shown with -s
    assert run.returncode == 0, _failures(output)
    # Every operation of the schema was tested, and many cases ran (not a run that skipped everything).
    selected = re.search(r"(\d+) selected / (\d+) total", output)
    assert selected and selected.group(1) == selected.group(2) and int(selected.group(1)) >= 17, output[-5_000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and int(generated.group(2)) >= 1_000, output[-5_000:]


def _failures(output: str, limit: int = 400) -> str:
    """The report's failures section with each long line (a generated body) cut short, and its summary."""
    start = output.find("FAILURES")
    lines = output[start if start >= 0 else 0 :].splitlines()
    return "\n".join(line if len(line) <= limit else line[:limit] + " …" for line in lines)[-30_000:]
