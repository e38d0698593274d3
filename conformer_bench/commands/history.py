"""``conformer-bench history``: keep every run in one database, backfill a range of revisions, find the steps
in each series and publish them as a static site."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import BenchError
from ..files import atomic_write_text, check_outputs_apart, check_writable, write_json
from .ab import (
    Clock,
    EpochsOpt,
    LogsOpt,
    OnlyOpt,
    PhasesOpt,
    QuietOpt,
    RepoOpt,
    RoundsOpt,
    Schedule,
    SeedOpt,
    only_labels,
)
from .ab import _settings as ab_settings
from .common import MEASURE, handle_errors

if TYPE_CHECKING:
    from ..history.store import HistoryStore

# The history modules are imported where they run: the CLI imports every command module at start-up.

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

ADD_EXAMPLES = """Examples:

conformer-bench profile -v micro --img-size 32 --mode infer -o p.json && conformer-bench history add p.json

conformer-bench history add runs/ci runs/ci/report.json runs/ab/record.json --db history.db"""


def _store(db: Path | None, *, create: bool = True) -> HistoryStore:
    from ..history.store import HistoryStore, default_path

    return HistoryStore(db if db is not None else default_path(), create=create)


def _database_files(db: Path | None) -> list[Path]:
    """The files the history database is kept in: the database and SQLite's journals beside it."""

    from ..history.store import default_path

    path = db if db is not None else default_path()
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


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
    only: OnlyOpt = None,
    phases: PhasesOpt = "infer",
    budget_s: Annotated[
        float,
        typer.Option(
            "--budget-s",
            help="Timed seconds per revision, shared out over its cells.",
            rich_help_panel=MEASURE,
        ),
    ] = 60.0,
    rounds: RoundsOpt = None,
    epochs: EpochsOpt = 2,
    seed: SeedOpt = 0,
    db: DbOpt = None,
    repo: RepoOpt = Path("."),
    logs: LogsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Time an experiment's cells at each revision of a range, each paired against one anchor revision on
    this machine, and add every cell to the history as it is timed.

    Run again, it skips every cell the history holds for this machine, experiment, anchor and revision, so
    a stopped backfill (Ctrl-C, SIGTERM, SIGKILL) goes on where it stopped. Exit 0: every cell timed or
    found; 1: some cells failed (not stored, tried again next time); 2: bad input.
    """
    from ..ablate.launch import sigterm_as_exit
    from ..history.backfill import BackfillRequest, run_backfill

    settings = ab_settings(
        phases, Schedule("same-core"), Clock("auto"), budget_s, rounds, seed, epochs, False
    )
    request = BackfillRequest(revisions, experiment, repo, anchor, every, only_labels(only), logs=_logs(logs))
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

    if logs is None:
        return None
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(
            f"cannot create --logs {str(logs)!r}: {exc.strerror}; choose another folder"
        ) from None
    return logs


CHANGES_EXAMPLES = """Examples:

conformer-bench history changes

conformer-bench history changes --metric 'paired.*' --cell micro --json changes.json

conformer-bench history changes --gate 'paired.*.img_per_s' --gate 'finetune.top1.*' --markdown changes.md"""


@history.command("changes", epilog=CHANGES_EXAMPLES)
@handle_errors
def changes(
    db: DbOpt = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="Only metrics matching this pattern (fnmatch; repeatable)."),
    ] = None,
    cell: Annotated[
        list[str] | None, typer.Option("--cell", help="Only cells matching this pattern (repeatable).")
    ] = None,
    machine: Annotated[
        str | None, typer.Option("--machine", help="Only the machine whose fingerprint starts with this.")
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            "--gate",
            help="Metrics that gate (fnmatch; repeatable): exit 1 when the newest step of one of their series is a "
            "regression. Default: paired.*.img_per_s.",
        ),
    ] = None,
    alpha: Annotated[
        float, typer.Option("--alpha", min=1e-9, max=0.5, help="Significance a step must reach.")
    ] = 0.01,
    min_change: Annotated[
        float,
        typer.Option("--min-change", min=0.0, help="Smallest step reported, as a fraction (0.02 = 2 %)."),
    ] = 0.02,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the table here.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every series and its steps here.")
    ] = None,
    warn_only: Annotated[
        bool, typer.Option("--warn-only", help="Exit 0 even when a gated series regressed.")
    ] = False,
) -> None:
    """List the change points of every series in the history: where it steps, by how much (with a 95 %
    interval) and how significantly. Series are per machine, experiment, cell, metric and settings.

    Exit code 0: no gated series ends in a regression; 1: one does; 2: bad input.
    """
    from ..history.changes import series_steps
    from ..history.render import DEFAULT_GATE, Gate, render_json, render_markdown
    from ..history.series import load_series

    check_outputs_apart({"--markdown": markdown, "--json": json_out}, {"--db": _database_files(db)})
    for path in (markdown, json_out):
        if path is not None:
            check_writable(path)
    with _store(db, create=False) as store:
        everything = load_series(store)
    chosen = [s for s in everything if _selected(s, metric, cell, machine)]
    _check_selection(everything, chosen)
    found = [series_steps(s, alpha=alpha, min_change=min_change) for s in chosen]
    rule = Gate(tuple(gate) if gate else DEFAULT_GATE)
    text = render_markdown(found, rule, len(chosen))
    if markdown is not None:
        atomic_write_text(markdown, text)
    if json_out is not None:
        write_json(json_out, render_json(found, rule))
    typer.echo(text, nl=False)
    raise typer.Exit(1 if rule.blocking(found) and not warn_only else 0)


def _selected(series: Any, metric: list[str] | None, cell: list[str] | None, machine: str | None) -> bool:

    key = series.key
    if metric and not any(fnmatch.fnmatchcase(key.metric, p) for p in metric):
        return False
    if cell and not any(fnmatch.fnmatchcase(key.cell, p) for p in cell):
        return False
    return machine is None or key.machine.startswith(machine)


def _check_selection(everything: list[Any], chosen: list[Any]) -> None:

    if not everything:
        raise BenchError("the history holds no results yet; add runs (`history add`) or backfill a range")
    if not chosen:
        metrics = sorted({s.key.metric for s in everything})
        shown = ", ".join(metrics[:8]) + (", ..." if len(metrics) > 8 else "")
        raise BenchError(f"no series matches --metric/--cell/--machine; its metrics: {shown}")


PUBLISH_EXAMPLES = """Examples:

