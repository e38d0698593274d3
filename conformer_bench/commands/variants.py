"""``conformer-bench variants``: presets and toggles with their params and MACs."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conformer.config import BRANCHES, COUPLINGS, FCU_DOWNS, FCU_UPS, HEADS, TOGGLE_DEFAULTS

from ..errors import BenchError
from .common import FormatOpt, OutputOpt, aliases, handle_errors, parse_format, write_output

if TYPE_CHECKING:
    from conformer.config import ConformerConfig

    from ..records.variants import PresetRow, ToggleRow, VariantsRecord
    from ..tables import Column, Table

PAPER_SIZE = 224
MACS_CONVENTION = (
    "multiply-adds of conv + linear + matmul (the paper's column), batch 1, eval; counted in closed form from "
    "the config (equal to torch FlopCounterMode flops / 2)"
)
# Toggle values whose command line has a spelling of its own.
SHORTHANDS = {("branches", "cnn"): "--cnn-only", ("branches", "transformer"): "--transformer-only"}
SHORTHANDS[("coupling", "none")] = "--no-fcu"


def _choices(name: str, values: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """A row for every value of a toggle but the release's (the config's Literal: a new value is listed)."""
    flag = "--" + name.replace("_", "-")
    return [
        (SHORTHANDS.get((name, v), f"{flag} {v}"), {name: v}) for v in values if v != TOGGLE_DEFAULTS[name]
    ]


# (CLI spelling, overrides for toggles.build_config): every toggle value that differs from the release.
TOGGLE_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("(release)", {}),
    *_choices("branches", BRANCHES),
    *_choices("coupling", COUPLINGS),
    ("--fcu-stages 3", {"fcu_stages": "3"}),
    ("--fcu-stages 2,3", {"fcu_stages": "2,3"}),
    *_choices("fcu_down", FCU_DOWNS),
    *_choices("fcu_up", FCU_UPS),
    ("--num-med-block 1", {"num_med_block": 1}),
    ("--pos-embed", {"pos_embed": True}),
    *_choices("heads", HEADS),
)


def preset_size(cfg: ConformerConfig, img_size: int | None) -> int:
    """224 for the paper's presets, the preset's own size for the test presets, unless given."""
    if img_size is not None:
        return img_size
    return PAPER_SIZE if cfg.from_paper else int(cfg.img_size)


def collect(base: str, img_size: int | None, with_macs: bool) -> VariantsRecord:
    """Every preset and toggle (params and MACs in closed form, conv + linear + matmul, batch 1)."""
    import conformer

    from ..flops import costs_of
    from ..records.variants import PresetRow, ToggleRow, VariantsRecord
    from ..toggles import build_config

    def counts(cfg: ConformerConfig, size: int) -> tuple[int, int | None]:
        if size % cfg.patch_size:
            raise BenchError(
                f"--img-size {size} is not a multiple of {cfg.name}'s patch size {cfg.patch_size}"
            )
        costs = costs_of(cfg, size)
        return costs.params.total, costs.paper_macs if with_macs else None

    aliases: dict[str, list[str]] = {}
    for alias in conformer.list_models(include_aliases=True):
        target = conformer.resolve_name(alias)
        if alias != target:
            aliases.setdefault(target, []).append(alias)
    presets = []
    for name in conformer.list_models():
        cfg = conformer.get_config(name)
        size = preset_size(cfg, img_size)
        params, macs = counts(cfg, size)
        presets.append(
            PresetRow(name, aliases.get(name, []), cfg.from_paper, params, macs, size, cfg.to_dict())
        )
    base_cfg = build_config(base)
    size = preset_size(base_cfg, img_size)
    toggles = []
    for option, overrides in TOGGLE_ROWS:
        cfg = build_config(base, **overrides)
        params, macs = counts(cfg, size)
        toggles.append(ToggleRow(option, params, macs, size, cfg.to_dict()))
    return VariantsRecord(MACS_CONVENTION, base_cfg.name, presets, toggles)


def _gmacs(macs: int | None) -> str:
    return "—" if macs is None else f"{macs / 1e9:.3f}"


def _delta(value: int | None, ref: int | None) -> str:
    if value is None or ref is None or ref == 0:
        return "—"
    return f"{100 * (value - ref) / ref:+.1f} %"


def _preset_columns() -> tuple[Column[PresetRow], ...]:
    from ..tables import Column

    return (
        Column("preset", lambda p: p.name),
        Column("release name", lambda p: ", ".join(p.aliases) or "—"),
        Column("from paper", lambda p: "yes" if p.from_paper else "no (test preset)"),
        Column("params", lambda p: f"{p.params:,}"),
        Column("GMACs", lambda p: _gmacs(p.macs)),
        Column("at", lambda p: f"{p.img_size}²"),
    )


def _toggle_columns(ref: ToggleRow) -> tuple[Column[ToggleRow], ...]:
    from ..tables import Column

    return (
        Column("toggle", lambda t: t.option),
        Column("params", lambda t: f"{t.params:,}"),
        Column("Δ params", lambda t: _delta(t.params, ref.params)),
        Column("GMACs", lambda t: _gmacs(t.macs)),
        Column("Δ MACs", lambda t: _delta(t.macs, ref.macs)),
    )


# A CSV row: its kind, then the preset's fields or the toggle's.
Listed = tuple[str, "PresetRow | None", "ToggleRow | None"]


def _csv_table(record: VariantsRecord) -> Table[Listed]:
    from ..tables import Column, Table

    def either(r: Listed) -> PresetRow | ToggleRow:
        row = r[1] or r[2]
        assert row is not None
        return row

    rows: list[Listed] = [("preset", p, None) for p in record.presets]
    rows += [(f"toggle of {record.toggle_base}", None, t) for t in record.toggles]
    columns: list[Column[Listed]] = [
        Column("kind", lambda r: r[0]),
        Column("name", lambda r: r[1].name if r[1] else r[2].option if r[2] else None),
        Column("aliases", lambda r: " ".join(r[1].aliases) if r[1] else ""),
        Column("from_paper", lambda r: r[1].from_paper if r[1] else ""),
        Column("params", lambda r: either(r).params),
        Column("macs", lambda r: either(r).macs),
        Column("img_size", lambda r: either(r).img_size),
    ]
    return Table(columns, rows)


def _rich(table: Table[Any], title: str, right_from: int) -> Any:
    from rich.table import Table as RichTable

    out = RichTable(title=title, title_justify="left")
    for i, column in enumerate(table.columns):
        out.add_column(column.header, justify="right" if i >= right_from else "left")
    for row in table.texts():
        out.add_row(*row)
    return out


def render_variants(record: VariantsRecord, fmt: str) -> str:
    from ..files import dumps_json
    from ..tables import Table

    presets = Table(_preset_columns(), record.presets)
    toggles = Table(_toggle_columns(record.toggles[0]), record.toggles)
    base, size = record.toggle_base, record.toggles[0].img_size
    note = f"GMACs: {record.macs_convention}."
    if fmt == "json":
        return dumps_json(record.to_dict())
    if fmt == "csv":
        return _csv_table(record).to_csv()
    if fmt == "md":
        return (
            "### Presets\n\n"
            + presets.to_markdown()
            + f"\n### Toggles (on {base}, {size}²)\n\n"
            + toggles.to_markdown()
            + f"\n{note}\n"
        )
    from rich.console import Console

    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(_rich(presets, "Presets (release names are accepted as aliases)", 3))
    console.print(_rich(toggles, f"Toggles, each applied alone to {base} at {size}²", 1))
    console.print(note)
    return str(console.file.getvalue())  # type: ignore[attr-defined]


app = typer.Typer()

EXAMPLES = """Examples:

