"""``python -m bench.queues`` (issue #15's benchmark) keeps its command line and its table, so it does not rot
between the runs that need a whole cluster: the issue's sizes by default, ``--quick`` and explicit sizes, one
clean line for a bad option, and the arithmetic and formatting of what it reports."""

from __future__ import annotations

import pytest

from bench import queues
from bench.queues import Outcome, Row, UsageError, fmt_s, parse, ratio, report, table, throughput


def test_defaults_are_the_issues_sizes() -> None:
    args, chosen = parse([])
    assert chosen == ["memory", "small-behind-large", "after-cancel", "tenants"]
    assert args.memory_prompts == 1_000_000
    assert args.large_prompts == 100_000
    assert args.small_prompts == 10
    assert args.small_timeout_s == 300
    assert args.cancel_prompts == "20000,100000"
    assert args.tenant_prompts == 50_000
    assert args.tenant_delay_s == 60
    assert args.json is None and not args.quick


def test_quick_is_small_and_explicit_sizes_win() -> None:
    args, chosen = parse(["--quick", "--scenarios", "memory,tenants", "--tenant-prompts", "7", "--json", "o.json"])
    assert chosen == ["memory", "tenants"]
    assert args.memory_prompts == queues.QUICK["memory_prompts"] < 10_000
    assert args.tenant_prompts == 7
    assert str(args.json) == "o.json"
    full, _ = parse(["--memory-prompts", "100000", "--cancel-prompts", "5,6"])
    assert full.memory_prompts == 100_000 and full.cancel_prompts == "5,6"
    assert full.large_prompts == queues.DEFAULT_LARGE_PROMPTS
    assert full.extra_command is None
    extra, _ = parse(["--extra-command", "beat", "--extra-command", "dispatch --log-level INFO"])
    assert extra.extra_command == ["beat", "dispatch --log-level INFO"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--scenarios", "memory,nope"], "--scenarios: unknown nope"),
        (["--scenarios", ","], "--scenarios"),
        (["--cancel-prompts", "20k"], "--cancel-prompts"),
        (["--cancel-prompts", "0"], "--cancel-prompts"),
        (["--memory-prompts", "0"], "--memory-prompts"),
        (["--tenant-delay-s", "-1"], "--tenant-delay-s"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(argv: list[str], named: str) -> None:
    with pytest.raises(UsageError, match=named) as caught:
        parse(argv)
    assert "\n" not in str(caught.value)


def test_main_refuses_a_bad_option_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert queues.main(["--scenarios", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose from memory, small-behind-large, after-cancel, tenants" in err


def test_throughput_between_the_samples_inside_the_interval() -> None:
    samples = [(0.0, 0), (1.0, 100), (2.0, 300), (3.0, 600)]
    assert throughput(samples, 1.0, 3.0) == 250.0
    assert throughput(samples, 0.5, 2.5) == 200.0
    assert throughput([(0.0, 5), (4.0, 5)], 0.0, 4.0) == 0.0  # waited the whole time: 0, not unknown
    assert throughput(samples, 2.5, 2.9) is None  # no two samples inside
    assert throughput(samples, 3.0, 1.0) is None


def test_ratio_is_the_slower_over_the_faster() -> None:
    assert ratio(100.0, 100.0) == 1.0
    assert ratio(50.0, 200.0) == ratio(200.0, 50.0) == 0.25
    assert ratio(200.0, 0.0) == 0.0  # one tenant starved: the worst, not unknown
    assert ratio(0.0, 0.0) is None
    assert ratio(None, 10.0) is None


def test_a_wait_that_ran_out_is_reported_as_more_than_the_timeout() -> None:
    assert fmt_s(None, 300.0) == "> 300 s"
    assert fmt_s(1.234) == "1.23 s"
    assert fmt_s(38.46) == "38.5 s"


def test_table_has_a_row_per_figure_with_its_verdict_and_the_notes() -> None:
    outcomes = [
        Outcome(
            "memory",
            rows=[
                Row("memory", "growth", "+116.0 MB", "≤ 20 MB", False, "+116 MB"),
                Row("memory", "submit | time", "2.1 s", "reported", None),
            ],
            notes=["memory: a note"],
        ),
        Outcome("after-cancel", rows=[Row("after-cancel", "small job", "1.20 s", "≤ 3 s", True)]),
    ]
    text = table(outcomes)
    lines = text.splitlines()
    assert lines[0] == "| scenario | figure | issue (before) | now | goal | met? |"
    assert lines[2] == "| memory | growth | +116 MB | +116.0 MB | ≤ 20 MB | **not met** |"
    assert lines[3] == "| memory | submit \\| time |  | 2.1 s | reported | - |"  # a pipe cannot split a cell
    assert lines[4] == "| after-cancel | small job |  | 1.20 s | ≤ 3 s | **met** |"
    assert lines[-1] == "- memory: a note"

    printed = report(outcomes, command="python -m bench.queues --quick", started="now", load=(1.0, 2.0), quick=True)
    assert printed.startswith("## Bounded queues and fairness (issue #15)\n")
    assert "**Quick run**" in printed and text in printed
    assert "**Quick run**" not in report(outcomes, command="c", started="now", load=(1.0, 2.0), quick=False)
