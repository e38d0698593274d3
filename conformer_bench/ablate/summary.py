"""Tables from cell records: one :class:`CellRow` of raw numbers per cell, deltas against the base cell, and
the summary's columns declared once (:data:`COLUMNS`), from which CSV, Markdown, LaTeX and the terminal
tables are rendered by :mod:`conformer_bench.tables`.

Deltas: relative (%) for costs and speeds (params, MACs, FLOPs, images/s, memory); absolute percentage
points for shares of MACs and for top-1 accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..breakdown import ROWS as TIME_PARTS
from ..params import COMPONENTS
from ..records import CellRecord, CpuPhaseMemory, CudaPhaseMemory, ProfiledPhase, Status
from ..records.breakdown import Breakdown
from ..tables import EMPTY, Column, Table
from .rows import CellRow, PhaseRow, Top1

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table as RichTable

MIB = 1024 * 1024
HEADS = ("conv", "trans", "sum")
PHASES = ("infer", "train")
SHARED = ("cnn", "transformer", "fcu")  # components whose share of the MACs is a column


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def changes_text(changes: Mapping[str, Any]) -> str:
    """Config changes as `key=value` words (booleans lower case, lists comma-joined); "" for none."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return ",".join(str(x) for x in v) or "none"
        return str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in changes.items())


def _job_log(record: CellRecord) -> str | None:
    """The log of the job that ran a cell (a scheduler job): its stderr when not empty, else its stdout."""
    job = record.job
    if job is None:
        return None
    try:
        if isinstance(job.stderr, str) and Path(job.stderr).stat().st_size:
            return job.stderr
    except OSError:
        pass
    return job.stdout if isinstance(job.stdout, str) else None


def _peak_mib(memory: CpuPhaseMemory | CudaPhaseMemory | None) -> float:
    """Peak memory of one phase: CUDA peak allocated bytes, or the CPU peak RSS increase."""
    if isinstance(memory, CudaPhaseMemory):
        return _num(memory.peak_allocated_bytes) / MIB
    if isinstance(memory, CpuPhaseMemory):
        return _num(memory.peak_rss_increase_bytes) / MIB
    return math.nan


def _top1(values: list[float]) -> Top1:
    if not values:
        return Top1()
    mean = sum(values) / len(values)
    std = (
        math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) >= 2 else math.nan
    )
    return Top1(mean, std, len(values))


def row_of(record: CellRecord) -> CellRow:
    """Raw (unrounded) metrics of one cell record."""
    prof = record.profile
    params = prof.params.total if prof is not None and prof.params is not None else None
    flops = prof.flops if prof is not None else None
    by_comp = (flops.by_component if flops is not None else None) or {}
    phases = {}
    peaks = {}
    for mode in PHASES:
        timing = (prof.throughput or {}).get(mode) if prof is not None else None
        t = timing.timing if timing is not None else None
        phases[mode] = (
            PhaseRow(_num(t.img_per_s), _num(t.iqr_over_median), bool(t.noisy), t.batch_size)
            if t is not None
            else PhaseRow()
        )
        memory = prof.memory if prof is not None else None
        peaks[mode] = _peak_mib(memory.phase(mode) if memory is not None else None)
    runs = [r for r in record.finetune or [] if r is not None and r.status in (Status.OK, None)]
    top1 = {}
    for head in HEADS:
        values = [_num((r.final.top1 or {}).get(head)) if r.final is not None else math.nan for r in runs]
        top1[head] = _top1([v for v in values if not math.isnan(v)])
    time_ms, time_share, forward_ms = _time_by_component(prof.breakdown if prof is not None else None)
    return CellRow(
        record=record,
        params=_num(params),
        paper_macs=_num(flops.paper_macs if flops is not None else None),
        fvcore_flops=_num(flops.fvcore_total if flops is not None else None),
        macs={c: _num((by_comp.get(c) or {}).get("paper_macs")) for c in COMPONENTS},
        time_ms=time_ms,
        time_share_pct=time_share,
        time_forward_ms=forward_ms,
        phases=phases,
        peak_mem_mib=peaks,
        top1=top1,
        log=_job_log(record),
    )


