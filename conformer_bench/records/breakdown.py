"""The time by component of one runner: a ``breakdown`` entry of a speed path or a profile.

Measured by :mod:`conformer_bench.breakdown`; a run that cannot have one (no module boundaries) writes only
its ``status`` and ``reason``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Record, Status


@dataclass
class ComponentTime(Record):
    """One component's share of a forward."""

    OPTIONAL = frozenset({"gflop_s", "ceiling_share"})

    seconds: float  # median over rounds
    samples_s: list[float]
    share_of_forward: float  # of the median uninstrumented forward
    paper_macs_per_image: int
    share_of_macs: float
    gflop_s: float | None = None
    ceiling_share: float | None = None


@dataclass
class BreakdownOverhead(Record):
    """Instrumented / uninstrumented forward - 1, with its bootstrap interval."""

    ratio: float
    low: float
    high: float
    confidence: float


@dataclass
class BreakdownCeiling(Record):
    """The matmul rate the components' GFLOP/s are a share of (empty: none was measured)."""

    OPTIONAL = frozenset({"precision", "gflop_s", "op"})

    precision: str | None = None
    gflop_s: float | None = None
    op: str | None = None


_MEASURED = (
    "device batch_size rounds timer what components forward_s forward_samples_s instrumented_s "
    "instrumented_samples_s overhead hook_calls hook_cost_s sum_s unattributed_s unattributed_share "
    "within_tolerance tolerance paper_macs_per_image ceiling"
)


@dataclass
class Breakdown(Record):
    """Time by component of one runner; every field past ``reason`` is ``None`` unless the status is ok."""

    MEASURED = frozenset(_MEASURED.split())

    status: Status  # ok | unsupported
    reason: str | None = None
    device: str | None = None
    batch_size: int | None = None
    rounds: int | None = None
    timer: str | None = None  # perf_counter | cuda events
    what: str | None = None
    components: dict[str, ComponentTime] | None = None
    forward_s: float | None = None  # median uninstrumented forward
    forward_samples_s: list[float] | None = None
    instrumented_s: float | None = None
    instrumented_samples_s: list[float] | None = None
    overhead: BreakdownOverhead | None = None
    hook_calls: int | None = None  # hooked module calls per forward
    hook_cost_s: float | None = None  # calibrated cost of one pre + post hook pair
    sum_s: float | None = None  # components + the rest
    unattributed_s: float | None = None  # forward - sum (signed)
    unattributed_share: float | None = None
    within_tolerance: bool | None = None
    tolerance: float | None = None
    paper_macs_per_image: int | None = None
    ceiling: BreakdownCeiling | None = None

    @property
    def ok(self) -> bool:
        """Whether it was measured (ok, with components and a forward)."""
        return self.status == Status.OK and bool(self.components) and self.forward_s is not None

    def component(self, name: str) -> ComponentTime | None:
        return (self.components or {}).get(name)
