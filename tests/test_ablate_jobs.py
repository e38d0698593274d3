"""Cells as submitit jobs: the [executor] table and options, and a real grid through submitit's local executor."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conformer_bench.ablate.cluster import grid_states, read_ledger
from conformer_bench.ablate.executor import ExecutorSettings
from conformer_bench.ablate.experiment import load_experiment
from conformer_bench.ablate.store import ResultStore
from conformer_bench.cli import app
from conformer_bench.records import ExperimentRecord
from conformer_bench.records.cell import CellJob

GRID = Path(__file__).parent / "fixtures" / "experiments" / "nano_grid.toml"
runner = CliRunner()


def _grid_with(tmp_path: Path, executor_table: str) -> Path:
    path = tmp_path / "nano_grid.toml"
    path.write_text(GRID.read_text() + "\n[executor]\n" + executor_table)
    return path


def _error_line(result: object) -> str:
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2, output  # type: ignore[attr-defined]
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def test_executor_table_is_read_and_changes_no_hash(tmp_path: Path) -> None:
    table = (
        'partition = "gpu"\naccount = "lab"\nqos = "high"\ntime_limit = "1-02:03:30"\ncpus_per_task = 4\n'
        'gpus_per_task = 1\nmem = "16g"\nconstraint = "a100"\narray_parallelism = 8\nmax_requeues = 2\n'
        "sbatch = { exclusive = true, nice = 10 }\n"
    )
    plain = load_experiment(GRID)
    with_table = load_experiment(_grid_with(tmp_path, table))
    assert with_table.executor == ExecutorSettings(
        partition="gpu",
        account="lab",
        qos="high",
        time_limit_min=24 * 60 + 2 * 60 + 3 + 1,  # seconds round up to a minute
        cpus_per_task=4,
        gpus_per_task=1,
        mem="16G",
        constraint="a100",
        array_parallelism=8,
        max_requeues=2,
        sbatch={"exclusive": True, "nice": 10},
    )
    assert plain.executor == ExecutorSettings()
    assert with_table.digest() == plain.digest()
    assert [c.config_hash(True) for c in with_table.cells] == [c.config_hash(True) for c in plain.cells]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("cpus_per_task = 0\n", ":41: executor.cpus_per_task: 0 is not valid; give an integer >= 1"),
        ('partitoin = "gpu"\n', "unknown key 'partitoin'; did you mean 'partition'?"),
        ('time_limit = "soon"\n', "give minutes (e.g. 90) or [D-]HH:MM:SS"),
        ('mem = "lots"\n', "give a size such as 16G"),
        ('sbatch = { output = "x.log" }\n', "--output is set by conformer-bench for each job"),
        ('sbatch = { partition = "gpu" }\n', "use partition instead"),
    ],
)
def test_bad_executor_table_is_one_line_with_file_and_line(tmp_path: Path, table: str, expected: str) -> None:
    path = _grid_with(tmp_path, table)
    line = _error_line(runner.invoke(app, ["ablate", str(path), "--executor", "slurm"]))
    assert f"{path}:" in line and expected in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--partition", "gpu"], "--partition applies to jobs; add --executor slurm"),
        (["--no-wait"], "--no-wait applies to jobs"),
        (["--executor", "slurm", "--cpus-per-task", "0"], "--cpus-per-task: 0 is not valid"),
        (["--executor", "slurm", "--time-limit", "1:2"], "--time-limit: '1:2' is not valid"),
        (["--executor", "slurm", "--sbatch", "array=0-3"], "--array is set by conformer-bench"),
        (["--executor", "slurm", "--no-isolate"], "--no-isolate runs cells in this process"),
        (["--executor", "slurm", "--shard", "0/2"], "drop --shard and torchrun"),
        (["--status", "--resume"], "--status only reports"),
    ],
)
def test_bad_job_options_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    line = _error_line(runner.invoke(app, ["ablate", str(GRID), "-o", str(tmp_path / "out"), *args]))
    assert expected in line


def test_slurm_without_sbatch_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    line = _error_line(
        runner.invoke(app, ["ablate", str(GRID), "-o", str(tmp_path / "out"), "--executor", "slurm"])
    )
    assert "needs sbatch on PATH" in line
    assert not (tmp_path / "out" / "jobs.json").exists()


def _task_of(controller: int) -> int | None:
    """The pid of the task submitit's local controller ``controller`` started, once it runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == controller:
            return int(stat.parent.name)
    return None


