"""The ``conformer-bench.finetune`` record: a short fine-tuning run, epoch by epoch, and its outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Record, SchemaRecord, Status
from .common import Environment, Variant

FINETUNE_SCHEMA = "conformer-bench.finetune"


@dataclass(frozen=True)
class FinetuneEpoch(Record):
    """Training and validation numbers after one epoch."""

    OPTIONAL = frozenset({"top5", "cue_top1"})

    epoch: int
    step: int
    train_loss: float
    train_top1: float
    val_loss: float | None
    top1: dict[str, float | None]
    top5: dict[str, float | None] | None  # with 5 classes or more
    cue_top1: dict[str, float | None] | None  # local-global only
    lr: float
    img_per_s: float
    epoch_s: float
    eval_s: float
    eval_img_per_s: float


@dataclass(frozen=True)
class FinetuneFinal(Record):
    """The run's outcome: the last epoch's accuracies (``None`` when it failed), speed and peak memory."""

    OPTIONAL = frozenset({"top5", "cue_top1", "bf16_inference"})

    top1: dict[str, float | None]
    top5: dict[str, float | None] | None
    cue_top1: dict[str, float | None] | None
    val_loss: float | None
    val_count: int
    train_loss: float | None
    img_per_s: float | None
    train_s: float
    wall_s: float
    steps_done: int
    peak_memory_bytes: int
    peak_memory_kind: str
    bf16_inference: dict[str, Any] | None = None


@dataclass
class FinetuneRecord(SchemaRecord):
    """A ``conformer-bench.finetune`` record."""

    SCHEMA = FINETUNE_SCHEMA
    VERSION = 1

    status: Status  # ok | nan | failed
    reason: str | None
    environment: Environment
    variant: Variant
    data: dict[str, Any]
    hyper: dict[str, Any]
    settings: dict[str, Any]
    checkpoint: dict[str, Any] | None
    saved_checkpoint: str | None
    history: list[FinetuneEpoch]
    train_curve: list[dict[str, Any]]
    final: FinetuneFinal
