"""One frozen dataclass describes every Conformer variant: the released presets and every ablation toggle."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Branches = Literal["dual", "cnn", "transformer"]
Coupling = Literal["both", "down", "up", "none"]
FcuDown = Literal["avgpool", "maxpool", "conv"]
FcuUp = Literal["nearest", "bilinear", "deconv"]
Heads = Literal["both", "conv", "trans"]

# The valid choices of each toggle, read from its Literal so the two cannot drift apart.
BRANCHES: tuple[str, ...] = get_args(Branches)
COUPLINGS: tuple[str, ...] = get_args(Coupling)
FCU_DOWNS: tuple[str, ...] = get_args(FcuDown)
FCU_UPS: tuple[str, ...] = get_args(FcuUp)
HEADS: tuple[str, ...] = get_args(Heads)
STAGES: tuple[int, ...] = (1, 2, 3)


@dataclass(frozen=True)
class ConformerConfig:
    """Every knob of a Conformer. Field names follow the release's constructor where one exists.

    Release fields: ``patch_size, in_chans, num_classes, base_channel, channel_ratio, num_med_block,
    embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate``.
    Toggles (defaults reproduce the release): ``branches, coupling, fcu_down, fcu_up, fcu_stages,
    pos_embed, heads``. ``img_size`` only sizes the optional position embedding (the release has none).
    ``fused_attn`` picks the attention kernel (same maths), not the architecture.
    """

    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    base_channel: int = 64
    channel_ratio: float = 4.0
    num_med_block: int = 0
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # --- ablation toggles (release values by default) ---
    branches: Branches = "dual"
    coupling: Coupling = "both"
    fcu_down: FcuDown = "avgpool"
    fcu_up: FcuUp = "nearest"
    fcu_stages: tuple[int, ...] = (1, 2, 3)
    pos_embed: bool = False
    heads: Heads = "both"
    img_size: int = 224
    fused_attn: bool = False
    # --- bookkeeping ---
    name: str = field(default="custom", compare=False)
    from_paper: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        # Normalise list-like fcu_stages (from TOML/JSON) to a sorted tuple so configs compare and hash.
        stages = self.fcu_stages
        if isinstance(stages, (str, bytes)) or not all(_is_int(s) for s in stages):
            raise ValueError(f"fcu_stages must be a list of stage numbers 1, 2, 3; got {stages!r}")
        object.__setattr__(self, "fcu_stages", tuple(sorted(set(stages))))
        validate(self)

    # --- derived widths -------------------------------------------------------------------------------
    @property
    def stage_channels(self) -> tuple[int, int, int]:
        """Output width of the CNN bottlenecks in stages 1, 2, 3 (C1, 2*C1, 4*C1)."""
        c1 = int(self.base_channel * self.channel_ratio)
        return (
            c1,
            int(self.base_channel * self.channel_ratio * 2),
            int(self.base_channel * self.channel_ratio * 4),
        )

    @property
    def blocks_per_stage(self) -> int:
        return self.depth // 3

    @property
    def has_cnn(self) -> bool:
        return self.branches in ("dual", "cnn")

    @property
    def has_transformer(self) -> bool:
        return self.branches in ("dual", "transformer")

    @property
    def has_conv_head(self) -> bool:
        return self.has_cnn and self.heads in ("both", "conv")

    @property
    def has_trans_head(self) -> bool:
        return self.has_transformer and self.heads in ("both", "trans")

    def couples_down(self, stage: int) -> bool:
        """CNN -> tokens FCU in this stage (1-based)."""
        return self.branches == "dual" and self.coupling in ("both", "down") and stage in self.fcu_stages

    def couples_up(self, stage: int) -> bool:
        """Tokens -> CNN FCU in this stage (1-based)."""
        return self.branches == "dual" and self.coupling in ("both", "up") and stage in self.fcu_stages

    def dw_stride(self, stage: int) -> int:
        """FCU sampling stride in a stage: the CNN map of that stage always maps onto the token grid."""
        return self.patch_size // (4 * 2 ** (stage - 1))

    def is_release(self) -> bool:
        """True when every toggle is at the release's value (the model then loads release checkpoints)."""
        return self == dataclasses.replace(self, **TOGGLE_DEFAULTS)

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar but fcu_stages (a tuple of ints): no deep copy needed.
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["fcu_stages"] = list(self.fcu_stages)
        return d

    def replace(self, **overrides: Any) -> ConformerConfig:
        return with_overrides(self, **overrides)


TOGGLE_DEFAULTS: dict[str, Any] = {
    "branches": "dual",
    "coupling": "both",
    "fcu_down": "avgpool",
    "fcu_up": "nearest",
    "fcu_stages": (1, 2, 3),
    "pos_embed": False,
    "heads": "both",
}

CONFIG_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ConformerConfig) if f.name != "name"
)
OVERRIDABLE: tuple[str, ...] = tuple(f for f in CONFIG_FIELDS if f not in ("from_paper",))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite, nor an integer past a float's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


REAL_FIELDS = ("channel_ratio", "mlp_ratio", "drop_rate", "attn_drop_rate", "drop_path_rate")
FLAG_FIELDS = ("qkv_bias", "pos_embed", "fused_attn")


def _choice(name: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(options)}")


def validate(cfg: ConformerConfig) -> None:
    """Reject values and toggle combinations that would build a broken or partly dead model."""
    _validate_values(cfg)
    _validate_toggles(cfg)


