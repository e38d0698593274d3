"""Run a grid's cells as scheduler jobs through submitit (Slurm, or submitit's local executor).

The scheduler is the source of truth for progress, the run folder's store for results:

- ``jobs.json`` (the ledger) remembers, per cell, the job that last ran it: id, executor, submission time,
  settings hash and log files. It is rewritten atomically under the store's lock.
- ``jobs/`` is submitit's folder: the pickled job, its result, and its logs ``<job id>_0_log.out`` / ``.err``.
- A cell's state comes from its newest record (a record written after the job's submission is the job's
  outcome) and, while there is none, from the scheduler: ``squeue`` (``sacct`` where accounting exists)
  for Slurm, the job's process for the local executor.

A job that ended without a record (cancelled, killed, out of its time, lost with its node) is settled: the
cell gets a ``failed`` record that names the job's state and its log, so tables, reports and ``--resume``
see it like any failed cell.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformer.config import is_finite_number

from .. import readers
from ..errors import BenchError
from ..files import atomic_write_text, dumps_json
from ..records import CellRecord, Status
from ..records.cell import CellJob, JobEntry, JobsRecord
from .executor import ExecutorSettings
from .experiment import Cell, Experiment
from .store import ResultStore, reusable_profile

JOBS_FILE = "jobs.json"
JOBS_FOLDER = "jobs"
POLL_S = 2.0
# Slurm job states (squeue/sacct) by what they mean for a cell that has no record yet.
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD"}
RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # Slurm's 123 or 123_4, a local job's process id
UNKNOWN_TO_SCHEDULER = "GONE"  # the scheduler answered but no longer knows the job
LOCAL_RUNNING, LOCAL_ENDED = "RUNNING", "ENDED"


# --- the ledger ------------------------------------------------------------------------------------------


def _checked(entry: JobEntry) -> JobEntry:
    """A ledger entry whose fields have their types; ``ValueError`` otherwise."""
    if not _JOB_ID_RE.match(
        str(entry.job_id)
    ):  # it names files in the jobs folder: no separator, no traversal
        raise ValueError(f"job id {str(entry.job_id)[:40]!r} is not a scheduler's job id")
    texts = (entry.label, entry.job_id, entry.executor, entry.config_hash, entry.stdout, entry.stderr)
    if not all(isinstance(t, str) for t in texts) or not isinstance(entry.finetune, bool):
        raise ValueError(f"job of {entry.label!r} has a field of the wrong type")
    if isinstance(entry.attempt, bool) or not isinstance(entry.attempt, int):
        raise ValueError(f"attempt {entry.attempt!r} is not a count")
    if isinstance(entry.submitted, bool) or not is_finite_number(entry.submitted):
        raise ValueError(f"submitted {entry.submitted!r} is not a time")
    return entry


def read_ledger(folder: Path) -> dict[str, JobEntry]:
    """Label -> the cell's latest job ({} when the folder never had jobs)."""
    path = folder / JOBS_FILE
    fix = "delete it (the cells' records stay) and resubmit with --resume"
    data = readers.read_json(path, fix)
    if data is None:
        return {}
    try:
        ledger = JobsRecord.from_dict(data)
        return {label: _checked(entry) for label, entry in ledger.cells.items()}
    except (BenchError, ValueError, KeyError, TypeError, AttributeError, OverflowError):
        raise BenchError(f"{path} is damaged; {fix}") from None


def _add_to_ledger(store: ResultStore, entries: Iterable[JobEntry]) -> None:
    with store.locked():
        ledger = read_ledger(store.folder)
        ledger.update({e.label: e for e in entries})
        atomic_write_text(store.folder / JOBS_FILE, dumps_json(JobsRecord(cells=ledger).to_dict()))


# --- job states ------------------------------------------------------------------------------------------


