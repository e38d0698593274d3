"""Closed-form costs equal the counts on a built model, exactly; cost-only paths build nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import conformer
from conformer_bench.ablate.dry_run import dry_run_lines
from conformer_bench.ablate.experiment import load_experiment
from conformer_bench.ablate.runner import run_grid
from conformer_bench.ablate.store import load_records
from conformer_bench.cli import app
from conformer_bench.costs import Costs
from conformer_bench.flops import CACHE_ENV, costs_of
from conformer_bench.profiling import ProfileSettings, profile_variant

ROOT = Path(__file__).resolve().parent.parent
EXP = Path(__file__).parent / "fixtures" / "experiments"

# (preset, overrides, image size): every toggle's code path, at sizes that count in seconds.
CASES = [
    ("micro", {}, 64),
    ("tiny", {}, 64),
    ("micro", {"coupling": "none"}, 64),
    ("micro", {"branches": "cnn"}, 64),
    ("micro", {"branches": "transformer", "fused_attn": True}, 64),
    ("micro", {"num_med_block": 0}, 32),
    ("micro", {"pos_embed": True, "fcu_up": "deconv"}, 64),  # position embedding at its own size
    ("micro", {"pos_embed": True, "fcu_up": "deconv"}, 32),  # ... and resampled
    ("micro", {"fcu_down": "conv", "fcu_up": "bilinear", "heads": "trans"}, 64),
    ("micro", {"coupling": "up", "fcu_stages": (2, 3), "heads": "conv", "qkv_bias": False}, 64),
    ("micro", {"fcu_down": "maxpool", "patch_size": 32, "num_med_block": 2}, 64),
]


def _case_id(case: tuple) -> str:
    name, overrides, size = case
    return ",".join([name, *(f"{k}={v}" for k, v in overrides.items()), f"{size}px"])


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_closed_form_equals_the_built_model(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")  # count, do not read a record back
    name, overrides, size = case
    cfg = conformer.get_config(name, **overrides)
    torch.manual_seed(0)
    model = conformer.create_model(cfg)
    built = costs_of(model, size, exact=True, cross_check=True)
    fast = costs_of(cfg, size)
    assert fast.params == built.params and fast.flops is None and built.flops is not None
    for key in ("img_size", "fvcore_total", "paper_macs", "by_operator", "by_component"):
        assert getattr(fast, key) == getattr(built, key) == getattr(built.flops, key), key
    # The whole record too: uncounted operators (traced twin) and the cross-check (meta tensors).
    assert costs_of(cfg, size, exact=True, cross_check=True) == built


@pytest.mark.parametrize("name", ["tiny", "small", "small-p32", "base"])
def test_closed_form_equals_the_release_presets_on_meta(name: str) -> None:
    from conformer_bench.flops import _cross_check, build_on_meta

    cfg = conformer.get_config(name)
    model = build_on_meta(cfg).eval()
    assert costs_of(cfg).params == costs_of(model).params
    cross = _cross_check(model, torch.zeros(1, 3, 224, 224, device="meta"))
    assert costs_of(cfg, 224).paper_macs == cross.macs


def test_flop_records_are_cached_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cfg = conformer.get_config("nano", coupling="down")

    def exact(size: int) -> Costs:
        return costs_of(cfg, size, exact=True, cross_check=True)

    counted = exact(32)
    assert counted.flops is not None and counted.flops.cross_check is not None
    (path,) = tmp_path.glob("*.json")
    assert exact(32) == counted  # read back
    path.write_text("{not json")
    assert exact(32) == counted  # an unreadable entry is counted again
    assert exact(64) != counted and len(list(tmp_path.glob("*.json"))) == 2


def test_costs_only_profile_builds_nothing_and_records_the_same() -> None:
    cfg = conformer.get_config("micro", pos_embed=True)
    settings = ProfileSettings(mode="none", img_size=64, device="cpu")
    fast = profile_variant(cfg, settings)
    built = profile_variant(cfg, settings, build=lambda: conformer.create_model(cfg))
    assert fast.params == built.params and fast.flops == built.flops
    assert fast.settings == built.settings and fast.status == "ok"


def test_costs_only_cells_run_inline(tmp_path: Path) -> None:
    exp = load_experiment(EXP / "nano_costs.toml")
    run_grid(exp, list(exp.cells), tmp_path, finetune=False, resume=False)  # isolate: by default
    records = load_records(tmp_path)
    assert set(records) == {"dual", "cnn-only", "transformer-only", "no-fcu"}
    assert all(r.status == "ok" and r.isolation == "inline" for r in records.values())
    for cell in exp.cells:
        profile = records[cell.label].profile
        assert profile is not None and profile.params == costs_of(cell.config).params


def test_dry_run_prints_the_count_first_and_streams(tmp_path: Path) -> None:
    exp = load_experiment(ROOT / "experiments" / "paper.toml", output_dir=tmp_path / "out")
    cells = list(exp.cells)
    lines = dry_run_lines(exp, cells, finetune=False, resume=False, total=len(cells))
    assert next(lines).startswith(f"paper (dry run, {len(cells)} cells")  # before any row is counted
    rows = [line for line in lines if line.split()[0].isdigit()]
    assert len(rows) == len(cells)
    base = conformer.get_config("small", img_size=224)
    costs = costs_of(base, 224)
    assert f"{costs.params.total / 1e6:.3f}" in rows[0]
    assert f"{costs.paper_macs / 1e9:.4g}" in rows[0]


def test_large_dry_run_lists_every_cell(tmp_path: Path) -> None:
    grid = tmp_path / "wide.toml"
    grid.write_text(
        'name = "wide"\naxes_mode = "product"\n[base]\nvariant = "nano"\n[profile]\nimg_size = 32\n'
        "[axes]\nembed_dim = [16, 32, 48, 64]\nnum_med_block = [0, 1, 2, 3, 4]\n"
        'coupling = ["both", "down", "up"]\nfcu_up = ["nearest", "bilinear", "deconv"]\n'
    )
    total = len(load_experiment(grid).cells)  # cells that compute the same as another are dropped
    assert total > 100
    result = CliRunner().invoke(app, ["ablate", str(grid), "--dry-run", "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"wide (dry run, {total} cells, output {tmp_path / 'o'})"
    assert sum(line.split()[0].isdigit() for line in result.output.splitlines()) == total
    limited = CliRunner().invoke(app, ["ablate", str(grid), "--dry-run", "--limit", "3"])
    assert limited.exit_code == 0 and f"first 3 of {total} cells" in limited.output


def test_presets_and_costs_import_without_torch() -> None:
    code = (
        "import sys, conformer; from conformer_bench.flops import costs_of; "
        "assert costs_of(conformer.get_config('tiny')).params.total == 23_524_704; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
