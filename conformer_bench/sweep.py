"""Profile sweeps: every (variant, batch size, image size, precision) point, one record each.

A point that fails (bad setting for that variant, out of memory, a crash) is recorded with its status and
the sweep goes on. A sweep's ``.jsonl`` holds its records, one a line; its CSV the tidy rows of
:data:`conformer_bench.formatting.PROFILE_COLUMNS` (listed in docs/records.md).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BenchError, exception_line
from .files import atomic_write_bytes, check_writable, dumps_json, read_input_text
from .formatting import (
    PROFILE_FORMATS,
    TIDY_COLUMNS,
    column_value,
    file_format,
    record_line,
    render_csv,
    status_text,
    sweep_table,
)
from .formatting import render as render_record
from .lists import comma_items
from .records import (
    PROFILE_SCHEMA,
    Environment,
    FlopCounts,
    ProfileRecord,
    ProfileRunSettings,
    Status,
    Variant,
)

if TYPE_CHECKING:
    from conformer import ConformerConfig

    from .profiling import ProfileSettings

__all__ = ["status_text"]  # re-exported: the terminal's word for a point

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
    out_format = file_format(output, fmt, PROFILE_FORMATS) if output is not None else None
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
    cfg: ConformerConfig
    batch_size: int | None
    img_size: int
    precision: str


def points(
    configs: Sequence[ConformerConfig],
    batch_sizes: Sequence[int | None],
    img_sizes: Sequence[int | None],
    precisions: Sequence[str],
) -> list[Point]:
    """The product, variant-major; an image size of ``None`` is the variant's own."""
    return [
        Point(cfg, batch, img if img is not None else int(cfg.img_size), precision)
        for cfg, img, precision, batch in itertools.product(configs, img_sizes, precisions, batch_sizes)
    ]


def failed_record(point: Point, settings: ProfileSettings, exc: BaseException) -> ProfileRecord:
    """The record of a point that raised: what was asked, status ``failed`` and the first line of the error."""
    text = str(exc).strip().splitlines()
    reason = text[0] if isinstance(exc, BenchError) and text else exception_line(exc)
    cfg = point.cfg
    return ProfileRecord(
        status=Status.FAILED,
        reason=reason,
        label=cfg.name,
        variant=Variant(name=cfg.name, label=cfg.name, config=cfg.to_dict()),
        environment=Environment.from_dict({}),  # nothing ran: no machine facts
        settings=ProfileRunSettings.from_dict(asdict(settings)),  # what was asked: nothing resolved
        params=None,
        flops=None,
        memory=None,
        throughput=None,
        compile_s=None,
        wall_s=None,
    )


Profile = Callable[..., ProfileRecord]


def run_sweep(
    sweep: Sequence[Point],
    base: ProfileSettings,
    progress: Callable[[str, float], None] | None = None,
    profile: Profile | None = None,
) -> list[ProfileRecord]:
    """Profile every point with ``base`` settings changed to the point's values.

    With one point its errors are raised as usual; with several a failing point is recorded and the rest
    still run (Ctrl-C still stops the sweep).
    """
    if profile is None:
        from . import profiling

        profile = profiling.profile_variant
    records = []
    counted: dict[tuple[str, int], FlopCounts] = {}  # FLOPs depend on the model and image size only
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
            if record.flops is not None:
                counted[key] = record.flops
            elif base.count_flops and key in counted:  # counted once at an earlier point of this sweep
                record = replace(
                    record, flops=counted[key], settings=replace(record.settings, count_flops=True)
                )
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


# --- writing ---------------------------------------------------------------------------------------------------


def render(records: Sequence[ProfileRecord], fmt: str) -> str:
    """A sweep in a --format: json = the records, jsonl = one record a line, csv = tidy rows, table / md /
    latex = what to read."""
    if fmt == "json":
        return dumps_json([r.to_dict() for r in records])
    if fmt == "jsonl":
        return "".join(record_line(r) for r in records)
    if fmt == "csv":
        return render_csv(records)
    return sweep_table(records).render(fmt)


