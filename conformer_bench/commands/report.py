"""``conformer-bench report``: compare current results with a baseline and give a CI verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import BenchError
from ..files import atomic_write_text, check_outputs_apart, check_writable, write_json
from .common import handle_errors

app = typer.Typer()

EXAMPLES = """Examples:

conformer-bench report --baseline results/baselines/ci.json --current results/ci

conformer-bench report --baseline results/baselines/ci.json --current runs/ci --markdown report.md --json verdict.json

conformer-bench report --baseline results/ci --current runs/ci --warn-only"""


@app.command("report", epilog=EXAMPLES)
@handle_errors
def report(
    baseline: Annotated[
        Path,
        typer.Option("--baseline", help="Baseline: a baseline file, record, or ablation results folder."),
    ],
    current: Annotated[
        Path,
        typer.Option(
            "--current", help="Current results: a record, ablation results folder or baseline file."
        ),
    ],
    thresholds: Annotated[
        Path | None,
        typer.Option(
            "--thresholds",
            help="TOML merged over the shipped defaults (conformer_bench/report/thresholds.toml).",
        ),
    ] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the Markdown here.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON verdict here.")] = None,
    warn_only: Annotated[
        bool,
        typer.Option("--warn-only", help="Exit 0 even on a blocking regression (still writes everything)."),
    ] = False,
) -> None:
    """Compare CURRENT with BASELINE metric by metric.

    Exit code 0: no blocking regression; 1: blocking regression; 2: bad input or nothing measured.
    """
    from ..report import compare, load_metrics, load_thresholds, render_json, render_markdown
    from ..report.metrics import input_files

    for flag, path in (("--baseline", baseline), ("--current", current)):
        if not path.exists():
            if flag == "--baseline" and path.suffix == ".json":
                make = f"`conformer-bench baseline write --from RESULTS --output {path}`"
            elif path.suffix == ".json":
                make = "`conformer-bench profile ... -o FILE` or `conformer-bench finetune ... -o FILE`"
            else:
                make = f"`conformer-bench ablate experiments/ci.toml --output-dir {path}`"
            raise BenchError(f"{flag} {str(path)!r} does not exist; make it first with {make}")

    check_outputs_apart(
        {"--markdown": markdown, "--json": json_out},
        {
            "--baseline": input_files(baseline),
            "--current": input_files(current),
            "--thresholds": [thresholds] if thresholds is not None else [],
        },
    )
    for out in (markdown, json_out):
        if out is not None:
            check_writable(out)
    rules = load_thresholds(thresholds)
    comparison = compare(load_metrics(baseline), load_metrics(current), rules)
    text = render_markdown(comparison)
    if markdown is not None:
        atomic_write_text(markdown, text)
    if json_out is not None:
        write_json(json_out, render_json(comparison, warn_only))
    typer.echo(text, nl=False)
    code = comparison.exit_code(warn_only)
    if warn_only and comparison.blocking:
        typer.echo(f"warn-only: {len(comparison.blocking)} blocking regression(s) not gated", err=True)
    raise typer.Exit(code)
