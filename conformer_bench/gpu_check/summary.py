"""The GPU check's Markdown summary, rebuilt from its records (tables rendered and rounded by ``tables``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..records import ProfileRecord, SpeedRecord
from ..records.gpu_check import CheckResult, CheckStep, GpuCheckRecord
from ..tables import Column, Table
from .checks import TRAIN, Phase, Results, measured_phases

TRAIN_FLOP_FACTOR = 3  # forward + backward (about twice the forward)
PRECISION_ORDER = {"fp32": 0, "bf16": 1, "fp16": 2}
PATH_ORDER = {"plain": 0, "optimized": 1, "compiled": 2}


@dataclass(frozen=True)
class ProfileRow:
    """One measured phase of the profile table, in raw units."""

    variant: str
    path: str
    precision: str
    phase: str
    batch: str  # achieved, with the requested batch where the OOM back-off lowered it
    img_per_s: float
    gflop_s: float | None  # 2 x paper MACs per image x img/s (x 3 for training)
    ceiling_share: float | None  # of the matmul ceiling of the row's precision
    peak_bytes: int | None  # CUDA: peak allocated; CPU: peak resident-set increase
    reserved_bytes: int | None
    img_per_j: float | None


PROFILE_COLUMNS: tuple[Column[ProfileRow], ...] = (
    Column("variant", lambda r: r.variant),
    Column("path", lambda r: r.path),
    Column("precision", lambda r: r.precision),
    Column("phase", lambda r: r.phase),
    Column("batch", lambda r: r.batch),
    Column("throughput", lambda r: r.img_per_s, unit="img/s", digits=1),
    Column("achieved", lambda r: r.gflop_s, unit="TFLOP/s", digits=2, scale=1e3),
    Column("of matmul ceiling", lambda r: r.ceiling_share, unit="%", digits=1, scale=0.01),
    Column("peak allocated", lambda r: r.peak_bytes, unit="MiB", digits=0, scale=2**20),
    Column("peak reserved", lambda r: r.reserved_bytes, unit="MiB", digits=0, scale=2**20),
    Column("energy efficiency", lambda r: r.img_per_j, unit="img/J", digits=1),
)
CHECK_COLUMNS: tuple[Column[CheckResult], ...] = (
    Column("status", lambda c: c.status),
    Column("check", lambda c: c.name),
    Column("detail", lambda c: c.detail),
)
STEP_COLUMNS: tuple[Column[CheckStep], ...] = (
    Column("step", lambda s: s.name),
    Column("status", lambda s: s.status),
    Column("elapsed", lambda s: s.elapsed_s, unit="s", digits=1),
    Column("detail", lambda s: s.detail or ""),
)


def check_rows(record: GpuCheckRecord) -> tuple[Sequence[Column[CheckResult]], list[CheckResult]]:
    """The CSV form of a ``conformer-bench.gpu-check`` record: one row per check."""
    return CHECK_COLUMNS, list(record.checks)


def _macs_by_variant(results: Results) -> dict[str, int]:
    return {
        rec.variant.name: int(rec.flops.paper_macs)
        for rec in results.profiles.values()
        if rec.flops and rec.flops.paper_macs
    }


def _ceiling_gflop_s(results: Results, precision: str) -> float | None:
    ceiling = results.ceilings.ceilings.get(precision) if results.ceilings else None
    return ceiling.gflop_s if ceiling else None


def _row_order(phase: Phase) -> tuple[int, str, int, int, int]:
    """Variants by size (params), then precision, path and batch as the matrix lists them."""
    record: ProfileRecord = phase.record
    params = record.params.total if record.params else 0
    return (
        params or 0,
        record.variant.name,
        PRECISION_ORDER.get(phase.precision, 3),
        PATH_ORDER.get(phase.path, 3),
        phase.timing.requested_batch_size or 0,
    )


def _profile_row(results: Results, phase: Phase, macs: dict[str, int]) -> ProfileRow:
    t, variant = phase.timing, phase.record.variant.name
    flop = 2 * macs[variant] * (TRAIN_FLOP_FACTOR if phase.name == TRAIN else 1) if variant in macs else None
    gflop_s = flop * t.img_per_s / 1e9 if flop else None
    ceiling = _ceiling_gflop_s(results, phase.precision)
    batch = str(t.batch_size)
    if t.requested_batch_size is not None and t.batch_size != t.requested_batch_size:
        batch += f" (of {t.requested_batch_size} requested)"
    memory = phase.memory
    peak = getattr(memory, "peak_allocated_bytes", None)
    if peak is None:
        peak = getattr(memory, "peak_rss_increase_bytes", None)
    return ProfileRow(
        variant=variant,
        path=phase.run.path,
        precision=phase.run.precision,
        phase=phase.name,
        batch=batch,
        img_per_s=t.img_per_s,
        gflop_s=gflop_s,
        ceiling_share=gflop_s / ceiling if gflop_s and ceiling else None,
        peak_bytes=peak,
        reserved_bytes=getattr(memory, "peak_reserved_bytes", None),
        img_per_j=t.img_per_j or None,
    )


def profile_rows(results: Results) -> list[ProfileRow]:
    macs = _macs_by_variant(results)
    return [_profile_row(results, p, macs) for p in sorted(measured_phases(results), key=_row_order)]


def _header(results: Results) -> list[str]:
    env = results.environment
    device = env.device_name or env.cpu_model
    lines = [
        f"device: {device} ({env.device}), torch {env.torch}, CUDA {env.cuda}, "
        f"driver {env.driver}, {env.threads} CPU threads, {env.created}",
    ]
    ceilings = results.ceilings.ceilings if results.ceilings else {}
    if ceilings:
        lines.append(
            "matmul ceilings (median of torch.mm "
            + f"{next(iter(ceilings.values())).matmul_size}², same run): "
            + ", ".join(f"{k} {c.gflop_s / 1e3:.3g} TFLOP/s" for k, c in ceilings.items())
        )
    lines += [
        "throughput: batch / median iteration time (CUDA events on GPU); a few warm-ups, then timed iterations "
        "auto-ranged to a short budget per phase; train = forward, loss of both heads, backward, AdamW step",
        "achieved: 2 × paper MACs per image (conv + linear + attention matmuls, counted on the plain "
        f"model) × img/s, × {TRAIN_FLOP_FACTOR} for training; share of the matmul ceiling of the row's "
        "precision (fp32 rows: TF32 off; cuDNN convolutions use TF32 by default, so fp32 shares can pass 100 %)",
        "peak allocated / reserved: torch.cuda peak stats of the phase (CPU: peak resident-set increase); "
        "energy efficiency: images of the timed loop / NVML energy of the loop",
    ]
    return lines


def _speed_markdown(record: SpeedRecord) -> str:
    from ..speed import render  # numpy and the measurement code: only when a speed record is rendered

    return render(record, "md")


def render_summary(results: Results, checks: list[CheckResult]) -> str:
    title = "GPU check" + (" (CPU rehearsal)" if results.environment.rehearsal else "")
    parts = [f"# {title}", "", *(f"- {line}" for line in _header(results)), ""]
    parts += ["## Checks", "", Table(CHECK_COLUMNS, checks).render("md")]
    parts += ["## Profiles", "", Table(PROFILE_COLUMNS, profile_rows(results)).render("md")]
    if results.speed:
        parts += ["## Speed (interleaved paths)", "", _speed_markdown(results.speed), ""]
    parts += ["## Steps", "", Table(STEP_COLUMNS, list(results.steps.values())).render("md")]
    return "\n".join(parts)
