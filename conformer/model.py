"""The Conformer: a CNN branch and a transformer branch coupled at every block by FCUs.

Layout (internal names; ``conformer.checkpoint`` maps them to and from the release's keys)::

    stem          conv 7x7/2 -> BN -> ReLU -> maxpool 3x3/2           (release: conv1, bn1)
    cnn_entry     first bottleneck, 64 -> C1                          (release: conv_1)
    patch_embed   conv k=s=patch/4 over the stem output -> tokens     (release: trans_patch_conv)
    trans_entry   first transformer block                             (release: trans_1)
    stages[s][j]  coupled blocks, three ConformerStages                        (release: conv_trans_2 .. conv_trans_<depth>)
    conv_head / trans_norm + trans_head                               (release: conv_cls_head / trans_norm, trans_cls_head)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConformerConfig
from .layers import Bottleneck, FCUDown, FCUUp, MedBottleneck, TransformerBlock


class ConformerOutput(NamedTuple):
    """Both classifier outputs; ``None`` for a head the variant does not have."""

    conv_logits: Tensor | None
    trans_logits: Tensor | None

    @property
    def logits(self) -> Tensor:
        """The release's headline prediction: the sum of the present heads' logits."""
        if self.conv_logits is None:
            assert self.trans_logits is not None, "a Conformer always has at least one head"
            return self.trans_logits
        if self.trans_logits is None:
            return self.conv_logits
        return self.conv_logits + self.trans_logits


class ConvTransBlock(nn.Module):
    """One coupled block: bottleneck -> FCU down -> transformer block -> med blocks -> FCU up -> fusion.

    Either branch may be absent (single-branch variants) and either FCU may be absent (coupling toggles).
    ``cnn_tail=False`` drops everything after the CNN block's 3x3 conv (the last block of a variant with no
    conv head, whose CNN output nobody reads).
    """

    def __init__(
        self,
        cfg: ConformerConfig,
        stage: int,
        inplanes: int,
        outplanes: int,
        stride: int,
        res_conv: bool,
        last_fusion: bool,
        drop_path: float,
        cnn_tail: bool = True,
    ) -> None:
        super().__init__()
        self.dw_stride = cfg.dw_stride(stage)
        med = outplanes // Bottleneck.expansion
        self.cnn_block: Bottleneck | None = None
        self.med_block: nn.ModuleList | None = None
        self.fusion_block: Bottleneck | None = None
        self.squeeze_block: FCUDown | None = None
        self.expand_block: FCUUp | None = None
        self.trans_block: TransformerBlock | None = None
        if cfg.has_cnn:
            self.cnn_block = Bottleneck(inplanes, outplanes, stride, res_conv, head_only=not cnn_tail)
            if cnn_tail:
                if cfg.num_med_block > 0:
                    self.med_block = nn.ModuleList(MedBottleneck(outplanes) for _ in range(cfg.num_med_block))
                self.fusion_block = Bottleneck(
                    outplanes, outplanes, stride=2 if last_fusion else 1, res_conv=last_fusion
                )
        if cfg.has_transformer:
            self.trans_block = TransformerBlock(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                cfg.qkv_bias,
                cfg.qk_scale,
                cfg.drop_rate,
                cfg.attn_drop_rate,
                drop_path,
                fused_attn=cfg.fused_attn,
            )
        if cfg.couples_down(stage):
            self.squeeze_block = FCUDown(med, cfg.embed_dim, self.dw_stride, cfg.fcu_down)
        if cfg.couples_up(stage) and cnn_tail:
            self.expand_block = FCUUp(cfg.embed_dim, med, self.dw_stride, cfg.fcu_up)

    def forward(self, x: Tensor | None, x_t: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        x2: Tensor | None = None
        if self.cnn_block is not None:
            assert x is not None
            x, x2 = self.cnn_block(x)
        if self.trans_block is not None:
            assert x_t is not None
            if self.squeeze_block is not None:
                assert x2 is not None
                x_t = self.trans_block(self.squeeze_block(x2, x_t) + x_t)
            else:
                x_t = self.trans_block(x_t)
        if self.fusion_block is not None:
            assert x is not None
            if self.med_block is not None:
                for med_block in self.med_block:
                    x = med_block(x)
            x_up = None
            if self.expand_block is not None:
                assert x_t is not None and x2 is not None
                x_up = self.expand_block(x_t, x2.shape[2] // self.dw_stride, x2.shape[3] // self.dw_stride)
            x, _ = self.fusion_block(x, x_up)
        return x, x_t


class ConformerStage(nn.Module):
    """The coupled blocks of one stage, run in order.

    Blocks are registered under their positions (``"0"``, ``"1"``, ...), as an ``nn.ModuleList`` would, so the
    state-dict keys stay ``stages.<s>.<j>.<child>`` (the layout ``conformer.checkpoint`` maps to the release).
    """

    def __init__(self, blocks: list[ConvTransBlock]) -> None:
        super().__init__()
        for j, block in enumerate(blocks):
            self.add_module(str(j), block)

    @property
    def blocks(self) -> list[ConvTransBlock]:
        """The blocks in order (read from the registered children, so a replaced block is seen)."""
        return [cast(ConvTransBlock, m) for m in self._modules.values()]

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, index: int) -> ConvTransBlock:
        return self.blocks[index]

    def __iter__(self) -> Iterator[ConvTransBlock]:
        return iter(self.blocks)

    def forward(self, x: Tensor | None, x_t: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        for block in self.blocks:
            x, x_t = block(x, x_t)
        return x, x_t


class Conformer(nn.Module):
    """Conformer built from a :class:`ConformerConfig`; the defaults of the config reproduce the release."""

    def __init__(self, cfg: ConformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        c1, _, c3 = cfg.stage_channels
        dw1 = cfg.dw_stride(1)
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(cfg.in_chans, 64, 7, stride=2, padding=3, bias=False))
        self.stem.add_module("bn", nn.BatchNorm2d(64))
        self.stem.add_module("act", nn.ReLU(inplace=True))
        self.stem.add_module("pool", nn.MaxPool2d(3, stride=2, padding=1))

        # Stochastic depth rises linearly over the transformer blocks (release: linspace over depth).
        dpr = [float(r) for r in torch.linspace(0, cfg.drop_path_rate, cfg.depth)]

        self.cnn_entry: Bottleneck | None = Bottleneck(64, c1, res_conv=True) if cfg.has_cnn else None
        self.cls_token: nn.Parameter | None = None
        self.pos_embed: nn.Parameter | None = None
        self.patch_embed: nn.Conv2d | None = None
        self.trans_entry: TransformerBlock | None = None
        if cfg.has_transformer:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
            self.patch_embed = nn.Conv2d(64, cfg.embed_dim, dw1, stride=dw1)
            grid = cfg.img_size // cfg.patch_size
            if cfg.pos_embed:
                self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, cfg.embed_dim))
            self.trans_entry = TransformerBlock(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                cfg.qkv_bias,
                cfg.qk_scale,
                cfg.drop_rate,
                cfg.attn_drop_rate,
                dpr[0],
                fused_attn=cfg.fused_attn,
            )

        self.stages = nn.ModuleList(_coupled_stages(cfg, dpr))

        self.conv_head: nn.Linear | None = None
        self.trans_norm: nn.LayerNorm | None = None
        self.trans_head: nn.Module | None = None
        if cfg.has_conv_head:
            self.conv_head = nn.Linear(c3, cfg.num_classes) if cfg.num_classes > 0 else None
        if cfg.has_trans_head:
            self.trans_norm = nn.LayerNorm(cfg.embed_dim)
            self.trans_head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else None
        self.init_weights()

    # --- initialisation ----------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """The release's scheme: trunc-normal(0.02) linears and tokens, Kaiming fan-out convs, unit norms."""
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_module)

    # --- timm-style helpers ------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        return {name for name in ("cls_token", "pos_embed") if getattr(self, name) is not None}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace both heads for a new number of classes (fresh release-style initialisation)."""
        from dataclasses import replace

        self.cfg = replace(self.cfg, num_classes=num_classes)
        self.num_classes = num_classes
        c3 = self.cfg.stage_channels[2]
        device = next(self.parameters()).device
        if self.cfg.has_conv_head:
            self.conv_head = nn.Linear(c3, num_classes).to(device) if num_classes > 0 else None
            if self.conv_head is not None:
                _init_module(self.conv_head)
        if self.cfg.has_trans_head:
            self.trans_head = (
                nn.Linear(self.cfg.embed_dim, num_classes).to(device) if num_classes > 0 else None
            )
            if self.trans_head is not None:
                _init_module(self.trans_head)

    # --- forward -----------------------------------------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(
                f"expected input of shape (batch, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of patch_size {p}; "
                f"use a size such as {max(p, round(h / p) * p)} (the CNN map must pool onto the token grid)"
            )

    def forward_features(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Returns the final CNN map (B, C3, H/32, W/32) and the token sequence (B, 1 + HW/p^2, D)."""
        self.check_input(x)
        x_base = self.stem(x)
        x_c: Tensor | None = None
        x_t: Tensor | None = None
        if self.cnn_entry is not None:
            x_c, _ = self.cnn_entry(x_base)
        if self.patch_embed is not None:
            assert self.cls_token is not None and self.trans_entry is not None
            tokens = self.patch_embed(x_base).flatten(2).transpose(1, 2)
            x_t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
            if self.pos_embed is not None:
                x_t = x_t + self._pos_embed_for(x_t.shape[1], x.shape[-2] // self.cfg.patch_size)
            x_t = self.trans_entry(x_t)
        for stage in self.stages:
            x_c, x_t = stage(x_c, x_t)
        return x_c, x_t

    def forward_head(self, x_c: Tensor | None, x_t: Tensor | None) -> ConformerOutput:
        conv_logits = trans_logits = None
        if self.cfg.has_conv_head:
            assert x_c is not None
            pooled = F.adaptive_avg_pool2d(x_c, 1).flatten(1)
            conv_logits = self.conv_head(pooled) if self.conv_head is not None else pooled
        if self.trans_norm is not None:
            assert x_t is not None
            cls = self.trans_norm(x_t)[:, 0]
            trans_logits = self.trans_head(cls) if self.trans_head is not None else cls
        return ConformerOutput(conv_logits, trans_logits)

    def forward(self, x: Tensor) -> ConformerOutput:
        return self.forward_head(*self.forward_features(x))

    def _pos_embed_for(self, num_tokens: int, grid_h: int) -> Tensor:
        assert self.pos_embed is not None
        if num_tokens == self.pos_embed.shape[1]:
            return self.pos_embed
        # Another image size: resample the grid part bicubically, keep the class-token slot.
        grid = self.cfg.img_size // self.cfg.patch_size
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid_w = (num_tokens - 1) // grid_h
        grid_pos = grid_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid_pos.flatten(2).transpose(1, 2)], dim=1)


def _coupled_stages(cfg: ConformerConfig, dpr: list[float]) -> list[ConformerStage]:
    """The three stages of coupled blocks: depth - 1 blocks; stage 1 has one fewer (the entry blocks open it)."""
    widths = cfg.stage_channels
    stages: list[ConformerStage] = []
    index = 1  # release block number minus one; indexes dpr
    for stage in (1, 2, 3):
        blocks: list[ConvTransBlock] = []
        count = cfg.blocks_per_stage - 1 if stage == 1 else cfg.blocks_per_stage
        for j in range(count):
            first = j == 0 and stage > 1
            index += 1
            last = index == cfg.depth
            blocks.append(
                ConvTransBlock(
                    cfg,
                    stage,
                    inplanes=widths[stage - 2] if first else widths[stage - 1],
                    outplanes=widths[stage - 1],
                    stride=2 if first else 1,
                    res_conv=first,
                    last_fusion=last,
                    drop_path=dpr[index - 1],
                    cnn_tail=not last or cfg.has_conv_head,
                )
            )
        stages.append(ConformerStage(blocks))
    return stages


def _init_module(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
