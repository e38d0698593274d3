"""`conformer-bench report` on constructed records: each required behaviour, exit codes and a Markdown snapshot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import conformer_bench
from conformer_bench.cli import app
from conformer_bench.records import (
    FinetuneRecord,
    ProfileRecord,
    ReportRecord,
    ReportRow,
    SchemaRecord,
    Status,
)
from conformer_bench.report import compare, load_metrics, load_thresholds, render_json, render_markdown
from conformer_bench.report.compare import Comparison, Row
from conformer_bench.report.metrics import Metric, MetricSet, cell_metrics, cell_view, config_digest

SNAPSHOTS = Path(__file__).parent / "snapshots"
runner = CliRunner()


# --------------------------------------------------------------------------- record factories


def environment(**overrides: Any) -> dict[str, Any]:
    env = {
        "device": "cpu",
        "device_name": "Test CPU 2.0GHz",
        "cpu_model": "Test CPU 2.0GHz",
        "threads": 2,
        "torch": "2.13.0",
        "cuda": None,
        "precision": "fp32",
        "batch_size": 8,
        "img_size": 64,
        "tool_version": "0.1.0",
        "commit": "abc123def456",
        "created": "2026-01-01T00:00:00+00:00",
    }
    env.update(overrides)
    return env


def timing(
    median_s: float, *, n: int = 25, spread: float = 0.02, batch: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Per-iteration seconds around ``median_s``, uniformly within +-spread."""
    rng = np.random.default_rng(seed)
    samples = (median_s * (1.0 + rng.uniform(-spread, spread, n))).tolist()
    median = float(np.median(samples))
    return {
        "img_per_s": batch / median,
        "batch_size": batch,
        "requested_batch_size": batch,
        "iters": n,
        "warmup": 3,
        "latency_s": {"median": median},
        "samples_s": samples,
        "timer": "perf_counter",
    }


def phase(timed: dict[str, Any]) -> dict[str, Any]:
    """A timed phase as a profile record holds it: its timing, the precision and the path it ran."""
    return {**timed, "precision": "fp32", "path": "plain"} if isinstance(timed, dict) else timed


def cpu_memory(increase: int) -> dict[str, Any]:
    """A CPU phase's memory as the profiler writes it (``CpuPhaseMemory``)."""
    return {
        "peak_rss_increase_bytes": increase,
        "rss_before_bytes": 2**30,
        "rss_after_bytes": 2**30,
        "peak_rss_bytes": 2**30 + increase,
        "peak_from_ru_maxrss": False,
        "rss_samples": 10,
        "sample_interval_s": 0.001,
        "malloc_trim": True,
    }


def profile_record(
    *,
    params: int = 557_580,
    flops: int = 120_000_000,
    macs: int = 118_000_000,
    infer: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    rss: int = 50 * 2**20,
    env: dict[str, Any] | None = None,
    status: str = "ok",
    seed: int = 0,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": "conformer-bench.profile",
        "schema_version": 1,
        "status": status,
        "reason": None if status == "ok" else "out of memory at batch 8",
        "environment": env or environment(),
        "variant": {"name": "micro", "label": "micro", "config": {"name": "micro"}},
    }
    if status != "ok":
        return record
    record.update(
        {
            "params": {"total": params, "trainable": params, "by_component": {}},
            "flops": {"convention": "fvcore", "fvcore_total": flops, "paper_macs": macs, "batch_size": 1},
            "memory": {
                "device": "cpu",
                "infer": cpu_memory(rss),
                "train": cpu_memory(3 * rss),
            },
            "throughput": {
                "infer": phase(infer if infer is not None else timing(0.010, seed=seed)),
                "train": phase(train if train is not None else timing(0.040, seed=seed + 100)),
            },
        }
    )
    return record


def finetune_record(top1: float = 70.0, *, status: str = "ok", val_loss: float = 0.9) -> dict[str, Any]:
    return {
        "schema": "conformer-bench.finetune",
        "schema_version": 1,
        "status": status,
        "reason": None if status == "ok" else "non-finite loss at step 12",
        "environment": environment(batch_size=32),
        "final": {
            "top1": {"conv": top1 - 1.0, "trans": top1 - 2.0, "sum": top1},
            "top5": {"conv": 95.0, "trans": 94.0, "sum": 96.0},
            "val_loss": val_loss,
        },
    }


def cell(
    label: str, profile: dict[str, Any] | None, seeds: list[dict[str, Any]], **config: Any
) -> dict[str, Any]:
    cfg = {"name": "micro", "coupling": "both", **config}
    return {
        "schema": "conformer-bench.cell",
        "schema_version": 1,
        "label": label,
        "config": cfg,
        "config_hash": "h-" + label,
        "status": "ok" if profile is None or profile["status"] == "ok" else profile["status"],
        "reason": None,
        "profile": profile,
        "finetune": seeds,
    }


def write(path: Path, record: Any) -> Path:
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_cells(folder: Path, cells: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells), encoding="utf-8")
    return folder


def run_compare(base: Path, cur: Path, thresholds: Path | None = None) -> Comparison:
    return compare(load_metrics(base), load_metrics(cur), load_thresholds(thresholds))


def row(comparison: Comparison, name: str) -> Row:
    return next(r for r in comparison.rows if r.metric == name)


