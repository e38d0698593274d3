"""Short fine-tuning runs that say what a variant buys: train, evaluate each head, return a typed record.

The training and evaluation conventions follow the release: the loss is the mean over the present heads
of their cross-entropies; evaluation reports top-1 (and top-5 with >= 5 classes) of the CNN head, the
transformer head and of their summed logits, the headline number. AdamW (no decay on biases, norms and the
class token), linear warm-up then cosine decay to ``lr * MIN_LR_RATIO``, per optimizer step.

Under ``torchrun`` the same code runs with DistributedDataParallel (see :mod:`conformer_bench.distributed`):
``batch_size`` is per process, training data are split by a DistributedSampler, the validation set is split
without padding so that every image is evaluated exactly once overall, and counts are summed over ranks.
Only rank 0 saves a checkpoint; the caller writes the record on rank 0 only.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from conformer import ConformerConfig

from .bf16_check import bf16_inference_check
from .bounds import WORKER_LIMIT, check_count, check_seed
from .env import fingerprint, resolve_device
from .errors import BenchError
from .files import check_writable, write_failure
from .memory import process_peak_rss_bytes
from .records import Environment, Status, Variant
from .records.finetune import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_WARMUP,
    CheckpointLoad,
    DistributedSetup,
    FinetuneEpoch,
    FinetuneFinal,
    FinetuneHyper,
    FinetuneRecord,
    FinetuneSettings,
    Heads,
    OptimizerSetup,
    RequestedLength,
    TrainPoint,
)
from .steps import HEADS, autocast, heads_loss, precision_dtype

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from torch.utils.data import DataLoader, Dataset, Sampler

    from conformer import Conformer

    from .data import DataBundle
    from .distributed import DistContext

    Batches = DataLoader[tuple[Tensor, int]]

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DEFAULT_LR",
    "DEFAULT_WARMUP",
    "FinetuneSettings",
    "lr_at",
    "run_finetune",
    "validate_settings",
]

MIN_LR_RATIO = 0.01  # release: lr 1e-3 -> min lr 1e-5
LOG_EVERY = 10  # optimizer steps between host synchronisations (progress, loss curve, non-finite check)
PRECISIONS = ("fp32", "bf16", "fp16")


def validate_settings(s: FinetuneSettings) -> None:
    """Raise :class:`BenchError` (one line naming the fix) for any bad setting."""
    if s.epochs is not None and s.steps is not None:
        raise BenchError("--epochs and --steps exclude each other; give one")
    if s.epochs is not None and s.epochs < 1:
        raise BenchError(f"--epochs must be at least 1; got {s.epochs}")
    if s.steps is not None and s.steps < 1:
        raise BenchError(f"--steps must be at least 1; got {s.steps}")
    if s.batch_size < 2:
        raise BenchError(f"--batch-size must be at least 2 (BatchNorm needs 2 images); got {s.batch_size}")
    for option, value in (
        ("--lr", s.lr),
        ("--weight-decay", s.weight_decay),
        ("--lr-warmup", s.warmup),
        ("--label-smoothing", s.label_smoothing),
        ("--drop-path", s.drop_path),
        ("--clip-grad", s.clip_grad),
    ):
        if value is not None and not math.isfinite(value):
            raise BenchError(f"{option} must be a finite number; got {value}")
    if not 0 < s.lr < 1e30:
        raise BenchError(f"--lr must be a positive number below 1e30; got {s.lr}")
    if s.weight_decay < 0:
        raise BenchError(f"--weight-decay must be >= 0; got {s.weight_decay}")
    if s.warmup < 0:
        raise BenchError(f"--lr-warmup must be >= 0 (a fraction below 1, else epochs); got {s.warmup}")
    if not 0 <= s.label_smoothing < 1:
        raise BenchError(f"--label-smoothing must be in [0, 1); got {s.label_smoothing}")
    if s.drop_path is not None and not 0 <= s.drop_path < 1:
        raise BenchError(f"--drop-path must be in [0, 1); got {s.drop_path}")
    if s.clip_grad is not None and s.clip_grad <= 0:
        raise BenchError(f"--clip-grad must be positive; got {s.clip_grad}")
    if s.precision not in PRECISIONS:
        raise BenchError(f"--precision {s.precision!r} is not valid; use one of {', '.join(PRECISIONS)}")
    if s.workers < 0:
        raise BenchError(f"--workers must be >= 0; got {s.workers}")
    if not s.dataset.strip():
        raise BenchError("--dataset is empty; give digits, local-global or the path of an image folder")
    check_seed(s.seed)
    if s.workers:
        check_count(s.workers, "--workers", WORKER_LIMIT)


# --- small pieces --------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, total: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine to the minimum."""
    min_lr = base_lr * MIN_LR_RATIO
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: Conformer, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups (torch's parameter-group dicts): decay on weights of convs/linears; none on biases,
    norms, tokens."""
    skip = set(model.no_weight_decay())
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@contextlib.contextmanager
def _deterministic_cudnn(device: str) -> Iterator[None]:
    """cuDNN deterministic kernels, no autotuning, for the run only (restored afterwards)."""
    import torch

    if not device.startswith("cuda"):
        yield
        return
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def _peak_memory(device: str) -> tuple[int, str]:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return process_peak_rss_bytes(), "process_peak_rss"


def _pct(correct: float, count: float) -> float | None:
    return 100.0 * correct / count if count else None


class _Progress:
    """A rich progress bar on stderr (only on a terminal, on rank 0, when asked for)."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  train acc {task.fields[acc]}  {task.fields[speed]} img/s"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.bar.add_task(description, total=total, loss="-", acc="-", speed="-")
        self.bar.start()

    def update(self, step: int, loss: float, acc: float, speed: float, description: str) -> None:
        if self.bar is not None:
            self.bar.update(
                self.task,
                completed=step,
                loss=f"{loss:.4f}",
                acc=f"{acc:.1f}%",
                speed=f"{speed:.0f}",
                description=description,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# --- evaluation ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """One pass over the validation set: images seen, mean loss, top-1/top-5 per head, cue accuracies."""

    count: int
    val_loss: float | None
    top1: Heads
    top5: Heads | None  # with 5 classes or more
    cue_top1: dict[str, float | None] | None  # local-global: the summed head's texture / arrangement


def evaluate(
    model: Conformer,
    dataset: Dataset[tuple[Tensor, int]],
    ctx: DistContext,
    *,
    device: str,
    batch_size: int,
    precision: str,
    channels_last: bool,
    num_classes: int,
    cues: bool = False,
) -> Evaluation:
    """Top-1/top-5 per head and mean validation loss over the whole validation set, summed over ranks.

    The validation loss is plain cross-entropy (no label smoothing), averaged over heads and images.
    With ``cues`` (local-global), also how often the summed head gets the texture / arrangement right.
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from . import distributed

    idx = distributed.shard_indices(len(dataset), ctx)  # type: ignore[arg-type]
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False)
    k5 = min(5, num_classes)
    # [count, loss_sum, top1 conv/trans/sum, top5 conv/trans/sum, local cue, global cue]
    sums = torch.zeros(10, dtype=torch.float64, device=device)
    present = [False, False]
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(device, precision_dtype(precision)):
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x)
            heads = [out.conv_logits, out.trans_logits]
            present = [h is not None for h in heads]
            sums[0] += y.numel()
            sums[1] += heads_loss(out, y, 0.0).double() * y.numel()
            for j, logits in enumerate([*heads, out.logits]):
                if logits is None:
                    continue
                logits = logits.float()
                sums[2 + j] += (logits.argmax(1) == y).sum()
                top = logits.topk(k5, dim=1).indices
                sums[5 + j] += (top == y[:, None]).any(1).sum()
            if cues:
                pred = out.logits.argmax(1)
                sums[8] += (pred // 2 == y // 2).sum()
                sums[9] += (pred % 2 == y % 2).sum()
    model.train(was_training)
    distributed.all_reduce_sum(sums, ctx)
    s = sums.tolist()
    count = s[0]
    has = [*present, True]  # conv, trans, sum

    def per_head(offset: int) -> Heads:
        return {h: _pct(s[offset + j], count) if has[j] else None for j, h in enumerate(HEADS)}

    return Evaluation(
        count=int(count),
        val_loss=s[1] / count if count else None,
        top1=per_head(2),
        top5=per_head(5) if num_classes >= 5 else None,
        cue_top1={"local": _pct(s[8], count), "global": _pct(s[9], count)} if cues else None,
    )


# --- the run ---------------------------------------------------------------------------------------------
def _load_release_checkpoint(
    model: Conformer, path: str, num_classes: int, allow_partial: bool = False
) -> CheckpointLoad:
    """Load a release checkpoint, then fresh heads for ``num_classes``.

    Keys of the heads may differ (they are replaced); any other missing or unexpected key is an error
    unless ``allow_partial``.
    """
    from conformer import CheckpointError, load_checkpoint

    head_prefixes = ("conv_head.", "trans_head.")
    try:
        report = load_checkpoint(model, path, strict=False)
    except CheckpointError as exc:
        raise BenchError(str(exc)) from None
    body_conflicts = [c for c in report.shape_conflicts if not c[0].startswith(head_prefixes)]
    if body_conflicts:
        raise BenchError(
            f"checkpoint {path!r} does not fit the variant {model.cfg.name!r} outside the heads "
            f"({len(body_conflicts)} shape conflict(s), e.g. {body_conflicts[0][0]}); pick the matching --variant"
        )
    own = model.state_dict()
    loaded = len(own) - len(report.missing) - len(report.shape_conflicts)
    if loaded <= 0:
        raise BenchError(f"no key of checkpoint {path!r} matches the variant; pick the matching --variant")
    body_missing = [k for k in report.missing if not k.startswith(head_prefixes)]
    body_unexpected = [k for k in report.unexpected if not k.startswith(head_prefixes)]
    if (body_missing or body_unexpected) and not allow_partial:
        raise BenchError(
            f"checkpoint {path!r} covers the variant {model.cfg.name!r} only in part outside the heads "
            f"({len(body_missing)} missing, {len(body_unexpected)} unexpected of {len(own)} keys, e.g. "
            f"{(body_missing or body_unexpected)[0]}); pick the matching --variant, or pass --allow-partial"
        )
    import torch

    broken = [
        k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if broken:
        raise BenchError(
            f"checkpoint {path!r} holds non-finite weights in {len(broken)} tensor(s), e.g. {broken[0]}; "
            "no learning rate trains from it: use an intact checkpoint"
        )
    model.reset_classifier(num_classes)
    return CheckpointLoad(
        path=str(path),
        loaded_keys=loaded,
        model_keys=len(own),
        partial=bool(body_missing or body_unexpected),
        body_missing=len(body_missing),
        body_unexpected=len(body_unexpected),
        missing=report.missing,
        unexpected=report.unexpected,
        shape_conflicts=[[k, list(a), list(b)] for k, a, b in report.shape_conflicts],
        heads_reset=sorted(k for k in model.state_dict() if k.startswith(head_prefixes)),
        report=report.describe(),
    )


def run_finetune(
    cfg: ConformerConfig,
    settings: FinetuneSettings,
    *,
    label: str | None = None,
    show_progress: bool = True,
) -> FinetuneRecord:
    """Train ``cfg`` on ``settings.dataset`` and return its ``conformer-bench.finetune`` record.

    A non-finite training loss stops the run and returns a record with status nan (never raises); a
    ``--save`` that fails returns one with status failed; bad input raises :class:`BenchError`.
    """
    from . import distributed

    validate_settings(settings)
    t_start = time.perf_counter()
    base_device = resolve_device(settings.device)
    if settings.precision == "fp16" and not base_device.startswith("cuda"):
        raise BenchError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if settings.save is not None:
        check_writable(settings.save)
    ctx = distributed.init_from_env("cuda" if base_device.startswith("cuda") else "cpu")
    try:
        device = distributed.process_device(ctx, base_device)
        with _deterministic_cudnn(device):
            return _run(cfg, settings, ctx, device, label, show_progress, t_start)
    finally:
        distributed.shutdown(ctx)


@dataclass(frozen=True)
class _Schedule:
    """How many optimizer steps run, over how many epochs, with how long a warm-up."""

    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup_steps: int


def _schedule(s: FinetuneSettings, per_rank: int) -> _Schedule:
    steps_per_epoch = per_rank // s.batch_size
    if steps_per_epoch < 1:
        raise BenchError(
            f"--batch-size {s.batch_size} exceeds the {per_rank} training images per process; lower it"
        )
    total_steps = s.steps if s.steps is not None else (s.epochs or DEFAULT_EPOCHS) * steps_per_epoch
    warmup_steps = round(s.warmup * total_steps) if s.warmup < 1 else round(s.warmup * steps_per_epoch)
    return _Schedule(
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=math.ceil(total_steps / steps_per_epoch),
        warmup_steps=min(warmup_steps, total_steps),
    )


def _run_config(
    cfg: ConformerConfig, s: FinetuneSettings, num_classes: int, img_size: int
) -> ConformerConfig:
    """``cfg`` for the dataset: its classes and image size, and ``--drop-path`` when given."""
    if img_size % cfg.patch_size:
        raise BenchError(
            f"--img-size {img_size} is not a multiple of the patch size {cfg.patch_size}; "
            f"use {max(cfg.patch_size, round(img_size / cfg.patch_size) * cfg.patch_size)}"
        )
    drop_path = cfg.drop_path_rate if s.drop_path is None else s.drop_path
    try:
        return cfg.replace(num_classes=num_classes, img_size=img_size, drop_path_rate=drop_path)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def _make_optimizer(model: Conformer, s: FinetuneSettings, device: str) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`: fused kernels on CUDA, multi-tensor (foreach) on CPU."""
    import torch

    fused = device.startswith("cuda")
    return torch.optim.AdamW(
        param_groups(model, s.weight_decay),
        lr=s.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        fused=True if fused else None,
        foreach=None if fused else True,
    )


class _Trainer:
    """The training loop's state: the step count, the loss curve, per-epoch history and the outcome.

    Loss and accuracy accumulate on the device; the host synchronises once per window of ``LOG_EVERY``
    steps (and at the end of an epoch), where it also reduces over ranks and checks for a non-finite loss.
    """

    def __init__(
        self,
        s: FinetuneSettings,
        ctx: DistContext,
        device: str,
        model: Conformer,
        ddp_model: nn.Module,
        schedule: _Schedule,
    ) -> None:
        import torch

        self.s, self.ctx, self.device, self.schedule = s, ctx, device, schedule
        self.model, self.ddp_model = model, ddp_model
        self.optimizer = _make_optimizer(model, s, device)
        self.scaler = torch.amp.GradScaler("cuda") if s.precision == "fp16" else None
        self.dtype = precision_dtype(s.precision)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.history: list[FinetuneEpoch] = []
        self.curve: list[TrainPoint] = []
        self.status = Status.OK
        self.reason: str | None = None
        self.step = 0
        self.train_s = 0.0
        self.images_seen = 0  # on this rank
        self.zero = torch.zeros((), dtype=torch.float64, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)

    def lr(self, step: int) -> float:
        sched = self.schedule
        return lr_at(step, sched.total_steps, sched.warmup_steps, self.s.lr)

    def optimizer_step(self, x: Tensor, y: Tensor, lr: float) -> tuple[Tensor, Tensor]:
        """One step at ``lr``; returns the detached loss and the count of correct summed-head predictions."""
        import torch

        s = self.s
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            out = self.ddp_model(x)
            loss = heads_loss(out, y, s.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if s.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, s.clip_grad, foreach=True)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if s.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(self.params, s.clip_grad, foreach=True)
            self.optimizer.step()
        lossd = loss.detach()
        self.bad |= ~torch.isfinite(lossd)
        return lossd, (out.logits.detach().argmax(1) == y).sum()

    def train_epoch(self, epoch: int, loader: Batches, progress: _Progress) -> tuple[Tensor, Tensor, int]:
        """Steps of one epoch (until the epoch or the run ends, or the loss turns non-finite).

        Returns this rank's summed loss, correct predictions and image count over the epoch's windows.
        """
        import torch

        from . import distributed

        sched, zero = self.schedule, self.zero
        ep_loss, ep_correct, ep_count = zero.clone(), zero.clone(), 0
        win_loss, win_correct, win_count = zero.clone(), zero.clone(), 0
        t_win = time.perf_counter()
        for x, y in loader:
            if self.step >= sched.total_steps:
                break
            lr = self.lr(self.step)
            lossd, correct = self.optimizer_step(x, y, lr)
            n = y.shape[0]
            win_loss += lossd.double() * n
            win_correct += correct
            win_count += n
            self.step += 1
            self.images_seen += n
            last_in_epoch = self.step == sched.total_steps or self.step % sched.steps_per_epoch == 0
            if self.step % LOG_EVERY != 0 and not last_in_epoch:
                continue
            # One host sync per window: reduce over ranks, check for a non-finite loss.
            packed = torch.stack([win_loss, win_correct, self.bad.double(), zero + win_count])
            distributed.all_reduce_sum(packed, self.ctx)
            w_loss, w_correct, w_bad, w_count = packed.tolist()
            ep_loss += win_loss
            ep_correct += win_correct
            ep_count += win_count
            now = time.perf_counter()
            speed = win_count * self.ctx.world_size / max(now - t_win, 1e-9)
            if w_bad > 0:
                self.status = Status.NAN
                self.reason = (
                    f"non-finite training loss at or before step {self.step} of {sched.total_steps} "
                    f"(epoch {epoch + 1}); lower --lr or set --clip-grad"
                )
                break
            self.curve.append(TrainPoint(step=self.step, epoch=epoch + 1, loss=w_loss / w_count, lr=lr))
            description = f"epoch {epoch + 1}/{sched.epochs}"
            progress.update(self.step, w_loss / w_count, 100 * w_correct / w_count, speed, description)
            win_loss, win_correct, win_count = zero.clone(), zero.clone(), 0
            t_win = now
        return ep_loss, ep_correct, ep_count

    def record_epoch(
        self, epoch: int, sums: tuple[Tensor, Tensor, int], epoch_s: float, bundle: DataBundle
    ) -> None:
        """Reduce the epoch's training sums over ranks, evaluate, and append the epoch to the history."""
        import torch

        from . import distributed

        ep_loss, ep_correct, ep_count = sums
        ep = torch.stack([ep_loss, ep_correct, self.zero + ep_count])
        distributed.all_reduce_sum(ep, self.ctx)
        e_loss, e_correct, e_count = ep.tolist()
        distributed.broadcast_buffers(self.model, self.ctx)
        t_eval = time.perf_counter()
        metrics = evaluate(
            self.model,
            bundle.val,
            self.ctx,
            device=self.device,
            batch_size=self.s.batch_size,
            precision=self.s.precision,
            channels_last=self.s.channels_last,
            num_classes=bundle.num_classes,
            cues=bundle.cues,
        )
        eval_s = time.perf_counter() - t_eval
        self.history.append(
            FinetuneEpoch(
                epoch=epoch + 1,
                step=self.step,
                train_loss=e_loss / e_count,
                train_top1=100 * e_correct / e_count,
                val_loss=metrics.val_loss,
                top1=metrics.top1,
                top5=metrics.top5,
                cue_top1=metrics.cue_top1,
                lr=self.lr(self.step - 1),
                img_per_s=e_count / epoch_s,
                epoch_s=epoch_s,
                eval_s=eval_s,
                eval_img_per_s=metrics.count / eval_s,
            )
        )

    def run(self, loader: Batches, sampler: Sampler[int], bundle: DataBundle, progress: _Progress) -> None:
        """All epochs: train, then (unless the loss turned non-finite) evaluate and record the epoch."""
        from . import distributed

        self.ddp_model.train()
        for epoch in range(self.schedule.epochs):
            distributed.set_sampler_epoch(sampler, epoch)
            if hasattr(bundle.train, "set_epoch"):
                bundle.train.set_epoch(epoch)
            t_epoch = time.perf_counter()
            sums = self.train_epoch(epoch, loader, progress)
            epoch_s = time.perf_counter() - t_epoch
            self.train_s += epoch_s
            if self.status != Status.OK:
                break
            self.record_epoch(epoch, sums, epoch_s, bundle)
            if self.step >= self.schedule.total_steps:
                break


def _run(
    cfg: ConformerConfig,
    s: FinetuneSettings,
    ctx: DistContext,
    device: str,
    label: str | None,
    show_progress: bool,
    t_start: float,
) -> FinetuneRecord:
    """Build the data, the model and the schedule, train, save, and assemble the record."""
    import torch
    from torch.utils.data import DataLoader

    from . import distributed
    from .data import load_dataset

    seed_everything(s.seed)
    bundle = load_dataset(s.dataset, s.img_size, s.seed, s.train_size, s.val_size)
    run_cfg = _run_config(cfg, s, bundle.num_classes, bundle.img_size)

    model, ddp_model, ckpt_info = _build_model(run_cfg, s, ctx, device, bundle.num_classes)
    sampler = distributed.train_sampler(bundle.train_size, ctx, s.seed)
    schedule = _schedule(s, len(sampler))  # type: ignore[arg-type]
    loader = DataLoader(
        bundle.train,
        batch_size=s.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=s.workers,
        pin_memory=device.startswith("cuda"),
    )
    trainer = _Trainer(s, ctx, device, model, ddp_model, schedule)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    progress = _Progress(show_progress and ctx.is_main, schedule.total_steps, f"epoch 1/{schedule.epochs}")
    try:
        trainer.run(loader, sampler, bundle, progress)
    finally:
        progress.close()

    last = trainer.history[-1] if (trainer.history and trainer.status == Status.OK) else None
    peak = _peak_memory(device)
    saved, save_failure = _save(model, s, ctx, trainer.status)
    final = _final(trainer, bundle, last, t_start, peak)
    if s.bf16_inference and trainer.status == Status.OK and save_failure is None:
        check = bf16_inference_check(
            model, bundle.val, ctx, device=device, batch_size=s.batch_size, channels_last=s.channels_last
        )
        final = replace(final, bf16_inference=check)
    return _record(
        cfg=cfg,
        run_cfg=run_cfg,
        s=s,
        ctx=ctx,
        device=device,
        label=label,
        bundle=bundle,
        trainer=trainer,
        ckpt_info=ckpt_info,
        saved=saved,
        save_failure=save_failure,
        final=final,
    )


def _build_model(
    run_cfg: ConformerConfig, s: FinetuneSettings, ctx: DistContext, device: str, num_classes: int
) -> tuple[Any, Any, CheckpointLoad | None]:
    """The model (from ``--checkpoint`` when given) on ``device``, its DDP wrapper, and what the checkpoint held."""
    import torch

    from conformer import Conformer

    from . import distributed

    # Every rank initialises from the same seed (DDP also broadcasts rank 0's weights); stochastic depth
    # then draws from seed + rank so that ranks drop different paths.
    model = Conformer(run_cfg)
    ckpt_info = None
    if s.checkpoint is not None:
        ckpt_info = _load_release_checkpoint(model, s.checkpoint, num_classes, s.allow_partial)
    torch.manual_seed(s.seed + ctx.rank)
    model.to(device)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model, distributed.wrap_model(model, ctx, device), ckpt_info


def _save(
    model: Conformer, s: FinetuneSettings, ctx: DistContext, status: Status
) -> tuple[str | None, str | None]:
    """Write the weights (rank 0, a run that ended well, ``--save`` given): (path written, failure)."""
    from conformer import save_checkpoint

    if s.save is None or not ctx.is_main or status != Status.OK:
        return None, None
    try:
        save_checkpoint(model, s.save)
    except OSError as exc:  # the measurements stand; the record says the weights were not written
        return None, f"--save: {write_failure(exc, s.save)}"
    return str(s.save), None


def _final(
    trainer: _Trainer,
    bundle: DataBundle,
    last: FinetuneEpoch | None,
    t_start: float,
    peak: tuple[int, str],
) -> FinetuneFinal:
    """The last epoch's accuracies (``None`` after a failure; a failed ``--save`` keeps them) and totals."""
    peak_bytes, peak_kind = peak
    none_heads: dict[str, float | None] = dict.fromkeys(HEADS)
    train_s = trainer.train_s
    return FinetuneFinal(
        top1=last.top1 if last else none_heads,
        top5=(last.top5 if last else none_heads) if bundle.num_classes >= 5 else None,
        cue_top1=(last.cue_top1 if last else {"local": None, "global": None}) if bundle.cues else None,
        val_loss=last.val_loss if last else None,
        val_count=bundle.val_size,
        train_loss=last.train_loss if last else None,
        img_per_s=trainer.images_seen * trainer.ctx.world_size / train_s if train_s > 0 else None,
        train_s=train_s,
        wall_s=time.perf_counter() - t_start,
        steps_done=trainer.step,
        peak_memory_bytes=peak_bytes,
        peak_memory_kind=peak_kind,
    )


def _hyper(
    s: FinetuneSettings, ctx: DistContext, device: str, schedule: _Schedule, drop_path: float
) -> FinetuneHyper:
    """The run's hyper-parameters as they were resolved (schedule, optimizer, precision, distribution)."""
    return FinetuneHyper(
        epochs=schedule.epochs,
        steps=schedule.total_steps,
        steps_per_epoch=schedule.steps_per_epoch,
        requested=RequestedLength(epochs=s.epochs, steps=s.steps),
        batch_size=s.batch_size,
        global_batch_size=s.batch_size * ctx.world_size,
        lr=s.lr,
        min_lr=s.lr * MIN_LR_RATIO,
        lr_schedule="per-step linear warm-up, then cosine to min_lr",
        weight_decay=s.weight_decay,
        warmup=s.warmup,
        warmup_steps=schedule.warmup_steps,
        label_smoothing=s.label_smoothing,
        drop_path=drop_path,
        clip_grad=s.clip_grad,
        seed=s.seed,
        optimizer=OptimizerSetup(
            name="AdamW",
            betas=[0.9, 0.999],
            eps=1e-8,
            impl="fused" if device.startswith("cuda") else "foreach",
            no_decay="biases, norm weights, cls_token, pos_embed",
        ),
        loss="mean over present heads of cross-entropy",
        precision=s.precision,
        grad_scaler=s.precision == "fp16",
        channels_last=s.channels_last,
        workers=s.workers,
        checkpoint=s.checkpoint,
        distributed=DistributedSetup(
            world_size=ctx.world_size,
            backend=ctx.backend,
            sampler="DistributedSampler" if ctx.enabled else "EpochShuffle",
        ),
    )


def _record(
    *,
    cfg: ConformerConfig,
    run_cfg: ConformerConfig,
    s: FinetuneSettings,
    ctx: DistContext,
    device: str,
    label: str | None,
    bundle: DataBundle,
    trainer: _Trainer,
    ckpt_info: CheckpointLoad | None,
    saved: str | None,
    save_failure: str | None,
    final: FinetuneFinal,
) -> FinetuneRecord:
    """The ``conformer-bench.finetune`` record of a finished (or stopped) run."""
    status, reason = (
        (trainer.status, trainer.reason) if save_failure is None else (Status.FAILED, save_failure)
    )
    return FinetuneRecord(
        status=status,
        reason=reason,
        environment=Environment.from_dict(  # fingerprint() gives the environment's JSON object
            fingerprint(
                device,
                s.precision,
                s.batch_size,
                bundle.img_size,
                world_size=ctx.world_size,
                dist_backend=ctx.backend,
                cudnn_deterministic=device.startswith("cuda"),
            )
        ),
        variant=Variant(name=cfg.name, label=label or cfg.name, config=run_cfg.to_dict()),
        data=bundle.description,
        hyper=_hyper(s, ctx, device, trainer.schedule, run_cfg.drop_path_rate),
        settings=s,
        checkpoint=ckpt_info,
        saved_checkpoint=saved,
        history=trainer.history,
        train_curve=trainer.curve,
        final=final,
    )
