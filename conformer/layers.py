"""Building blocks of the Conformer: bottlenecks, transformer block, and the two Feature Coupling Units.

Sub-module names inside each block follow the release's checkpoint keys (``conv1``, ``bn1``, ``attn.qkv``,
``conv_project`` ...), so only the top-level layout needs a key mapping.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The release uses eps=1e-6 for the norms inside blocks and FCUs.
BlockBatchNorm = partial(nn.BatchNorm2d, eps=1e-6)
BlockLayerNorm = partial(nn.LayerNorm, eps=1e-6)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when ``drop_prob == 0``)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    ``fused=False`` computes softmax(q k^T * scale) v with explicit matmuls (the release's maths);
    ``fused=True`` calls ``scaled_dot_product_attention`` (same maths, faster kernels on some devices).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        # (3, B, heads, N, head_dim)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            dropout = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block (LayerNorm eps 1e-6, MHSA, MLP with GELU)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        fused_attn: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = BlockLayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop, fused=fused_attn)
        self.drop_path = DropPath(drop_path)
        self.norm2 = BlockLayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 -> 1x1, expansion 4) that also exposes its middle activation.

    ``x_t`` (the FCU-up map) is added to the input of the 3x3 conv. With ``head_only=True`` the block
    stops after the 3x3 conv (used when nothing downstream consumes its output).
    """

    expansion = 4

    def __init__(
        self, inplanes: int, outplanes: int, stride: int = 1, res_conv: bool = False, head_only: bool = False
    ) -> None:
        super().__init__()
        med = outplanes // self.expansion
        self.head_only = head_only
        self.conv1 = nn.Conv2d(inplanes, med, 1, bias=False)
        self.bn1 = BlockBatchNorm(med)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(med, med, 3, stride=stride, padding=1, bias=False)
        self.bn2 = BlockBatchNorm(med)
        self.act2 = nn.ReLU(inplace=True)
        self.res_conv = res_conv and not head_only
        if not head_only:
            self.conv3 = nn.Conv2d(med, outplanes, 1, bias=False)
            self.bn3 = BlockBatchNorm(outplanes)
            self.act3 = nn.ReLU(inplace=True)
            if res_conv:
                self.residual_conv = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
                self.residual_bn = BlockBatchNorm(outplanes)

    def forward(self, x: Tensor, x_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns ``(output, middle activation)``; the output is the input itself when ``head_only``."""
        residual = x
        h = self.act1(self.bn1(self.conv1(x)))
        if x_t is not None:
            h = h + x_t
        mid = self.act2(self.bn2(self.conv2(h)))
        if self.head_only:
            return x, mid
        out = self.bn3(self.conv3(mid))
        if self.res_conv:
            residual = self.residual_bn(self.residual_conv(residual))
        return self.act3(out + residual), mid


class MedBottleneck(nn.Module):
    """The extra same-width bottleneck of ``num_med_block`` (identity residual, no projection)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        med = planes // 4
        self.conv1 = nn.Conv2d(planes, med, 1, bias=False)
        self.bn1 = BlockBatchNorm(med)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(med, med, 3, padding=1, bias=False)
        self.bn2 = BlockBatchNorm(med)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(med, planes, 1, bias=False)
        self.bn3 = BlockBatchNorm(planes)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.act2(self.bn2(self.conv2(h)))
        return self.act3(self.bn3(self.conv3(h)) + x)


class FCUDown(nn.Module):
    """CNN -> tokens: 1x1 projection, down-sampling onto the token grid, LayerNorm, GELU.

    ``sampling``: ``avgpool`` (release), ``maxpool``, or ``conv`` (the projection itself is a strided
    conv with kernel = stride). The class token of the incoming tokens is prepended unchanged.
    """

    def __init__(self, inplanes: int, embed_dim: int, dw_stride: int, sampling: str = "avgpool") -> None:
        super().__init__()
        self.dw_stride = dw_stride
        self.sampling = sampling
        kernel = dw_stride if sampling == "conv" else 1
        self.conv_project = nn.Conv2d(inplanes, embed_dim, kernel, stride=kernel)
        self.sample_pooling: nn.Module
        if sampling == "avgpool":
            self.sample_pooling = nn.AvgPool2d(dw_stride, dw_stride)
        elif sampling == "maxpool":
            self.sample_pooling = nn.MaxPool2d(dw_stride, dw_stride)
        else:
            self.sample_pooling = nn.Identity()
        self.ln = BlockLayerNorm(embed_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        x = self.sample_pooling(self.conv_project(x)).flatten(2).transpose(1, 2)
        x = self.act(self.ln(x))
        return torch.cat([x_t[:, :1], x], dim=1)


class FCUUp(nn.Module):
    """Tokens -> CNN: drop the class token, 1x1 projection, BN, ReLU, up-sampling to the CNN grid.

    ``sampling``: ``nearest`` (release), ``bilinear``, or ``deconv`` (transposed conv, kernel = stride).
    At stride 1 the interpolation is an identity; it is still called, as in the release, so that FLOP
    counters see the same graph (fvcore counts one flop per upsampled element). ``deconv`` at stride 1
    has nothing to learn and is the identity.
    """

    def __init__(self, embed_dim: int, outplanes: int, up_stride: int, sampling: str = "nearest") -> None:
        super().__init__()
        self.up_stride = up_stride
        self.sampling = sampling
        self.conv_project = nn.Conv2d(embed_dim, outplanes, 1)
        self.bn = BlockBatchNorm(outplanes)
        self.act = nn.ReLU(inplace=True)
        if sampling == "deconv" and up_stride > 1:
            self.deconv = nn.ConvTranspose2d(outplanes, outplanes, up_stride, stride=up_stride)

    def forward(self, x_t: Tensor, grid_h: int, grid_w: int) -> Tensor:
        B, _, C = x_t.shape
        x = x_t[:, 1:].transpose(1, 2).reshape(B, C, grid_h, grid_w)
        x = self.act(self.bn(self.conv_project(x)))
        if self.sampling == "deconv":
            return self.deconv(x) if self.up_stride > 1 else x
        size = (grid_h * self.up_stride, grid_w * self.up_stride)
        if self.sampling == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="nearest")
