"""The GPU check's Markdown summary, rebuilt from its records (rounding happens here only)."""

from __future__ import annotations

from typing import Any

from ..formatting import render_rows_md
from .checks import CheckResult, Results

TRAIN_FLOP_FACTOR = 3  # forward + backward (about twice the forward)
COLUMNS = (
    "variant",
    "path",
    "precision",
    "phase",
    "batch",
    "img/s",
    "achieved TFLOP/s",
    "of matmul ceiling",
    "peak allocated",
    "peak reserved",
    "img/J",
)


def _macs_by_variant(results: Results) -> dict[str, int]:
    macs = {}
    for rec in results.profiles.values():
        flops = rec.get("flops") or {}
        if flops.get("paper_macs"):
            macs[rec["variant"]["name"]] = int(flops["paper_macs"])
    return macs


def _ceiling_gflop_s(results: Results, precision: str) -> float | None:
    ceiling = ((results.ceilings or {}).get("ceilings") or {}).get(precision)
    return ceiling["gflop_s"] if ceiling else None


def _row_order(record: dict[str, Any]) -> tuple[Any, ...]:
    """Variants by size (params), then precision, path and batch as the matrix lists them."""
    s = record["settings"]
    precision = {"fp32": 0, "bf16": 1, "fp16": 2}.get(s["precision"], 3)
    path = {"plain": 0, "optimized": 1, "compiled": 2}.get(s["path"], 3)
    params = (record.get("params") or {}).get("total") or 0
    return (params, record["variant"]["name"], precision, path, s.get("batch_size") or 0)


def profile_rows(results: Results) -> list[list[str]]:
    macs = _macs_by_variant(results)
    rows = []
    for rec in sorted(results.profiles.values(), key=_row_order):
        settings = rec["settings"]
        for phase, t in (rec.get("throughput") or {}).items():
            mem = ((rec.get("memory") or {}).get(phase)) or {}
            precision = t.get("precision", settings["precision"])
            variant = rec["variant"]["name"]
            flop = (
                2 * macs[variant] * (TRAIN_FLOP_FACTOR if phase == "train" else 1)
                if variant in macs
                else None
            )
            gflop_s = flop * t["img_per_s"] / 1e9 if flop else None
            ceiling = _ceiling_gflop_s(results, settings["precision"])
            batch = str(t["batch_size"])
            if t["batch_size"] != t.get("requested_batch_size", t["batch_size"]):
                batch += f" (of {t['requested_batch_size']} requested)"
            peak = mem.get("peak_allocated_bytes", mem.get("peak_rss_increase_bytes"))
            reserved = mem.get("peak_reserved_bytes")
            rows.append(
                [
                    variant,
                    t.get("path", settings["path"]),
                    precision,
                    phase,
                    batch,
                    f"{t['img_per_s']:,.1f}",
                    f"{gflop_s / 1e3:.3g}" if gflop_s else "—",
                    f"{100 * gflop_s / ceiling:.1f} %" if gflop_s and ceiling else "—",
                    f"{peak / 2**20:,.0f} MiB" if peak is not None else "—",
                    f"{reserved / 2**20:,.0f} MiB" if reserved is not None else "—",
                    f"{t['img_per_j']:,.1f}" if t.get("img_per_j") else "—",
                ]
            )
    return rows


def _header(results: Results) -> list[str]:
    env = results.environment
    device = env.get("device_name") or env.get("cpu_model")
    lines = [
        f"device: {device} ({env.get('device')}), torch {env.get('torch')}, CUDA {env.get('cuda')}, "
        f"driver {env.get('driver')}, {env.get('threads')} CPU threads, {env.get('created')}",
    ]
    ceilings = (results.ceilings or {}).get("ceilings") or {}
    if ceilings:
        lines.append(
            "matmul ceilings (median of torch.mm "
            + f"{next(iter(ceilings.values()))['matmul_size']}², same run): "
            + ", ".join(f"{k} {c['gflop_s'] / 1e3:.3g} TFLOP/s" for k, c in ceilings.items())
        )
    lines += [
        "img/s: batch / median iteration time (CUDA events on GPU); a few warm-ups, then timed iterations "
        "auto-ranged to a short budget per phase; train = forward, loss of both heads, backward, AdamW step",
        "achieved TFLOP/s: 2 × paper MACs per image (conv + linear + attention matmuls, counted on the plain "
        f"model) × img/s, × {TRAIN_FLOP_FACTOR} for training; share of the matmul ceiling of the row's "
        "precision (fp32 rows: TF32 off; cuDNN convolutions use TF32 by default, so fp32 shares can pass 100 %)",
        "peak allocated / reserved: torch.cuda peak stats of the phase (CPU: peak resident-set increase); "
        "img/J: images of the timed loop / NVML energy of the loop",
    ]
    return lines


def render_summary(results: Results, checks: list[CheckResult]) -> str:
    from ..records import SpeedRecord
    from ..speed import render as render_speed

    title = "GPU check" + (" (CPU rehearsal)" if results.environment.get("rehearsal") else "")
    parts = [f"# {title}", "", *(f"- {line}" for line in _header(results)), ""]
    parts += [
        "## Checks",
        "",
        render_rows_md(("status", "check", "detail"), [[c.status, c.name, c.detail] for c in checks]),
        "",
    ]
    parts += ["## Profiles", "", render_rows_md(COLUMNS, profile_rows(results)), ""]
    if results.speed:
        speed = SpeedRecord.from_dict(results.speed)
        parts += ["## Speed (interleaved paths)", "", render_speed(speed, "md"), ""]
    steps = [
        [s["name"], s["status"], f"{s['elapsed_s']:.1f} s", s.get("detail") or ""]
        for s in results.steps.values()
    ]
    parts += ["## Steps", "", render_rows_md(("step", "status", "elapsed", "detail"), steps), ""]
    return "\n".join(parts)
