"""What a newcomer sees when they get something slightly wrong (issue #14's minor items): each mistake
is one line that names the problem and says what is accepted instead."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher._exceptions import InvalidRequestError, UnknownModelError
from batcher._files import read_jsonl
from batcher._providers import resolve_route
from batcher._settings_doc import markdown
from batcher.cli import _parse_params, main

ROOT = Path(__file__).resolve().parents[2]


def _read(text: str | bytes) -> list[object]:
    data = text.encode() if isinstance(text, str) else text
    return list(read_jsonl(io.BytesIO(data), default_model="gpt-4o-mini"))


def test_a_prompt_key_gets_a_hint_saying_what_is_accepted() -> None:
    with pytest.raises(InvalidRequestError) as info:
        _read('"fine"\n{"prompt": "What is the capital of France?"}\n')
    assert str(info.value) == (
        'line 2: has "prompt" but no "messages": write {"messages": [{"role": "user", "content": ...}]} or the '
        'prompt alone as a JSON string; a line is a prompt string ("Hi"), a list of messages, an object with '
        '"messages" ({"messages": [{"role": "user", "content": "Hi"}]}) or an OpenAI Batch API line'
    )


def test_an_object_without_messages_says_what_is_accepted() -> None:
    with pytest.raises(InvalidRequestError) as info:
        _read('{"temperature": 0}\n')
    assert str(info.value).startswith('line 1: has no "messages"; a line is a prompt string ("Hi"), a list of')


@pytest.mark.parametrize(
    ("line", "column"),
    [
        ('{"messages": [}', 15),  # the "}" where a value should be
        ('{"messages": [{"role": "user", "content": "héllo wörld"}],, "x": 1}', 59),  # after two non-ASCII letters
        ('{"content": "日本語"} {"x": 1}', 20),  # extra data after a complete value
        ("\ufeff{'messages': []}", 2),  # a BOM (stripped) then single quotes
    ],
)
def test_json_errors_name_the_column_an_editor_shows(line: str, column: int) -> None:
    with pytest.raises(InvalidRequestError) as info:
        _read(f'"first"\n{line}\n' if not line.startswith("\ufeff") else f"{line}\n")
    assert f"at column {column});" in str(info.value)
    # the column is the 1-based character position on the line, as editors count
    assert column - 1 == len(line.removeprefix("\ufeff")[: column - 1])


def test_a_line_that_is_not_utf8_names_the_character_column() -> None:
    raw = '"héllo '.encode() + b"\xff" + b'"\n'  # é is two bytes: the bad byte is the 8th character
    with pytest.raises(InvalidRequestError) as info:
        _read(raw)
    assert str(info.value) == "line 1: is not UTF-8 (byte 0xff at column 8); save the file as UTF-8"


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("gtp-4o-mini", "gpt-4o-mini"),
        ("cluade-sonnet-4-5", "claude-sonnet-4-5"),
        ("comand-r-plus", "command-r-plus"),
        ("opneai/gpt-4o", "openai/gpt-4o"),
        ("antropic/claude-x", "anthropic/claude-x"),
    ],
)
def test_a_mistyped_model_gets_did_you_mean(typo: str, meant: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_route(typo)
    text = str(info.value)
    assert text.startswith(f"model: no provider is known for model {typo!r} (did you mean {meant!r}?): prefix it")
    resolve_route(meant)  # and the suggestion routes


@pytest.mark.parametrize("model", ["llama3", "azure/gpt-4o", "gemini-2.0-flash"])
def test_no_guess_for_models_nothing_resembles(model: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_route(model)
    assert "did you mean" not in str(info.value)


def test_cli_params_are_coerced_like_python_values() -> None:
    params = _parse_params(
        ("temperature=0.2", "max_tokens=5", "logprobs=true", "stream=False", 'stop=["END"]', "user=alice", "seed=")
    )
    assert params == {
        "temperature": 0.2,
        "max_tokens": 5,
        "logprobs": True,
        "stream": False,
        "stop": ["END"],
        "user": "alice",
        "seed": "",
    }


@pytest.mark.parametrize("command", [["worker"], ["api"]])
def test_log_level_is_spelt_either_way(command: list[str]) -> None:
    shown = CliRunner().invoke(main, [*command, "--help"])
    assert shown.exit_code == 0
    assert "--log-level, --loglevel" in shown.output


def test_docs_settings_md_is_the_generated_table() -> None:
    """docs/settings.md is generated from batcher/_config.py: regenerate it with
    `batcher settings --markdown > docs/settings.md` after changing a setting."""
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == markdown(), "docs/settings.md is stale: run `batcher settings --markdown > docs/settings.md`"
    assert "| `BATCHER_WORKER_CONCURRENCY` | int | `100` | ≥ 1, ≤ 2,000 | Threads per worker process;" in committed


def test_settings_command_prints_markdown_and_current_values() -> None:
    runner = CliRunner()
    md = runner.invoke(main, ["settings", "--markdown"])
    assert md.exit_code == 0 and md.output == markdown()
    env = {"BATCHER_DATABASE_URL": "postgresql+psycopg://me:hunter2@db:5432/batcher", "BATCHER_SECRET_KEY": "k" * 44}
    from batcher import get_settings

    get_settings.cache_clear()
    try:
        values = runner.invoke(main, ["settings"], env=env)
    finally:
        get_settings.cache_clear()
    assert values.exit_code == 0
    lines = values.output.splitlines()
    assert "BATCHER_DATABASE_URL=postgresql+psycopg://me:***@db:5432/batcher" in lines
    assert "BATCHER_SECRET_KEY=(set, hidden)" in lines
    assert "hunter2" not in values.output and "k" * 44 not in values.output
    assert json.loads(next(line for line in lines if line.startswith("BATCHER_RATE_LIMITS=")).partition("=")[2]) == {}
