"""Interleaved speed measurement of the inference paths (plain, optimized, compiled) of one variant.

All paths run in one process, one forward pass each in turn (A B C M, then B C M A, ... with M a large fp32
matmul), so that load from other processes hits every path alike and ratios stay meaningful on a shared
machine. The record keeps every raw sample; rounding happens only in :func:`render`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from .errors import BenchError

SCHEMA = "conformer-bench.speed"
SCHEMA_VERSION = 1
PATHS: tuple[str, ...] = ("plain", "optimized", "compiled")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
# Matmul ceilings: fp32 with TF32 off, fp32 inputs with TF32 tensor cores (CUDA), bf16 and fp16 inputs.
CEILINGS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
FORMATS: tuple[str, ...] = ("table", "json", "csv", "md")
FLOP_CONVENTION = (
    "achieved GFLOP/s = 2 x paper_macs x images / median seconds; paper_macs = multiply-adds of conv + linear + "
    "matmul of the plain model (fvcore, batch 1, eval; norms, pooling and element-wise ops excluded), counted "
    "once for all paths; the ceiling is 2 n^3 flops per n x n matmul in the run's precision (fp32: TF32 off), "
    "timed in the same rounds; "
    "executed GFLOP/s counts what a path runs instead (the optimized paths pool before the FCU-down 1x1 "
    "projection, an exact rewrite that skips some multiply-adds)"
)
PATH_DESCRIPTIONS: dict[str, str] = {
    "plain": "eval model as built (NCHW, BatchNorm, explicit attention unless the config says fused)",
    "optimized": "optimize_for_inference: folded BN, FCU-down pool before projection, channels-last; CPU fp32: "
    "fused oneDNN conv ops with prepacked weights, MKL prepacked GEMM for linears; SDPA",
    "compiled": "optimize_for_inference(compile=True): folded BN, FCU-down pool before projection, "
    "channels-last, torch.compile (Inductor; weight freezing with prepacked oneDNN convs / MKL linears on CPU)",
}

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class SpeedSettings:
    """What one ``speed`` run measures."""

    device: str = "cpu"
    batch_size: int = 8
    img_size: int = 224
    paths: tuple[str, ...] = PATHS
    rounds: int = 10
    warmup: int = 2
    matmul_size: int = 2048
    threads: int | None = None
    channels_last: bool = True
    fold_bn: bool = True
    fuse_pointwise: bool = True
    pool_first: bool = True
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (CUDA): autocast around every path
    ceilings: tuple[str, ...] = ()  # more matmul ceilings timed in the same rounds (see CEILINGS)

    def validate(self, patch_size: int) -> None:
        if self.batch_size < 1:
            raise BenchError(f"--batch-size {self.batch_size} is not valid; use 1 or more")
        if self.img_size < patch_size or self.img_size % patch_size:
            raise BenchError(
                f"--img-size {self.img_size} is not a multiple of the patch size {patch_size}; "
                f"use e.g. {max(patch_size, round(self.img_size / patch_size) * patch_size)}"
            )
        if self.rounds < 3:
            raise BenchError(f"--rounds {self.rounds} is too few for a median and an interval; use 3 or more")
        if self.warmup < 0:
            raise BenchError(f"--warmup {self.warmup} is not valid; use 0 or more")
        if self.matmul_size < 64:
            raise BenchError(
                f"--matmul-size {self.matmul_size} is too small to measure a ceiling; use 512 or more"
            )
        if not self.paths or len(set(self.paths)) != len(self.paths):
            raise BenchError("--paths needs distinct names, e.g. plain,optimized,compiled")
        for path in self.paths:
            if path not in PATHS:
                raise BenchError(f"--paths: {path!r} is not a path; use a comma list of {', '.join(PATHS)}")
        if self.threads is not None and self.threads < 1:
            raise BenchError(f"--threads {self.threads} is not valid; use 1 or more")
        if self.precision not in PRECISIONS:
            raise BenchError(f"precision {self.precision!r} is not valid; use one of {', '.join(PRECISIONS)}")
        cuda = self.device.startswith("cuda")
        for kind in (self.precision, *self.ceilings):
            if kind not in CEILINGS:
                raise BenchError(f"ceiling {kind!r} is not valid; use one of {', '.join(CEILINGS)}")
            if kind in ("fp16", "tf32") and not cuda:
                raise BenchError(f"{kind} is CUDA-only here; use fp32 or bf16 on CPU")


def parse_paths(text: str) -> tuple[str, ...]:
    """``"plain,compiled"`` -> ``("plain", "compiled")`` (validated later by :meth:`SpeedSettings.validate`)."""
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def step_timer(device: str) -> Callable[[Callable[[], Any]], float]:
    import torch

    if device.startswith("cuda"):

        def timed_cuda(step: Callable[[], Any]) -> float:
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            torch.cuda.synchronize(device)
            return time.perf_counter() - start

        return timed_cuda

    def timed(step: Callable[[], Any]) -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    return timed


def matmul_step(kind: str, a: Any, b: Any, device: str) -> Callable[[], Any]:
    """One n x n matmul of ``kind`` (see :data:`CEILINGS`); fp32 / tf32 set cuBLAS's TF32 switch for the call."""
    import torch

    if kind in ("bf16", "fp16"):
        dtype = torch.bfloat16 if kind == "bf16" else torch.float16
        return partial(torch.mm, a.to(dtype), b.to(dtype))
    if not device.startswith("cuda"):
        return partial(torch.mm, a, b)
    matmul = torch.backends.cuda.matmul

    def mm_with_tf32_switch() -> Any:
        old = matmul.allow_tf32
        matmul.allow_tf32 = kind == "tf32"
        try:
            return torch.mm(a, b)
        finally:
            matmul.allow_tf32 = old

    return mm_with_tf32_switch


