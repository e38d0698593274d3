"""``conformer-bench ab``: two revisions of the project timed side by side on this machine, gated."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import MEASURE, OUTPUT, handle_errors

if TYPE_CHECKING:
    from ..records import PairedCell

app = typer.Typer()

EXAMPLES = """Examples:

conformer-bench ab main WORKTREE --experiment experiments/ci.toml

conformer-bench ab origin/main HEAD -e experiments/ci.toml --only micro,no-fcu --markdown ab.md --json ab.json

conformer-bench ab v0.1.0 HEAD -e experiments/ci.toml --instructions --output ab-record.json

conformer-bench ab --from ab-record.json --thresholds experiments/ci_thresholds.toml"""


class Schedule(StrEnum):
    same_core = "same-core"
    split_cores = "split-cores"
    duet = "duet"


class Clock(StrEnum):
    cpu = "cpu"
    wall = "wall"


@app.command("ab", epilog=EXAMPLES)
@handle_errors
def ab(
    base: Annotated[
        str | None,
        typer.Argument(help="The revision to compare against (a commit, branch or tag).", show_default=False),
    ] = None,
    head: Annotated[
        str | None,
        typer.Argument(
            help="The revision measured against BASE; WORKTREE for uncommitted changes.", show_default=False
        ),
    ] = None,
    experiment: Annotated[
        Path | None,
        typer.Option(
            "--experiment", "-e", help="Experiment file whose cells are timed (read as HEAD has it)."
        ),
    ] = None,
    repo: Annotated[Path, typer.Option("--repo", help="The project's git checkout.")] = Path("."),
    only: Annotated[
        str | None, typer.Option("--only", help="Comma-separated cell labels to time (default: all).")
    ] = None,
    phases: Annotated[
        str, typer.Option("--phases", help="infer, train or infer,train.", rich_help_panel=MEASURE)
    ] = "infer",
    budget_s: Annotated[
        float,
        typer.Option(
            "--budget-s",
            help="Timed seconds for the whole run, shared out over the cells.",
            rich_help_panel=MEASURE,
        ),
    ] = 300.0,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds", min=2, help="Rounds per cell (instead of --budget-s).", rich_help_panel=MEASURE
        ),
    ] = None,
    schedule: Annotated[
        Schedule,
        typer.Option(
            "--schedule",
            help="same-core: turns alternate on one core; split-cores: alternate, a core each; duet: both at "
            "once, a core each.",
            rich_help_panel=MEASURE,
        ),
    ] = Schedule.same_core,
    clock: Annotated[
        Clock,
        typer.Option(
            "--clock",
            help="What gates: the workers' CPU time or the wall clock (both are recorded).",
            rich_help_panel=MEASURE,
        ),
    ] = Clock.cpu,
    instructions: Annotated[
        bool,
        typer.Option(
            "--instructions",
            help="Also count each cell's inference instructions under valgrind's callgrind (minutes).",
            rich_help_panel=MEASURE,
        ),
    ] = False,
    epochs: Annotated[
        int,
        typer.Option(
            "--epochs",
            min=1,
            help="Builds per cell and side, each at another memory layout.",
            rich_help_panel=MEASURE,
        ),
    ] = 4,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            min=0,
            max=2**32 - 1,
            help="Seed of the round order and inputs.",
            rich_help_panel=MEASURE,
        ),
    ] = 0,
    from_record: Annotated[
        Path | None,
        typer.Option(
            "--from", help="Judge a saved A/B record (--output of an earlier run); measures nothing."
        ),
    ] = None,
    thresholds: Annotated[
        Path | None,
        typer.Option("--thresholds", help="TOML merged over the shipped defaults (its paired.* rules gate)."),
    ] = None,
    markdown: Annotated[
        Path | None,
        typer.Option("--markdown", help="Write the Markdown report here.", rich_help_panel=OUTPUT),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the JSON verdict here.", rich_help_panel=OUTPUT)
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the A/B record (every round) here.", rich_help_panel=OUTPUT
        ),
    ] = None,
    logs: Annotated[
        Path | None,
        typer.Option("--logs", help="Keep the workers' output in this folder.", rich_help_panel=OUTPUT),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress lines.", rich_help_panel=OUTPUT)
    ] = False,
    warn_only: Annotated[
        bool,
        typer.Option("--warn-only", help="Exit 0 even on a blocking regression (still writes everything)."),
    ] = False,
) -> None:
    """Time BASE and HEAD side by side on this machine and gate on the difference.

    Each revision runs in a long-lived worker process with its own code; the two take turns on the same
    core, round after round, so that the machine's noise hits both alike. Exit code 0: no blocking
    regression; 1: a blocking regression; 2: bad input.
    """
    from ..ab.compare import compare_ab
    from ..ab.render import render_json, render_markdown
    from ..ab.run import ABSettings
    from ..ab.session import ABRequest, run_ab
    from ..errors import BenchError
    from ..files import atomic_write_text, check_writable, read_json, write_json
    from ..records import ABRecord
    from ..report import load_thresholds

    outputs = [p for p in (markdown, json_out, output) if p is not None]
    for path in outputs:
        check_writable(path)
    rules = load_thresholds(thresholds)  # bad thresholds stop the run before it measures
    if from_record is not None:
        if base is not None or head is not None:
            raise BenchError("--from judges a saved record: give no BASE or HEAD with it")
        if not from_record.is_file():
            raise BenchError(
                f"--from {str(from_record)!r} does not exist; pass the --output file of an earlier ab run"
            )
        record = ABRecord.from_dict(read_json(from_record))
    else:
        if base is None or head is None or experiment is None:
            raise BenchError(
                "give BASE, HEAD and --experiment FILE, e.g. `conformer-bench ab main WORKTREE -e experiments/ci.toml`"
            )
        settings = ABSettings(
            phases=tuple(p.strip() for p in phases.split(",") if p.strip()),
            schedule=schedule.value,
            clock=clock.value,
            budget_s=budget_s,
            rounds=rounds,
            seed=seed,
            epochs=epochs,
            instructions=instructions,
        )
        if budget_s <= 0 or budget_s != budget_s or budget_s == float("inf"):
            raise BenchError(f"--budget-s must be a positive number of seconds, got {budget_s}")
        request = ABRequest(
            base,
            head,
            experiment,
            repo=repo,
            only=tuple(label.strip() for label in (only or "").split(",") if label.strip()),
            logs=logs,
        )
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
        say = None if quiet else (lambda line: typer.echo(line, err=True))
        record = run_ab(request, settings, progress=say, on_cell=None if quiet else _cell_line(clock.value))
        if output is not None:
            write_json(output, record.to_dict())
    result = compare_ab(record, rules)
    text = render_markdown(result)
    if markdown is not None:
        atomic_write_text(markdown, text)
    if json_out is not None:
        write_json(json_out, render_json(result, warn_only))
    typer.echo(text, nl=False)
    code = result.exit_code(warn_only)
    if warn_only and result.comparison.blocking:
        typer.echo(f"warn-only: {len(result.comparison.blocking)} blocking regression(s) not gated", err=True)
    raise typer.Exit(code)


def _cell_line(clock: str) -> Callable[[PairedCell], None]:
    """One line per finished cell: the head's throughput over the base's (median of the rounds)."""

    def say(cell: PairedCell) -> None:
        import statistics

        from ..ab.compare import turn_times

        if not cell.rounds:
            typer.echo(f"    {cell.label}/{cell.phase}: {cell.status.value}: {cell.reason}", err=True)
            return
        base, head = turn_times(cell, clock)
        ratio = statistics.median(b / h for b, h in zip(base, head, strict=True))
        typer.echo(
            f"    {cell.label}/{cell.phase}: head/base throughput ×{ratio:.3f} "
            f"({len(cell.rounds)} rounds of {cell.steps_per_turn} step(s), {clock} time)",
            err=True,
        )

    return say
