"""The records of a GPU-check folder (``results/gpu/<gpu>/``) besides the profile, speed and finetune ones.

``environment.json`` (the environment with the check's plan), ``steps.json`` (each step's outcome),
``ceilings.json`` (matmul ceilings), ``logits.json`` (logits comparisons), ``shares.json`` (compiled paths
as shares of the ceilings) and ``checks.json`` (the verdicts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .base import Record, SchemaRecord, Status
from .common import Environment
from .speed import Ceiling, SpeedRecord

GPU_CHECK_SCHEMA = "conformer-bench.gpu-check"
CEILINGS_SCHEMA = "conformer-bench.gpu-check.ceilings"
LOGITS_SCHEMA = "conformer-bench.gpu-check.logits"
SHARES_SCHEMA = "conformer-bench.gpu-check.shares"

Verdict = Literal["PASS", "FAIL", "SKIP"]
VERDICTS: tuple[Verdict, ...] = ("PASS", "FAIL", "SKIP")


# --- what the check ran ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanSummary(Record):
    """The plan a check ran (``gpu_check.plan.Plan``), profile points by name."""

    device: str
    rehearsal: bool
    budget_s: float
    img_size: int
    matrix: list[str]
    compiled: str
    oom: str | None
    warmup: int
    budget_per_phase_s: dict[str, float]
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
    shares_variant: str | None = None  # since the shares step
    shares_batch: int | None = None
    finetune_variant: str | None = None
    ablate_variant: str | None = None
    ablate_img_size: int | None = None
    ablate_batch: int | None = None
    torchrun_steps: int | None = None
    subprocess_cap_s: float | None = None
    precisions: list[str] | None = None


@dataclass(frozen=True)
class CheckEnvironment(Environment):
    """``environment.json``: the environment fingerprint, the plan and whether it was a CPU rehearsal."""

    plan: PlanSummary | None = None
    rehearsal: bool | None = None

    @classmethod
    def of(cls, fingerprint: Mapping[str, Any], plan: PlanSummary, rehearsal: bool) -> CheckEnvironment:
        """From ``env.fingerprint()``'s JSON (keys it leaves out stay out of the file)."""
        return cls.from_dict({**fingerprint, "plan": plan.to_dict(), "rehearsal": rehearsal})


@dataclass(frozen=True)
class CheckStep(Record):
    """One step of a check run: ok, failed, or skipped for the budget."""

    name: str
    status: Status
    elapsed_s: float
    exit_code: int | None  # a CLI subprocess's exit code
    detail: str


@dataclass(frozen=True)
class StepsLog(Record):
    """``steps.json``: the steps so far, rewritten after each one."""

    steps: list[CheckStep]
    elapsed_s: float


# --- in-process measurements -----------------------------------------------------------------------------


MatmulCeiling = Ceiling  # an n x n matmul timed in one precision (``speed.ceiling_record``)


@dataclass
class CeilingsRecord(SchemaRecord):
    """``ceilings.json``: the matmul ceilings the profile table's shares divide by."""

    SCHEMA = CEILINGS_SCHEMA
    VERSION = 1

    device: str
    ceilings: dict[str, MatmulCeiling]


@dataclass(frozen=True)
class LogitsComparison(Record):
    """One logits comparison: max |a - b| / max |b| (None: not finite), and why it could not run."""

    OPTIONAL = frozenset({"sdpa_calls", "error"})

    what: str
    max_rel_diff: float | None
    sdpa_calls: int | None = None  # SDPA runs: calls of scaled_dot_product_attention seen
    error: str | None = None


@dataclass
class LogitsRecord(SchemaRecord):
    """``logits.json``: logits of one batch compared across precisions and paths."""

    SCHEMA = LOGITS_SCHEMA
    VERSION = 1

    device: str
    variant: str
    batch_size: int
    img_size: int
    comparisons: dict[str, LogitsComparison]


@dataclass
class SharesRecord(SchemaRecord):
    """``shares.json``: achieved FLOP/s of each timed run as shares of the matmul ceilings, and the run."""

    SCHEMA = SHARES_SCHEMA
    VERSION = 1

    variant: str
    batch_size: int
    tf32_settings: dict[str, bool]
    shares: dict[str, dict[str, float]]  # run -> ceiling precision -> share
    speed: SpeedRecord


# --- the verdicts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult(Record):
    """One check's verdict and what it saw."""

    name: str
    status: Verdict
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}"


@dataclass
class GpuCheckRecord(SchemaRecord):
    """``checks.json``: every check's verdict and how many of each."""

    SCHEMA = GPU_CHECK_SCHEMA
    VERSION = 1

    counts: dict[str, int]
    checks: list[CheckResult]

    @classmethod
    def of(cls, checks: Sequence[CheckResult]) -> GpuCheckRecord:
        return cls({v: sum(c.status == v for c in checks) for v in VERDICTS}, list(checks))

    @property
    def failed(self) -> int:
        return sum(c.status == "FAIL" for c in self.checks)
