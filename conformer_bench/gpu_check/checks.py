"""What must hold on a real GPU, checked on the records a GPU check wrote (one PASS / FAIL / SKIP each).

Every check reads typed records only, so the same function judges a fresh run, an old results folder, or
a fixture. Checks that need CUDA say SKIP on a CPU rehearsal.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..ablate.store import ResultStore
from ..errors import BenchError
from ..readers import read_json, records_in_file
from ..records import (
    CellRecord,
    CpuPhaseMemory,
    CudaPhaseMemory,
    FinetuneRecord,
    PhaseTiming,
    ProfiledPhase,
    ProfileRecord,
    Record,
    SchemaRecord,
    SpeedPath,
    SpeedRecord,
    Status,
)
from ..records.gpu_check import (
    CeilingsRecord,
    CheckEnvironment,
    CheckResult,
    CheckStep,
    GpuCheckRecord,
    LogitsComparison,
    LogitsRecord,
    SharesRecord,
    StepsLog,
)

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
INFER, TRAIN = "infer", "train"  # profile phases
SUM_HEAD = "sum"  # the summed heads' accuracy
FIX = "run the GPU check again to rewrite it"

S = TypeVar("S", bound=SchemaRecord)
R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class AblateCell:
    """What the ablate check reads of one cell record."""

    label: str
    status: str
    device: str | None  # where its profile ran


def ablate_cell(record: CellRecord) -> AblateCell:
    """The fields the check reads of one of the ablate store's cell records (the one place that reads them)."""
    env = record.profile.environment if record.profile is not None else None
    return AblateCell(record.label, str(record.status), env.device if env is not None else None)


@dataclass
class Results:
    """The records of one GPU-check folder (missing ones are None / empty)."""

    environment: CheckEnvironment
    steps: dict[str, CheckStep] = field(default_factory=dict)
    ceilings: CeilingsRecord | None = None
    logits: LogitsRecord | None = None
    profiles: dict[str, ProfileRecord] = field(default_factory=dict)  # point name -> profile record
    speed: SpeedRecord | None = None
    shares: SharesRecord | None = None
    finetune: FinetuneRecord | None = None
    torchrun: FinetuneRecord | None = None
    cells: list[AblateCell] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.environment.is_cuda

    @property
    def device(self) -> str:
        return self.environment.device

    @property
    def matrix(self) -> list[str]:
        """The planned matrix's point names."""
        plan = self.environment.plan
        return list(plan.matrix or []) if plan else []

    @property
    def compiled_point(self) -> str | None:
        return self.environment.plan.compiled if self.environment.plan else None

    @property
    def oom_point(self) -> str | None:
        return self.environment.plan.oom if self.environment.plan else None


def _schema_file(path: Path, kind: type[S]) -> S | None:
    """The one ``kind`` record of a JSON file (None when the file is absent)."""
    if not path.is_file():
        return None
    records = records_in_file(path)
    if len(records) != 1 or not isinstance(records[0], kind):
        held = ", ".join(r.SCHEMA for r in records) or "no record"
        raise BenchError(f"{path} holds {held}, not one {kind.SCHEMA} record; {FIX}")
    return records[0]


def _plain_file(path: Path, kind: type[R]) -> R | None:
    """A JSON file without a schema key read as ``kind`` (None when the file is absent)."""
    value = read_json(path, FIX)
    if value is None:
        return None
    try:
        return kind.from_dict(value)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BenchError(f"{path} is malformed ({type(exc).__name__}: {exc}); {FIX}") from None


def load_results(folder: Path) -> Results:
    """Every record of a GPU-check folder, typed; a damaged file is a one-line error naming it."""
    environment = _plain_file(folder / "environment.json", CheckEnvironment)
    if environment is None:
        raise BenchError(f"{folder} holds no GPU-check records; pass a folder written by the check")
    steps = _plain_file(folder / "steps.json", StepsLog)
    return Results(
        environment=environment,
        steps={s.name: s for s in (steps.steps if steps else [])},
        ceilings=_schema_file(folder / "ceilings.json", CeilingsRecord),
        logits=_schema_file(folder / "logits.json", LogitsRecord),
        profiles={
            p.stem: record
            for p in sorted((folder / "profile").glob("*.json"))
            if (record := _schema_file(p, ProfileRecord)) is not None
        },
        speed=_schema_file(folder / "speed.json", SpeedRecord),
        shares=_schema_file(folder / "shares.json", SharesRecord),
        finetune=_schema_file(folder / "finetune.json", FinetuneRecord),
        torchrun=_schema_file(folder / "torchrun-finetune.json", FinetuneRecord),
        cells=[ablate_cell(c) for c in ResultStore(folder / "ablate").latest().values()],
    )


