"""``conformer-bench finetune``: a short training run that reports what a variant buys in accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..bounds import check_bounds
from ..errors import BenchError
from ..files import check_outputs_apart, check_writable
from .common import (
    BatchSizeOpt,
    DeviceOpt,
    ForceOpt,
    OutputOpt,
    PrecisionOpt,
    QuietOpt,
    TableFormatOpt,
    VariantOpt,
    aliases,
    given,
    handle_errors,
    toggle_options,
    variant_config,
    write_output,
)

if TYPE_CHECKING:
    from ..records import FinetuneRecord

TRAIN = "Training"
DATA = "Data"


def _exit_unless_ok(record: FinetuneRecord) -> None:
    from ..records import Status

    if record.status != Status.OK:
        typer.echo(f"error: {record.reason}", err=True)
        raise typer.Exit(1)


def _warn_partial_checkpoint(record: FinetuneRecord) -> None:
    ckpt = record.checkpoint
    if ckpt is not None and ckpt.partial:
        typer.echo(
            f"warning: partial checkpoint {ckpt.path}: {ckpt.body_missing} key(s) of the variant "
            f"missing and {ckpt.body_unexpected} unexpected outside the heads (of {ckpt.model_keys}); "
            "those weights start from scratch (--allow-partial)",
            err=True,
        )


def _lr_warmup(lr_warmup: float, warmup: float | None) -> float:
    """``--lr-warmup``, or its former spelling ``--warmup`` (still read, with a warning on stderr)."""
    if warmup is None:
        return lr_warmup
    if given("lr_warmup"):
        raise BenchError("--warmup is the old spelling of --lr-warmup; give only --lr-warmup")
    typer.echo(
        "warning: finetune --warmup is deprecated; use --lr-warmup (the learning-rate warm-up)", err=True
    )
    return warmup


def _output_format(output: str, kind: str) -> str:
    """The file format of ``--output``: LaTeX for ``.tex``, else what the extension or --format say."""
    return "latex" if Path(output).suffix.lower() == ".tex" else kind


app = typer.Typer()

EXAMPLES = """Examples:

conformer-bench finetune --variant micro --steps 20 --device cpu

conformer-bench finetune --variant nano --dataset local-global --epochs 2 -f json -o finetune.json

conformer-bench finetune --variant micro --dataset local-global --steps 30 --bf16-inference -o micro.csv

torchrun --nproc-per-node 2 -m conformer_bench finetune --variant micro --steps 50 -q"""


@app.command("finetune", epilog=EXAMPLES)
@handle_errors
@aliases()
@toggle_options
def finetune(
    variant: VariantOpt = "micro",
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Release .pth to start from; both heads are replaced."),
    ] = None,
    dataset: Annotated[
        str,
        typer.Option("--dataset", help="digits, local-global, or an ImageFolder path.", rich_help_panel=DATA),
    ] = "digits",
    img_size: Annotated[
        int | None,
        typer.Option(
            "--img-size",
            help="Input size (default: 32 for digits/local-global, 64 for folders).",
            rich_help_panel=DATA,
        ),
    ] = None,
    train_size: Annotated[
        int | None,
        typer.Option(
            "--train-size",
            help="Cap (folder/digits) or set (local-global) the training images.",
            rich_help_panel=DATA,
        ),
    ] = None,
    val_size: Annotated[
        int | None,
        typer.Option("--val-size", help="Cap or set the validation images.", rich_help_panel=DATA),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="DataLoader worker processes.", rich_help_panel=DATA)
    ] = 0,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="Epochs (default 8); excludes --steps.", rich_help_panel=TRAIN),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="Optimizer steps; excludes --epochs.", rich_help_panel=TRAIN),
    ] = None,
    batch_size: BatchSizeOpt = 64,
    lr: Annotated[
        float, typer.Option("--lr", help="Peak AdamW learning rate.", rich_help_panel=TRAIN)
    ] = 2e-3,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", help="AdamW weight decay.", rich_help_panel=TRAIN)
    ] = 0.05,
    lr_warmup: Annotated[
        float,
        typer.Option(
            "--lr-warmup",
            help="Learning-rate warm-up: below 1 a fraction of all steps, else epochs.",
            rich_help_panel=TRAIN,
        ),
    ] = 0.1,
    warmup: Annotated[float | None, typer.Option("--warmup", hidden=True)] = None,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", rich_help_panel=TRAIN)] = 0.0,
    drop_path: Annotated[
        float | None,
        typer.Option(
            "--drop-path", help="Stochastic depth rate (default: the variant's).", rich_help_panel=TRAIN
        ),
    ] = None,
    clip_grad: Annotated[
        float | None,
        typer.Option("--clip-grad", help="Clip the gradient norm to this value.", rich_help_panel=TRAIN),
    ] = None,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Seeds init, data split, order and augmentation.", rich_help_panel=TRAIN),
    ] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    channels_last: Annotated[
        bool, typer.Option("--channels-last", help="Channels-last memory format.")
    ] = False,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            help="Start from a --checkpoint that lacks keys of the variant (or has extra ones) outside "
            "the heads; the record and the terminal say how many.",
        ),
    ] = False,
    bf16_inference: Annotated[
        bool,
        typer.Option(
            "--bf16-inference",
            help="After training, also evaluate with bf16 inference (optimize_for_inference) against fp32: "
            "top-1 per head and their agreement.",
        ),
    ] = False,
    save: Annotated[
        Path | None, typer.Option("--save", help="Write the fine-tuned weights (release keys).")
    ] = None,
    output: OutputOpt = None,
    fmt: TableFormatOpt = None,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    *,
    toggles: dict[str, Any],
) -> None:
    """Train or fine-tune a variant for a short, fixed budget and report top-1/top-5 per head.

    Precision: fp32, bf16 (autocast) or fp16 (CUDA, grad scaler).
    Runs under torchrun too (DDP: gloo on CPU, NCCL on GPU); only rank 0 prints and writes.
    Exit status 1 when the loss became non-finite (the record is still written, status "nan").
    """
    from ..distributed import is_main_process
    from ..finetune import run_finetune
    from ..finetune_table import print_table, render
    from ..records import FinetuneSettings
    from ..tables import FORMATS, parse_format

    stdout_format = parse_format(fmt, FORMATS)
    lr_warmup = _lr_warmup(lr_warmup, warmup)
    cfg = variant_config(variant, **toggles)
    main = is_main_process()
    check_outputs_apart(
        {"--output": output, "--save": save}, {"--checkpoint": [checkpoint] if checkpoint else []}
    )
    if output is not None and main:
        check_writable(output)
    settings = FinetuneSettings(
        dataset=dataset,
        img_size=img_size,
        epochs=epochs,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=lr_warmup,
        label_smoothing=label_smoothing,
        drop_path=drop_path,
        clip_grad=clip_grad,
        seed=seed,
        device=device,
        precision=precision,
        channels_last=channels_last,
        workers=workers,
        checkpoint=str(checkpoint) if checkpoint else None,
        allow_partial=allow_partial,
        save=str(save) if save else None,
        train_size=train_size,
        val_size=val_size,
        bf16_inference=bf16_inference,
    )
    check_bounds(cfg, settings, force=force)
    record = run_finetune(cfg, settings, show_progress=not quiet)
    if not main:
        return
    if output is not None:
        write_output(output, lambda kind: render(record, _output_format(output, kind)), fmt)
    if stdout_format == "table":
        print_table(record)
    else:
        typer.echo(render(record, stdout_format), nl=False)
    _warn_partial_checkpoint(record)
    _exit_unless_ok(record)
