"""Inference fast paths: the same weights and outputs, fewer passes over memory.

``optimize_for_inference`` returns an eval-mode copy of a Conformer that computes the same function:

* **BatchNorm folding** — every BatchNorm that follows a convolution (stem, the three bottleneck convs, the
  residual projection, the FCU-up projection) is folded into that convolution's weight and bias (in float64,
  then cast back), and replaced by ``nn.Identity``. The bottleneck adds the FCU-up map *after* ``act1`` and
  *before* ``conv2``, so ``conv2 + bn2`` still fold.
* **Channels-last** — conv weights are stored NHWC, so oneDNN runs without layout reorders and the token <->
  map reshapes of the FCUs become views instead of copies.
* **Pool before project** (``pool_first=True``) — the FCU-down average pooling runs before its 1x1
  projection (exact: both are linear maps), so the projection no longer makes a full-resolution map.
* **Fused kernels** (CPU, float32 or bfloat16, oneDNN available; ``fuse_pointwise=True``) — each conv (with its
  ReLU and residual add), linear (with its GELU or residual add) and attention offers candidate kernels:
  a oneDNN conv primitive on a weight reordered once per input shape, or ATen's conv then the add and ReLU in
  place; oneDNN's GEMM on a weight prepacked per row count with the epilogue fused, or MKL's prepacked GEMM
  (float32) then the epilogue; ``scaled_dot_product_attention`` or the explicit matmul-softmax. Which is
  fastest depends on the CPU (oneDNN's fp32 GEMM beat MKL's on a Zen 4 EPYC and lost on a Xeon; SDPA won in
  bf16 on a Xeon with AMX and lost on the EPYC), so by default each module times its candidates at the first
  call per shape and keeps the fastest, cached per CPU fingerprint (:mod:`conformer.tuning`;
  :class:`KernelChoices` fixes them instead). The attention scale is folded into the query rows of the qkv
  projection, so no pass over the scores multiplies it.
* **torch.compile** (``compile=True``) — the folded, pool-first, channels-last model compiled by Inductor
  with weight freezing on CPU (prepacked oneDNN convs and MKL linears). Compilation happens on the first call.

**bfloat16** (``dtype=torch.bfloat16``; CPU with native bf16, see ``conformer_bench.precision``) — BatchNorm
is folded in float64 and rounded once to bf16; the fused oneDNN convolutions and linears above run in bf16
(MKL's GEMM is fp32-only, so linears take oneDNN's, on prepacked weights); every kernel accumulates in float32,
and LayerNorm and softmax compute their statistics and sums in float32 on bf16 tensors. Attention is SDPA or
the explicit matmul-softmax, whichever this CPU runs faster (see :func:`prefer_sdpa` for the latter's cost). The final
LayerNorm and both classifiers stay float32 (``float32_heads``), so logits are not rounded to bf16 (tiny: max
logits error 1.1e-2 -> 8.8e-3 at no measurable speed cost). Input and logits are float32 at the boundary.
Measured on a 2-core Zen 4 EPYC (AVX512-BF16), batch 8, 224²: 2.8x the plain fp32 model (tiny and small) at
78-87 % of a bf16 2048² matmul; most of the error is the bf16 rounding of the weights (micro: 7e-3 of 1.3e-2).
``optimize_for_inference`` does not check that the CPU has native bf16 (oneDNN emulates it on AVX-512 CPUs
without it, slower than fp32); the benchmark does.

FLOP counts are a property of the plain structure: count them on the model *before* optimising (fvcore does
not see inside the fused oneDNN ops).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Attention, Bottleneck, FCUDown, FCUUp, MedBottleneck, Mlp, TransformerBlock
from .model import Conformer
from .tuning import Decision, KernelTuner, default_tuner

__all__ = [
    "KernelChoices",
    "compile_defaults",
    "describe_kernels",
    "fold_batchnorm",
    "fused_kernels_available",
    "kernel_decisions",
    "mkl_linear_available",
    "optimize_for_inference",
    "prefer_sdpa",
]

# conv -> BatchNorm pairs inside each block type, by attribute name.
_BN_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("residual_conv", "residual_bn")),
    MedBottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    FCUUp: (("conv_project", "bn"),),
}


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d, dtype: torch.dtype | None = None) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` with the BatchNorm's running statistics (eval semantics).

    The fold runs in float64 and is rounded once, to ``dtype`` (default: the conv's dtype).
    """
    dtype = dtype or conv.weight.dtype
    assert bn.running_mean is not None and bn.running_var is not None, "BatchNorm needs running statistics"
    w = conv.weight.detach().double()
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    shift = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        cast(tuple[int, int], conv.kernel_size),
        stride=cast(tuple[int, int], conv.stride),
        padding=cast(tuple[int, int], conv.padding),
        dilation=cast(tuple[int, int], conv.dilation),
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=dtype,
    )
    with torch.no_grad():
        folded.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(dtype))
        assert folded.bias is not None
        folded.bias.copy_(((bias - mean) * scale + shift).to(dtype))
    folded.requires_grad_(False)
    return folded


