"""The nano grid on a real Slurm cluster (start one with `scripts/slurm.sh up`): every cell as a job of one
array, a job cancelled with scancel, --status, and --resume rerunning only the cancelled cell.

Skipped, with the reason, when no Slurm controller answers on this machine.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conformer_bench.ablate.cluster import grid_states, read_ledger, slurm_states
from conformer_bench.ablate.experiment import load_experiment
from conformer_bench.ablate.store import ResultStore
from conformer_bench.cli import app

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GRID = Path(__file__).parent / "fixtures" / "experiments" / "nano_grid.toml"
LABELS = ["dual", "num_med_block=1", "cnn-only", "no-fcu"]
runner = CliRunner()


def _no_cluster_reason(wait_s: float = 90.0) -> str | None:
    """Why the cluster cannot run this test's jobs, or None. A node still completing an earlier test's
    cancelled job (state ``comp``, up to Slurm's KillWait) is waited for, up to ``wait_s``."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "Slurm is not installed here; start a one-node cluster with scripts/slurm.sh up (as root)"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            out = subprocess.run(
                ["sinfo", "--noheader", "--format=%t"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"sinfo did not answer ({exc}); start the cluster with scripts/slurm.sh up"
        if out.returncode != 0:
            said = "; ".join(line.strip() for line in out.stderr.splitlines() if line.strip())
            return f"no Slurm controller answers (sinfo: {said}); start one with scripts/slurm.sh up"
        states = [state.strip().rstrip("*~#") for state in out.stdout.split()]
        if any(state.startswith(("idle", "mix", "alloc")) for state in states):
            return None
        if time.monotonic() > deadline:
            return f"no Slurm node can run jobs after {wait_s:.0f} s (sinfo states: {states})"
        time.sleep(2.0)


@pytest.fixture
def slurm_cluster(tmp_path: Path) -> Iterator[None]:
    """Skip without a cluster; afterwards cancel whatever job of the test's run folder is left."""
    reason = _no_cluster_reason()
    if reason:
        pytest.skip(reason)
    yield
    ledger = read_ledger(tmp_path / "run") if (tmp_path / "run").is_dir() else {}
    if ledger:
        subprocess.run(["scancel", *(e.job_id for e in ledger.values())], check=False, timeout=30)


def _states(output: str) -> dict[str, str]:
    """Label -> state from the lines of `ablate --status`."""
    out = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in LABELS:
            out[words[0]] = words[1]
    return out


def test_grid_on_slurm_scancel_status_and_resume(tmp_path: Path, slurm_cluster: None) -> None:
    out = tmp_path / "run"
    base = ["ablate", str(GRID), "-o", str(out), "--profile-mode", "none"]
    jobs = ["--executor", "slurm", "--time-limit", "10", "--cpus-per-task", "1"]

    # One job array, one job at a time, so the last cell's job waits in the queue.
    submitted = runner.invoke(app, [*base, *jobs, "--no-wait", "--array-parallelism", "1"])
    assert submitted.exit_code == 0, submitted.output
    ledger = read_ledger(out)
    assert sorted(ledger) == sorted(LABELS)
    assert len({e.job_id.split("_")[0] for e in ledger.values()}) == 1  # one array
    victim = ledger["no-fcu"]
    assert slurm_states([victim.job_id])[victim.job_id].startswith("PENDING")
    subprocess.run(["scancel", victim.job_id], check=True, timeout=30)

    status = runner.invoke(app, [*base, "--status"])
    assert status.exit_code == 0, status.output
    first = _states(status.output)
    assert first["no-fcu"] == "failed", status.output
    assert {first[label] for label in LABELS[:3]} <= {"queued", "running", "done"}
    assert {"queued", "running"} & set(first.values()), status.output  # the array was still going

    exp = load_experiment(GRID, output_dir=out, profile_overrides={"mode": "none"})
    deadline = time.time() + 150
    while not all(s.finished for s in grid_states(list(exp.cells), out, False)):
        assert time.time() < deadline, "the cells' jobs did not finish in 150 s"
        time.sleep(1)

    records = ResultStore(out).latest()
    for label in LABELS[:3]:
        record = records[label]
        cell = exp.cell(label)
        assert record.status == "ok", record.reason
        assert record.config_hash == cell.config_hash(False)
        assert record.variant.config == cell.config.to_dict()
        assert record.profile is not None and record.profile.params is not None and record.profile.flops
        assert record.profile.params.total > 0 and record.profile.flops.paper_macs > 0
        assert record.job is not None
        assert record.job.executor == "slurm" and record.job.id == ledger[label].job_id
        assert f"{label}: ok" in Path(record.job.stdout).read_text()
    cancelled = records["no-fcu"]
    assert cancelled.status == "failed" and cancelled.profile is None
    assert f"job {victim.job_id} left no record" in (cancelled.reason or "")
    kept = {label: records[label].finished for label in LABELS[:3]}

    resumed = runner.invoke(app, [*base, *jobs, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "submitted 1 of 4 cells" in resumed.output
    after = read_ledger(out)
    assert {label: after[label] for label in LABELS[:3]} == {label: ledger[label] for label in LABELS[:3]}
    assert after["no-fcu"].attempt == 2 and after["no-fcu"].job_id != victim.job_id
    records = ResultStore(out).latest()
    assert {label: records[label].finished for label in LABELS[:3]} == kept  # not rerun
    rerun = records["no-fcu"]
    assert rerun.status == "ok" and rerun.job is not None and rerun.job.id == after["no-fcu"].job_id
    assert rerun.config_hash == exp.cell("no-fcu").config_hash(False)
    final = _states(runner.invoke(app, [*base, "--status"]).output)
    assert final == dict.fromkeys(LABELS, "done")


def test_preempted_job_is_requeued_and_records_its_cell(tmp_path: Path, slurm_cluster: None) -> None:
    """Slurm's preemption signal (the job's --signal, USR2) mid-cell: submitit checkpoints and requeues the
    job, which runs the cell again under the same job id and records it once."""
    out = tmp_path / "run"
    base = ["ablate", str(GRID), "-o", str(out), "--profile-mode", "none", "--only", "dual", "--finetune"]
    # submitit counts a signal after min(0.8 x limit, limit - 10 min) as a timeout: 30 min leaves 20 min.
    submitted = runner.invoke(app, [*base, "--executor", "slurm", "--time-limit", "30", "--no-wait"])
    assert submitted.exit_code == 0, submitted.output
    job = read_ledger(out)["dual"]
    log = Path(job.stdout)
    deadline = time.time() + 90
    while "dual: fine-tune" not in (log.read_text() if log.is_file() else ""):
        assert time.time() < deadline, "the job did not reach its fine-tuning in 90 s"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=30)
    while not slurm_states([job.job_id])[job.job_id].startswith("PENDING"):
        assert time.time() < deadline, f"the job was not requeued: {log.read_text()}"
        time.sleep(0.2)
    # Slurm holds a requeued job for a while (BeginTime); let it start now.
    subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], check=True, timeout=30)

    exp = load_experiment(GRID, output_dir=out, profile_overrides={"mode": "none"})
    while not grid_states([exp.cell("dual")], out, True)[0].finished:
        assert time.time() < deadline + 60, "the requeued job did not finish"
        time.sleep(0.5)
    text = log.read_text()
    assert "this job is preempted" in text and f"Requeued job {job.job_id}" in text
    assert text.count("dual: running in") == 2
    records = [r for r in ResultStore(out).read_all() if r.label == "dual"]
    assert len(records) == 1
    assert records[0].status == "ok" and records[0].job is not None and records[0].job.id == job.job_id
    assert [run.hyper.seed for run in records[0].finetune] == [0, 1]
    assert read_ledger(out)["dual"] == job  # the same job, not a new submission
