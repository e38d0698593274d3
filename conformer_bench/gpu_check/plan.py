"""What the GPU check runs: the sizes on a GPU, and the smallest ones for a rehearsal on CPU."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..records.gpu_check import PlanSummary


@dataclass(frozen=True)
class ProfilePoint:
    """One in-process profile: a variant at one batch, precision and inference path."""

    variant: str
    batch_size: int
    precision: str
    path: str  # plain (infer + train) | optimized (infer) | compiled (infer)
    mode: str
    img_size: int

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.precision}-b{self.batch_size}-{self.path}"


@dataclass(frozen=True)
class Plan:
    device: str
    rehearsal: bool
    budget_s: float  # wall clock for the whole check; steps that would not fit are skipped and say so
    img_size: int
    matrix: tuple[ProfilePoint, ...]
    compiled: ProfilePoint
    oom: ProfilePoint | None  # a batch far beyond memory (CUDA only: the CPU has no OOM error to catch)
    warmup: int
    budget_per_phase_s: dict[str, float]  # auto-ranged timed iterations per phase
    min_iters: int
    max_iters: int
    matrix_budget_s: float
    logits_variant: str
    logits_batch: int
    ceiling_size: int
    ceiling_reps: int
    speed_variant: str
    speed_batch: int
    speed_rounds: int
    shares_variant: str = "base"  # compiled paths' shares of the matmul ceilings (max-autotune, CUDA graphs)
    shares_batch: int = 128
    finetune_variant: str = "micro"
    ablate_variant: str = "micro"
    ablate_img_size: int = 32
    ablate_batch: int = 16
    torchrun_steps: int = 20
    subprocess_cap_s: float = 120.0  # per CLI subprocess (finetune, ablate, torchrun)
    precisions: tuple[str, ...] = field(default=())

    def summary(self) -> PlanSummary:
        """The plan as ``environment.json`` records it (profile points by name)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return PlanSummary(
            **{
                **fields,
                "matrix": [p.name for p in self.matrix],
                "compiled": self.compiled.name,
                "oom": self.oom.name if self.oom else None,
                "budget_per_phase_s": dict(self.budget_per_phase_s),
                "precisions": list(self.precisions),
            }
        )


def _matrix(
    variants: tuple[str, ...], batches: tuple[int, ...], precisions: tuple[str, ...], img_size: int
) -> tuple[ProfilePoint, ...]:
    return tuple(
        ProfilePoint(v, b, p, path, "both" if path == "plain" else "infer", img_size)
        for v in variants
        for p in precisions
        for b in batches
        for path in ("plain", "optimized")
    )


def gpu_plan(budget_s: float = 285.0) -> Plan:
    """tiny and base at batch 1/32/128 in fp32, bf16, fp16, and base b128 compiled (max-autotune, CUDA graphs)
    against the matmul ceilings; aimed at about 5 minutes on one H100."""
    precisions = ("fp32", "bf16", "fp16")
    return Plan(
        device="cuda",
        rehearsal=False,
        budget_s=budget_s,
        img_size=224,
        matrix=_matrix(("tiny", "base"), (1, 32, 128), precisions, 224),
        compiled=ProfilePoint("tiny", 32, "bf16", "compiled", "infer", 224),
        oom=ProfilePoint("base", 4096, "bf16", "plain", "train", 224),
        warmup=2,
        budget_per_phase_s={"infer": 0.3, "train": 0.6},
        min_iters=5,
        max_iters=200,
        matrix_budget_s=110.0,
        logits_variant="tiny",
        logits_batch=8,
        ceiling_size=8192,
        ceiling_reps=10,
        speed_variant="tiny",
        speed_batch=32,
        speed_rounds=15,
        precisions=precisions,
    )


def rehearsal_plan(budget_s: float = 1800.0) -> Plan:
    """The same flow on CPU at the smallest sizes: nano and micro at 32², batch 2/4 (at 32² the last stage
    is 1x1, so BatchNorm cannot train on one image), fp32 and bf16 (fp16 is CUDA-only here)."""
    precisions = ("fp32", "bf16")
    return Plan(
        device="cpu",
        rehearsal=True,
        budget_s=budget_s,
        img_size=32,
        matrix=_matrix(("nano", "micro"), (2, 4), precisions, 32),
        compiled=ProfilePoint("nano", 2, "bf16", "compiled", "infer", 32),
        oom=None,
        warmup=1,
        budget_per_phase_s={"infer": 0.05, "train": 0.1},
        min_iters=2,
        max_iters=20,
        matrix_budget_s=300.0,
        logits_variant="nano",
        logits_batch=2,
        ceiling_size=256,
        ceiling_reps=5,
        speed_variant="nano",
        speed_batch=2,
        speed_rounds=3,
        shares_variant="nano",
        shares_batch=2,
        precisions=precisions,
        subprocess_cap_s=600.0,
    )
