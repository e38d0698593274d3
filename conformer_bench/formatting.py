"""Writers for profile records: rich table, Markdown, CSV and JSON. Rounding happens here and only here."""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import BenchError
from .files import atomic_write_text, dumps_json
from .params import COMPONENTS

# Every command that prints a record offers these; csv and jsonl hold raw values, one row per line.
FORMATS = ("table", "json", "jsonl", "csv", "md")
EXTENSIONS = {"json": "json", "jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv", "md": "md", "txt": "table"}
PHASES = ("infer", "train")


# --- number formatting ----------------------------------------------------------------------------------


def fmt_int(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def fmt_giga(n: float | None, digits: int = 4) -> str:
    """``digits`` decimals in G; small counts switch to M or K so that they never print as 0.000 G."""
    if n is None:
        return "—"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n:,.0f}"


def fmt_mib(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**20:,.1f} MiB"


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:,.2f} ms"


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f} %"


def parse_format(
    value: str | None, option: str = "--format", default: str = "table", choices: Sequence[str] = FORMATS
) -> str:
    """``--format`` read once, case-insensitively (``-f JSON`` is ``json``)."""
    if value is None:
        return default
    fmt = value.strip().lower()
    if fmt not in choices:
        raise BenchError(f"{option} {value!r} is not valid; use one of {', '.join(choices)}")
    return fmt


def file_format(path: str | os.PathLike[str], explicit: str | None) -> str:
    """The format written to ``--output``: its known extension, else ``--format``, else json."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    return parse_format(explicit, default="json")


def write_output(
    path: str | os.PathLike[str], render: Callable[[str], str], explicit: str | None = None
) -> Path:
    """Render in the file's format (see :func:`file_format`) and write atomically; say so on stderr."""
    written = atomic_write_text(path, render(file_format(path, explicit)))
    print(f"wrote {path}", file=sys.stderr)
    return written


def rows_csv(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, header: bool = True
) -> str:
    """Raw values, one row per line; ``None`` is an empty cell."""
    if columns is None:
        columns = list(rows[0]) if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


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


# --- what the record says, as (section, metric, value, what it counts) rows -------------------------------


ProfileRow = tuple[str, str, str, str]


def _precision_note(settings: dict[str, Any], dtype: Any) -> str:
    if settings.get("backend", "eager") != "eager":
        return f"inference: {settings['backend']}'s own kernels, no autocast" + (
            f"; training: autocast {dtype}" if dtype and settings.get("mode") in ("train", "both") else ""
        )
    return f"autocast {dtype}" if dtype else "no autocast"


def _run_rows(record: dict[str, Any]) -> list[ProfileRow]:
    env = record.get("environment") or {}
    settings = record.get("settings") or {}
    precision = settings.get("precision", env.get("precision"))
    dtype = settings.get("autocast_dtype")
    threads_note = "torch intra-op threads" + (
        f" (set by --threads {settings['threads']})" if env.get("threads_requested") else " (torch default)"
    )
    rows = [
        ("run", "status", str(record.get("status", "?")), record.get("reason") or ""),
        (
            "run",
            "device",
            str(env.get("device_name") or env.get("device", "?")),
            f"{env.get('device')}, torch {env.get('torch')}",
        ),
        ("run", "precision", str(precision), _precision_note(settings, dtype)),
        ("run", "threads", str(env.get("threads")), threads_note),
    ]
    if settings.get("mode") != "none":
        rows.append(("run", "batch", str(settings.get("batch_size")), "images per timed step (requested)"))
        rows.append(
            (
                "run",
                "path",
                str(settings.get("path", "plain")),
                "channels-last" if settings.get("channels_last") else "",
            )
        )
    if settings.get("backend", "eager") != "eager":
        infer = (settings.get("precision_by_phase") or {}).get("infer", "")
        rows.append(
            ("run", "backend", str(settings["backend"]), f"inference only (training stays eager): {infer}")
        )
    return rows


def _params_rows(params: dict[str, Any]) -> list[ProfileRow]:
    if not params:
        return []
    total = params["total"]
    rows = [
        ("params", "total", fmt_int(total), f"{total / 1e6:.2f} M parameters"),
        ("params", "trainable", fmt_int(params["trainable"]), "requires_grad"),
    ]
    for comp in COMPONENTS:
        n = params["by_component"].get(comp, 0)
        share = n / total if total else 0.0
        rows.append(("params", comp, fmt_int(n), fmt_pct(share)))
    return rows


