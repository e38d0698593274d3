"""Decision rules: one :class:`Row` per metric, each with a status, the numbers behind it and whether it blocks.

Exact metrics must be equal. Noisy metrics fail only when the median change is past the fail threshold
*and* significant: Mann-Whitney p < alpha and the bootstrap interval of the ratio of medians lying wholly
past the threshold. Accuracy compares seed means in absolute units (percentage points): a drop fails when it
is past ``max(fail_abs, sigma_k * pooled seed sd)`` and Welch's t-test over the seeds, corrected for
multiplicity (Benjamini-Hochberg), calls it significant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conformer.config import is_finite_number

from ..errors import BenchError
from ..records import Environment
from ..records.baseline import MAGNITUDE_LIMIT
from ..records.common import TIMING_KEYS
from ..records.report import ReportRow
from ..records.speed import LatencySummary
from ..stats import bootstrap_ratio, mann_whitney_p, summarize
from .metrics import Metric, MetricSet, timing_env
from .thresholds import MetricSpec, Thresholds

# Status -> rank (lower = more severe). A row blocks when its status is in BLOCKING and ``gate`` holds.
STATUS_ORDER = (
    "FAIL",
    "CHANGED",
    "CRASHED",
    "MISSING",
    "WARN",
    "IMPROVED",
    "NOISY",
    "UNSTABLE",
    "NOT COMPARABLE",
    "NEW",
    "OK",
)
BLOCKING = ("FAIL", "CHANGED", "CRASHED", "MISSING")


@dataclass
class Row:
    """The comparison of one metric. Numbers are raw (never rounded); ``delta`` is current - baseline."""

    metric: str
    status: str
    blocking: bool
    kind: str
    direction: str
    unit: str
    baseline: float | None = None
    current: float | None = None
    delta: float | None = None
    delta_rel: float | None = None
    n_baseline: int = 0
    n_current: int = 0
    p_value: float | None = None
    ci: tuple[float, float] | None = None  # interval of current/baseline (noisy metrics)
    sd_baseline: float | None = None  # seed standard deviation (accuracy)
    sd_current: float | None = None
    p_adjusted: float | None = None  # p_value corrected for multiplicity (accuracy, Benjamini-Hochberg)
    p_better: float | None = None  # one-sided p of an improvement (accuracy, for IMPROVED)
    tolerance: float | None = None  # effective fail tolerance used (accuracy, absolute)
    note: str = ""
    spec: MetricSpec | None = None

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (0 if self.blocking else 1, STATUS_ORDER.index(self.status), self.metric)

    def to_record(self) -> ReportRow:
        """The row as a report's JSON holds it."""
        return ReportRow(
            self.metric, self.status, self.blocking, self.kind, self.direction, self.unit, self.baseline,
            self.current, self.delta, self.delta_rel, self.n_baseline, self.n_current, self.p_value,
            list(self.ci) if self.ci else None, self.sd_baseline, self.sd_current, self.p_adjusted,
            self.p_better, self.tolerance, self.note, self.spec.to_dict() if self.spec else None,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return self.to_record().to_dict()


@dataclass
class Comparison:
    baseline: MetricSet
    current: MetricSet
    rows: list[Row]
    env_mismatch: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    threshold_sources: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> list[Row]:
        return [r for r in self.rows if r.blocking]

    @property
    def stale(self) -> list[Row]:
        return [r for r in self.rows if r.status == "IMPROVED"]

    @property
    def verdict(self) -> str:
        if self.blocking:
            return "FAIL"
        return "WARN" if any(r.status == "WARN" for r in self.rows) else "PASS"

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUS_ORDER, 0)
        for row in self.rows:
            counts[row.status] += 1
        return counts

    def exit_code(self, warn_only: bool = False) -> int:
        return 1 if self.blocking and not warn_only else 0


# --------------------------------------------------------------------------- statistics helpers


def _finite(metric: Metric) -> bool:
    return bool(metric.samples) and all(
        is_finite_number(v) and abs(v) <= MAGNITUDE_LIMIT for v in metric.samples
    )