@dataclass(frozen=True)
class Phase:
    """One measured phase of a profile record."""

    point: str
    name: str  # infer | train
    record: ProfileRecord
    run: ProfiledPhase

    @property
    def timing(self) -> PhaseTiming:
        return self.run.timing

    @property
    def memory(self) -> CpuPhaseMemory | CudaPhaseMemory | None:
        return self.record.memory.phase(self.name) if self.record.memory else None

    @property
    def where(self) -> str:
        return f"{self.point}/{self.name}"

    @property
    def precision(self) -> str:
        """The precision the profile was asked for (the phase's own may say more: "bf16 (bf16 weights ...)")."""
        return str(self.record.settings.precision or self.run.precision)

    @property
    def path(self) -> str:
        return str(self.record.settings.path or self.run.path)


def measured_phases(results: Results, names: list[str] | None = None) -> Iterator[Phase]:
    """Every measured phase of the named (default: all) profile records."""
    for point, record in results.profiles.items():
        if names is None or point in names:
            for name, run in (record.throughput or {}).items():
                yield Phase(point, name, record, run)


def _result(name: str, problems: list[str], ok_detail: str) -> CheckResult:
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return CheckResult(name, "FAIL", "; ".join(problems[:3]) + more)
    return CheckResult(name, "PASS", ok_detail)


def _verdict(name: str, ok: bool, detail: str) -> CheckResult:
    return CheckResult(name, "PASS" if ok else "FAIL", detail)


def _skip(name: str, why: str) -> CheckResult:
    return CheckResult(name, "SKIP", why)


NEEDS_CUDA = "needs CUDA (CPU rehearsal)"


# --- the checks ----------------------------------------------------------------------------------------------


def check_timer(r: Results) -> CheckResult:
    name = "timer is CUDA events"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    phases = list(measured_phases(r))
    bad = [f"{p.where}: {p.timing.timer}" for p in phases if p.timing.timer != "cuda_event"]
    if not phases:
        bad.append("no timed profile phase recorded")
    return _result(name, bad, f"cuda_event in all {len(phases)} timed phases")


def check_memory_order(r: Results) -> CheckResult:
    name = "0 < peak allocated <= peak reserved <= NVML used"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    bad, n = [], 0
    # Not the OOM point: at the largest batch that fits, the allocator may free its cache mid-phase.
    for p in measured_phases(r, [*r.matrix, str(r.compiled_point)]):
        m = p.memory
        n += 1
        if not isinstance(m, CudaPhaseMemory):
            bad.append(f"{p.where}: no CUDA allocator reading")
            continue
        alloc, reserved, used = m.peak_allocated_bytes, m.peak_reserved_bytes, m.nvml_used_bytes
        if used is None:
            bad.append(f"{p.where}: no NVML reading ({m.nvml_error})")
        elif not (alloc and 0 < alloc <= (reserved or 0) <= used):
            bad.append(f"{p.where}: allocated {alloc}, reserved {reserved}, NVML {used}")
    if n == 0:
        bad.append("no measured phase")
    return _result(name, bad, f"holds in all {n} measured phases")


def check_memory_grows(r: Results) -> CheckResult:
    name = "peak allocated grows with batch"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA + "; resident-set increases at tiny batches are not monotonic")
    groups: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for p in measured_phases(r, r.matrix):
        alloc = p.memory.peak_allocated_bytes if isinstance(p.memory, CudaPhaseMemory) else 0
        series = (p.record.variant.name, p.precision, p.path, p.name)
        groups.setdefault(series, []).append((p.timing.batch_size, alloc or 0))
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


