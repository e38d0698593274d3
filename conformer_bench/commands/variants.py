"""``conformer-bench variants``: presets and toggles with their params and MACs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import FormatOpt, OutputOpt, aliases, handle_errors, parse_format, write_output

SCHEMA = "conformer-bench.variants"
SCHEMA_VERSION = 1
PAPER_SIZE = 224

# (CLI spelling, overrides for options.build_config): every toggle value that differs from the release.
TOGGLE_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("(release)", {}),
    ("--cnn-only", {"cnn_only": True}),
    ("--transformer-only", {"transformer_only": True}),
    ("--coupling down", {"coupling": "down"}),
    ("--coupling up", {"coupling": "up"}),
    ("--no-fcu", {"no_fcu": True}),
    ("--fcu-stages 3", {"fcu_stages": "3"}),
    ("--fcu-stages 2,3", {"fcu_stages": "2,3"}),
    ("--fcu-down maxpool", {"fcu_down": "maxpool"}),
    ("--fcu-down conv", {"fcu_down": "conv"}),
    ("--fcu-up bilinear", {"fcu_up": "bilinear"}),
    ("--fcu-up deconv", {"fcu_up": "deconv"}),
    ("--num-med-block 1", {"num_med_block": 1}),
    ("--pos-embed", {"pos_embed": True}),
    ("--heads conv", {"heads": "conv"}),
    ("--heads trans", {"heads": "trans"}),
)


def preset_size(cfg: Any, img_size: int | None) -> int:
    """224 for the paper's presets, the preset's own size for the test presets, unless given."""
    if img_size is not None:
        return img_size
    return PAPER_SIZE if cfg.from_paper else int(cfg.img_size)


def collect(base: str, img_size: int | None, with_macs: bool) -> dict[str, Any]:
    """Rows for presets and toggles (raw ints; MACs in closed form, conv + linear + matmul, batch 1)."""
    import conformer

    from ..costs import param_counts
    from ..errors import BenchError
    from ..flops import quick_counts
    from ..toggles import build_config

    def counts(cfg: Any, size: int) -> dict[str, Any]:
        if size % cfg.patch_size:
            raise BenchError(
                f"--img-size {size} is not a multiple of {cfg.name}'s patch size {cfg.patch_size}"
            )
        if with_macs:
            return quick_counts(cfg, size)
        return {"params": param_counts(cfg), "macs": None, "img_size": size}

    aliases: dict[str, list[str]] = {}
    for alias in conformer.list_models(include_aliases=True):
        target = conformer.resolve_name(alias)
        if alias != target:
            aliases.setdefault(target, []).append(alias)
    presets = []
    for name in conformer.list_models():
        cfg = conformer.get_config(name)
        c = counts(cfg, preset_size(cfg, img_size))
        presets.append(
            {
                "name": name,
                "aliases": aliases.get(name, []),
                "from_paper": cfg.from_paper,
                "params": c["params"]["total"],
                "macs": c["macs"],
                "img_size": c["img_size"],
                "config": cfg.to_dict(),
            }
        )
    base_cfg = build_config(base)
    size = preset_size(base_cfg, img_size)
    toggles = []
    for option, overrides in TOGGLE_ROWS:
        cfg = build_config(base, **overrides)
        c = counts(cfg, size)
        toggles.append(
            {
                "option": option,
                "params": c["params"]["total"],
                "macs": c["macs"],
                "img_size": size,
                "config": cfg.to_dict(),
            }
        )
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "macs_convention": "multiply-adds of conv + linear + matmul (the paper's column), batch 1, eval; "
        "counted in closed form from the config (equal to torch FlopCounterMode flops / 2)",
        "toggle_base": base_cfg.name,
        "presets": presets,
        "toggles": toggles,
    }


def _gmacs(macs: int | None) -> str:
    return "—" if macs is None else f"{macs / 1e9:.3f}"


def _delta(value: int | None, ref: int | None) -> str:
    if value is None or ref is None or ref == 0:
        return "—"
    return f"{100 * (value - ref) / ref:+.1f} %"


def _tables(data: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    p_head = ["preset", "release name", "from paper", "params", "GMACs", "at"]
    p_rows = [
        [
            p["name"],
            ", ".join(p["aliases"]) or "—",
            "yes" if p["from_paper"] else "no (test preset)",
            f"{p['params']:,}",
            _gmacs(p["macs"]),
            f"{p['img_size']}²",
        ]
        for p in data["presets"]
    ]
    ref = data["toggles"][0]
    t_head = ["toggle", "params", "Δ params", "GMACs", "Δ MACs"]
    t_rows = [
        [
            t["option"],
            f"{t['params']:,}",
            _delta(t["params"], ref["params"]),
            _gmacs(t["macs"]),
            _delta(t["macs"], ref["macs"]),
        ]
        for t in data["toggles"]
    ]
    return p_head, p_rows, t_head, t_rows


def render_variants(data: dict[str, Any], fmt: str) -> str:
    import io

    from ..files import dumps_json
    from ..formatting import render_rows_md

    p_head, p_rows, t_head, t_rows = _tables(data)
    base, size = data["toggle_base"], data["toggles"][0]["img_size"]
    note = f"GMACs: {data['macs_convention']}."
    if fmt == "json":
        return dumps_json(data)
    if fmt == "csv":
        import csv

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["kind", "name", "aliases", "from_paper", "params", "macs", "img_size"])
        for p in data["presets"]:
            writer.writerow(
                [
                    "preset",
                    p["name"],
                    " ".join(p["aliases"]),
                    p["from_paper"],
                    p["params"],
                    p["macs"] or "",
                    p["img_size"],
                ]
            )
        for t in data["toggles"]:
            writer.writerow(
                [f"toggle of {base}", t["option"], "", "", t["params"], t["macs"] or "", t["img_size"]]
            )
        return buf.getvalue()
    if fmt == "md":
        return (
            "### Presets\n\n"
            + render_rows_md(p_head, p_rows)
            + f"\n### Toggles (on {base}, {size}²)\n\n"
            + render_rows_md(t_head, t_rows)
            + f"\n{note}\n"
        )
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=120, color_system=None)
    presets = Table(title="Presets (release names are accepted as aliases)", title_justify="left")
    for i, column in enumerate(p_head):
        presets.add_column(column, justify="right" if i >= 3 else "left")
    for row in p_rows:
        presets.add_row(*row)
    toggles = Table(title=f"Toggles, each applied alone to {base} at {size}²", title_justify="left")
    for i, column in enumerate(t_head):
        toggles.add_column(column, justify="right" if i else "left")
    for row in t_rows:
        toggles.add_row(*row)
    console.print(presets)
    console.print(toggles)
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
    from ..errors import BenchError
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
