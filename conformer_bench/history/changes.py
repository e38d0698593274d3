"""Change points: where a series steps to another level, with the step's size, its interval and its
significance.

The series is read in log units (a step is a ratio). ``ruptures`` (PELT, squared-error cost) proposes the
steps, with a penalty of ``PENALTY`` × σ² × log n, where σ is the series' measured noise: the larger of
the points' scatter (the median absolute difference between neighbours, which a step barely moves) and the
median of the points' own standard errors (a paired point's interval). Each proposed step is then tested
against its neighbouring steps by a pooled t-test of the two segments' log means (their scatter floored
at the points' own standard error), its p-value multiplied by the number of places the step could have been put
in that stretch (the search is part of the test). The least significant step is dropped and the rest are
tested again until every one left has p < ``alpha``; steps smaller than ``min_change`` are dropped too.
A step needs ``min_size`` points on each side: a single odd point is an outlier, not a new level.

Exact metrics (params, FLOPs) have no noise: every change of value is a step, with p = 0.

Measured before choosing (scripts/changepoint_measure.py): see docs/history.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .series import Series
from .store import RevisionInfo

PENALTY = 2.0  # x sigma^2 x log(n): the BIC penalty of one more segment in a series of known noise
ALPHA = 0.01
MIN_SIZE = 2
MIN_CHANGE = 0.02  # steps smaller than 2 % are not reported
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Step:
    """A step of a series at ``index`` (the first point of the new level)."""

    index: int
    ratio: float  # the new level over the old one (geometric means of the two segments)
    low: float  # 95 % interval of the ratio
    high: float
    p_value: float  # corrected for where the step could have been put
    before: int  # points in the segment before, and after
    after: int


def series_noise(logs: np.ndarray, errors: Sequence[float | None]) -> tuple[float, float]:
    """(the series' noise sigma, its floor from the points' own errors), both in log units."""
    known = [e for e in errors if e is not None and e > 0]
    floor = float(np.median(known)) if known else 0.0
    scatter = 0.0
    if logs.size >= 3:
        diffs = np.diff(logs)
        scatter = 1.4826 * float(np.median(np.abs(diffs))) / math.sqrt(2.0)
    return max(scatter, floor, 1e-9), floor


def log_errors(
    values: Sequence[float], lows: Sequence[float | None], highs: Sequence[float | None]
) -> list[float | None]:
    """Each point's standard error in log units, from its 95 % interval (None where it has none)."""
    out: list[float | None] = []
    for value, low, high in zip(values, lows, highs, strict=True):
        if low is None or high is None or low <= 0 or high <= 0 or value <= 0:
            out.append(None)
        else:
            out.append((math.log(high) - math.log(low)) / (2 * Z95))
    return out


def _test(y: np.ndarray, start: int, cut: int, end: int, floor: float, min_size: int) -> Step:
    """The step at ``cut`` between the stretch ``[start, cut)`` and ``[cut, end)``."""
    from scipy.stats import t

    left, right = y[start:cut], y[cut:end]
    n1, n2 = left.size, right.size
    df = n1 + n2 - 2
    pooled = math.sqrt(
        (float(np.sum((left - left.mean()) ** 2)) + float(np.sum((right - right.mean()) ** 2))) / df
    )
    sd = max(pooled, floor, 1e-12)
    delta = float(right.mean() - left.mean())
    se = sd * math.sqrt(1 / n1 + 1 / n2)
    places = max(1, (end - start) - 2 * min_size + 1)
    p = min(1.0, places * 2 * float(t.sf(abs(delta) / se, df)))
    half = float(t.ppf(0.975, df)) * se
    return Step(cut, math.exp(delta), math.exp(delta - half), math.exp(delta + half), p, n1, n2)


def _candidates(y: np.ndarray, sigma: float, min_size: int) -> list[int]:
    import ruptures

    if y.size < 2 * min_size:
        return []
    algo = ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(y.reshape(-1, 1))
    return [int(b) for b in algo.predict(pen=PENALTY * sigma**2 * math.log(y.size))][:-1]


def find_steps(
    values: Sequence[float],
    errors: Sequence[float | None] | None = None,
    *,
    alpha: float = ALPHA,
    min_size: int = MIN_SIZE,
    min_change: float = MIN_CHANGE,
) -> list[Step]:
    """The steps of a noisy series of positive values (oldest first), each significant at ``alpha``."""
    y = np.log(np.asarray(values, dtype=float))
    if y.size < 2 * min_size or not np.all(np.isfinite(y)):
        return []
    sigma, floor = series_noise(y, errors if errors is not None else [None] * y.size)
    cuts = _candidates(y, sigma, min_size)
    while cuts:
        bounds = [0, *cuts, y.size]
        steps = [_test(y, bounds[i], bounds[i + 1], bounds[i + 2], floor, min_size) for i in range(len(cuts))]
        weakest = max(range(len(steps)), key=lambda i: (steps[i].p_value, -abs(math.log(steps[i].ratio))))
        step = steps[weakest]
        if step.p_value < alpha and all(abs(s.ratio - 1) >= min_change for s in steps):
            return steps
        if step.p_value < alpha:  # every step is significant, but some are too small to report
            weakest = min(range(len(steps)), key=lambda i: abs(math.log(steps[i].ratio)))
        cuts.pop(weakest)
    return []


def exact_steps(values: Sequence[float]) -> list[Step]:
    """Every change of an exact value: a step with p = 0 and no interval."""
    out = []
    for i in range(1, len(values)):
        if values[i] != values[i - 1]:
            ratio = values[i] / values[i - 1] if values[i - 1] else math.inf
            out.append(Step(i, ratio, ratio, ratio, 0.0, i, len(values) - i))
    return out


# --- steps of the store's series ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangePoint:
    """A step of a series, placed between two revisions."""

    step: Step
    before: RevisionInfo  # the last revision of the old level
    revision: RevisionInfo  # the first revision of the new level (the step lies in before..revision)
    direction: str

    @property
    def regression(self) -> bool:
        """Worse in the metric's direction (any change of an exact metric counts)."""
        if self.direction == "higher":
            return self.step.ratio < 1
        if self.direction == "lower":
            return self.step.ratio > 1
        return True


@dataclass(frozen=True)
class SeriesSteps:
    series: Series
    change_points: list[ChangePoint]

    @property
    def newest(self) -> ChangePoint | None:
        return self.change_points[-1] if self.change_points else None


def series_steps(series: Series, *, alpha: float = ALPHA, min_change: float = MIN_CHANGE) -> SeriesSteps:
    """The change points of one series (exact metrics: every change; others: :func:`find_steps`)."""
    values = [p.value for p in series.points]
    if series.kind == "exact":
        steps = exact_steps(values)
    elif any(v <= 0 for v in values):
        steps = []  # steps are ratios: a series with values <= 0 is not read
    else:
        errors = log_errors(values, [p.low for p in series.points], [p.high for p in series.points])
        steps = find_steps(values, errors, alpha=alpha, min_change=min_change)
    points = series.points
    return SeriesSteps(
        series,
        [
            ChangePoint(s, points[s.index - 1].revision, points[s.index].revision, series.direction)
            for s in steps
        ],
    )
