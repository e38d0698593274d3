"""How a search reports progress: a bar over the trial budget with the best value so far of each objective and
an ETA, the running cell's phase under it (rich), or one line per trial (``--quiet``, scheduler logs)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from ..ablate.progress import CellProgress, GridProgress, QuietGrid, _CellBar
from .front import metric_text
from .spec import SearchSpec
from .study import TrialBook


def best_so_far(spec: SearchSpec, book: TrialBook) -> str:
    """The best value of each objective over the complete trials (each on its own, not one trial)."""
    parts = []
    for i, o in enumerate(spec.objectives):
        values = [t.values[i] for t in book.complete if t.values is not None]
        if values:
            best = max(values) if o.maximize else min(values)
            parts.append(f"{o.metric.name} {metric_text(o.metric, best)}")
    return "best " + ", ".join(parts) if parts else "no trial complete yet"


class LineProgress:
    """One line per finished or pruned trial, on stderr."""

    def __init__(self, spec: SearchSpec, console: Any = None) -> None:
        from rich.console import Console

        self.spec = spec
        if console is None:
            console = Console(stderr=True, highlight=False)
            if not console.is_terminal:
                console = Console(stderr=True, highlight=False, width=200)
        self.console = console

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    def grid(self) -> GridProgress:
        return QuietGrid()

    def trial_ended(self, number: int, state: str, text: str, book: TrialBook) -> None:
        budget = f"/{self.spec.budget.trials}" if self.spec.budget.trials else ""
        self.console.print(
            f"trial {number}: {state}: {text} [{book.ran}{budget} ran; {best_so_far(self.spec, book)}]"
        )

    def note(self, text: str) -> None:
        self.console.print(text)


class RichSearchProgress(LineProgress):
    """A bar over the trial budget (trials that ran / budget, elapsed, ETA) titled with the best so far, and
    the running cell's phase under it."""

    def __init__(self, spec: SearchSpec, already: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().__init__(spec)
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._trials = self._bar.add_task("trials", total=spec.budget.trials, completed=already)
        self._cell = self._bar.add_task("", total=None, visible=False)

    def __enter__(self) -> RichSearchProgress:
        self._bar.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._bar.stop()

    def grid(self) -> GridProgress:
        return self

    def start_cell(self, cell: Any, position: int, total: int) -> CellProgress:
        self._bar.reset(self._cell, total=None, description=f"  {cell.label}: starting", visible=True)
        return _CellBar(self._bar, self._cell, cell.label)

    def end_cell(self, cell: Any, status: str, skipped: bool) -> None:
        self._bar.update(self._cell, visible=False)

    def trial_ended(self, number: int, state: str, text: str, book: TrialBook) -> None:
        colour = {"complete": "green", "pruned": "yellow"}.get(state, "red")
        self._bar.console.print(f"[{colour}]trial {number}[/]: {state}: {text}")
        self._bar.update(
            self._trials, completed=book.ran, description=f"trials ({best_so_far(self.spec, book)})"
        )

    def note(self, text: str) -> None:
        self._bar.console.print(text)
