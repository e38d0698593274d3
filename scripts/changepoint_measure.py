"""Measure change-point detectors on synthetic series shaped like a backfill: how often a step is found at
its place, and how often a flat series gets a step it does not have.

    .venv/bin/python scripts/changepoint_measure.py --detector history      # conformer_bench.history.changes
    OTHER_VENV/bin/python scripts/changepoint_measure.py --detector otava   # apache-otava, in a venv of its own

Series are multiplicative: each point is its level times exp(N(0, noise)). The history detector is also
run with each point's standard error known (as a paired backfill point has), ``history+errors``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEEDS = 50

# name: (points, step index or None, step ratio, noise sd in log units, drift per point)
SCENARIOS: dict[str, tuple[int, int | None, float, float, float]] = {
    "12 points, 25 % step at 6, 3 % noise": (12, 6, 0.8, 0.03, 0.0),
    "12 points, flat, 3 % noise": (12, None, 1.0, 0.03, 0.0),
    "7 points, 25 % step at 3, 3 % noise": (7, 3, 0.8, 0.03, 0.0),
    "7 points, flat, 3 % noise": (7, None, 1.0, 0.03, 0.0),
    "7 points, 25 % step at 3, 8 % noise": (7, 3, 0.8, 0.08, 0.0),
    "7 points, flat, 8 % noise": (7, None, 1.0, 0.08, 0.0),
    "12 points, 10 % step at 6, 3 % noise": (12, 6, 0.9, 0.03, 0.0),
    "12 points, 2 % drift a point, 1 % noise": (12, None, 1.0, 0.01, -0.02),
}


def series(points: int, at: int | None, ratio: float, noise: float, drift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level = np.ones(points)
    if at is not None:
        level[at:] *= ratio
    level *= np.exp(drift * np.arange(points))
    return level * np.exp(rng.normal(0.0, noise, points))


def _history(with_errors: bool) -> Callable[[np.ndarray, float], list[int]]:
    sys.path.insert(0, str(ROOT))
    from conformer_bench.history.changes import find_steps

    def detect(values: np.ndarray, noise: float) -> list[int]:
        errors = [noise] * len(values) if with_errors else None
        return [s.index for s in find_steps(list(values), errors)]

    return detect


def _otava() -> Callable[[np.ndarray, float], list[int]]:
    from otava.analysis import compute_change_points

    def detect(values: np.ndarray, noise: float) -> list[int]:
        found, _ = compute_change_points(list(values), window_len=50, max_pvalue=0.001)
        return [int(cp.index) for cp in found]

    return detect


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", choices=("history", "history+errors", "otava"), required=True)
    args = parser.parse_args()
    detectors = {
        "history": lambda: _history(False),
        "history+errors": lambda: _history(True),
        "otava": _otava,
    }
    detect = detectors[args.detector]()
    print(f"detector: {args.detector}, {SEEDS} seeds per scenario")
    for name, (points, at, ratio, noise, drift) in SCENARIOS.items():
        exact = any_step = 0
        for seed in range(SEEDS):
            found = detect(series(points, at, ratio, noise, drift, seed), noise)
            any_step += bool(found)
            exact += at is not None and found == [at]
        if at is None:
            print(f"  {name}: a step found in {any_step} of {SEEDS}")
        else:
            print(f"  {name}: exactly one step, at {at}, in {exact} of {SEEDS}; any step in {any_step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
