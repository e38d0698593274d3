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
* **Fused kernels** (CPU, float32, oneDNN available; ``fuse_pointwise=True``) — conv + ReLU and
  conv + residual add + ReLU run as one oneDNN primitive on weights reordered once per input shape; the
  linears run MKL's GEMM on weights pre-packed once per row count (~100 % of the 2048² matmul rate at
  ViT-Ti shapes, vs ~92 % for oneDNN's fused linear), with the GELU / residual add after it; attention uses
  ``scaled_dot_product_attention`` (measured ~3x faster than the explicit matmul-softmax on a 2-core Xeon at
  197 tokens; the per-device choice is :func:`prefer_sdpa`).
* **torch.compile** (``compile=True``) — the folded, pool-first, channels-last model compiled by Inductor
  with weight freezing on CPU (prepacked oneDNN convs and MKL linears). Compilation happens on the first call.

**bfloat16** (``dtype=torch.bfloat16``; CPU with native bf16, see ``conformer_bench.precision``) — BatchNorm
is folded in float64 and rounded once to bf16; the fused oneDNN convolutions and linears above run in bf16
(MKL's GEMM is fp32-only, so linears take oneDNN's, on prepacked weights); every kernel accumulates in float32,
and LayerNorm and softmax compute their statistics and sums in float32 on bf16 tensors. Attention is the
explicit matmul-softmax (faster than SDPA in bf16 on CPU; see :func:`prefer_sdpa` for its cost). The final
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
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Attention, Bottleneck, FCUDown, FCUUp, MedBottleneck, Mlp, TransformerBlock
from .model import Conformer

