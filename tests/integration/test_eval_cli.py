"""``batcher eval`` commands: bad suites, regressions (exit code and webhook), compare.

They run in-process through click's runner (the same commands, without a Python start-up per
call); the acceptance test and the resume test run them as subprocesses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batcher import Client, get_settings
from batcher.cli import main
from batcher.testing import FakeProvider, ModelBehaviour
from tests.integration.helpers import rows


class Ran:
    def __init__(self, result: Any) -> None:
        self.returncode: int = result.exit_code
        self.stdout: str = result.stdout
        self.stderr: str = result.stderr
        self.exception = result.exception


def batcher(env: dict[str, str | None], *args: str) -> Ran:
    get_settings.cache_clear()  # read the session's environment, whatever read settings before
    ran = Ran(CliRunner().invoke(main, list(args), env={"COLUMNS": "200", **env}))
    if ran.exception is not None and not isinstance(ran.exception, SystemExit):
        raise ran.exception
    return ran


class Hooks:
    """A webhook receiver on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.close()


def test_invalid_suite_is_refused_with_its_line_and_nothing_is_stored(
    client: Client, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "data.jsonl").write_text('{"prompt": "hi", "expected": "hi"}\n{"prompt": "no expected"}\n')
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: evc-bad\n"
        "dataset: data.jsonl\n"
        "models: [gpt-4o-mini]\n"
        "scorers:\n"
        "  - type: exact_match\n"
        "  - type: regex\n"
        "    pattern: '(unclosed'\n"
    )
    before = rows(client, "SELECT count(*) AS n FROM eval_runs")[0]["n"]
    result = batcher({}, "eval", "run", str(suite))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{suite} line 7: scorers[1].pattern: '(unclosed' is not a valid regular expression" in result.stderr

    suite.write_text(suite.read_text().replace("(unclosed", "closed"))
    result = batcher({}, "eval", "run", str(suite))
    assert result.returncode == 2
    expected_error = f"{tmp_path / 'data.jsonl'} line 2: expected: is missing, and scorer 'exact_match' compares"
    assert expected_error in result.stderr
    assert rows(client, "SELECT count(*) AS n FROM eval_runs")[0]["n"] == before


def test_missing_api_key_is_refused_before_anything_is_stored(
    client: Client, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "data.jsonl").write_text('{"prompt": "hi", "expected": "hi"}\n')
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: evc-nokey\ndataset: data.jsonl\nmodels: [claude-3-5-haiku-latest]\nscorers: [{type: contains}]\n"
    )
    result = batcher({"ANTHROPIC_API_KEY": None}, "eval", "run", str(suite))
    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY" in result.stderr and "Traceback" not in result.stderr
    assert rows(client, "SELECT count(*) AS n FROM eval_runs WHERE suite_name = 'evc-nokey'")[0]["n"] == 0


def test_regression_calls_the_webhook_and_fails_the_command(
    client: Client, fake_provider: FakeProvider, cluster_env: dict[str, str], tmp_path: Path, hooks: Hooks
) -> None:
    items = [
        {"id": "fr", "prompt": "Paris is the capital of France.", "expected": "Paris"},
        {"id": "de", "prompt": "Berlin is the capital of Germany.", "expected": "Berlin"},
        {"id": "it", "prompt": "Rome is the capital of Italy.", "expected": "Rome"},
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: evc-regress\n"
        "dataset: data.jsonl\n"
        "models: [gpt-evc-steady, gpt-evc-drifting]\n"
        "scorers: [{type: contains}]\n"
        f"regression: {{threshold: 0.1, webhook: '{hooks.url}'}}\n"
    )
    first = batcher({}, "eval", "run", str(suite), "--fail-on-regression")
    assert first.returncode == 0, first.stderr
    assert "gpt-evc-drifting" in first.stdout and hooks.received == []

    # The drifting model now answers Paris to everything: de and it flip to failing.
    fake_provider.set_behaviour("gpt-evc-drifting", ModelBehaviour(answer="Paris"))
    second = batcher({}, "eval", "run", str(suite), "--fail-on-regression")
    assert second.returncode == 1, second.stderr
    assert "REGRESSED" in second.stdout and "now failing: de, it" in second.stdout

    assert len(hooks.received) == 1
    payload = hooks.received[0]
    assert payload["event"] == "batcher.eval.regression" and payload["suite"] == "evc-regress"
    assert payload["models"] == [
        {
            "model": "gpt-evc-drifting",
            "previous_score": 1.0,
            "score": pytest.approx(1 / 3),
            "delta": pytest.approx(-2 / 3),
            "newly_failing": ["de", "it"],
            "fixed": [],
        }
    ]
    runs = rows(
        client, "SELECT id, regressed, comparison FROM eval_runs WHERE suite_name = 'evc-regress' ORDER BY created_at"
    )
    assert [r["regressed"] for r in runs] == [False, True]
    assert runs[1]["comparison"]["webhook"] == {"status_code": 204}
    assert payload["run_id"] == str(runs[1]["id"]) and payload["previous_run_id"] == str(runs[0]["id"])

    listed = batcher({"COLUMNS": "80"}, "eval", "runs", "evc-regress")  # a narrow terminal: ids are still whole
    assert listed.returncode == 0, listed.stderr
    assert str(runs[0]["id"]) in listed.stdout and str(runs[1]["id"]) in listed.stdout

    compared = batcher({}, "eval", "compare", str(runs[0]["id"])[:8], str(runs[1]["id"]))
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    drifting = next(line for line in lines if "gpt-evc-drifting" in line and "REGRESSED" in line)
    assert "1.000" in drifting and "0.333" in drifting and "-0.667" in drifting
    assert any("gpt-evc-steady" in line and "ok" in line for line in lines)
    flipped = [line for line in lines if "now fails" in line]
    assert len(flipped) == 2 and any("│ de" in line for line in flipped) and any("│ it" in line for line in flipped)