def _time_by_component(breakdown: Breakdown | None) -> tuple[dict[str, float], dict[str, float], float]:
    """Milliseconds and share of the forward per part of a profile's breakdown (nothing without one, so the
    summaries of grids run without ``breakdown`` keep their columns)."""
    if breakdown is None or breakdown.status != Status.OK:
        return {}, {}, math.nan
    parts = {p: breakdown.component(p) for p in TIME_PARTS}
    ms = {p: 1e3 * _num(c.seconds if c else None) for p, c in parts.items()}
    share = {p: 100.0 * _num(c.share_of_forward if c else None) for p, c in parts.items()}
    return ms, share, 1e3 * _num(breakdown.forward_s)


# --- the columns, declared once -------------------------------------------------------------------------

Get = Callable[[CellRow], Any]


def _phase(mode: str, get: Callable[[PhaseRow], Any]) -> Get:
    return lambda r: get(r.phases[mode])


def _in(values: Callable[[CellRow], Mapping[str, float]], key: str) -> Get:
    """The value of ``key`` in a row's mapping (a component's MACs, a part's time, a metric's delta)."""
    return lambda r: values(r).get(key, math.nan)


def _share(component: str) -> Get:
    return lambda r: r.share_pct(component)


def _top1_of(head: str, get: Callable[[Top1], float]) -> Get:
    return lambda r: get(r.top1[head])


def _text_of(metric: Metric, sep: str) -> Get:
    return lambda r: metric_text(r, metric, sep=sep)


def _base_columns() -> list[Column[CellRow]]:
    cols: list[Column[CellRow]] = [
        Column("label", lambda r: r.label, help="the cell"),
        Column("variant", lambda r: r.record.variant.name if r.record.variant else None, help="base preset"),
        Column(
            "changes", lambda r: changes_text(r.record.changes or {}) or None, help="config fields changed"
        ),
        Column("status", lambda r: r.status),
        Column("reason", lambda r: r.record.reason),
        Column("params", lambda r: r.params, help="parameters"),
        Column("params_m", lambda r: r.params / 1e6, unit="M"),
        Column("paper_macs", lambda r: r.paper_macs, help="conv + linear + matmul MACs, batch 1"),
        Column("gmacs_paper", lambda r: r.paper_macs / 1e9, unit="G"),
        Column("fvcore_flops", lambda r: r.fvcore_flops, help="fvcore's count, batch 1"),
        Column("gflops_fvcore", lambda r: r.fvcore_flops / 1e9, unit="G"),
    ]
    cols += [Column(f"macs_{c}", _in(lambda r: r.macs, c)) for c in COMPONENTS]
    cols += [Column(f"share_{c}_pct", _share(c), unit="%") for c in SHARED]
    return cols


def _time_columns() -> list[Column[CellRow]]:
    """Time by component: only in grids whose profiles ran with ``breakdown = true``."""
    cols: list[Column[CellRow]] = [
        Column(f"time_{p}_ms", _in(lambda r: r.time_ms, p), unit="ms") for p in TIME_PARTS
    ]
    cols += [Column(f"time_share_{p}_pct", _in(lambda r: r.time_share_pct, p), unit="%") for p in TIME_PARTS]
    cols.append(Column("time_forward_ms", lambda r: r.time_forward_ms, unit="ms"))
    return cols


def _rest_columns() -> list[Column[CellRow]]:
    cols: list[Column[CellRow]] = []
    for mode in PHASES:
        cols += [
            Column(f"{mode}_img_s", _phase(mode, lambda p: p.img_s), unit="img/s"),
            Column(f"{mode}_iqr_over_median", _phase(mode, lambda p: p.iqr_over_median)),
            Column(f"{mode}_noisy", _phase(mode, lambda p: p.noisy)),
            Column(f"{mode}_batch", _phase(mode, lambda p: p.batch)),
        ]
    cols += [
        Column("memory_device", lambda r: r.memory_device),
        Column("isolation", lambda r: r.record.ran_in),  # records from before isolation ran inline
    ]
    cols += [Column(f"peak_mem_{m}_mib", _in(lambda r: r.peak_mem_mib, m), unit="MiB") for m in PHASES]
    cols.append(Column("seeds_n", _seeds_n, help="fine-tuning runs that finished ok"))
    for head in HEADS:
        cols += [
            Column(f"top1_{head}", _top1_of(head, lambda t: t.mean), unit="%"),
            Column(f"top1_{head}_std", _top1_of(head, lambda t: t.std), unit="pp"),
        ]
    return cols


