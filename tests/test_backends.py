"""Deployment backends: every preset and toggle family exports to ONNX with a dynamic batch, and ONNX Runtime
and OpenVINO agree with eager on the same inputs; what a backend cannot run is recorded, never raised."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import conformer
from conformer_bench.backends import PrepareOptions, get_backend, parse_backends, require_installed
from conformer_bench.cli import app
from conformer_bench.errors import BenchError
from conformer_bench.precision import precision_support
from conformer_bench.records import Status
from conformer_bench.speed import max_rel_diff

# ONNX Runtime and OpenVINO run in this file: `make test` gives it a pytest process of its own (Makefile).
pytestmark = pytest.mark.native_backends

runner = CliRunner()
FP32_TOLERANCE = 1e-4  # max |Δlogit| / max |logit|, worst head (measured 3e-7 to 2e-6)
BF16_TOLERANCE = 5e-2  # the project's bf16 tolerance

# Every value of every toggle family, on nano (three coupled blocks), in eight exports.
TOGGLE_CASES: dict[str, dict[str, Any]] = {
    "release": {},
    "cnn-only": {"branches": "cnn"},
    "transformer-only": {"branches": "transformer"},
    "no-fcu": {"coupling": "none"},
    "couple-down": {"coupling": "down"},
    "couple-up": {"coupling": "up"},
    "maxpool-bilinear-pos-conv-head-med": {
        "fcu_down": "maxpool",
        "fcu_up": "bilinear",
        "pos_embed": True,
        "heads": "conv",
        "num_med_block": 1,
    },
    "conv-deconv-sdpa-trans-head-stage3": {
        "fcu_down": "conv",
        "fcu_up": "deconv",
        "fused_attn": True,
        "heads": "trans",
        "fcu_stages": (3,),
    },
}


def _agreement(model: Any, backend: str, precision: str, img_size: int) -> tuple[float, float, Any]:
    """(max rel error, top-1 agreement of the summed heads) of ``backend`` against eager at two batch sizes."""
    prepared = get_backend(backend).prepare(model, precision, PrepareOptions(img_size=img_size, threads=1))
    assert prepared.status == Status.OK, prepared.reason
    assert prepared.run is not None and prepared.kernels
    worst, same, total = 0.0, 0, 0
    for batch in (1, 3):  # the exported batch is dynamic: neither is the traced batch of 2
        x = torch.randn(
            batch, model.cfg.in_chans, img_size, img_size, generator=torch.Generator().manual_seed(batch)
        )
        with torch.inference_mode():
            ref, out = model(x), prepared.run(x)
        assert [t is None for t in out] == [t is None for t in ref], "the same heads are present"
        worst = max(worst, max_rel_diff(out, ref))
        same += int((out.logits.argmax(1) == ref.logits.argmax(1)).sum())
        total += batch
    return worst, same / total, prepared


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TOGGLE_CASES))
def test_every_toggle_family_exports_and_agrees_with_eager(case: str) -> None:
    torch.manual_seed(0)
    model = conformer.create_model("nano", **TOGGLE_CASES[case]).eval()
    error, top1, prepared = _agreement(model, "onnxruntime", "fp32", 32)
    assert error <= FP32_TOLERANCE and top1 == 1.0
    assert prepared.export is not None and prepared.export.opset and prepared.export.output_names
    error, top1, _ = _agreement(model, "openvino", "fp32", 32)
    assert error <= FP32_TOLERANCE and top1 == 1.0


def _shallow(name: str) -> Any:
    """The preset's widths, heads, patch size and med blocks at depth 3 (one coupled block per stage)."""
    return replace(conformer.get_config(name), depth=3, name=f"{name}-depth3")


@pytest.mark.slow
@pytest.mark.parametrize("name", conformer.list_models())
def test_every_preset_exports_and_agrees_with_eager(name: str) -> None:
    """Each preset's layers (widths, heads, patch size) at depth 3, at the smallest image its patch allows."""
    cfg = _shallow(name)
    torch.manual_seed(0)
    model = conformer.create_model(cfg).eval()
    img = 2 * cfg.patch_size
    error, top1, _ = _agreement(model, "onnxruntime", "fp32", img)
    assert error <= FP32_TOLERANCE and top1 == 1.0


@pytest.mark.slow
def test_a_full_depth_preset_exports_and_agrees_with_eager() -> None:
    """tiny as released (12 blocks), at 32²: the whole graph, not a shallow twin."""
    torch.manual_seed(0)
    model = conformer.create_model("tiny").eval()
    error, top1, _ = _agreement(model, "onnxruntime", "fp32", 32)
    assert error <= FP32_TOLERANCE and top1 == 1.0


