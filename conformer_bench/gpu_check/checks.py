"""What must hold on a real GPU, checked on the records a GPU check wrote (one PASS / FAIL / SKIP each).

Every check reads records only, so the same function judges a fresh run, an old results folder, or a
fixture. Checks that need CUDA say SKIP on a CPU rehearsal.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Largest max|a - b| / max|b| over the heads' logits (random weights, random input).
TOLERANCE = {
    "bf16": 5e-2,  # 8-bit mantissa; 0.7-0.8 % measured on tiny and base (CPU autocast)
    "fp16": 1e-2,  # 11-bit mantissa; 0.1 % measured
    "fp32": 1e-4,  # optimized vs plain, TF32 off: folded BatchNorm and reordered sums only
}
COMPILED_FP32_TOLERANCE = 1e-3  # Inductor may reorder reductions
MIN_FINETUNE_TOP1 = 95.0
GPU_WALL_LIMIT_S = 300.0
MIN_COMPILED_BF16_SHARE = 0.40  # of the bf16 tensor-core matmul ceiling, base at batch 128
ABLATE_CELLS = 4


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}"


@dataclass
class Results:
    """The records of one GPU-check folder (missing ones are None / empty)."""

    environment: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    ceilings: dict[str, Any] | None = None
    logits: dict[str, Any] | None = None
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # point name -> profile record
    speed: dict[str, Any] | None = None
    shares: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    torchrun: dict[str, Any] | None = None
    cells: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return str(self.environment.get("device", "")).startswith("cuda")

    @property
    def plan(self) -> dict[str, Any]:
        plan: dict[str, Any] = self.environment.get("plan") or {}
        return plan


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_results(folder: Path) -> Results:
    steps = _read(folder / "steps.json") or {"steps": []}
    cells_file = folder / "ablate" / "cells.jsonl"
    cells = []
    if cells_file.is_file():
        lines = [json.loads(line) for line in cells_file.read_text().splitlines() if line.strip()]
        cells = list({cell.get("label"): cell for cell in lines}.values())  # the newest line per label
    return Results(
        environment=_read(folder / "environment.json") or {},
        steps={s["name"]: s for s in steps["steps"]},
        ceilings=_read(folder / "ceilings.json"),
        logits=_read(folder / "logits.json"),
        profiles={p.stem: _read(p) for p in sorted((folder / "profile").glob("*.json"))},
        speed=_read(folder / "speed.json"),
        shares=_read(folder / "shares.json"),
        finetune=_read(folder / "finetune.json"),
        torchrun=_read(folder / "torchrun-finetune.json"),
        cells=cells,
    )


def _phases(results: Results, names: list[str] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(point, phase, record) for every measured phase of the named (default: all) profile records."""
    out = []
    for name, record in results.profiles.items():
        if names is not None and name not in names:
            continue
        for phase in record.get("throughput") or {}:
            out.append((name, phase, record))
    return out


def _result(name: str, problems: list[str], ok_detail: str) -> CheckResult:
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return CheckResult(name, "FAIL", "; ".join(problems[:3]) + more)
    return CheckResult(name, "PASS", ok_detail)


def _skip(name: str, why: str) -> CheckResult:
    return CheckResult(name, "SKIP", why)


NEEDS_CUDA = "needs CUDA (CPU rehearsal)"


# --- the checks ----------------------------------------------------------------------------------------------


def check_timer(r: Results) -> CheckResult:
    name = "timer is CUDA events"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    phases = _phases(r)
    bad = [
        f"{p}/{ph}: {rec['throughput'][ph].get('timer')}"
        for p, ph, rec in phases
        if rec["throughput"][ph].get("timer") != "cuda_event"
    ]
    if not phases:
        bad.append("no timed profile phase recorded")
    return _result(name, bad, f"cuda_event in all {len(phases)} timed phases")


