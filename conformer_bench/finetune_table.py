"""The fine-tune record's tables, declared once: CSV, JSON lines, Markdown, LaTeX, the terminal, DataFrames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .files import dumps_json
from .records import FinetuneEpoch, FinetuneRecord, Status
from .records.finetune import Bf16Inference
from .tables import Column, Table, shown

HEADS = ("sum", "conv", "trans")  # the summed head first: the headline number


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
