"""``conformer-bench table``: re-render an experiment's tables and figures from its records, running nothing."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import handle_errors

if TYPE_CHECKING:
    from rich.table import Table as RichTable

    from ..ablate.store import ResultStore
    from ..ablate.summary import CellRow
    from ..records import CellRecord, ExperimentRecord

app = typer.Typer()

EXAMPLES = """Examples:

conformer-bench table results/ci

conformer-bench table results/ci --format latex

conformer-bench table results/ci -f csv --base micro > summary.csv

conformer-bench table sweep.jsonl                 # a profile sweep's points, failed ones included"""


@app.command("table", epilog=EXAMPLES)
@handle_errors
def table(
    results_dir: Annotated[
        Path,
        typer.Argument(
            help="Results folder of `conformer-bench ablate` (holds cells.jsonl), or a file of profile "
            "records (a sweep's .jsonl, or one .json).",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="md (default), table, json, jsonl, csv or latex on stdout (any case); latex also writes "
            "summary.tex.",
        ),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", help="Cell to take deltas against (default: the experiment's base)."),
    ] = None,
) -> None:
    """Rewrite summary.csv, summary.md (summary.tex with --format latex) and figures/ from cells.jsonl; or
    print the table of a file of profile records, writing nothing."""
    if results_dir.is_file():
        return _file_table(results_dir, fmt)
    from ..ablate.store import ResultStore
    from ..ablate.summary import build_rows, describe, ordered, write_summary
    from ..errors import BenchError
    from ..files import atomic_write_text
    from ..formatting import FORMATS, parse_format

    kind = parse_format(fmt, default="md", choices=(*FORMATS, "latex"))

    if not results_dir.is_dir():
        raise BenchError(
            f"{str(results_dir)!r} is not a folder; pass the results folder of an ablation (e.g. results/ci)"
        )
    store = ResultStore(results_dir)
    records, meta = _current_records(store, results_dir)
    order, base_label = _order_and_base(records, meta, base)
    name = (meta.name if meta is not None else None) or results_dir.name
    description = meta.description if meta is not None else None
    title = f"{name}: {description}" if description else name
    rows = ordered(records, order)
    if not _writable(results_dir):
        typer.echo(
            f"note: {results_dir} is not writable: printing the tables without rewriting summaries or figures",
            err=True,
        )
        typer.echo(_summary_text(kind, build_rows(rows, base_label), describe(rows), title), nl=False)
        return
    with store.locked():  # an ablate starting on this folder clears temporary files under the same lock
        cells, notes, paths = write_summary(results_dir, rows, base_label, title)
        text = _summary_text(kind, cells, notes, title)
        if kind == "latex":
            paths["latex"] = atomic_write_text(results_dir / "summary.tex", text)
    typer.echo(text, nl=False)
    for kind, path in paths.items():
        typer.echo(f"wrote {kind}: {path}", err=True)


def _writable(folder: Path) -> bool:
    """Whether the summaries can be rewritten in ``folder`` (tried for real: root passes os.access)."""
    from ..errors import BenchError
    from ..files import check_writable

    try:
        check_writable(folder / "summary.md")
    except BenchError:
        return False
    return True


def _current_records(
    store: ResultStore, results_dir: Path
) -> tuple[dict[str, CellRecord], ExperimentRecord | None]:
    """The newest record of each cell, stale ones left out (with a note), and the experiment's metadata."""
    from ..ablate.store import CELLS_FILE
    from ..errors import BenchError

    records = store.latest()  # no lock needed to read: records are appended whole, compaction renames
    meta = store.experiment()
    stale = store.stale(records)
    if not records:
        raise BenchError(
            f"{results_dir} holds no cell records ({CELLS_FILE}); run `conformer-bench ablate EXPERIMENT` first"
        )
    if stale:
        typer.echo(
            f"note: left out {len(stale)} stale record(s): "
            + "; ".join(f"{label} ({why})" for label, why in stale.items()),
            err=True,
        )
        records = {k: v for k, v in records.items() if k not in stale}
        if not records:
            raise BenchError(
                f"every record in {results_dir} is stale; rerun `conformer-bench ablate` on its experiment"
            )
    return records, meta


def _order_and_base(
    records: dict[str, CellRecord], meta: ExperimentRecord | None, base: str | None
) -> tuple[list[str], str]:
    """The cells in the experiment's order, and the one deltas are taken against."""
    from ..errors import BenchError

    labels = (meta.labels if meta is not None else None) or []
    order = [lbl for lbl in labels if lbl in records] or list(records)
    extra = [lbl for lbl in records if lbl not in order]
    if extra and meta is not None:
        typer.echo(
            f"note: left out {len(extra)} record(s) of cells no longer in the experiment: {', '.join(extra)}",
            err=True,
        )
    base_label = base or (meta.base_label if meta is not None else None) or order[0]
    if base is None and base_label not in records:
        typer.echo(
            f"note: the base cell {base_label!r} has no current record; deltas are against {order[0]!r}",
            err=True,
        )
        base_label = order[0]
    if base_label not in records:
        raise BenchError(f"--base {base_label!r} is not a recorded cell; choose one of: {', '.join(order)}")
    return order, base_label


def _summary_text(kind: str, rows: list[CellRow], notes: list[str], title: str) -> str:
    from ..ablate.summary import rich_tables, summary_table, to_latex, to_markdown

    if kind in ("csv", "json", "jsonl"):
        return summary_table(rows).render(kind)
    if kind == "table":
        return _rich_text(rich_tables(rows, notes, title))
    if kind == "latex":
        return to_latex(rows, notes, title)
    return to_markdown(rows, notes, title)


def _rich_text(tables: list[RichTable]) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160, color_system=None, force_terminal=False)
    for tbl in tables:
        console.print(tbl)
    return str(console.file.getvalue())  # type: ignore[attr-defined]


# --- a file of profile records -------------------------------------------------------------------------------


def _file_table(path: Path, fmt: str | None) -> None:
    """A profile sweep's ``.jsonl`` (or one profile's ``.json``) as the sweep's table: one row per point,
    failed points included."""
    from .. import sweep
    from ..errors import BenchError
    from ..formatting import PROFILE_FORMATS, parse_format
    from ..readers import records_in_file
    from ..records import ProfileRecord

    kind = parse_format(fmt, default="md", choices=PROFILE_FORMATS)
    records = records_in_file(path)
    profiles = [r for r in records if isinstance(r, ProfileRecord)]
    if not profiles or len(profiles) != len(records):
        raise BenchError(
            f"{path} does not hold profile records; pass the file of `conformer-bench profile -o FILE.jsonl` "
            "or the results folder of an ablation"
        )
    typer.echo(sweep.render(profiles, kind), nl=False)
