"""``conformer-bench speed``: plain vs optimized vs compiled inference, measured interleaved in one process."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from ..bounds import check_bounds
from ..env import resolve_device
from ..files import check_writable
from .common import (
    BatchSizeOpt,
    BreakdownOpt,
    DeviceOpt,
    ForceOpt,
    ImgSizeOpt,
    OutputOpt,
    PrecisionOpt,
    QuietOpt,
    TableFormatOpt,
    ThreadsOpt,
    VariantOpt,
    aliases,
    handle_errors,
    measure_option,
    toggle_options,
    variant_config,
    with_progress,
    write_output,
)

app = typer.Typer()


EXAMPLES = """Examples:

conformer-bench speed --variant tiny --device cpu

conformer-bench speed --variant micro --img-size 64 --paths plain,optimized --precision fp32 --rounds 5 -f json -o speed.json

conformer-bench speed --variant small --device cuda --batch-size 64 --precision fp32,bf16

conformer-bench speed --variant tiny --batch-size 8 --backend eager,onnxruntime,openvino --breakdown"""


@app.command("speed", epilog=EXAMPLES)
@handle_errors
@aliases()
@toggle_options
def speed(
    variant: VariantOpt = "tiny",
    paths: Annotated[
        str, measure_option("--paths", help_text="Comma list of plain, optimized, compiled.")
    ] = "plain,optimized,compiled",
    precision: PrecisionOpt = "fp32,bf16",
    backend: Annotated[
        str,
        measure_option(
            "--backend",
            help_text="Comma list of eager (the --paths), onnxruntime, openvino; the last two need "
            "`pip install -e .[deploy]`. Plain fp32 always runs as the reference.",
        ),
    ] = "eager",
    breakdown: BreakdownOpt = False,
    breakdown_rounds: Annotated[
        int, measure_option("--breakdown-rounds", help_text="Interleaved rounds of the time by component.")
    ] = 5,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 8,
    img_size: ImgSizeOpt = None,
    rounds: Annotated[
        int, measure_option("--rounds", help_text="Interleaved rounds (one forward per path each).")
    ] = 10,
    warmup: Annotated[
        int, measure_option("--warmup", help_text="Warm-up calls per path after the first call.")
    ] = 2,
    threads: ThreadsOpt = None,
    matmul_size: Annotated[
        int,
        measure_option(
            "--matmul-size", help_text="n of the n×n matmul timed as the ceiling, once per precision."
        ),
    ] = 2048,
    fold_bn: Annotated[
        bool,
        measure_option(
            "--fold-bn/--no-fold-bn", help_text="Fold BatchNorm into convs (optimized, compiled)."
        ),
    ] = True,
    channels_last: Annotated[
        bool,
        measure_option(
            "--channels-last/--no-channels-last", help_text="Channels-last weights (optimized, compiled)."
        ),
    ] = True,
    fuse_pointwise: Annotated[
        bool,
        measure_option(
            "--fuse/--no-fuse",
            help_text="Fused oneDNN conv/linear + activation/residual ops (optimized, CPU fp32).",
        ),
    ] = True,
    pool_first: Annotated[
        bool,
        measure_option(
            "--pool-first/--no-pool-first",
            help_text="FCU-down: average-pool before the 1x1 projection (exact; optimized, compiled).",
        ),
    ] = True,
    agreement_images: Annotated[
        int,
        measure_option(
            "--agreement-images",
            help_text="Seeded images on which top-1 agreement with plain fp32 is counted (0: none).",
        ),
    ] = 32,
    seed: Annotated[int, measure_option("--seed", help_text="Seed of weights and input.")] = 0,
    output: OutputOpt = None,
    fmt: TableFormatOpt = None,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    *,
    toggles: dict[str, Any],
) -> None:
    """Images/s of the plain, optimized and compiled inference paths and of the deployment backends per
    precision, interleaved in one process, with each one's logits checked against plain fp32.

    Precisions: a comma list of fp32 and bf16; every path runs in each (bf16 only where the device has it
    natively, otherwise reported as not supported). Backends: ONNX Runtime and OpenVINO run the model's
    ONNX export (cached per config and weights); a precision or variant a backend cannot run is recorded as
    unsupported with the reason.
    """
    from ..backends import parse_backends, require_installed
    from ..records import Status
    from ..speed import SpeedSettings, measure_speed, parse_list, render
    from ..tables import FORMATS, parse_format

    stdout_format = parse_format(fmt, FORMATS)
    backends = parse_backends(backend)
    require_installed(backends)
    cfg = variant_config(variant, **toggles)
    settings = SpeedSettings(
        device=resolve_device(device),
        batch_size=batch_size,
        img_size=img_size or cfg.img_size,
        paths=parse_list(paths, "--paths"),
        precisions=parse_list(precision, "--precision"),
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
        backends=backends,
        breakdown=breakdown,
        breakdown_rounds=breakdown_rounds,
    )
    settings.validate(cfg.patch_size)
    check_bounds(cfg, settings, force=force)
    if output is not None:
        check_writable(output)
    record = with_progress("speed", not quiet, partial(measure_speed, cfg, settings))
    if output is not None:
        tex = Path(output).suffix.lower() == ".tex"
        write_output(output, lambda kind: render(record, "latex" if tex else kind), None if tex else fmt)
    typer.echo(render(record, stdout_format), nl=False)
    if record.status != Status.OK:
        typer.echo(f"error: {record.reason}", err=True)
        raise typer.Exit(1)
