"""What bf16 inference costs a trained model: validation top-1 per head in bf16 against fp32, and agreement.

The fp32 reference is the trained model in eval mode; the bf16 side is ``optimize_for_inference(model,
dtype=torch.bfloat16)``, the path ``speed`` times as ``optimized-bf16``. Both see the same validation images,
sharded over ranks like the main evaluation, and counts are summed over ranks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .precision import precision_support
from .records import Bf16Inference, Status
from .steps import HEADS

if TYPE_CHECKING:
    import torch

    from conformer.model import ConformerOutput

    from .distributed import DistContext


def _heads(out: ConformerOutput) -> list[torch.Tensor | None]:
    return [out.conv_logits, out.trans_logits, out.logits]


def bf16_inference_check(
    model: torch.nn.Module,
    dataset: Any,
    ctx: DistContext,
    *,
    device: str,
    batch_size: int,
    channels_last: bool,
) -> Bf16Inference:
    """Top-1 (percent) per head of fp32 and bf16 inference, their top-1 agreement and largest logits error."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from conformer.optimize import optimize_for_inference

    from . import distributed

    support = precision_support("bf16", device)
    result = Bf16Inference(
        path="optimize_for_inference(dtype=bfloat16) against the fp32 eval model",
        status=Status.OK if support.supported else Status.UNSUPPORTED,
        reason=support.reason,
        kernels=support.kernels,
    )
    if not support.supported:
        return result
    was_training = model.training
    model.eval()
    bf16 = optimize_for_inference(model, dtype=torch.bfloat16)
    loader = DataLoader(
        Subset(dataset, distributed.shard_indices(len(dataset), ctx)), batch_size=batch_size, shuffle=False
    )
    # [count, top1 fp32 conv/trans/sum, top1 bf16 conv/trans/sum, agreement conv/trans/sum]
    sums = torch.zeros(10, dtype=torch.float64, device=device)
    worst = torch.zeros((), dtype=torch.float64, device=device)
    present = [False, False, True]
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            ref = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
            out = bf16(x)
            sums[0] += y.numel()
            for j, (r, o) in enumerate(zip(_heads(ref), _heads(out), strict=True)):
                if r is None or o is None:
                    continue
                present[j] = True
                r_top, o_top = r.float().argmax(1), o.float().argmax(1)
                sums[1 + j] += (r_top == y).sum()
                sums[4 + j] += (o_top == y).sum()
                sums[7 + j] += (r_top == o_top).sum()
                rel = (o.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-30)
                worst = torch.maximum(worst, rel.double())
    model.train(was_training)
    distributed.all_reduce_sum(sums, ctx)
    distributed.all_reduce_max(worst, ctx)
    s = sums.tolist()
    count = s[0]

    def pct(offset: int) -> dict[str, float | None]:
        return {h: 100 * s[offset + j] / count if present[j] and count else None for j, h in enumerate(HEADS)}

    return replace(
        result,
        count=int(count),
        top1_fp32=pct(1),
        top1_bf16=pct(4),
        top1_agreement=pct(7),
        max_rel_diff=float(worst),
    )