def report_cli(*args: str | Path) -> Any:
    return runner.invoke(app, ["report", *map(str, args)])


# --------------------------------------------------------------------------- exact metrics


def test_exact_metric_changed_fails(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record())
    cur = write(tmp_path / "c.json", profile_record(params=557_581, seed=1))
    comp = run_compare(base, cur)
    changed = row(comp, "params.total")
    assert changed.status == "CHANGED" and changed.blocking
    assert changed.delta == 1
    assert row(comp, "flops.fvcore_total").status == "OK"
    result = report_cli("--baseline", base, "--current", cur)
    assert result.exit_code == 1
    assert result.stdout.startswith("**conformer-bench report: FAIL**")


def test_identical_exact_metrics_pass(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record())
    result = report_cli("--baseline", base, "--current", base)
    assert result.exit_code == 0, result.output
    assert "**conformer-bench report: PASS**" in result.stdout.splitlines()[0]


# --------------------------------------------------------------------------- noisy metrics


@pytest.mark.parametrize("seed", range(8))
def test_same_distribution_never_fails(tmp_path: Path, seed: int) -> None:
    """Two honest runs with ordinary within-run spread: no FAIL, no WARN."""
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.01, spread=0.08, seed=seed)))
    cur = write(tmp_path / "c.json", profile_record(infer=timing(0.01, spread=0.08, seed=seed + 50)))
    comp = run_compare(base, cur)
    assert comp.verdict == "PASS", [(r.metric, r.status) for r in comp.rows]


@pytest.mark.parametrize("shift", [0.88, 1.12, 0.95])
def test_runner_level_shift_within_15_percent_does_not_fail(tmp_path: Path, shift: float) -> None:
    """A whole-run shift of the shared runner (same code) stays below the blocking rule."""
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur = write(tmp_path / "c.json", profile_record(infer=timing(0.010 / shift, seed=2)))
    comp = run_compare(base, cur)
    assert not comp.blocking
    assert row(comp, "throughput.infer.img_per_s").status in ("OK", "WARN", "NOISY")


GATE_RAW = "[metric.'throughput.*.img_per_s']\ngate = true\n"  # for a dedicated, quiet machine


def gate_raw(folder: Path) -> Path:
    """A thresholds file that lets raw img/s block (the shipped defaults do not)."""
    return write_text(folder / "gate_raw.toml", GATE_RAW)


def test_clear_20_percent_throughput_drop_fails_where_raw_timings_gate(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur = write(tmp_path / "c.json", profile_record(infer=timing(0.010 / 0.80, seed=2)))
    comp = run_compare(base, cur, gate_raw(tmp_path))
    r = row(comp, "throughput.infer.img_per_s")
    assert r.status == "FAIL" and r.blocking
    assert r.delta_rel == pytest.approx(-0.20, abs=0.02)
    assert r.p_value is not None and r.p_value < 1e-6
    assert r.ci is not None and r.ci[1] < 0.85
    assert report_cli("--baseline", base, "--current", cur, "--thresholds", gate_raw(tmp_path)).exit_code == 1


def test_shipped_defaults_do_not_gate_raw_img_per_s(tmp_path: Path) -> None:
    """A baseline's raw timings come from another time or host: by default a clear drop warns, never blocks."""
    for phase in ("infer", "train"):
        spec = load_thresholds().spec_for(
            Metric(f"cell/throughput.{phase}.img_per_s", (1.0,), "img/s", "higher", "noisy", timing=True)
        )
        assert spec.gate is False and spec.fail_rel == 0.15 and spec.warn_rel == 0.10
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur = write(tmp_path / "c.json", profile_record(infer=timing(0.010 / 0.50, seed=2)))
    r = row(run_compare(base, cur), "throughput.infer.img_per_s")
    assert r.status == "WARN" and not r.blocking and "does not gate" in r.note
    result = report_cli("--baseline", base, "--current", cur)
    assert result.exit_code == 0 and "no gate" in result.stdout
    # what the shipped defaults still gate: counts, memory on CUDA, speed per reference GFLOP, paired speed
    gated = ("params.total", "memory.infer.peak_allocated_bytes", "throughput.infer.img_per_ref_gflop")
    for name in (*gated, "cell/paired.infer.img_per_s"):
        assert load_thresholds().spec_for(Metric(name, (1.0,), "", "higher", "noisy")).gate, name


def test_throughput_samples_are_batch_over_seconds(tmp_path: Path) -> None:
    rec = profile_record(infer={"batch_size": 4, "samples_s": [0.5, 0.25, 0.2], "img_per_s": 16.0})
    metric = load_metrics(write(tmp_path / "p.json", rec)).metrics["throughput.infer.img_per_s"]
    assert metric.samples == (8.0, 16.0, 20.0)
    assert metric.unit == "img/s" and metric.direction == "higher" and metric.kind == "noisy"


def test_over_threshold_but_not_significant_is_noisy(tmp_path: Path) -> None:
    """Three samples a side cannot reach p < 0.05 (Mann-Whitney minimum is 0.1): shown, not failed."""
    base_t = {"batch_size": 8, "samples_s": [0.010, 0.0102, 0.0098]}
    cur_t = {"batch_size": 8, "samples_s": [0.0125, 0.0127, 0.0123]}
    base = write(tmp_path / "b.json", profile_record(infer=base_t))
    cur = write(tmp_path / "c.json", profile_record(infer=cur_t))
    comp = run_compare(base, cur)
    r = row(comp, "throughput.infer.img_per_s")
    assert r.delta_rel is not None and r.delta_rel < -0.15
    assert r.status == "NOISY" and not r.blocking
    assert "not significant" in r.note
    assert report_cli("--baseline", base, "--current", cur).exit_code == 0


def test_unstable_metric_flagged_not_gated(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    wild = timing(0.020, spread=0.9, n=30, seed=2)  # IQR/median ~ 90 %
    cur = write(tmp_path / "c.json", profile_record(infer=wild))
    comp = run_compare(base, cur)
    r = row(comp, "throughput.infer.img_per_s")
    assert r.status == "UNSTABLE" and not r.blocking
    assert "current IQR/median" in r.note
    result = report_cli("--baseline", base, "--current", cur)
    assert result.exit_code == 0
    assert "UNSTABLE" in result.stdout


def test_environment_mismatch_timing_not_comparable_exact_still_checked(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur_rec = profile_record(params=600_000, infer=timing(0.020, seed=2), env=environment(threads=4))
    cur = write(tmp_path / "c.json", cur_rec)
    comp = run_compare(base, cur)
    r = row(comp, "throughput.infer.img_per_s")
    assert r.status == "NOT COMPARABLE" and not r.blocking
    assert "threads" in r.note
    assert row(comp, "memory.infer.peak_rss_increase_bytes").status == "NOT COMPARABLE"
    assert row(comp, "params.total").status == "CHANGED"
    assert comp.env_mismatch == {"threads": (2, 4)}
    result = report_cli("--baseline", base, "--current", cur)
    assert result.exit_code == 1
    assert "timing metrics are not comparable" in result.stdout


def test_plain_vs_optimized_path_timing_not_comparable_exact_still_checked(tmp_path: Path) -> None:
    base_env = environment(path="plain", channels_last=False)
    cur_env = environment(path="optimized", channels_last=True)
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1), env=base_env))
    cur = write(tmp_path / "c.json", profile_record(params=557_581, infer=timing(0.005, seed=2), env=cur_env))
    comp = run_compare(base, cur)
    r = row(comp, "throughput.infer.img_per_s")
    assert r.status == "NOT COMPARABLE" and "path" in r.note and "channels_last" in r.note
    assert comp.env_mismatch == {"path": ("plain", "optimized"), "channels_last": (False, True)}
    assert row(comp, "params.total").status == "CHANGED"
    assert row(comp, "flops.fvcore_total").status == "OK"


