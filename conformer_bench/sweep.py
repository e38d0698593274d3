"""Profile sweeps: every (variant, batch size, image size, precision) point, one tidy row each.

A point that fails (bad setting for that variant, out of memory, a crash) is recorded with its status and
the sweep goes on. Rows are :func:`conformer_bench.formatting.flat_profile` rows; their columns are listed
in docs/records.md.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import BenchError, exception_line
from .formatting import TIDY_COLUMNS, flat_profile, fmt_giga, fmt_mib, render_rows_md, rows_csv, rows_jsonl
from .lists import comma_items

APPENDABLE = ("csv", "jsonl")


# --- parsing the command line's lists -------------------------------------------------------------------------


def split_list(text: str, option: str) -> list[str]:
    """:func:`comma_items` with duplicates dropped (order kept)."""
    return list(dict.fromkeys(comma_items(text, option)))


def parse_ints(text: str | None, option: str) -> list[int | None]:
    """A comma list of positive integers; ``None`` (not given) is one point at the default."""
    if text is None:
        return [None]
    values: list[int | None] = []
    for part in split_list(text, option):
        try:
            value = int(part)
        except ValueError:
            raise BenchError(f"{option} {part!r} is not an integer; give e.g. {option} 1,8,32") from None
        if value <= 0:
            raise BenchError(f"{option} must be positive, got {value}")
        values.append(value)
    if not values:
        raise BenchError(f"{option} is empty; give e.g. {option} 1,8")
    return values


def parse_choices(text: str, option: str, choices: Sequence[str]) -> list[str]:
    values = [v.lower() for v in split_list(text, option)]
    for value in values:
        if value not in choices:
            raise BenchError(f"{option} {value!r} is not valid; use one of {', '.join(choices)}")
    if not values:
        raise BenchError(f"{option} is empty; use one of {', '.join(choices)}")
    return values


def read_model_list(path: str | os.PathLike[str]) -> list[str]:
    """Variant names, one a line; ``#`` starts a comment, blank lines are skipped."""
    from .files import read_input_text

    text = read_input_text(path, "--model-list", "give a text file with one variant a line")
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise BenchError(
            f"--model-list {str(path)!r} names no variant; write one name a line (# for comments)"
        )
    return names


def parse_mode(text: str, modes: Sequence[str]) -> str:
    """``--mode``: exactly one of ``modes``."""
    found = parse_choices(text, "--mode", modes)
    if len(found) > 1:
        raise BenchError(f"--mode takes one of {', '.join(modes)}; both times infer and train")
    return found[0]


def variant_names(variant: str, model_list: str | os.PathLike[str] | None, variant_given: bool) -> list[str]:
    """The variants to sweep: ``--model-list`` replaces the default ``--variant`` and adds to a given one."""
    names = split_list(variant, "--variant")
    if model_list is not None:
        listed = read_model_list(model_list)
        names = list(dict.fromkeys([*names, *listed])) if variant_given else listed
    if not names:
        raise BenchError("--variant is empty; give a preset such as tiny (see `conformer-bench variants`)")
    return names


def check_targets(
    output: str | None,
    fmt: str | None,
    append: bool,
    plot: str | os.PathLike[str] | None,
    batch_sizes: Sequence[int | None],
    mode: str,
) -> None:
    """Refuse an unwritable ``--output`` or ``--plot``, and ``--append`` or ``--plot`` where they cannot work."""
    from .files import check_writable
    from .formatting import file_format

    out_format = file_format(output, fmt) if output is not None else None
    if output is not None:
        check_writable(output)
        if append:
            check_appendable(output, str(out_format))
    elif append:
        raise BenchError("--append needs --output FILE.csv or FILE.jsonl to add the rows to")
    if plot is not None:
        if len(batch_sizes) < 2:
            raise BenchError(
                "--plot draws throughput against batch size; give several, e.g. --batch-size 1,2,4"
            )
        if mode == "none":
            raise BenchError("--plot needs timed points; use --mode infer, train or both")
        check_writable(plot)


# --- running -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    cfg: Any
    batch_size: int | None
    img_size: int
    precision: str


def points(
    configs: Sequence[Any],
    batch_sizes: Sequence[int | None],
    img_sizes: Sequence[int | None],
    precisions: Sequence[str],
) -> list[Point]:
    """The product, variant-major; an image size of ``None`` is the variant's own."""
    return [
        Point(cfg, batch, img if img is not None else int(cfg.img_size), precision)
        for cfg, img, precision, batch in itertools.product(configs, img_sizes, precisions, batch_sizes)
    ]


