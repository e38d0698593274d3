"""``conformer-bench baseline write|update``: keep a baseline on purpose, never as a side effect."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import BenchError
from ..files import check_input_file
from .common import handle_errors

if TYPE_CHECKING:
    from ..records.baseline import BaselineRecord

app = typer.Typer(
    name="baseline",
    help="Write or update the baseline that `report` compares against (always explicit).",
    no_args_is_help=True,
)

WRITE_EXAMPLES = """Examples:

conformer-bench baseline write --from results/ci --output baseline.json

conformer-bench baseline write --from micro.json --output baseline.json --force"""

UPDATE_EXAMPLES = """Examples:

conformer-bench baseline update --from results/ci --baseline baseline.json

conformer-bench baseline update --from results/ci --baseline baseline.json --only 'micro/throughput.*'"""

AllowDirtyOpt = Annotated[
    bool,
    typer.Option("--allow-dirty", help="Accept results measured on uncommitted changes (commit ...+dirty)."),
]
FromOpt = Annotated[
    Path, typer.Option("--from", help="Results: a profile/finetune record or an ablation results folder.")
]


@app.command("write", epilog=WRITE_EXAMPLES)
@handle_errors
def write(
    source: FromOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Baseline JSON to create.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing baseline file.")] = False,
    allow_dirty: AllowDirtyOpt = False,
) -> None:
    """Write a new baseline (environment, per-metric raw samples, unit, direction) from results."""
    from ..report.baseline import write_baseline

    record = write_baseline(source, output, force=force, allow_dirty=allow_dirty)
    _summary(record, f"wrote {output}")


@app.command("update", epilog=UPDATE_EXAMPLES)
@handle_errors
def update(
    source: FromOpt,
    baseline: Annotated[Path, typer.Option("--baseline", "-b", help="Existing baseline JSON to update.")],
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Only metrics matching this glob (repeatable); others are kept."),
    ] = None,
    allow_dirty: AllowDirtyOpt = False,
) -> None:
    """Replace a baseline's metrics with newer results, recording the update in its history."""
    from ..report.baseline import update_baseline

    record, changed = update_baseline(source, baseline, only, allow_dirty=allow_dirty)
    _summary(record, f"updated {baseline}: {len(changed)} metric(s) changed")


REVISION_EXAMPLES = """Examples:

conformer-bench baseline revision results/baselines/ci.json

conformer-bench ab "$(conformer-bench baseline revision results/baselines/ci.json)" HEAD -e experiments/ci.toml"""


@app.command("revision", epilog=REVISION_EXAMPLES)
@handle_errors
def revision(
    baseline: Annotated[
        Path, typer.Argument(help="A baseline JSON written by `baseline write`.", show_default=False)
    ],
) -> None:
    """Print the commit the baseline's results were measured at (what `ab` times a newer revision against)."""
    from ..report.baseline import baseline_revision, read_baseline

    check_input_file(baseline, "baseline", "pass a baseline such as results/baselines/ci.json")
    found = baseline_revision(read_baseline(baseline))
    if found is None:
        raise BenchError(
            f"{baseline} names no revision (its results came from uncommitted code or an unknown checkout); "
            "write it again from results measured at a commit"
        )
    typer.echo(found)


def _summary(record: BaselineRecord, action: str) -> None:
    typer.echo(f"{action} ({len(record.metrics)} metrics, {record.source_kind})")
    for prefix, reason in (record.crashed or {}).items():
        typer.echo(
            f"warning: {prefix or 'record'} crashed in these results ({reason}); it is kept as crashed",
            err=True,
        )
