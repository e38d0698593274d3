"""The verdict of an A/B record: one report row per cell and phase, judged by the paired rule.

Throughput (``<cell>/paired.<phase>.img_per_s``): the head's images per second over the base's, from the
median of the per-round time ratios. A cell FAILs when the whole interval lies past ``fail_rel`` (a drop)
and the signed-rank test says the rounds centre away from no change (p-values corrected over the cells,
Benjamini-Hochberg); it WARNs when the estimate is past ``warn_rel`` and significant. Instruction counts
(``<cell>/paired.infer.instructions``, under callgrind) are nearly deterministic: the threshold alone
decides. A geometric mean over the cells catches a change that slows every cell a little.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from ..records import ABRecord, PairedCell, Status
from ..report.compare import BLOCKING, Comparison, Row
from ..report.metrics import Metric, MetricSet
from ..report.thresholds import MetricSpec, Thresholds
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
    estimates: list[CellEstimate] = field(default_factory=list)
    geomean: dict[str, PairedEstimate] = field(default_factory=dict)  # phase -> estimate over cells

    @property
    def verdict(self) -> str:
        return self.comparison.verdict

    def exit_code(self, warn_only: bool = False) -> int:
        return self.comparison.exit_code(warn_only)


def turn_times(cell: PairedCell, clock: str) -> tuple[list[float], list[float]]:
    """Each round's base and head turn times on ``clock`` (cpu or wall)."""
    if clock == "wall":
        return [r.base_wall_s for r in cell.rounds], [r.head_wall_s for r in cell.rounds]
    return [r.base_cpu_s for r in cell.rounds], [r.head_cpu_s for r in cell.rounds]


def _spec(thresholds: Thresholds, name: str, unit: str, direction: str) -> MetricSpec:
    return thresholds.spec_for(Metric(name, (), unit, direction, "paired"))


def _detectable_drop(estimate: PairedEstimate, fail_rel: float) -> float:
    """Throughput drop d such that an interval of this width centred on 1 - d lies just past fail_rel."""
    import math

    return 1.0 - (1.0 - fail_rel) * math.exp(-estimate.half_width)


def _timing_row(cell: PairedCell, clock: str, thresholds: Thresholds, seed: int) -> tuple[Row, CellEstimate]:
    name = f"{cell.label}/paired.{cell.phase}.img_per_s"
    spec = _spec(thresholds, name, "img/s", "higher")
    base, head = turn_times(cell, clock)
    estimate = paired_estimate(base, head, confidence=spec.confidence, seed=seed)
    images = cell.batch_size * cell.steps_per_turn
    row = Row(name, "OK", False, "paired", "higher", spec.unit or "img/s", spec=spec)
    row.baseline, row.current = images / statistics.median(base), images / statistics.median(head)
    row.delta = row.current - row.baseline
    row.delta_rel = estimate.throughput_ratio - 1.0
    row.ci = estimate.throughput_interval
    row.p_value = estimate.p_value
    row.n_baseline = row.n_current = estimate.n
    fail = spec.fail_rel if spec.fail_rel is not None else 0.0
    return row, CellEstimate(name, estimate, _detectable_drop(estimate, fail))


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
        row.status, row.note = "NOT COMPARABLE", "a side could not be counted under callgrind"
        return row
    row.delta = counts.head - counts.base
    row.delta_rel = counts.head / counts.base - 1.0 if counts.base else None
    if row.delta_rel is not None:
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
    """Benjamini-Hochberg over the cells' signed-rank p-values, then each timing row's status."""
    from scipy.stats import false_discovery_control

    tested = [r for r in rows if r.p_value is not None]
    corrected = [r for r in tested if r.spec is not None and r.spec.correction != "none"]
    if corrected:
        adjusted = false_discovery_control([r.p_value for r in corrected], method="bh")
        for r, p in zip(corrected, adjusted, strict=True):
            r.p_adjusted = float(p)
    for row in rows:
        assert row.spec is not None and row.ci is not None and row.delta_rel is not None
        worse, worse_least = -row.delta_rel, 1.0 - row.ci[1]
        if row.p_value is None:  # a summary over cells: its interval is the evidence
            significant = row.ci[0] > 1.0 or row.ci[1] < 1.0
        else:
            p = row.p_adjusted if row.p_adjusted is not None else row.p_value
            significant = p < row.spec.alpha
        _threshold_status(row, row.spec, worse, worse_least, significant=significant)


def _unmeasured_row(cell: PairedCell) -> Row:
    """A cell that did not run on both sides: a head failure blocks, anything else is shown."""
    name = f"{cell.label}/paired.{cell.phase}.img_per_s"
    row = Row(
        name, "NOT COMPARABLE", False, "paired", "higher", "img/s", note=f"{cell.status.value}: {cell.reason}"
    )
    if cell.status == Status.FAILED and cell.failed_side != "base":
        row.status = "CRASHED"
    return row


def compare_ab(record: ABRecord, thresholds: Thresholds) -> ABComparison:
    """Judge every cell of ``record`` under ``thresholds`` (its ``paired.*`` rules)."""
    clock = str(record.settings.get("clock", "cpu"))
    seed = int(record.settings.get("seed", 0))
    timing_rows: list[Row] = []
    other_rows: list[Row] = []
    estimates: list[CellEstimate] = []
    measured: dict[str, list[PairedCell]] = {}
    for cell in record.cells:
        if cell.status != Status.OK or not cell.rounds:
            other_rows.append(_unmeasured_row(cell))
            continue
        row, estimate = _timing_row(cell, clock, thresholds, seed)
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
    rows.sort(key=lambda r: r.sort_key)
    comparison = Comparison(
        _side_set(record, "base"), _side_set(record, "head"), rows, {}, thresholds.sources
    )
    return ABComparison(record, comparison, estimates, geomean)


def _side_set(record: ABRecord, side: str) -> MetricSet:
    revision: dict[str, Any] = record.base if side == "base" else record.head
    return MetricSet(
        source=str(revision.get("sha") or revision.get("name")),
        source_kind="ab",
        environment=record.environment,
    )
