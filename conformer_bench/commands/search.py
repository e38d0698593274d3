"""``conformer-bench search``: the Pareto front of Conformer variants on this device, found by Optuna."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .ablate import (
    AccountOpt,
    ArrayOpt,
    ConstraintOpt,
    CpusOpt,
    Executor,
    GpusOpt,
    MemOpt,
    PartitionOpt,
    QosOpt,
    RequeueOpt,
    SbatchOpt,
    TimeLimitOpt,
    _job,
    _job_settings,
    job_options_given,
)
from .common import QuietOpt, handle_errors

if TYPE_CHECKING:
    import optuna
    from rich.console import Console

    from ..records import SearchRecord
    from ..search.spec import SearchSpec
    from ..search.study import TrialBook

app = typer.Typer()

EXAMPLES = """Examples:

conformer-bench search experiments/search_micro.toml

conformer-bench search experiments/search_micro.toml --resume

conformer-bench search experiments/search_micro.toml --status

conformer-bench search experiments/search_micro.toml --executor slurm --parallel 2 --trials 24"""


@app.command("search", epilog=EXAMPLES)
@handle_errors
def search(
    experiment: Annotated[
        Path, typer.Argument(help="Experiment file with a \\[search] table.", show_default=False)
    ],
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Search folder (default: the file's search output_dir)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the search in the folder (after a kill, or with a larger budget); trials left "
            "running by a process that is gone are settled first. Several processes may run one search at once.",
        ),
    ] = False,
    status: Annotated[
        bool,
        typer.Option(
            "--status", help="Show trials done, running, pruned and failed and the front; run nothing."
        ),
    ] = False,
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials", min=1, help="Budget: trials that run (overrides the file).", show_default=False
        ),
    ] = None,
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes",
            min=0.01,
            help="Budget: minutes of trial time (overrides the file).",
            show_default=False,
        ),
    ] = None,
    parallel: Annotated[
        int | None,
        _job("--parallel", "Trials in flight at once (job executors; default: the file's parallel)."),
    ] = None,
    isolate: Annotated[
        bool | None,
        typer.Option(
            "--isolate/--no-isolate",
            help="Run each trial's cell in a fresh process (default: yes, except costs-only cells).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Let trials past the sanity bounds run instead of pruning them.")
    ] = False,
    executor: Annotated[
        Executor,
        _job(
            "--executor",
            "local: one trial at a time here; slurm: a job per trial through submitit; submitit-local: the same "
            "jobs as processes on this machine.",
            show_default=True,
        ),
    ] = Executor.local,
    partition: PartitionOpt = None,
    account: AccountOpt = None,
    qos: QosOpt = None,
    time_limit: TimeLimitOpt = None,
    cpus_per_task: CpusOpt = None,
    gpus_per_task: GpusOpt = None,
    mem: MemOpt = None,
    constraint: ConstraintOpt = None,
    array_parallelism: ArrayOpt = None,
    max_requeues: RequeueOpt = None,
    sbatch: SbatchOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Search the \\[search] space of EXPERIMENT for the Pareto front of its objectives, then write the front.

    Trials run as cells of the search folder's trials/ run folder, through ablate's cell isolation and executors. Writes search.json, trials.csv, front.md, front.toml (an ablate experiment of the front) and figures/front.png. Exit code 1 when no trial completed, 2 on bad input.
    """
    import dataclasses

    from ..errors import BenchError
    from ..search.spec import load_search

    spec = load_search(experiment, output_dir=output_dir, trials=trials, minutes=minutes)
    if parallel is not None:
        spec = dataclasses.replace(spec, parallel=parallel)
    job_options = job_options_given(locals())
    if status:
        if resume:
            raise BenchError("--status only reports; drop --resume")
        _show_status(spec)
        return
    if executor is Executor.local and (any(v is not None for v in job_options.values()) or parallel):
        raise BenchError("job options (--parallel, --partition, ...) apply to jobs; add --executor slurm")
    if executor is not Executor.local and isolate is False:
        raise BenchError(
            f"--no-isolate runs trials in this process; it does not combine with --executor {executor.value}"
        )
    _run(spec, resume, executor.value, job_options, isolate, force, quiet)


