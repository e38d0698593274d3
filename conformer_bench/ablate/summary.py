"""Tables from cell records: raw numbers in a DataFrame, deltas against the base cell, then formatters.

Deltas: relative (%) for costs and speeds (params, MACs, FLOPs, images/s, memory); absolute percentage
points for shares of MACs and for top-1 accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..params import COMPONENTS

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

MIB = 1024 * 1024
HEADS = ("conv", "trans", "sum")


@dataclass(frozen=True)
class Metric:
    key: str  # column in the frame
    title: str  # short header
    delta: str  # "rel" (%) or "pp" (percentage points)
    digits: int
    higher_is_better: bool | None = None


METRICS: tuple[Metric, ...] = (
    Metric("params_m", "Params (M)", "rel", 2),
    Metric("gmacs_paper", "GMACs (paper)", "rel", 3),
    Metric("gflops_fvcore", "fvcore GFLOPs", "rel", 3),
    Metric("share_cnn_pct", "CNN % MACs", "pp", 1),
    Metric("share_transformer_pct", "Trans % MACs", "pp", 1),
    Metric("share_fcu_pct", "FCU % MACs", "pp", 1),
    Metric("time_share_cnn_pct", "CNN % time", "pp", 1),
    Metric("time_share_transformer_pct", "Trans % time", "pp", 1),
    Metric("time_share_fcu_down_pct", "FCU-down % time", "pp", 1),
    Metric("time_share_fcu_up_pct", "FCU-up % time", "pp", 1),
    Metric("infer_img_s", "Infer img/s", "rel", 1, True),
    Metric("train_img_s", "Train img/s", "rel", 1, True),
    Metric("peak_mem_infer_mib", "Peak mem infer (MiB)", "rel", 1, False),
    Metric("peak_mem_train_mib", "Peak mem train (MiB)", "rel", 1, False),
    Metric("top1_conv", "Top-1 conv (%)", "pp", 2, True),
    Metric("top1_trans", "Top-1 trans (%)", "pp", 2, True),
    Metric("top1_sum", "Top-1 sum (%)", "pp", 2, True),
)
ACCURACY = ("top1_conv", "top1_trans", "top1_sum")


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def _peak_bytes(memory: Any, mode: str) -> float:
    """Peak memory of one mode: CUDA peak allocated bytes, or the CPU peak RSS increase."""
    m = _get(memory, mode)
    if not isinstance(m, dict):
        return math.nan
    for key in ("peak_allocated_bytes", "peak_rss_increase_bytes"):
        if key in m:
            return _num(m[key])
    return math.nan


def changes_text(changes: dict[str, Any]) -> str:
    """Config changes as `key=value` words (booleans lower case, lists comma-joined); "" for none."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return ",".join(str(x) for x in v) or "none"
        return str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in changes.items())


def _job_log(job: Any) -> str | None:
    """The log of the job that ran a cell (a scheduler job): its stderr when not empty, else its stdout."""
    if not isinstance(job, dict):
        return None
    err, out = job.get("stderr"), job.get("stdout")
    try:
        if isinstance(err, str) and Path(err).stat().st_size:
            return err
    except OSError:
        pass
    return out if isinstance(out, str) else None


