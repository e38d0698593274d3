"""``conformer-bench ab``: two revisions of the project timed side by side on this machine, gated."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..ab import CLOCKS, SCHEDULES
from .common import MEASURE, OUTPUT, given, handle_errors

if TYPE_CHECKING:
    from ..ab.run import ABSettings
    from ..ab.session import ABRequest
    from ..records import ABRecord, PairedCell

app = typer.Typer()

# Options that `history backfill` shares (declared once).
RepoOpt = Annotated[Path, typer.Option("--repo", help="The project's git checkout.")]
OnlyOpt = Annotated[
    str | None, typer.Option("--only", help="Comma-separated cell labels to time (default: all).")
]
PhasesOpt = Annotated[
    str, typer.Option("--phases", help="infer, train or infer,train.", rich_help_panel=MEASURE)
]
RoundsOpt = Annotated[
    int | None,
    typer.Option(
        "--rounds",
        min=10,
        help="Rounds per cell (instead of --budget-s; at least 10).",
        rich_help_panel=MEASURE,
    ),
]
EpochsOpt = Annotated[
    int,
    typer.Option(
        "--epochs",
        min=1,
        help="Builds per cell and side, each at another memory layout.",
        rich_help_panel=MEASURE,
    ),
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        min=0,
        max=2**32 - 1,
        help="Seed of the round order and inputs.",
        rich_help_panel=MEASURE,
    ),
]
LogsOpt = Annotated[
    Path | None,
    typer.Option("--logs", help="Keep the workers' output in this folder.", rich_help_panel=OUTPUT),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.", rich_help_panel=OUTPUT)]

EXAMPLES = """Examples:

conformer-bench ab main WORKTREE --experiment experiments/ci.toml

conformer-bench ab origin/main HEAD -e experiments/ci.toml --only micro,no-fcu --markdown ab.md --json ab.json

conformer-bench ab v0.1.0 HEAD -e experiments/ci.toml --instructions --output ab-record.json

conformer-bench ab --from ab-record.json --thresholds experiments/ci_thresholds.toml"""


# Choices from the one place that defines them.
Schedule = StrEnum("Schedule", {name.replace("-", "_"): name for name in SCHEDULES})  # type: ignore[misc]
Clock = StrEnum("Clock", {name: name for name in CLOCKS})  # type: ignore[misc]


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
    repo: RepoOpt = Path("."),
    only: OnlyOpt = None,
    phases: PhasesOpt = "infer",
    budget_s: Annotated[
        float,
        typer.Option(
            "--budget-s",
            help="Timed seconds for the whole run, shared out over the cells.",
            rich_help_panel=MEASURE,
        ),
    ] = 300.0,
    rounds: RoundsOpt = None,
    schedule: Annotated[
        Schedule,
        typer.Option(
            "--schedule",
            help="same-core: turns alternate on one core; split-cores: alternate, a core each; duet: both at "
            "once, a core each.",
            rich_help_panel=MEASURE,
        ),
    ] = Schedule("same-core"),
    clock: Annotated[
        Clock,
        typer.Option(
            "--clock",
            help="What gates: auto (the workers' CPU time for one-thread cells, the wall clock otherwise), "
            "cpu or wall; both are recorded. With --from: judge the saved record on this clock.",
            rich_help_panel=MEASURE,
        ),
    ] = Clock("auto"),
    instructions: Annotated[
        bool,
        typer.Option(
            "--instructions",
            help="Also count each cell's inference instructions under valgrind's callgrind (minutes).",
            rich_help_panel=MEASURE,
        ),
    ] = False,
    epochs: EpochsOpt = 4,
    seed: SeedOpt = 0,
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
    logs: LogsOpt = None,
    quiet: QuietOpt = False,
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
    from ..ablate.launch import sigterm_as_exit
    from ..files import atomic_write_text, write_json
    from ..report import load_thresholds

    _check_outputs(
        {"--markdown": markdown, "--json": json_out, "--output": output},
        {"--from": from_record, "--thresholds": thresholds},
    )
    rules = load_thresholds(thresholds)  # bad thresholds stop the run before it measures
    if from_record is not None:
        record = _saved_record(from_record, base, head)
        judged_clock = clock.value if given("clock") else None
    else:
        settings = _settings(phases, schedule, clock, budget_s, rounds, seed, epochs, instructions)
        request = _request(base, head, experiment, repo, only, logs)
        with sigterm_as_exit():
            record = _measure(request, settings, output, quiet)
        judged_clock = None
    result = compare_ab(record, rules, judged_clock)
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


MEASURING_OPTIONS = (
    "experiment",
    "repo",
    "only",
    "phases",
    "budget_s",
    "rounds",
    "schedule",
    "epochs",
    "instructions",
    "seed",
    "logs",
)


def _check_outputs(outputs: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Every output writable, none the same file as an input or as another output."""
    from ..files import check_outputs_apart, check_writable

    check_outputs_apart(dict(outputs), {flag: [path] for flag, path in inputs.items() if path is not None})
    for path in outputs.values():
        if path is not None:
            check_writable(path)


