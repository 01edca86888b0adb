"""Progress bars for the passes over the data, drawn by rich; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Passes:
    """One bar per pass (read and clean, match duplicates, write); off in pipes, CI logs and tests."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not self.enabled,
        )

    def __enter__(self) -> Passes:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start(self, description: str, total: int | None = None) -> TaskID:
        return self.progress.add_task(description, total=total)

    def advance(self, task: TaskID, n: int = 1) -> None:
        self.progress.advance(task, n)

    def show(self, task: TaskID, completed: int) -> None:
        self.progress.update(task, completed=completed)

    def finish(self, task: TaskID) -> None:
        """Mark a pass whose length was unknown at the start as complete."""
        done = next(t.completed for t in self.progress.tasks if t.id == task)
        self.progress.update(task, total=done, completed=done)
