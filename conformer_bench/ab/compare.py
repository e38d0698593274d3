"""The verdict of an A/B record: one report row per cell and phase, judged by the paired rule.

Throughput (``<cell>/paired.<phase>.img_per_s``): the head's images per second over the base's, from the
per-round time ratios (:mod:`.stats`). A cell FAILs when the whole interval lies past ``fail_rel`` (a drop)
and the bootstrap p-value, corrected over the cells (Benjamini-Hochberg), is below ``alpha``; it WARNs when
the estimate is past ``warn_rel`` and significant. Instruction counts (``<cell>/paired.infer.instructions``,
under callgrind) are nearly deterministic: the threshold alone decides. A geometric mean over the cells
catches a change that slows every cell a little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import BenchError
from ..records import ABRecord, PairedCell, Status
from ..report.compare import BLOCKING, Comparison, Row
from ..report.metrics import Metric, MetricSet, as_environment
from ..report.thresholds import MetricSpec, Thresholds
from . import CLOCKS
from .stats import PairedEstimate, geometric_mean_estimate, paired_estimate

GEOMEAN_LABEL = "all cells (geometric mean)"


@dataclass(frozen=True)
class CellEstimate:
    """A cell's estimate and the throughput drop it could have failed on (from its interval's width)."""

    key: str
    estimate: PairedEstimate
    detectable_drop: float  # the smallest throughput drop whose interval would lie wholly past fail_rel


@dataclass
class ABComparison:
    """The report rows of an A/B, plus what the run could resolve."""

    record: ABRecord
    comparison: Comparison
    clock: str
    estimates: list[CellEstimate] = field(default_factory=list)
    geomean: dict[str, PairedEstimate] = field(default_factory=dict)  # phase -> estimate over cells

    @property
    def verdict(self) -> str:
        return self.comparison.verdict

    def exit_code(self, warn_only: bool = False) -> int:
        return self.comparison.exit_code(warn_only)


def cell_clock(clock: str, cell: PairedCell) -> str:
    """The clock a cell is judged on: ``auto`` is the workers' CPU time for a one-thread cell (it leaves
    out time the worker was preempted) and the wall clock otherwise (CPU time adds up all threads, so lost
    parallelism would not show)."""
    if clock == "auto":
        return "cpu" if cell.threads == 1 else "wall"
    return clock


def turn_times(cell: PairedCell, clock: str) -> tuple[list[float], list[float], list[int]]:
    """Each round's base and head turn times on the cell's clock, and each round's epoch."""
    epochs = [r.epoch for r in cell.rounds]
    if cell_clock(clock, cell) == "wall":
        return [r.base_wall_s for r in cell.rounds], [r.head_wall_s for r in cell.rounds], epochs
    return [r.base_cpu_s for r in cell.rounds], [r.head_cpu_s for r in cell.rounds], epochs


def _spec(thresholds: Thresholds, name: str, unit: str, direction: str) -> MetricSpec:
    return thresholds.spec_for(Metric(name, (), unit, direction, "paired"))


def _detectable_drop(estimate: PairedEstimate, fail_rel: float) -> float:
    """Throughput drop d such that an interval of this width centred on 1 - d lies just past fail_rel."""
    return 1.0 - (1.0 - fail_rel) * math.exp(-estimate.half_width)


def _timing_row(cell: PairedCell, clock: str, thresholds: Thresholds, seed: int) -> tuple[Row, CellEstimate]:
    name = f"{cell.label}/paired.{cell.phase}.img_per_s"
    spec = _spec(thresholds, name, "img/s", "higher")
    base, head, epochs = turn_times(cell, clock)
    estimate = paired_estimate(base, head, epochs, confidence=spec.confidence, seed=seed)
    images = cell.batch_size * cell.steps_per_turn
    row = Row(name, "OK", False, "paired", "higher", spec.unit or "img/s", spec=spec)
    row.baseline = images / _median(base)
    row.current = row.baseline * estimate.throughput_ratio  # the paired estimate, not a separate median
    row.delta = row.current - row.baseline
    row.delta_rel = estimate.throughput_ratio - 1.0
    row.ci = estimate.throughput_interval
    row.p_value = estimate.p_value
    row.n_baseline = row.n_current = estimate.n
    fail = spec.fail_rel if spec.fail_rel is not None else 0.0
    return row, CellEstimate(name, estimate, _detectable_drop(estimate, fail))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _geomean_row(
    phase: str, cells: list[PairedCell], clock: str, thresholds: Thresholds, seed: int
) -> tuple[Row, PairedEstimate]:
    name = f"{GEOMEAN_LABEL}/paired.{phase}.img_per_s"
    spec = _spec(thresholds, name, "img/s", "higher")
    estimate = geometric_mean_estimate(
        [turn_times(c, clock) for c in cells], confidence=spec.confidence, seed=seed
    )
    row = Row(name, "OK", False, "paired", "higher", spec.unit or "img/s", spec=spec)
    row.delta_rel = estimate.throughput_ratio - 1.0
    row.ci = estimate.throughput_interval
    row.p_value = estimate.p_value
    row.n_baseline = row.n_current = len(cells)
    row.note = f"over {len(cells)} cells"
    return row, estimate


