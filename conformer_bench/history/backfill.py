"""Backfill: time an experiment's cells at each revision of a range, each paired against one anchor revision.

Timings of one revision taken at different times on a shared machine move by 15-30 %, while two revisions
timed in alternating turns on one core resolve 1-3 %. So each revision of the range is timed by the
same-machine A/B (:mod:`conformer_bench.ab`) against a fixed anchor (by default the range's base, itself
timed against itself as the series' first point): the series of throughput ratios over the anchor is what
the change-point detection reads, and each revision's own images per second are stored beside it.

The revisions' trees and environment come from :mod:`conformer_bench.revisions` (the A/B's machinery);
the cells come from the experiment file as the range's newest revision has it, so that every revision
times the same cells. Each cell is added to the store as soon as it is timed (one transaction): a backfill
stopped in any way, SIGKILL included, loses at most the cell it was timing, and run again it skips every
cell already in the store for this machine, experiment, anchor and revision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..ab.run import ABSettings
from ..ab.session import ABAborted, ABPlan, ABRequest, measure_plan, plan_ab
from ..errors import BenchError
from ..records import PairedCell, Status
from ..revisions import Revision, repository_root, resolve_revision, revisions_in_range
from .ingest import Revisions, cell_part, paired_entry
from .store import HistoryStore, Machine, digest

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BackfillRequest:
    """What to backfill: a range (``A..B`` or one revision), the experiment, and against what."""

    range: str
    experiment: Path
    repo: Path = Path(".")
    anchor: str | None = None  # default: the range's base (A of A..B)
    every: int = 1  # every N-th revision, counted back from the newest
    only: tuple[str, ...] = ()
    experiment_at: str | None = None  # the revision whose experiment file is read (default: the newest)
    cache: Path | None = None
    logs: Path | None = None


@dataclass
class PointOutcome:
    """What happened at one revision: cells timed now, cells found in the store, cells that failed."""

    revision: Revision
    timed: int = 0
    stored_before: int = 0
    failed: list[str] = field(default_factory=list)  # "label/phase: reason"


@dataclass
class BackfillSummary:
    anchor: Revision
    points: list[PointOutcome] = field(default_factory=list)

    @property
    def timed(self) -> int:
        return sum(p.timed for p in self.points)

    @property
    def skipped(self) -> int:
        return sum(p.stored_before for p in self.points)

    @property
    def failed(self) -> list[str]:
        return [f"{p.revision.short} {f}" for p in self.points for f in p.failed]


def backfill_points(request: BackfillRequest, repo: Path) -> tuple[Revision, list[Revision]]:
    """The anchor, and the revisions to time against it (the anchor first, timed against itself)."""
    base, revisions = revisions_in_range(repo, request.range, request.every)
    anchor = resolve_revision(repo, request.anchor) if request.anchor else base
    return anchor, [anchor, *(r for r in revisions if r.sha != anchor.sha)]


def run_key(plan: ABPlan) -> str:
    """A backfill run: this machine, experiment, anchor and revision (the cells are its parts)."""
    return digest(
        {
            "kind": "backfill",
            "machine": Machine.of(plan.record.typed_environment()).fingerprint,
            "experiment": plan.record.experiment.name,
            "anchor": plan.base.sha,
            "revision": plan.head.sha,
        },
        32,
    )


def run_backfill(
    request: BackfillRequest,
    settings: ABSettings,
    store: HistoryStore,
    *,
    progress: Progress | None = None,
    on_cell: Callable[[PairedCell], None] | None = None,
) -> BackfillSummary:
    """Time every revision's cells that the store lacks, against the anchor, adding each as it finishes."""
    say = progress or (lambda _: None)
    repo = repository_root(request.repo)
    anchor, points = backfill_points(request, repo)
    experiment_at = request.experiment_at or points[-1].sha
    revs = Revisions(repo)
    summary = BackfillSummary(anchor)
    for i, revision in enumerate(points, 1):
        assert anchor.sha is not None and revision.sha is not None
        ab_request = ABRequest(
            anchor.sha, revision.sha, request.experiment, repo, request.only, request.cache, request.logs,
            experiment_at,
        )  # fmt: skip
        plan = plan_ab(ab_request, settings)  # the first one checks the experiment before anything is said
        if i == 1:
            say(f"backfill: {len(points)} revision(s) against anchor {anchor.describe()}")
        outcome = _time_point(plan, settings, store, revs, request, f"[{i}/{len(points)}]", say, on_cell)
        summary.points.append(outcome)
    return summary


def _time_point(
    plan: ABPlan,
    settings: ABSettings,
    store: HistoryStore,
    revs: Revisions,
    request: BackfillRequest,
    where: str,
    say: Progress,
    on_cell: Callable[[PairedCell], None] | None,
) -> PointOutcome:
    """Time the plan's cells that the store lacks, adding each to the store as soon as it is timed."""
    key = run_key(plan)
    stored = store.parts_of(key)
    todo = [c for c in plan.cells if cell_part(c.key) not in stored]
    outcome = PointOutcome(plan.head, stored_before=len(plan.cells) - len(todo))
    head = f"{where} {plan.head.short} {plan.head.subject[:60]}"
    if not todo:
        say(f"{head}: all {len(plan.cells)} cell(s) in the store, skipped")
        return outcome
    say(
        f"{head}: timing {len(todo)} cell(s)" + (f" ({outcome.stored_before} in the store)" if stored else "")
    )
    plan.cells = todo

    def keep(cell: PairedCell) -> None:
        name = f"{cell.label}/{cell.phase}"
        if cell.status == Status.OK and cell.rounds:
            entry = paired_entry("backfill", key, plan.record, [cell], revs, f"backfill {request.range}")
            store.add(entry)
            outcome.timed += 1
            ratio = entry.results[cell_part(name)][0]
            say(
                f"    {name}: x{ratio.value:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] of the anchor's throughput"
            )
        else:  # not stored: the next backfill tries it again
            outcome.failed.append(f"{name}: {cell.status.value}: {cell.reason}")
            say(f"    {name}: {cell.status.value}: {cell.reason}")
        if on_cell is not None:
            on_cell(cell)

    try:
        measure_plan(plan, settings, request.logs, on_cell=keep)
    except ABAborted as exc:
        stopped = BenchError(
            f"backfill stopped at {plan.head.short} ({exc}); the {outcome.timed} cell(s) timed there and every "
            "earlier revision are in the store: run the same command again to go on"
        )
        stopped.exit_code = exc.exit_code
        raise stopped from None
    return outcome