conformer-bench variants

conformer-bench variants --variant small --img-size 384 -f csv -o variants.csv

conformer-bench variants --no-macs -f json"""


@app.command("variants", epilog=EXAMPLES)
@handle_errors
@aliases()
def variants(
    variant: Annotated[
        str, typer.Option("--variant", "-v", help="Preset the toggles are applied to.")
    ] = "tiny",
    img_size: Annotated[
        int | None,
        typer.Option(
            "--img-size",
            help="Count MACs at this size (default: 224 for paper presets, else the preset's own).",
        ),
    ] = None,
    macs: Annotated[bool, typer.Option("--macs/--no-macs", help="Count MACs (closed form, instant).")] = True,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
) -> None:
    """List presets and toggles with their parameter counts and MACs."""
    from ..files import check_writable
    from ..formatting import csv_to_jsonl

    stdout_format = parse_format(fmt)
    if img_size is not None and img_size <= 0:
        raise BenchError(f"--img-size must be a positive multiple of the patch size, got {img_size}")
    if output is not None:
        check_writable(output)
    data = collect(variant, img_size, macs)

    def render(kind: str) -> str:
        if kind == "jsonl":
            return csv_to_jsonl(render_variants(data, "csv"))
        return render_variants(data, kind)

    typer.echo(render(stdout_format), nl=False)
    write_output(output, render, fmt)
