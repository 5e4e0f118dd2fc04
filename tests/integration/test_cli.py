"""The ``batcher`` command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from batcher import Client
from tests.integration.helpers import count_jobs


def batcher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_submit_wait_status_results(client: Client, cluster_env: dict[str, str], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            [
                json.dumps("a plain prompt"),
                json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": "a conversation"}]),
                json.dumps({"messages": [{"role": "user", "content": "an object"}], "temperature": 0}),
                json.dumps(
                    {
                        "custom_id": "req-7",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "claude-3-5-haiku-latest",
                            "messages": [{"role": "user", "content": "openai line"}],
                        },
                    }
                ),
            ]
        )
        + "\n"
    )
    submitted = batcher(cluster_env, "submit", str(prompts), "--model", "gpt-4o-mini")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    waited = batcher(cluster_env, "wait", job_id, "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    assert "completed" in waited.stdout and "4 succeeded" in waited.stdout

    status = batcher(cluster_env, "status", job_id, "--json")
    data = json.loads(status.stdout)
    assert (data["state"], data["total"], data["succeeded"]) == ("completed", 4, 4)

    out = tmp_path / "out.jsonl"
    got = batcher(cluster_env, "results", job_id, "-o", str(out))
    assert got.returncode == 0, got.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    assert lines[3]["custom_id"] == "req-7" and lines[3]["model"] == "claude-3-5-haiku-latest"
    assert lines[3]["response"]["_hidden_params"]["custom_llm_provider"] == "anthropic"
    assert lines[0]["response"]["choices"][0]["message"]["content"].endswith("a plain prompt")


def test_malformed_line_rejects_whole_file(client: Client, cluster_env: dict[str, str], tmp_path: Path) -> None:
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('"fine"\n"also fine"\n{"messages": [oops]}\n"never reached"\n')
    before = count_jobs(client)
    result = batcher(cluster_env, "submit", str(prompts), "--model", "gpt-4o-mini")
    assert result.returncode == 2
    assert "line 3" in result.stderr and "not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert count_jobs(client) == before


def test_unknown_job_is_a_clear_error(cluster_env: dict[str, str]) -> None:
    result = batcher(cluster_env, "status", "00000000-0000-0000-0000-000000000000")
    assert result.returncode == 2
    assert "no job" in result.stderr and "Traceback" not in result.stderr
