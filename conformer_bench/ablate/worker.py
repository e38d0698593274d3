"""Run one cell: profile it and fine-tune it once per seed; as a process of its own, write its result.

``python -m conformer_bench.ablate.worker SPEC RESULT``: SPEC is a ``conformer-bench.cell-spec`` record written
by the launching process (:meth:`Cell.to_spec`); the cell's result (what :func:`run_cell` returns) is written
atomically to RESULT. While the cell runs, progress goes to the file descriptor named in the spec
(:class:`~.progress.PipeProgress`). This module knows nothing of how it is launched or scheduled.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import BenchError
from ..files import read_json, write_json
from ..records import FinetuneRecord, ProfileRecord, Status
from ..records.cell import CellJobSpec
from ..threads import set_threads, threads
from .experiment import Cell
from .progress import CellProgress, PipeProgress
from .store import CellOutcome, reason_line


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _failure(exc: BaseException) -> Status:
    return Status.OOM if _is_oom(exc) else Status.FAILED


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _status_of(record: ProfileRecord | FinetuneRecord | None) -> tuple[Status, str | None]:
    if record is None:
        return Status.FAILED, "no record"
    return Status(record.status or Status.OK), record.reason


def _profile_record(value: ProfileRecord | dict[str, Any] | None) -> ProfileRecord | None:
    """What ``profile_variant`` returned, as a record."""
    return ProfileRecord.from_dict(value) if isinstance(value, dict) else value


def _finetune_record(value: FinetuneRecord | dict[str, Any]) -> FinetuneRecord:
    """What ``run_finetune`` returned, as a record."""
    return FinetuneRecord.from_dict(value) if isinstance(value, dict) else value


def run_cell(
    cell: Cell, finetune: bool, reuse_profile: ProfileRecord | None, progress: CellProgress
) -> CellOutcome:
    """Profile (and fine-tune, once per seed) one cell; never raises for a failure inside the cell.

    A crash, an out-of-memory error or a non-finite loss becomes the cell's ``status`` and ``reason``;
    ``KeyboardInterrupt`` and ``SystemExit`` pass through (the cell is then not written). The cell's
    ``threads`` hold for its profile and fine-tuning, not after it.
    """
    from ..env import resolve_device

    started = time.time()
    status, reason = Status.OK, None
    profile: ProfileRecord | None = reuse_profile
    finetunes: list[FinetuneRecord] = []
    settings = cell.profile_settings()
    with threads(None):
        try:
            device = resolve_device(settings.device)
        except BenchError as exc:
            device, status, reason = "cpu", Status.FAILED, str(exc)
        if status == Status.OK and profile is None:
            profile, status, reason = _profile(cell, settings, progress)
        if finetune and status == Status.OK:
            finetunes, ft_status, ft_reason = _finetune_seeds(cell, settings.threads, device, progress)
            if ft_status != Status.OK:
                status, reason = ft_status, ft_reason
        environment = cell.environment(profile)  # with the cell's threads
    return CellOutcome(profile, finetunes, status, reason, environment, time.time() - started)


def _profile(
    cell: Cell, settings: Any, progress: CellProgress
) -> tuple[ProfileRecord | None, Status, str | None]:
    """The cell's profile record (None when it raised), its status and reason."""
    progress.update("profile", 0.0, 1.0)
    try:
        from ..profiling import profile_variant

        profile = _profile_record(
            profile_variant(cell.config, settings, label=cell.label, progress=_profile_callback(progress))
        )
        status, reason = _status_of(profile)
        return profile, status, (f"profile: {reason}" if status != Status.OK else reason)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return None, _failure(exc), f"profile: {reason_line(exc)}"
    finally:
        if settings.mode != "none":  # a costs-only profile builds no model: nothing to free
            _free_memory()