@pytest.mark.slow
def test_submitit_local_grid_kill_status_and_resume(tmp_path: Path) -> None:
    """Two cells as local jobs; one job is killed before its cell ends: --status records it as failed with
    its log, --resume reruns only it and keeps the other cell's record."""
    out = tmp_path / "run"
    base = [
        "ablate",
        str(GRID),
        "-o",
        str(out),
        "--profile-mode",
        "none",
        "--only",
        "dual",
        "--only",
        "no-fcu",
    ]
    result = runner.invoke(app, [*base, "--executor", "submitit-local", "--no-wait"])
    assert result.exit_code == 0, result.output
    ledger = read_ledger(out)
    assert sorted(ledger) == ["dual", "no-fcu"]
    assert {e.executor for e in ledger.values()} == {"submitit-local"}

    victim = ledger["no-fcu"]
    deadline = time.time() + 60
    task = None
    while task is None and time.time() < deadline:
        task = _task_of(int(victim.job_id))
        time.sleep(0.05)
    assert task is not None, "the local job's task never started"
    os.kill(int(victim.job_id), signal.SIGKILL)  # the controller first, so it cannot restart the task
    os.kill(task, signal.SIGKILL)

    exp = load_experiment(GRID, output_dir=out, profile_overrides={"mode": "none"})
    cells = exp.select(["dual", "no-fcu"])
    deadline = time.time() + 120
    while not all(s.finished for s in grid_states(cells, out, False)) and time.time() < deadline:
        time.sleep(0.5)
    status = runner.invoke(app, [*base, "--status"])
    assert status.exit_code == 0, status.output
    lines = {ln.split()[0]: ln for ln in status.output.splitlines() if ln.split() and ln.split()[0] in ledger}
    assert lines["dual"].split()[1] == "done"
    assert lines["no-fcu"].split()[1] == "failed"
    logs = (f"log: {victim.stdout}", f"log: {victim.stderr}")
    assert f"job {victim.job_id} ended without a record; log: " in lines["no-fcu"]
    assert any(log in lines["no-fcu"] for log in logs)
    records = ResultStore(out).latest()
    assert records["no-fcu"].status == "failed" and records["no-fcu"].job.id == victim.job_id
    assert records["no-fcu"].environment is None  # the job never reported where it ran
    dual = records["dual"]
    assert dual.status == "ok" and dual.isolation == "process"
    assert dual.job == CellJob(
        "submitit-local", ledger["dual"].job_id, ledger["dual"].stdout, ledger["dual"].stderr
    )
    assert "dual: ok" in Path(dual.job.stdout).read_text()
    assert dual.profile.params.total > 0

    table = runner.invoke(app, ["table", str(out)])
    assert table.exit_code == 0, table.output
    failed_line = next(
        ln for ln in (out / "summary.md").read_text().splitlines() if ln.startswith("- `no-fcu`")
    )
    assert f"failed: job {victim.job_id} ended without a record; log: {out / 'jobs'}" in failed_line

    resumed = runner.invoke(app, [*base, "--executor", "submitit-local", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "kept 1 cell(s) recorded ok (--resume): dual" in resumed.output
    assert "submitted 1 of 4 cells" in resumed.output
    after = read_ledger(out)
    assert after["dual"] == ledger["dual"]
    assert after["no-fcu"].attempt == 2 and after["no-fcu"].job_id != victim.job_id
    records = ResultStore(out).latest()
    assert records["dual"].finished == dual.finished  # kept, not rerun
    assert records["no-fcu"].status == "ok" and records["no-fcu"].job.id == after["no-fcu"].job_id
    assert len((out / "cells.jsonl").read_text().splitlines()) == 2  # compacted: one record per cell
    summary = ExperimentRecord.from_dict(json.loads((out / "experiment.json").read_text()))
    assert summary.name == "nano_grid" and {"dual", "no-fcu"} <= set(summary.labels)


def test_failed_summary_line_names_the_jobs_log(tmp_path: Path) -> None:
    from conformer_bench.ablate.summary import build_rows, to_markdown
    from conformer_bench.records import CellRecord

    out_log, err_log = tmp_path / "7_0_log.out", tmp_path / "7_0_log.err"
    out_log.write_text("progress\n")
    err_log.write_text("")
    job = {"executor": "slurm", "id": "7", "stdout": str(out_log), "stderr": str(err_log)}
    head = {"schema": CellRecord.SCHEMA, "schema_version": CellRecord.VERSION}
    records = [
        CellRecord.from_dict({**head, "label": "base", "status": "ok", "reason": None}),
        CellRecord.from_dict(
            {
                **head,
                "label": "broken",
                "status": "failed",
                "reason": "profile: RuntimeError: boom",
                "job": job,
            }
        ),
    ]
    text = to_markdown(build_rows(records, "base"), [], "t")
    assert f"- `broken`: failed: profile: RuntimeError: boom (log: {out_log})" in text.splitlines()
    err_log.write_text("Traceback ...\n")  # a job that wrote to stderr: that is the log to read
    text = to_markdown(build_rows(records, "base"), [], "t")
    assert f"- `broken`: failed: profile: RuntimeError: boom (log: {err_log})" in text.splitlines()