def _run(command: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """Job id -> Slurm state, from ``squeue`` (jobs the controller still holds), then ``sacct`` for the rest
    where accounting is configured; a job neither knows is ``GONE``. ``None``: the scheduler did not answer.
    A pending job's state carries its reason: ``PENDING (Resources)``."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    out = _run(
        ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r", f"--jobs={','.join(ids)}"]
    )
    if out is None:
        return None
    states: dict[str, str] = {}
    if out.returncode == 0:
        for line in out.stdout.splitlines():
            job_id, state, reason = [*line.strip().split("|"), "", ""][:3]
            state = state.strip() or "UNKNOWN"
            # A pending job's reason says what it waits for (Resources, JobArrayTaskLimit, BeginTime, ...).
            waiting = state == "PENDING" and reason not in ("", "None")
            states[job_id] = f"{state} ({reason})" if waiting else state
    elif "invalid job id" not in out.stderr.lower():  # that one means: none of them is known any more
        return None
    missing = [i for i in ids if i not in states]
    if missing and shutil.which("sacct"):
        acct = _run(
            [
                "sacct",
                "--noheader",
                "--parsable2",
                "--allocations",
                "--format=JobID,State",
                "-j",
                ",".join(missing),
            ]
        )
        if acct is not None and acct.returncode == 0:
            for line in acct.stdout.splitlines():
                job_id, _, state = line.strip().partition("|")
                if job_id in missing and state.strip():
                    states[job_id] = state.split()[0]  # "CANCELLED by 0" -> "CANCELLED"
    return {i: states.get(i, UNKNOWN_TO_SCHEDULER) for i in ids}


def local_states(entries: Iterable[JobEntry], folder: Path) -> dict[str, str]:
    """Job id (the pid of submitit's local controller) -> ``RUNNING`` while that process lives, else ``ENDED``."""
    states = {}
    for entry in entries:
        alive = False
        try:
            stat = Path(f"/proc/{entry.job_id}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = Path(f"/proc/{entry.job_id}/cmdline").read_bytes().decode("utf-8", "replace")
            alive = stat not in ("Z", "X") and "submitit" in cmdline and str(folder) in cmdline
        except (OSError, IndexError):
            pass
        states[entry.job_id] = LOCAL_RUNNING if alive else LOCAL_ENDED
    return states


def job_states(entries: Iterable[JobEntry], folder: Path) -> dict[str, str] | None:
    entries = list(entries)
    states: dict[str, str] = {}
    local = [e for e in entries if e.executor == "submitit-local"]
    states.update(local_states(local, folder / JOBS_FOLDER))
    slurm = [e.job_id for e in entries if e.executor == "slurm"]
    if slurm:
        answer = slurm_states(slurm)
        if answer is None:
            return None
        states.update(answer)
    return states


# --- cell states -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellState:
    """Where one cell stands: ``missing`` (never submitted, no record), ``queued``, ``running``, ``done`` (an ok
    record), ``failed`` (a record that is not ok, or a job that ended without one), ``unknown`` (no record and
    the scheduler did not answer)."""

    label: str
    state: str
    job: JobEntry | None
    detail: str  # the scheduler's state, or the record's status and reason
    log: str | None  # the job's log file, when it has one on disk
    ended_without_record: bool = False

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


def log_file(stdout: str | None, stderr: str | None) -> str | None:
    """The job's log to read: its stderr when it holds anything (a traceback), else its stdout; None when
    the job wrote neither."""
    for path in (stderr, stdout):
        if path and Path(path).is_file() and Path(path).stat().st_size:
            return path
    return stdout if stdout and Path(stdout).is_file() else None


def _from_record(label: str, record: CellRecord, entry: JobEntry | None) -> CellState:
    job = record.job
    log = log_file(job.stdout, job.stderr) if job is not None else None
    if record.ok:
        return CellState(label, "done", entry, "ok", log)
    return CellState(label, "failed", entry, f"{record.status}: {record.reason}", log)


def grid_states(
    cells: list[Cell], out_dir: Path, finetune: bool, states: Mapping[str, str] | None = None
) -> list[CellState]:
    """The state of each of ``cells``: its newest record when current, else its job's scheduler state.

    ``states`` (job id -> scheduler state) is read when not given; a record is current when its settings
    hash is the one its job was submitted with (or, without a job, the one ``finetune`` gives) and, for a cell
    with a job, when it was finished after that job's submission.
    """
    out_dir = out_dir.resolve()  # the jobs' paths and processes name the folder in full
    ledger = read_ledger(out_dir)
    if states is None:
        states = job_states([ledger[c.label] for c in cells if c.label in ledger], out_dir)
    records = ResultStore(out_dir).latest()  # read after the states: a job that ended wrote its record first
    out = []
    for cell in cells:
        entry = ledger.get(cell.label)
        record = records.get(cell.label)
        if entry is None:
            if record is not None and record.config_hash == cell.config_hash(finetune):
                out.append(_from_record(cell.label, record, None))
            else:
                out.append(CellState(cell.label, "missing", None, "not submitted", None))
            continue
        if (
            record is not None
            and record.config_hash == entry.config_hash
            and (record.finished or 0) >= entry.submitted
        ):
            out.append(_from_record(cell.label, record, entry))
            continue
        out.append(_state_from_scheduler(cell.label, entry, states))
    return out


def _state_from_scheduler(label: str, entry: JobEntry, states: Mapping[str, str] | None) -> CellState:
    log = log_file(entry.stdout, entry.stderr)
    if states is None:
        return CellState(label, "unknown", entry, "the scheduler did not answer (squeue)", log)
    sched = states.get(entry.job_id, UNKNOWN_TO_SCHEDULER)
    if sched.split()[0] in QUEUED:
        return CellState(label, "queued", entry, sched, log)
    if sched in RUNNING:
        return CellState(label, "running", entry, sched, log)
    if sched == UNKNOWN_TO_SCHEDULER:
        why = "left no record and the scheduler no longer knows it (cancelled before it started?)"
    elif sched == LOCAL_ENDED:
        why = "ended without a record"
    else:
        why = f"ended {sched} without a record"
    return CellState(label, "failed", entry, f"job {entry.job_id} {why}", log, ended_without_record=True)


def settle(exp: Experiment, states: list[CellState], out_dir: Path) -> list[CellState]:
    """Give each cell whose job ended without a record a ``failed`` record naming the job's state and log.

    Under the store's lock, and only when the cell still has no record newer than its job's submission.
    """
    from .store import CellOutcome, make_record

    ended = [s for s in states if s.ended_without_record and s.job is not None]
    if not ended:
        return states
    store = ResultStore(out_dir)
    settled: dict[str, CellState] = {}
    with store.locked():
        records = store.latest()
        for st in ended:
            assert st.job is not None
            record = records.get(st.label)
            if record is not None and (record.finished or 0) >= st.job.submitted:
                continue  # it arrived meanwhile; the next look reads it
            reason = st.detail + (f"; log: {st.log}" if st.log else "; it wrote no log")
            # No environment: the job never reported where it ran.
            result = CellOutcome(None, [], Status.FAILED, reason, None, None)
            job = CellJob(st.job.executor, st.job.job_id, st.job.stdout, st.job.stderr)
            new = make_record(exp.cell(st.label), exp, st.job.finetune, result, (0, 1), "process", job=job)
            store.append(new)
            settled[st.label] = CellState(st.label, "failed", st.job, f"failed: {reason}", st.log)
    return [settled.get(s.label, s) for s in states]


# --- submitting ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    jobs: list[JobEntry]  # submitted now
    kept: list[str]  # cells left alone: recorded ok (--resume)
    active: list[CellState]  # cells whose earlier job is still queued or running (--resume)


def _executor(kind: str, folder: Path, settings: ExecutorSettings, name: str) -> Any:
    import submitit

    timeout_min = settings.time_limit_min
    if kind == "submitit-local":
        ex: Any = submitit.LocalExecutor(folder=folder, max_num_timeout=settings.max_requeues)
        ex.update_parameters(timeout_min=timeout_min, gpus_per_node=settings.gpus_per_task or 0)
        return ex
    if shutil.which("sbatch") is None:
        raise BenchError(
            "--executor slurm needs sbatch on PATH; run on a Slurm login node or use --executor local"
        )
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    params: dict[str, Any] = {
        "job_name": f"conformer-bench:{name}",
        "time": timeout_min,
        "partition": settings.partition,
        "account": settings.account,
        "qos": settings.qos,
        "cpus_per_task": settings.cpus_per_task,
        "gpus_per_task": settings.gpus_per_task,
        "mem": settings.mem,
        "constraint": settings.constraint,
        "additional_parameters": dict(settings.sbatch) or None,
    }
    if settings.array_parallelism is not None:
        params["array_parallelism"] = settings.array_parallelism
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def submit(
    exp: Experiment,
    cells: list[Cell],
    out_dir: Path,
    *,
    kind: str,
    settings: ExecutorSettings,
    finetune: bool,
    resume: bool,
    force: bool,
) -> Submission:
    """Submit a job per cell to run (a Slurm job array); remember the jobs in the ledger.

    Without ``resume`` every cell is submitted, and a cell whose earlier job is still queued or running is
    an error; with it, cells recorded ok with the same settings and cells whose job is still queued or
    running are left alone.
    """
    out_dir = out_dir.resolve()
    store = ResultStore(out_dir)
    store.bind_experiment(exp.summary(), force)
    store.clean_temp()
    current = {s.label: s for s in grid_states(cells, out_dir, finetune)}
    active = _active_jobs(cells, current, out_dir, resume)
    records = store.latest()
    to_run: list[Cell] = []
    kept: list[str] = []
    for cell in cells:
        old = records.get(cell.label)
        if current[cell.label].state in ("queued", "running"):
            continue
        if resume and old is not None and old.config_hash == cell.config_hash(finetune) and old.ok:
            kept.append(cell.label)
            continue
        to_run.append(cell)
    if not to_run:
        return Submission([], kept, active)
    entries = _submit_jobs(exp, to_run, store, kind, settings, finetune, resume, records)
    return Submission(entries, kept, active)


def _active_jobs(
    cells: list[Cell], current: dict[str, CellState], out_dir: Path, resume: bool
) -> list[CellState]:
    """The cells whose earlier job is still queued or running; an error without ``resume``, or when the
    scheduler did not answer."""
    unknown = [s.label for s in current.values() if s.state == "unknown"]
    if unknown:
        raise BenchError(
            f"the scheduler did not answer (squeue), so it is not known whether {', '.join(unknown)} still "
            "have jobs; retry when `squeue` works"
        )
    active = [current[c.label] for c in cells if current[c.label].state in ("queued", "running")]
    if active and not resume:
        busy = ", ".join(f"{s.label} (job {s.job.job_id if s.job else '?'}, {s.state})" for s in active)
        raise BenchError(
            f"{len(active)} cell(s) of {out_dir} still have a job: {busy}; follow them with --status, "
            "pass --resume to submit only the other cells, or cancel those jobs (scancel)"
        )
    return active


def _submit_jobs(
    exp: Experiment,
    to_run: list[Cell],
    store: ResultStore,
    kind: str,
    settings: ExecutorSettings,
    finetune: bool,
    resume: bool,
    records: dict[str, CellRecord],
) -> list[JobEntry]:
    """Submit ``to_run`` as one batch and add the jobs to the ledger."""
    from .job import CellJob, holder_path, release_claim_of

    out_dir = store.folder
    ledger = read_ledger(out_dir)
    folder = out_dir / JOBS_FOLDER
    for cell in to_run:  # their earlier jobs ended (none is queued or running): drop what they claimed
        if cell.label in ledger:
            release_claim_of(store, cell.label, holder_path(folder, ledger[cell.label].job_id))
    ex = _executor(kind, folder, settings, exp.name)
    specs = [
        CellJob(
            str(out_dir), kind, exp, cell, finetune, reusable_profile(records.get(cell.label), cell, resume)
        )
        for cell in to_run
    ]
    submitted = time.time()
    try:
        with ex.batch():
            jobs = [ex.submit(spec) for spec in specs]
    except Exception as exc:  # submitit raises what sbatch said (FailedSubmissionError, CalledProcessError)
        text = " ".join(str(exc).split())[:400]
        raise BenchError(f"the scheduler refused the jobs: {text}; check the [executor] settings") from None
    entries = [
        JobEntry(
            label=cell.label,
            job_id=str(job.job_id),
            executor=kind,
            submitted=submitted,
            config_hash=cell.config_hash(finetune),
            finetune=finetune,
            stdout=str(job.paths.stdout),
            stderr=str(job.paths.stderr),
            attempt=(ledger[cell.label].attempt + 1) if cell.label in ledger else 1,
        )
        for cell, job in zip(to_run, jobs, strict=True)
    ]
    _add_to_ledger(store, entries)
    return entries


# --- waiting ---------------------------------------------------------------------------------------------


def wait_for(
    exp: Experiment,
    cells: list[Cell],
    out_dir: Path,
    finetune: bool,
    on_change: Callable[[list[CellState], list[CellState]], None],
    poll_s: float = POLL_S,
) -> list[CellState]:
    """Poll until every cell is done or failed; ``on_change(states, newly_finished)`` after each look.

    A scheduler that does not answer is asked again at the next look.
    """
    seen: set[str] = set()
    while True:
        states = settle(exp, grid_states(cells, out_dir, finetune), out_dir)
        newly = [s for s in states if s.finished and s.label not in seen]
        seen.update(s.label for s in newly)
        on_change(states, newly)
        if all(s.finished or s.state == "missing" for s in states):
            return states
        time.sleep(poll_s)


def cancel_hint(states: Iterable[CellState]) -> str:
    """How to stop the jobs still queued or running."""
    active = [s.job for s in states if s.job is not None and s.state in ("queued", "running")]
    if not active:
        return ""
    ids = " ".join(sorted({j.job_id for j in active}))
    if all(j.executor == "slurm" for j in active):
        return f"scancel {ids}"
    return f"kill {ids}" if os.name == "posix" else ""
