"""Rich progress for a grid: one bar across cells, one for the phase inside the running cell."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from .experiment import Cell
from .runner import CellProgress


class _CellBar:
    def __init__(self, progress: Any, task: Any, label: str) -> None:
        self._progress = progress
        self._task = task
        self._label = label

    def update(self, text: str, done: float | None = None, total: float | None = None) -> None:
        self._progress.update(
            self._task, description=f"  {self._label}: {text}", completed=done or 0, total=total
        )


class RichGridProgress:
    """Context manager implementing runner.GridProgress on a rich console (stderr by default)."""

    def __init__(self, total: int, *, rank: int = 0, world: int = 1, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console or Console(stderr=True)
        prefix = f"[rank {rank}/{world}] " if world > 1 else ""
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._grid = self._progress.add_task(f"{prefix}cells", total=total)
        self._cell = self._progress.add_task("", total=None, visible=False)
        self._prefix = prefix

    def __enter__(self) -> RichGridProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def start_cell(self, cell: Cell, position: int, total: int) -> CellProgress:
        self._progress.update(self._grid, description=f"{self._prefix}cells (running {cell.label})")
        self._progress.reset(self._cell, total=None, description=f"  {cell.label}: starting", visible=True)
        return _CellBar(self._progress, self._cell, cell.label)

    def end_cell(self, cell: Cell, status: str, skipped: bool) -> None:
        self._progress.advance(self._grid)
        self._progress.update(self._cell, visible=False)
        if status == "elsewhere":  # run, or being run, by another process on the same folder
            note, colour = "left to another process on this folder", "yellow"
        else:
            note = "skipped (unchanged, --resume)" if skipped else status
            colour = "green" if status == "ok" else "red"
        self._progress.console.print(f"{self._prefix}[{colour}]{cell.label}[/]: {note}")
