"""``conformer-bench ablate``: run an experiment grid of Conformer variants, resumable and shardable."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import QuietOpt, handle_errors

if TYPE_CHECKING:
    from rich.console import Console

    from ..ablate.cluster import CellState
    from ..ablate.experiment import Cell, Experiment
    from ..ablate.runner import RunResult
    from ..ablate.store import ResultStore
    from ..distributed import DistContext
    from ..records import CellRecord

JOBS = "Jobs (--executor slurm / submitit-local; defaults from the file's executor table)"


class Executor(StrEnum):
    local = "local"
    submitit_local = "submitit-local"
    slurm = "slurm"


def _job(flag: str, help_text: str, show_default: bool = False) -> Any:
    return typer.Option(flag, help=help_text, rich_help_panel=JOBS, show_default=show_default)


PartitionOpt = Annotated[str | None, _job("--partition", "Slurm partition.")]
AccountOpt = Annotated[str | None, _job("--account", "Slurm account to charge.")]
QosOpt = Annotated[str | None, _job("--qos", "Slurm quality of service.")]
TimeLimitOpt = Annotated[
    str | None, _job("--time-limit", "Time limit of each cell's job: minutes or [D-]HH:MM:SS (default 60).")
]
CpusOpt = Annotated[int | None, _job("--cpus-per-task", "CPUs of each cell's job.")]
GpusOpt = Annotated[int | None, _job("--gpus-per-task", "GPUs of each cell's job.")]
MemOpt = Annotated[str | None, _job("--mem", "Memory of each cell's job, e.g. 16G (sbatch --mem).")]
ConstraintOpt = Annotated[str | None, _job("--constraint", "Slurm node feature constraint, e.g. a100.")]
ArrayOpt = Annotated[
    int | None, _job("--array-parallelism", "Jobs of the grid's job array that run at once.")
]
RequeueOpt = Annotated[
    int | None,
    _job(
        "--max-requeues",
        "Timeouts after which a cell's job is requeued (default 0; a preempted job always is).",
    ),
]
SbatchOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--sbatch",
        help="Extra sbatch parameter KEY=VALUE, or KEY for a flag (repeat for several).",
        rich_help_panel=JOBS,
        show_default=False,
    ),
]


app = typer.Typer()

EXAMPLES = """Examples:

conformer-bench ablate experiments/ci.toml --dry-run

conformer-bench ablate experiments/ci.toml --output-dir runs/ci --resume

conformer-bench ablate experiments/paper.toml --only conformer-s --only no-fcu --profile-mode none

