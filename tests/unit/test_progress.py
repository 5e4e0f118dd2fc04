"""The bar people watch while they wait: done/total, ok and failed, rate and ETA, in a terminal and a notebook."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from batcher._jobs import JobStatus
from batcher._progress import ProgressBar
from batcher._states import JobKind, JobState


def _status(
    ok: int, failed: int = 0, *, total: int = 10, expired: int = 0, state: JobState = JobState.RUNNING
) -> JobStatus:
    return JobStatus(
        id=uuid.uuid4(),
        kind=JobKind.BATCH,
        state=state,
        total=total,
        succeeded=ok,
        failed=failed,
        cancelled=0,
        expired=expired,
        params={},
        created_at=datetime.now(UTC),
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_terminal_bar_shows_done_failed_rate_and_eta() -> None:
    console = Console(record=True, file=io.StringIO(), width=120, force_terminal=False)
    clock = _Clock()
    with ProgressBar("job 1234abcd", console=console, get_time=clock, plain=False) as bar:
        bar.update(_status(ok=2))  # already done when we started watching
        clock.now += 2
        bar.update(_status(ok=4, failed=1))
        clock.now += 2
        bar.update(_status(ok=5, failed=1, expired=1))  # expired requests count as failed
    text = console.export_text()
    assert "job 1234abcd" in text
    assert "7/10" in text
    assert "5 ok" in text and "2 failed" in text
    # rich's moving estimate: 2 more done in the last 2 s -> 1.0/s, and 3 left -> 3 s to go
    assert "1.0/s" in text
    assert "ETA 0:00:03" in text


def test_rate_is_unknown_until_something_finishes_while_watching() -> None:
    console = Console(record=True, file=io.StringIO(), width=120, force_terminal=False)
    with ProgressBar("job idle", console=console, get_time=_Clock(), plain=False) as bar:
        bar.update(_status(ok=3))
    text = console.export_text()
    assert "3/10" in text and "-/s" in text


class _DisplayHandle:
    def __init__(self) -> None:
        self.updates: list[Any] = []

    def update(self, obj: Any) -> None:
        self.updates.append(obj)


def test_notebook_bar_is_one_output_updated_in_place_as_html() -> None:
    """In Jupyter the bar is displayed once (``display_id=True``) and then updated, never printed again."""
    shown: list[Any] = []
    handle = _DisplayHandle()

    def display(obj: Any, *, display_id: bool) -> _DisplayHandle:
        assert display_id is True
        shown.append(obj)
        return handle

    notebook = Console(force_jupyter=True, file=io.StringIO())
    clock = _Clock()
    with ProgressBar("job nb", console=notebook, display=display, get_time=clock) as bar:
        bar.update(_status(ok=1))
        clock.now += 1
        bar.update(_status(ok=6, failed=4, state=JobState.COMPLETED))
    assert len(shown) == 1
    assert len(handle.updates) == 2  # the last update and the final render on exit
    final = handle.updates[-1]
    bundle = final._repr_mimebundle_(include=[], exclude=[])
    assert bundle["text/html"].startswith("<pre")
    assert "10/10" in bundle["text/plain"] and "6 ok" in bundle["text/plain"] and "4 failed" in bundle["text/plain"]
    assert notebook.file.getvalue() == ""  # nothing went to the kernel's stream


def test_notebook_without_a_kernel_does_not_print_the_bar_repeatedly() -> None:
    calls: list[Any] = []

    def display(obj: Any, *, display_id: bool) -> None:  # IPython outside a kernel returns no handle
        calls.append(obj)

    with ProgressBar("job nb", console=Console(force_jupyter=True, file=io.StringIO()), display=display) as bar:
        for ok in range(1, 5):
            bar.update(_status(ok=ok))
    assert len(calls) == 1


def test_piped_output_gets_plain_progress_lines_at_intervals_and_at_the_end() -> None:
    """Not a terminal (a CI log, ``2> log``): no live bar, no control codes, but a line every
    ``plain_every_s`` with done/total, ok, failed, rate and ETA, and the final state at the end."""
    out = io.StringIO()
    console = Console(file=out, width=80)  # a StringIO is not a terminal, as a pipe is not
    clock = _Clock()
    with ProgressBar("job 1234abcd", console=console, get_time=clock, plain_every_s=10) as bar:
        bar.update(_status(ok=0, total=2_000))
        clock.now += 4
        bar.update(_status(ok=400, total=2_000))  # within 10 s of the last line: nothing new
        clock.now += 6
        bar.update(_status(ok=900, failed=100, total=2_000))
        clock.now += 5
        bar.update(_status(ok=1_900, failed=100, total=2_000, state=JobState.COMPLETED))
    lines = out.getvalue().splitlines()
    assert lines == [
        "job 1234abcd: 0/2,000 done, 0 ok, 0 failed, -/s, elapsed 0:00:00, ETA -",
        "job 1234abcd: 1,000/2,000 done, 900 ok, 100 failed, 100.0/s, elapsed 0:00:10, ETA 0:00:10",
        "job 1234abcd: 2,000/2,000 done, 1,900 ok, 100 failed, 133.3/s, elapsed 0:00:15, ETA 0:00:00",
    ]
    assert "\x1b" not in out.getvalue()


def test_no_failures_are_not_shown_in_red() -> None:
    """``0 failed`` is dim; failures are red only when there are some."""
    console = Console(record=True, file=io.StringIO(), width=120, force_terminal=True, color_system="truecolor")
    with ProgressBar("job ok", console=console, get_time=_Clock(), plain=False) as bar:
        bar.update(_status(ok=10, state=JobState.COMPLETED))
    assert "0 failed" in console.export_text(styles=False, clear=False)
    styled = console.export_text(styles=True)
    red = "\x1b[31m"
    assert red + "0 failed" not in styled

    console = Console(record=True, file=io.StringIO(), width=120, force_terminal=True, color_system="truecolor")
    with ProgressBar("job bad", console=console, get_time=_Clock(), plain=False) as bar:
        bar.update(_status(ok=8, failed=2, state=JobState.COMPLETED))
    assert red + "2 failed" in console.export_text(styles=True)
