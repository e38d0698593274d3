"""``conformer-bench profile``: params, FLOPs, memory and throughput of a variant, or a sweep of them."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import BenchError
from .common import (
    OUTPUT,
    BatchSizesOpt,
    BreakdownOpt,
    DeviceOpt,
    ForceOpt,
    ImgSizesOpt,
    OutputOpt,
    PrecisionOpt,
    QuietOpt,
    ThreadsOpt,
    aliases,
    given,
    handle_errors,
    measure_option,
    toggle_options,
    variant_config,
    with_progress,
)

if TYPE_CHECKING:
    from ..records import ProfileRecord
    from ..sweep import Point

# Profiles render through conformer_bench.formatting, imported when the command runs (it keeps
# `conformer-bench --help` from loading the record and FLOP modules).

app = typer.Typer()

ProfileFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        help="table (default), json, jsonl (one record a line), csv (tidy rows), md or latex on stdout "
        "(any case).",
        rich_help_panel=OUTPUT,
    ),
]

SWEEP = "Sweep"
EXAMPLES = """Examples:

conformer-bench profile --variant tiny

conformer-bench profile --variant micro --img-size 64 --mode infer --device cpu -f JSON -o micro.json

conformer-bench profile --variant micro,tiny --img-size 64 --batch-size 1,2 --mode infer --iters 2 -o results.csv

conformer-bench profile --model-list models.txt --batch-size 1,8,32 --precision fp32,bf16 --mode infer -o results.csv --append --plot throughput.png

conformer-bench profile --variant small --no-fcu --mode none

conformer-bench profile --variant tiny --batch-size 8 --mode infer --precision bf16 --breakdown

conformer-bench profile --variant tiny --batch-size 8 --mode infer --backend openvino"""


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
        str, measure_option("--mode", help_text="infer, train, both, or none (params and FLOPs only).")
    ] = "both",
    precision: PrecisionOpt = "fp32",
    channels_last: Annotated[
        bool, measure_option("--channels-last", help_text="Channels-last memory format for model and input.")
    ] = False,
    threads: ThreadsOpt = None,
    warmup: Annotated[
        int | None,
        measure_option("--warmup", help_text="Warm-up iterations per phase (default: 1 on CPU, 10 on GPU)."),
    ] = None,
    iters: Annotated[
        int | None,
        measure_option(
            "--iters", help_text="Timed iterations per phase (default: auto-ranged to a time budget)."
        ),
    ] = None,
    optimize: Annotated[
        bool,
        measure_option(
            "--optimize",
            help_text="Measure inference on the optimized eager path (folded BN, channels-last).",
        ),
    ] = False,
    compile_: Annotated[
        bool,
        measure_option(
            "--compile", help_text="Measure the optimized path under torch.compile (train: torch.compile)."
        ),
    ] = False,
    backend: Annotated[
        str,
        measure_option(
            "--backend",
            help_text="Where inference runs: eager (default), onnxruntime or openvino (the ONNX export; "
            "`pip install -e .[deploy]`). Training stays eager.",
        ),
    ] = "eager",
    breakdown: BreakdownOpt = False,
    timing_reference: Annotated[
        bool,
        measure_option(
            "--timing-reference",
            help_text="CPU: time a fixed fp32 GEMM after every iteration and also report img per reference "
            "GFLOP, a speed that holds on a shared, noisy host.",
        ),
    ] = False,
    flops: Annotated[
        bool, measure_option("--flops/--no-flops", help_text="Count FLOPs (fvcore, batch 1, eval).")
    ] = True,
    cross_check: Annotated[
        bool,
        measure_option(
            "--cross-check/--no-cross-check", help_text="Cross-check FLOPs with torch's FlopCounterMode."
        ),
    ] = True,
    output: OutputOpt = None,
    fmt: ProfileFormatOpt = None,
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
    from ..backends import parse_backends, require_installed
    from ..bounds import check_bounds
    from ..env import resolve_device
    from ..files import check_outputs_apart
    from ..formatting import PROFILE_FORMATS, parse_format
    from ..profiling import MODES, PRECISIONS, ProfileSettings

    stdout_format = parse_format(fmt, choices=PROFILE_FORMATS)

    backends = parse_backends(backend)
    if len(backends) > 1:
        raise BenchError(
            "--backend takes one backend in profile; compare several with `conformer-bench speed`"
        )
    require_installed(backends)
    mode = sweep.parse_mode(mode, MODES)
    precisions = sweep.parse_choices(precision, "--precision", PRECISIONS)
    batch_sizes = sweep.parse_ints(batch_size, "--batch-size")
    img_sizes = sweep.parse_ints(img_size, "--img-size")
    names = sweep.variant_names(variant, model_list, given("variant") or given("model"))
    configs = list(
        {c.name: c for c in (variant_config(n, **toggles, fused_attn=fused_attn) for n in names)}.values()
    )
    check_outputs_apart(
        {"--output": output, "--plot": plot}, {"--model-list": [model_list] if model_list else []}
    )
    sweep.check_targets(output, fmt, append, plot, batch_sizes, mode)
    for cfg in configs:
        for size in img_sizes:
            check_bounds(cfg, img_size=size, force=force)
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
        backend=backends[0],
        breakdown=breakdown,
    )
    sweep_points: list[Point] = sweep.points(configs, batch_sizes, img_sizes, precisions)
    show = not quiet and sys.stderr.isatty()
    records = with_progress("profile", show, partial(sweep.run_sweep, sweep_points, base))
    _write_records(records, stdout_format, output, fmt, append, plot)


def _write_records(
    records: list[ProfileRecord],
    stdout_format: str,
    output: str | None,
    fmt: str | None,
    append: bool,
    plot: Path | None,
) -> None:
    """Print the records, write ``--output`` and ``--plot``; exit 1 when a point did not finish ok."""
    from .. import sweep
    from ..formatting import PROFILE_FORMATS, write_output
    from ..records import Status

    typer.echo(sweep.render_records(records, stdout_format), nl=False)
    if output is not None:
        out = output
        if append:
            write_output(out, lambda kind: sweep.appended(out, records, kind), fmt, PROFILE_FORMATS)
        else:
            write_output(out, lambda kind: sweep.render_records(records, kind), fmt, PROFILE_FORMATS)
    if plot is not None:
        sweep.plot(records, plot)
        typer.echo(f"wrote {plot}", err=True)
    bad = [sweep.status_text(r) for r in records if r.status != Status.OK]
    if bad and len(records) > 1:
        typer.echo(f"{len(bad)} of {len(records)} point(s) did not finish ok", err=True)
    if bad:
        raise typer.Exit(1)
