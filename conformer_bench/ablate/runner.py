"""Schedule the cells of an experiment: this process's share, in order, each finished one stored at once,
resumable and shardable.

Each cell runs in a worker process of its own (:mod:`.launch` starts it, :mod:`.worker` runs it), or inline
in this process with ``isolate=False``. Records go through the run folder's store (:mod:`.store`): appended
under its lock, one process per cell at a time, so shards, torchrun ranks and separate ``ablate`` commands on
one folder lose nothing. The last shard to finish gathers the records.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BenchError
from ..threads import threads
from . import worker
from .experiment import Cell, Experiment
from .launch import remove_orphan_cell_folders, run_cell_in_process
from .progress import CellProgress, GridProgress, QuietGrid
from .store import CellOutcome, Holder, ResultStore, make_record, reusable_profile

if TYPE_CHECKING:
    from ..distributed import DistContext
    from ..records import CellRecord, ProfileRecord

CellFn = Callable[[Cell, bool, "ProfileRecord | None", CellProgress], CellOutcome]


# --- sharding ------------------------------------------------------------------------------------------


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"0/2"`` -> ``(0, 2)``; shards are numbered from 0, as torchrun's RANK."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise BenchError(
            f"--shard {text!r} is not valid; use I/N with 0 <= I < N, e.g. --shard 0/2 and --shard 1/2"
        )
    return int(m.group(1)), int(m.group(2))


def torchrun_rank() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when started by torchrun with more than one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise BenchError(
            "RANK/WORLD_SIZE are not integers; start the command with torchrun or unset them"
        ) from None
    return (rank, world) if world > 1 else None


def grid_context(rank: int = 0, world: int = 1, *, torchrun: bool = False) -> DistContext:
    """This process as shard ``rank`` of ``world``; torchrun's ranks share a gloo group (see :func:`join_ranks`)."""
    from ..distributed import DistContext

    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if torchrun else 0
    return DistContext(rank, world, local_rank, "gloo" if torchrun else None)


def _ranks_share_group(dist: DistContext) -> bool:
    return dist.backend is not None


def join_ranks(dist: DistContext) -> DistContext:
    """Under torchrun, join the ranks' gloo group (used for barriers only) and take this rank's GPU."""
    if not _ranks_share_group(dist):
        return dist
    import dataclasses
    import datetime

    import torch
    import torch.distributed as torch_dist

    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
    if torch_dist.is_initialized():
        return dist
    # Long cells run between barriers: allow a day before gloo gives up.
    torch_dist.init_process_group("gloo", timeout=datetime.timedelta(days=1))
    return dataclasses.replace(dist, initialized_here=True)


def leave_ranks(dist: DistContext) -> None:
    """Leave the ranks' group when :func:`join_ranks` created it."""
    from ..distributed import shutdown

    shutdown(dist)


def _barrier(dist: DistContext) -> None:
    if _ranks_share_group(dist):
        import torch.distributed as torch_dist

        torch_dist.barrier()


def shard_of(cells: list[Cell], rank: int, world: int) -> list[Cell]:
    """Round-robin share of the selected cells."""
    return [c for k, c in enumerate(cells) if k % world == rank]


# --- the grid -------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    gathered: bool = False  # this process compacted cells.jsonl (and should write the tables)
    records: dict[str, CellRecord] = field(default_factory=dict)
    # Cells another process runs now (label -> who) or finished while this one ran (label -> status).
    elsewhere_running: dict[str, str] = field(default_factory=dict)
    elsewhere_done: dict[str, str] = field(default_factory=dict)


