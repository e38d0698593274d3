"""``conformer-bench finetune``: a short training run that reports what a variant buys in accuracy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..bounds import check_bounds
from ..errors import BenchError
from ..files import check_outputs_apart, check_writable, dumps_json
from ..formatting import parse_format
from ..records import FinetuneEpoch, FinetuneRecord, FinetuneSettings, Status
from ..records.finetune import DEFAULT_WARMUP, Bf16Inference
from ..tables import FORMATS, Column, Table, shown
from .common import (
    OUTPUT,
    BatchSizeOpt,
    DeviceOpt,
    ForceOpt,
    OutputOpt,
    PrecisionOpt,
    QuietOpt,
    VariantOpt,
    aliases,
    given,
    handle_errors,
    toggle_options,
    variant_config,
    write_output,
)

TRAIN = "Training"
DATA = "Data"
HEADS = ("sum", "conv", "trans")  # the summed head first: the headline number


# --- the columns, declared once: CSV, JSON lines, Markdown, LaTeX, the terminal and DataFrames ---------------
def _top1(head: str) -> Callable[[FinetuneRecord], float | None]:
    return lambda r: r.final.top1.get(head)


def _top5(head: str) -> Callable[[FinetuneRecord], float | None]:
    return lambda r: r.final.top5.get(head) if r.final.top5 is not None else None


def _cue(cue: str) -> Callable[[FinetuneRecord], float | None]:
    return lambda r: r.final.cue_top1.get(cue) if r.final.cue_top1 is not None else None


def _epoch_top1(head: str) -> Callable[[FinetuneEpoch], float | None]:
    return lambda e: e.top1.get(head)


SUMMARY: list[Column[FinetuneRecord]] = [
    Column("variant", lambda r: r.variant.label, help="the label the variant ran under"),
    Column("dataset", lambda r: r.data.source),
    Column("status", lambda r: str(r.status), help="ok, nan (the loss became non-finite) or failed"),
    *(
        Column(f"top1_{h}", _top1(h), "%", 2, f"validation top-1 of the {h} head after the last epoch")
        for h in HEADS
    ),
    *(
        Column(f"top5_{h}", _top5(h), "%", 2, f"validation top-5 of the {h} head (5 classes or more)")
        for h in HEADS
    ),
    Column("cue_local", _cue("local"), "%", 2, "local-global: predictions with the right texture"),
    Column("cue_global", _cue("global"), "%", 2, "local-global: predictions with the right arrangement"),
    Column("val_loss", lambda r: r.final.val_loss, digits=4, help="cross-entropy, mean over heads"),
    Column("epochs", lambda r: r.hyper.epochs, digits=0),
    Column("steps", lambda r: r.final.steps_done, digits=0, help="optimizer steps done"),
    Column(
        "train_img_per_s", lambda r: r.final.img_per_s, "img/s", 0, "training images per second, all ranks"
    ),
    Column("wall_s", lambda r: r.final.wall_s, "s", 1, "the whole run, data and evaluation included"),
    Column(
        "peak_memory_mib",
        lambda r: r.final.peak_memory_bytes,
        "MiB",
        1,
        "peak allocated (CUDA) or peak resident set (CPU)",
        scale=2**20,
    ),
]

EPOCHS: list[Column[FinetuneEpoch]] = [
    Column("epoch", lambda e: e.epoch, digits=0),
    Column("step", lambda e: e.step, digits=0),
    Column("lr", lambda e: e.lr, digits=6, help="learning rate of the epoch's last step"),
    Column("train_loss", lambda e: e.train_loss, digits=4),
    Column("train_top1", lambda e: e.train_top1, "%", 2, "summed head, over the epoch's steps"),
    Column("val_loss", lambda e: e.val_loss, digits=4),
    *(Column(f"top1_{h}", _epoch_top1(h), "%", 2) for h in HEADS),
    Column("img_per_s", lambda e: e.img_per_s, "img/s", 0, "training images per second on this rank"),
    Column("epoch_s", lambda e: e.epoch_s, "s", 1),
    Column("eval_s", lambda e: e.eval_s, "s", 1),
]


def tidy(record: FinetuneRecord) -> tuple[list[Column[FinetuneRecord]], list[FinetuneRecord]]:
    """The CSV form of a record: one row per record (``conformer_bench.to_frame``)."""
    return SUMMARY, [record]


def _title(record: FinetuneRecord) -> str:
    data = record.data
    return (
        f"{record.variant.label} on {data.source} ({data.num_classes} classes, "
        f"{data.train_size} train / {data.val_size} val, {data.img_size}px)"
    )


def _notes(record: FinetuneRecord) -> list[str]:
    """What the columns do not hold: why it stopped, bf16 inference, the budget, the machine, skipped files."""
    final, hyper, env = record.final, record.hyper, record.environment
    notes = []
    if record.status != Status.OK:
        notes.append(f"{record.status}: {record.reason}")
    if final.bf16_inference is not None:
        notes.append(_bf16_inference_line(final.bf16_inference))
    if record.status == Status.NAN:
        notes.append(f"(stopped at step {final.steps_done}; {hyper.epochs} epoch(s) were planned)")
    notes.append(
        f"batch {hyper.batch_size} x {hyper.distributed.world_size} process(es), lr {hyper.lr:g}, "
        f"lr warm-up {hyper.warmup_steps} step(s), seed {hyper.seed}"
    )
    notes.append(
        f"{env.device} ({env.device_name or env.cpu_model}), {env.precision}, {env.threads} thread(s) per process"
    )
    if record.data.skipped_files:
        notes.append(f"skipped files (not images or undecodable): {record.data.skipped_files}")
    return notes


def _bf16_inference_line(check: Bf16Inference) -> str:
    if check.status != Status.OK:
        return f"bf16 inference: {check.reason}"
    fp32, bf16, agreement = check.top1_fp32 or {}, check.top1_bf16 or {}, check.top1_agreement or {}
    heads = [h for h in HEADS if fp32.get(h) is not None]
    top1 = ", ".join(f"{h} {shown(bf16.get(h))} % (fp32 {shown(fp32.get(h))} %)" for h in heads)
    agree = ", ".join(f"{h} {shown(agreement.get(h))} %" for h in heads)
    return (
        f"bf16 inference ({check.kernels}), {check.count} validation images: top-1 {top1}; "
        f"agreement with fp32 {agree}; logits rel err {check.max_rel_diff:.1e}"
    )


def tables(record: FinetuneRecord, *, terminal: bool = False) -> list[Table[Any]]:
    """The run's summary (one row; on a terminal one line per column) and its epoch-by-epoch table."""
    title, notes = _title(record), _notes(record)
    if terminal:  # the summary's columns as rows: a terminal is narrower than the summary is wide
        card: list[Column[Column[FinetuneRecord]]] = [
            Column("column", lambda c: c.header),
            Column("value", lambda c: c.text(record), digits=0),  # right-aligned
        ]
        out: list[Table[Any]] = [Table(card, SUMMARY, title=title)]
    else:
        out = [Table(SUMMARY, [record], title=title, notes=notes)]
    if record.history:
        out.append(Table(EPOCHS, record.history, title="per epoch"))
    return out