def test_cells_without_path_keys_stay_comparable(tmp_path: Path) -> None:
    """Ablation cells and fine-tune records hold no path/channels_last: missing on both sides is equal."""
    base = write_cells(tmp_path / "b", [cell("a", profile_record(seed=1), [finetune_record(70.0)])])
    cur = write_cells(tmp_path / "c", [cell("a", profile_record(seed=2), [finetune_record(70.5)])])
    comp = run_compare(base, cur)
    assert comp.env_mismatch == {}
    timed = [r for r in comp.rows if r.metric.startswith("a/throughput.")]
    assert timed and all(r.status != "NOT COMPARABLE" for r in timed)
    assert row(comp, "a/finetune.top1.sum").status == "OK"


def test_environment_mismatch_alone_does_not_block(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur = write(
        tmp_path / "c.json", profile_record(infer=timing(0.030, seed=2), env=environment(torch="2.14.0"))
    )
    assert report_cli("--baseline", base, "--current", cur).exit_code == 0


def test_cpu_memory_never_gates(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record())
    cur = write(tmp_path / "c.json", profile_record(rss=100 * 2**20))
    r = row(run_compare(base, cur), "memory.infer.peak_rss_increase_bytes")
    assert r.status == "WARN" and not r.blocking
    assert r.delta_rel == pytest.approx(1.0)


def test_large_improvement_points_out_stale_baseline(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur = write(tmp_path / "c.json", profile_record(infer=timing(0.006, seed=2)))
    comp = run_compare(base, cur)
    assert row(comp, "throughput.infer.img_per_s").status == "IMPROVED"
    assert comp.verdict == "PASS"
    assert "Baseline looks stale" in render_markdown(comp)


# --------------------------------------------------------------------------- accuracy


def test_accuracy_drop_beyond_tolerance_fails(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", finetune_record(70.0))
    cur = write(tmp_path / "c.json", finetune_record(67.5))
    comp = run_compare(base, cur)
    r = row(comp, "finetune.top1.sum")
    assert r.status == "FAIL" and r.blocking
    assert r.delta == pytest.approx(-2.5)
    assert r.tolerance == pytest.approx(2.0)
    assert row(comp, "finetune.top5.sum").status == "OK"
    result = report_cli("--baseline", base, "--current", cur)
    assert result.exit_code == 1
    assert "-2.50 pp" in result.stdout


def test_accuracy_within_tolerance_passes(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", finetune_record(70.0))
    cur = write(tmp_path / "c.json", finetune_record(69.5))
    comp = run_compare(base, cur)
    assert row(comp, "finetune.top1.sum").status == "OK"
    assert comp.exit_code() == 0


def test_accuracy_uses_k_sigma_over_seeds(tmp_path: Path) -> None:
    """Seeds that spread widely widen the tolerance: past fail_abs but within 1 pooled sd -> noisy."""
    base_seeds = [finetune_record(v) for v in (64.0, 70.0, 76.0)]  # sd 6 pp
    cur_seeds = [finetune_record(v) for v in (61.0, 67.0, 73.0)]  # mean -3 pp
    base = write_cells(tmp_path / "b", [cell("dual", None, base_seeds)])
    cur = write_cells(tmp_path / "c", [cell("dual", None, cur_seeds)])
    comp = run_compare(base, cur)
    r = row(comp, "dual/finetune.top1.sum")
    assert r.n_baseline == 3 and r.sd_baseline == pytest.approx(6.0) and r.sd_current == pytest.approx(6.0)
    assert r.tolerance == pytest.approx(6.0)
    assert r.status == "NOISY" and not r.blocking


def _seed_cells(
    means: dict[str, float], sd: float, seeds: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """One cell per label, each with ``seeds`` fine-tune records drawn around its mean."""
    return [
        cell(label, None, [finetune_record(float(v)) for v in rng.normal(mean, sd, seeds)])
        for label, mean in means.items()
    ]


GRID_MEANS = {f"cell{i}": 60.0 + 2.0 * i for i in range(16)}


@pytest.mark.parametrize("draw", range(10))
def test_unchanged_code_with_seed_level_drift_does_not_fail(tmp_path: Path, draw: int) -> None:
    """Another machine's kernels move each seed of a short fine-tune by about a seed's spread: both sides are
    then draws from one distribution, and a 16-cell grid must not fail (Welch's t + Benjamini-Hochberg)."""
    rng = np.random.default_rng(draw)
    base = write_cells(tmp_path / "b", _seed_cells(GRID_MEANS, 4.0, 5, rng))
    cur = write_cells(tmp_path / "c", _seed_cells(GRID_MEANS, 4.0, 5, rng))
    comp = run_compare(base, cur)
    assert not comp.blocking, [(r.metric, r.delta, r.p_value) for r in comp.blocking]


def test_significant_drop_past_tolerance_fails(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = write_cells(tmp_path / "b", _seed_cells({"dual": 80.0}, 3.0, 5, rng))
    cur = write_cells(tmp_path / "c", _seed_cells({"dual": 62.0}, 3.0, 5, rng))
    r = row(run_compare(base, cur), "dual/finetune.top1.sum")
    assert r.status == "FAIL" and r.blocking
    assert r.p_value is not None and r.p_value < 0.01
    assert r.p_adjusted is not None and r.p_adjusted >= r.p_value


def test_drop_past_tolerance_but_not_significant_is_noisy(tmp_path: Path) -> None:
    base_seeds = [finetune_record(v) for v in (70.0, 90.0, 75.0, 85.0, 80.0)]
    cur_seeds = [finetune_record(v) for v in (60.0, 88.0, 66.0, 84.0, 72.0)]  # -6 pp, seed sd ~ 11
    base = write_cells(tmp_path / "b", [cell("dual", None, base_seeds)])
    cur = write_cells(tmp_path / "c", [cell("dual", None, cur_seeds)])
    thresholds = write_text(tmp_path / "t.toml", '[metric."finetune.top*"]\nsigma_k = 0.0\n')
    r = row(run_compare(base, cur, thresholds), "dual/finetune.top1.sum")
    assert r.delta == pytest.approx(-6.0) and r.tolerance == pytest.approx(2.0)
    assert r.status == "NOISY" and not r.blocking
    assert "not significant" in r.note


def test_equal_seeds_cannot_make_the_tolerance_zero(tmp_path: Path) -> None:
    """Seeds that happen to agree (sd 0) are floored at sd_floor: a 1.5 pp move is neither a FAIL nor p=0."""
    base = write_cells(tmp_path / "b", [cell("dual", None, [finetune_record(80.0)] * 5)])
    cur = write_cells(tmp_path / "c", [cell("dual", None, [finetune_record(78.5)] * 5)])
    r = row(run_compare(base, cur), "dual/finetune.top1.sum")
    assert r.sd_baseline == 0.0 and r.sd_current == 0.0
    assert r.tolerance is not None and r.tolerance >= 2.0
    assert r.p_value is not None and r.p_value > 0.01
    assert not r.blocking


def test_welch_is_for_accuracy_only(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record())
    cur = write(tmp_path / "c.json", profile_record())
    thresholds = write_text(tmp_path / "t.toml", '[metric."throughput.*"]\nsignificance = "welch"\n')
    result = report_cli("--baseline", base, "--current", cur, "--thresholds", thresholds)
    assert result.exit_code == 2
    assert "'welch' is for accuracy metrics" in _one_line_error(result)


# --------------------------------------------------------------------------- missing, crashed, new


def test_missing_metric_fails(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record())
    cur_rec = profile_record()
    del cur_rec["throughput"]["train"]
    cur = write(tmp_path / "c.json", cur_rec)
    r = row(run_compare(base, cur), "throughput.train.img_per_s")
    assert r.status == "MISSING" and r.blocking
    assert report_cli("--baseline", base, "--current", cur).exit_code == 1


def test_crashed_cell_and_crashed_seed_fail(tmp_path: Path) -> None:
    seeds = [finetune_record(70.0), finetune_record(71.0)]
    base = write_cells(
        tmp_path / "b", [cell("a", profile_record(), seeds), cell("b", profile_record(), seeds)]
    )
    crashed_seed = [finetune_record(70.0), finetune_record(status="nan")]
    cur = write_cells(
        tmp_path / "c",
        [cell("a", profile_record(status="oom"), seeds), cell("b", profile_record(), crashed_seed)],
    )
    comp = run_compare(base, cur)
    r = row(comp, "a/*")  # one row for the crashed cell, counting what it took away
    assert r.status == "CRASHED" and r.blocking and "oom" in r.note
    assert r.n_baseline == 15 and "15 baseline metric(s) not measured" in r.note
    assert not any(x.metric.startswith("a/") and x.metric != "a/*" for x in comp.rows)
    seed_row = row(comp, "b/finetune.*")
    assert seed_row.status == "CRASHED" and "1 of 2 seed(s) nan" in seed_row.note
    assert seed_row.n_baseline == 7
    assert row(comp, "b/params.total").status == "OK"
    assert report_cli("--baseline", base, "--current", cur).exit_code == 1


def test_new_metric_is_informational(tmp_path: Path) -> None:
    seeds = [finetune_record(70.0)]
    base = write_cells(tmp_path / "b", [cell("a", profile_record(), seeds)])
    cur = write_cells(
        tmp_path / "c", [cell("a", profile_record(), seeds), cell("b", profile_record(), seeds)]
    )
    comp = run_compare(base, cur)
    r = row(comp, "b/params.total")
    assert r.status == "NEW" and not r.blocking
    assert comp.verdict == "PASS"
    assert report_cli("--baseline", base, "--current", cur).exit_code == 0


def test_cells_match_by_label_and_config(tmp_path: Path) -> None:
    seeds = [finetune_record(70.0)]
    base = write_cells(
        tmp_path / "b", [cell("a", profile_record(), seeds), cell("b", profile_record(), seeds)]
    )
    # Same labels, other order; cell "b" now holds another model config.
    cur = write_cells(
        tmp_path / "c",
        [cell("b", profile_record(), seeds, coupling="none"), cell("a", profile_record(), seeds)],
    )
    comp = run_compare(base, cur)
    assert row(comp, "a/params.total").status == "OK"
    r = row(comp, "b/params.total")
    assert r.status == "CHANGED" and "config differs" in r.note


def test_all_crashed_current_is_nothing_measured(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record())
    cur = write(tmp_path / "c.json", profile_record(status="oom"))
    result = report_cli("--baseline", base, "--current", cur)
    assert result.exit_code == 2
    assert "holds no measured metric" in result.stderr and "oom" in result.stderr


# --------------------------------------------------------------------------- bad input, exit codes


def _one_line_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"schema": "conformer-bench.speed", "schema_version": 1}), "is not one report reads"),
        (json.dumps({"hello": 1}), "schema None is not one report reads"),
        (json.dumps([1, 2]), "expected a JSON object"),
        (json.dumps({"schema": "conformer-bench.profile", "schema_version": 99}), "upgrade conformer-bench"),
        (
            json.dumps({**profile_record(), "params": {"total": "many"}}),
            "params.total is 'many', not a number",
        ),
    ],
)
def test_malformed_or_wrong_schema_input_exits_2(tmp_path: Path, content: str, expected: str) -> None:
    base = write(tmp_path / "b.json", profile_record())
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    assert expected in _one_line_error(report_cli("--baseline", base, "--current", bad))


def test_bad_inputs_exit_2(tmp_path: Path) -> None:
    prof = write(tmp_path / "p.json", profile_record())
    fine = write(tmp_path / "f.json", finetune_record())
    assert "does not exist" in _one_line_error(
        report_cli("--baseline", tmp_path / "nope.json", "--current", prof)
    )
    assert "holds no cells.jsonl" in _one_line_error(report_cli("--baseline", tmp_path, "--current", prof))
    assert "compare results of the same command" in _one_line_error(
        report_cli("--baseline", prof, "--current", fine)
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cells.jsonl").write_text(
        '{"schema": "conformer-bench.cell", "label": "a", "status": "ok"}\n{oops\n', encoding="utf-8"
    )
    assert "line 2 is not valid JSON" in _one_line_error(report_cli("--baseline", prof, "--current", broken))


@pytest.mark.parametrize(
    "key", ["environment", "params", "flops", "memory", "throughput", "throughput.infer"]
)
@pytest.mark.parametrize("junk", ["x", [1, "a"], None, {}, 3])
def test_junk_in_any_section_never_tracebacks(tmp_path: Path, key: str, junk: Any) -> None:
    """Whatever a section holds, the answer is a verdict (0/1) or a one-line error (2), never a traceback."""
    rec = profile_record()
    parent, leaf = (rec["throughput"], "infer") if "." in key else (rec, key)
    parent[leaf] = junk
    base = write(tmp_path / "b.json", profile_record())
    result = report_cli("--baseline", base, "--current", write(tmp_path / "c.json", rec))
    assert result.exit_code in (0, 1, 2) and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code == 2:
        _one_line_error(result)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[metric.'throughput.*'\nfail_rel = 0.2", "is not valid TOML"),
        ("[metric.'throughput.*']\nfail_rell = 0.2", "unknown setting 'fail_rell'"),
        ("[metric.'throughput.*']\nwarn_rel = 0.3\nfail_rel = 0.2", "warn_rel (0.3) is above fail_rel (0.2)"),
        ("[metric.'throughput.*']\nkind = 'fuzzy'", "kind = 'fuzzy' is not valid"),
    ],
)
def test_bad_thresholds_exit_2(tmp_path: Path, toml: str, expected: str) -> None:
    prof = write(tmp_path / "p.json", profile_record())
    rules = tmp_path / "t.toml"
    rules.write_text(toml, encoding="utf-8")
    assert expected in _one_line_error(
        report_cli("--baseline", prof, "--current", prof, "--thresholds", rules)
    )


