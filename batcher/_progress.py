"""A live progress bar for people waiting on a job (terminal and notebooks, via rich)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from batcher._jobs import JobStatus


class ProgressBar:
    """``done/total``, failures, rate and ETA; updated from ``JobStatus`` snapshots."""

    def __init__(self, description: str, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
            TextColumn("{task.fields[rate]}/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task: TaskID | None = None
        self._description = description

    def __enter__(self) -> ProgressBar:
        self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def update(self, status: JobStatus) -> None:
        failed = status.failed + status.cancelled + status.expired
        if self._task is None:
            self._task = self._progress.add_task(self._description, total=status.total, ok=0, failed=0, rate="0.0")
        task = self._progress.tasks[self._task]
        elapsed = task.elapsed or 0.0
        rate = f"{status.done / elapsed:.1f}" if elapsed > 0 else "0.0"
        self._progress.update(self._task, completed=status.done, ok=status.succeeded, failed=failed, rate=rate)
