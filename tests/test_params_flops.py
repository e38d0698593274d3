"""Parameter and FLOP counting: components add up, conventions hold, nothing is dropped silently."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import conformer
from conformer_bench.flops import (
    PAPER_OPERATORS,
    SDPA_OP,
    build_on_meta,
    costs_of,
    sdpa_flop_jit,
)
from conformer_bench.params import COMPONENTS, component_of
from conformer_bench.records import FlopCounts

RELEASE_PARAMS = {"tiny": 23_524_704, "small": 37_673_424, "small-p32": 38_853_072, "base": 83_289_136}
# Figures of the release at 224², eval mode (shared/docs/conformer.md): fvcore G, paper-convention GMACs.
RELEASE_FVCORE_G = {"tiny": 5.2503, "small": 10.6512, "small-p32": 7.0870, "base": 23.4028}
RELEASE_MACS_G = {"tiny": 5.226, "small": 10.599, "small-p32": 7.046, "base": 23.326}
# The release's small-p32 fvcore total, measured on its code: 7,087,046,912 (shared/docs/conformer.md).
RELEASE_SMALL_P32_FVCORE = 7_087_046_912

TOGGLES = [
    {},
    {"branches": "cnn"},
    {"branches": "transformer"},
    {"coupling": "none"},
    {"coupling": "down", "fcu_stages": (2, 3)},
    {"num_med_block": 2},
    {"pos_embed": True},
    {"fcu_down": "conv", "fcu_up": "deconv"},
    {"heads": "trans"},
]


@pytest.mark.parametrize(
    "overrides", TOGGLES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "release"
)
def test_param_components_sum_to_total(overrides: dict) -> None:
    model = conformer.create_model("micro", **overrides)
    counts = costs_of(model).params
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert sum(counts.by_component.values()) == counts.total
    assert set(counts.by_component) == set(COMPONENTS)


def test_param_components_follow_the_toggles() -> None:
    cnn_only = costs_of(conformer.create_model("micro", branches="cnn")).params.by_component
    assert cnn_only["transformer"] == 0 and cnn_only["fcu"] == 0 and cnn_only["cnn"] > 0
    no_fcu = costs_of(conformer.create_model("micro", coupling="none")).params.by_component
    assert no_fcu["fcu"] == 0 and no_fcu["transformer"] > 0


def test_trainable_excludes_frozen_parameters() -> None:
    model = conformer.create_model("nano")
    for p in model.stem.parameters():
        p.requires_grad_(False)
    counts = costs_of(model).params
    assert counts.trainable == counts.total - counts.by_component["stem"]


@pytest.mark.parametrize("name", list(RELEASE_PARAMS))
def test_release_params_on_meta(name: str) -> None:
    counts = costs_of(build_on_meta(conformer.get_config(name))).params
    assert counts.total == RELEASE_PARAMS[name]
    assert sum(counts.by_component.values()) == RELEASE_PARAMS[name]


def test_component_of_rejects_unknown_names() -> None:
    assert component_of("stages.1.0.squeeze_block.conv_project.weight") == "fcu"
    assert component_of("stages.1.0") is None
    with pytest.raises(KeyError):
        component_of("mystery.weight")
    with pytest.raises(KeyError):
        component_of("stages.0.0.mystery.weight")


def exact_flops(
    subject: conformer.Conformer | conformer.ConformerConfig, img_size: int, **kw: bool
) -> FlopCounts:
    """The full FLOP record of ``costs_of(..., exact=True)``."""
    flops = costs_of(subject, img_size, exact=True, **kw).flops
    assert flops is not None
    return flops


@pytest.fixture(scope="module")
def micro_flops() -> FlopCounts:
    torch.manual_seed(0)
    return exact_flops(conformer.create_model("micro"), 64, cross_check=True)


def test_flops_components_and_operators_add_up(micro_flops: FlopCounts) -> None:
    f = micro_flops
    assert isinstance(f.fvcore_total, int) and isinstance(f.paper_macs, int)
    assert sum(f.by_operator.values()) == f.fvcore_total
    assert f.paper_macs == sum(n for op, n in f.by_operator.items() if op in PAPER_OPERATORS)
    assert sum(c["fvcore"] for c in f.by_component.values()) == f.fvcore_total
    assert sum(c["paper_macs"] for c in f.by_component.values()) == f.paper_macs
    # fvcore counts norms, pooling and upsampling on top of the MACs.
    assert f.fvcore_total > f.paper_macs > 0
    assert f.by_component["heads"]["fvcore"] > f.by_component["heads"]["paper_macs"]  # global pool


def test_uncounted_ops_are_listed(micro_flops: FlopCounts) -> None:
    f = micro_flops
    # fvcore warns about these (no handle) ...
    assert {"aten::add", "aten::softmax", "aten::gelu", "aten::max_pool2d"} <= set(f.unsupported_ops)
    # ... and silently treats these as free.
    assert {"aten::relu_", "aten::cat"} <= set(f.ignored_ops)
    assert f.uncounted_ops == {**f.unsupported_ops, **f.ignored_ops}
    assert all(isinstance(n, int) and n > 0 for n in f.uncounted_ops.values())


def test_cross_check_agrees_with_paper_macs(micro_flops: FlopCounts) -> None:
    cross = micro_flops.cross_check
    assert cross is not None
    assert cross.tool == "torch.utils.flop_counter.FlopCounterMode"
    assert cross.flops == 2 * cross.macs
    assert cross.relative_difference == pytest.approx(0.0, abs=1e-9)


def test_fused_attention_counts_the_same(micro_flops: FlopCounts) -> None:
    torch.manual_seed(0)
    fused = exact_flops(conformer.create_model("micro", fused_attn=True), 64, cross_check=True)
    assert fused.fvcore_total == micro_flops.fvcore_total
    assert fused.paper_macs == micro_flops.paper_macs
    assert fused.by_operator["scaled_dot_product_attention"] == micro_flops.by_operator["matmul"]
    assert SDPA_OP not in fused.uncounted_ops
    assert fused.cross_check is not None and micro_flops.cross_check is not None
    assert fused.cross_check.macs == micro_flops.cross_check.macs


def test_sdpa_handle_counts_both_products() -> None:
    from fvcore.nn import FlopCountAnalysis

    class Cross(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v)

    b, h, length, source, e, ev = 2, 3, 5, 7, 4, 6
    inputs = (torch.randn(b, h, length, e), torch.randn(b, h, source, e), torch.randn(b, h, source, ev))
    plain = FlopCountAnalysis(Cross(), inputs).unsupported_ops_warnings(False)
    assert plain.total() == 0  # fvcore alone drops SDPA: the reason for the handle
    handled = FlopCountAnalysis(Cross(), inputs).unsupported_ops_warnings(False)
    handled.set_op_handle(SDPA_OP, sdpa_flop_jit)
    assert handled.total() == b * h * length * source * e + b * h * length * source * ev


def test_exact_costs_keep_train_mode_and_accept_configs() -> None:
    model = conformer.create_model("nano").train()
    from_model = exact_flops(model, 32)
    assert model.training
    from_cfg = exact_flops(conformer.get_config("nano"), 32)
    assert from_cfg.fvcore_total == from_model.fvcore_total
    assert from_cfg.cross_check is None and "cross_check" not in from_cfg.to_dict()


def test_closed_form_costs_match_the_full_count(micro_flops: FlopCounts) -> None:
    quick = costs_of(conformer.get_config("micro"), 64)
    assert quick.paper_macs == micro_flops.paper_macs and quick.img_size == 64
    assert quick.params == costs_of(conformer.create_model("micro")).params


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RELEASE_FVCORE_G))
def test_release_flops_at_224(name: str) -> None:
    flops = exact_flops(conformer.get_config(name), 224)
    assert round(flops.fvcore_total / 1e9, 4) == RELEASE_FVCORE_G[name]
    assert round(flops.paper_macs / 1e9, 3) == RELEASE_MACS_G[name]
    if name == "small-p32":
        assert flops.fvcore_total == RELEASE_SMALL_P32_FVCORE
    if name == "tiny":
        assert flops.fvcore_total == 5_250_307_712
        ops = flops.by_operator
        assert (ops["linear"], ops["conv"], ops["matmul"]) == (4_183_671_808, 684_601_344, 357_663_744)
