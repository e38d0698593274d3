"""``conformer-bench profile``: params, FLOPs, memory and throughput of one variant."""

from __future__ import annotations

import sys
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


def _choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    from ..errors import BenchError

    value = value.lower()
    if value not in choices:
        raise BenchError(f"{option} {value!r} is not valid; use one of {', '.join(choices)}")
    return value


def register(app: typer.Typer) -> None:
    @app.command("profile")
    @handle_errors
    @toggle_options
    def profile(
        variant: VariantOpt = "tiny",
        fused_attn: Annotated[
            bool | None,
            typer.Option(
                "--fused-attn/--no-fused-attn",
                help="Attention through scaled_dot_product_attention (same maths; FLOPs counted the same).",
                rich_help_panel="Variant",
            ),
        ] = None,
        device: Annotated[
            str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=MEASURE)
        ] = "auto",
        batch_size: Annotated[
            int | None,
            typer.Option(
                "--batch-size",
                "-b",
                help="Images per step (default: 2 on CPU, 64 on GPU).",
                rich_help_panel=MEASURE,
            ),
        ] = None,
        img_size: Annotated[
            int | None,
            typer.Option(
                "--img-size",
                help="Square input size; a multiple of the patch size (default: the preset's, 224 for the release).",
                rich_help_panel=MEASURE,
            ),
        ] = None,
        mode: Annotated[
            str,
            typer.Option(
                "--mode", help="infer, train, both, or none (params and FLOPs only).", rich_help_panel=MEASURE
            ),
        ] = "both",
        precision: Annotated[
            str,
            typer.Option(
                "--precision",
                help="fp32, bf16, fp16 (CUDA) or amp (fp16 on CUDA, bf16 on CPU).",
                rich_help_panel=MEASURE,
            ),
        ] = "fp32",
        channels_last: Annotated[
            bool,
            typer.Option(
                "--channels-last",
                help="Channels-last memory format for model and input.",
                rich_help_panel=MEASURE,
            ),
        ] = False,
        threads: Annotated[
            int | None,
            typer.Option("--threads", help="torch intra-op threads (recorded).", rich_help_panel=MEASURE),
        ] = None,
        warmup: Annotated[
            int | None,
            typer.Option(
                "--warmup",
                help="Warm-up iterations per phase (default: 1 on CPU, 10 on GPU).",
                rich_help_panel=MEASURE,
            ),
        ] = None,
        iters: Annotated[
            int | None,
            typer.Option(
                "--iters",
                help="Timed iterations per phase (default: auto-ranged to a time budget).",
                rich_help_panel=MEASURE,
            ),
        ] = None,
        optimize: Annotated[
            bool,
            typer.Option(
                "--optimize",
                help="Measure inference on the optimized eager path (folded BN, channels-last).",
                rich_help_panel=MEASURE,
            ),
        ] = False,
        compile_: Annotated[
            bool,
            typer.Option(
                "--compile",
                help="Measure the optimized path under torch.compile (train: torch.compile).",
                rich_help_panel=MEASURE,
            ),
        ] = False,
        timing_reference: Annotated[
            bool,
            typer.Option(
                "--timing-reference",
                help="CPU: time a fixed fp32 GEMM after every iteration and also report img per reference "
                "GFLOP, a speed that holds on a shared, noisy host.",
                rich_help_panel=MEASURE,
            ),
        ] = False,
        flops: Annotated[
            bool,
            typer.Option(
                "--flops/--no-flops", help="Count FLOPs (fvcore, batch 1, eval).", rich_help_panel=MEASURE
            ),
        ] = True,
        cross_check: Annotated[
            bool,
            typer.Option(
                "--cross-check/--no-cross-check",
                help="Cross-check FLOPs with torch's FlopCounterMode.",
                rich_help_panel=MEASURE,
            ),
        ] = True,
        output: Annotated[
            str | None,
            typer.Option(
                "--output",
                "-o",
                help="Also write the record here (format from --format or the extension; .json by default).",
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
        """Params, FLOPs, memory and throughput of one Conformer variant."""
        from ..files import atomic_write_text, check_writable
        from ..formatting import FORMATS, output_format_for, render
        from ..profiling import MODES, PRECISIONS, ProfileSettings, profile_variant

        stdout_format = _choice("--format", fmt, FORMATS) if fmt else "table"
        settings_mode = _choice("--mode", mode, MODES)
        settings_precision = _choice("--precision", precision, PRECISIONS)
        cfg = variant_config(variant, **toggles, fused_attn=fused_attn)
        if output is not None:
            check_writable(output)
        from ..flops import refuse_huge

        refuse_huge(cfg, img_size if img_size is not None else cfg.img_size, force)
        settings = ProfileSettings(
            device=device,
            batch_size=batch_size,
            img_size=img_size if img_size is not None else cfg.img_size,
            mode=settings_mode,
            precision=settings_precision,
            channels_last=channels_last,
            threads=threads,
            warmup=warmup,
            iters=iters,
            count_flops=flops,
            cross_check=cross_check and flops,
            path="compiled" if compile_ else "optimized" if optimize else "plain",
            timing_reference=timing_reference,
        )
        show_progress = not quiet and sys.stderr.isatty()
        if show_progress:
            bar, update = fraction_progress("profile")
            with bar:
                record = profile_variant(cfg, settings, progress=update)
        else:
            record = profile_variant(cfg, settings)
        typer.echo(render(record, stdout_format), nl=False)
        if output is not None:
            atomic_write_text(output, render(record, output_format_for(output, fmt)))
            typer.echo(f"wrote {output}", err=True)
        if record["status"] != "ok":
            raise typer.Exit(1)
