"""Inference fast paths compute what the plain model computes; the model stays compile-friendly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conformer import Conformer, create_model, load_checkpoint, optimize_for_inference
from conformer.optimize import fold_batchnorm, fused_kernels_available

TOL = 1e-4  # relative, float32


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-default BatchNorm statistics and affine parameters, so that folding has something to fold."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.6 - 0.3)
    return model.eval()


def rel_diff(out: tuple, ref: tuple) -> float:
    worst = 0.0
    for a, b in zip(out, ref, strict=True):
        assert (a is None) == (b is None), "a head appeared or vanished"
        if a is not None:
            worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    return worst


def check_paths(model: Conformer, x: torch.Tensor, **kwargs: bool) -> float:
    with torch.inference_mode():
        ref = model(x)
        out = optimize_for_inference(model, **kwargs)(x)
    return rel_diff(out, ref)


def test_fold_batchnorm_matches_conv_then_bn() -> None:
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
    bn = randomize_norms(nn.Sequential(nn.BatchNorm2d(16, eps=1e-6)))[0]
    x = torch.randn(2, 8, 9, 9)
    folded = fold_batchnorm(conv, bn)
    assert folded.bias is not None
    with torch.no_grad():
        torch.testing.assert_close(folded(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"channels_last": False},
        {"fold_bn": False},
        {"fuse_pointwise": False},
        {"channels_last": False, "fold_bn": False},
    ],
    ids=["default", "nchw", "no-fold", "no-fuse", "nothing"],
)
def test_optimized_matches_plain_micro(kwargs: dict[str, bool]) -> None:
    model = randomize_norms(create_model("micro"))
    assert check_paths(model, torch.randn(2, 3, 32, 32), **kwargs) <= TOL


@pytest.mark.parametrize(
    "overrides",
    [
        {"branches": "cnn"},
        {"branches": "transformer"},
        {"coupling": "none"},
        {"coupling": "down"},
        {"fcu_down": "conv", "fcu_up": "deconv"},
        {"fcu_down": "maxpool", "fcu_up": "bilinear", "fcu_stages": (2, 3)},
        {"heads": "conv", "num_med_block": 2},
        {"heads": "trans", "pos_embed": True, "img_size": 32},
        {"fused_attn": True, "qkv_bias": True},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_optimized_matches_plain_toggles(overrides: dict) -> None:
    model = randomize_norms(create_model("nano", **overrides))
    assert check_paths(model, torch.randn(2, 3, 32, 32)) <= TOL


def test_optimized_matches_plain_tiny() -> None:
    model = randomize_norms(create_model("tiny"))
    assert check_paths(model, torch.randn(2, 3, 112, 112)) <= TOL


def test_release_fixture_reproduces_on_optimized_path(release_fixture: dict) -> None:
    model = create_model("micro")
    load_checkpoint(model, release_fixture["state_dict"])
    with torch.inference_mode():
        out = optimize_for_inference(model.eval())(release_fixture["input"])
    for mine, ref in (
        (out.conv_logits, release_fixture["conv_logits"]),
        (out.trans_logits, release_fixture["trans_logits"]),
    ):
        assert float((mine - ref).abs().max() / ref.abs().max()) <= TOL


def test_optimize_leaves_input_model_alone_and_is_inference_only() -> None:
    model = randomize_norms(create_model("nano")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = optimize_for_inference(model)
    assert model.training, "the caller's train/eval mode must be restored"
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not opt.training
    assert not any(p.requires_grad for p in opt.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in opt.modules()), "every BatchNorm should be folded"
    if fused_kernels_available("cpu"):
        with pytest.raises(RuntimeError, match="inference-only"):
            opt.train()


@pytest.mark.slow
def test_compiled_matches_plain_micro_in_one_graph() -> None:
    """``compile=True`` uses fullgraph=True (a graph break raises); the counters show one graph, no recompiles."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = randomize_norms(create_model("micro"))
    x, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        compiled = optimize_for_inference(model, compile=True)
        out = compiled(x)
        compiled(x2)  # same shapes: must reuse the graph
    assert rel_diff(out, ref) <= TOL
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["recompiles"]
    if fused_kernels_available("cpu"):  # weight freezing took effect: convs were prepacked for oneDNN
        assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] > 0


@pytest.mark.slow
def test_toggled_models_trace_to_one_graph() -> None:
    """Other branches of the forward code (single branch, deconv, pos-embed resampling) trace without breaks."""
    torch._dynamo.reset()
    models = [
        create_model("nano", branches="cnn"),
        create_model("nano", fcu_up="deconv", heads="trans", pos_embed=True, img_size=64),
    ]
    for model in models:
        for candidate in (model.eval(), optimize_for_inference(model, fuse_pointwise=False)):
            explanation = torch._dynamo.explain(candidate)(torch.randn(2, 3, 32, 32))
            assert explanation.graph_break_count == 0, explanation.break_reasons
            assert explanation.graph_count == 1


def test_fvcore_count_of_tiny_is_unchanged() -> None:
    from fvcore.nn import FlopCountAnalysis

    model = create_model("tiny").eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        assert analysis.total() == 5_250_307_712


def test_pool_first_fcu_down_matches_and_is_applied_only_where_exact() -> None:
    from conformer.layers import FCUDown
    from conformer.optimize import _PoolFirstFCUDown

    model = randomize_norms(create_model("micro"))
    x = torch.randn(2, 3, 32, 32)
    only_pool_first = optimize_for_inference(model, channels_last=False, fold_bn=False, fuse_pointwise=False)
    swapped = [m for m in only_pool_first.modules() if isinstance(m, _PoolFirstFCUDown)]
    assert swapped and not any(isinstance(m, FCUDown) for m in only_pool_first.modules())
    with torch.inference_mode():
        assert rel_diff(only_pool_first(x), model(x)) <= TOL
    for sampling in ("maxpool", "conv"):  # pooling does not commute with the projection here: left alone
        opt = optimize_for_inference(create_model("nano", fcu_down=sampling))
        assert not any(isinstance(m, _PoolFirstFCUDown) for m in opt.modules())
    kept = optimize_for_inference(model, pool_first=False)
    assert not any(isinstance(m, _PoolFirstFCUDown) for m in kept.modules())


@pytest.mark.skipif(not fused_kernels_available("cpu"), reason="needs oneDNN fused ops")
def test_prepacked_weights_follow_the_input_shape_and_survive_copies() -> None:
    """Packed weights are cached per input shape: a new batch or image size repacks, copies repack."""
    import copy

    from conformer.optimize import KernelChoices, _FusedConv, _FusedLinear, mkl_linear_available

    model = randomize_norms(create_model("micro"))
    linear = "mkl" if mkl_linear_available() else "onednn"
    opt = optimize_for_inference(model, kernels=KernelChoices(conv="fused", linear=linear))
    with torch.inference_mode():
        for shape in ((2, 3, 32, 32), (3, 3, 64, 64), (2, 3, 32, 32)):
            x = torch.randn(*shape)
            assert rel_diff(opt(x), model(x)) <= TOL
        convs = [m for m in opt.modules() if isinstance(m, _FusedConv)]
        assert convs and all(len(m._packed) == 2 for m in convs), "one packed weight per input shape"
        linears = [m for m in opt.modules() if isinstance(m, _FusedLinear)]
        assert linears and all(len(m._packed) == 2 for m in linears)
        clone = copy.deepcopy(opt)
        assert all(not m._packed for m in clone.modules() if isinstance(m, _FusedConv | _FusedLinear))
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(clone(x), opt(x), rtol=0, atol=0)