def _center(samples: tuple[float, ...], statistic: str) -> float:
    return float(np.median(samples) if statistic == "median" else np.mean(samples))


def _spread(samples: tuple[float, ...]) -> tuple[float, float]:
    """(IQR/median, coefficient of variation); zeros for fewer than three samples."""
    if len(samples) < 3:
        return 0.0, 0.0
    summary = LatencySummary.from_dict(summarize(samples))
    mean = summary.mean
    cv = float(np.std(samples, ddof=1)) / mean if mean > 0 else math.inf
    return summary.iqr_over_median, cv


def _ratio_interval(cur: tuple[float, ...], base: tuple[float, ...], spec: MetricSpec) -> tuple[float, float]:
    """Bootstrap interval of ``center(current) / center(baseline)``."""
    if len(cur) < 2 or len(base) < 2:
        ratio = _center(cur, spec.statistic) / _center(base, spec.statistic)
        return ratio, ratio
    _, low, high = bootstrap_ratio(cur, base, confidence=spec.confidence, statistic=spec.statistic)
    return low, high


def _bad(change: float, direction: str) -> float:
    """How far ``change`` (current - baseline, or ratio - 1) goes in the worse direction."""
    if direction == "higher":
        return -change
    if direction == "lower":
        return change
    return abs(change)


def _bad_interval(low: float, high: float, direction: str) -> tuple[float, float]:
    """An interval of changes (ratio - 1) mapped to the worse direction, as (least bad, most bad)."""
    if direction == "higher":
        return -high, -low
    if direction == "lower":
        return low, high
    least = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
    return least, max(abs(low), abs(high))


def _past(rel_t: float | None, abs_t: float | None, rel: float, absolute: float) -> bool:
    return (rel_t is not None and rel > rel_t) or (abs_t is not None and absolute > abs_t)


# --------------------------------------------------------------------------- rules per kind


def _exact(row: Row, base: Metric, cur: Metric) -> None:
    b, c = base.samples[0], cur.samples[0]
    row.baseline, row.current, row.delta = b, c, c - b
    row.delta_rel = (c - b) / b if b else None
    if c != b:
        row.status, row.note = "CHANGED", "exact metric changed; update the baseline if intended"


def _noisy(row: Row, base: Metric, cur: Metric, spec: MetricSpec) -> None:
    if spec.significance == "welch":
        raise BenchError(
            f"{row.metric}: significance = 'welch' is for accuracy metrics (seeds); for timings use "
            "mann-whitney+bootstrap"
        )
    b_center, c_center = _center(base.samples, spec.statistic), _center(cur.samples, spec.statistic)
    row.baseline, row.current, row.delta = b_center, c_center, c_center - b_center
    if b_center <= 0:
        row.status, row.note = "NOT COMPARABLE", "baseline value is not positive"
        return
    row.delta_rel = c_center / b_center - 1.0
    unfit = _unfit(base, cur, spec)
    if unfit is not None:
        row.status, row.note = unfit
        return
    low, high = _ratio_interval(cur.samples, base.samples, spec)
    p = mann_whitney_p(base.samples, cur.samples)
    if len(base.samples) >= 2 and len(cur.samples) >= 2:  # a single sample has no interval nor test
        row.ci, row.p_value = (low, high), p
    _noisy_status(row, base, cur, spec, (low, high), p)


def _unfit(base: Metric, cur: Metric, spec: MetricSpec) -> tuple[str, str] | None:
    """Status and note when the sides cannot be judged: timings of other environments, or too much spread."""
    if spec.timing:
        differ = [k for k in TIMING_KEYS if dict(base.timing_env).get(k) != dict(cur.timing_env).get(k)]
        if differ:
            return "NOT COMPARABLE", "environment differs: " + ", ".join(differ)
    for side, samples in (("baseline", base.samples), ("current", cur.samples)):
        iqr_rel, cv = _spread(samples)
        limit_iqr, limit_cv = spec.unstable_iqr_over_median, spec.unstable_cv
        if limit_iqr is not None and iqr_rel > limit_iqr:
            return "UNSTABLE", f"{side} IQR/median {iqr_rel:.1%} > {limit_iqr:.0%}"
        if limit_cv is not None and cv > limit_cv:
            return "UNSTABLE", f"{side} CV {cv:.1%} > {limit_cv:.0%}"
    return None


