"""Robust statistics for timing samples: medians, quantiles, spread, and ratio intervals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NOISE_LIMIT = 0.10  # IQR/median above this flags a measurement as noisy


def summarize(samples: Sequence[float], noise_limit: float = NOISE_LIMIT) -> dict[str, Any]:
    """Median, quartiles, p90, p99, IQR and IQR/median of samples (e.g. seconds); never rounded."""
    arr = np.asarray(samples, dtype=float)
    if arr.size == 0:
        raise ValueError("no samples to summarise")
    q25, median, q75, p90, p99 = np.percentile(arr, [25, 50, 75, 90, 99])
    iqr = float(q75 - q25)
    rel = iqr / float(median) if median > 0 else float("inf")
    return {
        "n": int(arr.size),
        "median": float(median),
        "q25": float(q25),
        "q75": float(q75),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "p90": float(p90),
        "p99": float(p99),
        "iqr": iqr,
        "iqr_over_median": rel,
        "noisy": bool(rel > noise_limit),
    }


def bootstrap_ratio(
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    statistic: str = "median",
) -> tuple[float, float, float]:
    """Ratio ``center(num) / center(den)`` with a percentile-bootstrap interval (center: median or mean)."""
    num = np.asarray(numerator, dtype=float)
    den = np.asarray(denominator, dtype=float)
    if num.size == 0 or den.size == 0:
        raise ValueError("bootstrap_ratio needs samples on both sides")
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    center = np.median if statistic == "median" else np.mean
    rng = np.random.default_rng(seed)
    num_c = center(num[rng.integers(0, num.size, (resamples, num.size))], axis=1)
    den_c = center(den[rng.integers(0, den.size, (resamples, den.size))], axis=1)
    ratios = num_c / den_c
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return float(center(num) / center(den)), float(low), float(high)


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value (1.0 when either side has fewer than 2 samples)."""
    if len(a) < 2 or len(b) < 2:
        return 1.0
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(list(a), list(b), alternative="two-sided").pvalue)
