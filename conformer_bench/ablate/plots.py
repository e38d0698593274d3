"""Figures of an experiment (matplotlib, Agg backend, PNG): each title says what was measured, where and how."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import atomic_write_bytes
from ..params import COMPONENTS

if TYPE_CHECKING:
    import pandas as pd

COMPONENT_LABELS = {
    "stem": "stem",
    "cnn": "CNN branch",
    "transformer": "transformer branch",
    "fcu": "FCU",
    "heads": "heads",
}


def _values(records: list[dict[str, Any]], *path: str) -> str:
    found = set()
    for r in records:
        d: Any = r
        for key in path:
            d = d.get(key) if isinstance(d, dict) else None
        if d is not None:
            found.add(str(d))
    return "/".join(sorted(found)) or "n/a"


def _where(records: list[dict[str, Any]]) -> str:
    """'<device name>, fp32, 2 threads' from the profile records."""
    return (
        f"{_values(records, 'profile', 'environment', 'device_name')} ({_values(records, 'profile', 'environment', 'device')}), "
        f"{_values(records, 'profile', 'settings', 'precision')}, threads={_values(records, 'profile', 'environment', 'threads')}"
    )


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats (lower cost and higher accuracy), sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def write_figures(
    df: pd.DataFrame, records: list[dict[str, Any]], fig_dir: Path, title: str
) -> dict[str, Path]:
    """Accuracy vs GMACs (with the Pareto front), throughput vs params, and MACs by component per cell."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    if df.empty:
        return out
    ok = df[df["status"] == "ok"] if "status" in df else df
    img = _values(records, "profile", "flops", "img_size")

    # 1. Accuracy vs paper MACs.
    acc = ok[ok["top1_sum"].notna() & ok["gmacs_paper"].notna()] if "top1_sum" in ok else ok.iloc[0:0]
    if not acc.empty:
        fig, ax = plt.subplots(figsize=(7, 5))
        unit, scale = ("GMACs", 1.0) if acc["gmacs_paper"].max() >= 0.1 else ("MMACs", 1e3)
        xs, ys = [x * scale for x in acc["gmacs_paper"].tolist()], acc["top1_sum"].tolist()
        err = [0.0 if math.isnan(s) else s for s in acc["top1_sum_std"].tolist()]
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            fmt="o",
            color="tab:blue",
            ecolor="tab:gray",
            capsize=3,
            label="cell (mean ± std)",
        )
        front = pareto_front(list(zip(xs, ys, strict=True)))
        ax.plot(
            [xs[i] for i in front],
            [ys[i] for i in front],
            "-",
            color="tab:red",
            drawstyle="steps-post",
            label="Pareto front",
        )
        ax.scatter(
            [xs[i] for i in front], [ys[i] for i in front], s=120, facecolors="none", edgecolors="tab:red"
        )
        for x, y, lbl in zip(xs, ys, acc["label"], strict=True):
            ax.annotate(str(lbl), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        data = _ft_desc(records)
        ax.set_xlabel(f"{unit} per image (conv + linear + matmul, {img} px, batch 1)")
        ax.set_ylabel("top-1 (%), argmax of summed head logits")
        ax.set_title(f"{title}: top-1 vs MACs\n{data}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out["accuracy_vs_gmacs"] = _save(fig, fig_dir / "accuracy_vs_gmacs.png")
        plt.close(fig)

    # 2. Throughput vs params.
    thr = ok[ok["params_m"].notna()]
    if not thr.empty and (thr["infer_img_s"].notna().any() or thr["train_img_s"].notna().any()):
        fig, ax = plt.subplots(figsize=(7, 5))
        for mode, marker, color in (("infer", "o", "tab:green"), ("train", "s", "tab:orange")):
            sub = thr[thr[f"{mode}_img_s"].notna()]
            if sub.empty:
                continue
            batch = "/".join(sorted({str(b) for b in sub[f"{mode}_batch"]}))
            ax.scatter(
                sub["params_m"],
                sub[f"{mode}_img_s"],
                marker=marker,
                color=color,
                label=f"{mode} (batch {batch})",
            )
            for x, y, lbl in zip(sub["params_m"], sub[f"{mode}_img_s"], sub["label"], strict=True):
                ax.annotate(str(lbl), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("parameters (millions)")
        ax.set_ylabel("images/s (median over timed iterations)")
        ax.set_title(f"{title}: throughput vs parameters\n{_where(records)}, {img} px", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out["throughput_vs_params"] = _save(fig, fig_dir / "throughput_vs_params.png")
        plt.close(fig)

    # 3. MACs by component, stacked per cell.
    comp = ok[ok["paper_macs"].notna()]
    if not comp.empty:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(comp) + 2), 5))
        bottom = [0.0] * len(comp)
        labels = comp["label"].astype(str).tolist()
        unit, scale = ("GMACs", 1e9) if comp["paper_macs"].max() >= 1e8 else ("MMACs", 1e6)
        for name in COMPONENTS:
            vals = [0.0 if math.isnan(v) else v / scale for v in comp[f"macs_{name}"].tolist()]
            if not any(vals):
                continue
            ax.bar(labels, vals, bottom=bottom, label=COMPONENT_LABELS[name])
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_ylabel(f"{unit} per image (conv + linear + matmul, {img} px)")
        ax.set_title(
            f"{title}: MACs by component (paper convention, counted by tracing, batch 1)", fontsize=9
        )
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        out["flops_by_component"] = _save(fig, fig_dir / "flops_by_component.png")
        plt.close(fig)
    return out


def _ft_desc(records: list[dict[str, Any]]) -> str:
    """'digits, 60 steps, 2 seeds' from the fine-tuning records."""
    runs = [f for r in records for f in (r.get("finetune") or []) if isinstance(f, dict)]
    if not runs:
        return ""
    sources = "/".join(sorted({str((f.get("data") or {}).get("source")) for f in runs}))
    steps = {(f.get("hyper") or {}).get("steps") for f in runs}
    epochs = {(f.get("hyper") or {}).get("epochs") for f in runs}
    seeds = {(f.get("hyper") or {}).get("seed") for f in runs}
    budget = (
        f"{'/'.join(str(s) for s in sorted(steps, key=str))} steps"
        if any(steps)
        else f"{'/'.join(str(e) for e in sorted(epochs, key=str))} epochs"
    )
    return f"fine-tuned on {sources}, {budget}, {len(seeds)} seed(s); {_where(records)}"
