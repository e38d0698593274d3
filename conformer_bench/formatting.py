"""Profile records in every format, and the ``--format`` / ``--output`` helpers every command shares.

A profile's columns are declared once (:data:`PROFILE_COLUMNS`, the tidy row of one point; its CSV, JSON
lines and DataFrame form) on :mod:`conformer_bench.tables`, which renders and rounds them; one record's
section/metric/value rows (:func:`profile_rows`) and a sweep's display columns (:data:`SWEEP_COLUMNS`) go
through the same tables.
"""

from __future__ import annotations

import csv
import io
import operator
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from . import tables
from .breakdown import profile_rows as breakdown_rows
from .files import atomic_write_text, dumps_json
from .params import COMPONENTS
from .records import (
    CpuPhaseMemory,
    CudaPhaseMemory,
    Environment,
    FlopCounts,
    ParamCounts,
    PhaseTiming,
    ProfiledPhase,
    ProfileRecord,
    ProfileRunSettings,
    Status,
)
from .tables import Column, Table, fmt_giga, fmt_int, fmt_mib, fmt_ms, fmt_pct, md_escape

__all__ = [  # fmt_* live in tables; kept here for the modules that import them from formatting
    "EXTENSIONS",
    "FORMATS",
    "PROFILE_COLUMNS",
    "PROFILE_FORMATS",
    "SWEEP_COLUMNS",
    "TIDY_COLUMNS",
    "TOGGLE_FIELDS",
    "column_value",
    "config_hash",
    "csv_to_jsonl",
    "file_format",
    "flat_profile",
    "fmt_giga",
    "fmt_int",
    "fmt_mib",
    "fmt_ms",
    "fmt_pct",
    "parse_format",
    "profile_rows",
    "render",
    "render_csv",
    "render_md",
    "render_rows_md",
    "render_table",
    "rows_jsonl",
    "status_text",
    "tidy",
    "write_output",
]

# Every command that prints a record offers these; csv and jsonl hold raw values, one row per line.
FORMATS = ("table", "json", "jsonl", "csv", "md")
PROFILE_FORMATS = (*FORMATS, "latex")  # profile also writes a LaTeX table
EXTENSIONS = {
    "json": "json",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "csv": "csv",
    "md": "md",
    "txt": "table",
    "tex": "latex",
}
PHASES = ("infer", "train")


# --- --format and --output ---------------------------------------------------------------------------------


def parse_format(
    value: str | None, option: str = "--format", default: str = "table", choices: Sequence[str] = FORMATS
) -> str:
    """``--format`` read once, case-insensitively (``-f JSON`` is ``json``)."""
    return tables.parse_format(value, choices, option, default)


def file_format(path: str | os.PathLike[str], explicit: str | None, choices: Sequence[str] = FORMATS) -> str:
    """The format written to ``--output``: its known extension, else ``--format``, else json."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in EXTENSIONS and EXTENSIONS[suffix] in choices:
        return EXTENSIONS[suffix]
    return parse_format(explicit, default="json", choices=choices)


def write_output(
    path: str | os.PathLike[str],
    render: Callable[[str], str],
    explicit: str | None = None,
    choices: Sequence[str] = FORMATS,
) -> Path:
    """Render in the file's format (see :func:`file_format`) and write atomically; say so on stderr."""
    written = atomic_write_text(path, render(file_format(path, explicit, choices)))
    print(f"wrote {path}", file=sys.stderr)
    return written


# --- plain rows (other commands' tables) ----------------------------------------------------------------------


def rows_jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(dumps_json(row, indent=None) for row in rows)


def _typed(cell: str) -> Any:
    if cell == "":
        return None
    if cell in ("True", "False"):
        return cell == "True"
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def csv_to_jsonl(text: str) -> str:
    """The rows of a command's CSV form as JSON lines (numbers as numbers, empty cells as null)."""
    return rows_jsonl({k: _typed(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text)))


