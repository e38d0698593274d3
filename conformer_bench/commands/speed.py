"""``conformer-bench speed``: plain vs optimized vs compiled inference, measured interleaved in one process."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import (
    ForceOpt,
    VariantOpt,
    fraction_progress,
    handle_errors,
    toggle_options,
    variant_config,
)

MEASURE = "Measurement"
OUTPUT = "Output"


def register(app: typer.Typer) -> None:
    @app.command("speed")
    @handle_errors
    @toggle_options
    def speed(
        variant: VariantOpt = "tiny",
        paths: Annotated[
            str,
            typer.Option(
                "--paths", help="Comma list of plain, optimized, compiled.", rich_help_panel=MEASURE
            ),
        ] = "plain,optimized,compiled",
        precision: Annotated[
            str,
            typer.Option(
                "--precision",
                help="Comma list of fp32, bf16: every path runs in each (bf16 only where the device has it "
                "natively; otherwise reported as not supported).",
                rich_help_panel=MEASURE,
            ),
        ] = "fp32,bf16",
        device: Annotated[
            str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=MEASURE)
        ] = "cpu",
        batch_size: Annotated[
            int, typer.Option("--batch-size", "-b", help="Images per forward.", rich_help_panel=MEASURE)
        ] = 8,
        img_size: Annotated[
            int | None,
            typer.Option(
                "--img-size",
                help="Square input size, a multiple of the patch size (default: the preset's).",
                rich_help_panel=MEASURE,
            ),
        ] = None,
        rounds: Annotated[
            int,
            typer.Option(
                "--rounds", help="Interleaved rounds (one forward per path each).", rich_help_panel=MEASURE
            ),
        ] = 10,
        warmup: Annotated[
            int,
            typer.Option(
                "--warmup", help="Warm-up calls per path after the first call.", rich_help_panel=MEASURE
            ),
        ] = 2,
        threads: Annotated[
            int | None,
            typer.Option(
                "--threads",
                help="torch intra-op threads (default: torch's; recorded).",
                rich_help_panel=MEASURE,
            ),
        ] = None,
        matmul_size: Annotated[
            int,
            typer.Option(
                "--matmul-size",
                help="n of the n×n matmul timed as the ceiling, once per precision.",
                rich_help_panel=MEASURE,
            ),
        ] = 2048,
        fold_bn: Annotated[
            bool,
            typer.Option(
                "--fold-bn/--no-fold-bn",
                help="Fold BatchNorm into convs (optimized, compiled).",
                rich_help_panel=MEASURE,
            ),
        ] = True,
        channels_last: Annotated[
            bool,
            typer.Option(
                "--channels-last/--no-channels-last",
                help="Channels-last weights (optimized, compiled).",
                rich_help_panel=MEASURE,
            ),
        ] = True,
        fuse_pointwise: Annotated[
            bool,
            typer.Option(
                "--fuse/--no-fuse",
                help="Fused oneDNN conv/linear + activation/residual ops (optimized, CPU fp32).",
                rich_help_panel=MEASURE,
            ),
        ] = True,
        pool_first: Annotated[
            bool,
            typer.Option(
                "--pool-first/--no-pool-first",
                help="FCU-down: average-pool before the 1x1 projection (exact; optimized, compiled).",
                rich_help_panel=MEASURE,
            ),
        ] = True,
        agreement_images: Annotated[
            int,
            typer.Option(
                "--agreement-images",
                help="Seeded images on which top-1 agreement with plain fp32 is counted (0: none).",
                rich_help_panel=MEASURE,
            ),
        ] = 32,
        seed: Annotated[
            int, typer.Option("--seed", help="Seed of weights and input.", rich_help_panel=MEASURE)
        ] = 0,
        output: Annotated[
            str | None,
            typer.Option(
                "--output",
                "-o",
                help="Also write the record here (format from --format or the extension; json by default).",
                rich_help_panel=OUTPUT,
            ),
        ] = None,
        fmt: Annotated[
            str | None,
            typer.Option(
                "--format", "-f", help="table (default), json, csv or md on stdout.", rich_help_panel=OUTPUT
            ),
        ] = None,
        quiet: Annotated[
            bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=OUTPUT)
        ] = False,
        force: ForceOpt = False,
        *,
        toggles: dict[str, Any],
    ) -> None:
        """Images/s of the plain, optimized and compiled inference paths per precision, interleaved in one process."""
        from ..env import resolve_device
        from ..errors import BenchError
        from ..files import atomic_write_text, check_writable
        from ..formatting import output_format_for
        from ..speed import FORMATS, SpeedSettings, measure_speed, parse_list, render

        stdout_format = (fmt or "table").lower()
        if stdout_format not in FORMATS:
            raise BenchError(f"--format {fmt!r} is not valid; use one of {', '.join(FORMATS)}")
        cfg = variant_config(variant, **toggles)
        settings = SpeedSettings(
            device=resolve_device(device),
            batch_size=batch_size,
            img_size=img_size or cfg.img_size,
            paths=parse_list(paths),
            precisions=parse_list(precision),
            rounds=rounds,
            warmup=warmup,
            matmul_size=matmul_size,
            threads=threads,
            channels_last=channels_last,
            fold_bn=fold_bn,
            fuse_pointwise=fuse_pointwise,
            pool_first=pool_first,
            agreement_images=agreement_images,
            seed=seed,
        )
        settings.validate(cfg.patch_size)
        from ..flops import refuse_huge

        refuse_huge(cfg, settings.img_size, force)
        out_path = check_writable(output) if output else None
        if quiet:
            record = measure_speed(cfg, settings)
        else:
            progress, update = fraction_progress("speed")
            with progress:
                record = measure_speed(cfg, settings, progress=update)
        if out_path is not None:
            atomic_write_text(out_path, render(record, output_format_for(str(out_path), fmt)))
        typer.echo(render(record, stdout_format), nl=False)
        if record["status"] != "ok":
            typer.echo(f"error: {record['reason']}", err=True)
            raise typer.Exit(1)