def test_thresholds_file_overrides_defaults(tmp_path: Path) -> None:
    """A 20 % drop passes when a user file loosens the throughput rule; params stay exact."""
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur = write(tmp_path / "c.json", profile_record(infer=timing(0.0125, seed=2)))
    rules = tmp_path / "t.toml"
    rules.write_text("[metric.'throughput.infer.*']\nwarn_rel = 0.3\nfail_rel = 0.4\n", encoding="utf-8")
    comp = run_compare(base, cur, rules)
    r = row(comp, "throughput.infer.img_per_s")
    assert r.status == "OK" and r.spec is not None and r.spec.fail_rel == 0.4 and r.spec.unstable_cv == 0.30
    assert r.spec.matched == ("throughput.*", "throughput.*.img_per_s", "throughput.infer.*")


def test_warn_only_exits_0_and_still_writes(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record())
    cur = write(tmp_path / "c.json", profile_record(params=1))
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    result = report_cli("--baseline", base, "--current", cur, "--markdown", md, "--json", js, "--warn-only")
    assert result.exit_code == 0
    assert "warn-only" in result.stderr
    assert md.read_text(encoding="utf-8") == result.stdout
    verdict = json.loads(js.read_text(encoding="utf-8"))
    assert verdict["verdict"] == "FAIL" and verdict["warn_only"] is True and verdict["exit_code"] == 0
    assert "params.total" in verdict["blocking"]


