"""What a trial can be judged on: the metrics objectives and constraints name, each read from a typed record.

Three sources, in the order a trial pays for them: costs counted from the config in closed form
(:mod:`conformer_bench.costs`, no model built), the cell's profile record (timing, memory) and its fine-tune
records (top-1, mean over seeds). A metric says which settings make a record carry it, so an objective that no
record would carry is refused when the file is read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..flops import costs_of
from ..records import CpuPhaseMemory, CudaPhaseMemory, FinetuneRecord, ProfileRecord, Status

if TYPE_CHECKING:
    from conformer.config import ConformerConfig

    from ..profiling import ProfileSettings

COSTS, PROFILE, FINETUNE = "costs", "profile", "finetune"
PHASE_MODES = {"infer": ("infer", "both"), "train": ("train", "both")}


@dataclass(frozen=True)
class TrialMeasures:
    """Everything measured or counted for one trial, as typed records."""

    params: int
    paper_macs: int
    fvcore_flops: int
    img_size: int
    profile: ProfileRecord | None = None
    finetunes: tuple[FinetuneRecord, ...] = ()

    def with_records(
        self, profile: ProfileRecord | None, finetunes: Sequence[FinetuneRecord]
    ) -> TrialMeasures:
        """These costs with a cell's profile and fine-tune records."""
        return dataclasses.replace(self, profile=profile, finetunes=tuple(finetunes))


@dataclass(frozen=True)
class RunPlan:
    """What the trials of a search run: the profile's mode and settings, and whether they fine-tune."""

    profile: Mapping[str, Any]
    finetune: bool


@dataclass(frozen=True)
class Metric:
    """A number a trial is judged on: its name in the file, its column title and what it counts."""

    name: str
    title: str
    counts: str
    source: str  # costs | profile | finetune
    phase: str | None  # profile metrics: the phase timed (infer | train)
    read: Callable[[TrialMeasures], float | None]

    @property
    def cheap(self) -> bool:
        """Counted from the config before anything runs."""
        return self.source == COSTS

    def missing_from(self, has_finetune: bool, profile: ProfileSettings) -> str | None:
        """Why no trial's record would carry this metric under these settings (None: it would)."""
        if self.source == FINETUNE and not has_finetune:
            return "it comes from the fine-tune: add a [finetune] table (dataset, steps, seeds)"
        if self.name.endswith("_ref_gflop") and not profile.timing_reference:
            return "it is timed beside the reference GEMM: set timing_reference = true in [profile]"
        on_cuda = profile.device.startswith("cuda")
        if self.source == PROFILE and on_cuda and self.name.endswith("_ref_gflop"):
            return "the reference GEMM is timed on the CPU only: use device = 'cpu'"
        return None

    def value(self, measures: TrialMeasures) -> float | None:
        """The metric of ``measures``; None when the record does not carry it (or it is not finite)."""
        got = self.read(measures)
        return float(got) if got is not None and math.isfinite(got) else None


def _top1(head: str) -> Callable[[TrialMeasures], float | None]:
    def read(m: TrialMeasures) -> float | None:
        values = [
            f.final.top1.get(head)
            for f in m.finetunes
            if f.status == Status.OK and f.final.top1.get(head) is not None
        ]
        return sum(float(v) for v in values if v is not None) / len(values) if values else None

    return read


def _timing(phase: str, attribute: str) -> Callable[[TrialMeasures], float | None]:
    def read(m: TrialMeasures) -> float | None:
        phases = m.profile.throughput if m.profile is not None and m.profile.status == Status.OK else None
        if not phases or phase not in phases:
            return None
        value = getattr(phases[phase].timing, attribute)
        return float(value) if value is not None else None

    return read


def _peak_memory(phase: str) -> Callable[[TrialMeasures], float | None]:
    def read(m: TrialMeasures) -> float | None:
        memory = m.profile.memory if m.profile is not None else None
        probe = memory.phase(phase) if memory is not None else None
        peak = None
        if isinstance(probe, CudaPhaseMemory):
            peak = probe.peak_allocated_bytes
        elif isinstance(probe, CpuPhaseMemory):
            peak = probe.peak_rss_increase_bytes
        return float(peak) if peak is not None else None

    return read


def _phase_metrics(phase: str) -> list[Metric]:
    doing = "inference" if phase == "infer" else "training step (forward, backward, AdamW)"
    return [
        Metric(
            f"{phase}_img_per_s",
            f"{phase} img/s",
            f"images per second of the {doing}: batch / median iteration time, at the [profile] settings",
            PROFILE,
            phase,
            _timing(phase, "img_per_s"),
        ),
        Metric(
            f"{phase}_img_per_ref_gflop",
            f"{phase} img/ref GFLOP",
            f"images of the {doing} per reference GFLOP (median over pairs timed beside an fp32 GEMM)",
            PROFILE,
            phase,
            _timing(phase, "img_per_ref_gflop"),
        ),
        Metric(
            f"{phase}_peak_memory",
            f"{phase} peak memory (B)",
            f"peak memory of the {doing}: CUDA peak allocated bytes, or on the CPU the resident-set increase",
            PROFILE,
            phase,
            _peak_memory(phase),
        ),
    ]


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("params", "params", "parameters of the model (closed form)", COSTS, None, lambda m: m.params),
        Metric(
            "macs",
            "MACs",
            "paper-convention multiply-adds (conv + linear + matmul) per image at the trial's size, batch 1",
            COSTS,
            None,
            lambda m: m.paper_macs,
        ),
        Metric(
            "fvcore_flops",
            "fvcore FLOPs",
            "fvcore's count per image (one fused multiply-add = one flop; norms, pooling, upsampling too)",
            COSTS,
            None,
            lambda m: m.fvcore_flops,
        ),
        Metric("top1", "top-1 sum (%)", "top-1 % of the summed heads, mean over seeds", FINETUNE, None, _top1("sum")),
        Metric("top1_conv", "top-1 conv (%)", "top-1 % of the CNN head, mean over seeds", FINETUNE, None, _top1("conv")),
        Metric(
            "top1_trans", "top-1 trans (%)", "top-1 % of the transformer head, mean over seeds", FINETUNE, None,
            _top1("trans"),
        ),
        *_phase_metrics("infer"),
        *_phase_metrics("train"),
    ]
}  # fmt: skip


def cheap_measures(cfg: ConformerConfig, img_size: int) -> TrialMeasures:
    """Params, paper MACs and fvcore FLOPs of ``cfg`` at ``img_size``², in closed form (milliseconds)."""
    costs = costs_of(cfg, img_size)
    return TrialMeasures(costs.params.total, costs.paper_macs, costs.fvcore_total, img_size)


def profile_mode(metrics: Sequence[Metric]) -> str:
    """The profile mode that times every phase ``metrics`` read, and no other (``none``: nothing timed)."""
    phases = {m.phase for m in metrics if m.source == PROFILE}
    if phases == {"infer", "train"}:
        return "both"
    return str(next(iter(phases))) if phases else "none"