def _under_autocast(run: Callable[[Any], Any], device: str, dtype: Any) -> Callable[[Any], Any]:
    import torch

    if dtype is None:
        return run
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def autocast_run(x: Any) -> Any:
        with torch.autocast(device_type=device_type, dtype=dtype):
            return run(x)

    return autocast_run


def ceiling_record(kind: str, n: int, samples: list[float]) -> dict[str, Any]:
    from .stats import summarize

    flop = 2.0 * n**3
    tf32 = " (TF32 tensor cores)" if kind == "tf32" else " (TF32 off)" if kind == "fp32" else ""
    return {
        "op": f"torch.mm {kind}{tf32} {n}x{n} @ {n}x{n}",
        "precision": kind,
        "matmul_size": n,
        "flop_per_call": flop,
        "samples_s": samples,
        "latency_s": summarize(samples),
        "gflop_s": flop / float(np.median(samples)) / 1e9,
        "gflop_s_best": flop / min(samples) / 1e9,
    }


def max_rel_diff(out: Any, ref: Any) -> float:
    """Largest ``max|a - b| / max|b|`` over the present heads."""
    worst = 0.0
    for a, b in zip(out, ref, strict=True):
        if a is None or b is None:
            continue
        scale = float(b.abs().max()) or 1.0
        worst = max(worst, float((a.float() - b.float()).abs().max()) / scale)
    return worst


