"""Options and error handling shared by the commands."""

from __future__ import annotations

import errno
import functools
import inspect
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer

from conformer.config import BRANCHES, COUPLINGS, FCU_DOWNS, FCU_UPS, HEADS

from ..errors import BenchError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def handle_errors(func: F) -> F:
    """Turn :class:`BenchError` into one line on stderr and exit code 2; an operating system's refusal (a
    path too long, no permission) into one line naming the path, exit 2; Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            typer.echo(f"error: {os_error_line(exc)}", err=True)
            raise typer.Exit(BenchError.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def os_error_line(exc: OSError) -> str:
    """``cannot use 'PATH': reason; fix`` for an error the operating system raised."""
    what = exc.strerror or type(exc).__name__
    where = f"cannot use {str(exc.filename)[:200]!r}: " if exc.filename else ""
    fix = "choose a shorter name" if exc.errno == errno.ENAMETOOLONG else "check the path and its permissions"
    return f"{where}{what.lower()}; {fix}"


# The toggles' choices, read from the config's Literals: a value added there is a choice here.
Branches = StrEnum("Branches", {name: name for name in BRANCHES})  # type: ignore[misc]
Coupling = StrEnum("Coupling", {name: name for name in COUPLINGS})  # type: ignore[misc]
FcuDown = StrEnum("FcuDown", {name: name for name in FCU_DOWNS})  # type: ignore[misc]
FcuUp = StrEnum("FcuUp", {name: name for name in FCU_UPS})  # type: ignore[misc]
Heads = StrEnum("Heads", {name: name for name in HEADS})  # type: ignore[misc]


TOGGLES = "Variant"
VariantOpt = Annotated[
    str,
    typer.Option(
        "--variant",
        "-v",
        help="Preset or release name (see `conformer-bench variants`).",
        rich_help_panel=TOGGLES,
    ),
]
BranchesOpt = Annotated[
    Branches | None, typer.Option("--branches", help="Which branches to build.", rich_help_panel=TOGGLES)
]
CnnOnlyOpt = Annotated[
    bool, typer.Option("--cnn-only", help="Same as --branches cnn.", rich_help_panel=TOGGLES)
]
TransformerOnlyOpt = Annotated[
    bool, typer.Option("--transformer-only", help="Same as --branches transformer.", rich_help_panel=TOGGLES)
]
CouplingOpt = Annotated[
    Coupling | None,
    typer.Option(
        "--coupling",
        help="FCU directions: both, down (CNN->tokens), up (tokens->CNN), none.",
        rich_help_panel=TOGGLES,
    ),
]
NoFcuOpt = Annotated[bool, typer.Option("--no-fcu", help="Same as --coupling none.", rich_help_panel=TOGGLES)]
MedBlockOpt = Annotated[
    int | None,
    typer.Option(
        "--num-med-block", min=0, help="Extra bottlenecks per coupled block.", rich_help_panel=TOGGLES
    ),
]
FcuDownOpt = Annotated[
    FcuDown | None,
    typer.Option("--fcu-down", help="FCU down-sampling (release: avgpool).", rich_help_panel=TOGGLES),
]
FcuUpOpt = Annotated[
    FcuUp | None,
    typer.Option("--fcu-up", help="FCU up-sampling (release: nearest).", rich_help_panel=TOGGLES),
]
FcuStagesOpt = Annotated[
    str | None,
    typer.Option("--fcu-stages", help="Stages with FCUs, e.g. 3 or 2,3 or none.", rich_help_panel=TOGGLES),
]
PosEmbedOpt = Annotated[
    bool | None,
    typer.Option(
        "--pos-embed/--no-pos-embed",
        help="Learnable position embedding (release: off).",
        rich_help_panel=TOGGLES,
    ),
]
HeadsOpt = Annotated[
    Heads | None,
    typer.Option("--heads", help="Which head(s) classify (release: both).", rich_help_panel=TOGGLES),
]


# --- options shared by the measuring commands (one declaration each) ----------------------------------------

MEASURE = "Measurement"
OUTPUT = "Output"


def measure_option(*decls: str, help_text: str) -> Any:
    """An option listed under the Measurement panel of ``--help``."""
    return typer.Option(*decls, help=help_text, rich_help_panel=MEASURE)


DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.", rich_help_panel=MEASURE
    ),
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", "-b", help="Images per step (per process).", rich_help_panel=MEASURE)
]
BatchSizesOpt = Annotated[
    str | None,
    typer.Option(
        "--batch-size",
        "-b",
        help="Images per step; a comma list sweeps (default: 2 on CPU, 64 on GPU).",
        rich_help_panel=MEASURE,
    ),
]
ImgSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--img-size",
        help="Square input size, a multiple of the patch size (default: the preset's).",
        rich_help_panel=MEASURE,
    ),
]
ImgSizesOpt = Annotated[
    str | None,
    typer.Option(
        "--img-size",
        help="Square input size, a multiple of the patch size; a comma list sweeps (default: the preset's).",
        rich_help_panel=MEASURE,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads", help="torch intra-op threads (default: torch's; recorded).", rich_help_panel=MEASURE
    ),
]
BreakdownOpt = Annotated[
    bool,
    typer.Option(
        "--breakdown/--no-breakdown",
        help="Inference time by component (stem, CNN, transformer, FCU down/up, heads, the rest), with the "
        "instrumentation's overhead; eager paths that keep the model's modules.",
        rich_help_panel=MEASURE,
    ),
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32, bf16, fp16 (CUDA) or amp (fp16 on CUDA, bf16 on CPU), as far as the command runs them; "
        "a comma list where the command measures several.",
        rich_help_panel=MEASURE,
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        help="Also write the result here: format from the extension (.json, .jsonl, .csv, .md, .txt), "
        "else --format, else JSON.",
        rich_help_panel=OUTPUT,
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="table (default), json, jsonl, csv or md on stdout (any case).",
        rich_help_panel=OUTPUT,
    ),
]
TableFormatOpt = Annotated[  # a command whose record is a table: LaTeX too (-o x.tex writes it as well)
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="table (default), json, jsonl, csv, md or latex on stdout (any case).",
        rich_help_panel=OUTPUT,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=OUTPUT)]

# Hidden spellings of the same options (timm's train.py/benchmark.py names, older flags).
ALIASES: dict[str, tuple[str, str, Any, Any]] = {
    # option parameter: (alias parameter, alias flag, annotation, value the option takes when the flag is set)
    "variant": ("model", "--model", Annotated[str | None, typer.Option("--model", hidden=True)], None),
    "output": (
        "results_file",
        "--results-file",
        Annotated[str | None, typer.Option("--results-file", hidden=True)],
        None,
    ),
    "quiet": (
        "no_progress",
        "--no-progress",
        Annotated[bool, typer.Option("--no-progress", hidden=True)],
        True,
    ),
    "precision": ("amp", "--amp", Annotated[bool, typer.Option("--amp", hidden=True)], "amp"),
}
OPTION_FLAGS = {"variant": "--variant", "output": "--output", "quiet": "--quiet", "precision": "--precision"}


def given(name: str) -> bool:
    """Whether option ``name`` was given on the command line (not its default)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer depends on click itself
        from click.globals import get_current_context  # type: ignore[no-redef]

    ctx = get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def aliases(*, amp: bool = False) -> Callable[[F], F]:
    """Add the hidden aliases of the command's options (``--amp`` only with ``amp=True``)."""

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        params = list(signature.parameters.values())
        names = {p.name for p in params}
        chosen = {
            option: spec
            for option, spec in ALIASES.items()
            if option in names and (option != "precision" or amp)
        }
        at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.KEYWORD_ONLY), len(params))
        added = [
            inspect.Parameter(
                alias,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None if value is None else False,
                annotation=annotation,
            )
            for alias, _, annotation, value in chosen.values()
        ]
        parameters = [*params[:at], *added, *params[at:]]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for option, (alias, flag, _, value) in chosen.items():
                spelled = kwargs.pop(alias)
                if spelled is None or spelled is False:
                    continue
                new = spelled if value is None else value
                if given(option) and kwargs[option] != new:
                    raise BenchError(
                        f"{flag} and {OPTION_FLAGS[option]} disagree; give only {OPTION_FLAGS[option]}"
                    )
                kwargs[option] = new
            return func(*args, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper  # type: ignore[return-value]

    return decorate


def parse_format(fmt: str | None) -> str:
    """``--format`` read once, case-insensitively; table when not given."""
    from ..formatting import parse_format as parse

    return parse(fmt)


def write_output(path: str | None, render: Callable[[str], str], fmt: str | None) -> None:
    """Write a command's result to ``--output`` (when given) in the file's format, atomically."""
    if path is None:
        return
    from ..formatting import write_output as write

    write(path, render, fmt)


ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Run a variant past the sanity bounds of 1 TMAC per image, 10 G parameters or 2,000 extra "
        "bottlenecks (counted before building it).",
    ),
]


