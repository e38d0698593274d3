"""``conformer-bench finetune``: a short training run that reports what a variant buys in accuracy."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    BatchSizeOpt,
    DeviceOpt,
    ForceOpt,
    FormatOpt,
    OutputOpt,
    PrecisionOpt,
    QuietOpt,
    VariantOpt,
    aliases,
    exit_unless_ok,
    handle_errors,
    parse_format,
    toggle_options,
    variant_config,
    write_output,
)

TRAIN = "Training"
DATA = "Data"


def summary_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per head (conv, trans, sum) with raw, unrounded values."""
    final = record["final"]
    hyper = record["hyper"]
    rows = []
    for head in ("conv", "trans", "sum"):
        top1 = final["top1"].get(head)
        if top1 is None and record["status"] == "ok":
            continue  # the variant has no such head
        rows.append(
            {
                "variant": record["variant"]["label"],
                "dataset": record["data"]["source"],
                "head": head,
                "top1_pct": top1,
                "top5_pct": final["top5"].get(head) if "top5" in final else None,
                "val_loss": final["val_loss"],
                "epochs": hyper["epochs"],
                "steps": final["steps_done"],
                "train_img_per_s": final["img_per_s"],
                "wall_s": final["wall_s"],
                "status": record["status"],
            }
        )
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(record: dict[str, Any], fmt: str) -> str:
    """The record as json, jsonl, csv, a markdown table or the terminal table as plain text."""
    from ..files import dumps_json
    from ..formatting import rows_jsonl

    rows = summary_rows(record)
    if fmt == "json":
        return dumps_json(record)
    if fmt == "jsonl":
        return rows_jsonl(rows)
    if fmt == "table":
        from rich.console import Console

        console = Console(file=io.StringIO(), width=120, color_system=None, force_terminal=False)
        print_table(record, console)
        return str(console.file.getvalue())  # type: ignore[attr-defined]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["status"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows or [{"status": record["status"]}])
        return buf.getvalue()
    header = [
        "variant",
        "dataset",
        "head",
        "top-1 %",
        "top-5 %",
        "val loss",
        "epochs",
        "steps",
        "train img/s",
        "wall s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["variant"],
            r["dataset"],
            r["head"],
            _fmt(r["top1_pct"]),
            _fmt(r["top5_pct"]),
            _fmt(r["val_loss"], 4),
            r["epochs"],
            r["steps"],
            _fmt(r["train_img_per_s"], 0),
            _fmt(r["wall_s"], 1),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(record: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    env = record["environment"]
    hyper = record["hyper"]
    data = record["data"]
    dist = hyper["distributed"]
    title = (
        f"{record['variant']['label']} on {data['source']} ({data['num_classes']} classes, "
        f"{data['train_size']} train / {data['val_size']} val, {data['img_size']}px)"
    )
    table = Table()
    top5 = "top5" in record["final"]  # only with >= 5 classes
    for col in ("head", "top-1 %", "top-5 %")[: 3 if top5 else 2]:
        table.add_column(col, justify="right" if col != "head" else "left")
    for r in summary_rows(record):
        table.add_row(r["head"], _fmt(r["top1_pct"]), *([_fmt(r["top5_pct"])] if top5 else []))
    console = console or Console()
    console.print(title, highlight=False)
    console.print(table)
    final = record["final"]
    extra = ""
    if "cue_top1" in final and final["cue_top1"]["local"] is not None:
        extra = (
            f"cue top-1 (sum head): texture {final['cue_top1']['local']:.2f} %, "
            f"arrangement {final['cue_top1']['global']:.2f} %\n"
        )
    extra += _bf16_inference_line(final.get("bf16_inference"))
    console.print(
        f"{extra}val loss {_fmt(final['val_loss'], 4)} "
        + (
            f"after {hyper['epochs']} epoch(s), {final['steps_done']} steps\n"
            if record["status"] != "nan"
            else f"(stopped at step {final['steps_done']}; {hyper['epochs']} epoch(s) were planned)\n"
        )
        + f"batch {hyper['batch_size']} x {dist['world_size']} process(es), lr {hyper['lr']:g}, seed {hyper['seed']}\n"
        f"train {_fmt(final['img_per_s'], 0)} img/s, wall {final['wall_s']:.1f} s\n"
        f"{env['device']} ({env.get('device_name') or env['cpu_model']}), {env['precision']}, "
        f"{env['threads']} thread(s) per process"
        + (
            f"\nskipped files (not images or undecodable): {data['skipped_files']}"
            if data.get("skipped_files")
            else ""
        ),
        highlight=False,
    )


def _bf16_inference_line(check: dict[str, Any] | None) -> str:
    if check is None:
        return ""
    if check["status"] != "ok":
        return f"bf16 inference: {check['reason']}\n"
    heads = [h for h in ("conv", "trans", "sum") if check["top1_fp32"][h] is not None]
    top1 = ", ".join(f"{h} {check['top1_bf16'][h]:.2f} % (fp32 {check['top1_fp32'][h]:.2f} %)" for h in heads)
    agree = ", ".join(f"{h} {check['top1_agreement'][h]:.2f} %" for h in heads)
    return (
        f"bf16 inference ({check['kernels']}), {check['count']} validation images: top-1 {top1}; "
        f"agreement with fp32 {agree}; logits rel err {check['max_rel_diff']:.1e}\n"
    )


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
    warmup: Annotated[
        float,
        typer.Option(
            "--warmup",
            help="Warm-up: below 1 a fraction of all steps, else epochs.",
            rich_help_panel=TRAIN,
        ),
    ] = 0.1,
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
    fmt: FormatOpt = None,
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
    from ..files import check_outputs_apart, check_writable
    from ..finetune import FinetuneSettings, run_finetune

    stdout_format = parse_format(fmt)
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
        warmup=warmup,
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
    from ..bounds import check_bounds

    check_bounds(cfg, settings, force=force)
    record = run_finetune(cfg, settings, show_progress=not quiet)
    if not main:
        return
    write_output(output, lambda kind: render(record, kind), fmt)
    if stdout_format == "table":
        print_table(record)
    else:
        typer.echo(render(record, stdout_format), nl=False)
    _warn_partial_checkpoint(record)
    exit_unless_ok(record)


def _warn_partial_checkpoint(record: dict[str, Any]) -> None:
    ckpt = record.get("checkpoint") or {}
    if ckpt.get("partial"):
        typer.echo(
            f"warning: partial checkpoint {ckpt['path']}: {ckpt['body_missing']} key(s) of the variant "
            f"missing and {ckpt['body_unexpected']} unexpected outside the heads (of {ckpt['model_keys']}); "
            "those weights start from scratch (--allow-partial)",
            err=True,
        )
