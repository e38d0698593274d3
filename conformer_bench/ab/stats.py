"""Statistics of paired rounds: the time ratio of head over base, its interval and its significance.

Each round gives one log ratio ``ln(head turn / base turn)``; the two turns of a round ran back to back (or
at once) on the same core, so what the machine was doing then hits both. Rounds come in epochs: each epoch
builds the cell anew on both sides (another memory layout), so rounds of one epoch share whatever that
build's layout did to either side. The estimate is the mean over epochs of each epoch's median log ratio;
its interval and p-value come from a two-stage bootstrap (epochs drawn with replacement, then rounds within
each drawn epoch), so that a layout's luck counts as the one draw it is, not as many independent rounds. A
geometric mean over cells (each cell resampled the same way) summarises a change that touches every cell.
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
    p_value: float  # two-sided bootstrap p-value of "no change"; at least 1 / RESAMPLES
    n: int  # rounds
    epochs: int

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


def _by_epoch(logs: np.ndarray, epochs: Sequence[int] | None) -> list[np.ndarray]:
    if epochs is None:
        return [logs]
    labels = np.asarray(epochs)
    if labels.shape != logs.shape:
        raise ValueError("every round needs its epoch")
    return [logs[labels == e] for e in np.unique(labels)]


def _bootstrap(groups: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """RESAMPLES draws of the mean over epochs of the median log ratio, epochs then rounds resampled."""
    picks = rng.integers(0, len(groups), (RESAMPLES, len(groups))) if len(groups) > 1 else None
    medians = np.empty((RESAMPLES, len(groups)))
    for j, group in enumerate(groups):
        medians[:, j] = np.median(group[rng.integers(0, group.size, (RESAMPLES, group.size))], axis=1)
    if picks is None:
        return medians[:, 0]
    return np.take_along_axis(medians, picks, axis=1).mean(axis=1)


def _centre(groups: list[np.ndarray]) -> float:
    return float(np.mean([np.median(g) for g in groups]))


def _estimate(centre: float, boot: np.ndarray, confidence: float, n: int, epochs: int) -> PairedEstimate:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    # Two-sided: how often the resampled estimate falls on the far side of no change.
    tail = min(float(np.mean(boot <= 0.0)), float(np.mean(boot >= 0.0)))
    p = min(1.0, max(2.0 * tail, 1.0 / RESAMPLES))
    return PairedEstimate(math.exp(centre), math.exp(float(low)), math.exp(float(high)), p, n, epochs)


def paired_estimate(
    base_s: Sequence[float],
    head_s: Sequence[float],
    epochs: Sequence[int] | None = None,
    *,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedEstimate:
    """Time ratio of head over base for one cell: per-epoch medians averaged, two-stage bootstrap."""
    logs = log_ratios(base_s, head_s)
    groups = _by_epoch(logs, epochs)
    boot = _bootstrap(groups, np.random.default_rng(seed))
    return _estimate(_centre(groups), boot, confidence, int(logs.size), len(groups))


def geometric_mean_estimate(
    cells: Sequence[tuple[Sequence[float], Sequence[float], Sequence[int] | None]],
    *,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedEstimate:
    """The geometric mean over cells of each cell's time ratio, each cell resampled as in
    :func:`paired_estimate`."""
    if not cells:
        raise ValueError("no cells to summarise")
    rng = np.random.default_rng(seed)
    per_cell = [_by_epoch(log_ratios(base, head), epochs) for base, head, epochs in cells]
    boot = np.mean([_bootstrap(groups, rng) for groups in per_cell], axis=0)
    centre = float(np.mean([_centre(groups) for groups in per_cell]))
    rounds = sum(int(sum(g.size for g in groups)) for groups in per_cell)
    return _estimate(centre, boot, confidence, rounds, sum(len(g) for g in per_cell))
