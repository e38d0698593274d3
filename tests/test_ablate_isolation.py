"""Each cell in a fresh process: a killed or crashed cell fails alone, progress and CPU memory come through."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conformer_bench.ablate import launch
from conformer_bench.ablate.experiment import Cell, load_experiment
from conformer_bench.ablate.launch import child_env, exit_reason
from conformer_bench.ablate.runner import run_grid
from conformer_bench.ablate.store import load_records
from conformer_bench.ablate.summary import build_frame, build_rows, describe
from conformer_bench.cli import app
from conformer_bench.records import ProfileRecord
from conformer_bench.records.cell import CellJobSpec

EXP = Path(__file__).parent / "fixtures" / "experiments"

# The cell process for the crash test: by label, it SIGKILLs itself, segfaults, or exits 3 after a message on
# stderr; every other cell runs as usual.
CRASHING_CHILD = """
import json, os, signal, sys
from conformer_bench.ablate import worker
label = json.load(open(sys.argv[1]))["cell"]["label"]
if label == "cnn-only":
    os.kill(os.getpid(), signal.SIGKILL)
if label == "transformer-only":
    os.kill(os.getpid(), signal.SIGSEGV)
if label == "no-fcu":
    print("first line", file=sys.stderr)
    print("RuntimeError: native library gave up", file=sys.stderr)
    sys.exit(3)
sys.exit(worker.main(sys.argv[1:]))
"""

TWIN = """
name = "twin"

[base]
label = "first"
variant = "nano"

[profile]
device = "cpu"
img_size = 64
mode = "infer"
batch_size = 8
warmup = 1
iters = 3
threads = 1
cross_check = false

[[cells]]
label = "second"
num_med_block = 0
repeat = true
"""


def test_killed_and_crashed_cells_fail_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "cell_command", lambda: [sys.executable, "-c", CRASHING_CHILD])
    out = tmp_path / "res"
    args = ["ablate", str(EXP / "nano_costs.toml"), "--output-dir", str(out), "--isolate"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    records = load_records(out)
    assert records["dual"].status == "ok" and records["dual"].profile.params.total > 0
    killed, crashed, exited = records["cnn-only"], records["transformer-only"], records["no-fcu"]
    assert killed.status == "failed"
    assert killed.reason == "the cell's process was killed by SIGKILL (out of memory?)"
    assert crashed.status == "failed" and crashed.reason.startswith("the cell's process crashed with SIGSEGV")
    assert exited.status == "failed"
    assert exited.reason == "the cell's process exited with code 3: RuntimeError: native library gave up"
    for record in records.values():
        assert record.isolation == "process"
        assert record.environment.device == "cpu" and record.wall_s > 0
    assert "SIGKILL" in (out / "summary.md").read_text()


class _Recorder:
    def __init__(self) -> None:
        self.updates: dict[str, list[tuple[str, float | None, float | None]]] = {}

    def start_cell(self, cell: Cell, position: int, total: int) -> Any:
        log = self.updates.setdefault(cell.label, [])

        class Bar:
            def update(self, text: str, done: float | None = None, total: float | None = None) -> None:
                log.append((text, done, total))

        return Bar()

    def end_cell(self, cell: Cell, status: str, skipped: bool) -> None:
        pass


def test_twin_cells_in_fresh_processes_measure_alike(tmp_path: Path) -> None:
    src = tmp_path / "twin.toml"
    src.write_text(TWIN)
    out = tmp_path / "res"
    exp = load_experiment(src, output_dir=out)
    progress = _Recorder()
    result = run_grid(exp, list(exp.cells), out, finetune=False, resume=False, progress=progress)
    assert result.statuses == {"first": "ok", "second": "ok"}
    records = load_records(out)
    mem = {label: records[label].profile.memory.infer for label in ("first", "second")}
    first, second = (mem[k].peak_rss_increase_bytes for k in ("first", "second"))
    # Same config in a fresh process each: same starting point, a peak of the same size (not ~0 for the second).
    assert first > 1 << 20 and second > 1 << 20
    assert 0.5 < second / first < 2.0, (first, second)
    assert abs(mem["first"].rss_before_bytes - mem["second"].rss_before_bytes) < 64 << 20
    # Progress from inside the child reached the parent: the profile's phases with fractions of 1.
    for label in ("first", "second"):
        updates = progress.updates[label]
        assert updates[0] == ("profile", 0.0, 1.0)
        assert any(text.startswith("profile: ") and total == 1.0 for text, _, total in updates[1:])
    notes = " ".join(describe(list(records.values())))
    assert "each cell ran in a fresh Python process" in notes and "caveat" not in notes
    rows = build_rows(list(records.values()), "first")
    assert rows[1].label == "second" and rows[1].deltas["peak_mem_infer_mib"] == pytest.approx(
        (second / first - 1) * 100
    )
    frame = build_frame(list(records.values()), "first")
    assert frame.set_index("label").loc["second", "d_peak_mem_infer_mib"] == pytest.approx(
        (second / first - 1) * 100
    )


def test_spec_round_trip_and_child_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = load_experiment(EXP / "nano_grid.toml")
    for cell in exp.cells:
        profile = {"schema": "conformer-bench.profile", "schema_version": 1, "status": "ok"}
        spec = json.loads(json.dumps(cell.to_spec(True, ProfileRecord.from_dict(profile), 7).to_dict()))
        assert Cell.from_spec(CellJobSpec.from_dict(spec)) == cell
        assert spec["reuse_profile"] == profile and spec["progress_fd"] == 7
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = child_env()
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"} & set(env)
    assert env["OMP_NUM_THREADS"] == "1"


def test_exit_reasons_and_inline_only_cell_fn(tmp_path: Path) -> None:
    assert exit_reason(-signal.SIGABRT, "free(): invalid pointer") == (
        "the cell's process crashed with SIGABRT: free(): invalid pointer"
    )
    assert exit_reason(-signal.SIGTERM) == "the cell's process was killed by SIGTERM"
    assert exit_reason(0) == "the cell's process exited without writing a result"
    assert exit_reason(1, "x" * 1000).startswith("the cell's process exited with code 1: xxx")
    assert len(exit_reason(1, "x" * 1000)) == 500
    exp = load_experiment(EXP / "nano_costs.toml")
    with pytest.raises(ValueError, match="isolate=False"):
        run_grid(exp, [], tmp_path, finetune=False, resume=False, cell_fn=lambda *a: {})