def _instruction_row(cell: PairedCell, thresholds: Thresholds) -> Row | None:
    counts = cell.instructions
    if counts is None:
        return None
    name = f"{cell.label}/paired.{cell.phase}.instructions"
    spec = _spec(thresholds, name, "instructions/img", "lower")
    row = Row(name, "OK", False, "paired", "lower", spec.unit or "instructions/img", spec=spec)
    row.baseline, row.current = counts.base, counts.head
    row.n_baseline = row.n_current = counts.count_steps
    if counts.base is None or counts.head is None:
        row.status = "CRASHED" if counts.head is None else "NOT COMPARABLE"
        row.note = counts.reason or "a side could not be counted under callgrind"
        return row
    row.delta = counts.head - counts.base
    row.delta_rel = counts.head / counts.base - 1.0
    _threshold_status(row, spec, row.delta_rel, row.delta_rel, significant=True)
    return row


def _threshold_status(
    row: Row, spec: MetricSpec, worse: float, worse_least: float, *, significant: bool
) -> None:
    """FAIL / WARN / NOISY / IMPROVED from how much worse the estimate (``worse``) and the least-bad end of
    its interval (``worse_least``) are, as fractions; negative means better."""
    fail, warn = spec.fail_rel, spec.warn_rel
    if fail is not None and significant and worse_least > fail:
        row.status = "FAIL" if spec.gate else "WARN"
        if not spec.gate:
            row.note = "past the fail threshold, but this metric does not gate"
    elif significant and ((warn is not None and worse > warn) or (fail is not None and worse > fail)):
        row.status = "WARN"
    elif (warn is not None and worse > warn) or (fail is not None and worse > fail):
        row.status, row.note = "NOISY", "past the threshold but not significant"
    elif significant and warn is not None and -worse > warn:
        row.status, row.note = "IMPROVED", "head is faster"


def _decide_timing(rows: list[Row]) -> None:
    """Benjamini-Hochberg over the rows' p-values, then each timing row's status."""
    from scipy.stats import false_discovery_control

    corrected = [
        r for r in rows if r.p_value is not None and r.spec is not None and r.spec.correction != "none"
    ]
    if corrected:
        adjusted = false_discovery_control([r.p_value for r in corrected], method="bh")
        for r, p in zip(corrected, adjusted, strict=True):
            r.p_adjusted = float(p)
    for row in rows:
        assert row.spec is not None and row.ci is not None and row.delta_rel is not None
        p = row.p_adjusted if row.p_adjusted is not None else row.p_value
        significant = p is not None and p < row.spec.alpha
        _threshold_status(row, row.spec, -row.delta_rel, 1.0 - row.ci[1], significant=significant)


def _unmeasured_row(cell: PairedCell) -> Row:
    """A cell that did not run on both sides: anything head could not do blocks; base's gaps are shown."""
    name = f"{cell.label}/paired.{cell.phase}.img_per_s"
    note = f"{cell.status.value}: {cell.reason}"
    row = Row(name, "NOT COMPARABLE", False, "paired", "higher", "img/s", note=note)
    if cell.failed_side != "base":
        row.status = "CRASHED"
    return row


def compare_ab(record: ABRecord, thresholds: Thresholds, clock: str | None = None) -> ABComparison:
    """Judge every cell of ``record`` under ``thresholds`` (its ``paired.*`` rules), on ``clock`` (default:
    the one the run was asked for). A BenchError when no cell was timed on both sides and nothing blocks."""
    clock = clock or record.settings.clock
    if clock not in CLOCKS:
        raise BenchError(f"clock {clock!r} is not one of {', '.join(CLOCKS)}")
    seed = record.settings.seed
    timing_rows: list[Row] = []
    other_rows: list[Row] = []
    estimates: list[CellEstimate] = []
    measured: dict[str, list[PairedCell]] = {}
    for i, cell in enumerate(record.cells):
        if cell.status != Status.OK or not cell.rounds:
            other_rows.append(_unmeasured_row(cell))
            continue
        row, estimate = _timing_row(cell, clock, thresholds, seed + i)
        timing_rows.append(row)
        estimates.append(estimate)
        measured.setdefault(cell.phase, []).append(cell)
        instructions = _instruction_row(cell, thresholds)
        if instructions is not None:
            other_rows.append(instructions)
    _decide_timing(timing_rows)
    geomean: dict[str, PairedEstimate] = {}
    summary_rows = []
    for phase, cells in measured.items():
        if len(cells) > 1:
            row, geomean[phase] = _geomean_row(phase, cells, clock, thresholds, seed)
            summary_rows.append(row)
    _decide_timing(summary_rows)
    rows = timing_rows + summary_rows + other_rows
    for row in rows:
        row.blocking = row.status in BLOCKING and (row.spec is None or row.spec.gate or row.status != "FAIL")
    if not timing_rows and not any(r.blocking for r in rows):
        reasons = "; ".join(f"{c.label}/{c.phase}: {c.reason}" for c in record.cells[:3]) or "no cells"
        raise BenchError(
            f"no cell could be timed on both revisions ({reasons}); choose a base revision that can build "
            "the experiment's cells, or cells it can build (--only)"
        )
    rows.sort(key=lambda r: r.sort_key)
    comparison = Comparison(
        _side_set(record, "base"), _side_set(record, "head"), rows, {}, thresholds.sources
    )
    return ABComparison(record, comparison, clock, estimates, geomean)


def _side_set(record: ABRecord, side: str) -> MetricSet:
    revision = record.base if side == "base" else record.head
    source = revision.sha or revision.name
    return MetricSet(source=source, source_kind="ab", environment=as_environment(record.environment))