def test_openvino_bf16_is_run_where_the_cpu_has_it_and_reported_otherwise() -> None:
    from conformer_bench.precision import precision_support

    torch.manual_seed(0)
    model = conformer.create_model("nano").eval()
    prepared = get_backend("openvino").prepare(model, "bf16", PrepareOptions(img_size=32, threads=1))
    assert prepared.precision_name == "bf16"
    if not precision_support("bf16", "cpu").supported:
        assert prepared.status == Status.UNSUPPORTED and "bf16" in str(prepared.reason)
        return
    error, _, prepared = _agreement(model, "openvino", "bf16", 32)
    assert error <= BF16_TOLERANCE and "bf16" in str(prepared.kernels)


def test_the_export_is_cached_per_config_and_weights() -> None:
    from conformer_bench.backends.onnx_export import export_onnx

    torch.manual_seed(0)
    model = conformer.create_model("nano").eval()
    first = export_onnx(model, 32)
    again = export_onnx(model, 32)
    assert again.path == first.path and again.cache_hit and again.export_s == 0.0
    with torch.no_grad():
        model.conv_head.bias.add_(1.0)
    assert export_onnx(model, 32).path != first.path, "other weights, another file"
    assert export_onnx(conformer.create_model("nano", coupling="none").eval(), 32).path != first.path


def test_what_a_backend_cannot_run_is_unsupported_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from conformer_bench.backends import onnx_export

    model = conformer.create_model("nano").eval()
    options = PrepareOptions(img_size=32, threads=1)
    bf16 = get_backend("onnxruntime").prepare(model, "bf16", options)
    assert bf16.status == Status.UNSUPPORTED and "fp32 only" in str(bf16.reason) and bf16.run is None
    on_gpu = get_backend("openvino").prepare(model, "fp32", replace(options, device="cuda"))
    assert on_gpu.status == Status.UNSUPPORTED and "CPU" in str(on_gpu.reason)

    def no_export(model: Any, img_size: int) -> Any:
        raise RuntimeError("no ONNX translation for aten::made_up")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    failed = get_backend("onnxruntime").prepare(model, "fp32", options)
    assert failed.status == Status.UNSUPPORTED and "aten::made_up" in str(failed.reason)


def test_speed_runs_the_backends_beside_eager_and_checks_their_logits() -> None:
    args = ["speed", "-v", "nano", "--img-size", "32", "-b", "2", "--rounds", "3", "--warmup", "0", "-q"]
    args += ["--matmul-size", "256", "--agreement-images", "4", "--paths", "plain,optimized"]
    args += [
        "--backend",
        "eager,onnxruntime,openvino",
        "--breakdown",
        "--breakdown-rounds",
        "3",
        "-f",
        "json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    paths = record["paths"]
    assert paths["onnxruntime"]["backend"] == "onnxruntime" and paths["plain"]["backend"] == "eager"
    for name in ("onnxruntime", "openvino"):
        entry = paths[name]
        assert entry["status"] == "ok" and entry["max_rel_diff_vs_plain"] <= FP32_TOLERANCE
        assert entry["top1_agreement_vs_plain"]["sum"] == 1.0 and entry["img_per_s"] > 0
        assert entry["speedup_vs_plain"]["ratio"] > 0 and entry["export"]["output_names"]
        assert entry["breakdown"]["status"] == "unsupported"
    assert paths["openvino"]["precision_name"] == "f32"
    assert paths["onnxruntime-bf16"]["status"] in ("unsupported",)
    assert paths["plain"]["breakdown"]["status"] == "ok" and paths["optimized"]["breakdown"]["status"] == "ok"
    table = runner.invoke(app, [*args[:-2], "-f", "md"]).stdout
    assert "fp32 (openvino: f32)" in table and "time by component of plain" in table


def test_a_missing_deploy_package_is_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    for command in (
        ["speed", "-v", "nano", "--backend", "eager,onnxruntime"],
        ["profile", "-v", "nano", "--backend", "onnxruntime"],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "pip install -e .[deploy]" in lines[0]
    with pytest.raises(BenchError, match="not a backend"):
        parse_backends("eager,tensorrt")
    require_installed(("eager",))  # eager needs nothing beyond torch


def test_profile_runs_inference_on_a_backend_and_records_what_it_cannot_run() -> None:
    args = ["profile", "-v", "nano", "--img-size", "32", "--mode", "infer", "--iters", "2", "-b", "2", "-q"]
    result = runner.invoke(app, [*args, "--backend", "onnxruntime", "-f", "json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (
        record["throughput"]["infer"]["path"] == "onnxruntime"
        and record["settings"]["backend"] == "onnxruntime"
    )
    assert "onnxruntime" in record["throughput"]["infer"]["precision"]
    result = runner.invoke(app, [*args, "--backend", "onnxruntime", "--precision", "bf16", "-f", "json"])
    support = precision_support("bf16", "cpu")
    if not support.supported:  # refused before a backend is asked: one line that names the fix
        assert result.exit_code == 2 and "use --precision fp32" in result.output, result.output
        assert str(support.reason) in result.output
        return
    assert result.exit_code == 1, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "unsupported" and "fp32 only" in record["reason"]