def _fold_all(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Fold every conv -> BatchNorm pair in place (rounded once to ``dtype``); returns how many were folded."""
    count = 0
    targets: list[tuple[nn.Module, tuple[tuple[str, str], ...]]] = []
    for module in model.modules():
        for kind, pairs in _BN_PAIRS.items():
            if isinstance(module, kind):
                targets.append((module, pairs))
    if isinstance(model, Conformer):
        targets.append((model.stem, (("conv", "bn"),)))
    for module, pairs in targets:
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fold_batchnorm(conv, bn, dtype))
                setattr(module, bn_name, nn.Identity())
                count += 1
    return count


def fused_kernels_available(device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """The oneDNN fused conv/linear ops exist for this device and dtype (CPU builds with oneDNN; float32, or
    bfloat16 where oneDNN has bf16 kernels for this CPU)."""
    if (
        torch.device(device).type != "cpu"
        or dtype not in (torch.float32, torch.bfloat16)
        or not torch.backends.mkldnn.is_available()
    ):
        return False
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    return hasattr(torch.ops.mkldnn, "_convolution_pointwise") and hasattr(
        torch.ops.mkldnn, "_linear_pointwise"
    )


def mkl_linear_available() -> bool:
    """MKL's pre-packed GEMM ops exist (CPU builds with MKL)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def prefer_sdpa(device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the unfused optimised paths (compiled, CUDA, ``fuse_pointwise=False``) and
    :meth:`KernelChoices.rules` use SDPA for attention on this device and dtype; the fused CPU path measures.

    Measured on torch 2.13: on a 2-core Xeon (AVX-512) SDPA's CPU flash kernel was 3-7x faster than the
    explicit matmul-softmax for 197 tokens x 6 heads x 64 dims at batch 8 in float32; on CUDA the flash /
    memory-efficient kernels are the fast path. In bfloat16 on CPU the explicit form wins: on a Zen 4 EPYC
    (AVX512-BF16, one thread) 5.7-6.1 ms against SDPA's 8.4-8.6 ms at those shapes (SDPA bf16 ran no faster
    than SDPA fp32; the two bf16 batched matmuls run on oneDNN's bf16 GEMM), tiny +6-7 % overall. It rounds
    the attention scores to bf16 before the softmax (which still sums in float32), where SDPA keeps them in
    float32; measured cost: none on tiny (8.8e-3 max logits error either way) nor on micro fine-tuned on
    digits (rms 1.65e-2 against SDPA's 1.66e-2, 100 % top-1 agreement either way); on one random-init micro
    the conv head's rms error rose from 0.93e-2 to 1.19e-2.
    """
    kind = torch.device(device).type
    if kind == "cpu" and dtype == torch.bfloat16:
        return False
    return kind in ("cpu", "cuda")


AUTO = "auto"
ATTENTION_KERNELS: tuple[str, ...] = ("sdpa", "bmm")
LINEAR_KERNELS: tuple[str, ...] = ("onednn", "mkl")
CONV_KERNELS: tuple[str, ...] = ("fused", "aten")


@dataclass(frozen=True)
class KernelChoices:
    """Which kernel each fused op runs on CPU; ``auto`` (default): the fastest on this CPU at each shape,
    measured at first use and cached per CPU fingerprint (:mod:`conformer.tuning`).

    * ``attention``: ``sdpa`` (``scaled_dot_product_attention``, one fused kernel on strided views of the
      qkv output) or ``bmm`` (explicit batched matmul-softmax); either way the scale is folded into the
      query rows of the qkv projection.
    * ``linear``: ``onednn`` (oneDNN GEMM on a weight prepacked per row count, GELU / residual add fused)
      or ``mkl`` (MKL's prepacked GEMM, then the GELU / add); float32 only, bf16 linears are oneDNN's.
    * ``conv``: ``fused`` (one oneDNN primitive with the ReLU / residual add, weight prepacked per input
      shape) or ``aten`` (``F.conv2d`` on the channels-last weight, then in-place add and ReLU).
    """

    attention: str = AUTO
    linear: str = AUTO
    conv: str = AUTO

    def __post_init__(self) -> None:
        for kind, allowed in (
            ("attention", ATTENTION_KERNELS),
            ("linear", LINEAR_KERNELS),
            ("conv", CONV_KERNELS),
        ):
            value = getattr(self, kind)
            if value != AUTO and value not in allowed:
                raise ValueError(f"{kind}={value!r} is not a kernel; use auto or one of {', '.join(allowed)}")

    @classmethod
    def rules(cls, device: torch.device | str, dtype: torch.dtype) -> KernelChoices:
        """Fixed choices, no measurement: SDPA unless :func:`prefer_sdpa` says otherwise, MKL linears in
        float32 where MKL is there, fused convs."""
        attention = "sdpa" if prefer_sdpa(device, dtype) else "bmm"
        linear = "mkl" if mkl_linear_available() and dtype == torch.float32 else "onednn"
        return cls(attention=attention, linear=linear, conv="fused")


class _Kernels(nn.Module):
    """A fused module with candidate kernels: it runs the one asked for or, with ``auto``, the tuner's
    measured choice per input shape (kept with the tuner's evidence in ``decisions``), and holds weights
    re-laid-out for one input shape (opaque MKL / oneDNN tensors, built on first use)."""

    def __init__(
        self, kind: str, candidates: tuple[str, ...], choice: str, tuner: KernelTuner | None
    ) -> None:
        super().__init__()
        self.kind = kind
        self.candidates = candidates if choice == AUTO else (choice,)
        self.tuner = tuner
        self._packed: dict[tuple[Any, ...], Tensor] = {}
        self._chosen: dict[tuple[Any, ...], str] = {}
        self.decisions: dict[tuple[Any, ...], Decision] = {}

    def __getstate__(self) -> dict[str, Any]:  # copies re-pack on their first call
        state = dict(self.__dict__)
        state["_packed"] = {}
        return state

    def _kernel(
        self, shape: tuple[Any, ...], key: str, make_thunk: Callable[[str], Callable[[], Any]]
    ) -> str:
        chosen = self._chosen.get(shape)
        if chosen is None:
            if len(self.candidates) == 1:
                chosen = self.candidates[0]
            else:
                tuner = self.tuner or default_tuner()
                decision = tuner.choose(self.kind, key, {c: make_thunk(c) for c in self.candidates})
                self.decisions[shape] = decision
                chosen = decision.chosen
                self._drop_packs(shape, chosen)
            self._chosen[shape] = chosen
        return chosen

    def _drop_packs(self, shape: tuple[Any, ...], chosen: str) -> None:
        """Free the weights packed while timing the kernels not chosen at ``shape`` (none by default)."""


def _like(t: Tensor) -> Tensor:
    """A random tensor of ``t``'s shape, dtype, device and strides (a tuning input)."""
    return torch.randn_like(t)


class _FusedConv(_Kernels):
    """conv (+ bias) -> optional residual add -> optional ReLU on NHWC tensors.

    Kernels (:class:`KernelChoices` ``conv``): ``fused``, one oneDNN primitive on a weight reordered into
    oneDNN's blocked layout once per input shape; ``aten``, ``F.conv2d`` then the add and ReLU in place.
    """

    def __init__(
        self, conv: nn.Conv2d, relu: bool, choice: str = "fused", tuner: KernelTuner | None = None
    ) -> None:
        super().__init__("conv", CONV_KERNELS, choice, tuner)
        assert conv.padding_mode == "zeros" and isinstance(conv.padding, tuple), "explicit zero padding only"
        self.weight = nn.Parameter(conv.weight.detach().contiguous(memory_format=torch.channels_last), False)
        self.bias = nn.Parameter(conv.bias.detach(), False) if conv.bias is not None else None
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.relu = relu

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if x.dtype != self.weight.dtype:  # e.g. under autocast: the unfused ops, which autocast handles
            return self._aten(x, residual)
        x = x.contiguous(memory_format=torch.channels_last)
        if residual is not None:
            residual = residual.contiguous(memory_format=torch.channels_last)
        kernel = self._kernel(
            (tuple(x.shape), residual is not None), self._key(x, residual), self._thunk(x, residual)
        )
        return self._aten(x, residual) if kernel == "aten" else self._fused(x, residual)

    def _key(self, x: Tensor, residual: Tensor | None) -> str:
        o, i, kh, kw = self.weight.shape
        epilogue = "+add" * (residual is not None) + "+relu" * self.relu
        return (
            f"{str(x.dtype).removeprefix('torch.')} x={tuple(x.shape)} w={o}x{i}x{kh}x{kw} s={self.stride} "
            f"p={self.padding} g={self.groups}{epilogue}"
        )

    def _thunk(self, x: Tensor, residual: Tensor | None) -> Callable[[str], Callable[[], Any]]:
        def make(kernel: str) -> Callable[[], Any]:
            xs, rs = _like(x), None if residual is None else _like(residual)
            run = self._aten if kernel == "aten" else self._fused
            return partial(run, xs, rs)

        return make

    def _drop_packs(self, shape: tuple[Any, ...], chosen: str) -> None:
        if chosen == "aten":
            self._packed.pop(shape[0], None)

    def _aten(self, x: Tensor, residual: Tensor | None) -> Tensor:
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if residual is not None:
            y = y.add_(residual) if y.dtype == residual.dtype else y + residual
        return y.relu_() if self.relu else y

    def _fused(self, x: Tensor, residual: Tensor | None) -> Tensor:
        weight = self._packed.get(tuple(x.shape))
        if weight is None:
            weight = self._packed[tuple(x.shape)] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(x.shape)
            )
        unary = "relu" if self.relu else "none"
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, self.bias, self.padding, self.stride, self.dilation, self.groups, unary, [], "",
            )  # fmt: skip
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", None, unary, [], "",
        )  # fmt: skip

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return (
            f"{i * self.groups}, {o}, kernel=({kh}, {kw}), stride={tuple(self.stride)}, relu={self.relu}, "
            f"kernels={'|'.join(self.candidates)}"
        )


class _FusedLinear(_Kernels):
    """linear -> optional exact GELU, or linear -> residual add, on a prepacked weight.

    Kernels (:class:`KernelChoices` ``linear``): ``onednn``, one oneDNN primitive (GEMM + GELU / add) on a
    weight reordered once per row count; ``mkl`` (float32 only), MKL's GEMM on a weight packed once per row
    count (``torch.ops.mkl._mkl_linear``), then the GELU / add as separate element-wise ops. Which is faster
    depends on the CPU: MKL by ~8 % at ViT shapes on a Xeon, oneDNN by 12-17 % on a Zen 4 EPYC (one thread,
    tiny's four linear shapes).
    """

    def __init__(
        self, linear: nn.Linear, gelu: bool = False, choice: str = AUTO, tuner: KernelTuner | None = None
    ) -> None:
        weight = linear.weight.detach().contiguous()
        mkl = mkl_linear_available() and weight.dtype == torch.float32  # MKL's GEMM: fp32 only
        candidates = LINEAR_KERNELS if mkl else ("onednn",)
        super().__init__("linear", candidates, choice if choice in candidates else AUTO, tuner)
        self.weight = nn.Parameter(weight, False)
        self.bias = nn.Parameter(linear.bias.detach(), False) if linear.bias is not None else None
        self.gelu = gelu

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        assert residual is None or not self.gelu, "GELU and a residual add are not fused together"
        if x.dtype != self.weight.dtype:  # e.g. under autocast: the unfused ops, which autocast handles
            y = F.linear(x, self.weight, self.bias)
            y = y + residual if residual is not None else y
            return F.gelu(y) if self.gelu else y
        rows = x.numel() // x.shape[-1]
        kernel = self._kernel(
            (rows, residual is not None), self._key(x, rows, residual), self._thunk(x, residual)
        )
        return self._mkl(x, residual) if kernel == "mkl" else self._onednn(x, residual)

    def _key(self, x: Tensor, rows: int, residual: Tensor | None) -> str:
        out, inp = self.weight.shape
        epilogue = "+gelu" if self.gelu else "+add" if residual is not None else ""
        return f"{str(x.dtype).removeprefix('torch.')} rows={rows} {inp}->{out}{epilogue}"

    def _thunk(self, x: Tensor, residual: Tensor | None) -> Callable[[str], Callable[[], Any]]:
        def make(kernel: str) -> Callable[[], Any]:
            xs, rs = _like(x), None if residual is None else _like(residual)
            return partial(self._mkl if kernel == "mkl" else self._onednn, xs, rs)

        return make

    def _drop_packs(self, shape: tuple[Any, ...], chosen: str) -> None:
        self._packed.pop((shape[0], chosen != "mkl"), None)

    def _packed_weight(self, rows: int, kernel: str) -> Tensor:
        packed = self._packed.get((rows, kernel == "mkl"))
        if packed is None:
            if kernel == "mkl":
                packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)
            else:
                packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, rows)
            self._packed[(rows, kernel == "mkl")] = packed
        return packed

    def _mkl(self, x: Tensor, residual: Tensor | None) -> Tensor:
        rows = x.numel() // x.shape[-1]
        y = torch.ops.mkl._mkl_linear(x, self._packed_weight(rows, "mkl"), self.weight, self.bias, rows)
        if residual is not None:
            return y.add_(residual)
        return F.gelu(y) if self.gelu else y

    def _onednn(self, x: Tensor, residual: Tensor | None) -> Tensor:
        weight = self._packed_weight(x.numel() // x.shape[-1], "onednn")
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, self.bias, "add")
        if self.gelu:  # algorithm "none" = erf GELU, as nn.GELU()
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "gelu", [], "none")
        return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")


