"""The CI accuracy rule on real fine-tunes: another kernel set passes, an injected regression fails.

Another vendor's CPU makes the libraries dispatch other kernels, whose last bits send a short fine-tune down
another trajectory. The same happens on one machine when ATen, oneDNN and oneMKL are told to use a narrower
instruction set, so the baseline here is measured under that kernel set and the current run under the
native one. Each run is a real `ablate` of micro on digits (4 seeds of 40 steps).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "tests" / "fixtures" / "experiments" / "drift.toml"
REGRESSED_CLI = ROOT / "tests" / "fixtures" / "regressed_cli.py"

pytestmark = pytest.mark.slow


def other_kernel_set() -> dict[str, str]:
    """Environment variables selecting a narrower kernel set than this CPU's own."""
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        return {
            "ATEN_CPU_CAPABILITY": "default",
            "ONEDNN_MAX_CPU_ISA": "SSE41",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        }
    return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def ablate(out: Path, *, kernels: dict[str, str] | None = None, inject: str | None = None) -> Path:
    """A real `ablate` of the drift grid; ``kernels`` None: this process's own kernel set."""
    env = {**os.environ, **(kernels or {}), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "conformer_bench"]
    if inject is not None:
        command = [sys.executable, str(REGRESSED_CLI)]
        env["INJECT"] = inject
    result = subprocess.run(
        [*command, "ablate", str(EXPERIMENT), "--output-dir", str(out), "--no-isolate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def report(baseline: Path, current: Path) -> tuple[int, str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "conformer_bench",
            "report",
            "--baseline",
            str(baseline),
            "--current",
            str(current),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, result.stdout


def capability(folder: Path) -> str:
    cells = [json.loads(line) for line in (folder / "cells.jsonl").read_text().splitlines()]
    return cells[0]["finetune"][0]["environment"]["cpu_capability"]


@pytest.fixture(scope="module")
def other_kernels_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = ablate(tmp_path_factory.mktemp("drift") / "baseline", kernels=other_kernel_set())
    assert capability(out) == other_kernel_set()["ATEN_CPU_CAPABILITY"].upper()
    return out


def test_other_kernel_set_baseline_and_native_run_pass(other_kernels_baseline: Path, tmp_path: Path) -> None:
    current = ablate(tmp_path / "native")
    assert capability(current) == torch.backends.cpu.get_cpu_capability()
    baseline_seeds = json.loads((other_kernels_baseline / "cells.jsonl").read_text().splitlines()[0])[
        "finetune"
    ]
    current_seeds = json.loads((current / "cells.jsonl").read_text().splitlines()[0])["finetune"]
    moved = [
        b["final"]["top1"]["sum"] != c["final"]["top1"]["sum"]
        for b, c in zip(baseline_seeds, current_seeds, strict=True)
    ]
    assert any(moved), "the other kernel set changed no seed's accuracy: the drift this test guards is absent"
    code, text = report(other_kernels_baseline, current)
    assert code == 0, text


@pytest.mark.parametrize("kernels", ["native", "other"])
def test_injected_regression_fails(other_kernels_baseline: Path, tmp_path: Path, kernels: str) -> None:
    """A tenth of the learning rate at every step, config unchanged: the accuracy rows fail, not a config change."""
    current = ablate(
        tmp_path / "regressed", kernels=other_kernel_set() if kernels == "other" else None, inject="lr"
    )
    code, text = report(other_kernels_baseline, current)
    assert code == 1, text
    failing = [line for line in text.splitlines() if line.startswith("| **FAIL**")]
    assert any("finetune.top1.sum" in line for line in failing), text
    assert "**CHANGED**" not in text
