"""One A/B run from start to record: resolve both revisions, check them, read the cells, time, count."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conformer import ConformerConfig

from ..ablate.experiment import load_experiment
from ..env import fingerprint
from ..errors import BenchError
from ..profiling import DEFAULTS, ProfileSettings
from ..records import ABExperiment, ABRecord, PairedCell, Status
from ..revisions import (
    Revision,
    check_environment,
    read_text_at,
    repository_root,
    resolve_revision,
    source_tree,
)
from .run import (
    PATHS,
    PHASES,
    PRECISIONS,
    ABCell,
    ABSettings,
    count_instructions,
    time_cells,
    valgrind_version,
)
from .workers import ALLOCATOR_ENV

if TYPE_CHECKING:
    from ..ablate.experiment import Experiment

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ABRequest:
    """What the user asked: two revision names, the experiment, which of its cells and phases."""

    base: str
    head: str
    experiment: Path
    repo: Path = Path(".")
    only: tuple[str, ...] = ()
    cache: Path | None = None  # extracted revisions (default: revisions.cache_root())
    logs: Path | None = None  # the workers' output
    experiment_at: str | None = None  # the revision whose experiment file is read (default: head)


def _experiment_file(request: ABRequest, repo: Path, head: Revision, scratch: Path) -> Path:
    """The experiment file as the head revision has it; a file outside the repository is read as it is.

    A relative path is taken from the current folder when that lies inside the repository, else from the
    repository's top folder (``--repo`` elsewhere)."""
    given = request.experiment
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, repo / given]
    rel = None
    for candidate in candidates:
        try:
            rel = candidate.resolve().relative_to(repo.resolve())
            break
        except ValueError:
            continue
    if rel is None:
        if not given.is_file():
            raise BenchError(f"experiment file {str(given)!r} does not exist; pass e.g. experiments/ci.toml")
        return given
    text = read_text_at(head, rel)
    if text is None:
        raise BenchError(
            f"experiment file {rel.as_posix()!r} is not in revision {head.describe()}; commit it, pass a "
            "revision that has it, or use WORKTREE"
        )
    copy = scratch / rel.name
    copy.write_text(text, encoding="utf-8")
    return copy


def _explicit_fields(config: ConformerConfig) -> dict[str, Any]:
    """The config's fields that differ from the defaults: each revision fills in the rest its own way."""
    defaults = ConformerConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if k not in defaults or v != defaults[k]}


def _cells(experiment: Experiment, phases: tuple[str, ...], only: tuple[str, ...]) -> list[ABCell]:
    """Each selected cell once per phase, with the settings it is timed under."""
    for phase in phases:
        if phase not in PHASES:
            raise BenchError(f"--phases {phase!r} is not valid; use infer, train or infer,train")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cells: list[ABCell] = []
    for cell in experiment.select(list(only)):
        timing = cell.profile_settings()  # what its [profile] table says it is timed under
        _check_timeable(cell.label, timing)
        for phase in dict.fromkeys(phases):
            cells.append(
                ABCell(
                    label=cell.label,
                    phase=phase,
                    config=_explicit_fields(cell.config),
                    config_hash=cell.profile_hash(),
                    batch_size=timing.batch_size or DEFAULTS["cpu"].batch_size,
                    img_size=timing.img_size,
                    precision=timing.precision,
                    path=timing.path,
                    threads=timing.threads or usable,
                )
            )
    return cells


def _check_timeable(label: str, timing: ProfileSettings) -> None:
    """What the A/B workers can time: CPU cells, fp32 or bf16, the plain or optimized path."""
    if timing.device.startswith("cuda"):
        raise BenchError(
            f'cell {label!r} is set to device {timing.device}; ab times CPU cells: set device = "cpu" in the '
            "experiment's [profile]"
        )
    if timing.precision not in PRECISIONS:
        raise BenchError(
            f"cell {label!r}: ab times precision fp32 or bf16, not {timing.precision!r}; change [profile]"
        )
    if timing.path not in PATHS:
        raise BenchError(
            f"cell {label!r}: ab times the plain or optimized path, not {timing.path!r}; change [profile]"
        )


def _load_cells(
    request: ABRequest, repo: Path, head: Revision, settings: ABSettings
) -> tuple[Any, list[ABCell]]:
    """The experiment as the head revision (or ``request.experiment_at``) has it, and the cells and
    phases to time."""
    at = head if request.experiment_at is None else resolve_revision(repo, request.experiment_at)
    with tempfile.TemporaryDirectory(prefix="conformer-bench-ab-") as scratch:
        copy = _experiment_file(request, repo, at, Path(scratch))
        try:
            experiment = load_experiment(copy)
            cells = _cells(experiment, settings.phases, request.only)
        except BenchError as exc:  # name the file as the user knows it, not the scratch copy
            raise BenchError(str(exc).replace(str(copy), f"{at.short}:{request.experiment}")) from None
    if not cells:
        raise BenchError("no cell to time; check --only and the experiment's cells")
    return experiment, cells