conformer-bench ablate experiments/paper.toml --executor slurm --partition gpu --gpus-per-task 1 --no-wait"""


@app.command("ablate", epilog=EXAMPLES)
@handle_errors
def ablate(
    experiment: Annotated[
        Path, typer.Argument(help="Experiment file, e.g. experiments/paper.toml.", show_default=False)
    ],
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Results folder (default: the file's output_dir)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Skip cells already recorded as ok with the same config and settings; rerun failed/oom/nan ones.",
        ),
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run only this cell (repeat for several).", show_default=False),
    ] = None,
    finetune: Annotated[
        bool,
        typer.Option(
            "--finetune", help="Also fine-tune every cell (settings from the file's finetune table)."
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the cells with params and GMACs; run nothing.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="With --dry-run: list only the first N cells.", show_default=False
        ),
    ] = None,
    profile_mode: Annotated[
        str | None,
        typer.Option(
            "--profile-mode",
            help="Override the file's profile mode for every cell: infer, train, both, or none "
            "(params + FLOPs only).",
            show_default=False,
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", help="Run share I of N (0-based, e.g. 0/2); the last shard to finish merges."
        ),
    ] = None,
    isolate: Annotated[
        bool | None,
        typer.Option(
            "--isolate/--no-isolate",
            help="Run each cell in a fresh Python process (a segfault, abort or OOM kill fails only that cell, "
            "and CPU memory is measured from a fresh process); --no-isolate runs cells in this process. "
            "Default: isolated, but costs-only cells (--profile-mode none, no fine-tune) run in this process.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Run even in a folder holding another experiment's results (they are then reported as stale), "
            "and cells past the sanity bounds (1 TMAC per image, 10 G parameters, 2,000 extra bottlenecks).",
        ),
    ] = False,
    executor: Annotated[
        Executor,
        _job(
            "--executor",
            "local: run the cells here; slurm: submit a job per cell (a job array) through submitit; "
            "submitit-local: the same jobs as processes on this machine.",
            show_default=True,
        ),
    ] = Executor.local,
    wait: Annotated[
        bool,
        _job(
            "--wait/--no-wait",
            "Follow the jobs until every cell finished, then write the tables; --no-wait exits after "
            "submitting (follow with --status, then `conformer-bench table`).",
            show_default=True,
        ),
    ] = True,
    status: Annotated[
        bool,
        _job(
            "--status",
            "Show each cell's state (queued, running, done, failed) from its job and its record; run nothing.",
            show_default=True,
        ),
    ] = False,
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
    """Run every cell of EXPERIMENT (profile, and fine-tune when asked), then write tables and figures.

    Each finished cell is written at once to cells.jsonl; a crash, OOM or NaN in one cell (by default each in a process of its own) is recorded and the rest go on. Exit code 1 when a cell did not finish ok, 2 on bad input.
    """
    from ..errors import BenchError

    exp, cells, run_finetune = _load_cells(experiment, output_dir, profile_mode, only, finetune, force)
    if limit is not None and not dry_run:
        raise BenchError("--limit only shortens a --dry-run listing; use --only to run some cells")
    if dry_run:
        from ..ablate.dry_run import print_dry_run

        print_dry_run(exp, cells[:limit], run_finetune, resume, total=len(cells), echo=typer.echo)
        return

    job_options = job_options_given(locals())
    if status:
        if resume or shard or not wait:
            raise BenchError("--status only reports; drop --resume, --shard and --no-wait")
        _show_status(exp, cells, run_finetune)
        return
    if executor is not Executor.local:
        _checked_run_jobs(
            exp, cells, run_finetune, resume, force, executor, isolate, shard, job_options, wait
        )
        return
    dist = _local_grid(shard, job_options, wait)
    statuses = _run(exp, cells, run_finetune, resume, dist, isolate, force, quiet)
    bad = {label: s for label, s in statuses.items() if s != "ok"}
    if bad:
        typer.echo(
            f"{len(bad)} cell(s) did not finish ok: " + ", ".join(f"{k} ({v})" for k, v in bad.items()),
            err=True,
        )
        raise typer.Exit(1)


def job_options_given(given: dict[str, Any]) -> dict[str, Any]:
    """The job options of a command's ``locals()`` by [executor] key; None (and an empty --sbatch): not given."""
    from ..ablate.executor import TABLE_KEYS

    return {key: given[key] for key in TABLE_KEYS} | {"sbatch": given["sbatch"] or None}


def _load_cells(
    experiment: Path,
    output_dir: Path | None,
    profile_mode: str | None,
    only: list[str] | None,
    finetune: bool,
    force: bool,
) -> tuple[Any, list[Any], bool]:
    """The experiment, its selected cells, and whether they are fine-tuned too."""
    from ..ablate.experiment import load_experiment
    from ..errors import BenchError

    if profile_mode is not None and profile_mode not in ("infer", "train", "both", "none"):
        raise BenchError(f"--profile-mode {profile_mode!r} is not valid; use infer, train, both or none")
    overrides = {"mode": profile_mode} if profile_mode is not None else None
    exp = load_experiment(experiment, output_dir=output_dir, profile_overrides=overrides, force=force)
    cells = exp.select(only)
    if finetune and not exp.has_finetune:
        raise BenchError(
            f"{exp.path}: --finetune needs a [finetune] table (dataset, steps or epochs, seeds); add one or drop --finetune"
        )
    return exp, cells, finetune or exp.finetune_by_default


