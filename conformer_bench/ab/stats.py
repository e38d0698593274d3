"""Statistics of paired rounds: the time ratio of head over base, its interval and its significance.

Each round gives one log ratio ``ln(head turn / base turn)``; the two turns of a round ran back to back (or
at once) on the same core, so what the machine was doing then hits both. The estimate is the median of the
log ratios with a percentile-bootstrap interval over rounds, and the Wilcoxon signed-rank test says whether
they centre away from zero. A geometric mean over cells (resampling rounds within each cell) summarises a
change that touches every cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 4000


@dataclass(frozen=True)
class PairedEstimate:
    """Head time over base time (> 1: head is slower), with its interval and two-sided p-value."""

    time_ratio: float
    low: float
    high: float
    p_value: float | None  # None where no test applies (a summary over cells)
    n: int

    @property
    def half_width(self) -> float:
        """Half the interval's width in log units: the resolution this estimate had."""
        return (math.log(self.high) - math.log(self.low)) / 2

    @property
    def throughput_ratio(self) -> float:
        return 1.0 / self.time_ratio

    @property
    def throughput_interval(self) -> tuple[float, float]:
        return 1.0 / self.high, 1.0 / self.low


def log_ratios(base_s: Sequence[float], head_s: Sequence[float]) -> np.ndarray:
    base, head = np.asarray(base_s, dtype=float), np.asarray(head_s, dtype=float)
    if base.shape != head.shape or base.size == 0:
        raise ValueError("paired samples need the same, non-zero number of rounds on both sides")
    if not (
        np.all(np.isfinite(base)) and np.all(np.isfinite(head)) and np.all(base > 0) and np.all(head > 0)
    ):
        raise ValueError("paired samples must be finite and positive")
    return np.log(head / base)


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def signed_rank_p(logs: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the log ratios (1.0 when every ratio is exactly 1)."""
    from scipy.stats import wilcoxon

    if logs.size < 2 or not np.any(logs != 0):
        return 1.0
    p = float(wilcoxon(logs, zero_method="wilcox", alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def paired_estimate(
    base_s: Sequence[float], head_s: Sequence[float], *, confidence: float = 0.95, seed: int = 0
) -> PairedEstimate:
    """Median time ratio of the rounds, its bootstrap interval and the signed-rank p-value."""
    logs = log_ratios(base_s, head_s)
    rng = np.random.default_rng(seed)
    medians = np.median(logs[rng.integers(0, logs.size, (RESAMPLES, logs.size))], axis=1)
    low, high = _interval(medians, confidence)
    return PairedEstimate(
        float(np.exp(np.median(logs))), math.exp(low), math.exp(high), signed_rank_p(logs), int(logs.size)
    )


def geometric_mean_estimate(
    cells: Sequence[tuple[Sequence[float], Sequence[float]]], *, confidence: float = 0.95, seed: int = 0
) -> PairedEstimate:
    """The geometric mean over cells of each cell's median time ratio; rounds resampled within each cell."""
    if not cells:
        raise ValueError("no cells to summarise")
    rng = np.random.default_rng(seed)
    per_cell = [log_ratios(base, head) for base, head in cells]
    boot = np.zeros(RESAMPLES)
    for logs in per_cell:
        boot += np.median(logs[rng.integers(0, logs.size, (RESAMPLES, logs.size))], axis=1)
    boot /= len(per_cell)
    low, high = _interval(boot, confidence)
    centre = float(np.mean([np.median(logs) for logs in per_cell]))
    return PairedEstimate(
        math.exp(centre), math.exp(low), math.exp(high), None, sum(len(x) for x in per_cell)
    )


def detectable_slowdown(estimate: PairedEstimate, fail_rel: float) -> float:
    """The slowdown that would put this interval wholly past ``fail_rel`` (a FAIL), given its width:
    ``(1 + fail_rel) * exp(half width) - 1``."""
    return (1.0 + fail_rel) * math.exp(estimate.half_width) - 1.0
