"""Per-metric accuracy drift between two runs of one grid (e.g. two kernel sets), as Markdown for docs/ci.md.

    python scripts/kernel_drift.py runs/ci-avx2 runs/ci-native

Per cell and metric: mean over seeds on each side, the difference, the seeds' sd, how far the same seed
moved, and the report's Welch p-value (Benjamini-Hochberg corrected) and status.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from conformer_bench.report import compare, load_metrics, load_thresholds


def seed_values(folder: Path) -> dict[str, list[float]]:
    """``<label>/finetune.<metric>`` -> one value per seed, in seed order."""
    values: dict[str, list[float]] = {}
    for line in (folder / "cells.jsonl").read_text(encoding="utf-8").splitlines():
        cell = json.loads(line)
        for record in cell.get("finetune") or []:
            final = record.get("final") or {}
            for k in ("top1", "top5"):
                for head, v in (final.get(k) or {}).items():
                    values.setdefault(f"{cell['label']}/finetune.{k}.{head}", []).append(v)
            if "val_loss" in final:
                values.setdefault(f"{cell['label']}/finetune.val_loss", []).append(final["val_loss"])
    return values


def main(baseline: str, current: str) -> None:
    comparison = compare(load_metrics(baseline), load_metrics(current), load_thresholds())
    rows = {r.metric: r for r in comparison.rows if r.kind == "accuracy"}
    base_seeds, cur_seeds = seed_values(Path(baseline)), seed_values(Path(current))
    print(
        "| metric | baseline mean | current mean | Δ | seed sd (b → c) | mean \\|Δ\\| same seed | p (BH) | status |"
    )
    print("|---|---|---|---|---|---|---|---|")
    same_seed: list[float] = []
    ratios: list[float] = []
    for name, row in sorted(rows.items()):
        b, c = base_seeds[name], cur_seeds[name]
        moved = [abs(x - y) for x, y in zip(b, c, strict=True)]
        same_seed += moved
        pooled = ((statistics.stdev(b) ** 2 + statistics.stdev(c) ** 2) / 2) ** 0.5
        if pooled > 0 and row.delta is not None:
            ratios.append(abs(row.delta) / pooled)
        p = f"{row.p_adjusted:.2g}" if row.p_adjusted is not None else "—"
        print(
            f"| `{name}` | {row.baseline:.2f} | {row.current:.2f} | {row.delta:+.2f} | "
            f"{row.sd_baseline:.2f} → {row.sd_current:.2f} | {statistics.mean(moved):.2f} | {p} | {row.status} |"
        )
    changed = sum(m > 0 for m in same_seed)
    print()
    print(
        f"{len(rows)} accuracy metrics; {changed} of {len(same_seed)} seed values changed; "
        f"largest |Δ of means| / pooled seed sd = {max(ratios):.2f}; "
        f"smallest corrected p = {min((r.p_adjusted or 1.0) for r in rows.values()):.2g}; "
        f"verdict {comparison.verdict} ({len(comparison.blocking)} blocking)"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/kernel_drift.py BASELINE_RUN CURRENT_RUN")
    main(sys.argv[1], sys.argv[2])
