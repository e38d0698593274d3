"""Time by component: the components cover the model, the hooks change nothing and leave nothing behind,
the figures add up, and the sum-vs-forward check fires on what it claims to catch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import conformer
from conformer.optimize import optimize_for_inference
from conformer_bench.breakdown import (
    COMPONENTS,
    REST,
    ROWS,
    BreakdownSettings,
    _Clock,
    _ComponentHooks,
    _summarise,
    component_macs,
    component_modules,
    measure_breakdown,
    note,
    profile_rows,
    rows,
)
from conformer_bench.cli import app
from conformer_bench.records import Status
from conformer_bench.records.breakdown import Breakdown, BreakdownCeiling, ComponentTime

runner = CliRunner()
VARIANTS: dict[str, dict[str, Any]] = {
    "release": {},
    "cnn-only": {"branches": "cnn"},
    "transformer-only": {"branches": "transformer"},
    "med-deconv-conv": {"num_med_block": 2, "fcu_up": "deconv", "fcu_down": "conv"},
    "trans-head": {"heads": "trans"},
}


def _no_hooks(model: Any) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_parameter_is_inside_one_component(name: str) -> None:
    model = conformer.create_model("nano", **VARIANTS[name])
    roots = component_modules(model)
    owned = {id(p) for _, module in roots.values() for p in module.parameters()}
    loose = [
        n for n, p in model.named_parameters() if id(p) not in owned and n not in ("cls_token", "pos_embed")
    ]
    assert not loose, f"parameters outside every component: {loose}"
    names = sorted(roots)
    assert not any(a != b and b.startswith(a + ".") for a in names for b in names), "components do not nest"


@pytest.mark.parametrize("name", ["release", "med-deconv-conv", "trans-head"])
def test_component_macs_add_up_to_the_paper_count(name: str) -> None:
    from conformer_bench.flops import costs_of

    model = conformer.create_model("nano", **VARIANTS[name])
    macs = component_macs(model, 32)
    assert sum(macs.values()) == costs_of(model, 32, exact=True).paper_macs
    assert macs[REST] == 0, "the glue outside the components runs no conv, linear or matmul"
    assert macs["fcu_down"] > 0 and macs["fcu_up"] > 0


def test_hooks_change_no_logits_and_are_gone_after_the_breakdown() -> None:
    torch.manual_seed(0)
    model = conformer.create_model("nano").eval()
    x = torch.randn(2, 3, 32, 32)
    hooks = _ComponentHooks(component_modules(model), _Clock("cpu"))
    with torch.inference_mode():
        plain = model(x)
        with hooks.attached():
            hooked = model(x)
        times = hooks.take()
    assert all(torch.equal(a, b) for a, b in zip(plain, hooked, strict=True) if a is not None)
    assert set(times) == set(COMPONENTS) and all(t > 0 for t in times.values())
    assert hooks.calls == len(component_modules(model))  # nano calls each component root once
    assert _no_hooks(model)


@pytest.mark.parametrize("path", ["plain", "optimized", "optimized-bf16"])
def test_a_breakdown_of_each_eager_path_is_complete_and_consistent(path: str) -> None:
    from conformer_bench.precision import precision_support

    if path.endswith("bf16") and not precision_support("bf16", "cpu").supported:
        pytest.skip("no native bf16 on this CPU")
    torch.manual_seed(0)
    model = conformer.create_model("nano").eval()
    run = model
    if path != "plain":
        run = optimize_for_inference(model, dtype=torch.bfloat16 if path.endswith("bf16") else None)
    macs = component_macs(model, 32)
    ceiling = BreakdownCeiling(precision="fp32", gflop_s=100.0, op="test")
    with torch.inference_mode():
        b = measure_breakdown(run, torch.randn(2, 3, 32, 32), BreakdownSettings(rounds=3), macs, ceiling)
    assert b.status is Status.OK and b.ok and list(b.components or {}) == list(ROWS)
    comps = b.components or {}
    assert all(comps[c].seconds > 0 for c in COMPONENTS)
    assert b.sum_s == pytest.approx(sum(c.seconds for c in comps.values()))
    assert b.unattributed_s == pytest.approx((b.forward_s or 0) - (b.sum_s or 0))
    assert sum(c.share_of_macs for c in comps.values()) == pytest.approx(1.0)
    assert comps["cnn"].gflop_s == pytest.approx(2 * macs["cnn"] * 2 / comps["cnn"].seconds / 1e9)
    assert comps["cnn"].ceiling_share == pytest.approx((comps["cnn"].gflop_s or 0) / 100.0)
    assert len(b.forward_samples_s or []) == len(b.instrumented_samples_s or []) == 3
    assert (b.hook_calls or 0) > 0 and (b.hook_cost_s or 0) >= 0
    d = json.loads(json.dumps(b.to_dict()))
    assert d["status"] == "ok" and d["ceiling"] == {"precision": "fp32", "gflop_s": 100.0, "op": "test"}
    assert Breakdown.from_dict(d).to_dict() == d
    assert _no_hooks(run) and _no_hooks(model)


def _fake_rounds(glue: float) -> dict[str, Any]:
    """Three rounds of a forward of 100 ms: six components of 15 ms, 10 ms of 'rest', and ``glue`` ms that
    the uninstrumented forward spends but the instrumented one does not show."""
    per_comp = {c: [0.015] * 3 for c in COMPONENTS}
    per_comp[REST] = [0.010] * 3
    return {
        "per_comp": per_comp,
        "plain_s": [0.100 + glue / 1e3] * 3,
        "inst_s": [0.100] * 3,
    }


@pytest.mark.parametrize(("glue_ms", "within"), [(0.0, True), (4.0, True), (20.0, False)])
def test_the_sum_check_fires_past_five_percent_and_is_silent_below(glue_ms: float, within: bool) -> None:
    rounds = _fake_rounds(glue_ms)
    macs = dict.fromkeys(ROWS, 1000)
    result = _summarise(
        rounds["per_comp"], rounds["plain_s"], rounds["inst_s"], (1.0, 1.0, 1.0), 10, 0.0, 2, macs, None,
        BreakdownSettings(),
    )  # fmt: skip
    assert result.within_tolerance is within
    assert result.unattributed_s == pytest.approx(glue_ms / 1e3)


def test_profile_and_speed_show_the_breakdown() -> None:
    args = ["profile", "-v", "nano", "--img-size", "32", "--mode", "infer", "--iters", "2", "-b", "2", "-q"]
    result = runner.invoke(app, [*args, "--breakdown", "-f", "json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["breakdown"]["status"] == "ok" and record["breakdown"]["ceiling"]["precision"] == "fp32"
    table = runner.invoke(app, [*args, "--breakdown"]).stdout
    assert "time by component" in table and "FCU down" in table and "overhead" in table
    result = runner.invoke(app, [*args, "--breakdown", "--compile"])
    assert result.exit_code == 2 and "torch.compile" in result.stderr
    plain = runner.invoke(app, [*args, "-f", "json"])
    assert "breakdown" not in json.loads(plain.stdout), "no breakdown unless asked for"


def test_a_breakdown_without_a_ceiling_or_measurement_writes_what_it_always_wrote() -> None:
    rounds = _fake_rounds(0.0)
    macs = dict.fromkeys(ROWS, 1000)
    b = _summarise(
        rounds["per_comp"], rounds["plain_s"], rounds["inst_s"], (1.1, 1.0, 1.2), 10, 0.0, 2, macs, None,
        BreakdownSettings(),
    )  # fmt: skip
    d = b.to_dict()
    assert d["ceiling"] == {} and d["overhead"]["ratio"] == pytest.approx(0.1)
    assert "gflop_s" in d["components"]["cnn"] and "ceiling_share" not in d["components"]["cnn"]
    unsupported = Breakdown(status=Status.UNSUPPORTED, reason="one graph")
    assert unsupported.to_dict() == {"status": "unsupported", "reason": "one graph"}
    assert not unsupported.ok and profile_rows(unsupported) == []


def _committed_breakdowns() -> list[dict[str, Any]]:
    """Every ``breakdown`` object in the committed records (profiles in cells, speed paths)."""
    root = Path(__file__).resolve().parents[1] / "results"
    found: list[dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, v in value.items():
                if key == "breakdown" and isinstance(v, dict):
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for path in sorted(root.rglob("*.json")):
        walk(json.loads(path.read_text()))
    for path in sorted(root.rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                walk(json.loads(line))
    return found


def test_every_committed_breakdown_reads_typed_and_writes_back_the_same() -> None:
    found = _committed_breakdowns()
    assert any(d.get("status") == "ok" for d in found) and any(
        d.get("status") == "unsupported" for d in found
    )
    for d in found:
        b = Breakdown.from_dict(d)
        assert json.dumps(b.to_dict()) == json.dumps(d)
        if b.ok:
            assert all(isinstance(b.component(c), ComponentTime) for c in ROWS)
            assert b.overhead is not None and b.ceiling is not None and b.ceiling.precision
            assert rows(b)[-1][0] == "uninstrumented forward" and "overhead" in note(b)
