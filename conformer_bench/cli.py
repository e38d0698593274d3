"""The ``conformer-bench`` command line. Heavy imports (torch, fvcore, pandas) stay inside commands."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="conformer-bench",
    help="Cost and ablation measurements for the Conformer hybrid CNN-transformer (Peng et al., ICCV 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines ``register(app)``; registration order is the order in --help.
COMMAND_MODULES = ("variants", "profile", "speed", "finetune", "ablate", "table", "report", "baseline")


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"conformer-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """Measure what a Conformer variant costs (params, FLOPs, memory, speed) and what it buys (accuracy)."""


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"conformer_bench.commands.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"conformer_bench.commands.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