def _comparisons(r: Results) -> dict[str, LogitsComparison]:
    return r.logits.comparisons if r.logits else {}


def _logits_check(r: Results, name: str, key: str, tolerance: float) -> CheckResult:
    entry = _comparisons(r).get(key)
    if entry is None:
        return CheckResult(name, "FAIL", f"no {key} comparison recorded")
    if entry.error:
        return CheckResult(name, "FAIL", entry.error)
    diff = entry.max_rel_diff
    if diff is None:  # NaN or inf in the logits (stored as null)
        return CheckResult(name, "FAIL", f"max rel diff not finite ({entry.what})")
    return _verdict(
        name, diff <= tolerance, f"max rel diff {diff:.2e} (tolerance {tolerance:.0e}; {entry.what})"
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
    runs = {k: e for k, e in _comparisons(r).items() if k.startswith("sdpa_fused_")}
    if not runs:
        return CheckResult(name, "FAIL", "no SDPA run recorded")
    bad, parts = [], []
    for key, e in runs.items():
        precision = key.removeprefix("sdpa_fused_")
        tol = TOLERANCE[precision] if precision != "fp32" else TOLERANCE["bf16"] / 10
        if e.error:
            bad.append(f"{precision}: {e.error}")
        elif e.max_rel_diff is None or e.max_rel_diff > tol:
            bad.append(f"{precision}: max rel diff {e.max_rel_diff} > {tol:.0e}")
        else:
            parts.append(f"{precision} {e.max_rel_diff:.1e}")
    return _result(name, bad, "ran and matched the unrestricted run: " + ", ".join(parts))


def _compared_in_own_precision(speed: SpeedRecord) -> bool:
    """Whether the speed run predates per-run precisions (schema 1): every path then ran in one autocast
    precision and was compared with plain in that precision, not with plain fp32."""
    return speed.settings.precision is not None


def _speed_runs(speed: SpeedRecord) -> Iterator[tuple[str, str, str, SpeedPath]]:
    """``(name, path, precision, run)`` of every run of a speed record."""
    for name, run in speed.paths.items():
        yield name, run.path or name, run.precision or "fp32", run


def _speed_run(speed: SpeedRecord | None, path: str) -> SpeedPath | None:
    """The speed run of ``path`` (``compiled``: the fp32 one if any, else the first in the record)."""
    if speed is None:
        return None
    runs = [run for _, p, _, run in _speed_runs(speed) if p == path]
    return speed.paths.get(path) or next(iter(runs), None)


def check_speed_paths(r: Results) -> CheckResult:
    name = "optimized / compiled logits vs plain (speed run)"
    if r.speed is None:
        return CheckResult(name, "FAIL", "no speed record")
    bad, parts, tols = [], [], {}
    for run, path, precision, e in _speed_runs(r.speed):
        if path == "plain" and precision == "fp32":  # the reference
            continue
        tol = TOLERANCE[precision] if precision != "fp32" else COMPILED_FP32_TOLERANCE
        tols[precision] = tol
        diff = e.max_rel_diff_vs_plain
        if e.status != Status.OK or diff is None:
            bad.append(f"{run}: {e.status} {e.reason or ''}".strip())
        elif diff > tol:
            bad.append(f"{run}: max rel diff {diff:.2e} > {tol:.0e}")
        else:
            parts.append(f"{run} {diff:.1e}")
    where = ", ".join(f"{q}, tolerance {t:.0e}" for q, t in tols.items())
    reference = "plain in the same precision" if _compared_in_own_precision(r.speed) else "plain fp32"
    return _result(name, bad, f"{where}: " + ", ".join(parts) + f" (vs {reference})")


def check_compiled(r: Results) -> CheckResult:
    name = "torch.compile path runs"
    point = r.compiled_point
    rec = r.profiles.get(point or "")
    bad = []
    compile_s = (rec.compile_s or {}).get(INFER) if rec else None
    if rec is None:
        bad.append(f"no record for {point}")
    elif rec.status != Status.OK or not compile_s:
        bad.append(f"{point}: status {rec.status} ({rec.reason})")
    speed_compiled = _speed_run(r.speed, "compiled")
    if speed_compiled is None or speed_compiled.status != Status.OK:
        bad.append("speed: compiled path " + (speed_compiled.status if speed_compiled else "missing"))
    detail = ""
    if not bad and speed_compiled is not None:
        detail = f"profile compile {compile_s:.1f} s, speed compile {speed_compiled.compile_s or 0:.1f} s"
    return _result(name, bad, detail)


def check_compiled_shares(r: Results) -> CheckResult:
    name = f"compiled bf16 >= {100 * MIN_COMPILED_BF16_SHARE:.0f} % of the bf16 matmul ceiling (max-autotune, CUDA graphs)"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    if r.shares is None:
        return CheckResult(name, "FAIL", "no shares record")
    shares = r.shares.shares
    bf16 = shares.get("compiled-bf16", {}).get("bf16")
    problems = []
    if bf16 is None:
        problems.append("compiled-bf16 not timed")
    elif bf16 < MIN_COMPILED_BF16_SHARE:
        problems.append(f"compiled-bf16 at {100 * bf16:.1f} %")
    detail = f"{r.shares.variant} b{r.shares.batch_size}: " + ", ".join(
        f"{run} " + " / ".join(f"{100 * v:.1f} % of {k}" for k, v in share.items())
        for run, share in shares.items()
    )
    return _result(name, problems, detail)


def check_matrix_complete(r: Results) -> CheckResult:
    name = "profile matrix complete"
    planned = r.matrix
    missing = [p for p in planned if p not in r.profiles]
    bad = [
        f"{p}: {rec.status} ({rec.reason})"
        for p, rec in r.profiles.items()
        if p in planned and rec.status != Status.OK
    ]
    if missing:
        step = r.steps.get("profile-matrix")
        bad.insert(
            0,
            f"{len(missing)} of {len(planned)} points not recorded ({step.detail if step else 'step not run'})",
        )
    if not planned:
        bad.append("no plan recorded")
    return _result(name, bad, f"all {len(planned)} points ok")


def check_oom(r: Results) -> CheckResult:
    name = "OOM back-off records requested vs achieved batch"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA + " (no OOM error to catch on CPU)")
    point = r.oom_point
    rec = r.profiles.get(point or "")
    if rec is None:
        return CheckResult(name, "FAIL", f"no record for {point}")
    phase = next(iter((rec.throughput or {}).values()), None)
    if rec.status != Status.OK or phase is None:
        return CheckResult(name, "FAIL", f"status {rec.status} ({rec.reason})")
    requested, achieved = phase.timing.requested_batch_size, phase.timing.batch_size
    env_batch = rec.environment.batch_size
    asked = rec.settings.batch_size  # the settings record what was asked
    ok = achieved < requested and env_batch == achieved and asked == requested
    return _verdict(name, ok, f"requested {requested}, achieved {achieved} (environment batch {env_batch})")