class ABAborted(BenchError):
    """The run stopped part-way (Ctrl-C, SIGTERM, an error): ``record`` holds the cells timed so far."""

    def __init__(self, message: str, record: ABRecord, exit_code: int = 2) -> None:
        super().__init__(message)
        self.record = record
        self.exit_code = exit_code


@dataclass
class ABPlan:
    """Both revisions resolved, extracted and checked, the cells to time, and the record to fill."""

    base: Revision
    head: Revision
    trees: dict[str, Path]
    cells: list[ABCell]
    record: ABRecord  # every field but the cells (and wall_s) filled in


def plan_ab(request: ABRequest, settings: ABSettings) -> ABPlan:
    """Resolve, extract and check both revisions and read the cells: everything before timing."""
    repo = repository_root(request.repo)
    base, head = resolve_revision(repo, request.base), resolve_revision(repo, request.head)
    if settings.instructions:
        valgrind_version()  # before minutes of timing, not after
    trees = {"base": source_tree(base, request.cache), "head": source_tree(head, request.cache)}
    for side, revision in (("base", base), ("head", head)):
        check_environment(revision, trees[side])
    experiment, cells = _load_cells(request, repo, head, settings)
    record = ABRecord(
        status=Status.OK,
        reason=None,
        base=base.ref(),
        head=head.ref(),
        experiment=ABExperiment(
            experiment.name,
            str(request.experiment),
            experiment.digest(),
            len(experiment.select(list(request.only))),
        ),
        environment=_environment(cells),
        settings=dataclasses.replace(settings, worker_allocator_env=dict(ALLOCATOR_ENV)),
        workers={},
        cells=[],
        wall_s=0.0,
    )
    return ABPlan(base, head, trees, cells, record)


def run_ab(
    request: ABRequest,
    settings: ABSettings,
    *,
    progress: Progress | None = None,
    on_cell: Callable[[PairedCell], None] | None = None,
) -> ABRecord:
    """Measure the request's cells on both revisions; the record holds every round's raw times.

    The workers' output goes to ``request.logs``, or to a temporary folder that is removed after a
    successful run and kept (its path in the error) when the run stops. A run that stops part-way raises
    :class:`ABAborted` with the cells timed so far.
    """
    started = time.perf_counter()
    plan = plan_ab(request, settings)
    return measure_plan(plan, settings, request.logs, progress=progress, on_cell=on_cell, started=started)


def measure_plan(
    plan: ABPlan,
    settings: ABSettings,
    logs: Path | None = None,
    *,
    progress: Progress | None = None,
    on_cell: Callable[[PairedCell], None] | None = None,
    started: float | None = None,
) -> ABRecord:
    """Time (and count) the plan's cells into its record, as :func:`run_ab` does."""
    started = time.perf_counter() if started is None else started
    if progress is not None:
        progress(f"{len(plan.cells)} cell(s): {plan.head.describe()} against {plan.base.describe()}")
    folder = logs or Path(tempfile.mkdtemp(prefix="conformer-bench-ab-logs-"))
    _measure(plan.record, plan.trees, plan.cells, settings, folder, progress, on_cell, started)
    if logs is None:
        shutil.rmtree(folder, ignore_errors=True)
    return plan.record


def _measure(
    record: ABRecord,
    trees: dict[str, Path],
    cells: list[ABCell],
    settings: ABSettings,
    logs: Path,
    progress: Progress | None,
    on_cell: Callable[[PairedCell], None] | None,
    started: float,
) -> None:
    """Time (and count) into ``record``; on the way out by an error or a signal, a partial record."""

    def keep(cell: PairedCell) -> None:
        record.cells.append(cell)
        if on_cell is not None:
            on_cell(cell)

    try:
        timing = time_cells(trees, cells, settings, logs=logs, progress=progress, on_cell=keep)
        record.workers = timing.workers
        if settings.instructions:
            counts = count_instructions(trees, cells, settings, logs=logs, progress=progress)
            for paired in record.cells:
                paired.instructions = counts.get(f"{paired.label}/{paired.phase}")
    except (KeyboardInterrupt, SystemExit, BenchError) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc) or type(exc).__name__
        record.status, record.reason = (
            Status.FAILED,
            f"{why} after {len(record.cells)} of {len(cells)} cell(s)",
        )
        record.wall_s = time.perf_counter() - started
        code: Any = exc.exit_code if isinstance(exc, BenchError) else 130
        if isinstance(exc, SystemExit):  # SIGTERM, turned into SystemExit(143) by the command
            code = exc.code if isinstance(exc.code, int) else 1
        raise ABAborted(f"{record.reason}; worker logs in {logs}", record, int(code)) from None
    finally:
        record.wall_s = time.perf_counter() - started


def _environment(cells: list[ABCell]) -> dict[str, Any]:
    """This machine's fingerprint, with the threads the cells ran on (the first cell's other settings)."""
    first = cells[0]
    return {
        **fingerprint("cpu", first.precision, first.batch_size, first.img_size),
        "threads": max(c.threads for c in cells),
    }
