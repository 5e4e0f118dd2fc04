"""A live progress bar for people waiting on a job: done/total, ok and failed, rate, ETA, place in line.

In a terminal it is rich's live display. In a notebook (Jupyter, VS Code, Colab) rich renders
the bar to HTML and it is shown in one output that is updated in place through IPython's
display handles, which every notebook front end supports without ipywidgets. When stderr is
neither (piped to a file, a CI log), a plain line is written every ``PLAIN_EVERY_S`` seconds
instead, and one when the job ends: no control codes, and a log that still shows progress.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.jupyter import JUPYTER_HTML_FORMAT, JupyterRenderable
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from batcher._jobs import JobStatus

NOTEBOOK_WIDTH = 110
PLAIN_EVERY_S = 10.0
"""Seconds between two plain progress lines (output that is not a terminal)."""


def _offscreen_console(*, record: bool = False) -> Console:
    """Renders to a buffer; ``force_jupyter=False`` or rich would display each print in the notebook itself."""
    return Console(file=io.StringIO(), record=record, width=NOTEBOOK_WIDTH, force_terminal=True, force_jupyter=False)


class RateColumn(ProgressColumn):
    """Requests finished per second, measured while waiting (rich's moving estimate)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


class OkFailedColumn(ProgressColumn):
    """``5 ok 2 failed``: failures in red only when there are some (dim while there are none)."""

    def render(self, task: Task) -> Text:
        failed = int(task.fields["failed"])
        text = Text.assemble((f"{task.fields['ok']} ok", "green"), " ")
        text.append(f"{failed} failed", style="red" if failed else "dim")
        return text


class StandingColumn(ProgressColumn):
    """Where the job stands in line, when a dispatcher publishes it: ``12 ahead · share 35 % · ETA 2m``."""

    def render(self, task: Task) -> Text:
        return Text(task.fields.get("standing") or "", style="cyan")


def _clock_text(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class _PlainLines:
    """Progress as plain lines for output that is not a terminal: one at the first update, then at
    most one per ``every_s``, and the last state at the end (rate and ETA measured while watching)."""

    def __init__(self, description: str, console: Console, get_time: Callable[[], float], every_s: float) -> None:
        self._description = description
        self._console = console
        self._time = get_time
        self._every_s = every_s
        self._start: tuple[float, int] | None = None
        self._printed_at: float | None = None
        self._last: JobStatus | None = None
        self._last_printed: tuple[int, int, int] | None = None

    def update(self, status: JobStatus) -> None:
        now = self._time()
        if self._start is None:
            self._start = (now, status.done)
        self._last = status
        if self._printed_at is None or now - self._printed_at >= self._every_s:
            self._print(status, now)

    def close(self) -> None:
        if self._last is not None and self._key(self._last) != self._last_printed:
            self._print(self._last, self._time())

    @staticmethod
    def _key(status: JobStatus) -> tuple[int, int, int]:
        return (status.done, status.succeeded, status.failed + status.cancelled + status.expired)

    def _print(self, status: JobStatus, now: float) -> None:
        assert self._start is not None
        started_at, done_at_start = self._start
        failed = status.failed + status.cancelled + status.expired
        elapsed = now - started_at
        finished = status.done - done_at_start
        rate = finished / elapsed if elapsed > 0 and finished > 0 else None
        eta = "-" if rate is None else _clock_text((status.total - status.done) / rate)
        standing = status.standing_text()
        self._console.print(
            f"{self._description}: {status.done:,}/{status.total:,} done, {status.succeeded:,} ok, {failed:,} failed, "
            f"{'-' if rate is None else f'{rate:,.1f}'}/s, elapsed {_clock_text(elapsed)}, ETA {eta}"
            + (f"; in line: {standing}" if standing else ""),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        self._printed_at = now
        self._last_printed = self._key(status)


class ProgressBar:
    """Updated from ``JobStatus`` snapshots by whoever polls the job (``Job.wait``, ``batcher wait``)."""

    def __init__(
        self,
        description: str,
        console: Console | None = None,
        *,
        display: Callable[..., Any] | None = None,
        get_time: Callable[[], float] | None = None,
        plain: bool | None = None,
        plain_every_s: float = PLAIN_EVERY_S,
    ) -> None:
        """``plain``: write plain lines instead of a live bar; by default, when ``console`` (stderr)
        is neither a terminal nor a notebook."""
        console = console or Console(stderr=True)
        self._notebook = console.is_jupyter
        if plain is None:
            plain = not console.is_terminal and not self._notebook
        self._plain = _PlainLines(description, console, get_time or time.monotonic, plain_every_s) if plain else None
        self._display = display
        self._handle: Any = None
        self._shown = False
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            OkFailedColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            StandingColumn(),
            # In a notebook nothing is drawn live: each update is rendered to HTML (see _show).
            console=_offscreen_console() if self._notebook else console,
            auto_refresh=not self._notebook,
            transient=False,
            get_time=get_time,
        )
        self._task: TaskID | None = None
        self._description = description

    def __enter__(self) -> ProgressBar:
        if not self._notebook and self._plain is None:
            self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._plain is not None:
            self._plain.close()
        elif self._notebook:
            self._show()
        else:
            self._progress.__exit__(exc_type, exc, tb)

    def update(self, status: JobStatus) -> None:
        if self._plain is not None:
            self._plain.update(status)
            return
        failed = status.failed + status.cancelled + status.expired
        standing = status.standing_text()  # None without a dispatcher: the column stays empty
        if self._task is None:
            # Starting at what is already done: the rate and ETA count only what finishes while we watch.
            self._task = self._progress.add_task(
                self._description,
                total=status.total,
                completed=status.done,
                ok=status.succeeded,
                failed=failed,
                standing=standing,
            )
        else:
            self._progress.update(
                self._task, completed=status.done, ok=status.succeeded, failed=failed, standing=standing
            )
        if self._notebook:
            self._show()

    def render_html(self) -> JupyterRenderable:
        """The bar as a notebook output: HTML by rich, plain text for front ends without HTML."""
        recorder = _offscreen_console(record=True)
        recorder.print(self._progress.get_renderable())
        html = recorder.export_html(inline_styles=True, code_format=JUPYTER_HTML_FORMAT, clear=False)
        return JupyterRenderable(html, recorder.export_text())

    def _show(self) -> None:
        if self._task is None:
            return
        rendered = self.render_html()
        if not self._shown:
            self._shown = True
            self._handle = self._notebook_display()(rendered, display_id=True)
        elif self._handle is not None:  # None outside a kernel: nothing to update in place
            self._handle.update(rendered)

    def _notebook_display(self) -> Callable[..., Any]:
        if self._display is not None:
            return self._display
        from IPython.display import display  # present wherever a notebook runs

        return display  # type: ignore[no-any-return]
