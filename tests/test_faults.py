"""Faults done for real: two processes on one folder, full disks (RLIMIT_FSIZE), damaged and random files,
partial checkpoints, signals, and inputs that can only be mistakes. Each case checks the exit code, the
one-line message and that no finished record is lost."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conformer_bench.ablate.launch import TEMP_PREFIX, remove_orphan_cell_folders
from conformer_bench.ablate.store import CELLS_FILE, ResultStore
from conformer_bench.cli import app

ROOT = Path(__file__).resolve().parent.parent
GRID = Path(__file__).parent / "fixtures" / "experiments" / "nano_grid.toml"
FIXTURE = Path(__file__).parent / "fixtures" / "official_conformer_micro.pt"
LABELS = ["dual", "num_med_block=1", "cnn-only", "no-fcu"]
FAST = ("--profile-mode", "none", "--no-isolate")  # params + FLOPs only, cells in the command's process


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _cli(*args: str, fsize: int | None = None, **popen: Any) -> subprocess.Popen[str]:
    """The real command in a process of its own; ``fsize`` caps the size of every file it writes."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.Popen(
        [sys.executable, "-m", "conformer_bench", *map(str, args)],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,
        **popen,
    )


def _run(*args: str, fsize: int | None = None, timeout: float = 180) -> tuple[int, str, str]:
    proc = _cli(*args, fsize=fsize)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _error_line(stderr: str) -> str:
    """The one ``error:`` line; anything like a traceback fails the test."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _no_temp_files(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob("*") if ".tmp" in p.name]
    assert leftovers == [], leftovers


# --- two processes on one folder --------------------------------------------------------------------------

STORE_WRITER = textwrap.dedent(
    """
    import sys, time
    from conformer_bench.ablate.store import Holder, ResultStore
    from conformer_bench.records import CellRecord
    store, me = ResultStore(sys.argv[1]), Holder.me()
    for label in sys.argv[2].split(","):
        claim = store.claim(label, "h", me)
        if not claim.granted:
            continue
        time.sleep(0.01)  # the cell "runs" while holding its claim, not the lock
        store.append(CellRecord.from_dict({"schema": "conformer-bench.cell", "schema_version": 2,
            "label": label, "config_hash": "h", "status": "ok", "finished": time.time(), "pid": me.pid}))
        store.release([label], me)
    store.compact(sys.argv[2].split(","))
    """
)


def test_two_writers_on_one_store_keep_every_cell_ten_times(tmp_path: Path) -> None:
    """Two processes, overlapping shares, one folder: every cell recorded, each exactly once, ten times over."""
    labels = [f"c{i}" for i in range(12)]
    for repetition in range(10):
        folder = tmp_path / f"run{repetition}"
        shares = [",".join(labels[:8]), ",".join(reversed(labels[4:]))]  # c4..c7 wanted by both
        procs = [
            subprocess.Popen([sys.executable, "-c", STORE_WRITER, str(folder), share], env=_env(), cwd=ROOT)
            for share in shares
        ]
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
        records = _lines(folder / CELLS_FILE)
        assert sorted(r["label"] for r in records) == sorted(labels), f"repetition {repetition}"
        assert not (folder / ".running.json").exists()


@pytest.mark.slow
def test_two_ablate_commands_on_one_folder_lose_nothing(tmp_path: Path) -> None:
    """Issue's row 1: two `ablate` runs with different --only sets on one folder; both kept."""
    out = tmp_path / "res"
    first = ["--only", "dual", "--only", "cnn-only"]
    second = ["--only", "num_med_block=1", "--only", "no-fcu"]
    procs = [_cli("ablate", GRID, "--output-dir", out, *FAST, *only) for only in (first, second)]
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    records = _lines(out / CELLS_FILE)
    assert sorted(r["label"] for r in records) == sorted(LABELS)
    assert all(r["status"] == "ok" and r["experiment"] == "nano_grid" for r in records)
    table = invoke("table", out, "--format", "csv")
    assert table.exit_code == 0 and all(label in table.stdout for label in LABELS)
    _no_temp_files(out)


# --- full disks: RLIMIT_FSIZE ------------------------------------------------------------------------------