conformer-bench history publish site/

conformer-bench history publish site/ --db history.db --commit-url 'https://github.com/ORG/REPO/commit/{sha}'"""


@history.command("publish", epilog=PUBLISH_EXAMPLES)
@handle_errors
def publish(
    folder: Annotated[Path, typer.Argument(help="Folder to write the site into.", show_default=False)],
    db: DbOpt = None,
    repo: RepoOpt = Path("."),
    commit_url: Annotated[
        str | None,
        typer.Option(
            "--commit-url",
            help="Link of a commit, with {sha} (default: from the repository's origin where it is a GitHub or "
            "GitLab address; else no links).",
        ),
    ] = None,
    title: Annotated[
        str, typer.Option("--title", help="The front page's title.")
    ] = "conformer-bench history",
    alpha: Annotated[
        float, typer.Option("--alpha", min=1e-9, max=0.5, help="Significance a step must reach.")
    ] = 0.01,
    min_change: Annotated[
        float, typer.Option("--min-change", min=0.0, help="Smallest step marked, as a fraction.")
    ] = 0.02,
) -> None:
    """Write the history as a static site: a front page of the latest regressions, and per metric a trend
    plot for each machine with the change points marked. It opens from file:// with no server."""
    from ..history.changes import series_steps
    from ..history.publish import publish as write_site
    from ..history.render import Gate
    from ..history.series import load_series

    if folder.exists() and not folder.is_dir():
        raise BenchError(f"{str(folder)!r} is a file; give a folder for the site")
    _check_site_apart(folder, db)
    if commit_url is not None and "{sha}" not in commit_url:
        raise BenchError(
            "--commit-url needs {sha} where the commit goes, e.g. https://host/org/repo/commit/{sha}"
        )
    with _store(db, create=False) as store:
        everything = load_series(store)
    _check_selection(everything, everything)
    found = [series_steps(s, alpha=alpha, min_change=min_change) for s in everything]
    link = commit_url if commit_url is not None else _origin_commit_url(repo)
    try:
        site = write_site(found, folder, commit_url=link, title=title, gate=Gate())
    except OSError as exc:
        raise BenchError(
            f"cannot write the site into {str(folder)!r}: {exc.strerror}; choose another folder"
        ) from None
    typer.echo(
        f"{site.folder / 'index.html'}: {len(site.pages) - 1} metric page(s), {site.plots} plot(s), "
        f"{site.marked} change point(s) marked"
    )


def _check_site_apart(folder: Path, db: Path | None) -> None:
    """Refuse a site folder where a page the site writes (``*.html``, plotly's script) is the database."""
    from ..history.publish import PLOTLY_JS

    for path in _database_files(db):
        if path.name.endswith(".html") or path.name == PLOTLY_JS:
            check_outputs_apart({"the site page": folder / path.name}, {"--db": [path]})


def _origin_commit_url(repo: Path) -> str | None:
    """``https://HOST/ORG/REPO/commit/{sha}`` from the origin remote of a GitHub or GitLab repository."""

    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "remote", "get-url", "origin"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"^(?:https://|git@)(github\.com|gitlab\.com)[/:](.+?)(?:\.git)?$", done.stdout.strip())
    if done.returncode != 0 or match is None:
        return None
    path = "commit" if match.group(1) == "github.com" else "-/commit"
    return f"https://{match.group(1)}/{match.group(2)}/{path}/{{sha}}"
