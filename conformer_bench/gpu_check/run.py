"""Run the GPU check: every CUDA path of the project once, within a wall-clock budget, records on disk.

Profiles, matmul ceilings, logits comparisons and the speed run happen in this process (one CUDA context,
no interpreter start-ups); finetune, ablate, report and torchrun run as real CLI subprocesses. Every step
prints its elapsed time, and one that would overrun the budget is skipped and says so.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..env import fingerprint
from ..errors import BenchError, exception_line
from ..files import atomic_write_text, write_json
from ..precision import precision_support
from ..records import ProfileRecord, Record, SpeedRecord, Status
from ..records.gpu_check import (
    CeilingsRecord,
    CheckEnvironment,
    CheckStep,
    LogitsComparison,
    LogitsRecord,
    SharesRecord,
    StepsLog,
)
from ..toggles import build_config
from .checks import checks_record, load_results, run_checks
from .plan import Plan, ProfilePoint
from .summary import render_summary

if TYPE_CHECKING:
    import torch

    from conformer import ConformerConfig

    from ..speed import SpeedSettings

ROOT = Path(__file__).resolve().parents[2]
StepFn = Callable[[], str | tuple[str, int]]  # returns a detail line, or (detail, exit code) for subprocesses
R = TypeVar("R", bound=Record)


class Runner:
    """Steps against a wall-clock budget; each one logged, timed and written to steps.json at once."""

    def __init__(self, plan: Plan, out_dir: Path) -> None:
        self.plan, self.out = plan, out_dir
        self.started = time.perf_counter()
        self.steps: list[CheckStep] = []
        self.lines: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.plan.budget_s - self.elapsed()

    def say(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {text}"
        print(line, flush=True)
        self.lines.append(line)

    def step(self, name: str, estimate_s: float, fn: StepFn) -> None:
        if self.remaining() < estimate_s:
            self._record(
                name,
                Status.SKIPPED,
                0.0,
                None,
                f"budget: {self.remaining():.0f} s left, needs ~{estimate_s:.0f} s",
            )
            return
        self.say(f"{name} ...")
        started = time.perf_counter()
        exit_code: int | None = None
        try:
            out = fn()
            detail, exit_code = out if isinstance(out, tuple) else (out, None)
            status = Status.OK if exit_code in (None, 0) else Status.FAILED
        except Exception as exc:  # a failed step is recorded and the check goes on
            status, detail = Status.FAILED, exception_line(exc)
        self._record(name, status, time.perf_counter() - started, exit_code, detail)

    def _record(self, name: str, status: Status, seconds: float, exit_code: int | None, detail: str) -> None:
        self.steps.append(CheckStep(name, status, seconds, exit_code, detail))
        self.say(f"{name}: {status} ({seconds:.1f} s) {detail}")
        write_json(self.out / "steps.json", StepsLog(self.steps, self.elapsed()).to_dict())


# --- in-process measurements ---------------------------------------------------------------------------------


def _config(variant: str) -> ConformerConfig:
    return build_config(variant)


def build_on_device(variant: str, device: str) -> torch.nn.Module:
    """A seeded model of ``variant`` initialised directly on ``device`` (CPU init of Conformer-B is slow)."""
    import torch

    from conformer import create_model

    torch.manual_seed(0)
    try:
        with torch.device(device):
            return create_model(_config(variant))
    except RuntimeError:  # an initialiser without a device kernel: build on the CPU and move
        torch.manual_seed(0)
        return create_model(_config(variant)).to(device)


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """cuBLAS and cuDNN in true fp32 for the block (torch's default lets cuDNN convolutions use TF32)."""
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def measure_ceilings(plan: Plan) -> CeilingsRecord:
    """n x n matmuls in every precision the plan profiles (and TF32 on CUDA): the denominators of the table."""
    import torch

    from ..speed import ceiling_record, matmul_step
    from ..timing import synced_timer

    n, device = plan.ceiling_size, plan.device
    kinds = ["fp32", "tf32", "bf16", "fp16"] if device.startswith("cuda") else ["fp32", "bf16"]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    timed = synced_timer(device)
    ceilings = {}
    for kind in kinds:
        step = matmul_step(kind, a, b, device)
        timed(step)  # warm-up
        samples = [timed(step) for _ in range(plan.ceiling_reps)]
        ceilings[kind] = ceiling_record(kind, n, samples)
    return CeilingsRecord(device=device, ceilings=ceilings)


class _CountSdpa:
    """Counts calls of ``scaled_dot_product_attention`` (a TorchFunctionMode), to prove the path uses it."""

    def __init__(self) -> None:
        import torch
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        counter = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func is F.scaled_dot_product_attention:
                    counter.calls += 1
                return func(*args, **(kwargs or {}))

        self.calls = 0
        self.mode = Mode()
        self.torch = torch


def _autocast(device_type: str, name: str) -> Any:
    """Autocast to ``name`` (bf16 / fp16), or no autocast for fp32."""
    import torch

    if name == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return torch.autocast(device_type=device_type, dtype=dtype)


def _fused_sdpa_entry(
    sdpa_model: torch.nn.Module, x: torch.Tensor, device_type: str, name: str
) -> LogitsComparison:
    """The optimized path with SDPA limited to flash + memory-efficient kernels vs any backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..speed import max_rel_diff

    what = f"optimized path, {name}, SDPA limited to flash + memory-efficient vs any backend"
    try:
        with _autocast(device_type, name):
            unrestricted = sdpa_model(x)
            counter = _CountSdpa()
            with (
                sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]),
                counter.mode,
            ):
                restricted = sdpa_model(x)
    except RuntimeError as exc:
        return LogitsComparison(what, None, error=f"RuntimeError: {str(exc).strip().splitlines()[0]}")
    error = "the optimized path made no scaled_dot_product_attention call" if counter.calls == 0 else None
    return LogitsComparison(what, max_rel_diff(restricted, unrestricted), counter.calls, error)


def compare_logits(plan: Plan) -> LogitsRecord:
    """Logits of one batch: bf16 / fp16 vs fp32, optimized vs plain, SDPA restricted to fused kernels."""
    import torch

    from conformer import optimize_for_inference

    from ..speed import max_rel_diff

    device, cuda = plan.device, plan.device.startswith("cuda")
    model = build_on_device(plan.logits_variant, device).eval()
    gen = torch.Generator().manual_seed(0)
    size = plan.img_size
    x = torch.randn(plan.logits_batch, 3, size, size, generator=gen).to(device)
    device_type = "cuda" if cuda else "cpu"
    comparisons: dict[str, LogitsComparison] = {}
    with torch.inference_mode():
        with tf32_off():
            reference = model(x)
            optimized = optimize_for_inference(model)
            comparisons["optimized_vs_plain_fp32"] = LogitsComparison(
                "optimize_for_inference vs plain eval model, fp32, TF32 off",
                max_rel_diff(optimized(x), reference),
            )
        for name in ("bf16", "fp16") if cuda else ("bf16",):
            with _autocast(device_type, name):
                out = model(x)
            comparisons[f"{name}_vs_fp32"] = LogitsComparison(
                f"plain model under {name} autocast vs fp32 with TF32 off", max_rel_diff(out, reference)
            )
        sdpa_model = optimize_for_inference(model, fuse_pointwise=False)
        for name in ("bf16", "fp32"):
            comparisons[f"sdpa_fused_{name}"] = _fused_sdpa_entry(sdpa_model, x, device_type, name)
    return LogitsRecord(device, plan.logits_variant, plan.logits_batch, size, comparisons)


class Profiler:
    """In-process profiles with the CLI's measurement core and record writer; one model build per variant."""

    def __init__(self, plan: Plan, out_dir: Path) -> None:
        self.plan, self.folder = plan, out_dir / "profile"
        self.models: dict[str, torch.nn.Module] = {}
        self.counted: set[str] = set()

    def run(
        self, point: ProfilePoint, *, iters: int | None = None, warmup: int | None = None
    ) -> ProfileRecord:
        import torch

        from ..profiling import DeviceDefaults, ProfileSettings, profile_variant

        plan = self.plan
        if point.variant not in self.models:
            self.models[point.variant] = build_on_device(point.variant, plan.device)
        pristine = self.models[point.variant]
        settings = ProfileSettings(
            device=plan.device,
            batch_size=point.batch_size,
            img_size=point.img_size,
            mode=point.mode,
            precision=point.precision,
            warmup=plan.warmup if warmup is None else warmup,
            iters=iters,
            count_flops=point.variant not in self.counted,  # FLOPs once per variant: they do not depend on it
            cross_check=False,
            path=point.path,
        )
        defaults = DeviceDefaults(
            batch_size=point.batch_size,
            warmup=settings.warmup or 1,
            budget_s=plan.budget_per_phase_s,
            min_iters=plan.min_iters,
            max_iters=plan.max_iters,
        )
        record = profile_variant(
            _config(point.variant),
            settings,
            label=point.name,
            defaults=defaults,
            build=lambda: copy.deepcopy(pristine),
        )
        self.counted.add(point.variant)
        write_json(self.folder / f"{point.name}.json", record.to_dict())
        if plan.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return record


def describe_profile(record: ProfileRecord) -> str:
    parts = [str(record.status)]
    for phase, run in (record.throughput or {}).items():
        t = run.timing
        memory = record.memory.phase(phase) if record.memory else None
        peak = getattr(memory, "peak_allocated_bytes", None) or getattr(memory, "peak_rss_increase_bytes", 0)
        batch = f"b{t.batch_size}" + (
            f" of {t.requested_batch_size}" if t.batch_size != t.requested_batch_size else ""
        )
        parts.append(
            f"{phase} {t.img_per_s:.1f} img/s ({batch}, {t.iters} iters, peak {(peak or 0) / 2**20:.0f} MiB)"
        )
    return ", ".join(parts)


def run_matrix(runner: Runner, profiler: Profiler) -> str:
    started = time.perf_counter()
    done, skipped, failed = 0, [], []
    for point in runner.plan.matrix:
        over = time.perf_counter() - started > runner.plan.matrix_budget_s
        if over or runner.remaining() < 60:
            skipped.append(point.name)
            continue
        try:
            record = profiler.run(point)
        except Exception as exc:  # one point's failure is reported; the others still run
            failed.append(f"{point.name} ({type(exc).__name__}: {str(exc).strip()[:120]})")
            runner.say(f"  {point.name}: failed: {failed[-1]}")
            continue
        runner.say(f"  {point.name}: {describe_profile(record)}")
        done += 1
    note = f"; failed: {', '.join(failed)}" if failed else ""
    note += f"; skipped for the budget: {', '.join(skipped)}" if skipped else ""
    return f"{done} of {len(runner.plan.matrix)} points{note}"


def _speed_settings(plan: Plan, batch_size: int, **more: Any) -> SpeedSettings:
    """The speed settings the check's runs share (device, image size, rounds, ceiling size) with ``more``."""
    from ..speed import SpeedSettings

    return SpeedSettings(
        device=plan.device,
        batch_size=batch_size,
        img_size=plan.img_size,
        rounds=plan.speed_rounds,
        warmup=2,
        matmul_size=plan.ceiling_size,
        **more,
    )


def _bf16_runs(plan: Plan) -> bool:
    """bf16 is timed on CUDA and on a CPU with native bf16 (a rehearsal without it times fp32 instead)."""
    return plan.device.startswith("cuda") or precision_support("bf16", plan.device).supported


def run_speed(plan: Plan, out_dir: Path) -> str:
    from ..speed import measure_speed

    cuda = plan.device.startswith("cuda")
    # plain / optimized / compiled in bf16; their logits are compared with the plain fp32 model
    settings = _speed_settings(
        plan,
        plan.speed_batch,
        precisions=("bf16",) if _bf16_runs(plan) else ("fp32",),
        ceilings=("tf32", "fp16") if cuda else (),
    )
    record = measure_speed(_config(plan.speed_variant), settings)
    write_json(out_dir / "speed.json", record.to_dict())
    return ", ".join(
        f"{p} {e.img_per_s:.1f} img/s" if e.status == Status.OK and e.img_per_s else f"{p} {e.status}"
        for p, e in record.paths.items()
    )


def run_shares(plan: Plan, out_dir: Path) -> str:
    """The plain and compiled paths (max-autotune and CUDA graphs on CUDA) of ``plan.shares_variant`` at
    ``plan.shares_batch``, fp32 and bf16 interleaved, as shares of the matmul ceilings: bf16 of the bf16
    tensor-core matmul, fp32 of both the TF32-off and the TF32 matmul (cuDNN convolutions run TF32 by
    default, cuBLAS fp32 matmuls do not: the settings in force are recorded)."""
    import torch

    from ..speed import measure_speed

    settings = _speed_settings(
        plan,
        plan.shares_batch,
        paths=("plain", "compiled"),
        precisions=("fp32", "bf16") if _bf16_runs(plan) else ("fp32",),
        ceilings=("tf32",) if plan.device.startswith("cuda") else (),
        agreement_images=0,
    )
    record = measure_speed(_config(plan.shares_variant), settings)
    tf32 = {
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    shares = ceiling_shares(record)
    write_json(
        out_dir / "shares.json",
        SharesRecord(plan.shares_variant, plan.shares_batch, tf32, shares, record).to_dict(),
    )
    return ", ".join(
        f"{name} " + " / ".join(f"{100 * v:.0f} % of {k}" for k, v in share.items())
        for name, share in shares.items()
    )


def ceiling_shares(record: SpeedRecord) -> dict[str, dict[str, float]]:
    """Each timed run's achieved FLOP/s as a share of its own precision's matmul ceiling and, for fp32, of
    the TF32 ceiling where one was timed."""
    ceilings = dict(record.ceilings)
    shares: dict[str, dict[str, float]] = {}
    for name, entry in record.paths.items():
        achieved = entry.achieved_gflop_s
        if achieved is None:
            continue
        share = {entry.precision: achieved / ceilings[entry.precision].gflop_s}
        if entry.precision == "fp32" and "tf32" in ceilings:
            share["tf32"] = achieved / ceilings["tf32"].gflop_s
        shares[name] = share
    return shares


# --- CLI subprocesses ---------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """This environment with the source tree first on PYTHONPATH (the check runs without an install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_cli(
    runner: Runner, args: list[str], log: Path, cap_s: float, module: list[str] | None = None
) -> tuple[str, int]:
    """``python -m conformer_bench ARGS`` (or ``python MODULE...``) with output to ``log``; (detail, exit code)."""
    cmd = [sys.executable, *(module or ["-m", "conformer_bench"]), *args]
    timeout = max(5.0, min(cap_s, runner.remaining() - 5))
    with log.open("wb") as fh:
        try:
            code = subprocess.run(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=ROOT,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s; see {log.name}", 124
    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    last = tail[-1][:200] if tail else ""
    return (f"exit {code}" + (f": {last}" if code else f"; log {log.name}")), code


def ablate_experiment(plan: Plan, out_dir: Path) -> Path:
    """A 4-cell experiment on the check's device, written next to its results."""
    text = f'''# Written by the GPU check: four micro cells on {plan.device}, costs only.
name = "gpu-check"
description = "micro: dual, CNN-only, no FCU, CNN-to-tokens coupling only; {plan.device}, bf16"
output_dir = "{(out_dir / "ablate").as_posix()}"

[base]
label = "micro"
variant = "{plan.ablate_variant}"

[profile]
device = "{plan.device}"
img_size = {plan.ablate_img_size}
mode = "both"
batch_size = {plan.ablate_batch}
warmup = 2
iters = 5
precision = "bf16"
cross_check = false

[[cells]]
label = "cnn-only"
branches = "cnn"

[[cells]]
label = "no-fcu"
coupling = "none"

[[cells]]
label = "couple-down-only"
coupling = "down"
'''
    path = out_dir / "ablate.toml"
    atomic_write_text(path, text)
    return path


def write_summary(runner: Runner, out_dir: Path, *, keep_console: bool = False) -> int:
    results = load_results(out_dir)
    checks = run_checks(results)
    record = checks_record(checks)
    write_json(out_dir / "checks.json", record.to_dict())
    atomic_write_text(out_dir / "summary.md", render_summary(results, checks))
    print("", flush=True)
    for check in checks:
        runner.say(check.line())
    runner.say(
        ", ".join(f"{n} {verdict}" for verdict, n in record.counts.items()) + f"; records in {out_dir}"
    )
    if not keep_console:  # the run's own console log; a re-check only prints
        atomic_write_text(out_dir / "console.txt", "\n".join(runner.lines) + "\n")
    return 1 if record.failed else 0


class CheckSteps:
    """The steps of one check run that are more than a call: each writes its record under ``out_dir``."""

    def __init__(self, plan: Plan, out_dir: Path, runner: Runner, profiler: Profiler, nproc: int) -> None:
        self.plan, self.out_dir = plan, out_dir
        self.runner, self.profiler, self.nproc = runner, profiler, nproc

    def ceilings(self) -> str:
        record = measure_ceilings(self.plan)
        write_json(self.out_dir / "ceilings.json", record.to_dict())
        return ", ".join(f"{k} {c.gflop_s / 1e3:.3g} TFLOP/s" for k, c in record.ceilings.items())

    def logits(self) -> str:
        record = compare_logits(self.plan)
        write_json(self.out_dir / "logits.json", record.to_dict())
        return ", ".join(
            f"{k} {c.max_rel_diff or 0:.1e}" + (" ERROR" if c.error else "")
            for k, c in record.comparisons.items()
        )

    def finetune_args(self, record: str, *extra: str) -> list[str]:
        """The micro fine-tune on this device, writing its JSON record to ``out_dir / record``."""
        plan, out_dir = self.plan, self.out_dir
        return ["finetune", "--variant", plan.finetune_variant, "--device", plan.device, *extra,
                "--no-progress", "--format", "json", "--output", str(out_dir / record)]  # fmt: skip

    def finetune(self) -> tuple[str, int]:
        args = self.finetune_args("finetune.json")
        return run_cli(self.runner, args, self.out_dir / "finetune.log", cap_s=self.plan.subprocess_cap_s)

    def ablate(self) -> tuple[str, int]:
        experiment = ablate_experiment(self.plan, self.out_dir)
        return run_cli(
            self.runner,
            ["ablate", str(experiment), "--output-dir", str(self.out_dir / "ablate")],
            self.out_dir / "ablate.log",
            cap_s=self.plan.subprocess_cap_s,
        )

    def report(self) -> tuple[str, int]:
        out_dir = self.out_dir
        grid = str(out_dir / "ablate")
        args = [
            "report",
            "--baseline",
            grid,
            "--current",
            grid,
            "--markdown",
            str(out_dir / "report.md"),
            "--json",
            str(out_dir / "report.json"),
        ]
        return run_cli(self.runner, args, out_dir / "report.log", cap_s=60)

    def torchrun(self) -> tuple[str, int]:
        if self.nproc < 2:
            return f"skipped: NCCL needs 2 GPUs, {self.nproc} visible", 0
        args = self.finetune_args("torchrun-finetune.json", "--steps", str(self.plan.torchrun_steps))
        module = [
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.nproc}",
            "-m",
            "conformer_bench",
        ]
        return run_cli(
            self.runner, args, self.out_dir / "torchrun.log", cap_s=self.plan.subprocess_cap_s, module=module
        )

    def oom(self) -> str:
        if self.plan.oom is None:
            return "skipped: needs CUDA (no OOM error to catch on CPU)"
        return describe_profile(self.profiler.run(self.plan.oom, iters=2, warmup=1))


def run_check(plan: Plan, out_dir: Path) -> int:
    """Every step in order of importance; returns the exit code (0: all PASS/SKIP, 1: a FAIL)."""
    import torch

    runner = Runner(plan, out_dir)
    device, cuda = plan.device, plan.device.startswith("cuda")
    env = CheckEnvironment.of(fingerprint(device, "fp32"), plan.summary(), plan.rehearsal)
    write_json(out_dir / "environment.json", env.to_dict())
    runner.say(
        f"GPU check on {env.device_name or env.cpu_model} ({device}), torch {env.torch}, "
        f"budget {plan.budget_s:.0f} s"
        + (" — CPU rehearsal: smallest sizes, CUDA-only checks skipped" if plan.rehearsal else "")
    )
    profiler = Profiler(plan, out_dir)
    nproc = min(2, torch.cuda.device_count()) if cuda else 2
    steps = CheckSteps(plan, out_dir, runner, profiler, nproc)

    gpu = not plan.rehearsal
    # Most telling first: when the budget runs short, the last steps are the ones skipped.
    runner.step("ceilings", 5, steps.ceilings)
    runner.step("logits", 15 if gpu else 30, steps.logits)
    runner.step("profile-matrix", 60, lambda: run_matrix(runner, profiler))
    runner.step("finetune", 25 if gpu else 60, steps.finetune)
    runner.step("profile-oom", 15 if cuda else 0, steps.oom)
    runner.step("profile-compiled", 50 if gpu else 30, lambda: describe_profile(profiler.run(plan.compiled)))
    runner.step("speed", 30, lambda: run_speed(plan, out_dir))
    runner.step("shares", 120 if gpu else 60, lambda: run_shares(plan, out_dir))
    runner.step("ablate", 35 if gpu else 60, steps.ablate)
    runner.step("report", 5, steps.report)
    runner.step("torchrun", (25 if gpu else 60) if nproc > 1 else 0, steps.torchrun)
    return write_summary(runner, out_dir)


def gpu_name_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def prepare_output(out_dir: Path) -> Path:
    """A fresh folder: an earlier run's folder is kept beside it with a time suffix."""
    if out_dir.exists() and any(out_dir.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(out_dir.stat().st_mtime))
        out_dir.rename(out_dir.with_name(f"{out_dir.name}.{stamp}"))
    try:
        (out_dir / "profile").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create {out_dir} ({exc.strerror}); pass another --output-dir") from None
    return out_dir