def row_of(record: dict[str, Any]) -> dict[str, Any]:
    """Raw (unrounded) metrics of one cell record."""
    prof = record.get("profile") or {}
    params = _get(prof, "params", "total")
    flops = prof.get("flops") or {}
    paper = _num(flops.get("paper_macs"))
    by_comp = flops.get("by_component") or {}
    row: dict[str, Any] = {
        "label": record["label"],
        "variant": _get(record, "config", "name"),
        "changes": changes_text(record.get("changes") or {}),
        "status": record.get("status"),
        "reason": record.get("reason"),
        "params": _num(params),
        "params_m": _num(params) / 1e6,
        "paper_macs": paper,
        "gmacs_paper": paper / 1e9,
        "fvcore_flops": _num(flops.get("fvcore_total")),
        "gflops_fvcore": _num(flops.get("fvcore_total")) / 1e9,
        "memory_device": _get(prof, "memory", "device"),
        "isolation": record.get("isolation", "inline"),  # records from before isolation ran inline
        "log": _job_log(record.get("job")),
    }
    for comp in COMPONENTS:
        macs = _num(_get(by_comp, comp, "paper_macs"))
        row[f"macs_{comp}"] = macs
        if comp in ("cnn", "transformer", "fcu"):
            row[f"share_{comp}_pct"] = 100.0 * macs / paper if paper and not math.isnan(paper) else math.nan
    row.update(_time_by_component(prof.get("breakdown")))
    for mode in ("infer", "train"):
        timing = _get(prof, "throughput", mode) or {}
        row[f"{mode}_img_s"] = _num(timing.get("img_per_s"))
        row[f"{mode}_iqr_over_median"] = _num(timing.get("iqr_over_median"))
        row[f"{mode}_noisy"] = bool(timing.get("noisy", False))
        row[f"{mode}_batch"] = timing.get("batch_size")
        row[f"peak_mem_{mode}_mib"] = _peak_bytes(prof.get("memory"), mode) / MIB
    runs = [r for r in record.get("finetune") or [] if isinstance(r, dict)]
    ok_runs = [r for r in runs if r.get("status", "ok") == "ok"]
    row["seeds_n"] = len(ok_runs)
    for head in HEADS:
        values = [_num(_get(r, "final", "top1", head)) for r in ok_runs]
        values = [v for v in values if not math.isnan(v)]
        row[f"top1_{head}"] = sum(values) / len(values) if values else math.nan
        if len(values) >= 2:
            mean = row[f"top1_{head}"]
            row[f"top1_{head}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        else:
            row[f"top1_{head}_std"] = math.nan
        row[f"top1_{head}_n"] = len(values)
    return row


def _time_by_component(breakdown: dict[str, Any] | None) -> dict[str, float]:
    """Milliseconds and share of the forward per component of a profile's breakdown (no columns without one,
    so the summaries of grids run without ``breakdown`` keep their columns)."""
    from ..breakdown import ROWS

    if not breakdown or breakdown.get("status") != "ok":
        return {}
    comps = breakdown.get("components") or {}
    row: dict[str, float] = {}
    for comp in ROWS:
        row[f"time_{comp}_ms"] = 1e3 * _num(_get(comps, comp, "seconds"))
        row[f"time_share_{comp}_pct"] = 100.0 * _num(_get(comps, comp, "share_of_forward"))
    row["time_forward_ms"] = 1e3 * _num(breakdown.get("forward_s"))
    return row


def build_frame(records: Iterable[dict[str, Any]], base_label: str | None) -> pd.DataFrame:
    """One row per cell, raw metrics plus ``d_<metric>`` deltas against the base cell (NaN where undefined)."""
    import pandas as pd

    rows = [row_of(r) for r in records]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    base = df[df["label"] == base_label]
    for metric in METRICS:
        col = f"d_{metric.key}"
        if metric.key not in df:
            continue  # e.g. time by component in a grid run without it
        if base.empty:
            df[col] = math.nan
            continue
        ref = float(base.iloc[0][metric.key])
        cpu = df["memory_device"] == "cpu"
        if metric.key.startswith("peak_mem_") and (cpu & (df["isolation"] != "process")).any():
            df[col] = math.nan  # CPU resident-set increases of cells sharing one process do not compare
            continue
        if metric.delta == "rel":
            df[col] = (df[metric.key] / ref - 1.0) * 100.0 if ref and not math.isnan(ref) else math.nan
        else:
            df[col] = df[metric.key] - ref
    df["is_base"] = df["label"] == base_label
    return df


# --- describing what was measured --------------------------------------------------------------------


def _one(values: Iterable[Any]) -> str:
    vals = sorted({str(v) for v in values if v is not None})
    if not vals:
        return "n/a"
    return vals[0] if len(vals) == 1 else "varies: " + ", ".join(vals)


def describe(records: list[dict[str, Any]]) -> list[str]:
    """Lines saying where and how the numbers were measured (device, precision, threads, batch, convention)."""
    profiled = [r for r in records if r.get("profile")]
    profs = [r["profile"] for r in profiled]
    envs = [p.get("environment") or r.get("environment") or {} for r, p in zip(profiled, profs, strict=True)]
    settings = [p.get("settings") or {} for p in profs]
    lines = []
    if profs:
        batches = {_get(p, "throughput", m, "batch_size") for p in profs for m in ("infer", "train")}
        lines.append(
            f"Measured on {_one(e.get('device_name') or e.get('device') for e in envs)} "
            f"({_one(e.get('device') for e in envs)}), {_one(s.get('precision') for s in settings)}, "
            f"threads={_one(e.get('threads') for e in envs)}, torch {_one(e.get('torch') for e in envs)}, "
            f"images {_one(s.get('img_size') for s in settings)} px, timing batch {_one(batches)}, "
            f"path {_one(s.get('path') for s in settings)}."
        )
        lines.append(
            "GMACs (paper): conv + linear + matmul multiply-accumulates at batch 1; fvcore GFLOPs: fvcore's count "
            "(one fused multiply-add = one flop; also norms, pooling, upsampling). Shares: of the paper MACs (the rest is stem and heads). "
            "img/s: median over timed iterations (~ marks IQR/median > 10 %). Peak memory: CUDA peak allocated, "
            "or on CPU the peak resident-set increase."
        )
        on_cpu = [r for r, e in zip(profiled, envs, strict=True) if e.get("device") == "cpu"]
        inline = [r for r in on_cpu if r.get("isolation", "inline") != "process"]
        if on_cpu and not inline:
            lines.append(
                "CPU memory: each cell ran in a fresh Python process, so its resident-set increase is its own "
                "(train is measured after infer in that process); Δ is against the base cell."
            )
        elif len(profs) > 1 and inline:
            lines.append(
                f"CPU memory caveat: {len(inline)} of {len(on_cpu)} CPU cells ran in one shared process "
                "(--no-isolate), so a later cell reuses memory freed by earlier ones and its resident-set increase "
                "can understate its own peak; no Δ is given for it."
            )
    ft = [f for r in records for f in (r.get("finetune") or []) if isinstance(f, dict)]
    if ft:
        hyper = [f.get("hyper") or {} for f in ft]
        data = [f.get("data") or {} for f in ft]
        seeds = sorted({int(h["seed"]) for h in hyper if h.get("seed") is not None})
        budget = (
            f"{_one(h.get('steps') for h in hyper)} steps"
            if any(h.get("steps") for h in hyper)
            else f"{_one(h.get('epochs') for h in hyper)} epochs"
        )
        lines.append(
            f"Top-1: fine-tuned from scratch on {_one(d.get('source') for d in data)} "
            f"({_one(d.get('train_size') for d in data)} train / {_one(d.get('val_size') for d in data)} val images, "
            f"{_one(d.get('img_size') for d in data)} px), {budget}, batch {_one(h.get('batch_size') for h in hyper)}; "
            f"mean ± sample std over seeds {seeds}; conv, trans = each head, sum = argmax of the summed logits."
        )
    lines.append(
        "Δ against the base cell: relative % for params, MACs, FLOPs, img/s and peak memory (none for CPU cells "
        "that shared a process); percentage points for shares and top-1."
    )
    return lines


# --- formatting ----------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int, significant: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if significant and 0 < abs(value) < 1:
        return f"{value:.{max(digits, 3)}g}"  # keep three significant digits for small costs
    return f"{value:,.{digits}f}"


def _fmt_delta(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    unit = "%" if kind == "rel" else " pp"
    return f"{value:+.1f}{unit}"


def metric_text(row: Any, metric: Metric, *, with_delta: bool = True, sep: str = " ") -> str:
    value = row[metric.key]
    text = _fmt(value, metric.digits, significant=metric.delta == "rel")
    if metric.key in ACCURACY:
        std = row.get(f"{metric.key}_std")
        if isinstance(std, float) and not math.isnan(std):
            text += f" ± {std:.{metric.digits}f}"
    if metric.key in ("infer_img_s", "train_img_s") and row.get(metric.key.replace("img_s", "noisy")):
        text += " ~"
    if with_delta and not row.get("is_base", False):
        delta = _fmt_delta(row.get(f"d_{metric.key}"), metric.delta)
        if delta:
            text += f"{sep}({delta})"
    return text


def visible_metrics(df: pd.DataFrame) -> list[Metric]:
    """Metrics with at least one value (accuracy columns disappear when nothing was fine-tuned)."""
    return [m for m in METRICS if m.key in df and df[m.key].notna().any()]


def _status_text(row: Any) -> str:
    status = str(row["status"])
    return status + (" (base)" if row.get("is_base") else "")


def to_markdown(df: pd.DataFrame, notes: list[str], title: str) -> str:
    metrics = visible_metrics(df)
    head = ["Cell", "Changes", "Status", *(m.title for m in metrics)]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in df.iterrows():
        cells = [f"`{row['label']}`", row["changes"] or "—", _status_text(row)]
        cells += [metric_text(row, m) for m in metrics]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    failed = df[df["status"] != "ok"]
    for _, row in failed.iterrows():
        log = row.get("log")
        where = f" (log: {log})" if isinstance(log, str) and log not in str(row["reason"]) else ""
        lines.append(f"- `{row['label']}`: {row['status']}: {row['reason']}{where}")
    if not failed.empty:
        lines.append("")
    lines += notes
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("$", r"\$"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("±", r"$\pm$"),
        ("Δ", r"$\Delta$"),
    ):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\0")
    return text.replace("\0", r"\textbackslash{}")


def to_latex(df: pd.DataFrame, notes: list[str], title: str) -> str:
    metrics = visible_metrics(df)
    head = ["Cell", "Status", *(m.title for m in metrics)]
    lines = [
        r"\begin{table}[t]",
        r"\centering\small",
        r"\begin{tabular}{l" + "l" + "r" * len(metrics) + "}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in head) + r" \\",
        r"\midrule",
    ]
    for _, row in df.iterrows():
        cells = [str(row["label"]), _status_text(row), *(metric_text(row, m) for m in metrics)]
        lines.append(" & ".join(_latex_escape(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines.append(r"\caption{" + _latex_escape(title + ". " + " ".join(notes)) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = (
    "label",
    "variant",
    "changes",
    "status",
    "reason",
    "params",
    "params_m",
    "paper_macs",
    "gmacs_paper",
    "fvcore_flops",
    "gflops_fvcore",
    "macs_stem",
    "macs_cnn",
    "macs_transformer",
    "macs_fcu",
    "macs_heads",
    "share_cnn_pct",
    "share_transformer_pct",
    "share_fcu_pct",
    # time by component, in grids whose profiles ran with breakdown = true
    *(f"time_{c}_ms" for c in ("stem", "cnn", "transformer", "fcu_down", "fcu_up", "heads", "rest")),
    *(f"time_share_{c}_pct" for c in ("stem", "cnn", "transformer", "fcu_down", "fcu_up", "heads", "rest")),
    "time_forward_ms",
    "infer_img_s",
    "infer_iqr_over_median",
    "infer_noisy",
    "infer_batch",
    "train_img_s",
    "train_iqr_over_median",
    "train_noisy",
    "train_batch",
    "memory_device",
    "isolation",
    "peak_mem_infer_mib",
    "peak_mem_train_mib",
    "seeds_n",
    "top1_conv",
    "top1_conv_std",
    "top1_trans",
    "top1_trans_std",
    "top1_sum",
    "top1_sum_std",
)


def to_csv(df: pd.DataFrame) -> str:
    """Raw numbers (never rounded) and every delta column."""
    cols = [c for c in CSV_COLUMNS if c in df] + [f"d_{m.key}" for m in METRICS if f"d_{m.key}" in df]
    if "is_base" in df:
        cols.append("is_base")
    return str(df[cols].to_csv(index=False))


COST_KEYS = (
    "params_m",
    "gmacs_paper",
    "gflops_fvcore",
    "share_cnn_pct",
    "share_transformer_pct",
    "share_fcu_pct",
)


def rich_tables(df: pd.DataFrame, notes: list[str], title: str) -> list[Table]:
    """Two terminal tables (costs; speed, memory and accuracy) so each fits a normal terminal."""
    from rich.table import Table

    metrics = visible_metrics(df)
    groups = [
        (f"{title}: cost", [m for m in metrics if m.key in COST_KEYS], None),
        (
            f"{title}: speed, memory, accuracy",
            [m for m in metrics if m.key not in COST_KEYS],
            "\n".join(notes),
        ),
    ]
    tables = []
    for name, group, caption in groups:
        if not group:
            continue
        table = Table(title=name, caption=caption, caption_justify="left")
        table.add_column("Cell", no_wrap=True)
        table.add_column("Status")
        for m in group:
            table.add_column(m.title, justify="right")
        for _, row in df.iterrows():
            style = None if row["status"] == "ok" else "red"
            cells = [str(row["label"]), _status_text(row)]
            cells += [metric_text(row, m, sep="\n") for m in group]
            table.add_row(*cells, style=style)
        tables.append(table)
    return tables


def ordered(records: dict[str, dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Records in experiment order; records of labels not in ``order`` are left out."""
    return [records[lbl] for lbl in order if lbl in records]


def write_summary(
    out_dir: Path, records: list[dict[str, Any]], base_label: str | None, title: str
) -> tuple[pd.DataFrame, list[str], dict[str, Path]]:
    """Write summary.csv, summary.md and the figures; return the frame, the notes and the written paths."""
    from ..files import atomic_write_text
    from .plots import write_figures

    df = build_frame(records, base_label)
    notes = describe(records)
    paths = {
        "csv": atomic_write_text(out_dir / "summary.csv", to_csv(df)),
        "md": atomic_write_text(out_dir / "summary.md", to_markdown(df, notes, title)),
    }
    paths.update(write_figures(df, records, out_dir / "figures", title))
    return df, notes, paths