def _noisy_status(
    row: Row, base: Metric, cur: Metric, spec: MetricSpec, ratio_ci: tuple[float, float], p: float
) -> None:
    """FAIL, WARN, NOISY or IMPROVED from the thresholds, the ratio's interval and the test's p-value."""
    assert row.baseline is not None and row.current is not None
    b_center, c_center = row.baseline, row.current
    low, high = ratio_ci
    bad_rel, bad_abs = (
        _bad(c_center / b_center - 1.0, spec.direction),
        _bad(c_center - b_center, spec.direction),
    )
    bad_least, bad_most = _bad_interval(low - 1.0, high - 1.0, spec.direction)

    def significant(rel_t: float | None, abs_t: float | None, good: bool = False) -> bool:
        """p < alpha and/or the whole interval past the threshold, as ``spec.significance`` asks."""
        sure = -bad_most if good else bad_least  # the end of the interval nearest no change
        by_ci = _past(rel_t, abs_t, sure, sure * b_center)
        by_p = p < spec.alpha
        return {
            "mann-whitney+bootstrap": by_p and by_ci,
            "mann-whitney": by_p,
            "bootstrap": by_ci,
            "none": True,
        }[spec.significance]

    past_fail = _past(spec.fail_rel, spec.fail_abs, bad_rel, bad_abs)
    past_warn = _past(spec.warn_rel, spec.warn_abs, bad_rel, bad_abs)
    if past_fail and significant(spec.fail_rel, spec.fail_abs):
        row.status = "FAIL" if spec.gate else "WARN"
        if not spec.gate:
            row.note = "past the fail threshold, but this metric does not gate"
    elif past_warn and significant(spec.warn_rel, spec.warn_abs):
        row.status = "WARN"
    elif past_warn or past_fail:
        row.status = "NOISY"
        row.note = (
            "past the threshold but not significant"
            if len(base.samples) > 1 and len(cur.samples) > 1
            else ("past the threshold; one sample per side cannot show significance")
        )
    elif (
        spec.direction != "equal"
        and _past(spec.stale_rel, spec.stale_abs, -bad_rel, -bad_abs)
        and significant(spec.stale_rel, spec.stale_abs, good=True)
    ):
        row.status, row.note = "IMPROVED", "large improvement: the baseline looks stale"


def _accuracy(row: Row, base: Metric, cur: Metric, spec: MetricSpec) -> None:
    """Seed means, their spread and Welch's t-test; the status is decided later by :func:`_decide_accuracy`,
    once the p-values of every accuracy metric are known (they are corrected for multiplicity together)."""
    b_center, c_center = _center(base.samples, spec.statistic), _center(cur.samples, spec.statistic)
    delta = c_center - b_center
    row.baseline, row.current, row.delta = b_center, c_center, delta
    row.delta_rel = delta / b_center if b_center else None
    floor = spec.sd_floor or 0.0
    sd_base = float(np.std(base.samples, ddof=1)) if len(base.samples) >= 2 else None
    sd_cur = float(np.std(cur.samples, ddof=1)) if len(cur.samples) >= 2 else None
    row.sd_baseline, row.sd_current = sd_base, sd_cur
    # The spread a difference is judged against: both sides' seed sd (floored, so that seeds that happen to
    # agree cannot make the tolerance zero), pooled.
    known = [max(sd, floor) for sd in (sd_base, sd_cur) if sd is not None]
    spread_sd = math.sqrt(sum(sd * sd for sd in known) / len(known)) if known else None
    spread = spec.sigma_k * spread_sd if spec.sigma_k is not None and spread_sd is not None else 0.0
    row.tolerance = max(spec.fail_abs, spread) if spec.fail_abs is not None else (spread or None)
    if spec.significance == "welch" and sd_base is not None and sd_cur is not None:
        row.p_value = _welch_p(base.samples, cur.samples, floor, spec.direction, worse=True)
        row.p_better = _welch_p(base.samples, cur.samples, floor, spec.direction, worse=False)