def _energy(timing: PhaseTiming) -> tuple[float | None, str, str | None]:
    """Joules, method and error of a phase's NVML energy reading (the one place that reads it)."""
    e = timing.energy
    return (None, "", None) if e is None else (e.joules, e.method or "", e.error)


def check_energy(r: Results) -> CheckResult:
    name = "NVML energy of the timed loops -> images per joule"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    bad, unsupported, n, methods = [], [], 0, set()
    for p in measured_phases(r):
        joules, method, error = _energy(p.timing)
        n += 1
        if joules and p.timing.img_per_j:
            methods.add("counter" if "TotalEnergy" in method else "power samples")
        elif "NotSupported" in str(error):
            unsupported.append(p.point)
        else:
            bad.append(f"{p.where}: {error or 'no energy reading'}")
    if n and len(unsupported) == n:
        return _skip(name, "NVML reports energy and power as not supported on this board")
    if n == 0:
        bad.append("no timed phase")
    return _result(name, bad, f"read in all {n} timed phases ({', '.join(sorted(methods))})")


def _finetune_optimizer(record: FinetuneRecord | None) -> str | None:
    """The AdamW implementation a finetune record names (fused, foreach ...)."""
    return record.hyper.optimizer.impl if record is not None and record.hyper is not None else None


def check_fused_adamw(r: Results) -> CheckResult:
    name = "fused AdamW in training"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA)
    bad = [
        f"{p.point}: {optimizer}"
        for p in measured_phases(r)
        if p.name == TRAIN and "fused" not in str(optimizer := p.record.settings.optimizer)
    ]
    impl = _finetune_optimizer(r.finetune)
    if impl != "fused":
        bad.append(f"finetune optimizer {impl}")
    return _result(name, bad, "profile train phases and finetune use AdamW(fused=True)")


