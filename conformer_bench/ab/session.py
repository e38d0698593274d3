"""One A/B run from start to record: resolve both revisions, check them, read the cells, time, count."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BenchError
from ..records import ABRecord, PairedCell, Status
from ..revisions import (
    Revision,
    check_environment,
    read_text_at,
    repository_root,
    resolve_revision,
    source_tree,
)
from .run import PHASES, ABCell, ABSettings, count_instructions, time_cells

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


def _experiment_file(request: ABRequest, repo: Path, head: Revision, scratch: Path) -> Path:
    """The experiment file as the head revision has it (a file outside the repository is read as it is)."""
    given = request.experiment
    absolute = given if given.is_absolute() else Path.cwd() / given
    try:
        rel = absolute.resolve().relative_to(repo.resolve())
    except ValueError:
        if not absolute.is_file():
            raise BenchError(
                f"experiment file {str(given)!r} does not exist; pass e.g. experiments/ci.toml"
            ) from None
        return absolute
    text = read_text_at(head, rel)
    if text is None:
        raise BenchError(
            f"experiment file {rel.as_posix()!r} is not in revision {head.describe()}; commit it, pass a "
            "revision that has it, or use WORKTREE"
        )
    copy = scratch / rel.name
    copy.write_text(text, encoding="utf-8")
    return copy


def _cells(experiment: Any, phases: tuple[str, ...], only: tuple[str, ...]) -> list[ABCell]:
    """Each selected cell once per phase, with the settings it is timed under."""
    from ..profiling import DEFAULTS

    for phase in phases:
        if phase not in PHASES:
            raise BenchError(f"--phases {phase!r} is not valid; use infer, train or infer,train")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cells: list[ABCell] = []
    for cell in experiment.select(list(only)):
        profile = cell.profile
        device = str(profile.get("device", "auto"))
        if device.startswith("cuda"):
            raise BenchError(
                f'cell {cell.label!r} is set to device {device}; ab times CPU cells: set device = "cpu" in the '
                "experiment's [profile]"
            )
        for phase in phases:
            cells.append(
                ABCell(
                    label=cell.label,
                    phase=phase,
                    config=cell.config.to_dict(),
                    config_hash=cell.profile_hash(),
                    batch_size=int(profile.get("batch_size") or DEFAULTS["cpu"].batch_size),
                    img_size=int(profile.get("img_size", 224)),
                    precision=str(profile.get("precision", "fp32")),
                    path=str(profile.get("path", "plain")),
                    threads=int(profile.get("threads") or usable),
                )
            )
    return cells


def _load_cells(
    request: ABRequest, repo: Path, head: Revision, settings: ABSettings
) -> tuple[Any, list[ABCell]]:
    """The experiment as the head revision has it, and the cells and phases to time."""
    import tempfile

    from ..ablate.experiment import load_experiment

    with tempfile.TemporaryDirectory(prefix="conformer-bench-ab-") as scratch:
        copy = _experiment_file(request, repo, head, Path(scratch))
        try:
            experiment = load_experiment(copy)
        except BenchError as exc:  # name the file as the user knows it, not the scratch copy
            raise BenchError(str(exc).replace(str(copy), f"{head.short}:{request.experiment}")) from None
    cells = _cells(experiment, settings.phases, request.only)
    if not cells:
        raise BenchError("no cell to time; check --only and the experiment's cells")
    return experiment, cells


def run_ab(
    request: ABRequest,
    settings: ABSettings,
    *,
    progress: Progress | None = None,
    on_cell: Callable[[PairedCell], None] | None = None,
) -> ABRecord:
    """Measure the request's cells on both revisions; the record holds every round's raw times.

    The workers' output goes to ``request.logs``, or to a temporary folder that is removed after a
    successful run and kept (and named in the error) when a worker fails.
    """
    import shutil
    import tempfile

    started = time.perf_counter()
    repo = repository_root(request.repo)
    base, head = resolve_revision(repo, request.base), resolve_revision(repo, request.head)
    trees = {"base": source_tree(base, request.cache), "head": source_tree(head, request.cache)}
    for side, revision in (("base", base), ("head", head)):
        check_environment(revision, trees[side])
    experiment, cells = _load_cells(request, repo, head, settings)
    if progress is not None:
        progress(f"{len(cells)} cell(s): {head.describe()} against {base.describe()}")
    logs = request.logs or Path(tempfile.mkdtemp(prefix="conformer-bench-ab-logs-"))
    timing = time_cells(trees, cells, settings, logs=logs, progress=progress, on_cell=on_cell)
    if settings.instructions:
        counts = count_instructions(trees, cells, settings, logs=logs, progress=progress)
        for paired in timing.cells:
            paired.instructions = counts.get(f"{paired.label}/{paired.phase}")
    if request.logs is None:
        shutil.rmtree(logs, ignore_errors=True)
    return ABRecord(
        status=Status.OK,
        reason=None,
        base=base.to_dict(),
        head=head.to_dict(),
        experiment={
            "name": experiment.name,
            "source": str(request.experiment),
            "digest": experiment.digest(),
            "cells": len(experiment.select(list(request.only))),
        },
        environment=_environment(cells),
        settings=settings.to_dict(),
        workers=timing.workers,
        cells=timing.cells,
        wall_s=time.perf_counter() - started,
    )


def _environment(cells: list[ABCell]) -> dict[str, Any]:
    """This machine's fingerprint, with the threads the cells ran on (the first cell's other settings)."""
    from ..env import fingerprint

    first = cells[0]
    return {
        **fingerprint("cpu", first.precision, first.batch_size, first.img_size),
        "threads": max(c.threads for c in cells),
    }