def _saved_record(path: Path, base: str | None, head: str | None) -> ABRecord:
    """The record of an earlier run, read and checked (``--from``); measuring options are refused."""
    from ..errors import BenchError
    from ..files import read_json
    from ..records import ABRecord

    if base is not None or head is not None:
        raise BenchError("--from judges a saved record: give no BASE or HEAD with it")
    extra = [f"--{name.replace('_', '-')}" for name in MEASURING_OPTIONS if given(name)]
    if extra:
        raise BenchError(
            f"--from measures nothing: drop {', '.join(extra)} (only --clock and the outputs apply)"
        )
    if not path.is_file():
        raise BenchError(f"--from {str(path)!r} is not a file; pass the --output file of an earlier ab run")
    try:
        return ABRecord.from_dict(read_json(path))
    except BenchError as exc:
        raise BenchError(f"--from {path}: {exc}") from None


def _settings(
    phases: str, schedule: Schedule, clock: Clock, budget_s: float, rounds: int | None, seed: int, epochs: int,
    instructions: bool,
) -> ABSettings:  # fmt: skip
    from ..ab.run import ABSettings
    from ..errors import BenchError
    from ..lists import comma_items

    if not (0 < budget_s < float("inf")):
        raise BenchError(f"--budget-s must be a positive number of seconds, got {budget_s}")
    return ABSettings(
        phases=tuple(comma_items(phases, "--phases")),
        schedule=schedule.value,
        clock=clock.value,
        budget_s=budget_s,
        rounds=rounds,
        seed=seed,
        epochs=epochs,
        instructions=instructions,
    )


def _request(
    base: str | None,
    head: str | None,
    experiment: Path | None,
    repo: Path,
    only: str | None,
    logs: Path | None,
) -> ABRequest:
    from ..ab.session import ABRequest
    from ..errors import BenchError

    if base is None or head is None or experiment is None:
        raise BenchError(
            "give BASE, HEAD and --experiment FILE, e.g. `conformer-bench ab main WORKTREE -e experiments/ci.toml`"
        )
    if logs is not None:
        if logs.exists() and not logs.is_dir():
            raise BenchError(f"--logs {str(logs)!r} is a file; give a folder for the workers' output")
        try:
            logs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(
                f"cannot create --logs {str(logs)!r}: {exc.strerror}; choose another folder"
            ) from None
    return ABRequest(base, head, experiment, repo=repo, only=only_labels(only), logs=logs)


def only_labels(only: str | None) -> tuple[str, ...]:
    """The cell labels of ``--only`` (none given: every cell); an empty item is a typo, refused."""
    from ..lists import comma_items

    return tuple(comma_items(only or "", "--only"))


def _measure(request: ABRequest, settings: ABSettings, output: Path | None, quiet: bool) -> ABRecord:
    """Run the A/B; the record is written to ``output`` even when the run stops part-way."""
    from ..ab.session import ABAborted, run_ab
    from ..files import write_json

    say = None if quiet else (lambda line: typer.echo(line, err=True))
    try:
        record = run_ab(
            request, settings, progress=say, on_cell=None if quiet else _cell_line(settings.clock)
        )
    except ABAborted as exc:
        if output is not None and exc.record.cells:
            write_json(output, exc.record.to_dict())
            exc.args = (f"{exc}; the cells timed so far are in {output}",)
        raise
    if output is not None:
        write_json(output, record.to_dict())
    return record


def _cell_line(clock: str) -> Callable[[PairedCell], None]:
    """One line per finished cell: the head's throughput over the base's (median of the rounds)."""

    def say(cell: PairedCell) -> None:
        import statistics

        from ..ab.compare import cell_clock, turn_times

        if not cell.rounds:
            typer.echo(f"    {cell.label}/{cell.phase}: {cell.status.value}: {cell.reason}", err=True)
            return
        base, head, _ = turn_times(cell, clock)
        ratio = statistics.median(b / h for b, h in zip(base, head, strict=True))
        typer.echo(
            f"    {cell.label}/{cell.phase}: head/base throughput ×{ratio:.3f} "
            f"({len(cell.rounds)} rounds of {cell.steps_per_turn} step(s), {cell_clock(clock, cell)} time)",
            err=True,
        )

    return say
