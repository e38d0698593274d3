"""bf16 inference: agreement with fp32 where the CPU has native bf16, and honest reporting where it has not."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conformer import create_model, optimize_for_inference
from conformer_bench import precision
from conformer_bench.cli import app
from conformer_bench.records import SpeedRecord
from conformer_bench.speed import render

SUPPORT = precision.precision_support("bf16", "cpu")
needs_bf16 = pytest.mark.skipif(not SUPPORT.supported, reason=f"{SUPPORT.reason}")
# Logits error per head: ‖bf16 - fp32‖ / ‖fp32‖ (rms) and max |bf16 - fp32| / max |fp32| (max). Measured on
# randomised-BatchNorm models, fused path: rms 0.6-1.2e-2, max 0.9-1.7e-2 (micro's conv head is the worst;
# rounding the weights alone to bf16 gives 7e-3 of it, so float32 norms or heads cannot bring it under 1e-2);
# micro fine-tuned on digits: rms 1.65e-2, max 3.0e-2, with 100 % top-1 agreement.
# The unfused path rounds conv, ReLU and residual add apart (three roundings where the fused op has one).
RMS_TOL, MAX_TOL = 1.5e-2, 2e-2
UNFUSED_RMS_TOL, UNFUSED_MAX_TOL = 1.5e-2, 2.5e-2
runner = CliRunner()


def randomize_norms(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
    return model.eval()


def errors_and_agreement(
    variant: str, img_size: int, batch: int, **kwargs: bool
) -> tuple[float, float, float]:
    """(worst rms relative error, worst max relative error, top-1 agreement of the summed heads)."""
    model = randomize_norms(create_model(variant))
    x = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
        out = optimize_for_inference(model, dtype=torch.bfloat16, **kwargs)(x)
    rms = worst = 0.0
    for a, b in zip(out, ref, strict=True):
        assert (a is None) == (b is None), "a head appeared or vanished"
        if b is not None:
            assert a.dtype == torch.float32, "logits come back in float32"
            rms = max(rms, float((a - b).norm() / b.norm()))
            worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    agreement = float((out.logits.argmax(1) == ref.logits.argmax(1)).float().mean())
    return rms, worst, agreement


@needs_bf16
@pytest.mark.parametrize(
    ("variant", "img_size", "kwargs"),
    [("micro", 32, {}), ("micro", 32, {"fuse_pointwise": False}), ("tiny", 112, {})],
    ids=["micro", "micro-unfused", "tiny"],
)
def test_bf16_logits_agree_with_fp32(variant: str, img_size: int, kwargs: dict[str, bool]) -> None:
    rms, worst, agreement = errors_and_agreement(variant, img_size, 4 if variant == "tiny" else 8, **kwargs)
    rms_tol, max_tol = (UNFUSED_RMS_TOL, UNFUSED_MAX_TOL) if kwargs else (RMS_TOL, MAX_TOL)
    assert rms <= rms_tol and worst <= max_tol, (
        f"bf16 logits off by {rms:.1e} rms, {worst:.1e} max (relative)"
    )
    assert agreement >= 0.75, f"top-1 agreement {agreement:.0%}"  # random-init margins are thin


@needs_bf16
def test_bf16_path_runs_bf16_kernels_with_float32_heads() -> None:
    opt = optimize_for_inference(randomize_norms(create_model("nano")), dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in opt.named_parameters()}
    heads = {n for n in dtypes if ".conv_head." in n or ".trans_head." in n or ".trans_norm." in n}
    assert heads and all(dtypes[n] == torch.float32 for n in heads)
    assert all(dtypes[n] == torch.bfloat16 for n in dtypes if n not in heads)
    names = {type(m).__name__ for m in opt.modules()}
    assert {"_FusedConv", "_FusedLinear"} <= names, "bf16 should use the fused oneDNN modules"


def test_precision_support_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16_flags", lambda: ())
    support = precision.precision_support("bf16", "cpu")
    assert not support.supported and "not supported on this CPU" in (support.reason or "")
    monkeypatch.setattr(precision, "native_bf16_flags", lambda: ("avx512_bf16",))
    monkeypatch.setattr(precision, "onednn_bf16", lambda: False)
    support = precision.precision_support("bf16", "cpu")
    assert not support.supported and "oneDNN" in (support.reason or "")
    monkeypatch.setattr(precision, "onednn_bf16", lambda: True)
    support = precision.precision_support("bf16", "cpu")
    assert support.supported and support.reason is None and "AVX512-BF16" in support.kernels
    assert precision.precision_support("fp32", "cpu").supported


SPEED = ["speed", "-v", "nano", "--img-size", "32", "-b", "2", "--rounds", "3", "--warmup", "0"]
SPEED += ["--matmul-size", "256", "-q", "--paths", "plain,optimized", "--agreement-images", "4"]


def test_speed_reports_bf16_as_unsupported_without_timing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16_flags", lambda: ())
    result = runner.invoke(app, [*SPEED, "--format", "json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "ok", "an unsupported precision is reported, not a failure"
    assert set(record["ceilings"]) == {"fp32"}, "no bf16 ceiling is timed on a CPU without bf16"
    for name in ("plain-bf16", "optimized-bf16"):
        entry = record["paths"][name]
        assert entry["status"] == "unsupported" and "not supported on this CPU" in entry["reason"]
        assert "samples_s" not in entry and "img_per_s" not in entry
    assert not record["precision_support"]["bf16"]["supported"]
    table = render(SpeedRecord.from_dict(record), "table")
    assert "unsupported: bf16 not supported on this CPU" in table


@needs_bf16
def test_speed_times_bf16_against_its_own_ceiling() -> None:
    result = runner.invoke(app, [*SPEED, "--format", "json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert set(record["ceilings"]) == {"fp32", "bf16"} and record["ceiling"] == record["ceilings"]["fp32"]
    assert "bf16" in record["ceilings"]["bf16"]["op"] and len(record["ceilings"]["bf16"]["samples_s"]) == 3
    assert list(record["paths"]) == ["plain", "optimized", "plain-bf16", "optimized-bf16"]
    for name, entry in record["paths"].items():
        assert entry["status"] == "ok", entry["reason"]
        q = entry["precision"]
        assert q == ("bf16" if name.endswith("-bf16") else "fp32") and entry["ceiling_precision"] == q
        assert entry["ceiling_share"] == pytest.approx(
            entry["achieved_gflop_s"] / record["ceilings"][q]["gflop_s"]
        )
        assert q in entry["kernels"]
        agreement = entry["top1_agreement_vs_plain"]
        assert set(agreement) == {"conv", "trans", "sum"} and all(0 <= v <= 1 for v in agreement.values())
    assert record["paths"]["plain"]["max_rel_diff_vs_plain"] == 0.0
    assert record["paths"]["plain"]["top1_agreement_vs_plain"]["sum"] == 1.0
    assert 0 < record["paths"]["optimized-bf16"]["max_rel_diff_vs_plain"] <= MAX_TOL
    assert 0 < record["paths"]["optimized-bf16"]["rms_rel_diff_vs_plain"] <= RMS_TOL
    assert "oneDNN" in record["paths"]["optimized-bf16"]["kernels"]


def test_finetune_record_compares_bf16_inference_with_fp32() -> None:
    from conformer import get_config
    from conformer_bench.finetune import FinetuneSettings, run_finetune

    settings = FinetuneSettings(
        steps=2, batch_size=32, train_size=64, val_size=40, device="cpu", bf16_inference=True
    )
    record = run_finetune(get_config("nano"), settings, show_progress=False)
    check = record.final.bf16_inference
    assert check is not None
    if not SUPPORT.supported:
        assert check.status == "unsupported" and check.reason is not None and "not supported" in check.reason
        return
    assert check.status == "ok" and check.reason is None and check.count == 40
    assert check.top1_fp32 == record.final.top1, "the fp32 side is the model the record evaluated"
    for per_head in (check.top1_bf16, check.top1_agreement):
        assert per_head is not None and set(per_head) == {"conv", "trans", "sum"}
        for value in per_head.values():
            assert value is not None and 0 <= value <= 100
            assert (value * 40 / 100) == pytest.approx(round(value * 40 / 100))
    assert check.max_rel_diff is not None and 0 < check.max_rel_diff < 0.1


def test_speed_bf16_only_on_a_cpu_without_bf16_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16_flags", lambda: ())
    result = runner.invoke(app, [*SPEED, "--precision", "bf16"])
    assert result.exit_code != 0 and result.output.startswith("error: --precision: nothing to time")
    assert "Traceback" not in result.output and "--precision fp32,bf16" in result.output


@needs_bf16
@pytest.mark.slow
def test_speed_compiled_bf16_path() -> None:
    torch._dynamo.reset()
    args = [a if a != "plain,optimized" else "plain,compiled" for a in SPEED]
    record = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    compiled = record["paths"]["compiled-bf16"]
    assert compiled["status"] == "ok", compiled["reason"]
    assert compiled["compile_s"] == compiled["first_call_s"] > 0 and "Inductor" in compiled["kernels"]
    assert 0 < compiled["max_rel_diff_vs_plain"] <= MAX_TOL
