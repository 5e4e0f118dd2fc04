"""Suite files: what loads, and every problem reported with its file, line and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batcher.evals.errors import SuiteError
from batcher.evals.states import RunState
from batcher.evals.suite import load_suite, request_key

DATASET = [
    {"id": "fr", "prompt": "Capital of France?", "expected": "Paris", "metadata": {"continent": "Europe"}},
    {
        "messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "Capital of Japan?"}],
        "expected": "Tokyo",
    },
]


def write(tmp_path: Path, suite: str, dataset: list[Any] | str = DATASET, name: str = "data.jsonl") -> Path:
    data = dataset if isinstance(dataset, str) else "".join(json.dumps(row) + "\n" for row in dataset)
    (tmp_path / name).write_text(data)
    path = tmp_path / "suite.yaml"
    path.write_text(suite)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SuiteError) as caught:
        load_suite(path)
    return [str(p).replace(f"{path.parent}/", "") for p in caught.value.problems]


def test_a_full_suite_loads_with_per_model_params_and_dataset_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "answer.json").write_text('{"type": "object", "required": ["city"]}')
    (tmp_path / "data").mkdir()
    path = write(
        tmp_path,
        "name: capitals\n"
        "dataset: data/items.jsonl\n"
        "system_prompt: Answer with the city only.\n"
        "params: {temperature: 0, max_tokens: 20}\n"
        "models:\n"
        "  - gpt-4o-mini\n"
        "  - model: claude-3-5-haiku-latest\n"
        "    params: {max_tokens: 50}\n"
        "  - model: gpt-4o-mini\n"
        "    name: mini-warm\n"
        "    params: {temperature: 1}\n"
        "    price: {input: 1, output: 2}\n"
        "scorers:\n"
        "  - type: exact_match\n"
        "    ignore_punctuation: true\n"
        "  - {type: json_schema, schema_file: schemas/answer.json}\n"
        "  - {type: llm_judge, model: gpt-4o, rubric: Names the city.}\n"
        "schedule: {cron: '0 2 * * *', timezone: Europe/Paris}\n"
        "cache: true\n",
        name="data/items.jsonl",
    )
    suite = load_suite(path)
    spec = suite.spec
    assert [m.label for m in spec.models] == ["gpt-4o-mini", "claude-3-5-haiku-latest", "mini-warm"]
    assert spec.params_for(spec.models[1]) == {"temperature": 0, "max_tokens": 50}
    assert spec.params_for(spec.models[2]) == {"temperature": 1, "max_tokens": 20}
    assert [s.label for s in spec.scorers] == ["exact_match", "json_schema", "llm_judge"]
    assert suite.config()["scorers"][1]["schema"] == {"type": "object", "required": ["city"]}  # inlined
    assert spec.schedule is not None and spec.schedule.timezone == "Europe/Paris" and spec.cache
    first, second = suite.items
    assert first.item_id == "fr" and first.metadata == {"continent": "Europe"}
    assert first.messages == [
        {"role": "system", "content": "Answer with the city only."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert second.item_id == "line 2" and second.messages[0]["content"] == "terse"  # messages kept as given
    plan = suite.plan()
    assert len(plan) == 6 and len({p.key for p in plan}) == 6
    assert plan[0].key == request_key("gpt-4o-mini", first.messages, {"temperature": 0, "max_tokens": 20})


def test_request_key_and_fingerprint_change_with_what_is_sent(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert request_key("m", messages, {"a": 1, "b": 2}) == request_key("m", messages, {"b": 2, "a": 1})
    assert request_key("m", messages, {}) == request_key("m", messages, None)
    assert request_key("m", messages, {"a": 1}) != request_key("m", messages, {"a": 2})
    assert request_key("m", messages, None) != request_key("n", messages, None)
    path = write(tmp_path, "name: s\ndataset: data.jsonl\nmodels: [gpt-4o-mini]\nscorers: [{type: contains}]\n")
    before = load_suite(path).fingerprint()
    assert load_suite(path).fingerprint() == before
    (tmp_path / "data.jsonl").write_text((tmp_path / "data.jsonl").read_text().replace("Paris", "Lyon"))
    assert load_suite(path).fingerprint() != before


def test_schema_problems_are_all_reported_with_their_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: bad\n"  # 1
        "dataset: data.jsonl\n"  # 2
        "models:\n"  # 3
        "  - model: gpt-4o-mini\n"  # 4
        "    temperature: 0\n"  # 5
        "scorers:\n"  # 6
        "  - type: regex\n"  # 7
        "    pattern: '[a-'\n"  # 8
        "  - type: exact\n"  # 9
        "  - type: numeric\n"  # 10
        "    tolerance: -1\n"  # 11
        "  - {type: custom, function: no_such_module_xyz:score}\n"  # 12
        "schedule:\n"  # 13
        "  cron: '0 2 * *'\n"  # 14
        "  timezone: Mars/Olympus\n",  # 15
    )
    assert problems(path) == [
        "suite.yaml line 5: models[0].temperature: is not a known field; use one of model, name, params, price",
        "suite.yaml line 8: scorers[0].pattern: '[a-' is not a valid regular expression "
        "(unterminated character set at position 0)",
        "suite.yaml line 9: scorers[1]: 'exact' is not a scorer type; use one of exact_match, contains, regex, "
        "json_valid, json_schema, numeric, llm_judge, custom",
        "suite.yaml line 11: scorers[2].tolerance: Input should be greater than or equal to 0",
        "suite.yaml line 12: scorers[3]: cannot import module 'no_such_module_xyz' (No module named "
        "'no_such_module_xyz'); is it installed where the runs are scored?",
        "suite.yaml line 14: schedule.cron: '0 2 * *' is not a 5-field cron expression "
        "(minute hour day-of-month month day-of-week)",
        "suite.yaml line 15: schedule.timezone: 'Mars/Olympus' is not an IANA time zone name such as 'UTC' or "
        "'Europe/Paris'",
    ]


def test_missing_fields_point_at_the_mapping_that_lacks_them(tmp_path: Path) -> None:
    path = write(tmp_path, "name: bad\nmodels: []\nscorers:\n  - type: llm_judge\n    model: gpt-4o\n")
    assert problems(path) == [
        "suite.yaml line 1: dataset: is required",
        "suite.yaml line 2: models: List should have at least 1 item after validation, not 0",
        "suite.yaml line 4: scorers[0].rubric: is required",
    ]


def test_models_are_checked_for_routing_params_and_duplicates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: bad\n"
        "dataset: data.jsonl\n"
        "models:\n"
        "  - gpt-4o-mini\n"
        "  - llama3\n"
        "  - model: claude-3-5-haiku-latest\n"
        "    params: {logit_bias: {'1': 2}}\n"
        "  - gpt-4o-mini\n"
        "scorers:\n"
        "  - type: contains\n"
        "  - type: contains\n",
    )
    found = problems(path)
    assert found[0].startswith("suite.yaml line 5: models[1].model: no provider is known for model 'llama3'")
    assert found[1].startswith("suite.yaml line 7: models[2].params.logit_bias: anthropic does not support")
    assert found[1].endswith("; remove it from the suite's params")
    assert found[2:] == [
        "suite.yaml line 8: models[3]: 'gpt-4o-mini' is listed twice (also models[0]); "
        "give each entry a distinct 'name'",
        "suite.yaml line 11: scorers[1]: a second scorer named 'contains'; give each a distinct 'name'",
    ]


def test_dataset_lines_are_checked_one_by_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "name: s\ndataset: data.jsonl\nmodels: [gpt-4o-mini]\nscorers: [{type: numeric}]\n",
        '{"id": "a", "prompt": "one plus one", "expected": 2}\n'
        "\n"
        '{"prompt": "x", "expected": "two"}\n'
        '{"prompt": "x", "messages": [], "expected": 1}\n'
        '{"id": "a", "prompt": "again", "expected": 3}\n'
        '{"prompt": "no answer"}\n'
        '{"prompt": "y", "expcted": 1}\n'
        "[1, 2]\n"
        '{"messages": [{"role": "robot", "content": "hi"}], "expected": 1}\n'
        '{"prompt": "z", "expected": 1\n',
    )
    assert problems(path) == [
        "data.jsonl line 3: expected: 'two' is not a number, and scorer 'numeric' is numeric",
        "data.jsonl line 4: needs exactly one of 'prompt' (a string) or 'messages' (a conversation)",
        "data.jsonl line 5: id: 'a' is also the id of line 1; ids must be unique",
        "data.jsonl line 6: expected: is missing, and scorer 'numeric' compares answers with it",
        "data.jsonl line 7: expcted: unknown field; an item has id, prompt, messages, expected, metadata "
        "(put extra data in metadata)",
        'data.jsonl line 8: must be a JSON object such as {"prompt": "...", "expected": "..."}',
        "data.jsonl line 9: messages[0].role: 'robot' is not a role; use one of assistant, developer, function, "
        "system, tool, user",
        "data.jsonl line 10: not valid JSON (Expecting ',' delimiter at column 30)",
    ]


def test_unreadable_files_and_non_suites(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == ["nope.yaml: cannot be read (No such file or directory)"]
    path = write(tmp_path, "name: [unclosed\n")
    assert problems(path)[0].startswith("suite.yaml line 2: is not valid YAML")
    path.write_text("- just\n- a list\n")
    assert problems(path) == ["suite.yaml line 1: must be a YAML mapping with name, dataset, models and scorers"]
    path = write(tmp_path, "name: s\ndataset: missing.jsonl\nmodels: [gpt-4o-mini]\nscorers: [{type: json_valid}]\n")
    assert problems(path) == [
        "suite.yaml line 2: dataset: 'missing.jsonl' is not a file (paths are relative to the suite)"
    ]
    write(tmp_path, path.read_text().replace("missing", "empty"), "\n\n", name="empty.jsonl")
    assert problems(path) == ["empty.jsonl: has no items; write one JSON object per line"]


def test_schema_states_match_the_run_states() -> None:
    from batcher._db.models import _EVAL_RUN_STATES

    assert ", ".join(f"'{s.value}'" for s in RunState) == _EVAL_RUN_STATES
