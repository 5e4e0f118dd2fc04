"""docker-compose.yml cannot be run here (no Docker engine), so check what can be checked:
the compose specification's JSON schema, the stack's shape, and that every command it runs exists."""

from __future__ import annotations

import copy
import json
import shlex
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from batcher.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@cache
def _validator() -> jsonschema.protocols.Validator:
    # The compose-spec schema as check-jsonschema ships it (kept current by that project; Apache-2.0).
    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)  # type: ignore[no-any-return]


def _errors(document: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(document)]


def test_compose_file_validates_against_the_compose_specification() -> None:
    assert _errors(_compose()) == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["services"]["worker"]["depends_on"]["migrate"].update(condition="service_finished"),
        lambda c: c["services"]["redis"]["healthcheck"].update(intervall="5s"),
        lambda c: c["services"]["api"].update(ports="8000:8000"),
    ],
    ids=["bad-condition", "misspelt-key", "ports-not-a-list"],
)
def test_the_schema_check_catches_mistakes(break_it: Any) -> None:
    broken = copy.deepcopy(_compose())
    break_it(broken)
    assert _errors(broken)


def test_services_and_dependencies() -> None:
    services = _compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "flower", "client"} <= set(services)
    for name in ("api", "worker", "client"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["flower"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("postgres", "redis", "api", "worker", "flower"):
        assert "healthcheck" in services[name], name
    # Redis keeps its queue across restarts and never evicts a queued message.
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    # The worker must be scalable: no fixed container name or host port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    assert services["worker"]["environment"]["BATCHER_METRICS_PORT"] == "9808"


def test_one_shared_env_file() -> None:
    services = _compose()["services"]
    batcher_services = {n: s for n, s in services.items() if s.get("image") == "batcher:latest"}
    assert {"migrate", "api", "worker", "flower"} <= set(batcher_services)
    env_files = {json.dumps(s["env_file"]) for s in batcher_services.values()}
    assert env_files == {json.dumps([{"path": ".env", "required": True}])}
    assert (ROOT / ".env.example").exists()


def test_every_batcher_command_exists() -> None:
    runner = CliRunner()
    checked = []
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if not command or command[0] != "batcher":
            continue
        result = runner.invoke(main, [*command[1:], "--help"] if "--help" not in command else command[1:])
        assert result.exit_code == 0, (name, result.output)
        checked.append(name)
    assert {"migrate", "api", "worker", "flower"} <= set(checked)


def test_readme_commands_are_the_ones_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_command = next(line for line in readme if "python -m pytest" in line)
    assert test_command in ci
    demo_command = next(line for line in readme if "batcher demo" in line)
    assert shlex.split(demo_command)[-2:] == ["batcher", "demo"]


def test_flower_is_published_only_behind_basic_auth_from_the_env_file() -> None:
    """Flower can revoke tasks and shut workers down: the stack refuses to start it without a login, and
    the message says what to set where (compose's ``${VAR:?message}``)."""
    flower = _compose()["services"]["flower"]
    assert flower["ports"] == ["5555:5555"]
    auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    assert auth == "${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password in .env (Flower's login)}"
    # The rest of the batcher environment is kept (a service's own `environment` replaces the anchor's).
    assert {k: v for k, v in flower["environment"].items() if k != "FLOWER_BASIC_AUTH"} == _compose()["x-batcher"][
        "environment"
    ]
    example = (ROOT / ".env.example").read_text().splitlines()
    assert "FLOWER_BASIC_AUTH=" in example  # listed, empty: compose names it until it is set


def test_readme_says_how_to_start_the_stack() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "cp .env.example .env" in readme
    assert "Compose 2.24" in readme
    assert "FLOWER_BASIC_AUTH" in readme