def _finetune_seeds(
    cell: Cell, threads_per_seed: int | None, device: str, progress: CellProgress
) -> tuple[list[FinetuneRecord], Status, str | None]:
    """Fine-tune ``cell`` once per seed: records in seed order, and the first failure's status and reason.

    With ``cell.seed_jobs > 1`` on the CPU, seeds run at once, each in a spawned process with the cell's
    threads; every seed computes exactly what it would alone.
    """
    jobs = min(cell.seed_jobs, len(cell.seeds)) if device == "cpu" else 1
    records: dict[int, FinetuneRecord] = {}
    failures: dict[int, tuple[Status, str]] = {}

    def settle(seed: int, outcome: FinetuneRecord | dict[str, Any] | BaseException) -> None:
        if isinstance(outcome, BaseException):
            failures[seed] = (_failure(outcome), reason_line(outcome))
        else:
            record = records[seed] = _finetune_record(outcome)
            st, why = _status_of(record)
            if st != Status.OK:
                failures[seed] = (st, str(why))
        progress.update(f"fine-tune: {len(records) + len(failures)} of {len(cell.seeds)} seeds done")

    progress.update(f"fine-tune: {len(cell.seeds)} seed(s)" + (f", {jobs} at once" if jobs > 1 else ""))
    if jobs == 1:
        _seeds_here(cell, threads_per_seed, settle)
    else:
        _seeds_in_processes(cell, threads_per_seed, jobs, settle)
    ordered = [records[seed] for seed in cell.seeds if seed in records]
    for seed in cell.seeds:
        if seed in failures:
            st, why = failures[seed]
            return ordered, st, f"finetune seed {seed}: {why}"
    return ordered, Status.OK, None


Settle = Callable[[int, "FinetuneRecord | dict[str, Any] | BaseException"], None]


def _seeds_here(cell: Cell, threads_per_seed: int | None, settle: Settle) -> None:
    """Fine-tune the seeds one after the other in this process."""
    set_threads(threads_per_seed)  # the cell's threads hold for its fine-tuning too
    for seed in cell.seeds:
        try:
            settle(seed, finetune_seed(cell, seed))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            settle(seed, exc)
        finally:
            _free_memory()


def _seeds_in_processes(cell: Cell, threads_per_seed: int | None, jobs: int, settle: Settle) -> None:
    """Fine-tune ``jobs`` seeds at once, each in a spawned process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=set_threads, initargs=(threads_per_seed,)
    ) as pool:
        futures = {pool.submit(finetune_seed, cell, seed): seed for seed in cell.seeds}
        try:
            for future in as_completed(futures):
                error = future.exception()
                settle(futures[future], error if error is not None else future.result())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def finetune_seed(cell: Cell, seed: int) -> FinetuneRecord:
    """One seed's fine-tune record (runs in this process or in a seed process)."""
    from ..finetune import run_finetune

    return run_finetune(cell.config, cell.finetune_settings(seed), label=cell.label, show_progress=False)


def _profile_callback(progress: CellProgress) -> Callable[[str, float], None]:
    """profile_variant reports (what is running, fraction of the profile done)."""

    def callback(message: str, fraction: float) -> None:
        progress.update(f"profile: {message}", fraction, 1.0)

    return callback


def main(argv: list[str]) -> int:
    """Run the cell of ``argv[0]`` (spec) and write its result to ``argv[1]``; 2 on bad arguments."""
    if len(argv) != 2:
        print("usage: python -m conformer_bench.ablate.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    try:
        spec = CellJobSpec.from_dict(read_json(argv[0]))
    except (BenchError, TypeError, ValueError) as exc:
        print(f"{argv[0]}: not a {CellJobSpec.SCHEMA} file ({exc})", file=sys.stderr)
        return 2
    cell = Cell.from_spec(spec)
    if spec.cuda_device is not None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(spec.cuda_device)
    progress = PipeProgress(spec.progress_fd)
    result = run_cell(cell, spec.finetune, spec.reuse_profile, progress)
    write_json(argv[1], result.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