def _seeds_n(row: CellRow) -> int:
    return sum(1 for r in row.record.finetune or [] if r is not None and r.status in (Status.OK, None))


BASE_COLUMNS = tuple(_base_columns())
TIME_COLUMNS = tuple(_time_columns())
REST_COLUMNS = tuple(_rest_columns())
COLUMNS: tuple[Column[CellRow], ...] = (*BASE_COLUMNS, *TIME_COLUMNS, *REST_COLUMNS)
_BY_NAME = {c.name: c for c in COLUMNS}


@dataclass(frozen=True)
class Metric:
    key: str  # the column it shows
    title: str  # short header
    delta: str  # "rel" (%) or "pp" (percentage points)
    digits: int
    higher_is_better: bool | None = None

    def value(self, row: CellRow) -> float:
        return float(_BY_NAME[self.key].get(row))


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
ACCURACY = {"top1_conv": "conv", "top1_trans": "trans", "top1_sum": "sum"}
NOISY = {"infer_img_s": "infer", "train_img_s": "train"}
TIME_KEYS = frozenset(c.name for c in TIME_COLUMNS)


def _present(metric: Metric, rows: Sequence[CellRow]) -> bool:
    """Whether the metric's column is in the summary (time by component only with a breakdown)."""
    return metric.key not in TIME_KEYS or any(r.has_breakdown for r in rows)


def build_rows(records: Iterable[CellRecord], base_label: str | None) -> list[CellRow]:
    """One row per cell, raw metrics plus deltas against the base cell (NaN where undefined)."""
    rows = [row_of(r) for r in records]
    base = next((r for r in rows if r.label == base_label), None)
    shared_cpu = any(r.memory_device == "cpu" and r.record.ran_in != "process" for r in rows)
    for metric in METRICS:
        if not _present(metric, rows):
            continue
        ref = metric.value(base) if base is not None else math.nan
        for row in rows:
            value = metric.value(row)
            if base is None or (metric.key.startswith("peak_mem_") and shared_cpu):
                delta = math.nan  # CPU resident-set increases of cells sharing one process do not compare
            elif metric.delta == "rel":
                delta = (value / ref - 1.0) * 100.0 if ref and not math.isnan(ref) else math.nan
            else:
                delta = value - ref
            row.deltas[metric.key] = delta
    for row in rows:
        row.is_base = row.label == base_label
    return rows


def csv_columns(rows: Sequence[CellRow]) -> list[Column[CellRow]]:
    """The summary.csv columns: raw numbers (never rounded), every delta column and ``is_base``."""
    timed = any(r.has_breakdown for r in rows)
    cols = [*BASE_COLUMNS, *(TIME_COLUMNS if timed else ()), *REST_COLUMNS]
    cols += [
        Column(f"d_{m.key}", _in(lambda r: r.deltas, m.key), unit="%" if m.delta == "rel" else "pp")
        for m in METRICS
        if _present(m, rows)
    ]
    cols.append(Column("is_base", lambda r: r.is_base))
    return cols


def summary_table(rows: Sequence[CellRow]) -> Table[CellRow]:
    return Table(csv_columns(rows), rows)


def tidy(record: CellRecord) -> tuple[Sequence[Column[CellRow]], list[CellRow]]:
    """The per-record columns of summary.csv (every column but the deltas against a base cell, which need
    the whole grid) and the one row of ``record``: :data:`conformer_bench.api.TIDY`'s form of a cell."""
    return COLUMNS, [row_of(record)]


def build_frame(records: Iterable[CellRecord], base_label: str | None) -> pd.DataFrame:
    """summary.csv as a DataFrame: one row per cell, raw metrics plus ``d_<metric>`` deltas and ``is_base``."""
    return summary_table(build_rows(records, base_label)).to_frame()


# --- describing what was measured --------------------------------------------------------------------


def _one(values: Iterable[Any]) -> str:
    vals = sorted({str(v) for v in values if v is not None})
    if not vals:
        return "n/a"
    return vals[0] if len(vals) == 1 else "varies: " + ", ".join(vals)


