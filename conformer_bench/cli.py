"""The ``conformer-bench`` command line. Heavy imports (torch, fvcore, pandas) stay inside commands."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from . import __version__

try:  # recent typer vendors click
    from typer._click import core as click_core
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click import core as click_core  # type: ignore[no-redef]
    from click import exceptions as click_exceptions  # type: ignore[no-redef]


class OneLineErrorGroup(TyperGroup):
    """Usage errors (bad option values, missing options) as one line on stderr with exit code 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        _quiet_flag_metavars(self, sys.argv[1:] if args is None else list(args))
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click_exceptions.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            message = exc.format_message()
            if isinstance(exc, click_exceptions.NoSuchOption) and ctx is not None:
                hidden = {o for p in ctx.command.params if getattr(p, "hidden", False) for o in p.opts}
                near = [o for o in exc.possibilities or () if o not in hidden]  # offer shown options only
                message = f"No such option: {exc.option_name}"
                if near:
                    message += f". Did you mean {' or '.join(near)}?"
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            print(f"error: {message}{where}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _quiet_flag_metavars(command: Any, args: list[str]) -> None:
    """Show no ``<bool>`` type beside on/off flags in --help: they take no value. Only the commands the
    arguments name are touched (building every command's help option costs start-up time)."""
    _quiet_command(command)
    for token in args:
        sub = getattr(command, "commands", {}).get(token)
        if sub is not None:
            command = sub
            _quiet_command(command)


def _quiet_command(command: Any) -> None:
    params = list(getattr(command, "params", ()))
    if getattr(command, "add_help_option", False):
        params.append(command.get_help_option(click_core.Context(command)))
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


app = typer.Typer(
    cls=OneLineErrorGroup,
    name="conformer-bench",
    help="Cost and ablation measurements for the Conformer hybrid CNN-transformer (Peng et al., ICCV 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines one ``app = typer.Typer()``; registration order is the order in --help.
COMMAND_MODULES = (
    "variants", "profile", "speed", "finetune", "ablate", "search", "table", "report", "ab", "baseline",
    "history",
)  # fmt: skip


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"conformer-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """Measure what a Conformer variant costs (params, FLOPs, memory, speed) and what it buys (accuracy)."""


# Import names whose distribution on the package index is spelled otherwise.
DISTRIBUTIONS = {"sklearn": "scikit-learn", "PIL": "Pillow", "pynvml": "nvidia-ml-py", "yaml": "PyYAML"}


def broken_command_line(command: str, exc: ModuleNotFoundError) -> str:
    """One line for a command module that cannot be imported: which, what is missing, and the fix."""
    missing = (exc.name or "").partition(".")[0]
    if not missing or missing in ("conformer", "conformer_bench"):
        what, fix = f"{exc.name or exc} is missing", "reinstall the project with `pip install -e .`"
    else:
        package = DISTRIBUTIONS.get(missing, missing)
        what = f"the package {package!r} is not installed"
        fix = f"install the project's dependencies with `pip install -e .` (or `pip install {package}`)"
    return f"error: the {command!r} command cannot load ({what}); {fix}"


# A command that cannot load is a broken install: every invocation then fails with one line saying so.
BROKEN: list[str] = []
for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"conformer_bench.commands.{_name}")
    except ModuleNotFoundError as _exc:
        BROKEN.append(broken_command_line(_name, _exc))
        continue
    app.add_typer(_module.app)


def main() -> None:
    if BROKEN:
        print(BROKEN[0], file=sys.stderr)
        sys.exit(1)
    app()


if __name__ == "__main__":
    main()