def _checked_run_jobs(
    exp: Experiment,
    cells: list[Cell],
    finetune: bool,
    resume: bool,
    force: bool,
    executor: Executor,
    isolate: bool | None,
    shard: str | None,
    options: dict[str, Any],
    wait: bool,
) -> None:
    """Submit the cells as jobs of ``executor``, refusing the options that split or share this process."""
    from ..ablate.runner import torchrun_rank
    from ..errors import BenchError

    if shard or torchrun_rank():
        raise BenchError(f"--executor {executor.value} runs a job per cell; drop --shard and torchrun")
    if isolate is False:
        raise BenchError(
            f"--no-isolate runs cells in this process; it does not combine with --executor {executor.value}"
        )
    _run_jobs(exp, cells, finetune, resume, force, executor.value, options, wait)


def _local_grid(shard: str | None, job_options: dict[str, Any], wait: bool) -> Any:
    """The share of the grid this process runs: a --shard, a torchrun rank, or all of it."""
    from ..ablate.runner import grid_context, parse_shard, torchrun_rank
    from ..errors import BenchError

    given = [k for k, v in job_options.items() if v is not None]
    if given or not wait:
        flag = "--no-wait" if not wait else "--" + given[0].replace("_", "-")
        raise BenchError(f"{flag} applies to jobs; add --executor slurm (or submitit-local)")
    shard_arg = parse_shard(shard)
    ranked = torchrun_rank()
    if shard_arg and ranked:
        raise BenchError("--shard and torchrun (RANK/WORLD_SIZE) both split the grid; use one of them")
    if ranked:
        return grid_context(rank=ranked[0], world=ranked[1], torchrun=True)
    if shard_arg:
        return grid_context(rank=shard_arg[0], world=shard_arg[1])
    return grid_context()


class _LinesOnly:
    """Grid progress for --quiet: no bars, one line per finished cell."""

    def __init__(self, console: Console, prefix: str) -> None:
        self.console, self.prefix = console, prefix

    def __enter__(self) -> _LinesOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start_cell(self, cell: Cell, position: int, total: int) -> Any:
        return self

    def update(self, text: str, done: float | None = None, total: float | None = None) -> None:
        pass

    def end_cell(self, cell: Cell, status: str, skipped: bool) -> None:
        note = "skipped (unchanged, --resume)" if skipped else status
        self.console.print(f"{self.prefix}{cell.label}: {note}", highlight=False)


def _run(
    exp: Experiment,
    cells: list[Cell],
    finetune: bool,
    resume: bool,
    dist: DistContext,
    isolate: bool | None,
    force: bool,
    quiet: bool = False,
) -> dict[str, str]:
    from rich.console import Console

    from ..ablate.launch import sigterm_as_exit
    from ..ablate.runner import join_ranks, leave_ranks, run_grid, shard_of
    from ..ablate.store import ResultStore

    out_dir = _make_output_dir(exp)
    store = ResultStore(out_dir)
    console = Console() if Console().is_terminal else Console(width=160)
    share = shard_of(cells, dist.rank, dist.world_size)
    what = "profile + fine-tune" if finetune else "profile"
    console.print(
        f"[bold]{exp.name}[/]: {len(share)} of {len(exp.cells)} cells ({what})"
        + (f" on rank {dist.rank} of {dist.world_size}" if dist.world_size > 1 else "")
        + f" -> {out_dir}"
        + ("" if isolate is not False else " (cells in this process: --no-isolate)")
    )
    dist = join_ranks(dist)
    try:
        with sigterm_as_exit():
            try:
                with _grid_progress(quiet, len(share), dist) as progress:
                    result = run_grid(
                        exp,
                        cells,
                        out_dir,
                        finetune=finetune,
                        resume=resume,
                        dist=dist,
                        progress=progress,
                        isolate=isolate,
                        force=force,
                    )
            except (KeyboardInterrupt, SystemExit) as exc:
                what = "terminated" if isinstance(exc, SystemExit) else "interrupted"
                console.print(f"{what}: finished cells are in {out_dir / 'cells.jsonl'}; rerun with --resume")
                raise
        _print_others(result, console)
        if not result.gathered:
            console.print(
                f"shard {dist.rank}/{dist.world_size} done; the last shard to finish merges cells.jsonl and writes the tables"
            )
            return result.statuses
        records = _write_tables(exp, store, console)
        if dist.backend is not None:  # torchrun
            return {r.label: str(r.status) for r in records if r.label in {c.label for c in cells}}
        return result.statuses
    finally:
        leave_ranks(dist)


