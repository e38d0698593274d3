"""The ``conformer-bench.profile`` record: one variant's params, FLOPs, memory and throughput."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Record, SchemaRecord, Status
from .breakdown import Breakdown
from .common import Environment, Variant
from .energy import EnergyReading

PROFILE_SCHEMA = "conformer-bench.profile"


# --- timing and memory of one phase ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceTiming(Record):
    """The reference workload timed beside each iteration (see :func:`conformer_bench.timing.gemm_reference`)."""

    workload: str
    flops: int
    gflop_per_s: float
    samples_s: list[float]


@dataclass(frozen=True)
class PhaseTiming(Record):
    """Per-iteration timing of one phase (``timing.measure``); ``latency_s`` is per batch."""

    OPTIONAL = frozenset({"img_per_ref_gflop", "ref_ratio_samples", "reference"})

    img_per_s: float
    batch_size: int
    requested_batch_size: int
    iters: int
    iters_auto: bool
    budget_s: float | None
    warmup: int
    warmup_s: list[float]
    latency_s: dict[str, float]
    iqr_over_median: float
    noisy: bool
    samples_s: list[float]
    timer: str
    energy: EnergyReading | None  # cuda: NVML energy of the timed loop; None on CPU
    img_per_j: float | None
    img_per_ref_gflop: float | None = None  # these three only when timed beside a reference workload
    ref_ratio_samples: list[float] | None = None
    reference: ReferenceTiming | None = None


@dataclass(frozen=True)
class CpuPhaseMemory(Record):
    """Resident-set peak of a phase on the CPU (``memory.cpu_peak_rss``)."""

    peak_rss_increase_bytes: int
    rss_before_bytes: int
    rss_after_bytes: int
    peak_rss_bytes: int
    peak_from_ru_maxrss: bool
    rss_samples: int
    sample_interval_s: float
    malloc_trim: bool


@dataclass(frozen=True)
class CudaPhaseMemory(Record):
    """Allocator peaks of a phase on a CUDA device and NVML's reading at its end (``memory.cuda_peak_memory``)."""

    OPTIONAL = frozenset({"nvml_error"})

    peak_allocated_bytes: int
    peak_reserved_bytes: int
    allocated_before_bytes: int
    nvml_used_bytes: int | None
    nvml_total_bytes: int | None
    nvml_error: str | None = None


# --- what the variant costs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamCounts(Record):
    """Parameters of the built model (``conformer_bench.flops.costs_of``): shared ones counted once."""

    total: int
    trainable: int
    by_component: dict[str, int]  # stem, cnn, transformer, fcu, heads


@dataclass(frozen=True)
class FlopCrossCheck(Record):
    """The same forward counted by a second tool, and how far its MACs are from the paper convention's."""

    tool: str
    flops: int
    macs: int
    by_operator: dict[str, int]
    relative_difference: float | None


@dataclass(frozen=True)
class FlopCounts(Record):
    """FLOPs of one image, batch 1, eval mode (``conformer_bench.flops.costs_of(..., exact=True)``); ``convention`` says
    what one unit is (fvcore counts one fused multiply-add as one flop)."""

    OPTIONAL = frozenset({"cross_check"})

    convention: str
    img_size: int
    batch_size: int
    fvcore_total: int
    paper_macs: int
    by_operator: dict[str, int]
    by_component: dict[str, dict[str, int]]  # component -> {"fvcore": n, "paper_macs": n}
    uncounted_ops: dict[str, int]
    unsupported_ops: dict[str, int]
    ignored_ops: dict[str, int]
    handles_added: list[str]
    cross_check: FlopCrossCheck | None = None


@dataclass(frozen=True)
class ProfileMemory(Record):
    """Peak memory of each profiled phase and how it was measured."""

    OPTIONAL = frozenset({"infer", "train"})

    device: str
    method: str
    infer: CpuPhaseMemory | CudaPhaseMemory | None = None
    train: CpuPhaseMemory | CudaPhaseMemory | None = None

    def phase(self, name: str) -> CpuPhaseMemory | CudaPhaseMemory | None:
        return self.infer if name == "infer" else self.train if name == "train" else None


# --- profile -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfiledPhase(Record):
    """One timed phase of a profile: its timing, then the precision it ran in, the last loss (train) and path."""

    timing: PhaseTiming
    precision: str
    path: str
    trained: bool = False
    last_loss: float | None = None  # written for a training phase only

    def to_dict(self) -> dict[str, Any]:
        out = {**self.timing.to_dict(), "precision": self.precision}
        if self.trained:
            out["last_loss"] = self.last_loss
        out["path"] = self.path
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ProfiledPhase:
        timing = {k: v for k, v in data.items() if k not in ("precision", "last_loss", "path")}
        return cls(
            PhaseTiming.from_dict(timing),
            data.get("precision"),
            data.get("path"),
            trained="last_loss" in data,
            last_loss=data.get("last_loss"),
        )


@dataclass(frozen=True)
class ProfileRunSettings(Record):
    """What a profile run was asked for and what it resolved to (device, batch, threads, paths per phase).

    Records written before inference backends lack ``backend`` and ``breakdown`` (read as eager, no
    breakdown); a failed sweep point holds only what was asked, without the resolved last four.
    """

    device: str
    batch_size: int | None  # None where nothing is timed (mode none) or the device default was asked
    img_size: int
    mode: str  # infer | train | both | none
    precision: str  # fp32 | bf16 | fp16 | amp
    channels_last: bool
    threads: int | None
    warmup: int | None
    iters: int | None  # None: auto-ranged from the warm-up
    count_flops: bool
    cross_check: bool
    path: str  # plain | optimized | compiled
    timing_reference: bool
    backend: str = "eager"  # where inference runs: eager, onnxruntime, openvino
    breakdown: bool = False
    autocast_dtype: str | None = None
    path_by_phase: dict[str, str] | None = None
    precision_by_phase: dict[str, str] | None = None
    optimizer: str | None = None  # a training phase's optimizer note


@dataclass
class ProfileRecord(SchemaRecord):
    """A ``conformer-bench.profile`` record: one variant's params, FLOPs, memory and throughput."""

    SCHEMA = PROFILE_SCHEMA
    VERSION = 1

    status: (
        Status  # ok | oom | nan | unsupported | failed (a sweep point that raised: what was asked and why)
    )
    reason: str | None
    label: str
    variant: Variant
    environment: Environment
    settings: ProfileRunSettings
    params: ParamCounts | None  # None only where the status is not ok
    flops: FlopCounts | None  # None also when FLOPs were not counted
    memory: ProfileMemory | None
    throughput: dict[str, ProfiledPhase] | None
    compile_s: dict[str, float] | None
    wall_s: float | None  # None only in a failed record
    breakdown: Breakdown | None = None  # --breakdown: time by component of inference

    OPTIONAL = frozenset({"breakdown"})
    MEASURED = frozenset({"params", "flops", "memory", "throughput", "compile_s", "wall_s"})
