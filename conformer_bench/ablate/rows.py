"""One cell's row of the summary: the raw numbers its record gives, and its deltas against the base cell."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..records import CellRecord, Status


@dataclass(frozen=True)
class PhaseRow:
    """Throughput of one timed phase (NaN and no batch when it was not timed)."""

    img_s: float = math.nan
    iqr_over_median: float = math.nan
    noisy: bool = False
    batch: int | None = None


@dataclass(frozen=True)
class Top1:
    """One head's top-1 over the seeds that finished: mean, sample std (two seeds or more) and count."""

    mean: float = math.nan
    std: float = math.nan
    n: int = 0


@dataclass
class CellRow:
    """One cell's raw (unrounded) numbers, read from its record; ``deltas`` (metric key -> delta against the
    base cell) and ``is_base`` are filled in by :func:`build_rows`."""

    record: CellRecord
    params: float
    paper_macs: float
    fvcore_flops: float
    macs: dict[str, float]  # component -> paper MACs
    time_ms: dict[str, float]  # part -> ms of the forward (empty without a breakdown)
    time_share_pct: dict[str, float]
    time_forward_ms: float
    phases: dict[str, PhaseRow]  # infer, train
    peak_mem_mib: dict[str, float]  # infer, train
    top1: dict[str, Top1]  # conv, trans, sum
    log: str | None  # the log of the scheduler job that ran the cell
    deltas: dict[str, float] = field(default_factory=dict)
    is_base: bool = False

    @property
    def label(self) -> str:
        return self.record.label

    @property
    def status(self) -> str:
        return str(self.record.status)

    @property
    def ok(self) -> bool:
        return self.record.status == Status.OK

    @property
    def summed(self) -> Top1:
        """Top-1 of the summed heads' logits (the accuracy figure plots)."""
        return self.top1.get("sum", Top1())

    @property
    def has_breakdown(self) -> bool:
        return bool(self.time_ms)

    @property
    def memory_device(self) -> str | None:
        profile = self.record.profile
        return profile.memory.device if profile is not None and profile.memory is not None else None

    def share_pct(self, component: str) -> float:
        paper = self.paper_macs
        return 100.0 * self.macs[component] / paper if paper and not math.isnan(paper) else math.nan