def _batch(throughput: Mapping[str, ProfiledPhase] | None, mode: str) -> int | None:
    phase = (throughput or {}).get(mode)
    return phase.timing.batch_size if phase is not None and phase.timing is not None else None


def describe(records: list[CellRecord]) -> list[str]:
    """Lines saying where and how the numbers were measured (device, precision, threads, batch, convention)."""
    profiled = [r for r in records if r.profile is not None]
    profs = [r.profile for r in profiled if r.profile is not None]
    envs = [p.environment or r.environment for r, p in zip(profiled, profs, strict=True)]
    settings = [p.settings for p in profs]
    lines = []
    if profs:
        batches = {_batch(p.throughput, m) for p in profs for m in PHASES}
        lines.append(
            f"Measured on {_one((e.device_name or e.device) if e else None for e in envs)} "
            f"({_one(e.device if e else None for e in envs)}), {_one(s.precision for s in settings)}, "
            f"threads={_one(e.threads if e else None for e in envs)}, torch {_one(e.torch if e else None for e in envs)}, "
            f"images {_one(s.img_size for s in settings)} px, timing batch {_one(batches)}, "
            f"path {_one(s.path for s in settings)}."
        )
        lines.append(
            "GMACs (paper): conv + linear + matmul multiply-accumulates at batch 1; fvcore GFLOPs: fvcore's count "
            "(one fused multiply-add = one flop; also norms, pooling, upsampling). Shares: of the paper MACs (the rest is stem and heads). "
            "img/s: median over timed iterations (~ marks IQR/median > 10 %). Peak memory: CUDA peak allocated, "
            "or on CPU the peak resident-set increase."
        )
        on_cpu = [r for r, e in zip(profiled, envs, strict=True) if e is not None and e.device == "cpu"]
        inline = [r for r in on_cpu if r.ran_in != "process"]
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
    ft = [f for r in records for f in (r.finetune or []) if f is not None]
    if ft:
        hyper = [f.hyper for f in ft if f.hyper is not None]
        data = [f.data for f in ft if f.data is not None]
        seeds = sorted({int(h.seed) for h in hyper if h.seed is not None})
        budget = (
            f"{_one(h.steps for h in hyper)} steps"
            if any(h.steps for h in hyper)
            else f"{_one(h.epochs for h in hyper)} epochs"
        )
        lines.append(
            f"Top-1: fine-tuned from scratch on {_one(d.source for d in data)} "
            f"({_one(d.train_size for d in data)} train / {_one(d.val_size for d in data)} val images, "
            f"{_one(d.img_size for d in data)} px), {budget}, batch {_one(h.batch_size for h in hyper)}; "
            f"mean ± sample std over seeds {seeds}; conv, trans = each head, sum = argmax of the summed logits."
        )
    lines.append(
        "Δ against the base cell: relative % for params, MACs, FLOPs, img/s and peak memory (none for CPU cells "
        "that shared a process); percentage points for shares and top-1."
    )
    return lines


# --- text: a value with its spread and its delta ------------------------------------------------------------


def _fmt(value: float, digits: int, significant: bool = True) -> str:
    if value is None or math.isnan(value):
        return EMPTY
    if significant and 0 < abs(value) < 1:
        return f"{value:.{max(digits, 3)}g}"  # keep three significant digits for small costs
    return f"{value:,.{digits}f}"


def _fmt_delta(value: float | None, kind: str) -> str:
    if value is None or math.isnan(value):
        return ""
    unit = "%" if kind == "rel" else " pp"
    return f"{value:+.1f}{unit}"


def metric_text(row: CellRow, metric: Metric, *, with_delta: bool = True, sep: str = " ") -> str:
    text = _fmt(metric.value(row), metric.digits, significant=metric.delta == "rel")
    head = ACCURACY.get(metric.key)
    if head is not None and not math.isnan(row.top1[head].std):
        text += f" ± {row.top1[head].std:.{metric.digits}f}"
    mode = NOISY.get(metric.key)
    if mode is not None and row.phases[mode].noisy:
        text += " ~"
    if with_delta and not row.is_base:
        delta = _fmt_delta(row.deltas.get(metric.key), metric.delta)
        if delta:
            text += f"{sep}({delta})"
    return text