def _flops_rows(flops: dict[str, Any] | None) -> list[ProfileRow]:
    if not flops:
        return []
    size = f"batch 1, {flops['img_size']}x{flops['img_size']}, eval"
    rows = [
        (
            "flops",
            "paper MACs",
            fmt_giga(flops["paper_macs"], 3),
            f"conv+linear+matmul multiply-adds, {size}",
        ),
        (
            "flops",
            "fvcore total",
            fmt_giga(flops["fvcore_total"]),
            f"fvcore: 1 fused multiply-add = 1 flop, {size}",
        ),
    ]
    for comp in COMPONENTS:
        c = flops["by_component"].get(comp, {})
        rows.append(
            (
                "flops",
                comp,
                fmt_giga(c.get("paper_macs"), 3),
                f"paper MACs; fvcore {fmt_giga(c.get('fvcore'))}",
            )
        )
    cross = flops.get("cross_check")
    if cross:
        rows.append(
            (
                "flops",
                "cross-check MACs",
                fmt_giga(cross["macs"], 3),
                f"FlopCounterMode flops/2 (math SDPA); vs paper MACs {fmt_pct(cross.get('relative_difference'), 3)}",
            )
        )
    for key, metric, why in (
        ("unsupported_ops", "uncounted, fvcore warns", "no handle, counted as 0"),
        ("ignored_ops", "uncounted, fvcore silent", "deemed zero-cost by fvcore"),
    ):
        ops = flops.get(key, {})
        listed = ", ".join(f"{op.removeprefix('aten::')}×{n}" for op, n in ops.items())
        rows.append(("flops", metric, f"{sum(ops.values())} calls", f"{why}: {listed or 'none'}"))
    return rows


def _memory_rows(phase: str, mem: dict[str, Any]) -> list[ProfileRow]:
    section = f"memory {phase}"
    if "peak_allocated_bytes" not in mem:
        return [
            (
                section,
                "peak RSS increase",
                fmt_mib(mem["peak_rss_increase_bytes"]),
                f"over {fmt_mib(mem['rss_before_bytes'])} at phase start",
            )
        ]
    return [
        (section, "peak allocated", fmt_mib(mem["peak_allocated_bytes"]), "torch.cuda, this phase"),
        (section, "peak reserved", fmt_mib(mem["peak_reserved_bytes"]), "caching allocator"),
        (
            section,
            "NVML used",
            fmt_mib(mem.get("nvml_used_bytes")),
            mem.get("nvml_error", "whole device, end of phase"),
        ),
    ]


def _throughput_rows(phase: str, t: dict[str, Any]) -> list[ProfileRow]:
    batch = t["batch_size"]
    req = t.get("requested_batch_size", batch)
    batch_note = f"batch {batch}" + (f" (requested {req}, halved on OOM)" if req != batch else "")
    lat = t["latency_s"]
    iters = (
        f"{t['iters']} timed iters"
        + (" (auto-ranged)" if t.get("iters_auto") else "")
        + f", {t['warmup']} warm-up"
    )
    sec = f"{phase} ({t.get('path', 'plain')})"
    noisy = "NOISY (> 10 %)" if t["noisy"] else "ok (<= 10 %)"
    rows = [
        (sec, "images/s", f"{t['img_per_s']:,.2f}", f"{batch_note} / median iteration time"),
        (sec, "latency median", fmt_ms(lat["median"]), f"per batch of {batch}; {iters}"),
        (sec, "latency p90 / p99", f"{fmt_ms(lat['p90'])} / {fmt_ms(lat['p99'])}", f"timer {t['timer']}"),
        (sec, "IQR / median", fmt_pct(t["iqr_over_median"]), noisy),
    ]
    ref = t.get("reference")
    if ref:
        rows.append(
            (
                sec,
                "img / reference GFLOP",
                f"{t['img_per_ref_gflop']:,.3f}",
                f"median over pairs of img/s / reference GFLOP/s; reference: {ref['workload']}, "
                f"{ref['gflop_per_s']:,.1f} GFLOP/s median",
            )
        )
    return rows


def profile_rows(record: dict[str, Any]) -> list[ProfileRow]:
    """Every printed figure with its unit and what it counts."""
    rows = _run_rows(record)
    rows += _params_rows(record.get("params") or {})
    rows += _flops_rows(record.get("flops"))
    memory = record.get("memory") or {}
    for phase in PHASES:
        if memory.get(phase):
            rows += _memory_rows(phase, memory[phase])
    throughput = record.get("throughput") or {}
    for phase in PHASES:
        if throughput.get(phase):
            rows += _throughput_rows(phase, throughput[phase])
    for phase, seconds in (record.get("compile_s") or {}).items():
        rows.append(
            ("compile", phase, f"{seconds:.1f} s", "untimed first call (torch.compile), before the warm-up")
        )
    from .breakdown import profile_rows as breakdown_rows

    return rows + breakdown_rows(record.get("breakdown"))


# --- renderers ----------------------------------------------------------------------------------------------