__all__ = [
    "fold_batchnorm",
    "fused_kernels_available",
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
    """Whether the optimised path uses SDPA for attention on this device and dtype.

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


# bf16 linears run oneDNN's GEMM on a weight reordered once per row count (as Inductor's freezing does):
# measured +1.4 % and +4.5 % over the plain weight in two runs (tiny, batch 8, one thread).
PACK_ONEDNN_LINEAR = True

# --- fused inference modules (oneDNN, CPU float32 / bfloat16) -----------------------------------------------------------


class _PackCache(nn.Module):
    """Holds weights re-laid-out for one input shape (opaque MKL / oneDNN tensors, built on first use)."""

    def __init__(self) -> None:
        super().__init__()
        self._packed: dict[tuple[int, ...], Tensor] = {}

    def __getstate__(self) -> dict[str, Any]:  # copies re-pack on their first call
        state = dict(self.__dict__)
        state["_packed"] = {}
        return state


class _FusedConv(_PackCache):
    """conv (+ bias) -> optional residual add -> optional ReLU as one oneDNN primitive (NHWC in and out).

    The weight is reordered into oneDNN's blocked layout once per input shape, not on every call.
    """

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
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
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            y = y + residual if residual is not None else y
            return F.relu(y) if self.relu else y
        x = x.contiguous(memory_format=torch.channels_last)
        weight = self._packed.get(tuple(x.shape))
        if weight is None:
            weight = self._packed[tuple(x.shape)] = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(x.shape)
            )
        unary = "relu" if self.relu else "none"
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x,
                weight,
                self.bias,
                self.padding,
                self.stride,
                self.dilation,
                self.groups,
                unary,
                [],
                "",
            )
        residual = residual.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "add", None, unary, [], "",
        )  # fmt: skip

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"{i * self.groups}, {o}, kernel=({kh}, {kw}), stride={tuple(self.stride)}, relu={self.relu}"


class _FusedLinear(_PackCache):
    """linear -> optional exact GELU, or linear -> residual add.

    With MKL the GEMM runs on a weight pre-packed for the call's row count (``torch.ops.mkl._mkl_linear``,
    measured ~8 % faster than oneDNN's ``_linear_pointwise`` at ViT shapes on AVX-512); the GELU / add then
    run as separate element-wise ops. Without MKL, and in bfloat16 (MKL's GEMM is fp32-only), one oneDNN
    primitive does both, on a weight reordered once per row count.
    """

    def __init__(self, linear: nn.Linear, gelu: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().contiguous(), False)
        self.bias = nn.Parameter(linear.bias.detach(), False) if linear.bias is not None else None
        self.gelu = gelu
        self.use_mkl = mkl_linear_available() and self.weight.dtype == torch.float32  # MKL: fp32 only
        self.pack_onednn = PACK_ONEDNN_LINEAR and self.weight.dtype == torch.bfloat16

    def _mkl(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1]
        packed = self._packed.get((rows,))
        if packed is None:
            packed = self._packed[(rows,)] = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)
        return torch.ops.mkl._mkl_linear(x, packed, self.weight, self.bias, rows)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        assert residual is None or not self.gelu, "GELU and a residual add are not fused together"
        if x.dtype != self.weight.dtype:  # e.g. under autocast: the unfused ops, which autocast handles
            y = F.linear(x, self.weight, self.bias)
            y = y + residual if residual is not None else y
            return F.gelu(y) if self.gelu else y
        if self.use_mkl:
            y = self._mkl(x)
            if residual is not None:
                return y.add_(residual)
            return F.gelu(y) if self.gelu else y
        weight = self._onednn_weight(x) if self.pack_onednn else self.weight
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, self.bias, "add")
        if self.gelu:  # algorithm "none" = erf GELU, as nn.GELU()
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "gelu", [], "none")
        return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")

    def _onednn_weight(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1]
        packed = self._packed.get((rows,))
        if packed is None:
            packed = self._packed[(rows,)] = torch.ops.mkldnn._reorder_linear_weight(self.weight, rows)
        return packed


class _InferenceOnly(nn.Module):
    def train(self, mode: bool = True) -> _InferenceOnly:
        if mode:
            raise RuntimeError("an optimize_for_inference() model is inference-only; train the plain model")
        return super().train(False)


class _FusedBottleneck(_InferenceOnly):
    """:class:`Bottleneck` (BN folded) with ReLUs and the residual add inside the convs."""

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        self.head_only = block.head_only
        self.res_conv = block.res_conv
        self.conv1 = _FusedConv(block.conv1, relu=True)
        self.conv2 = _FusedConv(block.conv2, relu=True)
        if not block.head_only:
            self.conv3 = _FusedConv(block.conv3, relu=True)
            if block.res_conv:
                self.residual_conv = _FusedConv(block.residual_conv, relu=False)

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
    def __init__(self, block: MedBottleneck) -> None:
        super().__init__()
        self.conv1 = _FusedConv(block.conv1, relu=True)
        self.conv2 = _FusedConv(block.conv2, relu=True)
        self.conv3 = _FusedConv(block.conv3, relu=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.conv2(self.conv1(x)), x)


class _FusedTransformerBlock(_InferenceOnly):
    """:class:`TransformerBlock` in eval: residual adds fused into ``proj``/``fc2``, GELU into ``fc1``."""

    def __init__(self, block: TransformerBlock, use_sdpa: bool) -> None:
        super().__init__()
        attn, mlp = block.attn, block.mlp
        assert isinstance(attn, Attention) and isinstance(mlp, Mlp)
        self.norm1 = block.norm1
        self.norm2 = block.norm2
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scale
        self.use_sdpa = use_sdpa
        self.qkv = _FusedLinear(attn.qkv)
        self.proj = _FusedLinear(attn.proj)
        self.fc1 = _FusedLinear(mlp.fc1, gelu=True)
        self.fc2 = _FusedLinear(mlp.fc2)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim) each
        if self.use_sdpa:
            a = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            a = (q @ k.transpose(-2, -1)).mul_(self.scale).softmax(dim=-1) @ v
        x = self.proj(a.transpose(1, 2).reshape(B, N, C), x)
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


def _fuse_cpu(model: nn.Module, use_sdpa: bool) -> None:
    """Swap blocks for their fused oneDNN forms in place (BatchNorms must already be folded)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new: nn.Module | None = None
            if isinstance(child, Bottleneck):
                new = _FusedBottleneck(child)
            elif isinstance(child, MedBottleneck):
                new = _FusedMedBottleneck(child)
            elif isinstance(child, TransformerBlock):
                new = _FusedTransformerBlock(child, use_sdpa)
            elif isinstance(child, FCUUp):
                # conv_project + (folded) BN + ReLU in one primitive; the interpolation is unchanged.
                up: Any = child
                up.conv_project = _FusedConv(up.conv_project, relu=True)
                up.act = nn.Identity()
            elif isinstance(child, FCUDown | _PoolFirstFCUDown):
                down: Any = child
                down.conv_project = _FusedConv(down.conv_project, relu=False)
            if new is not None:
                setattr(parent, name, new)
    if isinstance(model, Conformer):
        stem: Any = model.stem
        stem.conv = _FusedConv(stem.conv, relu=True)
        stem.act = nn.Identity()
        if model.patch_embed is not None:
            model.patch_embed = _FusedConv(model.patch_embed, relu=False)  # type: ignore[assignment]


def _set_attention(model: nn.Module, fused: bool) -> None:
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused = fused


class _CompiledUnderConfig(_InferenceOnly):
    """A ``torch.compile``'d module whose calls (and so its compilations) run under Inductor config patches.

    On torch 2.13, ``freezing`` passed through ``torch.compile(options=...)`` did not reach Inductor's freezing
    switch (checked: no weight packing in the generated code, 1.59x instead of 1.74x over plain for tiny), so
    the patches are applied around each call; a call that hits the compiled graph only pays for the context.
    """

    def __init__(self, compiled: nn.Module, patches: dict[str, Any]) -> None:
        super().__init__()
        self.compiled = compiled
        self.patches = dict(patches)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(self.patches):
            return self.compiled(*args, **kwargs)


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
) -> nn.Module:
    """An eval-mode copy of ``model`` that computes the same logits faster (the input model is not changed).

    Call it after moving the model to its device and dtype. ``dtype`` (e.g. ``torch.bfloat16``) casts the copy
    after folding; it then takes float32 input and returns float32 logits, and with ``float32_heads`` keeps the
    final norm and classifiers in float32. ``fuse_pointwise`` swaps in fused oneDNN modules on CPU float32 or
    bfloat16 (requires ``fold_bn`` and ``channels_last``; ignored elsewhere). ``pool_first`` moves the
    FCU-down average pooling before its 1x1 projection (an exact rewrite, see :class:`_PoolFirstFCUDown`).
    ``compile=True`` wraps ``torch.compile(fullgraph=True)`` of the folded channels-last model (one graph or
    an error; Inductor fuses pointwise ops itself, so the oneDNN swap is skipped); the first call compiles,
    under Inductor config ``compile_options`` (default on CPU: ``freezing=True``, which constant-folds and
    prepacks the weights when called without grad, e.g. under ``torch.inference_mode()``).
    The result is inference-only: ``.train()`` raises on fused modules, and gradients are off.
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
    use_sdpa = prefer_sdpa(device, dtype)
    if (
        fuse_pointwise
        and not compile
        and fold_bn
        and channels_last
        and fused_kernels_available(device, dtype)
    ):
        _fuse_cpu(opt, use_sdpa)
    else:
        _set_attention(opt, use_sdpa)
    if dtype != model_dtype:
        opt = _LowPrecision(opt, dtype, channels_last)
    if compile:
        options: dict[str, Any] = {"freezing": True} if device.type == "cpu" else {}
        options.update(compile_options or {})
        return _CompiledUnderConfig(cast(nn.Module, torch.compile(opt, fullgraph=True)), options)
    return opt