def visible_metrics(rows: Sequence[CellRow]) -> list[Metric]:
    """Metrics with at least one value (accuracy columns disappear when nothing was fine-tuned)."""
    return [m for m in METRICS if _present(m, rows) and any(not math.isnan(m.value(r)) for r in rows)]


def _status_text(row: CellRow) -> str:
    return row.status + (" (base)" if row.is_base else "")


def text_columns(
    rows: Sequence[CellRow],
    metrics: Sequence[Metric],
    *,
    changes: bool = True,
    code: bool = True,
    sep: str = " ",
) -> list[Column[CellRow]]:
    """The columns a person reads: cell, (changes,) status, then each metric with its spread and delta."""
    cols: list[Column[CellRow]] = [
        Column("Cell", (lambda r: f"`{r.label}`") if code else (lambda r: r.label))
    ]
    if changes:
        cols.append(Column("Changes", lambda r: changes_text(r.record.changes or {}) or EMPTY))
    cols.append(Column("Status", _status_text))
    cols += [Column(m.title, _text_of(m, sep), digits=m.digits) for m in metrics]
    return cols


def to_markdown(rows: Sequence[CellRow], notes: list[str], title: str) -> str:
    table = Table(text_columns(rows, visible_metrics(rows)), rows)
    lines = [f"# {title}", "", table.to_markdown().rstrip("\n"), ""]
    failed = [r for r in rows if not r.ok]
    for row in failed:
        log = row.log
        where = f" (log: {log})" if isinstance(log, str) and log not in str(row.record.reason) else ""
        lines.append(f"- `{row.label}`: {row.status}: {row.record.reason}{where}")
    if failed:
        lines.append("")
    lines += notes
    return "\n".join(lines) + "\n"


def to_latex(rows: Sequence[CellRow], notes: list[str], title: str) -> str:
    from ..tables import latex_escape

    table = Table(text_columns(rows, visible_metrics(rows), changes=False, code=False), rows)
    lines = [r"\begin{table}[t]", r"\centering\small", table.to_latex().rstrip("\n")]
    lines.append(r"\caption{" + latex_escape(title + ". " + " ".join(notes)) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[CellRow]) -> str:
    """Raw numbers (never rounded) and every delta column."""
    return summary_table(rows).to_csv()


COST_KEYS = (
    "params_m",
    "gmacs_paper",
    "gflops_fvcore",
    "share_cnn_pct",
    "share_transformer_pct",
    "share_fcu_pct",
)


def rich_tables(rows: Sequence[CellRow], notes: list[str], title: str) -> list[RichTable]:
    """Two terminal tables (costs; speed, memory and accuracy) so each fits a normal terminal."""
    metrics = visible_metrics(rows)
    groups = [
        (f"{title}: cost", [m for m in metrics if m.key in COST_KEYS], []),
        (f"{title}: speed, memory, accuracy", [m for m in metrics if m.key not in COST_KEYS], notes),
    ]
    tables = []
    for name, group, caption in groups:
        if not group:
            continue
        cols = text_columns(rows, group, changes=False, code=False, sep="\n")
        table = Table(cols, rows, title=name, notes=list(caption)).to_rich()
        table.caption_justify = "left"
        table.columns[0].no_wrap = True
        for shown_row, row in zip(table.rows, rows, strict=True):
            shown_row.style = None if row.ok else "red"
        tables.append(table)
    return tables


def ordered(records: Mapping[str, CellRecord], order: list[str]) -> list[CellRecord]:
    """Records in experiment order; records of labels not in ``order`` are left out."""
    return [records[lbl] for lbl in order if lbl in records]


def write_summary(
    out_dir: Path, records: list[CellRecord], base_label: str | None, title: str
) -> tuple[list[CellRow], list[str], dict[str, Path]]:
    """Write summary.csv, summary.md and the figures; return the rows, the notes and the written paths."""
    from ..files import atomic_write_text
    from .plots import write_figures

    rows = build_rows(records, base_label)
    notes = describe(records)
    paths = {
        "csv": atomic_write_text(out_dir / "summary.csv", to_csv(rows)),
        "md": atomic_write_text(out_dir / "summary.md", to_markdown(rows, notes, title)),
    }
    paths.update(write_figures(rows, records, out_dir / "figures", title))
    return rows, notes, paths