def render_rows_md(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain Markdown table of text cells."""
    columns = [Column(h, operator.itemgetter(i)) for i, h in enumerate(header)]
    return Table(columns, [[str(c) for c in row] for row in rows]).to_markdown()


# --- the columns of a profile ------------------------------------------------------------------------------

# Config fields the variant toggles set; each is a column of the tidy rows.
TOGGLE_FIELDS = (
    "branches",
    "coupling",
    "num_med_block",
    "fcu_down",
    "fcu_up",
    "fcu_stages",
    "pos_embed",
    "heads",
    "fused_attn",
)
MEMORY_FIELDS = ("peak_rss_increase_bytes", "peak_allocated_bytes", "peak_reserved_bytes", "nvml_used_bytes")
LATENCIES = ("median", "p90", "p99", "iqr")


def config_hash(config: dict[str, Any] | None) -> str | None:
    """Short hash of a model config's ``to_dict()``, the same identity the reports use."""
    if not config:
        return None
    from .report.metrics import config_digest

    return config_digest(config)


def _config(r: ProfileRecord) -> dict[str, Any]:
    return (r.variant.config if r.variant is not None else None) or {}


def _toggle(name: str) -> Callable[[ProfileRecord], Any]:
    def get(r: ProfileRecord) -> Any:
        value = _config(r).get(name)
        if name == "fcu_stages" and value is not None:
            value = ",".join(str(s) for s in value) or "none"
        return value

    return get


def _env(r: ProfileRecord) -> Environment:
    return r.environment if r.environment is not None else Environment.from_dict({})


def _status(r: ProfileRecord) -> str:
    return r.status.value if isinstance(r.status, Status) else str(r.status)


def _params(get: Callable[[ParamCounts], Any]) -> Callable[[ProfileRecord], Any]:
    return lambda r: get(r.params) if r.params is not None else None


def _flops(get: Callable[[FlopCounts], Any]) -> Callable[[ProfileRecord], Any]:
    return lambda r: get(r.flops) if r.flops is not None else None


def _timing(phase: str, get: Callable[[PhaseTiming], Any]) -> Callable[[ProfileRecord], Any]:
    def read(r: ProfileRecord) -> Any:
        t = (r.throughput or {}).get(phase)
        return get(t.timing) if t is not None else None

    return read


def _phase_memory(r: ProfileRecord, phase: str) -> CpuPhaseMemory | CudaPhaseMemory | None:
    return r.memory.phase(phase) if r.memory is not None else None


def _memory(phase: str, name: str) -> Callable[[ProfileRecord], Any]:
    return lambda r: getattr(_phase_memory(r, phase), name, None)


def _component_flops(comp: str, convention: str) -> Callable[[ProfileRecord], Any]:
    return _flops(lambda f: (f.by_component.get(comp) or {}).get(convention))


def _phase_columns(p: str) -> list[Column[ProfileRecord]]:
    columns: list[Column[ProfileRecord]] = [
        Column(f"{p}_img_per_s", _timing(p, lambda t: t.img_per_s), "img/s"),
        Column(f"{p}_img_per_ref_gflop", _timing(p, lambda t: t.img_per_ref_gflop)),
        Column(f"{p}_batch_size", _timing(p, lambda t: t.batch_size)),
        Column(f"{p}_requested_batch_size", _timing(p, lambda t: t.requested_batch_size)),
        Column(f"{p}_iters", _timing(p, lambda t: t.iters)),
    ]
    columns += [Column(f"{p}_latency_{k}_s", _timing(p, partial(_latency, k)), "s") for k in LATENCIES]
    columns += [
        Column(f"{p}_iqr_over_median", _timing(p, lambda t: t.iqr_over_median)),
        Column(f"{p}_noisy", _timing(p, lambda t: t.noisy)),
    ]
    columns += [Column(f"{p}_{k}", _memory(p, k), "B") for k in MEMORY_FIELDS]
    return columns


def _latency(key: str, t: PhaseTiming) -> float | None:
    return (t.latency_s or {}).get(key)


def _component_params(comp: str, p: ParamCounts) -> int | None:
    return p.by_component.get(comp)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


# One tidy row per profile (failed ones too): raw, unrounded values; docs/records.md lists them.
PROFILE_COLUMNS: tuple[Column[ProfileRecord], ...] = (
    Column("label", lambda r: r.label),
    Column("variant", lambda r: r.variant.name if r.variant is not None else None),
    Column("config_hash", lambda r: config_hash(_config(r))),
    *(Column(name, _toggle(name)) for name in TOGGLE_FIELDS),
    Column("status", _status, help="ok, oom, nan, failed or unsupported"),
    Column("reason", lambda r: r.reason),
    Column("device", lambda r: _first(_env(r).device, r.settings.device)),
    Column("device_name", lambda r: _env(r).device_name or _env(r).cpu_model),
    Column("precision", lambda r: r.settings.precision),
    Column("threads", lambda r: _first(_env(r).threads, r.settings.threads)),
    Column("path", lambda r: r.settings.path),
    Column("channels_last", lambda r: r.settings.channels_last),
    Column("mode", lambda r: r.settings.mode),
    Column("batch_size", lambda r: r.settings.batch_size),
    Column("img_size", lambda r: r.settings.img_size),
    Column("params_total", _params(lambda p: p.total)),
    Column("params_trainable", _params(lambda p: p.trainable)),
    *(Column(f"params_{c}", _params(partial(_component_params, c))) for c in COMPONENTS),
    Column("paper_macs", _flops(lambda f: f.paper_macs), help="conv + linear + matmul multiply-adds"),
    Column("fvcore_flops", _flops(lambda f: f.fvcore_total), help="fvcore: 1 fused multiply-add = 1 flop"),
    *(
        column
        for c in COMPONENTS
        for column in (
            Column(f"paper_macs_{c}", _component_flops(c, "paper_macs")),
            Column(f"fvcore_flops_{c}", _component_flops(c, "fvcore")),
        )
    ),
    Column("cross_check_macs", _flops(lambda f: f.cross_check.macs if f.cross_check else None)),
    Column(
        "cross_check_relative_difference",
        _flops(lambda f: f.cross_check.relative_difference if f.cross_check else None),
    ),
    *(column for p in PHASES for column in _phase_columns(p)),
    Column("wall_s", lambda r: r.wall_s, "s"),
)
TIDY_COLUMNS: tuple[str, ...] = tuple(c.name for c in PROFILE_COLUMNS)
_BY_NAME = {c.name: c for c in PROFILE_COLUMNS}


def column_value(name: str, record: ProfileRecord) -> Any:
    """The value of one of :data:`PROFILE_COLUMNS` for ``record`` (as its CSV holds it)."""
    return _BY_NAME[name].value(record)


def tidy(record: ProfileRecord) -> tuple[Sequence[Column[ProfileRecord]], list[ProfileRecord]]:
    """The CSV columns of a profile and its one row (:data:`conformer_bench.api.TIDY`)."""
    return PROFILE_COLUMNS, [record]


def flat_profile(record: ProfileRecord) -> dict[str, Any]:
    """One tidy row of raw (unrounded) values: :data:`PROFILE_COLUMNS` of ``record``."""
    return Table(PROFILE_COLUMNS, [record]).records()[0]


def render_csv(records: Iterable[ProfileRecord]) -> str:
    return Table(PROFILE_COLUMNS, list(records)).to_csv()


# --- a sweep: one display row per point ---------------------------------------------------------------------


def status_text(record: ProfileRecord) -> str:
    """ok, ``oom at batch N`` or ``failed: first line of the error`` (for the terminal)."""
    if record.status == Status.OK:
        halved = [
            t.timing.batch_size
            for t in (record.throughput or {}).values()
            if t.timing.batch_size != t.timing.requested_batch_size
        ]
        return f"ok (batch halved to {min(halved)})" if halved else "ok"
    if record.status == Status.OOM:
        return f"oom at batch {record.settings.batch_size}"
    return f"{_status(record)}: {record.reason}"


def _peak_memory(r: ProfileRecord) -> int | None:
    peaks = [_memory(p, k)(r) for p in PHASES for k in ("peak_rss_increase_bytes", "peak_allocated_bytes")]
    return max((m for m in peaks if m is not None), default=None)


SWEEP_COLUMNS: tuple[Column[ProfileRecord], ...] = (
    Column("variant", lambda r: r.variant.name if r.variant is not None else None),
    Column("config", lambda r: config_hash(_config(r))),
    Column("batch", lambda r: r.settings.batch_size or "auto"),
    Column("img", lambda r: r.settings.img_size),
    Column("precision", lambda r: r.settings.precision),
    Column("status", status_text),
    Column("infer img/s", _timing("infer", lambda t: t.img_per_s), digits=2),
    Column("train img/s", _timing("train", lambda t: t.img_per_s), digits=2),
    Column("params", _params(lambda p: p.total), "M", digits=3, scale=1e6),
    Column("paper MACs", _flops(lambda f: f.paper_macs), "M", digits=1, scale=1e6),
    Column("peak memory", _peak_memory, "MiB", digits=1, scale=2**20),
)
SWEEP_NOTE = "numbers per point in the tidy rows: -f csv (columns in docs/records.md)"


def sweep_table(records: Sequence[ProfileRecord]) -> Table[ProfileRecord]:
    return Table(
        SWEEP_COLUMNS,
        list(records),
        title=f"conformer-bench profile: {len(records)} points",
        notes=[SWEEP_NOTE],
    )


# --- one record as (section, metric, value, what it counts) rows -------------------------------------------


ProfileRow = tuple[str, str, str, str]


def _precision_note(settings: ProfileRunSettings) -> str:
    dtype = settings.autocast_dtype
    if settings.backend != "eager":
        return f"inference: {settings.backend}'s own kernels, no autocast" + (
            f"; training: autocast {dtype}" if dtype and settings.mode in ("train", "both") else ""
        )
    return f"autocast {dtype}" if dtype else "no autocast"


def _run_rows(record: ProfileRecord) -> list[ProfileRow]:
    env = _env(record)
    settings = record.settings
    precision = settings.precision or env.precision
    threads_note = "torch intra-op threads" + (
        f" (set by --threads {settings.threads})" if env.threads_requested else " (torch default)"
    )
    rows = [
        ("run", "status", _status(record), record.reason or ""),
        ("run", "device", str(env.device_name or env.device or "?"), f"{env.device}, torch {env.torch}"),
        ("run", "precision", str(precision), _precision_note(settings)),
        ("run", "threads", str(env.threads), threads_note),
    ]
    if settings.mode != "none":
        rows.append(("run", "batch", str(settings.batch_size), "images per timed step (requested)"))
        rows.append(
            (
                "run",
                "path",
                str(settings.path or "plain"),
                "channels-last" if settings.channels_last else "",
            )
        )
    if settings.backend != "eager":
        infer = (settings.precision_by_phase or {}).get("infer", "")
        rows.append(("run", "backend", settings.backend, f"inference only (training stays eager): {infer}"))
    return rows


def _params_rows(params: ParamCounts | None) -> list[ProfileRow]:
    if params is None:
        return []
    total = params.total
    rows = [
        ("params", "total", fmt_int(total), f"{total / 1e6:.2f} M parameters"),
        ("params", "trainable", fmt_int(params.trainable), "requires_grad"),
    ]
    for comp in COMPONENTS:
        n = params.by_component.get(comp, 0)
        rows.append(("params", comp, fmt_int(n), fmt_pct(n / total if total else 0.0)))
    return rows


def _flops_rows(flops: FlopCounts | None) -> list[ProfileRow]:
    if flops is None:
        return []
    size = f"batch 1, {flops.img_size}x{flops.img_size}, eval"
    rows = [
        ("flops", "paper MACs", fmt_giga(flops.paper_macs, 3), f"conv+linear+matmul multiply-adds, {size}"),
        (
            "flops",
            "fvcore total",
            fmt_giga(flops.fvcore_total),
            f"fvcore: 1 fused multiply-add = 1 flop, {size}",
        ),
    ]
    for comp in COMPONENTS:
        c = flops.by_component.get(comp) or {}
        paper, fvcore = (c.get(k) for k in ("paper_macs", "fvcore"))
        rows.append(("flops", comp, fmt_giga(paper, 3), f"paper MACs; fvcore {fmt_giga(fvcore)}"))
    cross = flops.cross_check
    if cross is not None:
        rows.append(
            (
                "flops",
                "cross-check MACs",
                fmt_giga(cross.macs, 3),
                f"FlopCounterMode flops/2 (math SDPA); vs paper MACs {fmt_pct(cross.relative_difference, 3)}",
            )
        )
    for ops, metric, why in (
        (flops.unsupported_ops, "uncounted, fvcore warns", "no handle, counted as 0"),
        (flops.ignored_ops, "uncounted, fvcore silent", "deemed zero-cost by fvcore"),
    ):
        listed = ", ".join(f"{op.removeprefix('aten::')}×{n}" for op, n in (ops or {}).items())
        rows.append(("flops", metric, f"{sum((ops or {}).values())} calls", f"{why}: {listed or 'none'}"))
    return rows


def _memory_rows(phase: str, mem: CpuPhaseMemory | CudaPhaseMemory) -> list[ProfileRow]:
    section = f"memory {phase}"
    if isinstance(mem, CpuPhaseMemory):
        return [
            (
                section,
                "peak RSS increase",
                fmt_mib(mem.peak_rss_increase_bytes),
                f"over {fmt_mib(mem.rss_before_bytes)} at phase start",
            )
        ]
    return [
        (section, "peak allocated", fmt_mib(mem.peak_allocated_bytes), "torch.cuda, this phase"),
        (section, "peak reserved", fmt_mib(mem.peak_reserved_bytes), "caching allocator"),
        (section, "NVML used", fmt_mib(mem.nvml_used_bytes), mem.nvml_error or "whole device, end of phase"),
    ]


def _throughput_rows(phase: str, run: ProfiledPhase) -> list[ProfileRow]:
    t = run.timing
    batch = t.batch_size
    req = t.requested_batch_size if t.requested_batch_size is not None else batch
    batch_note = f"batch {batch}" + (f" (requested {req}, halved on OOM)" if req != batch else "")
    lat = [(t.latency_s or {}).get(k) for k in ("median", "p90", "p99")]
    iters = f"{t.iters} timed iters" + (" (auto-ranged)" if t.iters_auto else "") + f", {t.warmup} warm-up"
    sec = f"{phase} ({run.path or 'plain'})"
    noisy = "NOISY (> 10 %)" if t.noisy else "ok (<= 10 %)"
    rows = [
        (sec, "images/s", f"{t.img_per_s:,.2f}", f"{batch_note} / median iteration time"),
        (sec, "latency median", fmt_ms(lat[0]), f"per batch of {batch}; {iters}"),
        (sec, "latency p90 / p99", f"{fmt_ms(lat[1])} / {fmt_ms(lat[2])}", f"timer {t.timer}"),
        (sec, "IQR / median", fmt_pct(t.iqr_over_median), noisy),
    ]
    ref = t.reference
    if ref is not None and t.img_per_ref_gflop is not None:
        rows.append(
            (
                sec,
                "img / reference GFLOP",
                f"{t.img_per_ref_gflop:,.3f}",
                f"median over pairs of img/s / reference GFLOP/s; reference: {ref.workload}, "
                f"{ref.gflop_per_s:,.1f} GFLOP/s median",
            )
        )
    return rows


def profile_rows(record: ProfileRecord) -> list[ProfileRow]:
    """Every printed figure with its unit and what it counts."""
    rows = _run_rows(record) + _params_rows(record.params) + _flops_rows(record.flops)
    for phase in PHASES:
        mem = _phase_memory(record, phase)
        if mem is not None:
            rows += _memory_rows(phase, mem)
    for phase in PHASES:
        run = (record.throughput or {}).get(phase)
        if run is not None:
            rows += _throughput_rows(phase, run)
    for phase, seconds in (record.compile_s or {}).items():
        rows.append(
            ("compile", phase, f"{seconds:.1f} s", "untimed first call (torch.compile), before the warm-up")
        )
    return rows + breakdown_rows(record.breakdown)


ROW_COLUMNS: tuple[Column[ProfileRow], ...] = (
    Column("section", lambda row: row[0]),
    Column("metric", lambda row: row[1]),
    Column("value", lambda row: row[2]),
    Column("what it counts", lambda row: row[3]),
)


def _rows_table(record: ProfileRecord) -> Table[ProfileRow]:
    return Table(ROW_COLUMNS, profile_rows(record), title=f"conformer-bench profile: {record.label}")


# --- renderers ----------------------------------------------------------------------------------------------


def render_table(record: ProfileRecord, width: int = 120) -> str:
    """A rich table as plain text (no colour codes), for the terminal or a ``.txt`` file."""
    return _rows_table(record).to_rich_text(width)


def render_md(record: ProfileRecord) -> str:
    table = _rows_table(record)
    heading = f"### {md_escape(table.title)}\n\n"
    table.title = ""
    return heading + table.to_markdown()


def record_line(record: ProfileRecord) -> str:
    """One record as a JSON line (the form of a sweep's ``.jsonl``)."""
    return dumps_json(record.to_dict(), indent=None)


def render(record: ProfileRecord, fmt: str) -> str:
    if fmt == "json":
        return dumps_json(record.to_dict())
    if fmt == "csv":
        return render_csv([record])
    if fmt == "jsonl":
        return record_line(record)
    if fmt == "md":
        return render_md(record)
    if fmt == "latex":
        return _rows_table(record).to_latex()
    if fmt == "table":
        return render_table(record)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(PROFILE_FORMATS)}")
