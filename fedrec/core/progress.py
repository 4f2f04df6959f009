"""Progress on long work, in a terminal or not.

A Rich bar where stderr is a terminal; elsewhere (a DVC stage, CI, ``2> log``) Rich would print nothing until the
end, so :class:`LineProgress` prints one plain line per update instead: a 30-minute `dvc repro` stage shows its
epochs as they finish."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class LineProgress(Progress):
    """:class:`rich.progress.Progress` that falls back to one line per update on a non-terminal console."""

    def __init__(self, *columns, console: Console, **kwargs) -> None:
        self.lines = not console.is_terminal
        super().__init__(*columns, console=console, disable=self.lines, **kwargs)
        self._started = time.monotonic()

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        if self.lines and ("advance" in kwargs or "completed" in kwargs):
            task = self._tasks[task_id]
            status = task.fields.get("status", "")
            total = f"/{task.total:.0f}" if task.total is not None else ""
            self.console.print(f"{task.description} {task.completed:.0f}{total} {status} "
                               f"[{time.monotonic() - self._started:.0f}s]", markup=False, highlight=False,
                               soft_wrap=True)


def bar(label: str, console: Console) -> LineProgress:
    """The project's bar: label, bar, n/N, a status field, elapsed time."""
    return LineProgress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), console=console, transient=False)