def check_memory_order(r: Results) -> CheckResult:
    name = "0 < peak allocated <= peak reserved <= NVML used"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    bad, n = [], 0
    # Not the OOM point: at the largest batch that fits, the allocator may free its cache mid-phase.
    for point, phase, rec in _phases(r, [*(r.plan.get("matrix") or []), str(r.plan.get("compiled"))]):
        m = (rec.get("memory") or {}).get(phase) or {}
        alloc, reserved, used = (
            m.get(k) for k in ("peak_allocated_bytes", "peak_reserved_bytes", "nvml_used_bytes")
        )
        n += 1
        if used is None:
            bad.append(f"{point}/{phase}: no NVML reading ({m.get('nvml_error')})")
        elif not (alloc and 0 < alloc <= (reserved or 0) <= used):
            bad.append(f"{point}/{phase}: allocated {alloc}, reserved {reserved}, NVML {used}")
    if n == 0:
        bad.append("no measured phase")
    return _result(name, bad, f"holds in all {n} measured phases")


def check_memory_grows(r: Results) -> CheckResult:
    name = "peak allocated grows with batch"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA + "; resident-set increases at tiny batches are not monotonic")
    groups: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for _point, phase, rec in _phases(r, list(r.plan.get("matrix") or [])):
        s = rec["settings"]
        alloc = ((rec.get("memory") or {}).get(phase) or {}).get("peak_allocated_bytes")
        batch = rec["throughput"][phase]["batch_size"]
        series = (rec["variant"]["name"], s["precision"], s["path"], phase)
        groups.setdefault(series, []).append((batch, alloc or 0))
    bad = []
    for key, pairs in sorted(groups.items()):
        pairs.sort()
        allocs = [a for _, a in pairs]
        if len(pairs) > 1 and any(b <= a for a, b in itertools.pairwise(allocs)):
            bad.append(f"{'/'.join(key)}: " + ", ".join(f"b{b} {a / 2**20:.0f} MiB" for b, a in pairs))
    if not groups:
        bad.append("no matrix point measured")
    return _result(
        name, bad, f"strictly increasing in all {len(groups)} (variant, precision, path, phase) series"
    )


def _logits_check(r: Results, name: str, key: str, tolerance: float) -> CheckResult:
    entry = ((r.logits or {}).get("comparisons") or {}).get(key)
    if entry is None:
        return CheckResult(name, "FAIL", f"no {key} comparison recorded")
    if entry.get("error"):
        return CheckResult(name, "FAIL", entry["error"])
    diff = entry["max_rel_diff"]
    if diff is None:  # NaN or inf in the logits (stored as null)
        return CheckResult(name, "FAIL", f"max rel diff not finite ({entry['what']})")
    ok = diff <= tolerance
    return CheckResult(
        name,
        "PASS" if ok else "FAIL",
        f"max rel diff {diff:.2e} (tolerance {tolerance:.0e}; {entry['what']})",
    )


def check_bf16_logits(r: Results) -> CheckResult:
    return _logits_check(r, "bf16 logits vs fp32", "bf16_vs_fp32", TOLERANCE["bf16"])


def check_fp16_logits(r: Results) -> CheckResult:
    if not r.cuda:
        return _skip("fp16 logits vs fp32", NEEDS_CUDA + " (fp16 is CUDA-only here)")
    return _logits_check(r, "fp16 logits vs fp32", "fp16_vs_fp32", TOLERANCE["fp16"])


def check_optimized_logits(r: Results) -> CheckResult:
    return _logits_check(
        r, "optimized logits vs plain (fp32, TF32 off)", "optimized_vs_plain_fp32", TOLERANCE["fp32"]
    )


def check_sdpa(r: Results) -> CheckResult:
    name = "SDPA fused kernels (flash / memory-efficient only) on the optimized path"
    comparisons = (r.logits or {}).get("comparisons") or {}
    keys = [k for k in comparisons if k.startswith("sdpa_fused_")]
    if not keys:
        return CheckResult(name, "FAIL", "no SDPA run recorded")
    bad, parts = [], []
    for key in keys:
        e = comparisons[key]
        precision = key.removeprefix("sdpa_fused_")
        tol = TOLERANCE[precision] if precision != "fp32" else TOLERANCE["bf16"] / 10
        if e.get("error"):
            bad.append(f"{precision}: {e['error']}")
        elif e["max_rel_diff"] is None or e["max_rel_diff"] > tol:
            bad.append(f"{precision}: max rel diff {e['max_rel_diff']} > {tol:.0e}")
        else:
            parts.append(f"{precision} {e['max_rel_diff']:.1e}")
    return _result(name, bad, "ran and matched the unrestricted run: " + ", ".join(parts))


