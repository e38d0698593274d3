"""`conformer-bench ablate` and `table`: experiment files, dry run, a real grid, crashes, resume, formatting."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conformer_bench.ablate.dry_run import finetune_budget
from conformer_bench.ablate.experiment import load_experiment
from conformer_bench.ablate.plots import pareto_front
from conformer_bench.ablate.runner import parse_shard, run_grid, shard_of
from conformer_bench.ablate.store import CellOutcome, load_records
from conformer_bench.cli import app
from conformer_bench.errors import BenchError
from conformer_bench.formatting import TOGGLE_FIELDS
from conformer_bench.records import FinetuneRecord, FinetuneSettings, ProfileRecord, Status

ROOT = Path(__file__).resolve().parent.parent
EXP = Path(__file__).parent / "fixtures" / "experiments"
BAD = EXP / "bad"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


# --- experiment files -------------------------------------------------------------------------------


def test_shipped_experiments_load() -> None:
    paper = load_experiment(ROOT / "experiments" / "paper.toml")
    assert paper.base_label == "conformer-s" and paper.cells[0].label == "conformer-s"
    base = paper.cells[0].config
    assert base.name == "small" and base.is_release() and paper.cells[0].profile["img_size"] == 224
    by_label = {c.label: c.config for c in paper.cells}
    assert by_label["cnn-only"].branches == "cnn"
    assert by_label["transformer-only"].branches == "transformer"
    assert by_label["no-fcu"].coupling == "none"
    assert {by_label[f"num_med_block={n}"].num_med_block for n in (1, 2, 3)} == {1, 2, 3}
    assert by_label["fcu-down-conv"].fcu_down == "conv" and by_label["fcu-up-deconv"].fcu_up == "deconv"
    assert by_label["fcu-stage3-only"].fcu_stages == (3,)
    assert by_label["pos-embed"].pos_embed and by_label["head-trans"].heads == "trans"
    assert not paper.finetune_by_default and paper.has_finetune
    # Every non-base cell differs from the base in exactly the fields its label names.
    assert paper.cell("no-fcu").changes == {"coupling": "none"}

    med = load_experiment(ROOT / "experiments" / "med_blocks.toml")
    pairs = {(c.config.name, c.config.num_med_block) for c in med.cells}
    assert pairs == {(v, n) for v in ("tiny", "small", "base") for n in range(4)}
    assert len(med.cells) == 12  # the product's (small, 0) is the base itself

    ci = load_experiment(ROOT / "experiments" / "ci.toml")
    assert ci.finetune_by_default and len(ci.cells[0].seeds) == 5 and ci.cells[0].seed_jobs == 2
    families = {key for c in ci.cells for key in c.changes}
    for key in TOGGLE_FIELDS:
        if key == "fused_attn":  # ci.toml does not sweep it
            continue
        assert key in families, f"ci.toml misses the {key} toggle family"


def test_axes_skip_base_duplicates_and_label() -> None:
    exp = load_experiment(EXP / "nano_grid.toml")
    assert exp.labels() == ["dual", "num_med_block=1", "cnn-only", "no-fcu"]
    assert exp.cell("num_med_block=1").config.num_med_block == 1
    assert exp.output_dir == Path("results/nano_grid")
    assert exp.cell("cnn-only").profile["iters"] == 3


BAD_CASES = {
    # file: fragments the message must hold (file:line, key, fix)
    "unknown_top_key": ["unknown_top_key.toml:2:", "outptu_dir", "did you mean 'output_dir'"],
    "bad_variant": ["bad_variant.toml:2:", "base.variant", "unknown model 'nanoo'", "nano"],
    "bad_toggle": ["bad_toggle.toml:10:", "cells[1].coupling", "choose one of: both, down, up, none"],
    "bad_combination": ["bad_combination.toml:", "cells[0]", "needs the transformer branch"],
    "duplicate_label": ["duplicate_label.toml:", "'dual' is used twice"],
    "missing_label": ["missing_label.toml:4:", "cells[0]", 'add label = "short-name"'],
    "unknown_cell_key": ["unknown_cell_key.toml:6:", "num_med_blocks", "did you mean 'num_med_block'"],
    "bad_profile_key": ["bad_profile_key.toml:6:", "profile.iterations", "did you mean 'iters'"],
    "bad_profile_type": ["bad_profile_type.toml:5:", "profile.batch_size", "wrong type"],
    "bad_seeds": ["bad_seeds.toml:6:", "finetune.seeds", "distinct integers"],
    "bad_seed_jobs": ["bad_seed_jobs.toml:6:", "finetune.jobs", "integer >= 1"],
    "finetune_seed": ["finetune_seed.toml:6:", "finetune.seed", "seeds = [0, 1]"],
    "bad_syntax": ["bad_syntax.toml", "not valid TOML", "line 2"],
    "missing_base": ["missing_base.toml", "[base] table"],
    "axis_not_list": ["axis_not_list.toml:5:", "axes.num_med_block", "non-empty list"],
    "bad_axes_mode": ["bad_axes_mode.toml:1:", "axes_mode", "each, product"],
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_experiment_files(name: str) -> None:
    with pytest.raises(BenchError) as info:
        load_experiment(BAD / f"{name}.toml")
    message = str(info.value)
    assert "\n" not in message
    for fragment in BAD_CASES[name]:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_bad_file_on_the_command_line_is_one_line_exit_2() -> None:
    result = invoke("ablate", str(BAD / "bad_toggle.toml"), "--dry-run")
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "Traceback" not in result.output
    missing = invoke("ablate", "no/such/file.toml")
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_output_dir_that_is_a_file_is_exit_2(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("")
    result = invoke("ablate", str(EXP / "nano_costs.toml"), "--output-dir", str(target))
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    shard = invoke(
        "ablate", str(EXP / "nano_costs.toml"), "--output-dir", str(tmp_path / "o"), "--shard", "2/2"
    )
    assert shard.exit_code == 2 and "--shard 0/2" in shard.output
    finetune = invoke("ablate", str(EXP / "nano_costs.toml"), "--finetune", "--dry-run")
    assert finetune.exit_code == 2 and "needs a [finetune] table" in finetune.output


def test_only_and_shard_arguments() -> None:
    exp = load_experiment(EXP / "nano_costs.toml")
    assert [c.label for c in exp.select(["no-fcu", "dual"])] == ["dual", "no-fcu"]
    with pytest.raises(BenchError, match="did you mean no-fcu"):
        exp.select(["no-fcuu"])
    assert parse_shard("1/2") == (1, 2)
    for bad in ("2/2", "1-2", "0/0"):
        with pytest.raises(BenchError, match="--shard 0/2"):
            parse_shard(bad)
    shares = [[c.label for c in shard_of(list(exp.cells), r, 3)] for r in range(3)]
    assert sorted(label for share in shares for label in share) == sorted(exp.labels())


def test_pareto_front() -> None:
    # (cost, accuracy): the second point is dominated by the first; the third improves on the first.
    points = [(1.0, 70.0), (2.0, 65.0), (3.0, 80.0), (0.5, 50.0), (3.0, 75.0)]
    assert pareto_front(points) == [3, 0, 2]


# --- dry run ------------------------------------------------------------------------------------------


def test_dry_run_lists_cells_with_costs(tmp_path: Path) -> None:
    import conformer
    from conformer_bench.flops import costs_of

    out = tmp_path / "res"
    result = invoke(
        "ablate", str(EXP / "nano_grid.toml"), "--dry-run", "--output-dir", str(out), "--finetune"
    )
    assert result.exit_code == 0, result.output
    for label in ("dual", "num_med_block=1", "cnn-only", "no-fcu"):
        assert label in result.output
    params = costs_of(conformer.create_model(conformer.get_config("nano", branches="cnn"))).params.total
    assert f"{params / 1e6:.3f}" in result.output
    assert "digits, 3 steps, seeds [0, 1]" in result.output
    assert not out.exists(), "a dry run writes nothing"


def test_finetune_budget_is_steps_else_epochs() -> None:
    assert finetune_budget(FinetuneSettings(steps=3)) == "3 steps"
    assert finetune_budget(FinetuneSettings(epochs=2)) == "2 epochs"
    assert finetune_budget(FinetuneSettings()) == "default epochs"


def test_profile_mode_override_applies_to_every_cell(tmp_path: Path) -> None:
    exp = load_experiment(EXP / "nano_grid.toml", profile_overrides={"mode": "none"})
    assert exp.cells and all(cell.profile["mode"] == "none" for cell in exp.cells)
    plain = load_experiment(EXP / "nano_grid.toml")
    assert plain.cells[0].config_hash(False) != exp.cells[0].config_hash(False), "the override is a new run"
    result = invoke("ablate", str(EXP / "nano_grid.toml"), "--profile-mode", "fast", "--dry-run")
    assert result.exit_code == 2 and "--profile-mode 'fast' is not valid" in result.output


# --- isolation, resume and gathering through the runner (fast: costs only) ------------------------------


FAKE_PROFILE = {
    "schema": "conformer-bench.profile",
    "schema_version": 1,
    "status": "ok",
    "params": {"total": 1},
}


def _fake_ok(calls: list[str]) -> Any:
    def cell_fn(cell: Any, finetune: bool, reuse: Any, progress: Any) -> CellOutcome:
        calls.append(cell.label)
        return CellOutcome(ProfileRecord.from_dict(FAKE_PROFILE), [], Status.OK, None, None, 0.0)

    return cell_fn


def test_resume_skips_unchanged_and_reruns_changed(tmp_path: Path) -> None:
    src = tmp_path / "exp.toml"
    shutil.copy(EXP / "nano_costs.toml", src)
    out = tmp_path / "res"
    calls: list[str] = []
    exp = load_experiment(src, output_dir=out)
    run_grid(exp, list(exp.cells), out, finetune=False, resume=False, cell_fn=_fake_ok(calls), isolate=False)
    assert calls == ["dual", "cnn-only", "transformer-only", "no-fcu"]
    first = load_records(out)

    calls.clear()
    run_grid(exp, list(exp.cells), out, finetune=False, resume=True, cell_fn=_fake_ok(calls), isolate=False)
    assert calls == []
    assert load_records(out) == first

    # Change one cell's config: only that cell reruns under --resume.
    src.write_text(src.read_text().replace('coupling = "none"', 'coupling = "down"'))
    exp2 = load_experiment(src, output_dir=out)
    run_grid(exp2, list(exp2.cells), out, finetune=False, resume=True, cell_fn=_fake_ok(calls), isolate=False)
    assert calls == ["no-fcu"]
    after = load_records(out)
    assert after["no-fcu"].config["coupling"] == "down"
    assert after["dual"] == first["dual"]
    lines = (out / "cells.jsonl").read_text().splitlines()
    assert [json.loads(x)["label"] for x in lines] == ["dual", "cnn-only", "transformer-only", "no-fcu"]

    # Without --resume every selected cell reruns; --finetune changes the hash too.
    calls.clear()
    run_grid(
        exp2, exp2.select(["dual"]), out, finetune=False, resume=False, cell_fn=_fake_ok(calls), isolate=False
    )
    assert calls == ["dual"] and len(load_records(out)) == 4


def test_resume_reruns_failed_oom_and_nan_cells(tmp_path: Path) -> None:
    src = tmp_path / "exp.toml"
    shutil.copy(EXP / "nano_costs.toml", src)
    out = tmp_path / "res"
    exp = load_experiment(src, output_dir=out)
    bad = {"cnn-only": "failed", "transformer-only": "oom", "no-fcu": "nan"}

    def flaky(cell: Any, finetune: bool, reuse: Any, progress: Any) -> CellOutcome:
        outcome: CellOutcome = _fake_ok([])(cell, finetune, reuse, progress)
        if cell.label in bad:
            outcome = dataclasses.replace(outcome, status=Status(bad[cell.label]), reason="simulated")
        return outcome

    run_grid(exp, list(exp.cells), out, finetune=False, resume=False, cell_fn=flaky, isolate=False)
    assert {k: r.status for k, r in load_records(out).items()} == {"dual": "ok", **bad}

    dry = invoke("ablate", str(src), "--dry-run", "--resume", "--output-dir", str(out))
    assert dry.exit_code == 0, dry.output
    assert "ok, unchanged (skipped with --resume)" in dry.output
    assert dry.output.count("(reruns with --resume)") == 3 and "oom, unchanged" in dry.output

    calls: list[str] = []
    result = run_grid(
        exp, list(exp.cells), out, finetune=False, resume=True, cell_fn=_fake_ok(calls), isolate=False
    )
    assert calls == ["cnn-only", "transformer-only", "no-fcu"] and result.skipped == ["dual"]
    assert all(r.status == "ok" for r in load_records(out).values())


def test_adding_finetune_on_resume_reuses_the_recorded_profile(tmp_path: Path) -> None:
    src = tmp_path / "exp.toml"
    src.write_text((EXP / "nano_costs.toml").read_text() + '\n[finetune]\ndataset = "digits"\nsteps = 1\n')
    out = tmp_path / "res"
    exp = load_experiment(src, output_dir=out)
    run_grid(
        exp, exp.select(["dual"]), out, finetune=False, resume=False, cell_fn=_fake_ok([]), isolate=False
    )
    seen: list[tuple[bool, Any]] = []

    def cell_fn(cell: Any, finetune: bool, reuse: Any, progress: Any) -> CellOutcome:
        seen.append((finetune, reuse.to_dict() if reuse is not None else None))
        return _fake_ok([])(cell, finetune, reuse, progress)

    run_grid(exp, exp.select(["dual"]), out, finetune=True, resume=True, cell_fn=cell_fn, isolate=False)
    assert seen == [(True, FAKE_PROFILE)]
    record = load_records(out)["dual"]
    assert record.config_hash == exp.cell("dual").config_hash(True) != exp.cell("dual").config_hash(False)


def test_crash_oom_and_nan_are_recorded_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import conformer_bench.finetune as finetune_mod
    import conformer_bench.profiling as profiling_mod

    real_profile = profiling_mod.profile_variant

    def flaky_profile(cfg: Any, settings: Any, **kwargs: Any) -> dict[str, Any]:
        if cfg.branches == "cnn":
            raise RuntimeError("simulated crash\nwith a second line")
        if cfg.branches == "transformer":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_profile(cfg, settings, **kwargs)

    def nan_finetune(cfg: Any, settings: Any, **kwargs: Any) -> FinetuneRecord:
        if cfg.coupling == "none" and settings.seed == 1:
            record = {"status": "nan", "reason": "non-finite loss at step 2"}
        else:
            record = {"status": "ok", "final": {"top1": {"conv": 50.0, "trans": 40.0, "sum": 55.0}}}
        return FinetuneRecord.from_dict({"schema": "conformer-bench.finetune", "schema_version": 1, **record})

    monkeypatch.setattr(profiling_mod, "profile_variant", flaky_profile)
    monkeypatch.setattr(finetune_mod, "run_finetune", nan_finetune)
    src = tmp_path / "exp.toml"
    src.write_text(
        (EXP / "nano_costs.toml").read_text()
        + '\n[finetune]\nrun = true\ndataset = "digits"\nsteps = 1\nseeds = [0, 1]\n'
    )
    out = tmp_path / "res"
    # The failures are simulated by patching this process: run the cells in it (--no-isolate).
    result = invoke("ablate", str(src), "--output-dir", str(out), "--no-isolate")
    assert result.exit_code == 1, result.output
    records = load_records(out)
    assert records["dual"].status == "ok" and records["dual"].profile.params.total > 0
    assert len(records["dual"].finetune) == 2
    cnn = records["cnn-only"]
    assert (
        cnn.status == "failed" and cnn.reason == "profile: RuntimeError: simulated crash with a second line"
    )
    assert records["transformer-only"].status == "oom"
    nan = records["no-fcu"]
    assert nan.status == "nan" and nan.reason == "finetune seed 1: non-finite loss at step 2"
    assert nan.profile.status == "ok" and len(nan.finetune) == 2
    assert {r.isolation for r in records.values()} == {"inline"}
    summary = (out / "summary.md").read_text()
    assert "simulated crash" in summary and "| `no-fcu` |" in summary


# --- a real grid end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_grid_end_to_end_then_table(tmp_path: Path) -> None:
    out = tmp_path / "res"
    result = invoke("ablate", str(EXP / "nano_grid.toml"), "--finetune", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    lines = (out / "cells.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["label"] for r in records] == ["dual", "num_med_block=1", "cnn-only", "no-fcu"]
    for r in records:
        assert r["schema"] == "conformer-bench.cell" and r["schema_version"] == 2
        assert r["status"] == "ok", r["reason"]
        assert r["isolation"] == "process"  # the default: each cell in a fresh process
        assert "config" not in r and r["variant"]["config"]["name"] == "nano"  # the config once, in variant
        assert "config" not in r["profile"]["variant"] and all(
            "config" not in f["variant"] for f in r["finetune"]
        )
        assert set(r) >= {
            "label",
            "variant",
            "config_hash",
            "status",
            "reason",
            "profile",
            "finetune",
            "environment",
        }
        assert r["profile"]["schema"] == "conformer-bench.profile"
        assert [f["hyper"]["seed"] for f in r["finetune"]] == [0, 1]
        assert r["profile"]["throughput"]["infer"]["img_per_s"] > 0
    by = {r["label"]: r for r in records}
    assert by["cnn-only"]["profile"]["params"]["total"] < by["dual"]["profile"]["params"]["total"]

    import pandas as pd

    df = pd.read_csv(out / "summary.csv")
    assert list(df["label"]) == ["dual", "num_med_block=1", "cnn-only", "no-fcu"]
    base_params = by["dual"]["profile"]["params"]["total"]
    cnn_params = by["cnn-only"]["profile"]["params"]["total"]
    row = df.set_index("label").loc["cnn-only"]
    assert row["params"] == cnn_params
    assert math.isclose(row["d_params_m"], (cnn_params / base_params - 1) * 100, rel_tol=1e-9)
    assert df.set_index("label").loc["dual", "d_params_m"] == 0
    tops = [f["final"]["top1"]["sum"] for f in by["no-fcu"]["finetune"]]
    assert math.isclose(df.set_index("label").loc["no-fcu", "top1_sum"], sum(tops) / 2)
    assert math.isclose(
        df.set_index("label").loc["no-fcu", "top1_sum_std"],
        abs(tops[0] - tops[1]) / math.sqrt(2),
        abs_tol=1e-9,
    )
    for name in ("accuracy_vs_gmacs", "throughput_vs_params", "flops_by_component"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    md = (out / "summary.md").read_text()
    assert "Top-1 sum (%)" in md and "GMACs (paper)" in md and "Δ against the base cell" in md

    # table re-renders from the records alone.
    for png in (out / "figures").glob("*.png"):
        png.unlink()
    (out / "summary.csv").unlink()
    latex = invoke("table", str(out), "--format", "latex")
    assert latex.exit_code == 0, latex.output
    assert r"\begin{tabular}" in latex.stdout and "cnn-only" in latex.stdout
    assert (out / "summary.tex").exists() and (out / "summary.csv").exists()
    assert len(list((out / "figures").glob("*.png"))) == 3
    csv = invoke("table", str(out), "--format", "csv", "--base", "cnn-only")
    assert csv.exit_code == 0
    assert csv.stdout.splitlines()[0].startswith("label,variant,changes,status")
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = invoke("table", str(empty))
    assert nothing.exit_code == 2 and "run `conformer-bench ablate" in nothing.output


def test_seed_jobs_compute_what_one_seed_at_a_time_computes(tmp_path: Path) -> None:
    """[finetune] jobs runs seeds in parallel processes: same records, same cell hash."""
    text = (EXP / "nano_grid.toml").read_text(encoding="utf-8")
    text = text.replace("seeds = [0, 1]", "seeds = [0, 1, 2]").replace("run = false", "run = true")
    serial, parallel = tmp_path / "serial.toml", tmp_path / "parallel.toml"
    serial.write_text(text, encoding="utf-8")
    parallel.write_text(text.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2]\njobs = 2"), encoding="utf-8")
    one, two = load_experiment(serial), load_experiment(parallel)
    assert two.cells[0].seed_jobs == 2 and one.cells[0].seed_jobs == 1
    assert one.cells[0].config_hash(True) == two.cells[0].config_hash(True)
    for exp, out in ((one, tmp_path / "one"), (two, tmp_path / "two")):
        run_grid(exp, [exp.cells[0]], out, finetune=True, resume=False, isolate=False)
    records = [load_records(tmp_path / name)["dual"] for name in ("one", "two")]
    assert [r.status for r in records] == ["ok", "ok"]
    finals = [[(s.hyper.seed, s.final.top1, s.final.val_loss) for s in r.finetune] for r in records]
    assert finals[0] == finals[1] and [seed for seed, _, _ in finals[0]] == [0, 1, 2]