def _welch_p(
    base: tuple[float, ...], cur: tuple[float, ...], floor: float, direction: str, *, worse: bool
) -> float:
    """One-sided Welch's t-test p-value that ``cur`` is worse (or better) than ``base``, sds floored."""
    from scipy.stats import ttest_ind_from_stats

    if direction == "equal":
        alternative = "two-sided"
    else:
        lower_is_worse = direction == "higher"
        alternative = "less" if lower_is_worse == worse else "greater"
    result = ttest_ind_from_stats(
        float(np.mean(cur)),
        max(float(np.std(cur, ddof=1)), floor),
        len(cur),
        float(np.mean(base)),
        max(float(np.std(base, ddof=1)), floor),
        len(base),
        equal_var=False,
        alternative=alternative,
    )
    p = float(result.pvalue)
    return 1.0 if math.isnan(p) else p  # zero spread on both sides and no floor: no evidence either way


def _decide_accuracy(rows: list[Row]) -> None:
    """Correct the accuracy p-values for multiplicity, then give each accuracy row its status.

    A drop FAILs only when it is past the tolerance *and* significant (Welch's t, Benjamini-Hochberg over the
    metrics that ask for it); past the tolerance but not significant is NOISY. Where a side has a single seed
    there is no test and the tolerance alone decides, as the note says.
    """
    from scipy.stats import false_discovery_control

    family = [
        r
        for r in rows
        if r.kind == "accuracy" and r.p_value is not None and r.spec and r.spec.correction != "none"
    ]
    if family:
        adjusted = false_discovery_control([r.p_value for r in family], method="bh")
        for r, p_adj in zip(family, adjusted, strict=True):
            r.p_adjusted = float(p_adj)
    for row in rows:
        if row.kind == "accuracy" and row.status == "OK" and row.spec is not None and row.delta is not None:
            _accuracy_status(row, row.spec)


def _accuracy_status(row: Row, spec: MetricSpec) -> None:
    assert row.delta is not None
    bad = _bad(row.delta, spec.direction)
    p = row.p_adjusted if row.p_adjusted is not None else row.p_value
    tested = p is not None
    significant = p is None or p < spec.alpha  # untested: the threshold alone decides
    untested_note = "one seed on a side: no test, the tolerance alone decides"
    if spec.significance != "welch":
        untested_note = ""
    if row.tolerance is not None and bad > row.tolerance:
        if significant:
            row.status = "FAIL" if spec.gate else "WARN"
            row.note = "" if tested else untested_note
        else:
            row.status, row.note = "NOISY", "past the tolerance but not significant"
    elif spec.fail_abs is not None and bad > spec.fail_abs:
        row.status = "NOISY"
        row.note = f"past {spec.fail_abs:g} but within {spec.sigma_k:g}σ of the seeds"
    elif spec.warn_abs is not None and bad > spec.warn_abs and significant:
        row.status = "WARN"
    elif spec.direction != "equal" and spec.stale_abs is not None:
        spread = row.tolerance if row.tolerance is not None else 0.0
        better_p = row.p_better
        if -bad > max(spec.stale_abs, spread) and (better_p is None or better_p < spec.alpha):
            row.status, row.note = "IMPROVED", "large improvement: the baseline looks stale"


# --------------------------------------------------------------------------- driver


def environment_mismatch(
    baseline: Environment | None, current: Environment | None
) -> dict[str, tuple[Any, Any]]:
    """Timing-relevant fingerprint keys whose values differ."""
    pairs = zip(timing_env(baseline), timing_env(current), strict=True)
    return {key: (base, cur) for (key, base), (_, cur) in pairs if base != cur}