def render_table(records: Sequence[ProfileRecord], width: int = 160) -> str:
    return sweep_table(records).to_rich_text(width)


def render_records(records: Sequence[ProfileRecord], fmt: str) -> str:
    """One record as its full form unless ``fmt`` is a row format; several as one row per point."""
    if len(records) == 1 and fmt not in APPENDABLE:
        return render_record(records[0], fmt)
    return render(records, fmt)


def _first_line(path: Path) -> str | None:
    text = read_input_text(path, "--append", "write to a new file or drop --append")
    return text.splitlines()[0] if text.strip() else None


def check_appendable(path: str | os.PathLike[str], fmt: str) -> None:
    """Refuse, before measuring, to append to a file of another format, other columns or other records."""
    if fmt not in APPENDABLE:
        raise BenchError(
            f"--append adds rows to a .csv or .jsonl results file, not {fmt}; use -o results.csv"
        )
    path = Path(path)
    if not path.is_file():
        return
    first = _first_line(path)
    if first is None:
        return
    if fmt == "jsonl":
        try:
            schema = json.loads(first).get("schema")
        except (json.JSONDecodeError, AttributeError):
            schema = None
        if schema != PROFILE_SCHEMA:
            raise BenchError(f"{path} does not hold profile records; write to a new file or drop --append")
        return
    columns = next(csv.reader(io.StringIO(first)))
    if columns != list(TIDY_COLUMNS):
        missing = [c for c in TIDY_COLUMNS if c not in columns]
        extra = [c for c in columns if c not in TIDY_COLUMNS]
        parts = [
            f"{what} {', '.join(names[:3])}" + ("..." if len(names) > 3 else "")
            for what, names in (("lacks", missing), ("has", extra))
            if names
        ]
        raise BenchError(
            f"{path} has other columns than profile rows ({', '.join(parts) or 'orders them differently'}); "
            "write to a new file or drop --append"
        )


def appended(path: str | os.PathLike[str], records: Sequence[ProfileRecord], fmt: str) -> str:
    """The existing file's text followed by the new rows (a header only for a new or empty file)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if not old.strip():
        return render(records, fmt)
    if not old.endswith("\n"):
        old += "\n"
    if fmt == "csv":
        return old + render_csv(records).split("\n", 1)[1]
    return old + render(records, fmt)


# --- figure ------------------------------------------------------------------------------------------------------

PLOT_KEYS = ("variant", "precision", "img_size", "path")


def plot(records: Sequence[ProfileRecord], path: str | os.PathLike[str]) -> None:
    """Throughput against batch size, one line per variant (and precision, image size, path when several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.status == Status.OK]
    phases = [p for p in ("infer", "train") if any(p in (r.throughput or {}) for r in ok)]
    if not phases:
        raise BenchError(
            "no point of the sweep measured throughput; nothing to plot (use --mode infer or train)"
        )
    names = PLOT_KEYS
    keys = {id(r): tuple(column_value(k, r) for k in names) for r in ok}
    varying = [i for i, k in enumerate(names) if len({keys[id(r)][i] for r in ok}) > 1 or k == "variant"]
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4.5), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        lines: dict[tuple[object, ...], list[tuple[int, float]]] = {}
        for r in ok:
            run = (r.throughput or {}).get(phase)
            if run is not None:
                key = tuple(keys[id(r)][i] for i in varying)
                lines.setdefault(key, []).append((run.timing.batch_size, run.timing.img_per_s))
        for key, xy in lines.items():
            xy.sort()
            label = ", ".join(
                f"{v}px" if names[i] == "img_size" else str(v) for i, v in zip(varying, key, strict=True)
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
    precisions = ", ".join(dict.fromkeys(str(column_value("precision", r)) for r in ok))
    threads = ", ".join(dict.fromkeys(str(column_value("threads", r)) for r in ok))
    device, name = column_value("device", ok[0]), column_value("device_name", ok[0])
    fig.suptitle(
        f"Throughput vs batch size\n{name or device} ({device}), precision {precisions}, {threads} thread(s)",
        fontsize="medium",
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