def check_grad_scaler(r: Results) -> CheckResult:
    name = "fp16 training with a grad scaler stays finite"
    if not r.cuda:
        return _skip(name, NEEDS_CUDA + " (fp16 is CUDA-only here)")
    phases = [p for p in measured_phases(r) if p.name == TRAIN and p.precision == "fp16"]
    bad = [
        f"{p.point}: status {p.record.status}, last loss {p.run.last_loss}"
        for p in phases
        if p.record.status != Status.OK
    ]
    if not phases:
        bad.append("no fp16 training phase")
    return _result(name, bad, f"{len(phases)} fp16 train phases ok")


def _subprocess_step(r: Results, step: str) -> str | None:
    s = r.steps.get(step)
    if s is None:
        return f"step {step} not run"
    if s.exit_code != 0:
        return f"exit {s.exit_code}: {s.detail}"
    return None


def check_finetune(r: Results) -> CheckResult:
    name = f"finetune micro on {r.device} >= {MIN_FINETUNE_TOP1:.0f} % top-1"
    problem = _subprocess_step(r, "finetune")
    if problem:
        return CheckResult(name, "FAIL", problem)
    rec = r.finetune
    top1 = (rec.final.top1 or {}).get(SUM_HEAD) if rec and rec.final else None
    device = rec.environment.device if rec and rec.environment else None
    ok = top1 is not None and top1 >= MIN_FINETUNE_TOP1 and device == r.device
    top1_text = f"{top1:.1f} %" if top1 is not None else "none"
    return _verdict(name, ok, f"sum-head top-1 {top1_text} on {device}")


def check_ablate(r: Results) -> CheckResult:
    name = f"{ABLATE_CELLS}-cell ablate"
    problem = _subprocess_step(r, "ablate")
    bad = [problem] if problem else []
    bad += [
        f"{cell.label}: {cell.status} on {cell.device}"
        for cell in r.cells
        if cell.status != Status.OK or cell.device != r.device
    ]
    if len(r.cells) != ABLATE_CELLS:
        bad.append(f"{len(r.cells)} cells recorded")
    return _result(name, bad, f"{len(r.cells)} cells ok on {r.device}, each in its own process")


def check_report(r: Results) -> CheckResult:
    name = "report of the grid against itself exits 0"
    problem = _subprocess_step(r, "report")
    return CheckResult(name, "FAIL", problem) if problem else CheckResult(name, "PASS", "exit 0")


def check_torchrun(r: Results) -> CheckResult:
    backend = "nccl" if r.cuda else "gloo"
    name = f"finetune under torchrun (DDP over {backend})"
    step = r.steps.get("torchrun")
    if step is not None and "skipped: NCCL needs 2 GPUs" in step.detail:
        return _skip(name, step.detail.removeprefix("skipped: "))
    problem = _subprocess_step(r, "torchrun")
    if problem:
        return CheckResult(name, "FAIL", problem)
    run = r.torchrun
    env = run.environment if run else None
    ok = run is not None and run.status == Status.OK and env is not None and env.dist_backend == backend
    backend_text = f"backend {env.dist_backend}, world size {env.world_size}" if env else "no torchrun record"
    return _verdict(name, ok, backend_text)


def check_wall_clock(r: Results) -> CheckResult:
    name = f"whole check within {GPU_WALL_LIMIT_S:.0f} s"
    total = sum(s.elapsed_s or 0.0 for s in r.steps.values())
    if not r.cuda:
        return _skip(name, f"{total:.0f} s on CPU (the limit is for one GPU)")
    return _verdict(name, total <= GPU_WALL_LIMIT_S, f"{total:.0f} s")


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


def checks_record(results: list[CheckResult]) -> GpuCheckRecord:
    return GpuCheckRecord.of(results)
