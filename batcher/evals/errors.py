"""Errors of evaluation runs. All are ``BatcherError``s, so the CLI prints them as one line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from batcher._exceptions import BatcherError


class EvalError(BatcherError):
    """Base class of evaluation errors."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a suite file or its dataset, located as precisely as possible."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file} line {self.line}" if self.line is not None else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class SuiteError(EvalError, ValueError):
    """A suite file (or its dataset) is invalid. ``problems`` lists every one found, with line numbers."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"{len(self.problems)} problems:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(text)


class RunNotFoundError(EvalError, LookupError):
    """No evaluation run matches the id (or suite) given."""


class ScheduleNotFoundError(EvalError, LookupError):
    """No schedule matches the id given."""


class ScorerError(EvalError):
    """A scorer cannot be built (a custom scorer that does not import, a bad option)."""
