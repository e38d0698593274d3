"""``ablate --dry-run``: the cells with params and GMACs, streamed row by row; nothing is built or run.

Counts come in closed form from each cell's config (:mod:`conformer_bench.costs`), so a grid of ten
thousand cells lists in seconds. The cell count is printed before the first row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..records import CellRecord, FinetuneSettings
from .experiment import Cell, Experiment

COLUMNS = (
    "#",
    "Cell",
    "Variant",
    "Changes vs base",
    "Params (M)",
    "GMACs",
    "Profile",
    "Fine-tune",
    "Recorded",
)
NUMERIC = ("#", "Params (M)", "GMACs")
NOTE = (
    "GMACs: conv + linear + matmul multiply-accumulates per image at the cell's img_size, batch 1, eval mode "
    "(closed form from the config, equal to torch FlopCounterMode / 2; the run records fvcore's count too). "
    "Nothing was run."
)


def _state(old: CellRecord | None, cell: Cell, finetune: bool, resume: bool) -> str:
    """What a run would do with the cell, given the record already in the output folder."""
    if old is None:
        return "new"
    if old.config_hash == cell.config_hash(finetune):
        if old.ok:
            return "ok, unchanged" + (" (skipped with --resume)" if resume else "")
        return f"{old.status}, unchanged" + (" (reruns with --resume)" if resume else "")
    return f"{old.status}, settings changed (reruns)"


def finetune_budget(ft: FinetuneSettings) -> str:
    """How long a fine-tune runs, as the plan shows it: its steps, else its epochs."""
    return f"{ft.steps} steps" if ft.steps else f"{ft.epochs if ft.epochs is not None else 'default'} epochs"


def _text_columns(
    exp: Experiment, cell: Cell, finetune: bool, resume: bool, existing: dict[str, CellRecord]
) -> dict[str, str]:
    """Every column but the counts (cheap: no config is counted here)."""
    prof = cell.profile_settings()
    img = prof.img_size
    ft_text = "—"
    if finetune and cell.finetune is not None:
        ft = FinetuneSettings(**cell.finetune)
        ft_text = f"{ft.dataset}, {finetune_budget(ft)}, seeds {list(cell.seeds)}"
    return {
        "#": str(cell.index),
        "Cell": cell.label + (" (base)" if cell.label == exp.base_label else ""),
        "Variant": cell.config.name,
        "Changes vs base": " ".join(f"{k}={v}" for k, v in cell.changes.items()) or "—",
        "Profile": f"{prof.mode}, {img} px, batch {prof.batch_size or 'auto'}, {prof.device}",
        "Fine-tune": ft_text,
        "Recorded": _state(existing.get(cell.label), cell, finetune, resume),
    }


def _count_columns(cell: Cell) -> dict[str, str]:
    from ..flops import costs_of

    costs = costs_of(cell.config, cell.profile_settings().img_size)
    return {"Params (M)": f"{costs.params.total / 1e6:.3f}", "GMACs": f"{costs.paper_macs / 1e9:.4g}"}


def dry_run_lines(
    exp: Experiment, cells: list[Cell], finetune: bool, resume: bool, total: int
) -> Iterator[str]:
    """The listing, one line at a time: the count first, then a header and one row per cell, then a note."""
    from .store import ResultStore

    shown = f"{len(cells)} cells" if len(cells) == total else f"first {len(cells)} of {total} cells"
    yield f"{exp.name} (dry run, {shown}, output {exp.output_dir})"
    existing = ResultStore(exp.output_dir).latest() if exp.output_dir.is_dir() else {}
    texts = [_text_columns(exp, cell, finetune, resume, existing) for cell in cells]
    widths = {c: max([len(c)] + [len(t[c]) for t in texts]) for c in COLUMNS if c not in NUMERIC[1:]}
    widths.update({"Params (M)": 10, "GMACs": 8})

    def line(values: dict[str, str]) -> str:
        return "  ".join(
            values[c].rjust(widths[c]) if c in NUMERIC else values[c].ljust(widths[c]) for c in COLUMNS
        ).rstrip()

    yield line({c: c for c in COLUMNS})
    yield line({c: "-" * widths[c] for c in COLUMNS})
    for cell, text in zip(cells, texts, strict=True):
        yield line({**text, **_count_columns(cell)})
    yield NOTE


def print_dry_run(
    exp: Experiment,
    cells: list[Cell],
    finetune: bool,
    resume: bool,
    total: int,
    echo: Callable[[str], Any] = print,
) -> None:
    """Print :func:`dry_run_lines` as they come (``echo``: one line at a time, e.g. ``typer.echo``)."""
    for text in dry_run_lines(exp, cells, finetune, resume, total):
        echo(text)