@pytest.mark.slow
def test_profile_output_past_the_file_size_limit(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    out.write_text('{"old": true}\n')
    code, _, err = _run("profile", "--variant", "nano", "--mode", "none", "-o", out, "-q", fsize=2000)
    assert code == 2
    assert _error_line(err) == (
        f"error: cannot write {str(out)!r}: file size limit reached (ulimit -f); "
        "raise the limit or write elsewhere"
    )
    assert out.read_text() == '{"old": true}\n'  # the earlier file is intact
    _no_temp_files(tmp_path)


@pytest.mark.slow
def test_ablate_past_the_file_size_limit_keeps_finished_cells(tmp_path: Path) -> None:
    out = tmp_path / "res"
    res = invoke("ablate", GRID, "--output-dir", out, *FAST, "--only", "dual")
    assert res.exit_code == 0, res.output
    before = (out / CELLS_FILE).read_bytes()
    # Room for a few hundred more bytes: the next cell's record (several kB) cannot be appended.
    code, _, err = _run("ablate", GRID, "--output-dir", out, *FAST, "--resume", fsize=len(before) + 300)
    assert code == 2
    assert _error_line(err).startswith(f"error: cannot write {str(out / CELLS_FILE)!r}: file size limit")
    assert (out / CELLS_FILE).read_bytes() == before  # no half-written line, the finished cell kept
    _no_temp_files(out)
    resumed = invoke("ablate", GRID, "--output-dir", out, *FAST, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert sorted(r["label"] for r in _lines(out / CELLS_FILE)) == sorted(LABELS)


@pytest.mark.slow
def test_failed_save_still_writes_the_record(tmp_path: Path) -> None:
    record, weights = tmp_path / "rec.json", tmp_path / "m.pth"
    args = ("finetune", "--variant", "nano", "--steps", "1", "--batch-size", "16", "--train-size", "32")
    # nano's weights are ~0.4 MB; its record is far smaller than the 200 kB allowed.
    code, _, err = _run(
        *args, "--val-size", "16", "--device", "cpu", "--no-progress", "--save", weights, "-o", record,
        fsize=200_000,
    )  # fmt: skip
    assert code == 1
    assert _error_line(err) == (
        f"error: --save: cannot write {str(weights)!r}: file size limit reached (ulimit -f); "
        "raise the limit or write elsewhere"
    )
    written = json.loads(record.read_text())
    assert written["status"] == "failed" and written["reason"].startswith("--save: cannot write")
    assert written["saved_checkpoint"] is None and written["final"]["top1"]["sum"] is not None
    assert not weights.exists()
    _no_temp_files(tmp_path)


# --- damaged and random files ------------------------------------------------------------------------------


def _one_cell(tmp_path: Path) -> Path:
    out = tmp_path / "res"
    res = invoke("ablate", GRID, "--output-dir", out, *FAST, "--only", "dual", "--only", "no-fcu")
    assert res.exit_code == 0, res.output
    return out


def test_a_torn_last_line_is_skipped_and_repaired(tmp_path: Path) -> None:
    """A kill mid-append leaves a line without its end: readers skip it, the next append cuts it off."""
    out = _one_cell(tmp_path)
    whole = (out / CELLS_FILE).read_bytes()
    (out / CELLS_FILE).write_bytes(whole + b'{"schema": "conformer-bench.cell", "lab')
    assert sorted(ResultStore(out).latest()) == ["dual", "no-fcu"]
    table = invoke("table", out, "--format", "csv")
    assert table.exit_code == 0, table.output
    report = invoke("report", "--baseline", out, "--current", out)
    assert report.exit_code == 0, report.output
    resumed = invoke("ablate", GRID, "--output-dir", out, *FAST, "--resume", "--only", "cnn-only")
    assert resumed.exit_code == 0, resumed.output
    assert [r["label"] for r in _lines(out / CELLS_FILE)] == ["dual", "cnn-only", "no-fcu"]


def test_random_bytes_in_the_records_are_one_line_errors(tmp_path: Path) -> None:
    out = _one_cell(tmp_path)
    lines = (out / CELLS_FILE).read_bytes().splitlines(keepends=True)
    damaged = lines[0] + os.urandom(64).replace(b"\n", b"x") + b"\n" + lines[1]
    (out / CELLS_FILE).write_bytes(damaged)
    for command in (
        ("report", "--baseline", out, "--current", out),
        ("table", out),
        ("ablate", GRID, "-o", out, *FAST, "--resume"),
    ):
        res = invoke(*command)
        assert res.exit_code == 2, (command, res.output)
        assert f"{out / CELLS_FILE} line 2 is not valid JSON" in res.output
        assert "delete that line" in res.output
    assert (out / CELLS_FILE).read_bytes() == damaged  # nothing rewritten, both records still there


def test_random_bytes_experiment_file(tmp_path: Path) -> None:
    bad = tmp_path / "random.toml"
    bad.write_bytes(bytes(range(128, 256)) * 8)
    res = invoke("ablate", bad, "--dry-run")
    assert res.exit_code == 2 and "not a text (UTF-8) file" in res.output


# --- runs tied to their experiment --------------------------------------------------------------------------


def test_another_experiment_in_the_folder_is_refused_then_stale(tmp_path: Path) -> None:
    out = _one_cell(tmp_path)
    other = tmp_path / "other.toml"
    other.write_text(
        GRID.read_text().replace('name = "nano_grid"', 'name = "other"').replace("steps = 3", "steps = 4")
    )
    refused = invoke("ablate", other, "-o", out, *FAST, "--only", "cnn-only")
    assert refused.exit_code == 2
    assert f"{out} holds results of experiment 'nano_grid', not 'other'" in refused.output
    assert "--force" in refused.output
    forced = invoke("ablate", other, "-o", out, *FAST, "--only", "cnn-only", "--force")
    assert forced.exit_code == 0, forced.output
    from conformer_bench.report.metrics import ablation_metrics

    metrics = ablation_metrics(out)
    assert set(metrics.crashed) == {"dual/", "no-fcu/"}
    assert all(
        why.startswith("stale: recorded for experiment 'nano_grid'") for why in metrics.crashed.values()
    )
    assert any(name.startswith("cnn-only/") for name in metrics.metrics)
    table = invoke("table", out, "--format", "csv")
    assert table.exit_code == 0 and "left out 2 stale record(s)" in table.output


# --- partial and unsafe checkpoints ------------------------------------------------------------------------


def _finetune(*extra: str) -> Any:
    return invoke(
        "finetune", "--variant", "micro", "--steps", "1", "--batch-size", "16", "--train-size", "32",
        "--val-size", "16", "--device", "cpu", "--no-progress", "--format", "json", *extra,
    )  # fmt: skip


def _one_key_checkpoint(tmp_path: Path) -> Path:
    from conformer.checkpoint import read_state_dict

    state = read_state_dict(FIXTURE)
    path = tmp_path / "one_key.pth"
    first = next(k for k in state if not k.startswith(("conv_cls_head", "trans_cls_head")))
    torch.save({first: state[first]}, path)
    return path


def test_partial_checkpoint_is_an_error(tmp_path: Path) -> None:
    refused = _finetune("--checkpoint", str(_one_key_checkpoint(tmp_path)))
    assert refused.exit_code == 2
    line = _error_line(refused.output)
    assert "only in part outside the heads" in line and "--allow-partial" in line


@pytest.mark.slow
def test_partial_checkpoint_allowed_says_how_many(tmp_path: Path) -> None:
    allowed = _finetune("--checkpoint", str(_one_key_checkpoint(tmp_path)), "--allow-partial")
    assert allowed.exit_code == 0, allowed.output
    record = json.loads(allowed.stdout)["checkpoint"]
    assert record["partial"] and record["loaded_keys"] == 1
    assert record["body_missing"] == record["model_keys"] - 1 - len(record["heads_reset"])
    assert f"{record['body_missing']} key(s) of the variant missing" in allowed.stderr


def test_unsafe_checkpoint_never_advises_weights_only_false(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "note": Path("x")}, unsafe)  # a Path is not a tensor
    res = _finetune("--checkpoint", str(unsafe))
    assert res.exit_code == 2
    assert "refused" in res.output and "weights_only=False" not in res.output


# --- signals and leftovers -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_prints_the_resume_hint(tmp_path: Path) -> None:
    from test_ablate_resume import _start_held, _wait_for

    out, marker = tmp_path / "res", tmp_path / "holding"
    proc = _start_held(out, marker)
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 143, output
    assert "terminated: finished cells are in" in output and "rerun with --resume" in output
    assert [r["label"] for r in _lines(out / CELLS_FILE)] == ["dual"]


def test_cell_folders_of_dead_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{dead.pid}-"))
    (orphan / "spec.json").write_text("{}")
    alive = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    try:
        removed = remove_orphan_cell_folders()
        assert orphan in removed and not orphan.exists()
        assert alive.exists()
    finally:
        alive.rmdir()


# --- inputs that can only be mistakes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "toggles",
    [
        ("--no-fcu", "--fcu-down", "conv"),
        ("--coupling", "up", "--fcu-down", "conv"),
        ("--fcu-stages", "none", "--fcu-up", "deconv"),
        ("--fcu-stages", ""),
    ],
)
def test_toggles_that_change_nothing_are_refused(toggles: tuple[str, ...]) -> None:
    res = invoke("profile", "--variant", "nano", "--mode", "none", *toggles)
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert "changes nothing" in line or "is empty" in line