def _validate_values(cfg: ConformerConfig) -> None:
    """Each field on its own, and the sizes that must divide one another."""
    _choice("branches", cfg.branches, BRANCHES)
    _choice("coupling", cfg.coupling, COUPLINGS)
    _choice("fcu_down", cfg.fcu_down, FCU_DOWNS)
    _choice("fcu_up", cfg.fcu_up, FCU_UPS)
    _choice("heads", cfg.heads, HEADS)
    for name in ("patch_size", "in_chans", "base_channel", "embed_dim", "depth", "num_heads", "img_size"):
        value = getattr(cfg, name)
        if not _is_int(value) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not _is_int(cfg.num_classes) or cfg.num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0 (0 = no classifier), got {cfg.num_classes!r}")
    if not _is_int(cfg.num_med_block) or cfg.num_med_block < 0:
        raise ValueError(f"num_med_block must be an integer >= 0, got {cfg.num_med_block!r}")
    for name in REAL_FIELDS:
        if not is_finite_number(getattr(cfg, name)):
            raise ValueError(f"{name} must be a finite number, got {getattr(cfg, name)!r}")
    if cfg.qk_scale is not None and (not is_finite_number(cfg.qk_scale) or cfg.qk_scale <= 0):
        raise ValueError(
            f"qk_scale must be a finite number > 0 (or unset: head_dim ** -0.5), got {cfg.qk_scale!r}"
        )
    for name in FLAG_FIELDS:
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    if cfg.depth % 3 != 0 or cfg.depth < 3:
        raise ValueError(f"depth must be a positive multiple of 3 (three stages), got {cfg.depth}")
    if cfg.patch_size % 16 != 0:
        raise ValueError(
            f"patch_size must be a multiple of 16 (the FCU strides are patch/4, patch/8, patch/16), got {cfg.patch_size}"
        )
    if cfg.embed_dim % cfg.num_heads != 0:
        raise ValueError(f"embed_dim ({cfg.embed_dim}) must be divisible by num_heads ({cfg.num_heads})")
    if cfg.channel_ratio <= 0:
        raise ValueError(f"channel_ratio must be > 0, got {cfg.channel_ratio}")
    if int(cfg.base_channel * cfg.channel_ratio) % 4 != 0:
        raise ValueError(
            f"base_channel*channel_ratio = {cfg.base_channel * cfg.channel_ratio:g} must be a multiple of 4 "
            "(the bottleneck's middle width is a quarter of it)"
        )
    if cfg.mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be > 0, got {cfg.mlp_ratio}")
    for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    bad_stages = [s for s in cfg.fcu_stages if s not in STAGES]
    if bad_stages:
        raise ValueError(f"fcu_stages may only contain 1, 2, 3; got {list(cfg.fcu_stages)}")


def _validate_toggles(cfg: ConformerConfig) -> None:
    """Toggle combinations: branches, coupling, FCU and heads that contradict one another."""
    single = cfg.branches != "dual"
    if single and cfg.coupling != "both":
        raise ValueError(
            f"coupling={cfg.coupling!r} needs two branches; with branches={cfg.branches!r} leave coupling at its default"
        )
    if single and cfg.fcu_stages != STAGES:
        raise ValueError(
            f"fcu_stages needs two branches; with branches={cfg.branches!r} leave it at its default"
        )
    if single and (cfg.fcu_down != "avgpool" or cfg.fcu_up != "nearest"):
        raise ValueError(
            f"fcu_down/fcu_up need two branches; with branches={cfg.branches!r} leave them at their defaults"
        )
    if cfg.pos_embed and not cfg.has_transformer:
        raise ValueError("pos_embed=True needs the transformer branch (branches='dual' or 'transformer')")
    if cfg.branches == "cnn" and cfg.heads == "trans":
        raise ValueError(
            "heads='trans' needs the transformer branch; use heads='conv' or 'both' with branches='cnn'"
        )
    if cfg.branches == "transformer" and cfg.heads == "conv":
        raise ValueError(
            "heads='conv' needs the CNN branch; use heads='trans' or 'both' with branches='transformer'"
        )
    if cfg.branches == "dual":
        # A head-less branch must feed the other one in the last stage, or its tail would be dead weight.
        if cfg.heads == "conv" and not cfg.couples_up(3):
            raise ValueError(
                "heads='conv' leaves the transformer branch unused unless stage 3 couples tokens -> CNN; "
                "use coupling 'both' or 'up' with 3 in fcu_stages, or heads='both'"
            )
        if cfg.heads == "trans" and not cfg.couples_down(3):
            raise ValueError(
                "heads='trans' leaves the CNN branch unused unless stage 3 couples CNN -> tokens; "
                "use coupling 'both' or 'down' with 3 in fcu_stages, or heads='both'"
            )


def with_overrides(cfg: ConformerConfig, **overrides: Any) -> ConformerConfig:
    """``dataclasses.replace`` with a helpful error for unknown names."""
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}; valid options are: {', '.join(OVERRIDABLE)}"
        )
    if "fcu_stages" in overrides and overrides["fcu_stages"] is not None:
        stages = overrides["fcu_stages"]
        overrides["fcu_stages"] = (stages,) if isinstance(stages, int) else tuple(stages)
    return dataclasses.replace(cfg, **overrides)
