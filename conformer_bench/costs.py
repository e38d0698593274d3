"""Parameters and FLOPs of a config in closed form: no model, no tensors, microseconds per variant.

The walk below mirrors ``conformer.Conformer`` layer by layer and applies fvcore's per-operator rules
(batch 1, eval mode), so its numbers equal what :func:`conformer_bench.flops.costs_of` counts on the
built model (``exact=True``). ``tests/test_costs.py`` holds the two to equality over presets and toggles;
a change to the model must be mirrored here.

fvcore's rules, per operator (``n`` = elements, one fused multiply-add = one flop):

* ``conv``: batch x prod(weight shape) x output positions (input positions when transposed); bias free.
* ``linear``: prod(input shape) x output features; ``matmul``: prod(left shape) x right's last dim;
  ``scaled_dot_product_attention``: the two products of the explicit path.
* ``batch_norm`` (eval, affine): 2n of its input; ``layer_norm`` (affine): 5n of its input.
* ``adaptive_avg_pool2d``: n of its input; ``upsample_nearest2d``: n of its output, ``upsample_bilinear2d``: 4n.
* Pooling, activations, additions, concatenations, bicubic resampling: 0.

Callers go through :func:`conformer_bench.flops.costs_of`, which picks this walk or a real count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from .params import COMPONENTS
from .records import FlopCounts, ParamCounts

if TYPE_CHECKING:
    from conformer import ConformerConfig

# fvcore operator names whose counts make up the paper's MACs: conv + linear + matmul products.
PAPER_OPERATORS: frozenset[str] = frozenset(
    {"conv", "linear", "matmul", "bmm", "einsum", "addmm", "mm", "scaled_dot_product_attention"}
)

STEM_WIDTH = 64  # the stem's output channels (fixed in the release)
BOTTLENECK_EXPANSION = 4


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class _Tally:
    """fvcore operator counts and parameter counts, per component."""

    ops: dict[str, Counter[str]] = field(default_factory=lambda: {c: Counter() for c in COMPONENTS})
    params: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0))

    def conv(
        self,
        comp: str,
        cin: int,
        cout: int,
        kernel: int,
        size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ) -> int:
        """A square conv over a ``size``² map; returns the output size."""
        out = _conv_out(size, kernel, stride, padding)
        self.ops[comp]["conv"] += cout * cin * kernel * kernel * out * out
        self.params[comp] += cout * cin * kernel * kernel + (cout if bias else 0)
        return out

    def deconv(self, comp: str, channels: int, stride: int, size: int) -> int:
        """Transposed conv with kernel = stride and bias; fvcore counts it over the input positions."""
        self.ops[comp]["conv"] += channels * channels * stride * stride * size * size
        self.params[comp] += channels * channels * stride * stride + channels
        return size * stride

    def batch_norm(self, comp: str, channels: int, size: int) -> None:
        self.ops[comp]["batch_norm"] += 2 * channels * size * size
        self.params[comp] += 2 * channels

    def layer_norm(self, comp: str, tokens: int, dim: int) -> None:
        self.ops[comp]["layer_norm"] += 5 * tokens * dim
        self.params[comp] += 2 * dim

    def linear(self, comp: str, rows: int, fan_in: int, fan_out: int, bias: bool = True) -> None:
        self.ops[comp]["linear"] += rows * fan_in * fan_out
        self.params[comp] += fan_in * fan_out + (fan_out if bias else 0)

    def bottleneck(
        self,
        comp: str,
        inplanes: int,
        outplanes: int,
        size: int,
        stride: int = 1,
        res_conv: bool = False,
        head_only: bool = False,
    ) -> int:
        """``conformer.layers.Bottleneck``; returns the size of its output and middle activation."""
        med = outplanes // BOTTLENECK_EXPANSION
        self.conv(comp, inplanes, med, 1, size)
        self.batch_norm(comp, med, size)
        out = self.conv(comp, med, med, 3, size, stride, padding=1)
        self.batch_norm(comp, med, out)
        if head_only:
            return out
        self.conv(comp, med, outplanes, 1, out)
        self.batch_norm(comp, outplanes, out)
        if res_conv:
            res = self.conv(comp, inplanes, outplanes, 1, size, stride)
            self.batch_norm(comp, outplanes, res)
        return out

    def med_bottleneck(self, comp: str, planes: int, size: int) -> None:
        med = planes // BOTTLENECK_EXPANSION
        self.conv(comp, planes, med, 1, size)
        self.batch_norm(comp, med, size)
        self.conv(comp, med, med, 3, size, padding=1)
        self.batch_norm(comp, med, size)
        self.conv(comp, med, planes, 1, size)
        self.batch_norm(comp, planes, size)

    def transformer_block(self, comp: str, cfg: ConformerConfig, tokens: int) -> None:
        dim = cfg.embed_dim
        self.layer_norm(comp, tokens, dim)
        self.linear(comp, tokens, dim, 3 * dim, bias=cfg.qkv_bias)
        # q @ k^T and attn @ v: tokens x tokens x head_dim per head, each.
        attention_op = "scaled_dot_product_attention" if cfg.fused_attn else "matmul"
        self.ops[comp][attention_op] += 2 * tokens * tokens * dim
        self.linear(comp, tokens, dim, dim)
        self.layer_norm(comp, tokens, dim)
        hidden = int(dim * cfg.mlp_ratio)
        self.linear(comp, tokens, dim, hidden)
        self.linear(comp, tokens, hidden, dim)


def _walk(cfg: ConformerConfig, img_size: int) -> _Tally:
    """Every layer of ``Conformer(cfg)`` on one ``img_size``² image, in forward order."""
    t = _Tally()
    dim = cfg.embed_dim
    size = t.conv("stem", cfg.in_chans, STEM_WIDTH, 7, img_size, 2, padding=3)
    t.batch_norm("stem", STEM_WIDTH, size)
    size = _conv_out(size, 3, 2, padding=1)  # max pool
    widths = cfg.stage_channels
    if cfg.has_cnn:
        size_c = t.bottleneck("cnn", STEM_WIDTH, widths[0], size, res_conv=True)
    tokens = 0
    if cfg.has_transformer:
        stride = cfg.dw_stride(1)
        grid = t.conv("transformer", STEM_WIDTH, dim, stride, size, stride, bias=True)
        grid_cfg = cfg.img_size // cfg.patch_size
        t.params["transformer"] += dim + ((1 + grid_cfg * grid_cfg) * dim if cfg.pos_embed else 0)
        tokens = 1 + grid * grid
        t.transformer_block("transformer", cfg, tokens)

    per_stage = cfg.blocks_per_stage
    index = 1
    for stage in (1, 2, 3):
        dw = cfg.dw_stride(stage)
        for j in range(per_stage - 1 if stage == 1 else per_stage):
            first = j == 0 and stage > 1
            index += 1
            last = index == cfg.depth
            cnn_tail = not last or cfg.has_conv_head
            out = widths[stage - 1]
            med = out // BOTTLENECK_EXPANSION
            mid_size = 0
            if cfg.has_cnn:
                inplanes = widths[stage - 2] if first else out
                mid_size = t.bottleneck(
                    "cnn", inplanes, out, size_c, 2 if first else 1, res_conv=first, head_only=not cnn_tail
                )
            if cfg.has_transformer:
                if cfg.couples_down(stage):
                    kernel = dw if cfg.fcu_down == "conv" else 1
                    grid = t.conv("fcu", med, dim, kernel, mid_size, kernel, bias=True)
                    if kernel == 1:
                        grid = _conv_out(grid, dw, dw)  # avg/max pool onto the token grid
                    t.layer_norm("fcu", grid * grid, dim)
                t.transformer_block("transformer", cfg, tokens)
            if cfg.has_cnn and cnn_tail:
                for _ in range(cfg.num_med_block):
                    t.med_bottleneck("cnn", out, mid_size)
                if cfg.couples_up(stage):
                    grid = mid_size // dw
                    t.conv("fcu", dim, med, 1, grid, bias=True)
                    t.batch_norm("fcu", med, grid)
                    if cfg.fcu_up == "deconv":
                        if dw > 1:
                            t.deconv("fcu", med, dw, grid)
                    else:
                        up = grid * dw
                        t.ops["fcu"][f"upsample_{cfg.fcu_up}2d"] += (
                            (4 if cfg.fcu_up == "bilinear" else 1) * med * up * up
                        )
                size_c = t.bottleneck("cnn", out, out, mid_size, 2 if last else 1, res_conv=last)

    classes = cfg.num_classes
    if cfg.has_conv_head:
        t.ops["heads"]["adaptive_avg_pool2d"] += widths[2] * size_c * size_c
        if classes > 0:
            t.linear("heads", 1, widths[2], classes)
    if cfg.has_trans_head:
        t.layer_norm("transformer", tokens, dim)
        if classes > 0:
            t.linear("heads", 1, dim, classes)
    return t


@dataclass(frozen=True)
class Costs:
    """Parameters and FLOPs of one variant at one image size (batch 1, eval), as
    :func:`conformer_bench.flops.costs_of` gives them: the closed-form counts always, the full FLOP record
    (uncounted operators, cross-check) when counted exactly."""

    img_size: int
    params: ParamCounts
    fvcore_total: int  # fvcore's convention: one fused multiply-add = one flop
    paper_macs: int  # multiply-adds of conv + linear + matmul: the paper's FLOPs column
    by_operator: dict[str, int]
    by_component: dict[str, dict[str, int]]  # component -> {"fvcore": n, "paper_macs": n}
    flops: FlopCounts | None = None  # exact=True only

    @classmethod
    def of_record(cls, params: ParamCounts, flops: FlopCounts) -> Costs:
        return cls(
            flops.img_size,
            params,
            flops.fvcore_total,
            flops.paper_macs,
            flops.by_operator,
            flops.by_component,
            flops,
        )


@lru_cache(maxsize=4096)
def _costs(cfg: ConformerConfig, img_size: int) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    tally = _walk(cfg, img_size)
    ops = {comp: {op: n for op, n in sorted(c.items()) if n} for comp, c in tally.ops.items()}
    return tally.params, ops


def closed_params(cfg: ConformerConfig) -> ParamCounts:
    """The parameters of a fresh ``create_model(cfg)`` (every one trainable), in closed form."""
    by_component, _ = _costs(cfg, cfg.img_size)
    total = sum(by_component.values())
    return ParamCounts(total=total, trainable=total, by_component=dict(by_component))


def closed_form(cfg: ConformerConfig, img_size: int, params: ParamCounts | None = None) -> Costs:
    """fvcore's totals by operator and component for ``cfg`` at ``img_size``², without a model (``params``:
    counted elsewhere, e.g. on the built model)."""
    _, ops = _costs(cfg, img_size)
    by_operator: Counter[str] = Counter()
    for comp_ops in ops.values():
        by_operator.update(comp_ops)
    return Costs(
        img_size=img_size,
        params=params if params is not None else closed_params(cfg),
        fvcore_total=sum(by_operator.values()),
        paper_macs=sum(n for op, n in by_operator.items() if op in PAPER_OPERATORS),
        by_operator=dict(sorted(by_operator.items())),
        by_component={
            comp: {
                "fvcore": sum(comp_ops.values()),
                "paper_macs": sum(n for op, n in comp_ops.items() if op in PAPER_OPERATORS),
            }
            for comp, comp_ops in ops.items()
        },
    )


def paper_macs(cfg: ConformerConfig, img_size: int | None = None) -> int:
    """Multiply-adds of conv + linear + matmul per image (batch 1): ``costs_of(cfg, img_size).paper_macs``.

    Imported by the code :mod:`conformer_bench.ab.inject` patches into a model."""
    return closed_form(cfg, img_size or cfg.img_size).paper_macs