def test_json_verdict_beside_markdown(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur = write(tmp_path / "c.json", profile_record(infer=timing(0.0125, seed=2)))
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    rules = gate_raw(tmp_path)
    result = report_cli(
        "--baseline", base, "--current", cur, "--markdown", md, "--json", js, "--thresholds", rules
    )
    assert result.exit_code == 1
    verdict = json.loads(js.read_text(encoding="utf-8"))
    assert verdict["schema"] == "conformer-bench.report" and verdict["schema_version"] == 1
    assert verdict["verdict"] == "FAIL" and verdict["exit_code"] == 1
    assert verdict["blocking"] == ["throughput.infer.img_per_s"]
    assert verdict["counts"]["fail"] == 1 and verdict["counts"]["ok"] == len(verdict["rows"]) - 1
    r = verdict["rows"][0]
    assert r["metric"] == "throughput.infer.img_per_s" and r["n_baseline"] == 25
    assert r["baseline"] == pytest.approx(8 / 0.010, rel=0.03)  # raw, unrounded img/s
    assert r["threshold"]["fail_rel"] == 0.15
    assert verdict["baseline"]["environment"]["threads"] == 2


# --------------------------------------------------------------------------- Markdown snapshot


def snapshot_comparison(tmp_path: Path) -> Comparison:
    """An ablation pair exercising every status, fully deterministic."""
    seeds = [finetune_record(v) for v in (70.0, 72.0, 71.0, 73.0)]
    three = {"batch_size": 8, "samples_s": [0.010, 0.0102, 0.0098]}
    three_slow = {"batch_size": 8, "samples_s": [0.0125, 0.0127, 0.0123]}
    no_train_memory = profile_record(params=300_000, infer=three_slow, train=timing(0.05, spread=0.9, seed=9))
    del no_train_memory["memory"]["train"]
    base_cells = [
        cell("dual", profile_record(infer=timing(0.010, seed=1)), seeds),
        cell("cnn-only", profile_record(params=400_000, train=timing(0.040, seed=3)), seeds, branches="cnn"),
        cell("no-fcu", profile_record(params=500_000), seeds, coupling="none"),
        cell("trans-only", profile_record(params=300_000, infer=three), [], branches="transformer"),
        cell("down-only", profile_record(params=510_000), [], coupling="down"),
    ]
    cur_cells = [
        cell(
            "dual",
            profile_record(infer=timing(0.0125, seed=2)),
            [finetune_record(v) for v in (60.0, 61.0, 63.0, 62.0)],
        ),
        cell(
            "cnn-only",
            profile_record(params=400_128, infer=timing(0.007, seed=4), train=timing(0.040 / 0.88, seed=5)),
            seeds,
            branches="cnn",
        ),
        cell("no-fcu", profile_record(status="oom"), [], coupling="none"),
        cell("trans-only", no_train_memory, [], branches="transformer"),
        cell("down-only", profile_record(params=510_000, env=environment(threads=4)), [], coupling="down"),
        cell("up-only", profile_record(params=520_000), [], coupling="up"),
    ]
    base = write_cells(tmp_path / "baseline-run", base_cells)
    cur = write_cells(tmp_path / "current-run", cur_cells)
    return run_compare(base, cur)


def test_markdown_snapshot(tmp_path: Path) -> None:
    comp = snapshot_comparison(tmp_path)
    text = render_markdown(comp)
    snapshot = SNAPSHOTS / "report_ablation.md"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        snapshot.write_text(text, encoding="utf-8")
    assert text == snapshot.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("**conformer-bench report: FAIL** — ")
    # Non-OK rows first, by severity; unchanged rows folded.
    statuses = [line.split(" | ")[0].strip("| *") for line in lines if line.startswith("| ")]
    details = lines.index(next(line for line in lines if line.startswith("<details>")))
    above = [s for s in statuses[: statuses.index("OK")] if s != "status"]
    assert above == sorted(above, key=lambda s: [r.status for r in comp.rows].index(s))
    assert all("| OK |" not in line for line in lines[:details])
    assert "</details>" in lines
    assert any(line.startswith("Baseline: `baseline-run`") and "threads=2" in line for line in lines)
    assert any(line.startswith("Current: `current-run`") and "commit=abc123def456" in line for line in lines)
    seen = {r.status for r in comp.rows}
    assert seen == {"FAIL", "CHANGED", "CRASHED", "MISSING", "WARN", "IMPROVED", "NOISY", "UNSTABLE"} | {
        "NOT COMPARABLE",
        "NEW",
        "OK",
    }


def test_markdown_is_stable(tmp_path: Path) -> None:
    first = render_markdown(snapshot_comparison(tmp_path / "one"))
    second = render_markdown(snapshot_comparison(tmp_path / "two"))
    assert first == second
    assert json.dumps(render_json(snapshot_comparison(tmp_path / "three"))["rows"]) == json.dumps(
        render_json(snapshot_comparison(tmp_path / "four"))["rows"]
    )


def test_the_repository_ci_thresholds_gate_paired_speed_and_leave_the_rest_shipped() -> None:

    root = Path(__file__).resolve().parent.parent
    thresholds = load_thresholds(root / "experiments" / "ci_thresholds.toml")
    shipped = load_thresholds()

    paired = Metric("micro/paired.infer.img_per_s", (), "img/s", "higher", "paired")
    spec = thresholds.spec_for(paired)
    assert (spec.warn_rel, spec.fail_rel, spec.gate, spec.kind) == (0.03, 0.05, True, "paired")
    others = [
        Metric("micro/throughput.infer.img_per_s", (1.0,), "img/s", "higher", "noisy", timing=True),
        Metric("micro/memory.train.peak_rss_increase_bytes", (1.0,), "B", "lower", "noisy"),
        Metric("micro/params.total", (1.0,), "", "equal", "exact"),
        Metric("micro/finetune.top1.sum", (90.0, 91.0), "%", "higher", "accuracy"),
    ]
    for metric in others:
        assert thresholds.spec_for(metric) == shipped.spec_for(metric), metric.name


# --------------------------------------------------------------------------- speed against a reference GEMM


def referenced(median_s: float, ratio: float, *, seed: int = 0) -> dict[str, Any]:
    """A timing whose per-pair images per reference GFLOP sit around ``ratio`` (+-2 %)."""
    out = timing(median_s, seed=seed)
    rng = np.random.default_rng(seed + 7)
    out["ref_ratio_samples"] = (ratio * (1.0 + rng.uniform(-0.02, 0.02, 25))).tolist()
    out["img_per_ref_gflop"] = float(np.median(out["ref_ratio_samples"]))
    return out


REFERENCED_GATE = """
[metric."throughput.*.img_per_s"]
warn_rel = 0.20
fail_rel = 0.40
gate = false

[metric."throughput.*.img_per_ref_gflop"]
warn_rel = 0.15
fail_rel = 0.40
"""


def _referenced_thresholds(folder: Path) -> Path:
    """A CI that gates images per reference GFLOP and only shows raw img/s."""
    path = folder / "referenced_thresholds.toml"
    path.write_text(REFERENCED_GATE)
    return path


def test_reference_samples_become_their_own_metric(tmp_path: Path) -> None:
    record = profile_record(infer=referenced(0.010, 9.0))
    metrics = load_metrics(write(tmp_path / "p.json", record))
    relative = metrics.metrics["throughput.infer.img_per_ref_gflop"]
    assert relative.unit == "img/ref-GFLOP" and relative.timing
    assert np.median(relative.samples) == pytest.approx(9.0, rel=0.02)
    assert "throughput.train.img_per_ref_gflop" not in metrics.metrics  # train had no reference


def test_reference_samples_of_the_wrong_type_name_the_fix(tmp_path: Path) -> None:
    timing_entry = referenced(0.010, 9.0)
    timing_entry["ref_ratio_samples"] = "fast"
    path = write(tmp_path / "p.json", profile_record(infer=timing_entry))
    result = report_cli("--baseline", path, "--current", path)
    assert result.exit_code == 2
    assert "ref_ratio_samples is not a list" in result.output and "regenerate" in result.output


def test_a_gate_on_the_referenced_speed_ignores_the_host(tmp_path: Path) -> None:
    """Gating the ratio: a host slowdown that halves raw img/s but not the ratio passes; a real 50 % drop
    blocks."""
    base = write(tmp_path / "base.json", profile_record(infer=referenced(0.010, 9.0)))
    slow_host = write(tmp_path / "slow.json", profile_record(infer=referenced(0.020, 9.0, seed=1)))
    comparison = run_compare(base, slow_host, _referenced_thresholds(tmp_path))
    raw = row(comparison, "throughput.infer.img_per_s")
    assert raw.status == "WARN" and not raw.blocking
    assert row(comparison, "throughput.infer.img_per_ref_gflop").status == "OK"
    assert not comparison.blocking

    slower_code = write(tmp_path / "code.json", profile_record(infer=referenced(0.020, 4.5, seed=2)))
    comparison = run_compare(base, slower_code, _referenced_thresholds(tmp_path))
    relative = row(comparison, "throughput.infer.img_per_ref_gflop")
    assert relative.status == "FAIL" and relative.blocking

    milder = write(tmp_path / "mild.json", profile_record(infer=referenced(0.010, 9.0 * 0.75, seed=3)))
    assert row(
        run_compare(base, milder, _referenced_thresholds(tmp_path)), "throughput.infer.img_per_ref_gflop"
    ).status == ("WARN")


# --------------------------------------------------------------------------- the verdict as a typed record

COMMITTED_REPORTS = sorted(
    p
    for p in (Path(__file__).resolve().parent.parent / "results").rglob("*.json")
    if b'"schema": "conformer-bench.report"' in p.read_bytes()[:200]
)


def test_there_are_committed_reports() -> None:
    assert COMMITTED_REPORTS, "results/ holds no report --json verdict to read back"


@pytest.mark.parametrize("path", COMMITTED_REPORTS, ids=lambda p: str(p.parent.name))
def test_committed_reports_read_back_typed(path: Path) -> None:
    (record,) = conformer_bench.read(path)
    assert isinstance(record, ReportRecord) and record.rows
    assert record.to_dict() == json.loads(path.read_text(encoding="utf-8"))
    assert sum(record.counts.values()) == len(record.rows)
    assert all(isinstance(r, ReportRow) for r in record.rows)


def test_the_json_verdict_reads_back_as_a_report_record_and_a_frame(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur = write(tmp_path / "c.json", profile_record(params=1, infer=timing(0.0125, seed=2)))
    js = tmp_path / "r.json"
    report_cli("--baseline", base, "--current", cur, "--json", js)
    (record,) = conformer_bench.read(js)
    assert isinstance(record, ReportRecord) and record.verdict == "FAIL"
    assert record.current.source == str(cur) and record.baseline.environment["threads"] == 2
    changed = next(r for r in record.rows if r.metric == "params.total")
    assert changed.status == "CHANGED" and changed.blocking and changed.current == 1
    frame = conformer_bench.to_frame([record])
    assert list(frame["metric"]) == [r.metric for r in record.rows]
    assert frame.loc[frame["metric"] == "params.total", "current"].item() == 1


def test_a_pipe_in_a_cell_label_is_escaped_in_the_markdown(tmp_path: Path) -> None:
    seeds = [finetune_record(70.0)]
    base = write_cells(tmp_path / "base", [cell("a|b", None, seeds)])
    cur = write_cells(tmp_path / "cur", [cell("a|b", None, seeds)])
    text = render_markdown(run_compare(base, cur))
    assert "`a\\|b/finetune.top1.sum`" in text
    assert all(line.count(" | ") == 8 for line in text.splitlines() if line.startswith("| "))


# --------------------------------------------------------------------------- ablation cells, typed or not


@dataclass
class _TypedCell(SchemaRecord):
    """A cell record typed by its JSON keys, as the ablate store's cell kind reads them."""

    SCHEMA = "conformer-bench.cell"
    label: str
    config: dict[str, Any]
    config_hash: str
    status: Status
    reason: str | None
    profile: ProfileRecord | None
    finetune: list[FinetuneRecord]


def test_a_typed_cell_gives_the_metrics_its_json_gives(tmp_path: Path) -> None:
    """The one adapter reads a cell as the store gives it today (JSON) or as a typed record alike."""
    seeds = [finetune_record(v) for v in (70.0, 72.0)]
    raw = cell("cnn-only", profile_record(params=400_000), seeds, branches="cnn")
    typed = _TypedCell.from_dict(raw)
    assert isinstance(typed.profile, ProfileRecord) and isinstance(typed.finetune[0], FinetuneRecord)
    from_json, from_record = (MetricSet("x", "ablation") for _ in range(2))
    cell_metrics(cell_view(raw, "x"), from_json)
    cell_metrics(cell_view(typed, "x"), from_record)
    assert from_json.metrics == from_record.metrics and "cnn-only/finetune.top1.sum" in from_json.metrics
    assert from_json.metrics["cnn-only/params.total"].context == config_digest(raw["config"])
    crashed = _TypedCell.from_dict({**raw, "status": "oom", "reason": "out of memory"})
    out = MetricSet("x", "ablation")
    cell_metrics(cell_view(crashed, "x"), out)
    assert out.crashed == {"cnn-only/": "oom: out of memory"} and not out.metrics
