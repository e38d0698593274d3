"""FLOP and parameter accounting of the ablation toggles, checked against closed-form counts."""

from __future__ import annotations

import pytest

import conformer
from conformer_bench.costs import Costs
from conformer_bench.flops import costs_of

IMG = 64  # micro: token grid 4x4, CNN maps 16x16, 8x8, 4x4 in stages 1-3


def macs(**overrides: object) -> Costs:
    """fvcore's count of a built micro model at ``IMG``²."""
    return costs_of(conformer.create_model("micro", **overrides), IMG, exact=True)


def stage_blocks(cfg: conformer.ConformerConfig) -> list[tuple[int, int, int]]:
    """(stage, blocks, CNN map side) for the coupled blocks of each stage."""
    side = IMG // 4
    n = cfg.blocks_per_stage
    return [(1, n - 1, side), (2, n, side // 2), (3, n, side // 4)]


def test_each_med_block_adds_one_bottleneck_per_coupled_block() -> None:
    cfg = conformer.get_config("micro")
    expected = 0
    for stage, blocks, side in stage_blocks(cfg):
        c = cfg.stage_channels[stage - 1]
        # 1x1 C -> C/4, 3x3 C/4 -> C/4, 1x1 C/4 -> C, at side x side
        expected += blocks * side * side * (c * c // 4 + 9 * (c // 4) ** 2 + c * c // 4)
    one, two = macs(num_med_block=1), macs(num_med_block=2)
    assert two.paper_macs - one.paper_macs == expected
    assert two.by_component["cnn"]["paper_macs"] - one.by_component["cnn"]["paper_macs"] == expected


def test_deconv_up_sampling_adds_its_transposed_convolutions_to_the_fcu() -> None:
    cfg = conformer.get_config("micro")
    grid = IMG // cfg.patch_size
    expected = 0
    for stage, blocks, _ in stage_blocks(cfg):
        stride = cfg.dw_stride(stage)
        if stride > 1:  # stride 1 has nothing to up-sample and no deconv
            c = cfg.stage_channels[stage - 1] // 4
            expected += blocks * grid * grid * c * c * stride * stride
    nearest, deconv = macs(), macs(fcu_up="deconv")
    assert deconv.paper_macs - nearest.paper_macs == expected
    assert deconv.by_component["fcu"]["paper_macs"] - nearest.by_component["fcu"]["paper_macs"] == expected


def test_sampling_variants_that_add_no_multiply_adds() -> None:
    base = macs()
    # A strided k=s=d projection does the same multiply-adds as a 1x1 projection at full resolution.
    for overrides in (
        {"fcu_down": "maxpool"},
        {"fcu_down": "conv"},
        {"fcu_up": "bilinear"},
        {"pos_embed": True},
    ):
        assert macs(**overrides).paper_macs == base.paper_macs, overrides
    # fvcore counts 4 flops per bilinear output element against 1 per nearest one.
    bilinear = macs(fcu_up="bilinear")
    extra = bilinear.by_operator.get("upsample_bilinear2d", 0)
    assert extra == 4 * base.by_operator["upsample_nearest2d"]
    assert bilinear.fvcore_total - base.fvcore_total == extra - base.by_operator["upsample_nearest2d"]


@pytest.mark.parametrize(
    "overrides", [{"coupling": "none"}, {"branches": "cnn"}, {"branches": "transformer"}], ids=str
)
def test_uncoupled_variants_count_no_fcu_work(overrides: dict) -> None:
    counts = macs(**overrides)
    assert counts.by_component["fcu"]["paper_macs"] == 0
    assert sum(c["paper_macs"] for c in counts.by_component.values()) == counts.paper_macs


def test_no_fcu_costs_the_sum_of_the_two_single_branches_minus_the_shared_stem() -> None:
    parallel, cnn, trans = macs(coupling="none"), macs(branches="cnn"), macs(branches="transformer")
    stem = parallel.by_component["stem"]["paper_macs"]
    assert parallel.paper_macs == cnn.paper_macs + trans.paper_macs - stem


def test_fcu_stage_selection_counts_only_the_chosen_stages() -> None:
    full, stage3 = macs(), macs(fcu_stages=(3,))
    assert 0 < stage3.by_component["fcu"]["paper_macs"] < full.by_component["fcu"]["paper_macs"]
    assert stage3.by_component["cnn"]["paper_macs"] == full.by_component["cnn"]["paper_macs"]


def test_pos_embed_adds_one_vector_per_token() -> None:
    cfg = conformer.get_config("micro")
    tokens = 1 + (cfg.img_size // cfg.patch_size) ** 2
    with_pe = costs_of(conformer.create_model("micro", pos_embed=True)).params
    without = costs_of(conformer.create_model("micro")).params
    assert with_pe.total - without.total == tokens * cfg.embed_dim
    assert with_pe.by_component["transformer"] - without.by_component["transformer"] == tokens * cfg.embed_dim