def run_grid(
    experiment: Experiment,
    cells: list[Cell],
    out_dir: Path,
    *,
    finetune: bool,
    resume: bool,
    dist: DistContext | None = None,
    progress: GridProgress | None = None,
    cell_fn: CellFn | None = None,
    isolate: bool | None = None,
    force: bool = False,
) -> RunResult:
    """Run this process's share of ``cells``; store each finished cell at once; gather when every shard is done.

    ``isolate``: each cell runs in a fresh process (:func:`.launch.run_cell_in_process`); ``False``: in this
    one, through ``cell_fn`` (default :func:`.worker.run_cell`), which only the inline mode accepts; ``None``:
    in a fresh process, except costs-only cells (nothing built, timed or trained), which run in this one. A
    folder holding another experiment's results is refused unless ``force``. A cell that another process on the
    same folder runs, or finished since this run began, is left to it (see :meth:`ResultStore.claim`).
    """
    if isolate is not False and cell_fn is not None:
        raise ValueError("cell_fn runs cells in this process; pass isolate=False with it")
    dist = dist or grid_context()
    progress = progress or QuietGrid()
    store = ResultStore(out_dir)
    me = Holder.me()
    store.bind_experiment(experiment.summary(), force)  # same content from every shard
    store.clean_temp()
    remove_orphan_cell_folders()
    existing = store.latest()
    if dist.world_size > 1:
        store.clear_shard_done(dist.rank, dist.world_size)

    result = RunResult()
    share = shard_of(cells, dist.rank, dist.world_size)
    for position, cell in enumerate(share, start=1):
        digest = cell.config_hash(finetune)
        old = existing.get(cell.label)
        # Only a finished cell is kept; failed, oom and nan cells run again.
        if resume and old is not None and old.config_hash == digest and old.ok:
            result.skipped.append(cell.label)
            result.statuses[cell.label] = "ok"
            progress.end_cell(cell, "ok", skipped=True)
            continue
        claim = store.claim(cell.label, digest, me)
        if not claim.granted:
            if claim.record is not None:
                result.elsewhere_done[cell.label] = claim.record.status
                result.statuses[cell.label] = claim.record.status
            else:
                assert claim.holder is not None
                result.elsewhere_running[cell.label] = claim.holder.describe()
            progress.end_cell(cell, "elsewhere", skipped=True)
            continue
        try:
            reuse = reusable_profile(old, cell, resume)
            reporter = progress.start_cell(cell, position, len(share))
            # A costs-only cell builds no model and runs no image: a process of its own would only cost time.
            own_process = isolate if isolate is not None else not cell.costs_only(finetune)
            if own_process:
                outcome = run_cell_in_process(cell, finetune, reuse, reporter, cuda_device=_cuda_device(dist))
            else:
                with _single_process_env(_ranks_share_group(dist)), threads(None):
                    outcome = (cell_fn or worker.run_cell)(cell, finetune, reuse, reporter)
            shard = (dist.rank, dist.world_size)
            record = make_record(
                cell, experiment, finetune, outcome, shard, "process" if own_process else "inline"
            )
            store.append(record)
        finally:
            store.release([cell.label], me)
        result.ran.append(cell.label)
        result.statuses[cell.label] = record.status
        progress.end_cell(cell, record.status, skipped=False)
    _finish_shard(store, experiment.labels(), [c.label for c in share], dist, result)
    return result


def _finish_shard(
    store: ResultStore, order: list[str], labels: list[str], dist: DistContext, result: RunResult
) -> None:
    """Mark this shard done; the last shard to finish (rank 0 under torchrun) gathers the records."""
    if dist.world_size == 1:
        result.records = store.compact(order)
        result.gathered = True
        return
    store.mark_shard_done(dist.rank, dist.world_size, labels)
    if _ranks_share_group(dist):
        _barrier(dist)
        if dist.rank == 0:
            result.records = store.gather(order, dist.world_size)
            result.gathered = True
        _barrier(dist)  # no rank starts another run before the tables' records are on disk
        return
    # Independent --shard processes: whichever finishes last gathers (under the lock, so exactly one does).
    with store.locked():
        if store.all_shards_done(dist.world_size):
            result.records = store.gather(order, dist.world_size)
            result.gathered = True


def _cuda_device(dist: DistContext) -> int | None:
    """The GPU a torchrun rank's cells use (as :func:`join_ranks` chose); None outside torchrun."""
    if not _ranks_share_group(dist):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return dist.local_rank % torch.cuda.device_count()


@contextlib.contextmanager
def _single_process_env(active: bool) -> Iterator[None]:
    """Hide torchrun's variables while a cell runs: each rank runs whole cells of its own, so fine-tuning
    (which would otherwise join the ranks into one data-parallel run) must see a single process."""
    if not active:
        yield
        return
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
