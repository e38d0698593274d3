"""The model package: registry, faithfulness to the release, toggles, gradients, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import conformer
from conformer import ConformerConfig, create_model, get_config, list_models, load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"

RELEASE_PARAMS = {"tiny": 23_524_704, "small": 37_673_424, "small-p32": 38_853_072, "base": 83_289_136}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- registry -------------------------------------------------------------------------------------------


def test_list_models_has_release_presets_first() -> None:
    names = list_models()
    assert names[:4] == ["tiny", "small", "small-p32", "base"]
    assert {"micro", "nano"} <= set(names)
    assert "Conformer_tiny_patch16" in list_models(include_aliases=True)


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("Conformer_tiny_patch16", "tiny"),
        ("Conformer_small_patch16", "small"),
        ("Conformer_small_patch32", "small-p32"),
        ("Conformer_base_patch16", "base"),
    ],
)
def test_release_aliases(alias: str, name: str) -> None:
    assert get_config(alias) == get_config(name)
    assert get_config(alias).from_paper


def test_test_presets_are_marked_not_from_paper() -> None:
    assert not get_config("micro").from_paper and not get_config("nano").from_paper


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="did you mean small"):
        create_model("smal")


def test_duplicate_registration_rejected() -> None:
    with pytest.raises(ValueError, match="already registered"):
        conformer.register_preset(ConformerConfig(name="tiny"))


def test_overrides_use_release_names() -> None:
    model = create_model("micro", num_classes=7, num_med_block=0, drop_path_rate=0.1)
    assert model.cfg.num_classes == 7 and model.cfg.num_med_block == 0
    assert model.eval()(torch.randn(1, 3, 32, 32)).logits.shape == (1, 7)


def test_unknown_override_names_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) widht.*valid options are: patch_size"):
        create_model("micro", widht=3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"branches": "both"}, "choose one of: dual, cnn, transformer"),
        ({"coupling": "sideways"}, "choose one of: both, down, up, none"),
        ({"num_med_block": -1}, "num_med_block must be an integer >= 0"),
        ({"depth": 7}, "multiple of 3"),
        ({"patch_size": 8}, "multiple of 16"),
        ({"embed_dim": 65}, "divisible by num_heads"),
        ({"drop_path_rate": 1.5}, r"in \[0, 1\)"),
        ({"fcu_stages": (4,)}, "1, 2, 3"),
        ({"branches": "cnn", "coupling": "none"}, "needs two branches"),
        ({"branches": "transformer", "fcu_down": "maxpool"}, "need two branches"),
        ({"branches": "cnn", "heads": "trans"}, "needs the transformer branch"),
        ({"branches": "cnn", "pos_embed": True}, "needs the transformer branch"),
        ({"coupling": "down", "heads": "conv"}, "transformer branch unused"),
        ({"coupling": "up", "heads": "trans"}, "CNN branch unused"),
        ({"fcu_stages": (1, 2), "heads": "trans"}, "CNN branch unused"),
    ],
)
def test_invalid_values_and_combinations_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("micro", **overrides)


# --- faithfulness ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RELEASE_PARAMS))
def test_release_parameter_counts(name: str) -> None:
    assert n_params(create_model(name)) == RELEASE_PARAMS[name]


def test_release_keys_and_shapes_of_small() -> None:
    expected = {}
    for line in (FIXTURES / "official_state_dict_keys_small.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            expected[key] = shape.strip()
    model = create_model("small")
    released = conformer.to_release(model.state_dict(), model.cfg)
    assert set(released) == set(expected)
    assert {k: str(tuple(v.shape)) for k, v in released.items()} == expected


def test_release_fixture_loads_unchanged_and_reproduces_logits(release_fixture: dict) -> None:
    cfg = release_fixture["config"]
    model = create_model("micro", **cfg)
    assert model.cfg == get_config("micro"), "the micro preset is the fixture's config"
    report = load_checkpoint(model, release_fixture["state_dict"])
    assert report.ok
    model.eval()
    with torch.no_grad():
        out = model(release_fixture["input"])
    for mine, theirs in (
        (out.conv_logits, release_fixture["conv_logits"]),
        (out.trans_logits, release_fixture["trans_logits"]),
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
    torch.testing.assert_close(out.logits, out.conv_logits + out.trans_logits)


def test_load_from_file_with_model_wrapper(tmp_path: Path, release_fixture: dict) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": release_fixture["state_dict"], "epoch": 3}, path)
    model = create_model("micro")
    assert load_checkpoint(model, path).ok
    torch.testing.assert_close(
        model.state_dict()["stem.conv.weight"], release_fixture["state_dict"]["conv1.weight"]
    )


def test_save_writes_release_keys_and_round_trips(tmp_path: Path) -> None:
    model = create_model("nano").eval()
    path = tmp_path / "out.pth"
    conformer.save_checkpoint(model, path)
    saved = torch.load(path, weights_only=True)["model"]
    assert "conv_trans_2.trans_block.attn.qkv.weight" in saved and "conv1.weight" in saved
    other = create_model("nano").eval()
    load_checkpoint(other, path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x).logits, other(x).logits)


def test_mismatched_checkpoint_lists_keys_and_shapes(release_fixture: dict) -> None:
    state = dict(release_fixture["state_dict"])
    state.pop("cls_token")
    state["extra.weight"] = torch.zeros(1)
    model = create_model("micro", num_classes=5)
    with pytest.raises(conformer.CheckpointError) as err:
        load_checkpoint(model, state)
    text = str(err.value)
    assert "1 missing key(s): cls_token" in text
    assert "1 unexpected key(s): extra.weight" in text
    assert "4 shape conflict(s)" in text and "(10, 128) vs model (5, 128)" in text
    report = load_checkpoint(model, state, strict=False)
    assert report.missing == ["cls_token"] and len(report.shape_conflicts) == 4


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    model = create_model("nano")
    with pytest.raises(conformer.CheckpointError, match="does not exist"):
        load_checkpoint(model, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(conformer.CheckpointError, match="could not be read"):
        load_checkpoint(model, bad)


def test_initialisation_follows_release_scheme() -> None:
    model = create_model("tiny")
    qkv = model.stages[0][0].trans_block.attn.qkv
    assert abs(qkv.weight.std().item() - 0.02) < 0.002 and qkv.bias.abs().max() == 0
    conv = model.stages[1][0].cnn_block.conv2  # Kaiming normal, fan_out mode: std = sqrt(2 / (out * k * k))
    expected = math.sqrt(2.0 / (conv.out_channels * 9))
    assert abs(conv.weight.std().item() - expected) < 0.1 * expected
    assert torch.all(model.stages[0][0].cnn_block.bn1.weight == 1)
    assert torch.all(model.trans_norm.weight == 1) and torch.all(model.trans_norm.bias == 0)
    assert 0.015 < model.cls_token.std().item() < 0.025  # trunc-normal, std 0.02 (cut at +-2, as released)


def test_input_size_not_multiple_of_patch_is_rejected() -> None:
    model = create_model("nano").eval()
    with pytest.raises(ValueError, match="not a multiple of patch_size 16"):
        model(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match=r"expected input of shape \(batch, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    model_p32 = create_model("nano", patch_size=32)
    with pytest.raises(ValueError, match="patch_size 32"):
        model_p32(torch.randn(1, 3, 48, 48))


def test_non_square_inputs_work() -> None:
    model = create_model("nano").eval()
    assert model(torch.randn(1, 3, 32, 64)).logits.shape == (1, 10)


# --- toggles --------------------------------------------------------------------------------------------

VARIANTS: list[dict] = [
    {},
    {"branches": "cnn"},
    {"branches": "transformer"},
    {"coupling": "none"},
    {"coupling": "down"},
    {"coupling": "up"},
    {"num_med_block": 0},
    {"num_med_block": 2},
    {"fcu_down": "maxpool"},
    {"fcu_down": "conv"},
    {"fcu_up": "bilinear"},
    {"fcu_up": "deconv"},
    {"fcu_stages": (3,)},
    {"fcu_stages": (1, 2)},
    {"pos_embed": True},
    {"heads": "conv"},
    {"heads": "trans"},
    {"heads": "trans", "coupling": "down"},
    {"branches": "transformer", "heads": "trans"},
    {"fused_attn": True},
]


def _ident(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "release"


@pytest.mark.parametrize("overrides", VARIANTS, ids=_ident)
@pytest.mark.parametrize("preset", ["nano", "micro"])
def test_gradient_reaches_every_parameter(preset: str, overrides: dict) -> None:
    model = create_model(preset, drop_path_rate=0.1, **overrides).train()
    out = model(torch.randn(2, 3, 32, 32))
    heads = [h for h in (out.conv_logits, out.trans_logits) if h is not None]
    target = torch.tensor([1, 2])
    loss = sum(nn.functional.cross_entropy(h, target) for h in heads) / len(heads)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None]
    assert not dead, f"parameters without gradient: {dead[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("overrides", VARIANTS[1:-1], ids=_ident)
def test_every_toggle_changes_the_computation(overrides: dict) -> None:
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    reference = create_model("micro").eval()
    torch.manual_seed(0)
    variant = create_model("micro", **overrides).eval()
    # Give the variant the reference's weights wherever a name and shape match (all of them when the toggle
    # adds or removes no parameter), so that only the toggle can make the outputs differ.
    ref_state = reference.state_dict()
    shared = {
        k: v for k, v in variant.state_dict().items() if k in ref_state and ref_state[k].shape == v.shape
    }
    variant.load_state_dict({**variant.state_dict(), **{k: ref_state[k] for k in shared}})
    assert shared, "the variant shares no weight with the reference"
    with torch.no_grad():
        ref_logits, var_logits = reference(x).logits, variant(x).logits
    assert var_logits.shape == ref_logits.shape
    assert not torch.allclose(ref_logits, var_logits), f"{overrides} computes what the release computes"


def test_fused_attention_computes_the_same_function() -> None:
    x = torch.randn(2, 3, 64, 64)
    plain = create_model("micro").eval()
    fused = create_model("micro", fused_attn=True).eval()
    fused.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, fused(x).logits, rtol=1e-4, atol=1e-5)


def test_single_branch_outputs() -> None:
    x = torch.randn(1, 3, 32, 32)
    cnn = create_model("nano", branches="cnn").eval()(x)
    assert cnn.trans_logits is None and cnn.logits is cnn.conv_logits
    trans = create_model("nano", branches="transformer").eval()(x)
    assert trans.conv_logits is None and trans.logits is trans.trans_logits


def test_single_branch_variants_build_only_their_branch() -> None:
    cnn = create_model("micro", branches="cnn")
    names = [n for n, _ in cnn.named_parameters()]
    assert not any(k in n for n in names for k in ("trans", "squeeze", "expand", "cls_token", "patch_embed"))
    trans = create_model("micro", branches="transformer")
    names = [n for n, _ in trans.named_parameters()]
    assert not any(
        k in n for n in names for k in ("cnn", "fusion", "med_block", "squeeze", "expand", "conv_head")
    )
    assert any(n.startswith("stem.") for n in names), "the transformer-only variant keeps the shared stem"


def test_no_fcu_is_an_ensemble_of_the_two_single_branches() -> None:
    """With no coupling, each head sees only its own branch: the outputs equal the single-branch models'."""
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    parallel = create_model("micro", coupling="none").eval()
    cnn = create_model("micro", branches="cnn").eval()
    trans = create_model("micro", branches="transformer").eval()
    cnn.load_state_dict({k: v for k, v in parallel.state_dict().items() if k in cnn.state_dict()})
    trans.load_state_dict({k: v for k, v in parallel.state_dict().items() if k in trans.state_dict()})
    with torch.no_grad():
        out = parallel(x)
        torch.testing.assert_close(out.conv_logits, cnn(x).conv_logits)
        torch.testing.assert_close(out.trans_logits, trans(x).trans_logits)