def _run(
    spec: SearchSpec,
    resume: bool,
    kind: str,
    options: dict[str, Any],
    isolate: bool | None,
    force: bool,
    quiet: bool,
) -> None:
    from rich.console import Console

    from ..search.progress import LineProgress, RichSearchProgress
    from ..search.run import Search
    from ..search.study import TrialBook, open_study

    console = Console() if Console().is_terminal else Console(width=160)
    settings = _job_settings(spec.experiment, kind, options, console) if kind != "local" else None
    _make_folder(spec.output_dir)
    study = open_study(spec, resume=resume)
    before = TrialBook.of(study.get_trials(deepcopy=False))
    console.print(
        f"[bold]{spec.name}[/]: {len(spec.dimensions)} dimension(s), objectives "
        + ", ".join(f"{o.metric.name} ({o.direction})" for o in spec.objectives)
        + f", budget {spec.budget.describe()}, {kind} executor -> {spec.output_dir}"
        + (f" (continuing: {before.ran} trial(s) ran)" if before.ran else "")
    )
    progress: Any = LineProgress(spec) if quiet else RichSearchProgress(spec, before.ran)
    try:
        with progress:
            outcome = Search(
                spec, study, progress, executor=kind, job_settings=settings, isolate=isolate, force=force
            ).run()
    except (KeyboardInterrupt, SystemExit) as exc:
        what = "terminated" if isinstance(exc, SystemExit) else "interrupted"
        console.print(f"{what}: the study is in {spec.journal}; continue with --resume")
        raise
    console.print(f"stopped: {outcome.stop}")
    record = _write(spec, study, outcome.book, console)
    if not record.front:
        typer.echo("no trial completed within the constraints: the front is empty", err=True)
        raise typer.Exit(1)


def _make_folder(folder: Path) -> None:
    from ..errors import BenchError
    from ..files import write_failure

    if folder.exists() and not folder.is_dir():
        raise BenchError(f"search folder {str(folder)!r} is a file; pass another --output-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(exc, folder) from None


def _write(spec: SearchSpec, study: optuna.Study, book: TrialBook, console: Console) -> SearchRecord:
    from ..search.front import describe, rich_front_table, search_record, write_outputs

    record = search_record(spec, study, book, _environment(spec))
    console.print(rich_front_table(spec, record))
    for line in describe(spec, record):
        console.print(f"  {line}", highlight=False)
    for kind, path in write_outputs(spec, record).items():
        console.print(f"wrote {kind}: {path}")
    return record


def _environment(spec: SearchSpec) -> dict[str, Any]:
    """Where the base trial's cell ran (its record's environment); {} before it ran."""
    from ..ablate.store import ResultStore
    from ..search.cells import cell_outcome
    from ..search.spec import trial_label

    records = ResultStore(spec.trials_dir).latest() if spec.trials_dir.is_dir() else {}
    base = records.get(trial_label(0)) or next(iter(records.values()), None)
    return cell_outcome(base).environment if base is not None else {}


def _show_status(spec: SearchSpec) -> None:
    """Trials by state and the current front, from the study alone."""
    from rich.console import Console

    from ..search.front import describe, rich_front_table, search_record
    from ..search.study import TrialBook, open_study

    study = open_study(spec, resume=True, create=False)
    book = TrialBook.of(study.get_trials(deepcopy=False))
    console = Console() if Console().is_terminal else Console(width=160)
    counts = ", ".join(f"{n} {k}" for k, n in book.counts().items() if n)
    budget = f" of {spec.budget.trials}" if spec.budget.trials else ""
    console.print(f"{spec.name} -> {spec.output_dir} (study: {spec.journal})")
    console.print(f"{book.ran}{budget} trials ran; {counts or 'no trials'}", highlight=False)
    for t in book.stale:
        console.print(
            f"trial {t.number}: running, but its process is gone; --resume settles it", highlight=False
        )
    record = search_record(spec, study, book, _environment(spec))
    console.print(rich_front_table(spec, record))
    for line in describe(spec, record):
        console.print(f"  {line}", highlight=False)
