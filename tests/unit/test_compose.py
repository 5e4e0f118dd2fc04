"""docker-compose.yml cannot be run here (no Docker engine), so check what can be checked."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from click.testing import CliRunner

from batcher.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_dependencies() -> None:
    services = _compose()["services"]
    assert {"postgres", "redis", "migrate", "worker", "beat", "client"} <= set(services)
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "noeviction" in services["redis"]["command"]
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
    # worker must be scalable: no fixed container name or host port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_every_batcher_command_exists() -> None:
    runner = CliRunner()
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if not command or command[0] != "batcher":
            continue
        result = runner.invoke(main, [*command[1:], "--help"] if "--help" not in command else command[1:])
        assert result.exit_code == 0, (name, result.output)


def test_readme_commands_are_the_ones_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_command = next(line for line in readme if "python -m pytest" in line)
    assert test_command in ci
    demo_command = next(line for line in readme if "batcher demo" in line)
    assert shlex.split(demo_command)[-2:] == ["batcher", "demo"]
