"""The GPU check: its no-CUDA exit, and every check judged on fixture records (a passing set, and failures)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from conformer_bench.energy import COUNTER_METHOD, gpu_energy
from conformer_bench.env import fingerprint
from conformer_bench.errors import BenchError
from conformer_bench.gpu_check import checks
from conformer_bench.gpu_check.checks import Results, load_results, run_checks
from conformer_bench.gpu_check.main import main
from conformer_bench.gpu_check.plan import ProfilePoint, rehearsal_plan
from conformer_bench.gpu_check.run import Runner, ceiling_shares, measure_ceilings
from conformer_bench.gpu_check.summary import render_summary
from conformer_bench.readers import records_in_file
from conformer_bench.records import (
    FINETUNE_SCHEMA,
    PROFILE_SCHEMA,
    SPEED_SCHEMA,
    FinetuneRecord,
    ProfileRecord,
    SchemaRecord,
    SpeedRecord,
    Status,
)
from conformer_bench.records.gpu_check import (
    CEILINGS_SCHEMA,
    LOGITS_SCHEMA,
    SHARES_SCHEMA,
    CeilingsRecord,
    CheckEnvironment,
    CheckResult,
    GpuCheckRecord,
    LogitsRecord,
    SharesRecord,
    StepsLog,
)
from conformer_bench.speed import SpeedSettings

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


# --- fixture records: what a healthy run on one GPU writes (only the fields the checks read) -----------------

Raw = dict[str, Any]  # the folder's files as JSON: Results' attribute name -> record(s)


def _profile(point: ProfilePoint, *, requested: int | None = None, compiled: bool = False) -> dict[str, Any]:
    b = point.batch_size
    phases = ("infer", "train") if point.mode == "both" else (point.mode,)
    scale = {"infer": 10, "train": 60}
    memory = {
        ph: {
            "peak_allocated_bytes": scale[ph] * b * MIB + MIB,
            "peak_reserved_bytes": (scale[ph] * b + 8) * MIB,
            "allocated_before_bytes": 0,
            "nvml_used_bytes": (scale[ph] * b + 600) * MIB,
            "nvml_total_bytes": 80 * 1024 * MIB,
        }
        for ph in phases
    }
    throughput = {
        ph: {
            "timer": "cuda_event",
            "batch_size": b,
            "requested_batch_size": requested or b,
            "img_per_s": 100.0 * b,
            "iters": 10,
            "energy": {"method": COUNTER_METHOD, "joules": 0.5 * b, "seconds": 0.4},
            "img_per_j": 20.0,
            **({"last_loss": 2.3} if ph == "train" else {}),
            "path": point.path,
            "precision": point.precision,
        }
        for ph in phases
    }
    return {
        "schema": PROFILE_SCHEMA,
        "schema_version": 1,
        "status": "ok",
        "reason": None,
        "label": point.name,
        "variant": {"name": point.variant, "label": point.name},
        "settings": {
            "precision": point.precision,
            "path": point.path,
            "batch_size": requested or b,
            "optimizer": "AdamW(lr=1e-3, weight_decay=0.05, fused)" if "train" in phases else None,
        },
        "environment": {"device": "cuda", "batch_size": b},
        "memory": {"device": "cuda", "method": "torch.cuda peak stats", **memory},
        "throughput": throughput,
        "compile_s": {"infer": 30.0} if compiled else None,
        "flops": {"paper_macs": 5_226_000_000},
    }


MATRIX = tuple(
    ProfilePoint("tiny", b, p, path, "both" if path == "plain" else "infer", 224)
    for p in ("fp32", "fp16")
    for b in (1, 32)
    for path in ("plain", "optimized")
)
COMPILED = ProfilePoint("tiny", 32, "bf16", "compiled", "infer", 224)
OOM = ProfilePoint("base", 4096, "bf16", "plain", "train", 224)
CELL_LABELS = ("micro", "cnn-only", "no-fcu", "couple-down-only")


def _step(name: str, exit_code: int | None = None, detail: str = "") -> dict[str, Any]:
    return {"name": name, "status": "ok", "elapsed_s": 10.0, "exit_code": exit_code, "detail": detail}


def _cell(label: str, status: str = "ok", finished: float = 1.0, device: str = "cuda") -> dict[str, Any]:
    return {
        "schema": "conformer-bench.cell",
        "schema_version": 1,
        "label": label,
        "status": status,
        "profile": {
            "schema": "conformer-bench.profile",
            "schema_version": 1,
            "environment": {"device": device},
        },
        "finished": finished,
    }


def _speed(paths: dict[str, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """A version-3 speed record with the fields the checks read."""
    return {"schema": SPEED_SCHEMA, "schema_version": 3, "status": "ok", "settings": settings, "paths": paths}


def passing_raw() -> Raw:
    profiles = {p.name: _profile(p) for p in MATRIX}
    profiles[COMPILED.name] = _profile(COMPILED, compiled=True)
    profiles[OOM.name] = _profile(ProfilePoint("base", 256, "bf16", "plain", "train", 224), requested=4096)
    profiles[OOM.name]["label"] = OOM.name
    comparisons = {
        "optimized_vs_plain_fp32": {"what": "fp32", "max_rel_diff": 1e-6},
        "bf16_vs_fp32": {"what": "bf16", "max_rel_diff": 8e-3},
        "fp16_vs_fp32": {"what": "fp16", "max_rel_diff": 1e-3},
        "sdpa_fused_bf16": {"what": "sdpa", "max_rel_diff": 0.0, "sdpa_calls": 12},
        "sdpa_fused_fp32": {"what": "sdpa", "max_rel_diff": 0.0, "sdpa_calls": 12},
    }
    speed_paths = {  # as run_speed writes them: every path in bf16, compared with plain fp32
        f"{path}-bf16": {
            "path": path,
            "precision": "bf16",
            "status": "ok",
            "reason": None,
            "max_rel_diff_vs_plain": 8e-3,
            "first_call_s": 1.0,
            "compile_s": 20.0 if path == "compiled" else None,
        }
        for path in ("plain", "optimized", "compiled")
    }
    names = ("ceilings", "logits", "profile-matrix", "profile-compiled", "speed", "profile-oom")
    steps = {n: _step(n) for n in names} | {
        n: _step(n, 0) for n in ("finetune", "ablate", "report", "torchrun")
    }
    ceilings = {
        k: {"precision": k, "gflop_s": v, "matmul_size": 8192}
        for k, v in {"fp32": 5e4, "tf32": 4e5, "bf16": 7e5, "fp16": 7e5}.items()
    }
    return {
        "environment": {
            "device": "cuda",
            "device_name": "NVIDIA H100 80GB HBM3",
            "plan": {"matrix": [p.name for p in MATRIX], "compiled": COMPILED.name, "oom": OOM.name},
        },
        "steps": steps,
        "ceilings": {"schema": CEILINGS_SCHEMA, "schema_version": 1, "ceilings": ceilings},
        "logits": {"schema": LOGITS_SCHEMA, "schema_version": 1, "comparisons": comparisons},
        "profiles": profiles,
        "speed": _speed(speed_paths, {"device": "cuda", "precisions": ["bf16"]}),
        "shares": {
            "schema": SHARES_SCHEMA,
            "schema_version": 1,
            "variant": "base",
            "batch_size": 128,
            "shares": {"compiled-bf16": {"bf16": 0.45}, "compiled": {"fp32": 0.8, "tf32": 0.1}},
        },
        "finetune": {
            "schema": FINETUNE_SCHEMA,
            "schema_version": 1,
            "status": "ok",
            "final": {"top1": {"sum": 97.5}},
            "environment": {"device": "cuda"},
            "hyper": {"optimizer": {"impl": "fused"}},
        },
        "torchrun": {
            "schema": FINETUNE_SCHEMA,
            "schema_version": 1,
            "status": "ok",
            "environment": {"dist_backend": "nccl", "world_size": 2},
        },
        "cells": [_cell(label) for label in CELL_LABELS],
    }


FILES = {  # Results attribute -> file of the folder
    "environment": "environment.json",
    "ceilings": "ceilings.json",
    "logits": "logits.json",
    "speed": "speed.json",
    "shares": "shares.json",
    "finetune": "finetune.json",
    "torchrun": "torchrun-finetune.json",
}


def _write_folder(raw: Raw, folder: Path) -> Path:
    (folder / "profile").mkdir(parents=True, exist_ok=True)
    (folder / "ablate").mkdir(exist_ok=True)
    for attr, name in FILES.items():
        if raw[attr] is not None:
            (folder / name).write_text(json.dumps(raw[attr]))
    steps = {"steps": list(raw["steps"].values()), "elapsed_s": 100.0}
    (folder / "steps.json").write_text(json.dumps(steps))
    for name, record in raw["profiles"].items():
        (folder / "profile" / f"{name}.json").write_text(json.dumps(record))
    (folder / "ablate" / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in raw["cells"]))
    return folder


def _load(raw: Raw, folder: Path) -> Results:
    """The typed results of ``raw``, written as a check would write them and read back by the check."""
    return load_results(_write_folder(raw, folder))


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {c.name: c for c in results}


def test_every_check_passes_on_a_healthy_gpu_run(tmp_path: Path) -> None:
    results = run_checks(_load(passing_raw(), tmp_path))
    assert [c for c in results if c.status != "PASS"] == []
    assert len(results) == len(checks.CHECKS)


def test_results_hold_typed_records(tmp_path: Path) -> None:
    results = _load(passing_raw(), tmp_path)
    assert isinstance(results.environment, CheckEnvironment) and results.environment.plan is not None
    assert all(isinstance(p, ProfileRecord) for p in results.profiles.values())
    assert isinstance(results.speed, SpeedRecord) and results.speed.paths["compiled-bf16"].compile_s == 20.0
    assert isinstance(results.logits, LogitsRecord) and isinstance(results.ceilings, CeilingsRecord)
    assert isinstance(results.shares, SharesRecord) and isinstance(results.finetune, FinetuneRecord)
    assert results.steps["ablate"].status == Status.OK and results.steps["ablate"].exit_code == 0
    assert [c.label for c in results.cells] == list(CELL_LABELS)


def _set(path: str, value: Any) -> Callable[[Raw], None]:
    """A mutation setting ``a.b.c`` (record, then keys) of the raw results."""

    def mutate(raw: Raw) -> None:
        head, *keys = path.split(".")
        target = raw[head]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


FIRST = MATRIX[0].name  # tiny-fp32-b1-plain


def _shrink_memory(raw: Raw) -> None:
    raw["profiles"]["tiny-fp32-b32-plain"]["memory"]["train"]["peak_allocated_bytes"] = MIB


def _drop_point(raw: Raw) -> None:
    del raw["profiles"][MATRIX[-1].name]


def _nan_fp16(raw: Raw) -> None:
    raw["profiles"]["tiny-fp16-b32-plain"]["status"] = "nan"


def _three_cells(raw: Raw) -> None:
    raw["cells"].pop()


def _cell_on_cpu(raw: Raw) -> None:
    raw["cells"][1] = _cell("cnn-only", device="cpu")


FAILURES: dict[str, tuple[Callable[[Raw], None], str]] = {
    "timer": (_set(f"profiles.{FIRST}.throughput.infer.timer", "perf_counter"), "timer is CUDA events"),
    "reserved-over-nvml": (
        _set(f"profiles.{FIRST}.memory.infer.nvml_used_bytes", MIB),
        "0 < peak allocated <= peak reserved <= NVML used",
    ),
    "no-nvml": (
        _set(f"profiles.{FIRST}.memory.train.nvml_used_bytes", None),
        "0 < peak allocated <= peak reserved <= NVML used",
    ),
    "memory-shrinks": (_shrink_memory, "peak allocated grows with batch"),
    "bf16": (_set("logits.comparisons.bf16_vs_fp32.max_rel_diff", 0.2), "bf16 logits vs fp32"),
    "fp16": (_set("logits.comparisons.fp16_vs_fp32.max_rel_diff", 0.05), "fp16 logits vs fp32"),
    "fp16-overflow": (_set("logits.comparisons.fp16_vs_fp32.max_rel_diff", None), "fp16 logits vs fp32"),
    "optimized": (
        _set("logits.comparisons.optimized_vs_plain_fp32.max_rel_diff", 1e-3),
        "optimized logits vs plain (fp32, TF32 off)",
    ),
    "sdpa-error": (
        _set("logits.comparisons.sdpa_fused_fp32.error", "RuntimeError: No available kernel"),
        "SDPA fused kernels (flash / memory-efficient only) on the optimized path",
    ),
    "compiled-diff": (
        _set("speed.paths.compiled-bf16.max_rel_diff_vs_plain", 0.3),
        "optimized / compiled logits vs plain (speed run)",
    ),
    "compiled-failed": (_set("speed.paths.compiled-bf16.status", "failed"), "torch.compile path runs"),
    "plain-bf16-diff": (
        _set("speed.paths.plain-bf16.max_rel_diff_vs_plain", 0.3),
        "optimized / compiled logits vs plain (speed run)",
    ),
    "matrix": (_drop_point, "profile matrix complete"),
    "oom-not-provoked": (
        _set(f"profiles.{OOM.name}.throughput.train.requested_batch_size", 256),
        "OOM back-off records requested vs achieved batch",
    ),
    "energy": (
        _set(f"profiles.{FIRST}.throughput.infer.energy", {"error": "NVMLError_Unknown"}),
        "NVML energy of the timed loops -> images per joule",
    ),
    "adamw": (_set("finetune.hyper.optimizer.impl", "foreach"), "fused AdamW in training"),
    "grad-scaler": (_nan_fp16, "fp16 training with a grad scaler stays finite"),
    "accuracy": (_set("finetune.final.top1.sum", 90.0), "finetune micro on cuda >= 95 % top-1"),
    "ablate": (_three_cells, "4-cell ablate"),
    "ablate-device": (_cell_on_cpu, "4-cell ablate"),
    "report": (_set("steps.report.exit_code", 1), "report of the grid against itself exits 0"),
    "torchrun": (
        _set("torchrun.environment.dist_backend", "gloo"),
        "finetune under torchrun (DDP over nccl)",
    ),
    "wall-clock": (_set("steps.speed.elapsed_s", 500.0), "whole check within 300 s"),
    "shares-low": (
        _set("shares.shares.compiled-bf16.bf16", 0.31),
        "compiled bf16 >= 40 % of the bf16 matmul ceiling (max-autotune, CUDA graphs)",
    ),
    "shares-missing": (
        _set("shares.shares", {"plain-bf16": {"bf16": 0.2}}),
        "compiled bf16 >= 40 % of the bf16 matmul ceiling (max-autotune, CUDA graphs)",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_each_check_fails_on_its_broken_record(case: str, tmp_path: Path) -> None:
    mutate, check_name = FAILURES[case]
    raw = passing_raw()
    mutate(raw)
    by_name = _by_name(run_checks(_load(raw, tmp_path)))
    assert by_name[check_name].status == "FAIL", by_name[check_name]
    also = {
        "compiled-failed": {"optimized / compiled logits vs plain (speed run)"},
        "grad-scaler": {"profile matrix complete"},
    }
    failed = {c.name for c in by_name.values() if c.status == "FAIL"}
    assert failed - {check_name} <= also.get(case, set())


def test_energy_not_supported_is_a_skip_and_cpu_skips_the_cuda_checks(tmp_path: Path) -> None:
    raw = passing_raw()
    for record in raw["profiles"].values():
        for timing in record["throughput"].values():
            timing.update(energy={"error": "NVMLError_NotSupported: Not Supported"}, img_per_j=None)
    results = _load(raw, tmp_path / "unsupported")
    assert (
        _by_name(run_checks(results))["NVML energy of the timed loops -> images per joule"].status == "SKIP"
    )

    cpu = passing_raw()
    cpu["environment"]["device"] = "cpu"
    skipped = {c.name for c in run_checks(_load(cpu, tmp_path / "cpu")) if c.status == "SKIP"}
    assert "timer is CUDA events" in skipped and "OOM back-off records requested vs achieved batch" in skipped


def test_cells_are_read_through_the_ablate_store(tmp_path: Path) -> None:
    """A torn last line (a killed writer), a shard file of an earlier version and a label written twice:
    no traceback, the newest record of each label (by ``finished``) wins wherever it was written."""
    raw = passing_raw()
    raw["cells"] = [
        _cell("micro", status="failed", finished=5.0),
        _cell("cnn-only"),
        _cell("no-fcu", finished=1.0),
    ]
    _write_folder(raw, tmp_path)
    ablate = tmp_path / "ablate"
    with (ablate / "cells.jsonl").open("a") as f:
        f.write(json.dumps(_cell("couple-down-only"))[:40])  # torn: no newline, not a whole record
    shard = [_cell("micro", finished=9.0), _cell("no-fcu", status="failed", finished=0.5)]
    (ablate / "cells.shard-1-of-2.jsonl").write_text("".join(json.dumps(c) + "\n" for c in shard))

    results = load_results(tmp_path)
    by_label = {c.label: c for c in results.cells}
    assert sorted(by_label) == ["cnn-only", "micro", "no-fcu"]
    assert by_label["micro"].status == "ok"  # the shard's newer record beats the older line
    assert by_label["no-fcu"].status == "ok"  # the shard's older record loses
    check = _by_name(run_checks(results))["4-cell ablate"]
    assert check.status == "FAIL" and check.detail == "3 cells recorded"


def test_a_damaged_record_file_is_one_line_naming_it(tmp_path: Path) -> None:
    _write_folder(passing_raw(), tmp_path)
    (tmp_path / "logits.json").write_text('{"schema": "conformer-bench.gpu-check.logits", ')
    with pytest.raises(BenchError, match=r"logits\.json is not valid JSON"):
        load_results(tmp_path)
    (tmp_path / "logits.json").write_text(json.dumps(passing_raw()["ceilings"]))
    with pytest.raises(BenchError, match=r"holds conformer-bench\.gpu-check\.ceilings, not one"):
        load_results(tmp_path)


def test_checks_only_rereads_a_folder_and_writes_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = passing_raw()
    raw["speed"] = None  # the summary renders without a speed record; that check then fails
    raw["logits"]["comparisons"]["bf16_vs_fp32"]["what"] = "plain | bf16"
    loaded = _load(raw, tmp_path)
    assert loaded.profiles.keys() == raw["profiles"].keys() and len(loaded.cells) == 4

    assert main(["--checks-only", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  optimized / compiled logits vs plain (speed run): no speed record" in out
    assert "18 PASS, 2 FAIL, 0 SKIP; records in" in out
    summary = (tmp_path / "summary.md").read_text()
    # tiny infer at batch 32: 3200 img/s x 2 x 5.226 GMACs = 33.4 TFLOP/s; 33.45 / 50 (fp32 ceiling) = 66.9 %
    assert "| tiny | plain | fp32 | infer | 32 | 3,200.0 | 33.45 | 66.9 | 321 | 328 | 20.0 |" in summary
    assert "| throughput (img/s) | achieved (TFLOP/s) | of matmul ceiling (%) |" in summary
    assert "256 (of 4096 requested)" in summary
    assert "(tolerance 5e-02; plain \\| bf16) |" in summary  # a cell's | is escaped
    saved = GpuCheckRecord.from_dict(json.loads((tmp_path / "checks.json").read_text()))
    assert saved.counts["FAIL"] == 2  # the speed-path check and the compile check both read speed.json
    assert saved.to_dict() == json.loads((tmp_path / "checks.json").read_text())


def test_summary_renders_a_row_per_phase(tmp_path: Path) -> None:
    raw = passing_raw()
    raw["speed"] = None  # a full speed record is rendered by speed.render (tested with it)
    results = _load(raw, tmp_path)
    text = render_summary(results, run_checks(results))
    phases = sum(len(r["throughput"]) for r in raw["profiles"].values())
    assert text.count("| tiny |") + text.count("| base |") == phases
    steps = text.split("## Steps")[1]
    assert "| step | status | elapsed (s) | detail |" in steps and "| ablate | ok | 10.0 |  |" in steps


def test_check_records_give_the_csv_table(tmp_path: Path) -> None:
    import conformer_bench

    results = _load(passing_raw(), tmp_path)
    record = checks.checks_record(run_checks(results))
    frame = conformer_bench.to_frame([record])
    assert list(frame.columns) == ["status", "check", "detail"] and len(frame) == len(checks.CHECKS)
    assert set(frame["status"]) == {"PASS"}


def test_without_cuda_the_script_exits_2_with_one_line() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONPATH", None)  # the script finds the source tree itself
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU is visible"), proc.stderr
    assert "TORCH_SPEC" in lines[0]


def test_bad_budget_and_folder_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--checks-only", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["--rehearse-on-cpu", "--budget-s", "5"]) == 2
    assert "--budget-s 5 is too short" in capsys.readouterr().err


# --- NVML energy with a fake NVML -------------------------------------------------------------------------


class _NVMLError(Exception):
    pass


def _fake_nvml(monkeypatch: pytest.MonkeyPatch, *, counter: bool) -> types.SimpleNamespace:
    state = types.SimpleNamespace(energy_mj=1_000_000, shutdown=0)

    def total_energy(handle: object) -> int:
        if not counter:
            raise _NVMLError("Not Supported")
        state.energy_mj += 2_500  # 2.5 J between two readings
        return state.energy_mj

    fake = types.SimpleNamespace(
        NVMLError=_NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: setattr(state, "shutdown", state.shutdown + 1),
        nvmlDeviceGetHandleByUUID=lambda uuid: "handle",
        nvmlDeviceGetHandleByIndex=lambda index: "handle",
        nvmlDeviceGetTotalEnergyConsumption=total_energy,
        nvmlDeviceGetPowerUsage=lambda handle: 300_000,  # 300 W
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="abc"))
    return state


def test_energy_from_the_nvml_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _fake_nvml(monkeypatch, counter=True)
    with gpu_energy("cuda") as energy:
        pass
    assert energy.joules == pytest.approx(2.5) and energy.method == COUNTER_METHOD
    assert list(energy.to_dict()) == ["method", "joules", "seconds", "mean_power_w"]
    assert state.shutdown == 1


def test_energy_falls_back_to_power_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    _fake_nvml(monkeypatch, counter=False)
    with gpu_energy("cuda", interval_s=0.005) as energy:
        time.sleep(0.05)
    assert energy.mean_power_w == pytest.approx(300.0)  # constant power: the trapezoid integral is exact
    assert energy.sampled_s is not None and energy.samples is not None and energy.counter_error is not None
    assert energy.joules == pytest.approx(300.0 * energy.sampled_s) and energy.samples >= 2
    assert energy.error is None and "Not Supported" in energy.counter_error


def test_speed_precision_and_ceilings_are_validated() -> None:
    with pytest.raises(BenchError, match="ceiling fp16 is CUDA-only"):
        SpeedSettings(device="cpu", ceilings=("fp16",)).validate(16)
    with pytest.raises(BenchError, match="ceiling tf32 is CUDA-only"):
        SpeedSettings(device="cpu", ceilings=("tf32",)).validate(16)
    with pytest.raises(BenchError, match="ceiling 'int8' is not valid"):
        SpeedSettings(device="cpu", ceilings=("int8",)).validate(16)
    with pytest.raises(BenchError, match="'fp16' is not a precision"):
        SpeedSettings(device="cuda", precisions=("fp16",)).validate(16)
    SpeedSettings(device="cpu", precisions=("bf16",), ceilings=("fp32",)).validate(16)
    SpeedSettings(device="cuda", precisions=("bf16",), ceilings=("tf32", "fp16")).validate(16)


def _schema1_speed(compiled_diff: float = 7e-3, compiled_status: str = "ok") -> dict[str, Any]:
    """A speed record of a run before per-run precisions (schema 1, as the first committed H100 records hold),
    as it reads at version 3: every path in one autocast precision, compared with plain in it."""
    diffs = {"plain": 0.0, "optimized": 6e-3, "compiled": compiled_diff}
    paths = {
        path: {
            "path": path,
            "precision": "bf16",
            "status": compiled_status if path == "compiled" else "ok",
            "reason": None,
            "max_rel_diff_vs_plain": diff,
            "first_call_s": 1.0,
            "compile_s": 20.0 if path == "compiled" else None,
        }
        for path, diff in diffs.items()
    }
    return _speed(paths, {"precision": "bf16"})


def test_speed_checks_read_schema_1_records(tmp_path: Path) -> None:
    def judged(speed: dict[str, Any], name: str) -> CheckResult:
        raw = passing_raw()
        raw["speed"] = speed
        folder = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
        return _by_name(run_checks(_load(raw, folder)))[name]

    speed_check = judged(_schema1_speed(), "optimized / compiled logits vs plain (speed run)")
    assert speed_check.status == "PASS" and "optimized 6.0e-03, compiled 7.0e-03" in speed_check.detail
    assert speed_check.detail.endswith("(vs plain in the same precision)")
    assert judged(_schema1_speed(), "torch.compile path runs").status == "PASS"
    bad = judged(_schema1_speed(compiled_diff=0.3), "optimized / compiled logits vs plain (speed run)")
    assert bad.status == "FAIL"
    failed = judged(_schema1_speed(compiled_status="failed"), "torch.compile path runs")
    assert failed.status == "FAIL"


def test_a_missing_module_stops_the_check_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conformer_bench.gpu_check import main as main_module

    monkeypatch.setattr(main_module, "REQUIRED_MODULES", ("no_such_module_for_the_gpu_check",))
    assert main(["--rehearse-on-cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot import no_such_module_for_the_gpu_check")


def test_ceiling_shares_per_precision_and_tf32() -> None:
    record = SpeedRecord.from_dict(
        {
            "schema": SPEED_SCHEMA,
            "schema_version": 3,
            "ceilings": {"fp32": {"gflop_s": 50.0}, "tf32": {"gflop_s": 400.0}, "bf16": {"gflop_s": 800.0}},
            "paths": {
                "compiled": {"precision": "fp32", "status": "ok", "achieved_gflop_s": 40.0},
                "compiled-bf16": {"precision": "bf16", "status": "ok", "achieved_gflop_s": 360.0},
                "plain-bf16": {"precision": "bf16", "achieved_gflop_s": None, "status": "failed"},
            },
        }
    )
    assert ceiling_shares(record) == {
        "compiled": {"fp32": 0.8, "tf32": 0.1},
        "compiled-bf16": {"bf16": 0.45},
    }


# --- the committed H100 folder ------------------------------------------------------------------------------

GPU_RESULTS = ROOT / "results" / "gpu"
PLAIN_FILES = {"environment.json": CheckEnvironment, "steps.json": StepsLog}


def _committed_files() -> list[Path]:
    return sorted(p for p in GPU_RESULTS.rglob("*.json") if "ablate" not in p.relative_to(GPU_RESULTS).parts)


def _speed_migrations_present() -> bool:
    return all(v in SpeedRecord.MIGRATIONS for v in range(1, SpeedRecord.VERSION))


@pytest.mark.parametrize(
    "path", _committed_files(), ids=[str(p.relative_to(GPU_RESULTS)) for p in _committed_files()]
)
def test_committed_gpu_records_read_back_typed(path: Path) -> None:
    data = json.loads(path.read_text())
    if path.name in PLAIN_FILES:
        typed = PLAIN_FILES[path.name].from_dict(data)
    elif data.get("schema") == "conformer-bench.report":
        pytest.skip("report records are read by the report command")
    else:
        if (
            data.get("schema") == SPEED_SCHEMA
            and data["schema_version"] < 3
            and not _speed_migrations_present()
        ):
            pytest.skip("speed records before version 3 read once the speed migrations are in")
        (typed,) = records_in_file(path)
        expected = {
            "ceilings.json": CeilingsRecord,
            "logits.json": LogitsRecord,
            "checks.json": GpuCheckRecord,
        }
        assert isinstance(typed, expected.get(path.name, SchemaRecord))
        if data["schema_version"] != typed.VERSION:  # migrated on read: it reads, and writes the new version
            assert typed.to_dict()["schema_version"] == typed.VERSION
            return
    assert json.dumps(typed.to_dict()) == json.dumps(data)  # same keys, order and values


def test_committed_gpu_folder_is_judged_again() -> None:
    if not _speed_migrations_present():
        pytest.skip("the committed speed.json (version 2) reads once the speed migrations are in")
    (folder,) = sorted(p for p in GPU_RESULTS.iterdir() if p.is_dir())
    results = load_results(folder)
    assert len(results.profiles) == 38 and len(results.cells) == 4
    then = {
        c.name: c.status
        for c in GpuCheckRecord.from_dict(json.loads((folder / "checks.json").read_text())).checks
    }
    now = {c.name: c.status for c in run_checks(results)}
    assert {name: now[name] for name in then} == then


# --- what the check writes ----------------------------------------------------------------------------------


def test_runner_and_ceilings_write_typed_records(tmp_path: Path) -> None:
    plan = dataclasses.replace(rehearsal_plan(), ceiling_size=64, ceiling_reps=2)
    runner = Runner(plan, tmp_path)
    runner.step("fine", 0, lambda: "done")
    runner.step("cli", 0, lambda: ("exit 1: boom", 1))
    runner.step("raises", 0, lambda: str(1 / 0))
    runner.step("late", 1e9, lambda: "never")
    log = StepsLog.from_dict(json.loads((tmp_path / "steps.json").read_text()))
    assert [(s.name, s.status, s.exit_code) for s in log.steps] == [
        ("fine", Status.OK, None),
        ("cli", Status.FAILED, 1),
        ("raises", Status.FAILED, None),
        ("late", Status.SKIPPED, None),
    ]
    assert log.steps[2].detail.startswith("ZeroDivisionError")

    env = CheckEnvironment.of(fingerprint("cpu", "fp32"), plan.summary(), plan.rehearsal)
    written = env.to_dict()
    assert list(written)[-2:] == ["plan", "rehearsal"] and written["device"] == "cpu"
    assert written["plan"]["matrix"] == [p.name for p in plan.matrix]
    assert written["plan"]["compiled"] == plan.compiled.name and written["plan"]["oom"] is None
    assert CheckEnvironment.from_dict(json.loads(json.dumps(written))).to_dict() == written

    record = measure_ceilings(plan)
    assert set(record.ceilings) == {"fp32", "bf16"} and record.ceilings["fp32"].gflop_s > 0
    path = tmp_path / "ceilings.json"
    path.write_text(json.dumps(record.to_dict()))
    (back,) = records_in_file(path)
    assert isinstance(back, CeilingsRecord) and back.ceilings["bf16"].matmul_size == 64