class _InferenceOnly(nn.Module):
    def train(self, mode: bool = True) -> _InferenceOnly:
        if mode:
            raise RuntimeError("an optimize_for_inference() model is inference-only; train the plain model")
        return super().train(False)


class _FusedBottleneck(_InferenceOnly):
    """:class:`Bottleneck` (BN folded) with ReLUs and the residual add inside the convs."""

    def __init__(self, block: Bottleneck, conv: Callable[[nn.Conv2d, bool], _FusedConv]) -> None:
        super().__init__()
        self.head_only = block.head_only
        self.res_conv = block.res_conv
        self.conv1 = conv(block.conv1, True)
        self.conv2 = conv(block.conv2, True)
        if not block.head_only:
            self.conv3 = conv(block.conv3, True)
            if block.res_conv:
                self.residual_conv = conv(block.residual_conv, False)

    def forward(self, x: Tensor, x_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.conv1(x)
        if x_t is not None:
            h = h.add_(x_t)
        mid = self.conv2(h)
        if self.head_only:
            return x, mid
        residual = self.residual_conv(x) if self.res_conv else x
        return self.conv3(mid, residual), mid


class _FusedMedBottleneck(_InferenceOnly):
    def __init__(self, block: MedBottleneck, conv: Callable[[nn.Conv2d, bool], _FusedConv]) -> None:
        super().__init__()
        self.conv1 = conv(block.conv1, True)
        self.conv2 = conv(block.conv2, True)
        self.conv3 = conv(block.conv3, True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.conv2(self.conv1(x)), x)


class _FusedAttention(_Kernels):
    """softmax(q k^T) v over the heads of a qkv projection's output whose query rows carry the scale.

    Kernels (:class:`KernelChoices` ``attention``): ``sdpa``, ``scaled_dot_product_attention`` with scale 1
    on strided views of the qkv output; ``bmm``, the explicit batched matmul-softmax (q, k, v made
    contiguous by the matmuls).
    """

    def __init__(
        self, num_heads: int, head_dim: int, choice: str = AUTO, tuner: KernelTuner | None = None
    ) -> None:
        super().__init__("attention", ATTENTION_KERNELS, choice, tuner)
        self.num_heads = num_heads
        self.head_dim = head_dim

    def forward(self, qkv: Tensor) -> Tensor:
        B, N, _ = qkv.shape
        kernel = self._kernel((B, N, qkv.dtype), self._key(qkv), self._thunk(qkv))
        return self._sdpa(qkv) if kernel == "sdpa" else self._bmm(qkv)

    def _key(self, qkv: Tensor) -> str:
        B, N, _ = qkv.shape
        return f"{str(qkv.dtype).removeprefix('torch.')} b={B} tokens={N} heads={self.num_heads} dim={self.head_dim}"

    def _thunk(self, qkv: Tensor) -> Callable[[str], Callable[[], Any]]:
        def make(kernel: str) -> Callable[[], Any]:
            return partial(self._sdpa if kernel == "sdpa" else self._bmm, _like(qkv))

        return make

    def _heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, _ = qkv.shape
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v  # (B, heads, N, head_dim) each

    def _merge(self, a: Tensor) -> Tensor:
        B, _, N, _ = a.shape
        return a.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)

    def _sdpa(self, qkv: Tensor) -> Tensor:
        q, k, v = self._heads(qkv)
        return self._merge(F.scaled_dot_product_attention(q, k, v, scale=1.0))

    def _bmm(self, qkv: Tensor) -> Tensor:
        q, k, v = self._heads(qkv)
        return self._merge((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, kernels={'|'.join(self.candidates)}"


def _scaled_query(qkv: nn.Linear, scale: float) -> nn.Linear:
    """A copy of ``qkv`` whose query rows (the first third) are multiplied by ``scale``, computed in float64
    and rounded once (exact where the scale is a power of two, as head_dim**-0.5 is for head_dim 4^k)."""
    out = copy.deepcopy(qkv)
    rows = qkv.out_features // 3
    with torch.no_grad():
        out.weight[:rows].copy_(qkv.weight[:rows].double().mul(scale))
        if out.bias is not None and qkv.bias is not None:
            out.bias[:rows].copy_(qkv.bias[:rows].double().mul(scale))
    return out


class _FusedTransformerBlock(_InferenceOnly):
    """:class:`TransformerBlock` in eval: residual adds fused into ``proj``/``fc2``, GELU into ``fc1``, the
    attention scale folded into ``qkv``'s query rows."""

    def __init__(
        self,
        block: TransformerBlock,
        linear: Callable[[nn.Linear, bool], _FusedLinear],
        attention: Callable[[int, int], _FusedAttention],
    ) -> None:
        super().__init__()
        attn, mlp = block.attn, block.mlp
        assert isinstance(attn, Attention) and isinstance(mlp, Mlp)
        self.norm1 = block.norm1
        self.norm2 = block.norm2
        self.qkv = linear(_scaled_query(attn.qkv, attn.scale), False)
        self.attn = attention(attn.num_heads, attn.head_dim)
        self.proj = linear(attn.proj, False)
        self.fc1 = linear(mlp.fc1, True)
        self.fc2 = linear(mlp.fc2, False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(self.attn(self.qkv(self.norm1(x))), x)
        return self.fc2(self.fc1(self.norm2(x)), x)


class _PoolFirstFCUDown(nn.Module):
    """:class:`FCUDown` with average pooling moved before the 1x1 projection.

    avgpool(W x + b) == W avgpool(x) + b for a 1x1 stride-1 conv (both are linear maps and the pool's
    windows do not overlap), so the projection runs on the token grid instead of the full CNN map: the
    same function with dw_stride^2 fewer projection multiply-adds and no full-resolution intermediate.
    """

    def __init__(self, block: FCUDown) -> None:
        super().__init__()
        self.dw_stride = block.dw_stride
        self.conv_project: nn.Module = block.conv_project
        self.ln = block.ln
        self.act = block.act

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        x = F.avg_pool2d(x, self.dw_stride, self.dw_stride)
        x = self.act(self.ln(self.conv_project(x).flatten(2).transpose(1, 2)))
        return torch.cat([x_t[:, :1], x], dim=1)


def _can_pool_first(block: FCUDown) -> bool:
    conv, pool = block.conv_project, block.sample_pooling
    return (
        block.sampling == "avgpool"
        and isinstance(pool, nn.AvgPool2d)
        and pool.padding in (0, (0, 0))
        and not pool.ceil_mode
        and pool.divisor_override is None
        and pool.kernel_size == pool.stride
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
    )


def _pool_first(model: nn.Module) -> int:
    """Swap every eligible :class:`FCUDown` for :class:`_PoolFirstFCUDown` in place; returns the count."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FCUDown) and _can_pool_first(child):
                setattr(parent, name, _PoolFirstFCUDown(child))
                count += 1
    return count


def _fuse_cpu(model: nn.Module, choices: KernelChoices, tuner: KernelTuner | None) -> None:
    """Swap blocks for their fused oneDNN forms in place (BatchNorms must already be folded)."""

    def conv(c: nn.Conv2d, relu: bool) -> _FusedConv:
        return _FusedConv(c, relu, choices.conv, tuner)

    def linear(lin: nn.Linear, gelu: bool) -> _FusedLinear:
        return _FusedLinear(lin, gelu, choices.linear, tuner)

    def attention(num_heads: int, head_dim: int) -> _FusedAttention:
        return _FusedAttention(num_heads, head_dim, choices.attention, tuner)

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new: nn.Module | None = None
            if isinstance(child, Bottleneck):
                new = _FusedBottleneck(child, conv)
            elif isinstance(child, MedBottleneck):
                new = _FusedMedBottleneck(child, conv)
            elif isinstance(child, TransformerBlock):
                new = _FusedTransformerBlock(child, linear, attention)
            elif isinstance(child, FCUUp):
                # conv_project + (folded) BN + ReLU in one primitive; the interpolation is unchanged.
                up: Any = child
                up.conv_project = conv(up.conv_project, True)
                up.act = nn.Identity()
            elif isinstance(child, FCUDown | _PoolFirstFCUDown):
                down: Any = child
                down.conv_project = conv(down.conv_project, False)
            if new is not None:
                setattr(parent, name, new)
    if isinstance(model, Conformer):
        stem: Any = model.stem
        stem.conv = conv(stem.conv, True)
        stem.act = nn.Identity()
        if model.patch_embed is not None:
            model.patch_embed = conv(model.patch_embed, False)  # type: ignore[assignment]


def _set_attention(model: nn.Module, fused: bool) -> None:
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused = fused


class _CompiledUnderConfig(_InferenceOnly):
    """A ``torch.compile``'d module whose calls (and so its compilations) run under Inductor config patches.

    On torch 2.13, ``freezing`` passed through ``torch.compile(options=...)`` did not reach Inductor's freezing
    switch (checked: no weight packing in the generated code, 1.59x instead of 1.74x over plain for tiny), so
    the patches are applied around each call; a call that hits the compiled graph only pays for the context.
    Under CUDA graphs (``triton.cudagraphs``) each call starts a new graph step and returns copies of the
    outputs: the graph's own output buffers are overwritten by the next replay.
    """

    def __init__(self, compiled: nn.Module, patches: dict[str, Any]) -> None:
        super().__init__()
        self.compiled = compiled
        self.patches = dict(patches)
        self.cuda_graphs = bool(self.patches.get("triton.cudagraphs"))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(self.patches):
            if not self.cuda_graphs:
                return self.compiled(*args, **kwargs)
            torch.compiler.cudagraph_mark_step_begin()
            out = self.compiled(*args, **kwargs)
        return type(out)(*(None if t is None else t.clone() for t in out))


def compile_defaults(device: torch.device | str) -> dict[str, Any]:
    """Inductor config of ``optimize_for_inference(compile=True)`` per device type.

    CPU: ``freezing`` (weights constant-folded and prepacked for oneDNN / MKL). CUDA: ``max_autotune``
    (GEMM and convolution kernels chosen by timing Triton templates against cuBLAS / cuDNN at each shape)
    and ``triton.cudagraphs`` (the forward replayed as one CUDA graph: no per-kernel launch cost). Other
    devices: Inductor's defaults.
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return {"freezing": True}
    if kind == "cuda":
        return {"max_autotune": True, "triton.cudagraphs": True}
    return {}


class _Float32Head(nn.Module):
    """A head (norm or classifier) run in float32 on a low-precision feature map or token sequence."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x.float())


class _LowPrecision(_InferenceOnly):
    """Runs a model cast to ``dtype`` on the caller's float32 input; hands back float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: Tensor) -> Any:
        out = self.model(x.to(self.dtype, memory_format=self.memory_format))
        return type(out)(*(None if t is None else t.float() for t in out))


_HEADS = ("conv_head", "trans_norm", "trans_head")


def _cast(model: nn.Module, dtype: torch.dtype, float32_heads: bool) -> None:
    """Cast ``model`` to ``dtype`` in place, keeping the final norm and classifiers in float32 if asked."""
    heads = {}
    if float32_heads and isinstance(model, Conformer):
        heads = {name: getattr(model, name) for name in _HEADS if getattr(model, name) is not None}
        for name in heads:
            setattr(model, name, None)
    model.to(dtype)
    for name, head in heads.items():
        setattr(model, name, _Float32Head(head))


def optimize_for_inference(
    model: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    float32_heads: bool = True,
    channels_last: bool = True,
    fold_bn: bool = True,
    compile: bool = False,
    fuse_pointwise: bool = True,
    pool_first: bool = True,
    compile_options: dict[str, Any] | None = None,
    kernels: KernelChoices | None = None,
    tuner: KernelTuner | None = None,
) -> nn.Module:
    """An eval-mode copy of ``model`` that computes the same logits faster (the input model is not changed).

    Call it after moving the model to its device and dtype. ``dtype`` (e.g. ``torch.bfloat16``) casts the copy
    after folding; it then takes float32 input and returns float32 logits, and with ``float32_heads`` keeps the
    final norm and classifiers in float32. ``fuse_pointwise`` swaps in fused oneDNN modules on CPU float32 or
    bfloat16 (requires ``fold_bn`` and ``channels_last``; ignored elsewhere). ``pool_first`` moves the
    FCU-down average pooling before its 1x1 projection (an exact rewrite, see :class:`_PoolFirstFCUDown`).
    ``compile=True`` wraps ``torch.compile(fullgraph=True)`` of the folded channels-last model (one graph or
    an error; Inductor fuses pointwise ops itself, so the oneDNN swap is skipped); the first call compiles,
    under Inductor config ``compile_options`` over :func:`compile_defaults` (CPU: ``freezing=True``, which
    constant-folds and prepacks the weights when called without grad, e.g. under ``torch.inference_mode()``;
    CUDA: max-autotune and CUDA graphs).
    ``kernels`` says which kernel each fused op runs (default :class:`KernelChoices`: every choice ``auto``,
    timed at first use per shape by ``tuner``, default :func:`conformer.tuning.default_tuner`, and cached per
    CPU fingerprint; :meth:`KernelChoices.rules` measures nothing); :func:`kernel_decisions` lists what was
    chosen and why. The result is inference-only: ``.train()`` raises on fused modules, and gradients are off.
    """
    was_training = model.training
    model.eval()
    try:
        opt = copy.deepcopy(model)
    finally:
        model.train(was_training)
    opt.requires_grad_(False)
    param = next(opt.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model_dtype = param.dtype if param is not None else torch.float32
    dtype = dtype or model_dtype
    if fold_bn:
        _fold_all(opt, dtype)
    if pool_first:
        _pool_first(opt)
    if dtype != model_dtype:
        _cast(opt, dtype, float32_heads)
    if channels_last:
        opt = opt.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if (
        fuse_pointwise
        and not compile
        and fold_bn
        and channels_last
        and fused_kernels_available(device, dtype)
    ):
        _fuse_cpu(opt, kernels or KernelChoices(), tuner)
    else:
        _set_attention(opt, prefer_sdpa(device, dtype))
    if dtype != model_dtype:
        opt = _LowPrecision(opt, dtype, channels_last)
    if compile:
        options = {**compile_defaults(device), **(compile_options or {})}
        return _CompiledUnderConfig(cast(nn.Module, torch.compile(opt, fullgraph=True)), options)
    return opt


def kernel_decisions(model: nn.Module) -> list[Decision]:
    """The kernel choices an optimised model's fused modules have made so far (one per op and shape)."""
    seen: dict[tuple[str, str], Decision] = {}
    for module in model.modules():
        if isinstance(module, _Kernels):
            for decision in module.decisions.values():
                seen.setdefault((decision.kind, decision.key), decision)
    return list(seen.values())


def describe_kernels(model: nn.Module) -> str | None:
    """What the fused modules run, counted per op and input shape met so far, e.g. ``conv fused 14, aten 20;
    linear onednn 8; attention sdpa 2``; ``None`` for a model without them."""
    modules = [m for m in model.modules() if isinstance(m, _Kernels)]
    if not modules:
        return None
    parts = []
    for kind in ("conv", "linear", "attention"):
        counts: dict[str, int] = {}
        for m in modules:
            if m.kind == kind:
                for chosen in m._chosen.values():
                    counts[chosen] = counts.get(chosen, 0) + 1
        if counts:
            parts.append(f"{kind} " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))
        elif any(m.kind == kind for m in modules):
            parts.append(f"{kind} not called yet")
    return "; ".join(parts)