def variant_config(
    variant: str,
    branches: Branches | None = None,
    cnn_only: bool = False,
    transformer_only: bool = False,
    coupling: Coupling | None = None,
    no_fcu: bool = False,
    num_med_block: int | None = None,
    fcu_down: FcuDown | None = None,
    fcu_up: FcuUp | None = None,
    fcu_stages: str | None = None,
    pos_embed: bool | None = None,
    heads: Heads | None = None,
    **more: Any,
) -> Any:
    """Build the ConformerConfig for a command's toggle options (raises BenchError on bad input)."""
    from ..toggles import build_config

    return build_config(
        variant,
        branches=branches.value if branches else None,
        cnn_only=cnn_only,
        transformer_only=transformer_only,
        coupling=coupling.value if coupling else None,
        no_fcu=no_fcu,
        num_med_block=num_med_block,
        fcu_down=fcu_down.value if fcu_down else None,
        fcu_up=fcu_up.value if fcu_up else None,
        fcu_stages=fcu_stages,
        pos_embed=pos_embed,
        heads=heads.value if heads else None,
        **more,
    )


def fraction_progress(title: str) -> tuple[Any, Callable[[str, float], None]]:
    """A transient rich progress bar on stderr driven by ``update(message, fraction_done)``.

    stderr keeps stdout clean for ``--format json/csv``. Use the returned bar as a context manager.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(f"[bold]{title}[/bold]"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task("starting", total=1.0)

    def update(message: str, fraction: float) -> None:
        progress.update(task, completed=fraction, description=message)

    return progress, update


def with_progress(title: str, show: bool, run: Callable[..., T]) -> T:
    """``run(progress=update)`` under a :func:`fraction_progress` bar when ``show``, else ``run()``."""
    if not show:
        return run()
    bar, update = fraction_progress(title)
    with bar:
        return run(progress=update)


# The toggle options every variant-building command takes, in --help order (after --variant).
TOGGLE_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("branches", BranchesOpt, None),
    ("cnn_only", CnnOnlyOpt, False),
    ("transformer_only", TransformerOnlyOpt, False),
    ("coupling", CouplingOpt, None),
    ("no_fcu", NoFcuOpt, False),
    ("num_med_block", MedBlockOpt, None),
    ("fcu_down", FcuDownOpt, None),
    ("fcu_up", FcuUpOpt, None),
    ("fcu_stages", FcuStagesOpt, None),
    ("pos_embed", PosEmbedOpt, None),
    ("heads", HeadsOpt, None),
)


def toggle_options(func: F) -> F:
    """Add the toggle options after ``variant``; the command receives them as one ``toggles`` dict.

    Pass that dict on with ``variant_config(variant, **toggles)``.
    """
    signature = inspect.signature(func, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "toggles"]
    at = next(i for i, p in enumerate(own) if p.name == "variant") + 1
    added = [
        inspect.Parameter(
            name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation
        )
        for name, annotation, default in TOGGLE_OPTIONS
    ]
    parameters = [*own[:at], *added, *own[at:]]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        toggles = {name: kwargs.pop(name) for name, _, _ in TOGGLE_OPTIONS}
        return func(*args, toggles=toggles, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper  # type: ignore[return-value]