def _grid_progress(quiet: bool, cells: int, dist: DistContext) -> Any:
    """Rich bars over the grid, or with ``quiet`` one line per finished cell on stderr."""
    from rich.console import Console

    from ..ablate.progress import RichGridProgress

    if quiet:
        prefix = f"[rank {dist.rank}/{dist.world_size}] " if dist.world_size > 1 else ""
        return _LinesOnly(Console(stderr=True), prefix)
    return RichGridProgress(cells, rank=dist.rank, world=dist.world_size)


def _print_others(result: RunResult, console: Console) -> None:
    """The cells this run left alone: unchanged ones (--resume) and those another process ran."""
    if result.skipped:
        console.print(
            f"skipped {len(result.skipped)} unchanged cell(s) (--resume): {', '.join(result.skipped)}"
        )
    for label, who in result.elsewhere_running.items():
        console.print(f"left {label} to {who}, which is running it in this folder")
    if result.elsewhere_done:
        console.print(
            f"{len(result.elsewhere_done)} cell(s) finished by another process on this folder meanwhile: "
            + ", ".join(result.elsewhere_done)
        )


def _make_output_dir(exp: Experiment) -> Path:
    from ..errors import BenchError
    from ..files import check_writable, write_failure

    out_dir: Path = exp.output_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchError(f"output {str(out_dir)!r} is a file, not a folder; pass another --output-dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(exc, out_dir) from None
    check_writable(out_dir / "cells.jsonl")
    return out_dir


def _write_tables(exp: Experiment, store: ResultStore, console: Console) -> list[CellRecord]:
    """Write and print the tables of the folder's newest current records; return those records."""
    from ..ablate.summary import ordered, rich_tables, write_summary

    with store.locked():  # the tables of the newest records, never overwritten by older ones
        current = store.latest()
        stale = store.stale(current)
        records = ordered({k: v for k, v in current.items() if k not in stale}, exp.labels())
        rows, notes, paths = write_summary(store.folder, records, exp.base_label, _title(exp))
    for tbl in rich_tables(rows, notes, _title(exp)):
        console.print(tbl)
    for kind, path in paths.items():
        console.print(f"wrote {kind}: {path}")
    console.print(f"wrote cells: {store.cells_path}")
    return records


def _job_settings(exp: Experiment, kind: str, options: dict[str, Any], console: Console) -> Any:
    """The file's [executor] settings with the command line's options over them, checked."""
    from ..ablate.executor import SLURM_ONLY, parse_sbatch_options, with_options
    from ..errors import BenchError

    try:
        if options.get("sbatch"):
            options = {**options, "sbatch": parse_sbatch_options(options["sbatch"])}
        settings = with_options(exp.executor, options)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    if kind == "submitit-local":
        ignored = [k for k in settings.set_fields() if k in SLURM_ONLY]
        if ignored:
            console.print(f"note: submitit-local ignores the Slurm settings {', '.join(ignored)}")
    return settings


def _state_line(st: CellState) -> str:
    job = f"job {st.job.job_id}" if st.job else "no job"
    line = f"{st.label:<24} {st.state:<8} {job:<14} {st.detail}"
    if st.state in ("failed", "running", "unknown") and st.log and st.log not in st.detail:
        line += f" (log: {st.log})"
    return line


def _counts(states: list[CellState]) -> str:
    order = ("done", "failed", "running", "queued", "missing", "unknown")
    counts = {k: sum(1 for s in states if s.state == k) for k in order}
    return f"{len(states)} cells: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)


def _show_status(exp: Experiment, cells: list[Cell], finetune: bool) -> None:
    """Print each cell's state from its job and its record (settling jobs that ended without a record)."""
    from ..ablate.cluster import JOBS_FILE, grid_states, settle
    from ..errors import BenchError

    out_dir = exp.output_dir
    if not out_dir.is_dir():
        raise BenchError(f"{out_dir} does not exist; submit the grid first (--executor slurm)")
    states = settle(exp, grid_states(cells, out_dir, finetune), out_dir)
    typer.echo(f"{exp.name} -> {out_dir} (jobs: {out_dir / JOBS_FILE})")
    for st in states:
        typer.echo(_state_line(st))
    typer.echo(_counts(states))


def _run_jobs(
    exp: Experiment,
    cells: list[Cell],
    finetune: bool,
    resume: bool,
    force: bool,
    kind: str,
    options: dict[str, Any],
    wait: bool,
) -> None:
    """Submit the cells as jobs; with ``wait``, follow them to the end and write the tables."""
    from rich.console import Console

    from ..ablate.cluster import JOBS_FOLDER, cancel_hint, submit
    from ..ablate.store import ResultStore

    console = Console() if Console().is_terminal else Console(width=160)
    settings = _job_settings(exp, kind, options, console)
    out_dir = _make_output_dir(exp).resolve()
    sub = submit(
        exp, cells, out_dir, kind=kind, settings=settings, finetune=finetune, resume=resume, force=force
    )
    what = "profile + fine-tune" if finetune else "profile"
    if sub.kept:
        console.print(f"kept {len(sub.kept)} cell(s) recorded ok (--resume): {', '.join(sub.kept)}")
    for st in sub.active:
        console.print(f"{st.label}: still {st.state} as job {st.job.job_id if st.job else '?'}; left to it")
    if sub.jobs:
        ids = sorted({j.job_id.split("_")[0] for j in sub.jobs})
        console.print(
            f"[bold]{exp.name}[/]: submitted {len(sub.jobs)} of {len(exp.cells)} cells ({what}) as {kind} "
            f"job(s) {', '.join(ids)} -> {out_dir}; logs in {out_dir / JOBS_FOLDER}"
        )
        if kind == "submitit-local" and len(sub.jobs) > 1:
            console.print(
                "note: submitit-local starts every job at once on this machine; their timings share its CPUs"
            )
    if not wait:
        console.print(f"follow with: conformer-bench ablate {exp.path} --status" + _output_flag(exp))
        return
    followed = {j.label for j in sub.jobs} | {st.label for st in sub.active}
    states = _follow_jobs(exp, cells, out_dir, finetune, console, followed)
    store = ResultStore(out_dir)
    store.compact(exp.labels())  # one record per cell, as a local run leaves it
    _write_tables(exp, store, console)
    bad = [s for s in states if s.state != "done"]
    if bad:
        typer.echo(f"{len(bad)} cell(s) did not finish ok:", err=True)
        for st in bad:
            typer.echo("  " + _state_line(st), err=True)
        hint = cancel_hint(states)
        if hint:
            typer.echo(f"to stop the jobs: {hint}", err=True)
        raise typer.Exit(1)


def _output_flag(exp: Experiment) -> str:
    return f" --output-dir {exp.output_dir}"


def _follow_jobs(
    exp: Experiment, cells: list[Cell], out_dir: Path, finetune: bool, console: Console, followed: set[str]
) -> list[Any]:
    """A progress bar over the grid while the jobs run; one line per ``followed`` cell as it finishes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..ablate.cluster import wait_for

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("cells", total=len(cells))

    def on_change(states: list[CellState], newly: list[CellState]) -> None:
        for st in (s for s in newly if s.label in followed):
            colour = "green" if st.state == "done" else "red"
            text = "ok" if st.state == "done" else st.detail
            if st.state != "done" and st.log and st.log not in st.detail:
                text += f" (log: {st.log})"
            progress.console.print(f"[{colour}]{st.label}[/]: {text}")
        counts = {k: sum(1 for s in states if s.state == k) for k in ("queued", "running")}
        progress.update(
            task,
            completed=sum(1 for s in states if s.finished),
            description=f"cells ({counts['running']} running, {counts['queued']} queued)",
        )

    try:
        with progress:
            return wait_for(exp, cells, out_dir, finetune, on_change)
    except KeyboardInterrupt:
        console.print(
            f"stopped following; the jobs go on: conformer-bench ablate {exp.path} --status"
            + _output_flag(exp)
        )
        raise


def _title(exp: Experiment) -> str:
    return f"{exp.name}: {exp.description}" if exp.description else exp.name
