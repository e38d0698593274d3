"""``conformer-bench profile``: params, FLOPs, memory and throughput of a variant, or a sweep of them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    MEASURE,
    OUTPUT,
    BatchSizesOpt,
    DeviceOpt,
    ForceOpt,
    FormatOpt,
    ImgSizesOpt,
    OutputOpt,
    PrecisionOpt,
    QuietOpt,
    ThreadsOpt,
    aliases,
    fraction_progress,
    given,
    handle_errors,
    parse_format,
    toggle_options,
    variant_config,
    write_output,
)

app = typer.Typer()

SWEEP = "Sweep"
EXAMPLES = """Examples:

conformer-bench profile --variant tiny

conformer-bench profile --variant micro --img-size 64 --mode infer --device cpu -f JSON -o micro.json

conformer-bench profile --variant micro,tiny --img-size 64 --batch-size 1,2 --mode infer --iters 2 -o results.csv

conformer-bench profile --model-list models.txt --batch-size 1,8,32 --precision fp32,bf16 --mode infer -o results.csv --append --plot throughput.png

conformer-bench profile --variant small --no-fcu --mode none"""


@app.command("profile", epilog=EXAMPLES)
@handle_errors
@aliases(amp=True)
@toggle_options
def profile(
    variant: Annotated[
        str,
        typer.Option(
            "--variant",
            "-v",
            help="Preset or release name (see `conformer-bench variants`); a comma list sweeps, the toggles "
            "apply to each.",
            rich_help_panel="Variant",
        ),
    ] = "tiny",
    fused_attn: Annotated[
        bool | None,
        typer.Option(
            "--fused-attn/--no-fused-attn",
            help="Attention through scaled_dot_product_attention (same maths; FLOPs counted the same).",
            rich_help_panel="Variant",
        ),
    ] = None,
    model_list: Annotated[
        Path | None,
        typer.Option(
            "--model-list",
            help="Text file of variants to sweep, one a line (# starts a comment); replaces the default "
            "--variant, adds to a given one.",
            rich_help_panel=SWEEP,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchSizesOpt = None,
    img_size: ImgSizesOpt = None,
    mode: Annotated[
        str,
        typer.Option(
            "--mode", help="infer, train, both, or none (params and FLOPs only).", rich_help_panel=MEASURE
        ),
    ] = "both",
    precision: PrecisionOpt = "fp32",
    channels_last: Annotated[
        bool,
        typer.Option(
            "--channels-last",
            help="Channels-last memory format for model and input.",
            rich_help_panel=MEASURE,
        ),
    ] = False,
    threads: ThreadsOpt = None,
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
    output: OutputOpt = None,
    fmt: FormatOpt = None,
    append: Annotated[
        bool,
        typer.Option(
            "--append",
            help="Add the rows to an existing --output .csv/.jsonl with the same columns.",
            rich_help_panel=OUTPUT,
        ),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Draw throughput against batch size to this PNG (needs several --batch-size values).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    *,
    toggles: dict[str, Any],
) -> None:
    """Params, FLOPs, memory and throughput of Conformer variants: one point, or a sweep.

    Precision: fp32, bf16, fp16 (CUDA) or amp (fp16 on CUDA, bf16 on CPU). Comma lists of --variant,
    --batch-size, --img-size and --precision measure every combination; a failing point is recorded with
    its status and the others still run. One point prints the full record; a sweep prints one row per point.
    """
    from .. import sweep
    from ..env import resolve_device
    from ..errors import BenchError
    from ..files import check_writable
    from ..flops import refuse_huge
    from ..formatting import file_format, render
    from ..profiling import MODES, PRECISIONS, ProfileSettings

    stdout_format = parse_format(fmt)
    modes = sweep.parse_choices(mode, "--mode", MODES)
    if len(modes) > 1:
        raise BenchError(f"--mode takes one of {', '.join(MODES)}; both times infer and train")
    mode = modes[0]
    precisions = sweep.parse_choices(precision, "--precision", PRECISIONS)
    batch_sizes = sweep.parse_ints(batch_size, "--batch-size")
    img_sizes = sweep.parse_ints(img_size, "--img-size")
    names = sweep.split_list(variant)
    if model_list is not None:
        listed = sweep.read_model_list(model_list)
        names = list(dict.fromkeys([*names, *listed])) if given("variant") or given("model") else listed
    if not names:
        raise BenchError("--variant is empty; give a preset such as tiny (see `conformer-bench variants`)")
    configs = list(
        {c.name: c for c in (variant_config(n, **toggles, fused_attn=fused_attn) for n in names)}.values()
    )
    out_format = file_format(output, fmt) if output is not None else None
    if output is not None:
        check_writable(output)
        if append:
            sweep.check_appendable(output, str(out_format))
    elif append:
        raise BenchError("--append needs --output FILE.csv or FILE.jsonl to add the rows to")
    if plot is not None:
        if len(batch_sizes) < 2:
            raise BenchError(
                "--plot draws throughput against batch size; give several, e.g. --batch-size 1,2,4"
            )
        if mode == "none":
            raise BenchError("--plot needs timed points; use --mode infer, train or both")
        check_writable(plot)
    for cfg in configs:
        for size in img_sizes:
            refuse_huge(cfg, size if size is not None else cfg.img_size, force)
    base = ProfileSettings(
        device=resolve_device(device),
        mode=mode,
        channels_last=channels_last,
        threads=threads,
        warmup=warmup,
        iters=iters,
        count_flops=flops,
        cross_check=cross_check and flops,
        path="compiled" if compile_ else "optimized" if optimize else "plain",
        timing_reference=timing_reference,
    )
    sweep_points = sweep.points(configs, batch_sizes, img_sizes, precisions)
    if not quiet and sys.stderr.isatty():
        bar, update = fraction_progress("profile")
        with bar:
            records = sweep.run_sweep(sweep_points, base, progress=update)
    else:
        records = sweep.run_sweep(sweep_points, base)
    one = len(records) == 1

    def render_as(kind: str) -> str:
        if one and kind not in sweep.APPENDABLE:
            return render(records[0], kind)
        return sweep.render(records, kind)

    typer.echo(render_as(stdout_format), nl=False)
    if output is not None:
        writer = (lambda kind: sweep.appended(output, records, kind)) if append else render_as
        write_output(output, writer, fmt)
    if plot is not None:
        sweep.plot(records, plot)
        typer.echo(f"wrote {plot}", err=True)
    bad = [sweep.status_text(r) for r in records if r["status"] != "ok"]
    if bad and not one:
        typer.echo(f"{len(bad)} of {len(records)} point(s) did not finish ok", err=True)
    if bad:
        raise typer.Exit(1)
