"""The ``conformer-bench.finetune`` record: a short fine-tuning run, epoch by epoch, and its outcome.

Per-head numbers (``top1``, ``top5``) are dicts keyed by head (``conv``, ``trans``, ``sum``; ``None`` for a
head the variant lacks); ``cue_top1`` is keyed by cue (``local``, ``global``). Everything else is a field.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Record, SchemaRecord, Status
from .common import Environment, Variant

FINETUNE_SCHEMA = "conformer-bench.finetune"

# Defaults tuned so that ``finetune --variant micro`` on digits passes 95 % top-1 in well under a minute
# on a 2-core CPU (see tests/test_finetune.py::test_default_micro_digits_reaches_95).
DEFAULT_EPOCHS = 8
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 2e-3
DEFAULT_WARMUP = 0.1

Heads = dict[str, float | None]  # head (conv, trans, sum) -> percent; None: the variant has no such head


@dataclass(frozen=True)
class FinetuneSettings(Record):
    """Everything about a fine-tuning run except the architecture (the record's ``settings``).

    ``warmup`` (``--lr-warmup``) is the learning-rate warm-up: below 1 a fraction of all optimizer steps; 1 or
    more a number of epochs (may be fractional). ``epochs`` and ``steps`` exclude each other; with neither,
    ``DEFAULT_EPOCHS`` epochs run. ``steps`` counts optimizer steps; the last epoch may then be partial.
    ``batch_size`` is per process. ``drop_path=None`` keeps the variant's ``drop_path_rate``. ``checkpoint`` is
    a release ``.pth``: both heads are replaced for the dataset's classes; any other missing or unexpected
    key is an error unless ``allow_partial``. ``save`` writes the fine-tuned weights in the release's key
    format. ``train_size``/``val_size`` cap (or, for local-global, set) the number of images.
    """

    dataset: str = "digits"
    img_size: int | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    weight_decay: float = 0.05
    warmup: float = DEFAULT_WARMUP
    label_smoothing: float = 0.0
    drop_path: float | None = None
    clip_grad: float | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    workers: int = 0
    checkpoint: str | None = None
    allow_partial: bool = False
    save: str | None = None
    train_size: int | None = None
    val_size: int | None = None
    bf16_inference: bool = False  # also evaluate the trained model with bf16 inference against fp32


@dataclass(frozen=True)
class SkippedFile(Record):
    """A file of an image folder that was not used, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class FinetuneData(Record):
    """The data a run trained and evaluated on (``conformer_bench.data``): sizes first, then provenance.

    Which provenance fields are written depends on the source (digits, local-global, an image folder).
    """

    OPTIONAL = frozenset(
        {
            "origin",
            "path",
            "preprocessing",
            "cues",
            "split",
            "skipped_examples",
            "normalisation",
            "train_transform",
            "val_transform",
        }
    )

    source: str  # digits | local-global | folder
    num_classes: int
    classes: list[str]
    train_size: int
    val_size: int
    img_size: int
    skipped_files: int  # non-image or undecodable files (image folders only)
    origin: str | None = None
    path: str | None = None
    preprocessing: str | None = None
    cues: dict[str, str] | None = None  # local-global: cue (local, global) -> what carries it
    split: str | None = None
    skipped_examples: list[SkippedFile] | None = None
    normalisation: dict[str, list[float]] | None = None  # mean, std
    train_transform: str | None = None
    val_transform: str | None = None


@dataclass(frozen=True)
class RequestedLength(Record):
    """The length of the run as asked for (``--epochs`` / ``--steps``; None: not given)."""

    epochs: int | None
    steps: int | None


@dataclass(frozen=True)
class OptimizerSetup(Record):
    name: str
    betas: list[float]
    eps: float
    impl: str  # fused (CUDA) | foreach (CPU)
    no_decay: str


@dataclass(frozen=True)
class DistributedSetup(Record):
    world_size: int
    backend: str | None
    sampler: str  # DistributedSampler | EpochShuffle


@dataclass(frozen=True)
class FinetuneHyper(Record):
    """The hyper-parameters as they were resolved: schedule, optimizer, precision, distribution."""

    epochs: int
    steps: int
    steps_per_epoch: int
    requested: RequestedLength
    batch_size: int
    global_batch_size: int
    lr: float
    min_lr: float
    lr_schedule: str
    weight_decay: float
    warmup: float  # as given (--lr-warmup): a fraction of the steps below 1, else epochs
    warmup_steps: int
    label_smoothing: float
    drop_path: float
    clip_grad: float | None
    seed: int
    optimizer: OptimizerSetup
    loss: str
    precision: str
    grad_scaler: bool
    channels_last: bool
    workers: int
    checkpoint: str | None
    distributed: DistributedSetup


@dataclass(frozen=True)
class CheckpointLoad(Record):
    """What a ``--checkpoint`` held for the variant: keys loaded, the heads reset, and what did not fit."""

    path: str
    loaded_keys: int
    model_keys: int
    partial: bool  # keys outside the heads missing or unexpected (accepted with --allow-partial)
    body_missing: int
    body_unexpected: int
    missing: list[str]
    unexpected: list[str]
    shape_conflicts: list[list[object]]  # [key, checkpoint shape, model shape]
    heads_reset: list[str]
    report: str


@dataclass(frozen=True)
class TrainPoint(Record):
    """One point of the training-loss curve: the mean loss over the window of steps ending at ``step``."""

    step: int
    epoch: int
    loss: float
    lr: float


@dataclass(frozen=True)
class Bf16Inference(Record):
    """Validation top-1 per head of bf16 inference against the fp32 model (``--bf16-inference``)."""

    MEASURED = frozenset({"count", "top1_fp32", "top1_bf16", "top1_agreement", "max_rel_diff"})

    path: str
    status: Status  # ok | unsupported
    reason: str | None
    kernels: str | None
    count: int | None = None
    top1_fp32: Heads | None = None
    top1_bf16: Heads | None = None
    top1_agreement: Heads | None = None
    max_rel_diff: float | None = None


@dataclass(frozen=True)
class FinetuneEpoch(Record):
    """Training and validation numbers after one epoch."""

    OPTIONAL = frozenset({"top5", "cue_top1"})

    epoch: int
    step: int
    train_loss: float
    train_top1: float
    val_loss: float | None
    top1: Heads
    top5: Heads | None  # with 5 classes or more
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

    top1: Heads
    top5: Heads | None
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
    bf16_inference: Bf16Inference | None = None


@dataclass
class FinetuneRecord(SchemaRecord):
    """A ``conformer-bench.finetune`` record."""

    SCHEMA = FINETUNE_SCHEMA
    VERSION = 1

    status: Status  # ok | nan | failed
    reason: str | None
    environment: Environment
    variant: Variant
    data: FinetuneData
    hyper: FinetuneHyper
    settings: FinetuneSettings
    checkpoint: CheckpointLoad | None
    saved_checkpoint: str | None
    history: list[FinetuneEpoch]
    train_curve: list[TrainPoint]
    final: FinetuneFinal

    @property
    def ok(self) -> bool:
        return self.status == Status.OK