def failed_record(point: Point, settings: Any, exc: BaseException) -> dict[str, Any]:
    """The record of a point that raised: what was asked, status ``failed`` and the first line of the error."""
    from .records import ProfileRecord, Status

    text = str(exc).strip().splitlines()
    reason = text[0] if isinstance(exc, BenchError) and text else exception_line(exc)
    cfg = point.cfg
    return ProfileRecord(
        status=Status.FAILED,
        reason=reason,
        label=cfg.name,
        variant={"name": cfg.name, "label": cfg.name, "config": cfg.to_dict()},
        environment={},
        settings=asdict(settings),
        params=None,
        flops=None,
        memory=None,
        throughput=None,
        compile_s=None,
        wall_s=None,
    ).to_dict()


def run_sweep(
    sweep: Sequence[Point],
    base: Any,
    progress: Callable[[str, float], None] | None = None,
    profile: Callable[..., dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Profile every point with ``base`` settings (a ProfileSettings) changed to the point's values.

    With one point its errors are raised as usual; with several a failing point is recorded and the rest
    still run (Ctrl-C still stops the sweep).
    """
    if profile is None:
        from . import profiling

        profile = profiling.profile_variant
    records = []
    counted: dict[tuple[str, int], dict[str, Any]] = {}  # FLOPs depend on the model and image size only
    for i, point in enumerate(sweep):
        key = (json.dumps(point.cfg.to_dict(), sort_keys=True, default=str), point.img_size)
        settings = replace(
            base,
            batch_size=point.batch_size,
            img_size=point.img_size,
            precision=point.precision,
            count_flops=base.count_flops and key not in counted,
        )
        step = None if progress is None else _point_progress(progress, point, i, len(sweep))

        if len(sweep) == 1:
            return [profile(point.cfg, settings, progress=step)]
        try:
            record = profile(point.cfg, settings, progress=step)
        except Exception as exc:  # one failing point never stops the others
            record = failed_record(point, replace(settings, count_flops=base.count_flops), exc)
        else:
            if record.get("flops"):
                counted[key] = record["flops"]
            elif base.count_flops and key in counted:
                record["flops"] = counted[key]  # counted once at an earlier point of this sweep
                record["settings"]["count_flops"] = True
        records.append(record)
    return records


def _point_progress(
    progress: Callable[[str, float], None], point: Point, i: int, n: int
) -> Callable[[str, float], None]:
    """One point's progress as its share of the whole sweep's bar."""
    name = f"{i + 1}/{n} {point.cfg.name} batch {point.batch_size or 'auto'}, {point.img_size}px, {point.precision}"

    def step(message: str, fraction: float) -> None:
        progress(f"{name}: {message}", (i + fraction) / n)

    return step


def status_text(record: dict[str, Any]) -> str:
    """ok, ``oom at batch N`` or ``failed: first line of the error`` (for the terminal)."""
    status = record.get("status")
    settings = record.get("settings") or {}
    if status == "ok":
        halved = [
            t["batch_size"]
            for t in (record.get("throughput") or {}).values()
            if t.get("batch_size") != t.get("requested_batch_size")
        ]
        return f"ok (batch halved to {min(halved)})" if halved else "ok"
    if status == "oom":
        return f"oom at batch {settings.get('batch_size')}"
    return f"{status}: {record.get('reason')}"


# --- writing ---------------------------------------------------------------------------------------------------


def tidy_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [flat_profile(r) for r in records]


def _display_rows(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "config", "batch", "img", "precision", "status", "infer img/s", "train img/s"]
    header += ["params", "paper MACs", "peak memory"]
    rows = []
    for record, row in zip(records, tidy_rows(records), strict=True):
        memory = [
            row.get(f"{p}_{k}")
            for p in ("infer", "train")
            for k in ("peak_rss_increase_bytes", "peak_allocated_bytes")
        ]
        peak = max((m for m in memory if m is not None), default=None)
        rows.append(
            [
                str(row["variant"]),
                str(row["config_hash"]),
                str(row["batch_size"] or "auto"),
                str(row["img_size"]),
                str(row["precision"]),
                status_text(record),
                "—" if row["infer_img_per_s"] is None else f"{row['infer_img_per_s']:,.2f}",
                "—" if row["train_img_per_s"] is None else f"{row['train_img_per_s']:,.2f}",
                fmt_giga(row["params_total"], 3),
                fmt_giga(row["paper_macs"], 3),
                fmt_mib(peak),
            ]
        )
    return header, rows


def render_table(records: Sequence[dict[str, Any]], width: int = 160) -> str:
    from rich.console import Console
    from rich.table import Table

    header, rows = _display_rows(records)
    table = Table(title=f"conformer-bench profile: {len(records)} points", title_justify="left")
    for i, column in enumerate(header):
        table.add_column(
            column, overflow="fold", justify="right" if i >= 6 or column in ("batch", "img") else "left"
        )
    for row in rows:
        table.add_row(*row)
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(table)
    console.print("numbers per point in the tidy rows: -f csv or -f jsonl (columns in docs/records.md)")
    return str(console.file.getvalue())  # type: ignore[attr-defined]


def render(records: Sequence[dict[str, Any]], fmt: str) -> str:
    """A sweep in a --format: json = the records, csv/jsonl = tidy rows, table/md = what to read."""
    if fmt == "json":
        from .files import dumps_json

        return dumps_json(list(records))
    if fmt == "csv":
        return rows_csv(tidy_rows(records), TIDY_COLUMNS)
    if fmt == "jsonl":
        return rows_jsonl(tidy_rows(records))
    if fmt == "md":
        return render_rows_md(*_display_rows(records))
    return render_table(records)


def render_records(records: Sequence[dict[str, Any]], fmt: str) -> str:
    """One record as its full form unless ``fmt`` is a row format; several as one row per point."""
    if len(records) == 1 and fmt not in APPENDABLE:
        from .formatting import render as render_record

        return render_record(records[0], fmt)
    return render(records, fmt)


def _existing_columns(path: Path, fmt: str) -> list[str] | None:
    from .files import read_input_text

    text = read_input_text(path, "--append", "write to a new file or drop --append")
    if not text.strip():
        return None
    if fmt == "csv":
        return next(csv.reader(io.StringIO(text)))
    try:
        return list(json.loads(text.splitlines()[0]))
    except (json.JSONDecodeError, TypeError):
        raise BenchError(f"{path} is not JSON lines; write to a new file or drop --append") from None


def check_appendable(path: str | os.PathLike[str], fmt: str) -> None:
    """Refuse, before measuring, to append to a file of another format or with other columns."""
    if fmt not in APPENDABLE:
        raise BenchError(
            f"--append adds rows to a .csv or .jsonl results file, not {fmt}; use -o results.csv"
        )
    path = Path(path)
    if not path.is_file():
        return
    columns = _existing_columns(path, fmt)
    if columns is not None and columns != list(TIDY_COLUMNS):
        missing = [c for c in TIDY_COLUMNS if c not in columns]
        extra = [c for c in columns if c not in TIDY_COLUMNS]
        what = (
            ", ".join(
                part
                for part in (
                    f"lacks {', '.join(missing[:3])}" + ("..." if len(missing) > 3 else "")
                    if missing
                    else "",
                    f"has {', '.join(extra[:3])}" + ("..." if len(extra) > 3 else "") if extra else "",
                )
                if part
            )
            or "orders them differently"
        )
        raise BenchError(
            f"{path} has other columns than profile rows ({what}); write to a new file or drop --append"
        )


def appended(path: str | os.PathLike[str], records: Sequence[dict[str, Any]], fmt: str) -> str:
    """The existing file's text followed by the new rows (a header only for a new or empty file)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if not old.strip():
        return render(records, fmt)
    if not old.endswith("\n"):
        old += "\n"
    if fmt == "csv":
        return old + rows_csv(tidy_rows(records), TIDY_COLUMNS, header=False)
    return old + rows_jsonl(tidy_rows(records))


# --- figure ------------------------------------------------------------------------------------------------------


def plot(records: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Throughput against batch size, one line per variant (and precision, image size, path when several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_write_bytes

    rows = [r for r in tidy_rows(records) if r["status"] == "ok"]
    phases = [p for p in ("infer", "train") if any(r[f"{p}_img_per_s"] is not None for r in rows)]
    if not phases:
        raise BenchError(
            "no point of the sweep measured throughput; nothing to plot (use --mode infer or train)"
        )
    keys = ("variant", "precision", "img_size", "path")
    varying = [k for k in keys if len({r[k] for r in rows}) > 1 or k == "variant"]
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4.5), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        lines: dict[tuple[Any, ...], list[tuple[int, float]]] = {}
        for r in rows:
            if r[f"{phase}_img_per_s"] is not None:
                key = tuple(r[k] for k in varying)
                lines.setdefault(key, []).append((r[f"{phase}_batch_size"], r[f"{phase}_img_per_s"]))
        for key, xy in lines.items():
            xy.sort()
            label = ", ".join(
                f"{v}px" if k == "img_size" else str(v) for k, v in zip(varying, key, strict=True)
            )
            ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label)
        ax.set_xscale("log", base=2)
        batches = sorted({x for xy in lines.values() for x, _ in xy})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size (images per step)")
        ax.set_ylabel(f"{phase} images/s (median iteration)")
        ax.set_title(phase)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    first = rows[0]
    precisions = ", ".join(dict.fromkeys(str(r["precision"]) for r in rows))
    threads = ", ".join(dict.fromkeys(str(r["threads"]) for r in rows))
    fig.suptitle(
        f"Throughput vs batch size\n{first['device_name'] or first['device']} ({first['device']}), "
        f"precision {precisions}, {threads} thread(s)",
        fontsize="medium",
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
