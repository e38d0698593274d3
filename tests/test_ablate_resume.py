"""Interrupting a real grid (SIGINT, SIGKILL) and resuming it; splitting it over 2 processes (--shard, torchrun)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conformer_bench.cli import app

ROOT = Path(__file__).resolve().parent.parent
GRID = Path(__file__).parent / "fixtures" / "experiments" / "nano_costs.toml"
LABELS = ["dual", "cnn-only", "transformer-only", "no-fcu"]

# Runs the real CLI; the process of every cell after the first writes its pid to the file named by
# ABLATE_TEST_HOLD and waits, so the test interrupts the run at a known point (the first cell finished and
# written, the next one running in its own process).
HOLD_CHILD = """
import os, sys, time
from pathlib import Path
from conformer_bench.ablate import worker
real = worker.run_cell
def held(c, finetune, reuse, progress):
    if c.index >= 1:
        Path(os.environ["ABLATE_TEST_HOLD"]).write_text(str(os.getpid()))
        time.sleep(300)
    return real(c, finetune, reuse, progress)
worker.run_cell = held
sys.exit(worker.main(sys.argv[1:]))
"""
# The test sends SIGINT, so the spawned command sets SIGINT's disposition itself: a test run started in the
# background of a non-interactive shell (or under nohup) passes SIGINT ignored on to what it spawns.
HOLD_SCRIPT = f"""
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from conformer_bench.ablate import launch
launch.cell_command = lambda: [sys.executable, "-c", {HOLD_CHILD!r}]
from conformer_bench.cli import app
app(sys.argv[1:], prog_name="conformer-bench")
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(extra)
    return env


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]


def _start_held(out: Path, marker: Path, *args: str) -> subprocess.Popen[bytes]:
    marker.unlink(missing_ok=True)
    return subprocess.Popen(
        # --isolate: costs-only cells would otherwise run in the command's own process, unheld
        [
            sys.executable,
            "-c",
            HOLD_SCRIPT,
            "ablate",
            str(GRID),
            "--output-dir",
            str(out),
            "--isolate",
            *args,
        ],
        env=_env(ABLATE_TEST_HOLD=str(marker)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for(marker: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int:
    """The pid of the held cell's process, once it is holding."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text():
            return int(marker.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stdout.read().decode() if proc.stdout else ''}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the second cell did not start within {timeout} s")


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (absent, or a zombie nobody has reaped yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def _no_temp_files(out: Path) -> None:
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_interrupt_and_kill_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "res"
    marker = tmp_path / "holding"
    # 1. Ctrl-C while the second cell runs: exit 130, the first cell kept whole.
    proc = _start_held(out, marker)
    child = _wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    assert "rerun with --resume" in output
    assert _gone(child), "Ctrl-C must stop the running cell's process"
    first = _records(out)
    assert [r["label"] for r in first] == ["dual"] and first[0]["status"] == "ok"
    _no_temp_files(out)

    # 2. Resume, and kill -9 the process while its first new cell runs: nothing finished is lost.
    proc = _start_held(out, marker, "--resume")
    child = _wait_for(marker, proc)  # the resumed run skipped "dual" and now runs "cnn-only"
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone(child), "a cell's process must not outlive a killed run"
    assert _records(out) == first, "a killed resume must leave finished cells untouched"

    # 3. Resume to the end: the finished cell is skipped, not repeated; every other cell runs once.
    result = CliRunner().invoke(app, ["ablate", str(GRID), "--output-dir", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 unchanged cell(s) (--resume): dual" in result.output
    final = _records(out)
    assert [r["label"] for r in final] == LABELS
    assert final[0] == first[0]
    assert all(r["status"] == "ok" for r in final)
    assert (out / "summary.csv").exists() and (out / "summary.md").exists()
    _no_temp_files(out)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_shard_processes_merge(tmp_path: Path) -> None:
    out = tmp_path / "res"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conformer_bench",
                "ablate",
                str(GRID),
                "--output-dir",
                str(out),
                "--shard",
                f"{i}/2",
            ],
            env=_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    records = _records(out)
    assert [r["label"] for r in records] == LABELS
    assert {r["label"]: r["shard"]["rank"] for r in records} == {
        "dual": 0,
        "cnn-only": 1,
        "transformer-only": 0,
        "no-fcu": 1,
    }
    assert not list(out.glob("cells.shard-*")) and not list(out.glob("*.done"))
    assert sum("wrote csv" in o for o in outputs) == 1, "exactly one shard writes the tables"
    assert (out / "summary.md").read_text().count("| `") == 4


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_ranks_gather_on_rank0(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    out = tmp_path / "res"
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "conformer_bench",
            "ablate",
            str(GRID),
            "--output-dir",
            str(out),
        ],
        env=_env(OMP_NUM_THREADS="1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = _records(out)
    assert [r["label"] for r in records] == LABELS
    assert {r["shard"]["rank"] for r in records} == {0, 1}
    assert all(r["shard"]["world_size"] == 2 and r["status"] == "ok" for r in records)
    assert not list(out.glob("cells.shard-*"))
    assert proc.stdout.count("wrote csv") == 1