def render_table(record: dict[str, Any], width: int = 120) -> str:
    """A rich table as plain text (no colour codes), for the terminal or a ``.txt`` file."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"conformer-bench profile: {record.get('label')}", title_justify="left")
    for column in ("section", "metric", "value", "what it counts"):
        table.add_column(column, overflow="fold", justify="right" if column == "value" else "left")
    last = None
    for section, metric, value, note in profile_rows(record):
        table.add_row(section if section != last else "", metric, value, note, end_section=False)
        last = section
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(table)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return str(out)


def render_md(record: dict[str, Any]) -> str:
    lines = [
        f"### conformer-bench profile: {record.get('label')}",
        "",
        "| section | metric | value | what it counts |",
    ]
    lines.append("|---|---|---:|---|")
    for section, metric, value, note in profile_rows(record):
        cells = [c.replace("|", "\\|") for c in (section, metric, value, note)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def config_hash(config: dict[str, Any] | None) -> str | None:
    """Short hash of a model config's ``to_dict()``, the same identity the reports use."""
    if not config:
        return None
    from .report.metrics import config_identity

    return config_identity({"config": config})


def _flat_identity(record: dict[str, Any]) -> dict[str, Any]:
    """Label, variant and its toggles as columns."""
    variant = record.get("variant") or {}
    config = variant.get("config") or {}
    row: dict[str, Any] = {
        "label": record.get("label"),
        "variant": variant.get("name"),
        "config_hash": config_hash(config),
    }
    for field in TOGGLE_FIELDS:
        value = config.get(field)
        if field == "fcu_stages" and value is not None:
            value = ",".join(str(s) for s in value) or "none"
        row[field] = value
    return row


def _flat_run(record: dict[str, Any]) -> dict[str, Any]:
    env = record.get("environment") or {}
    settings = record.get("settings") or {}
    return {
        "status": record.get("status"),
        "reason": record.get("reason"),
        "device": env.get("device", settings.get("device")),
        "device_name": env.get("device_name") or env.get("cpu_model"),
        "precision": settings.get("precision"),
        "threads": env.get("threads", settings.get("threads")),
        "path": settings.get("path"),
        "channels_last": settings.get("channels_last"),
        "mode": settings.get("mode"),
        "batch_size": settings.get("batch_size"),
        "img_size": settings.get("img_size"),
    }


def _flat_costs(record: dict[str, Any]) -> dict[str, Any]:
    """Parameter and FLOP counts, whole model and per component."""
    params = record.get("params") or {}
    row: dict[str, Any] = {"params_total": params.get("total"), "params_trainable": params.get("trainable")}
    for comp in COMPONENTS:
        row[f"params_{comp}"] = (params.get("by_component") or {}).get(comp)
    flops = record.get("flops") or {}
    row["paper_macs"] = flops.get("paper_macs")
    row["fvcore_flops"] = flops.get("fvcore_total")
    for comp in COMPONENTS:
        c = (flops.get("by_component") or {}).get(comp, {})
        row[f"paper_macs_{comp}"] = c.get("paper_macs")
        row[f"fvcore_flops_{comp}"] = c.get("fvcore")
    cross = flops.get("cross_check") or {}
    row["cross_check_macs"] = cross.get("macs")
    row["cross_check_relative_difference"] = cross.get("relative_difference")
    return row


def _flat_phase(phase: str, t: dict[str, Any], mem: dict[str, Any]) -> dict[str, Any]:
    """Throughput, latency and memory of one phase, each column prefixed with the phase."""
    lat = t.get("latency_s") or {}
    row: dict[str, Any] = {
        f"{phase}_img_per_s": t.get("img_per_s"),
        f"{phase}_img_per_ref_gflop": t.get("img_per_ref_gflop"),
        f"{phase}_batch_size": t.get("batch_size"),
        f"{phase}_requested_batch_size": t.get("requested_batch_size"),
        f"{phase}_iters": t.get("iters"),
    }
    for key in ("median", "p90", "p99", "iqr"):
        row[f"{phase}_latency_{key}_s"] = lat.get(key)
    row[f"{phase}_iqr_over_median"] = t.get("iqr_over_median")
    row[f"{phase}_noisy"] = t.get("noisy")
    for key in (
        "peak_rss_increase_bytes",
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "nvml_used_bytes",
    ):
        row[f"{phase}_{key}"] = mem.get(key)
    return row


def flat_profile(record: dict[str, Any]) -> dict[str, Any]:
    """One tidy row of raw (unrounded) values; every record, failed ones too, gives the same columns.

    Columns are listed in docs/records.md ("Tidy profile rows").
    """
    row = _flat_identity(record) | _flat_run(record) | _flat_costs(record)
    throughput = record.get("throughput") or {}
    memory = record.get("memory") or {}
    for phase in PHASES:
        row |= _flat_phase(phase, throughput.get(phase) or {}, memory.get(phase) or {})
    row["wall_s"] = record.get("wall_s")
    return row


TIDY_COLUMNS: tuple[str, ...] = tuple(flat_profile({}))


def render_csv(records: Iterable[dict[str, Any]]) -> str:
    return rows_csv([flat_profile(r) for r in records], TIDY_COLUMNS)


def render(record: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return dumps_json(record)
    if fmt == "csv":
        return render_csv([record])
    if fmt == "jsonl":
        return rows_jsonl([flat_profile(record)])
    if fmt == "md":
        return render_md(record)
    if fmt == "table":
        return render_table(record)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def render_rows_md(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows)
    return "\n".join(lines) + "\n"
