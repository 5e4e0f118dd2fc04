"""A live progress bar for people waiting on a job: done/total, ok and failed, rate, ETA.

In a terminal it is rich's live display. In a notebook (Jupyter, VS Code, Colab) rich renders
the bar to HTML and it is shown in one output that is updated in place through IPython's
display handles, which every notebook front end supports without ipywidgets.
"""

from __future__ import annotations

import io
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


def _offscreen_console(*, record: bool = False) -> Console:
    """Renders to a buffer; ``force_jupyter=False`` or rich would display each print in the notebook itself."""
    return Console(file=io.StringIO(), record=record, width=NOTEBOOK_WIDTH, force_terminal=True, force_jupyter=False)


class RateColumn(ProgressColumn):
    """Requests finished per second, measured while waiting (rich's moving estimate)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.1f}/s", style="progress.data.speed")


class ProgressBar:
    """Updated from ``JobStatus`` snapshots by whoever polls the job (``Job.wait``, ``batcher wait``)."""

    def __init__(
        self,
        description: str,
        console: Console | None = None,
        *,
        display: Callable[..., Any] | None = None,
        get_time: Callable[[], float] | None = None,
    ) -> None:
        console = console or Console(stderr=True)
        self._notebook = console.is_jupyter
        self._display = display
        self._handle: Any = None
        self._shown = False
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            # In a notebook nothing is drawn live: each update is rendered to HTML (see _show).
            console=_offscreen_console() if self._notebook else console,
            auto_refresh=not self._notebook,
            transient=False,
            get_time=get_time,
        )
        self._task: TaskID | None = None
        self._description = description

    def __enter__(self) -> ProgressBar:
        if not self._notebook:
            self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._notebook:
            self._show()
        else:
            self._progress.__exit__(exc_type, exc, tb)

    def update(self, status: JobStatus) -> None:
        failed = status.failed + status.cancelled + status.expired
        if self._task is None:
            # Starting at what is already done: the rate and ETA count only what finishes while we watch.
            self._task = self._progress.add_task(
                self._description, total=status.total, completed=status.done, ok=status.succeeded, failed=failed
            )
        else:
            self._progress.update(self._task, completed=status.done, ok=status.succeeded, failed=failed)
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