def compare(baseline: MetricSet, current: MetricSet, thresholds: Thresholds) -> Comparison:
    """Compare every metric of ``baseline`` and ``current``; raises BenchError when nothing can be compared."""
    _check_comparable(baseline, current)
    rows: list[Row] = []
    crashed_lost: dict[str, int] = {}  # crash prefix -> baseline metrics it took away
    for name in sorted(set(baseline.metrics) | set(current.metrics)):
        base, cur = baseline.metrics.get(name), current.metrics.get(name)
        crash = current.crash_for(name)
        if cur is None and crash is not None:
            crashed_lost[crash[0]] = crashed_lost.get(crash[0], 0) + 1
            continue
        rows.append(_metric_row(name, base, cur, baseline, thresholds))
    _decide_accuracy(rows)
    for row in rows:  # MISSING and CHANGED block even where a metric's rule is set not to gate.
        row.blocking = row.status in BLOCKING and (row.spec is None or row.spec.gate or row.status != "FAIL")
    rows += _crash_rows(baseline, current, crashed_lost)
    rows.sort(key=lambda r: r.sort_key)
    return Comparison(
        baseline,
        current,
        rows,
        environment_mismatch(baseline.environment, current.environment),
        thresholds.sources,
    )


def _check_comparable(baseline: MetricSet, current: MetricSet) -> None:
    if baseline.source_kind != current.source_kind:
        raise BenchError(
            f"baseline holds {baseline.source_kind} metrics but current holds {current.source_kind} metrics; "
            "compare results of the same command"
        )
    if not baseline.metrics:
        raise BenchError(
            f"baseline {baseline.source} holds no measured metric; write it from successful results"
        )
    if not current.metrics:
        why = (
            "; ".join(f"{k or 'record'} {v}" for k, v in sorted(current.crashed.items()))
            or "no metrics in it"
        )
        raise BenchError(f"current {current.source} holds no measured metric ({why}); rerun the measurement")


def _metric_row(
    name: str, base: Metric | None, cur: Metric | None, baseline: MetricSet, thresholds: Thresholds
) -> Row:
    """One metric's row, judged by its kind's rule (accuracy rows get their status later)."""
    ref = cur or base
    assert ref is not None
    spec = thresholds.spec_for(ref)
    row = Row(name, "OK", False, spec.kind, spec.direction, spec.unit, spec=spec)
    unusable = [
        side for side, m in (("baseline", base), ("current", cur)) if m is not None and not _finite(m)
    ]
    if unusable:  # whatever built the metric set: a value that is no number never passes the gate
        row.status, row.note = "MISSING", f"{' and '.join(unusable)}: a sample is not a finite number"
        return row
    if base is not None:
        row.n_baseline, row.baseline = len(base.samples), _center(base.samples, spec.statistic)
    if cur is not None:
        row.n_current, row.current = len(cur.samples), _center(cur.samples, spec.statistic)
    if base is None:
        row.status = "NEW"
        old_crash = baseline.crash_for(name)
        row.note = f"crashed in the baseline ({old_crash[1]})" if old_crash else "not in the baseline"
    elif cur is None:
        row.status, row.note = "MISSING", "not in the current results"
    elif base.context != cur.context and base.context is not None and cur.context is not None:
        row.status = "CHANGED"
        row.note = f"cell config differs (hash {base.context} -> {cur.context})"
    elif spec.kind == "exact":
        _exact(row, base, cur)
    elif spec.kind == "accuracy":
        _accuracy(row, base, cur, spec)
    else:
        _noisy(row, base, cur, spec)
    return row


def _crash_rows(baseline: MetricSet, current: MetricSet, crashed_lost: dict[str, int]) -> list[Row]:
    """One row per crashed record (a whole cell, a seed set, a timing section), not one per lost metric."""
    rows = []
    for prefix, reason in sorted(current.crashed.items()):
        lost = crashed_lost.get(prefix, 0)
        known = prefix in baseline.crashed
        if lost:
            note = f"{reason}; {lost} baseline metric(s) not measured"
        else:
            note = f"{reason} (crashed in the baseline too)" if known else f"{reason}; not in the baseline"
        blocking = bool(lost) or not known
        rows.append(Row(f"{prefix}*", "CRASHED", blocking, "-", "-", "", n_baseline=lost, note=note))
    return rows
