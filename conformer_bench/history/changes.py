"""Change points: where a series steps to another level, with the step's size, its interval and its
significance.

The series is read in log units (a step is a ratio). ``ruptures`` (PELT, squared-error cost) proposes the
steps, with a penalty of ``PENALTY`` × σ² × log n, where σ is the series' measured noise: the larger of
the points' scatter (the median absolute difference between neighbours, which a step barely moves) and the
median of the points' own standard errors (a paired point's interval). Each proposed step is then tested
against its neighbouring steps: the pooled t statistic of the two segments' log means (their scatter
floored at the points' own standard error), and as p-value how often Gaussian noise of the same length
gives a larger t at the best of all the places the step could have been put (the search is part of the
test, so a flat series gets a false step at rate ``alpha``). The least significant step is dropped and the
rest are tested again until every one left has p < ``alpha``; steps smaller than ``min_change`` are dropped
too. A step needs ``min_size`` points on each side: a single odd point is an outlier, not a new level.

Exact metrics (params, FLOPs) have no noise: every change of value is a step, with p = 0.

Measured against apache-otava before choosing (scripts/changepoint_measure.py; README, *History across
revisions*).
"""

from __future__ import annotations

import functools
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
NULL_DRAWS = 20_000  # simulated series behind a p-value (its floor is 1 / (draws + 1))


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


def _split_t(y: np.ndarray, min_size: int) -> np.ndarray:
    """|t| of a pooled two-sample t-test at every place a step could be put, for each row of ``y``
    (places ``min_size`` .. n - ``min_size``), from cumulative sums."""
    n = y.shape[-1]
    cut = np.arange(min_size, n - min_size + 1)
    s1, q1 = np.cumsum(y, axis=-1), np.cumsum(y * y, axis=-1)
    left_sum, left_sq = s1[..., cut - 1], q1[..., cut - 1]
    right_sum, right_sq = s1[..., -1:] - left_sum, q1[..., -1:] - left_sq
    n1, n2 = cut.astype(float), (n - cut).astype(float)
    ss = (left_sq - left_sum**2 / n1) + (right_sq - right_sum**2 / n2)
    sd = np.sqrt(np.maximum(ss, 0.0) / (n - 2))
    diff = right_sum / n2 - left_sum / n1
    return np.abs(diff) / np.maximum(sd * np.sqrt(1 / n1 + 1 / n2), 1e-300)


@functools.lru_cache(maxsize=256)
def _max_t_null(n: int, min_size: int) -> np.ndarray:
    """The distribution of the largest |t| over all places of a step, in ``n`` points of pure Gaussian noise
    (the t statistic does not depend on the noise's scale): simulated once per length, seeded by it."""
    draws = int(min(NULL_DRAWS, max(2000, 4_000_000 // n)))
    noise = np.random.default_rng(n).standard_normal((draws, n))
    return np.sort(_split_t(noise, min_size).max(axis=1))


def _test(y: np.ndarray, start: int, cut: int, end: int, floor: float, min_size: int) -> Step:
    """The step at ``cut`` between the stretch ``[start, cut)`` and ``[cut, end)``: its p-value is how often
    noise alone gives a larger |t| at the best of all the places in the stretch."""
    from scipy.stats import t

    left, right = y[start:cut], y[cut:end]
    n1, n2 = left.size, right.size
    df = n1 + n2 - 2
    ss = float(np.sum((left - left.mean()) ** 2)) + float(np.sum((right - right.mean()) ** 2))
    sd = max(math.sqrt(ss / df), floor, 1e-12)
    delta = float(right.mean() - left.mean())
    se = sd * math.sqrt(1 / n1 + 1 / n2)
    null = _max_t_null(end - start, min_size)
    exceed = null.size - int(np.searchsorted(null, abs(delta) / se, side="left"))
    p = (exceed + 1) / (null.size + 1)
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