def _speed_runs(speed: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``(name, path, precision, entry)`` of every run of a speed record. Schema 1 (one autocast precision
    for all paths, in ``settings.precision``) and schema 2 (precision per run, ``optimized-bf16`` ...) alike."""
    default = speed["settings"].get("precision", "fp32")
    return [(name, e.get("path", name), e.get("precision", default), e) for name, e in speed["paths"].items()]


def _speed_entry(speed: dict[str, Any] | None, path: str) -> dict[str, Any] | None:
    """The speed run of ``path`` (``compiled``: the fp32 one if any, else the first in the record)."""
    runs = [e for _, p, _, e in _speed_runs(speed) if p == path] if speed else []
    return (speed or {}).get("paths", {}).get(path) or next(iter(runs), None)


def check_speed_paths(r: Results) -> CheckResult:
    name = "optimized / compiled logits vs plain (speed run)"
    if r.speed is None:
        return CheckResult(name, "FAIL", "no speed record")
    # schema 1: each path vs plain in the same precision; schema 2: each run vs plain fp32
    reference = "plain" if r.speed.get("schema_version", 1) < 2 else "plain fp32"
    bad, parts, tols = [], [], {}
    for run, path, precision, e in _speed_runs(r.speed):
        if path == "plain" and (precision == "fp32" or reference == "plain"):
            continue
        tol = TOLERANCE[precision] if precision != "fp32" else COMPILED_FP32_TOLERANCE
        tols[precision] = tol
        diff = e.get("max_rel_diff_vs_plain")
        if e["status"] != "ok" or diff is None:
            bad.append(f"{run}: {e['status']} {e.get('reason') or ''}".strip())
        elif diff > tol:
            bad.append(f"{run}: max rel diff {diff:.2e} > {tol:.0e}")
        else:
            parts.append(f"{run} {diff:.1e}")
    where = ", ".join(f"{q}, tolerance {t:.0e}" for q, t in tols.items())
    return _result(
        name, bad, f"{where}: " + ", ".join(parts) + ("" if reference == "plain" else f" (vs {reference})")
    )


def check_compiled(r: Results) -> CheckResult:
    name = "torch.compile path runs"
    point = r.plan.get("compiled")
    rec = r.profiles.get(point or "")
    bad = []
    if rec is None:
        bad.append(f"no record for {point}")
    elif rec.get("status") != "ok" or not (rec.get("compile_s") or {}).get("infer"):
        bad.append(f"{point}: status {rec.get('status')} ({rec.get('reason')})")
    speed_compiled = _speed_entry(r.speed, "compiled")
    if speed_compiled is None or speed_compiled.get("status") != "ok":
        bad.append("speed: compiled path " + (speed_compiled or {}).get("status", "missing"))
    detail = ""
    if not bad:
        assert rec is not None and speed_compiled is not None
        detail = f"profile compile {rec['compile_s']['infer']:.1f} s, speed compile {speed_compiled['compile_s']:.1f} s"
    return _result(name, bad, detail)


def check_compiled_shares(r: Results) -> CheckResult:
    name = f"compiled bf16 >= {100 * MIN_COMPILED_BF16_SHARE:.0f} % of the bf16 matmul ceiling (max-autotune, CUDA graphs)"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    if r.shares is None:
        return CheckResult(name, "FAIL", "no shares record")
    shares = r.shares["shares"]
    bf16 = shares.get("compiled-bf16", {}).get("bf16")
    problems = []
    if bf16 is None:
        problems.append("compiled-bf16 not timed")
    elif bf16 < MIN_COMPILED_BF16_SHARE:
        problems.append(f"compiled-bf16 at {100 * bf16:.1f} %")
    detail = f"{r.shares['variant']} b{r.shares['batch_size']}: " + ", ".join(
        f"{run} " + " / ".join(f"{100 * v:.1f} % of {k}" for k, v in share.items())
        for run, share in shares.items()
    )
    return _result(name, problems, detail)


def check_matrix_complete(r: Results) -> CheckResult:
    name = "profile matrix complete"
    planned = list(r.plan.get("matrix") or [])
    missing = [p for p in planned if p not in r.profiles]
    bad = [
        f"{p}: {rec.get('status')} ({rec.get('reason')})"
        for p, rec in r.profiles.items()
        if p in planned and rec.get("status") != "ok"
    ]
    if missing:
        step = (r.steps.get("profile-matrix") or {}).get("detail", "step not run")
        bad.insert(0, f"{len(missing)} of {len(planned)} points not recorded ({step})")
    if not planned:
        bad.append("no plan recorded")
    return _result(name, bad, f"all {len(planned)} points ok")


def check_oom(r: Results) -> CheckResult:
    name = "OOM back-off records requested vs achieved batch"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA + " (no OOM error to catch on CPU)")
    point = r.plan.get("oom")
    rec = r.profiles.get(point or "")
    if rec is None:
        return CheckResult(name, "FAIL", f"no record for {point}")
    timing = next(iter((rec.get("throughput") or {}).values()), None)
    if rec.get("status") != "ok" or timing is None:
        return CheckResult(name, "FAIL", f"status {rec.get('status')} ({rec.get('reason')})")
    requested, achieved = timing["requested_batch_size"], timing["batch_size"]
    env_batch = rec["environment"].get("batch_size")
    ok = achieved < requested and env_batch == achieved and rec["settings"]["batch_size"] == requested
    return CheckResult(
        name,
        "PASS" if ok else "FAIL",
        f"requested {requested}, achieved {achieved} (environment batch {env_batch})",
    )


def check_energy(r: Results) -> CheckResult:
    name = "NVML energy of the timed loops -> images per joule"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    bad, unsupported, n, methods = [], [], 0, set()
    for point, phase, rec in _phases(r):
        t = rec["throughput"][phase]
        e = t.get("energy") or {}
        n += 1
        if e.get("joules") and t.get("img_per_j"):
            methods.add("counter" if "TotalEnergy" in (e.get("method") or "") else "power samples")
        elif "NotSupported" in str(e.get("error")):
            unsupported.append(point)
        else:
            bad.append(f"{point}/{phase}: {e.get('error') or 'no energy reading'}")
    if n and len(unsupported) == n:
        return _skip(name, "NVML reports energy and power as not supported on this board")
    if n == 0:
        bad.append("no timed phase")
    return _result(name, bad, f"read in all {n} timed phases ({', '.join(sorted(methods))})")


def check_fused_adamw(r: Results) -> CheckResult:
    name = "fused AdamW in training"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    bad = [
        f"{p}: {rec['settings'].get('optimizer')}"
        for p, ph, rec in _phases(r)
        if ph == "train" and "fused" not in str(rec["settings"].get("optimizer"))
    ]
    impl = (((r.finetune or {}).get("hyper") or {}).get("optimizer") or {}).get("impl")
    if impl != "fused":
        bad.append(f"finetune optimizer {impl}")
    return _result(name, bad, "profile train phases and finetune use AdamW(fused=True)")


def check_grad_scaler(r: Results) -> CheckResult:
    name = "fp16 training with a grad scaler stays finite"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA + " (fp16 is CUDA-only here)")
    phases = [
        (p, rec) for p, ph, rec in _phases(r) if ph == "train" and rec["settings"]["precision"] == "fp16"
    ]
    bad = [
        f"{p}: status {rec['status']}, last loss {rec['throughput']['train'].get('last_loss')}"
        for p, rec in phases
        if rec["status"] != "ok"
    ]
    if not phases:
        bad.append("no fp16 training phase")
    return _result(name, bad, f"{len(phases)} fp16 train phases ok")


def _subprocess_step(r: Results, step: str) -> str | None:
    s = r.steps.get(step)
    if s is None:
        return f"step {step} not run"
    if s.get("exit_code") != 0:
        return f"exit {s.get('exit_code')}: {s.get('detail')}"
    return None


def check_finetune(r: Results) -> CheckResult:
    name = f"finetune micro on {r.environment.get('device', '?')} >= {MIN_FINETUNE_TOP1:.0f} % top-1"
    problem = _subprocess_step(r, "finetune")
    if problem:
        return CheckResult(name, "FAIL", problem)
    rec = r.finetune or {}
    top1 = ((rec.get("final") or {}).get("top1") or {}).get("sum")
    device = (rec.get("environment") or {}).get("device")
    ok = top1 is not None and top1 >= MIN_FINETUNE_TOP1 and device == r.environment.get("device")
    top1_text = f"{top1:.1f} %" if top1 is not None else "none"
    return CheckResult(name, "PASS" if ok else "FAIL", f"sum-head top-1 {top1_text} on {device}")


def check_ablate(r: Results) -> CheckResult:
    name = f"{ABLATE_CELLS}-cell ablate"
    problem = _subprocess_step(r, "ablate")
    bad = [problem] if problem else []
    device = r.environment.get("device")
    for cell in r.cells:
        cell_device = ((cell.get("profile") or {}).get("environment") or {}).get("device")
        if cell.get("status") != "ok" or cell_device != device:
            bad.append(f"{cell.get('label')}: {cell.get('status')} on {cell_device}")
    if len(r.cells) != ABLATE_CELLS:
        bad.append(f"{len(r.cells)} cells recorded")
    return _result(name, bad, f"{len(r.cells)} cells ok on {device}, each in its own process")


def check_report(r: Results) -> CheckResult:
    name = "report of the grid against itself exits 0"
    problem = _subprocess_step(r, "report")
    return CheckResult(name, "FAIL", problem) if problem else CheckResult(name, "PASS", "exit 0")


def check_torchrun(r: Results) -> CheckResult:
    backend = "nccl" if r.cuda else "gloo"
    name = f"finetune under torchrun (DDP over {backend})"
    if "skipped: NCCL needs 2 GPUs" in str((r.steps.get("torchrun") or {}).get("detail")):
        return _skip(name, r.steps["torchrun"]["detail"].removeprefix("skipped: "))
    problem = _subprocess_step(r, "torchrun")
    if problem:
        return CheckResult(name, "FAIL", problem)
    env = (r.torchrun or {}).get("environment") or {}
    ok = env.get("dist_backend") == backend and (r.torchrun or {}).get("status") == "ok"
    return CheckResult(
        name,
        "PASS" if ok else "FAIL",
        f"backend {env.get('dist_backend')}, world size {env.get('world_size')}",
    )


def check_wall_clock(r: Results) -> CheckResult:
    name = f"whole check within {GPU_WALL_LIMIT_S:.0f} s"
    total = sum(s.get("elapsed_s") or 0.0 for s in r.steps.values())
    if not r.cuda:
        return _skip(name, f"{total:.0f} s on CPU (the limit is for one GPU)")
    ok = total <= GPU_WALL_LIMIT_S
    return CheckResult(name, "PASS" if ok else "FAIL", f"{total:.0f} s")


CHECKS: tuple[Callable[[Results], CheckResult], ...] = (
    check_matrix_complete,
    check_timer,
    check_memory_order,
    check_memory_grows,
    check_bf16_logits,
    check_fp16_logits,
    check_optimized_logits,
    check_sdpa,
    check_speed_paths,
    check_compiled,
    check_compiled_shares,
    check_oom,
    check_energy,
    check_fused_adamw,
    check_grad_scaler,
    check_finetune,
    check_ablate,
    check_report,
    check_torchrun,
    check_wall_clock,
)


def run_checks(results: Results) -> list[CheckResult]:
    out = []
    for check in CHECKS:
        try:
            out.append(check(results))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a malformed record fails its check
            out.append(
                CheckResult(check.__name__.removeprefix("check_"), "FAIL", f"unreadable record: {exc!r}")
            )
    return out


def checks_record(results: list[CheckResult]) -> dict[str, Any]:
    counts = {s: sum(c.status == s for c in results) for s in ("PASS", "FAIL", "SKIP")}
    return {
        "schema": "conformer-bench.gpu-check",
        "schema_version": 1,
        "counts": counts,
        "checks": [asdict(c) for c in results],
    }
