"""How a grid reports progress: the protocols, the pipe a worker process reports through, and rich bars.

A worker writes each update to a pipe as one JSON line ``{"message": str, "done": float | null,
"total": float | null}`` (:class:`PipeProgress`); the launching process reads them back
(:func:`relay_lines`). On the console, :class:`RichGridProgress` shows one bar across cells and one for
the phase inside the running cell; a scheduler job prints each phase to its log (:class:`LogProgress`).
"""

from __future__ import annotations

import json
import os
import time
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from .experiment import Cell


class CellProgress(Protocol):
    """What a running cell reports: what it is doing and, when known, how far it is (done of total)."""

    def update(self, text: str, done: float | None = None, total: float | None = None) -> None: ...


class GridProgress(Protocol):
    """What a grid reports: a cell starts (and gets a :class:`CellProgress`), a cell ends."""

    def start_cell(self, cell: Cell, position: int, total: int) -> CellProgress: ...

    def end_cell(self, cell: Cell, status: str, skipped: bool) -> None: ...


class NoProgress:
    """A ``CellProgress`` that reports nothing."""

    def update(self, text: str, done: float | None = None, total: float | None = None) -> None:
        pass


class QuietGrid:
    """A ``GridProgress`` that reports nothing."""

    def start_cell(self, cell: Cell, position: int, total: int) -> CellProgress:
        return NoProgress()

    def end_cell(self, cell: Cell, status: str, skipped: bool) -> None:
        pass


class PipeProgress:
    """A ``CellProgress`` that writes each update as one JSON line to a file descriptor."""

    def __init__(self, fd: int | None) -> None:
        self._out = os.fdopen(fd, "w", encoding="utf-8", buffering=1) if fd is not None else None

    def update(self, text: str, done: float | None = None, total: float | None = None) -> None:
        if self._out is None:
            return
        try:
            self._out.write(json.dumps({"message": text, "done": done, "total": total}) + "\n")
        except (BrokenPipeError, ValueError):  # the parent stopped listening: run on, report nothing
            self._out = None


class LogProgress:
    """A ``CellProgress`` that prints each new phase of the cell to the job's log."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._last = ""

    def update(self, text: str, done: float | None = None, total: float | None = None) -> None:
        if text != self._last:
            self._last = text
            print(f"{time.strftime('%H:%M:%S')} {self._label}: {text}", flush=True)


def relay_lines(buffer: bytes, progress: CellProgress) -> bytes:
    """Pass the complete lines of ``buffer`` that :class:`PipeProgress` wrote on; return the unfinished rest."""
    *lines, rest = buffer.split(b"\n")
    for line in lines:
        try:
            msg = json.loads(line)
            progress.update(str(msg["message"]), msg.get("done"), msg.get("total"))
        except (ValueError, KeyError, TypeError):
            continue  # not a progress line: ignore
    return rest


class _CellBar:
    def __init__(self, progress: Progress, task: TaskID, label: str) -> None:
        self._progress = progress
        self._task = task
        self._label = label

    def update(self, text: str, done: float | None = None, total: float | None = None) -> None:
        self._progress.update(
            self._task, description=f"  {self._label}: {text}", completed=done or 0, total=total
        )


class RichGridProgress:
    """A ``GridProgress`` on a rich console (stderr by default), used as a context manager."""

    def __init__(self, total: int, *, rank: int = 0, world: int = 1, console: Console | None = None) -> None:
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