def test_duplicate_cells_are_refused(tmp_path: Path) -> None:
    grid = tmp_path / "dup.toml"
    grid.write_text(
        GRID.read_text() + '\n[[cells]]\nlabel = "no-fcu-again"\ncoupling = "none"\nfcu_down = "conv"\n'
    )
    res = invoke("ablate", grid, "--dry-run")
    assert res.exit_code == 2
    assert "cell 'no-fcu-again' computes and measures the same as cell 'no-fcu'" in res.output


def test_absurd_sizes_are_refused_before_building() -> None:
    huge = invoke("profile", "--variant", "nano", "--mode", "none", "--num-med-block", "100000")
    assert huge.exit_code == 2 and "200,000 extra bottlenecks" in huge.output and "--force" in huge.output
    costly = invoke("profile", "--variant", "base", "--mode", "none", "--img-size", "8192")
    assert costly.exit_code == 2 and "TMACs per image" in costly.output and "--force" in costly.output
    batch = invoke("profile", "--variant", "nano", "--mode", "infer", "-b", "100000000", "--iters", "1")
    assert batch.exit_code == 2 and "for the input batch alone" in batch.output


def test_large_dry_run_lists_every_cell(tmp_path: Path) -> None:
    grid = tmp_path / "wide.toml"
    grid.write_text(
        GRID.read_text().replace("num_med_block = [0, 1]", "drop_path_rate = [" + ", ".join(
            f"{i / 1000:.3f}" for i in range(250)) + "]")
    )  # fmt: skip
    res = invoke("ablate", grid, "--dry-run")  # counted in closed form: no cap on the listing
    assert res.exit_code == 0 and res.output.startswith("nano_grid (dry run, 252 cells")
    limited = invoke("ablate", grid, "--dry-run", "--limit", "3")
    assert limited.exit_code == 0 and "first 3 of 252 cells" in limited.output


