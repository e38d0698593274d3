"""``conformer-bench history``: keep every run in one database, backfill a range of revisions, find the steps
in each series and publish them as a static site."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import handle_errors

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