def test_fcu_stage_selection_places_fcus() -> None:
    model = create_model("micro", fcu_stages=(3,))
    for s, stage in enumerate(model.stages, start=1):
        for block in stage:
            assert (block.squeeze_block is not None) == (s == 3)
            assert (block.expand_block is not None) == (s == 3)


def test_heads_choice() -> None:
    x = torch.randn(1, 3, 32, 32)
    conv_only = create_model("nano", heads="conv").eval()
    out = conv_only(x)
    assert out.trans_logits is None and conv_only.trans_norm is None
    trans_only = create_model("nano", heads="trans").eval()
    out = trans_only(x)
    assert out.conv_logits is None and trans_only.conv_head is None
    last = trans_only.stages[-1][-1]
    assert last.fusion_block is None and last.expand_block is None, "the unread CNN tail is not built"


def test_pos_embed_resizes_to_other_image_sizes() -> None:
    model = create_model("micro", pos_embed=True).eval()
    assert model.pos_embed.shape == (1, 1 + 4 * 4, 64)
    assert model(torch.randn(1, 3, 32, 48)).logits.shape == (1, 10)


def test_reset_classifier_and_no_weight_decay() -> None:
    model = create_model("micro")
    model.reset_classifier(3)
    assert model.eval()(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)
    assert model.cfg.num_classes == 3
    assert model.no_weight_decay() == {"cls_token"}
    assert create_model("micro", pos_embed=True).no_weight_decay() == {"cls_token", "pos_embed"}


def test_config_round_trips_through_dict() -> None:
    cfg = get_config("small", fcu_stages=[3, 2], coupling="down")
    assert cfg.fcu_stages == (2, 3)
    again = ConformerConfig(**{k: (tuple(v) if k == "fcu_stages" else v) for k, v in cfg.to_dict().items()})
    assert again == cfg
    assert get_config("small").is_release() and not cfg.is_release()