def test_one_class_folder_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(4):
        (tmp_path / "data" / "train" / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "data" / "train" / "cat" / f"{i}.png")
    res = _finetune("--dataset", str(tmp_path / "data"))
    assert res.exit_code == 2
    assert "holds one class (cat)" in _error_line(res.output)


def test_decompression_bomb_image_is_skipped_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from conformer_bench.data import load_dataset

    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "train" / cls / f"{i}.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "train" / "a" / "huge.png")
    # Pillow refuses images over twice this many pixels: 64 x 64 stands in for a 400 MP image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bundle = load_dataset(str(tmp_path), 32, 0)
    skipped = bundle.description.skipped_examples
    assert bundle.description.skipped_files == 1 and skipped is not None
    assert skipped[0].path.endswith("huge.png") and "DecompressionBombError" in skipped[0].reason
    assert bundle.train_size + bundle.val_size == 10


def test_non_finite_checkpoint_is_refused_without_lr_advice(tmp_path: Path) -> None:
    from conformer.checkpoint import read_state_dict

    state = read_state_dict(FIXTURE)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    broken = tmp_path / "nan.pth"
    torch.save(state, broken)
    res = _finetune("--checkpoint", str(broken))
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert "holds non-finite weights" in line and "--lr" not in line


def test_nan_summary_names_the_step_it_stopped_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conformer_bench import finetune as ft

    monkeypatch.setattr(ft, "heads_loss", lambda out, y, s: out.logits.sum() * float("inf"))
    res = invoke(
        "finetune", "--variant", "nano", "--epochs", "2", "--batch-size", "16", "--train-size", "32",
        "--val-size", "16", "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert res.exit_code == 1
    step = re.search(r"at or before step (\d+) of \d+ \(epoch 1\)", res.output)
    assert step, res.output
    assert f"(stopped at step {step.group(1)}; 2 epoch(s) were planned)" in res.output
    assert "after 2 epoch(s)" not in res.output
