"""One cell of a grid as a scheduler job: what the submitting command pickles, and what the job runs.

The job is a fresh Python process on a node; it runs its cell there (see
:func:`conformer_bench.ablate.worker.run_cell`) and appends the cell's record through the run folder's
store, claiming the cell first so that no two processes on one folder run it at once. It follows submitit's
checkpointing protocol: on preemption, or on a timeout while requeues are left, the job is requeued and runs
its cell again from the start (a cell keeps no state between attempts). As submitit does, the job lets
SIGTERM pass (some clusters send it before the preemption signal), so ``scancel`` ends it with Slurm's
SIGKILL after ``KillWait``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BenchError
from ..records import ProfileRecord
from ..records.cell import CellJob as CellJobInfo
from .experiment import Cell, Experiment
from .progress import LogProgress
from .store import Holder, ResultStore, make_record
from .worker import run_cell

JOB_SCHEMA = "conformer-bench.cell-job"


@dataclass(frozen=True)
class CellJob:
    """Everything a job needs to run one cell and store its record (pickled by submitit)."""

    out_dir: str  # absolute
    executor: str  # "slurm" or "submitit-local"
    experiment: Experiment
    cell: Cell
    finetune: bool
    reuse_profile: ProfileRecord | None  # the cell's earlier profile when only fine-tuning changed

    def __call__(self) -> dict[str, Any]:
        """Run the cell and append its record; return what happened (submitit pickles it beside the logs)."""
        import submitit

        env = submitit.JobEnvironment()
        job = CellJobInfo(self.executor, str(env.job_id), str(env.paths.stdout), str(env.paths.stderr))
        store = ResultStore(self.out_dir)
        label = self.cell.label
        me = Holder.me()
        holder_file = holder_path(env.paths.folder, env.job_id)
        release_claim_of(store, label, holder_file)  # this job's earlier attempt, when it was requeued
        claim = store.claim(label, self.cell.config_hash(self.finetune), me)
        if not claim.granted:
            who = claim.holder.describe() if claim.holder else "another process"
            print(f"{label}: not run here: {who} runs or ran it in {self.out_dir}", flush=True)
            return {"label": label, "ran": False, "by": who}
        with contextlib.suppress(OSError):
            holder_file.write_text(json.dumps(asdict(me)) + "\n")
        try:
            print(f"{label}: running in {self.out_dir} ({job.executor} job {job.id})", flush=True)
            outcome = run_cell(self.cell, self.finetune, self.reuse_profile, LogProgress(label))
            record = make_record(
                self.cell, self.experiment, self.finetune, outcome, (0, 1), "process", job=job
            )
            store.append(record)
        finally:
            store.release([label], me)
        print(f"{label}: {record.status}" + (f": {record.reason}" if record.reason else ""))
        sys.stdout.flush()
        return {"label": label, "ran": True, "status": str(record.status)}

    def checkpoint(self) -> Any:
        """submitit's requeue hook: the job runs the same cell again from its start."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def holder_path(folder: Path, job_id: str) -> Path:
    """Where a job notes the process that claimed its cell."""
    return folder / f"{job_id}_holder.json"


def release_claim_of(store: ResultStore, label: str, holder_file: Path) -> None:
    """Drop the claim on ``label`` of the process ``holder_file`` names: a job that has surely ended (its
    requeued self runs now, or a new job is submitted for the cell), maybe on another node, where the store
    cannot see that the process is gone."""
    from ..files import loads_json, read_in_folder

    try:
        earlier = Holder.from_dict(loads_json(read_in_folder(holder_file) or b""))
    except (OSError, ValueError, KeyError, TypeError, BenchError):
        return
    store.release([label], earlier)
