"""``conformer-bench history``: keep every run in one database, backfill a range of revisions, find the steps
in each series and publish them as a static site."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import MEASURE, OUTPUT, handle_errors

if TYPE_CHECKING:
    from ..history.store import HistoryStore

app = typer.Typer()
history = typer.Typer(
    help="A history of runs across revisions: add records, backfill a range of revisions, list the change "
    "points of each series, publish a static dashboard.",
    no_args_is_help=True,
)
app.add_typer(history, name="history")

DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="The history database (default: $CONFORMER_BENCH_HISTORY, else results/history.db).",
        show_default=False,
    ),
]
RepoOpt = Annotated[Path, typer.Option("--repo", help="The project's git checkout.")]

ADD_EXAMPLES = """Examples:

conformer-bench profile -v micro --img-size 32 --mode infer -o p.json && conformer-bench history add p.json

conformer-bench history add runs/ci runs/ci/report.json runs/ab/record.json --db history.db"""


def _store(db: Path | None, *, create: bool = True) -> HistoryStore:
    from ..history.store import HistoryStore, default_path

    return HistoryStore(db if db is not None else default_path(), create=create)


@history.command("add", epilog=ADD_EXAMPLES)
@handle_errors
def add(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Records to add: profile, speed, finetune, ab or ablation-cell JSON, an ablate results folder, "
            "a report --json verdict.",
            show_default=False,
        ),
    ],
    db: DbOpt = None,
    repo: RepoOpt = Path("."),
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision", help="File the runs under this commit (default: the commit each record names)."
        ),
    ] = None,
) -> None:
    """Add runs to the history, each under its revision and machine. A run already there is left as it is."""
    from ..history.ingest import Revisions, entries_from_path
    from ..revisions import repository_root

    revs = Revisions(repository_root(repo), revision)
    entries = [(path, entries_from_path(path, revs)) for path in paths]  # read everything before writing
    with _store(db) as store:
        for path, found in entries:
            added = [store.add(entry) for entry in found]
            new = sum(1 for a in added if a.new_run)
            typer.echo(f"{path}: {new} run(s) added, {len(found) - new} already in {store.path}")


BACKFILL_EXAMPLES = """Examples:

conformer-bench history backfill v0.1.0..main -e experiments/ci.toml

conformer-bench history backfill HEAD~20..HEAD -e experiments/ci.toml --every 5 --only micro,no-fcu --rounds 30

conformer-bench history backfill main~6..main -e experiments/ci.toml --anchor main~10 --db history.db"""


@history.command("backfill", epilog=BACKFILL_EXAMPLES)
@handle_errors
def backfill(
    revisions: Annotated[
        str,
        typer.Argument(
            help="A..B: the commits of B's first-parent line since A (A is the anchor unless --anchor); or one "
            "revision.",
            show_default=False,
        ),
    ],
    experiment: Annotated[
        Path,
        typer.Option(
            "--experiment",
            "-e",
            help="Experiment whose [profile] cells are timed (read as B has it).",
            show_default=False,
        ),
    ],
    anchor: Annotated[
        str | None,
        typer.Option("--anchor", help="The revision every one is timed against (default: A of A..B)."),
    ] = None,
    every: Annotated[
        int, typer.Option("--every", min=1, help="Time every N-th revision (counted back from B).")
    ] = 1,
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
            help="Timed seconds per revision, shared out over its cells.",
            rich_help_panel=MEASURE,
        ),
    ] = 60.0,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds", min=10, help="Rounds per cell (instead of --budget-s).", rich_help_panel=MEASURE
        ),
    ] = None,
    epochs: Annotated[
        int,
        typer.Option(
            "--epochs",
            min=1,
            help="Builds per cell and side, each at another memory layout.",
            rich_help_panel=MEASURE,
        ),
    ] = 2,
    seed: Annotated[
        int,
        typer.Option(
            "--seed", min=0, max=2**32 - 1, help="Seed of the round order.", rich_help_panel=MEASURE
        ),
    ] = 0,
    db: DbOpt = None,
    repo: RepoOpt = Path("."),
    logs: Annotated[
        Path | None,
        typer.Option("--logs", help="Keep the workers' output in this folder.", rich_help_panel=OUTPUT),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress lines.", rich_help_panel=OUTPUT)
    ] = False,
) -> None:
    """Time an experiment's cells at each revision of a range, each paired against one anchor revision on
    this machine, and add every cell to the history as it is timed.

    Run again, it skips every cell the history holds for this machine, experiment, anchor and revision, so
    a stopped backfill (Ctrl-C, SIGTERM, SIGKILL) goes on where it stopped. Exit 0: every cell timed or
    found; 1: some cells failed (not stored, tried again next time); 2: bad input.
    """
    from ..ablate.launch import sigterm_as_exit
    from ..history.backfill import BackfillRequest, run_backfill
    from .ab import Clock, Schedule
    from .ab import _settings as ab_settings

    settings = ab_settings(phases, Schedule.same_core, Clock.auto, budget_s, rounds, seed, epochs, False)
    labels = tuple(label.strip() for label in (only or "").split(",") if label.strip())
    request = BackfillRequest(revisions, experiment, repo, anchor, every, labels, logs=_logs(logs))
    say = None if quiet else (lambda line: typer.echo(line, err=True))
    with _store(db) as store, sigterm_as_exit():
        summary = run_backfill(request, settings, store, progress=say)
    typer.echo(
        f"backfill {revisions}: {len(summary.points)} revision(s) against {summary.anchor.short}; "
        f"{summary.timed} cell(s) timed, {summary.skipped} already in {store.path}, {len(summary.failed)} failed"
    )
    for line in summary.failed:
        typer.echo(f"  failed: {line}")
    raise typer.Exit(1 if summary.failed else 0)


def _logs(logs: Path | None) -> Path | None:
    from ..errors import BenchError

    if logs is None:
        return None
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(
            f"cannot create --logs {str(logs)!r}: {exc.strerror}; choose another folder"
        ) from None
    return logs
