"""Statistics of paired rounds: the time ratio of head over base, its interval and its significance.

Each round gives one log ratio ``ln(head turn / base turn)``; the two turns of a round ran back to back (or
at once) on the same core, so what the machine was doing then hits both. Rounds come in epochs: each epoch
builds the cell anew on both sides (another memory layout). The estimate is the median log ratio over all rounds (robust
to a burst that spoils a few of them). Its interval and p-value come from a bootstrap that resamples rounds
within each epoch — unless the epochs differ (Kruskal-Wallis p < 0.01 across them): then a build's luck is shared by its
rounds, and a two-stage bootstrap (epochs drawn with replacement, then rounds within each) counts each build
as the one draw it is. Measured on the 2-core VM: with both workers on one core, 2 of 64 cells showed such a
difference (what chance gives); with a core each, 25 of 40 (docs/ci.md). A geometric mean over cells (each
cell resampled its way) summarises a change that touches every cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 4000
HETEROGENEITY_ALPHA = 0.01  # epochs that differ more than this allows are resampled as clusters


@dataclass(frozen=True)
class PairedEstimate:
    """Head time over base time (> 1: head is slower), with its interval and two-sided p-value."""

    time_ratio: float
    low: float
    high: float
    p_value: float  # two-sided bootstrap p-value of "no change"; at least 1 / RESAMPLES
    n: int  # rounds
    epochs: int
    clustered: bool = False  # the epochs differed: resampled as clusters (a wider, honest interval)
    heterogeneity_p: float | None = None  # Kruskal-Wallis across epochs

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


def heterogeneity(groups: list[np.ndarray]) -> float | None:
    """Kruskal-Wallis p-value that the epochs' log ratios come from one distribution (None: one epoch)."""
    from scipy.stats import kruskal

    usable = [g for g in groups if g.size >= 2]
    if len(usable) < 2 or all(np.all(g == usable[0][0]) for g in usable):
        return None
    p = float(kruskal(*usable).pvalue)
    return None if math.isnan(p) else p


def _bootstrap(groups: list[np.ndarray], rng: np.random.Generator, clustered: bool) -> np.ndarray:
    """RESAMPLES draws of the median log ratio over all rounds, each epoch's rounds resampled within it; with
    ``clustered``, each epoch's slot first takes an epoch drawn with replacement."""
    sizes = np.array([g.size for g in groups])
    table = np.full((len(groups), sizes.max()), np.nan)
    for i, g in enumerate(groups):
        table[i, : g.size] = g
    columns = []
    for slot, size in enumerate(sizes):
        source = rng.integers(0, len(groups), RESAMPLES) if clustered else np.full(RESAMPLES, slot)
        index = np.floor(rng.random((RESAMPLES, size)) * sizes[source][:, None]).astype(int)
        columns.append(table[source[:, None], index])
    return np.median(np.concatenate(columns, axis=1), axis=1)


def _centre(groups: list[np.ndarray]) -> float:
    return float(np.median(np.concatenate(groups)))


def _estimate(
    centre: float,
    boot: np.ndarray,
    confidence: float,
    n: int,
    epochs: int,
    het: float | None,
    clustered: bool,
) -> PairedEstimate:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    # Two-sided: how often the resampled estimate falls on the far side of no change.
    tail = min(float(np.mean(boot <= 0.0)), float(np.mean(boot >= 0.0)))
    p = min(1.0, max(2.0 * tail, 1.0 / RESAMPLES))
    return PairedEstimate(
        math.exp(centre), math.exp(float(low)), math.exp(float(high)), p, n, epochs, clustered, het
    )


def _is_clustered(het: float | None) -> bool:
    return het is not None and het < HETEROGENEITY_ALPHA


def paired_estimate(
    base_s: Sequence[float],
    head_s: Sequence[float],
    epochs: Sequence[int] | None = None,
    *,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedEstimate:
    """Time ratio of head over base for one cell: the median over rounds, resampled by epoch."""
    logs = log_ratios(base_s, head_s)
    groups = _by_epoch(logs, epochs)
    het = heterogeneity(groups)
    boot = _bootstrap(groups, np.random.default_rng(seed), _is_clustered(het))
    return _estimate(_centre(groups), boot, confidence, int(logs.size), len(groups), het, _is_clustered(het))


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
    clustered = [_is_clustered(heterogeneity(groups)) for groups in per_cell]
    boot = np.mean([_bootstrap(g, rng, c) for g, c in zip(per_cell, clustered, strict=True)], axis=0)
    centre = float(np.mean([_centre(groups) for groups in per_cell]))
    rounds = sum(int(sum(g.size for g in groups)) for groups in per_cell)
    return _estimate(centre, boot, confidence, rounds, sum(len(g) for g in per_cell), None, any(clustered))