def render(record: FinetuneRecord, fmt: str) -> str:
    """The record as JSON (the record file), its summary row as CSV or JSON lines, or its summary and epoch
    tables as Markdown, LaTeX or the terminal's text."""
    if fmt == "json":
        return dumps_json(record.to_dict())
    if fmt == "table":
        summary, *more = tables(record, terminal=True)
        notes = "".join(f"{line}\n" for line in _notes(record))
        return "\n".join([summary.render(fmt) + notes, *(t.render(fmt) for t in more)])
    summary, *more = tables(record)
    if fmt in ("csv", "jsonl"):
        return summary.render(fmt)
    return "\n".join(t.render(fmt) for t in (summary, *more))


def print_table(record: FinetuneRecord) -> None:
    """The summary, what it does not hold, and the epochs, on the terminal."""
    from rich.console import Console

    console = Console()
    summary, *more = tables(record, terminal=True)
    console.print(summary.to_rich())
    for line in _notes(record):
        console.print(line, highlight=False, markup=False)
    for table in more:
        console.print(table.to_rich())


def _exit_unless_ok(record: FinetuneRecord) -> None:
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
    ] = DEFAULT_WARMUP,
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
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            help="table (default), json, jsonl, csv, md or latex on stdout (any case).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
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

    stdout_format = parse_format(fmt, choices=FORMATS)
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
