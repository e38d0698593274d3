"""Pieces of the measured steps shared by profile, speed and fine-tune: head names, the loss, autocast,
the inference paths."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from conformer.model import ConformerOutput

HEADS: tuple[str, ...] = ("conv", "trans", "sum")  # logit heads: CNN, transformer, and their sum
# How inference runs: the model as built, optimize_for_inference's copy, that copy under torch.compile.
PATHS: tuple[str, ...] = ("plain", "optimized", "compiled")


def head_logits(out: ConformerOutput) -> dict[str, torch.Tensor]:
    """``{conv, trans, sum}`` float32 logits of a ConformerOutput (absent heads left out)."""
    heads = {"conv": out.conv_logits, "trans": out.trans_logits, "sum": out.logits}
    return {name: t.float() for name, t in heads.items() if t is not None}


def heads_loss(out: ConformerOutput, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The release's loss: cross-entropy of each present head (in float32), averaged over the heads."""
    import torch.nn.functional as F

    losses = [
        F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
        for logits in (out.conv_logits, out.trans_logits)
        if logits is not None
    ]
    return sum(losses[1:], losses[0]) / len(losses)


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a fine-tune precision: fp32 -> ``None`` (no autocast), bf16, fp16."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on the device's type; no autocast for ``dtype=None``."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)