def measure_speed(
    cfg: Any, settings: SpeedSettings, *, label: str | None = None, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Build ``cfg``, time every path interleaved, and return a ``conformer-bench.speed`` record."""
    import torch

    from conformer import create_model
    from conformer.optimize import fused_kernels_available, mkl_linear_available, optimize_for_inference

    from .env import fingerprint
    from .flops import count_flops
    from .stats import bootstrap_ratio, summarize

    settings.validate(cfg.patch_size)
    device = settings.device
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[settings.precision]
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    report = progress or (lambda message, fraction: None)
    timed = step_timer(device)

    torch.manual_seed(settings.seed)
    plain = create_model(cfg).eval().to(device)
    report("counting FLOPs", 0.0)
    flops = count_flops(plain, settings.img_size, cross_check=False)
    flop_per_image = 2 * int(flops["paper_macs"])
    gen = torch.Generator().manual_seed(settings.seed)
    x = torch.randn(settings.batch_size, cfg.in_chans, settings.img_size, settings.img_size, generator=gen)
    x = x.to(device)
    n = settings.matmul_size
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)

    runners: dict[str, Callable[[Any], Any]] = {}
    for path in settings.paths:
        if path == "plain":
            runners[path] = _under_autocast(plain, device, dtype)
        else:
            optimized = optimize_for_inference(
                plain,
                channels_last=settings.channels_last,
                fold_bn=settings.fold_bn,
                compile=path == "compiled",
                fuse_pointwise=settings.fuse_pointwise and dtype is None,  # fused oneDNN ops are fp32-only
                pool_first=settings.pool_first,
            )
            runners[path] = _under_autocast(optimized, device, dtype)
    executed_macs = int(flops["paper_macs"])
    if settings.pool_first and any(p != "plain" for p in settings.paths):
        restructured = optimize_for_inference(
            plain, channels_last=False, fold_bn=False, fuse_pointwise=False, pool_first=True
        )
        executed_macs = int(count_flops(restructured, settings.img_size, cross_check=False)["paper_macs"])

    status: dict[str, str] = dict.fromkeys(settings.paths, "ok")
    reasons: dict[str, str | None] = dict.fromkeys(settings.paths, None)
    first_call_s: dict[str, float] = {}
    rel_diff: dict[str, float | None] = {}
    with torch.inference_mode():
        reference = runners["plain"](x) if "plain" in runners else _under_autocast(plain, device, dtype)(x)
        for i, (path, run) in enumerate(runners.items()):
            report(f"first call: {path}", 0.05 + 0.15 * i / len(runners))
            try:
                out: Any = None

                def first(run: Callable[[Any], Any] = run) -> None:
                    nonlocal out
                    out = run(x)

                first_call_s[path] = timed(first)
                rel_diff[path] = max_rel_diff(out, reference)
                for _ in range(settings.warmup):
                    run(x)
            except Exception as exc:  # a path that cannot run (e.g. no C++ compiler) is recorded, not fatal
                if path == "plain":
                    raise
                status[path] = "failed"
                reasons[path] = (
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                )
                rel_diff[path] = None
        live = [p for p in settings.paths if status[p] == "ok"]
        samples: dict[str, list[float]] = {p: [] for p in live}
        kinds = list(dict.fromkeys((settings.precision, *settings.ceilings)))
        matmul_s: dict[str, list[float]] = {kind: [] for kind in kinds}
        steps: list[tuple[str, Callable[[], Any]]] = [(p, partial(runners[p], x)) for p in live]
        for kind in kinds:
            steps.append((f"matmul:{kind}", matmul_step(kind, a, b, device)))
            timed(steps[-1][1])  # warm the matmuls too
        for r in range(settings.rounds):
            report(f"round {r + 1}/{settings.rounds}", 0.2 + 0.8 * r / settings.rounds)
            k = r % len(steps)  # rotate the order so that no path always runs first
            for name, step in steps[k:] + steps[:k]:
                t = timed(step)
                if name.startswith("matmul:"):
                    matmul_s[name.split(":", 1)[1]].append(t)
                else:
                    samples[name].append(t)
    report("done", 1.0)

    ceilings = {kind: ceiling_record(kind, n, matmul_s[kind]) for kind in kinds}
    ceiling = ceilings[settings.precision]
    batch = settings.batch_size
    results: dict[str, Any] = {}
    for path in settings.paths:
        entry: dict[str, Any] = {
            "status": status[path],
            "reason": reasons[path],
            "description": PATH_DESCRIPTIONS[path],
            "first_call_s": first_call_s.get(path),
            "compile_s": first_call_s.get(path) if path == "compiled" else None,
            "max_rel_diff_vs_plain": rel_diff.get(path),
        }
        if status[path] == "ok":
            s = samples[path]
            latency = summarize(s)
            median = latency["median"]
            rate = summarize([batch / t for t in s])
            entry.update(
                samples_s=s,
                latency_s=latency,
                img_per_s=batch / median,
                img_per_s_iqr=[rate["q25"], rate["q75"]],
                achieved_gflop_s=flop_per_image * batch / median / 1e9,
            )
            entry["ceiling_share"] = entry["achieved_gflop_s"] / ceiling["gflop_s"]
            executed = int(flops["paper_macs"]) if path == "plain" else executed_macs
            entry["executed_paper_macs_per_image"] = executed
            entry["executed_gflop_s"] = 2 * executed * batch / median / 1e9
            entry["executed_ceiling_share"] = entry["executed_gflop_s"] / ceiling["gflop_s"]
            if "plain" in samples:
                ratio, low, high = bootstrap_ratio(samples["plain"], s)
                entry["speedup_vs_plain"] = {"ratio": ratio, "low": low, "high": high, "confidence": 0.95}
        results[path] = entry
    ok = [p for p in settings.paths if status[p] == "ok"]
    best = max(ok, key=lambda p: results[p]["img_per_s"])
    threads = torch.get_num_threads()
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "status": "ok" if all(v == "ok" for v in status.values()) else "failed",
        "reason": next((f"{p}: {reasons[p]}" for p in settings.paths if reasons[p]), None),
        "environment": fingerprint(
            device,
            settings.precision,
            settings.batch_size,
            settings.img_size,
            fused_kernels=fused_kernels_available(device),
            mkl_linear=mkl_linear_available() and device == "cpu",
        ),
        "variant": {"name": cfg.name, "label": label or cfg.name, "config": cfg.to_dict()},
        "settings": {**asdict(settings), "paths": list(settings.paths), "ceilings": kinds, "threads": threads,
                     "order": "interleaved, one forward per path per round, order rotated each round",
                     "timer": "perf_counter" + (" + cuda synchronize" if device.startswith("cuda") else "")},
        "flops": {
            "convention": FLOP_CONVENTION,
            "img_size": settings.img_size,
            "paper_macs_per_image": int(flops["paper_macs"]),
            "fvcore_total_per_image": int(flops["fvcore_total"]),
            "flop_per_image": flop_per_image,
            "uncounted_ops": flops.get("uncounted_ops", {}),
            "executed_paper_macs_per_image_optimized": executed_macs,
        },
        "ceiling": ceiling,  # of the run's precision: the ceiling_share of every path
        "ceilings": ceilings,
        "paths": results,
        "best_path": best,
    }  # fmt: skip


# --- rendering (rounding happens only here) ------------------------------------------------------------------

_COLUMNS = (
    "path", "status", "img/s (median)", "img/s IQR", "vs plain (95% CI)", "achieved GFLOP/s",
    "of matmul ceiling", "executed GFLOP/s (share)", "latency median", "IQR/median", "first call / compile", "max rel diff",
)  # fmt: skip


def _rows(record: dict[str, Any]) -> list[list[str]]:
    rows = []
    for path, e in record["paths"].items():
        if e["status"] != "ok":
            rows.append([path, f"{e['status']}: {e['reason']}"] + ["—"] * (len(_COLUMNS) - 2))
            continue
        sp = e.get("speedup_vs_plain")
        rows.append([
            path,
            "ok" + (" (noisy)" if e["latency_s"]["noisy"] else ""),
            f"{e['img_per_s']:.2f}",
            f"{e['img_per_s_iqr'][0]:.2f}–{e['img_per_s_iqr'][1]:.2f}",
            f"{sp['ratio']:.2f}× [{sp['low']:.2f}, {sp['high']:.2f}]" if sp else "—",
            f"{e['achieved_gflop_s']:.1f}",
            f"{100 * e['ceiling_share']:.1f} %",
            f"{e['executed_gflop_s']:.1f} ({100 * e['executed_ceiling_share']:.1f} %)",
            f"{1e3 * e['latency_s']['median']:.1f} ms",
            f"{100 * e['latency_s']['iqr_over_median']:.1f} %",
            f"{e['first_call_s']:.2f} s" if e.get("first_call_s") is not None else "—",
            f"{e['max_rel_diff_vs_plain']:.1e}" if e.get("max_rel_diff_vs_plain") is not None else "—",
        ])  # fmt: skip
    return rows


def _header_lines(record: dict[str, Any]) -> list[str]:
    env, st, fl, ce = record["environment"], record["settings"], record["flops"], record["ceiling"]
    return [
        f"variant {record['variant']['label']}: batch {st['batch_size']}, {st['img_size']}², {st['precision']}, "
        f"device {env['device']} ({env.get('device_name') or env.get('cpu_model')}), {st['threads']} threads, "
        f"torch {env['torch']}",
        f"{st['rounds']} interleaved rounds after {st['warmup']} warm-up calls per path; img/s = batch / median "
        "seconds per forward; vs plain = ratio of median latencies with a 95 % bootstrap interval",
        f"FLOPs per image: {fl['flop_per_image'] / 1e9:.4f} GFLOP (2 × paper MACs; fvcore total "
        f"{fl['fvcore_total_per_image'] / 1e9:.4f} G, one multiply-add = one flop); executed GFLOP/s counts "
        "the FLOPs a path runs (optimized paths pool before the FCU-down projection)",
        f"matmul ceiling: {ce['gflop_s']:.1f} GFLOP/s median, {ce['gflop_s_best']:.1f} best ({ce['op']}, same rounds)",
        "first call / compile: seconds of the first forward (for compiled: torch.compile's compilation)",
    ]


def render(record: dict[str, Any], fmt: str) -> str:
    from .io import dumps_json

    if fmt == "json":
        return dumps_json(record)
    rows = _rows(record)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["variant", "batch_size", "img_size", "threads", *_COLUMNS])
        st = record["settings"]
        for row in rows:
            writer.writerow(
                [record["variant"]["label"], st["batch_size"], st["img_size"], st["threads"], *row]
            )
        return buf.getvalue()
    if fmt == "md":
        from .formatting import render_rows_md

        return (
            "\n".join(f"- {line}" for line in _header_lines(record)) + "\n\n" + render_rows_md(_COLUMNS, rows)
        )
    if fmt == "table":
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]
        lines = [*_header_lines(record), ""]
        lines.append("  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)))
        lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)
        return "\n".join(lines) + "\n"
    raise BenchError(f"--format {fmt!r} is not valid; use one of {', '.join(FORMATS)}")
