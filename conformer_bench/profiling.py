"""Profile one Conformer variant: params, FLOPs, memory and throughput -> a ``conformer-bench.profile`` record."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from . import memory, timing
from .backends import BACKENDS, EAGER, PrepareOptions, get_backend, require_installed
from .bounds import THREAD_LIMIT, check_count, check_input_memory
from .breakdown import BreakdownSettings, breakdown_unavailable, component_macs, measure_breakdown
from .env import fingerprint, resolve_device
from .errors import BenchError
from .flops import costs_of
from .memory import PhaseMemory, Probe
from .precision import precision_support
from .records import (
    Environment,
    PhaseTiming,
    ProfiledPhase,
    ProfileMemory,
    ProfileRecord,
    ProfileRunSettings,
    Status,
    Variant,
)
from .records.breakdown import Breakdown, BreakdownCeiling
from .steps import PATHS, autocast, heads_loss
from .threads import threads

if TYPE_CHECKING:
    import torch

    from conformer import Conformer, ConformerConfig

MODES = ("infer", "train", "both", "none")
PRECISIONS = ("fp32", "bf16", "fp16", "amp")

ProgressCallback = Callable[[str, float], None]  # (what is running, fraction of the whole profile done)


@dataclass(frozen=True)
class ProfileSettings:
    """What to measure and how. ``None`` picks a per-device default (see :data:`DEFAULTS`)."""

    device: str = "auto"
    batch_size: int | None = None
    img_size: int = 224
    mode: str = "both"  # infer | train | both | none (none = params + FLOPs only, no timing)
    precision: str = "fp32"  # fp32 | bf16 | fp16 | amp
    channels_last: bool = False
    threads: int | None = None
    warmup: int | None = None
    iters: int | None = None  # None = auto-ranged from the warm-up within a time budget per phase
    count_flops: bool = True
    cross_check: bool = True
    path: str = "plain"  # plain | optimized | compiled
    timing_reference: bool = False  # CPU: time a fixed GEMM beside every iteration (img per reference GFLOP)
    backend: str = "eager"  # where inference runs: eager (the path above), onnxruntime, openvino
    breakdown: bool = False  # infer: time by component of the inference runner (conformer_bench.breakdown)


@dataclass(frozen=True)
class DeviceDefaults:
    batch_size: int
    warmup: int
    budget_s: dict[str, float]  # per phase, for auto-ranged iteration counts
    min_iters: int
    max_iters: int


# CPU: a small batch and a few seconds per phase so that even Conformer-B profiles in about a minute on
# two cores. GPU: a batch that fills the device and enough iterations for stable medians.
DEFAULTS: dict[str, DeviceDefaults] = {
    "cpu": DeviceDefaults(
        batch_size=2, warmup=1, budget_s={"infer": 10.0, "train": 20.0}, min_iters=3, max_iters=100
    ),
    "cuda": DeviceDefaults(
        batch_size=64, warmup=10, budget_s={"infer": 5.0, "train": 10.0}, min_iters=20, max_iters=500
    ),
}


def device_defaults(device: str) -> DeviceDefaults:
    return DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise BenchError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate_settings(cfg: ConformerConfig, settings: ProfileSettings) -> None:
    """Every bad setting becomes a one-line :class:`BenchError` naming the fix (before anything is built)."""
    if settings.mode not in MODES:
        raise BenchError(f"--mode {settings.mode!r} is not valid; use one of {', '.join(MODES)}")
    if settings.precision not in PRECISIONS:
        raise BenchError(
            f"--precision {settings.precision!r} is not valid; use one of {', '.join(PRECISIONS)}"
        )
    if settings.path not in PATHS:
        raise BenchError(f"path {settings.path!r} is not valid; use one of {', '.join(PATHS)}")
    _positive("--batch-size", settings.batch_size)
    _positive("--img-size", settings.img_size)
    check_count(settings.threads, "--threads", THREAD_LIMIT)
    _positive("--warmup", settings.warmup, minimum=0)
    _positive("--iters", settings.iters)
    if settings.img_size % cfg.patch_size:
        p = cfg.patch_size
        near = max(p, round(settings.img_size / p) * p)
        raise BenchError(
            f"--img-size {settings.img_size} is not a multiple of the patch size {p}; use e.g. --img-size {near}"
        )
    _input_fits(cfg, settings)
    _train_batch_has_statistics(cfg, settings)
    if settings.iters is None and settings.warmup == 0 and settings.mode != "none":
        raise BenchError("--warmup 0 needs --iters N (the iteration count is auto-ranged from the warm-up)")
    if settings.path != "plain":
        inference_optimizer()
    if settings.timing_reference and settings.device.startswith("cuda"):
        raise BenchError("--timing-reference times CPU steps only; drop it or use --device cpu")
    _backend_fits(settings)


def _backend_fits(settings: ProfileSettings) -> None:
    """A deployment backend runs its own graph in fp32 or bf16; a breakdown needs the model's modules."""
    if settings.backend not in BACKENDS:
        raise BenchError(f"--backend {settings.backend!r} is not valid; use one of {', '.join(BACKENDS)}")
    if settings.backend != EAGER:
        require_installed((settings.backend,))
        if settings.path != "plain":
            raise BenchError(f"--backend {settings.backend} runs its own graph; drop --optimize / --compile")
        if settings.precision not in ("fp32", "bf16"):
            raise BenchError(f"--backend {settings.backend} runs fp32 or bf16; use --precision fp32 or bf16")
    if settings.breakdown:
        if settings.mode not in ("infer", "both"):
            raise BenchError("--breakdown times inference; use --mode infer or both")
        why_not = breakdown_unavailable(settings.backend, settings.path)
        if why_not is not None:
            raise BenchError(f"--breakdown is not available here: {why_not}; drop --breakdown")


def _train_batch_has_statistics(cfg: ConformerConfig, settings: ProfileSettings) -> None:
    """Training normalises over batch x map: one image on a 1x1 map gives BatchNorm a single value per
    channel, which it cannot train on. The CNN's last block runs at 1/32 of the input (its fusion block
    downsamples), an FCU up-projection on the token grid (1/patch)."""
    if settings.mode not in ("train", "both") or settings.batch_size != 1:
        return
    maps = []
    if cfg.branches != "transformer":
        maps.append(settings.img_size // 32)
    if cfg.branches == "dual" and cfg.coupling in ("both", "up"):
        maps.append(settings.img_size // cfg.patch_size)
    if maps and min(maps) <= 1:
        raise BenchError(
            f"training at --batch-size 1 and --img-size {settings.img_size} leaves BatchNorm one value per "
            f"channel on a 1x1 map; use --batch-size 2 or more, or --img-size {2 * max(32, cfg.patch_size)} or more"
        )


def _input_fits(cfg: ConformerConfig, settings: ProfileSettings) -> None:
    """Refuse a batch whose input tensor alone is larger than this machine's memory (host or GPU)."""
    if settings.batch_size is None or settings.mode == "none":
        return
    check_input_memory(cfg.in_chans, settings.batch_size, settings.img_size)


def inference_optimizer() -> Callable[..., Any]:
    """``conformer.optimize.optimize_for_inference``, or a BenchError when this install lacks it."""
    try:
        from conformer.optimize import optimize_for_inference
    except ImportError:
        raise BenchError(
            "--optimize/--compile are not available: this install has no conformer.optimize_for_inference; "
            "profile the plain path (drop the option)"
        ) from None
    fn: Callable[..., Any] = optimize_for_inference
    return fn


def autocast_dtype(precision: str, device: str) -> Any:
    """The autocast dtype of ``precision`` on ``device`` (``None`` = fp32, no autocast)."""
    import torch

    cuda = device.startswith("cuda")
    if precision == "fp32":
        return None
    if precision in ("bf16", "amp") and not cuda:
        _require_native_bf16(precision, device)
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if not cuda:
            raise BenchError(
                "--precision fp16 is not supported on CPU (no fast fp16 kernels; gradient scaling is CUDA-only "
                "here); use --precision bf16 or amp"
            )
        return torch.float16
    return torch.float16 if cuda else torch.bfloat16  # amp: the device's usual mixed precision


def _require_native_bf16(precision: str, device: str) -> None:
    """A CPU without bf16 instructions would emulate bf16 in fp32, slower than fp32: refuse to time that."""
    support = precision_support("bf16", device)
    if not support.supported:
        raise BenchError(f"--precision {precision}: {support.reason}; use --precision fp32")


def make_optimizer(params: Any, device: str) -> Any:
    """AdamW with the release's weight decay, fused kernels on CUDA, multi-tensor (foreach) on CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, fused=True)
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, foreach=True)


def _optimizer_note(device: str) -> str:
    return "AdamW(lr=1e-3, weight_decay=0.05, " + ("fused)" if device.startswith("cuda") else "foreach)")


class _Phase:
    """Inputs and the step function of one measured phase at a given batch size."""

    def __init__(self, step: Callable[[], Any], last: Callable[[], Any] | None = None) -> None:
        self.step = step
        self.last = last  # returns the last loss (train) for a finiteness check after timing


def _inputs(
    cfg: ConformerConfig, batch: int, img_size: int, device: str, channels_last: bool
) -> tuple[Any, Any]:
    import torch

    x = torch.randn(batch, cfg.in_chans, img_size, img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    num_classes = max(cfg.num_classes, 1)
    y = torch.randint(0, num_classes, (batch,), device=device)
    return x, y


def _infer_phase(
    model: Any,
    cfg: ConformerConfig,
    batch: int,
    img_size: int,
    device: str,
    cl: bool,
    dtype: torch.dtype | None,
) -> _Phase:
    import torch

    x, _ = _inputs(cfg, batch, img_size, device, cl)

    def step() -> Any:
        with torch.inference_mode(), autocast(device, dtype):
            return model(x)

    return _Phase(step)


def _train_phase(
    model: Any,
    cfg: ConformerConfig,
    batch: int,
    img_size: int,
    device: str,
    cl: bool,
    dtype: torch.dtype | None,
    precision: str,
) -> _Phase:
    import torch

    if cfg.num_classes == 0:
        raise BenchError("training needs a classifier: num_classes is 0; use --mode infer")
    x, y = _inputs(cfg, batch, img_size, device, cl)
    optimizer = make_optimizer(model.parameters(), device)
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    last: list[Any] = [None]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = heads_loss(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        last[0] = loss.detach()  # no .item() here: that would sync the host every step

    return _Phase(step, lambda: last[0])


def _free_device_memory(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


PHASES_OF_MODE: dict[str, tuple[str, ...]] = {
    "infer": ("infer",),
    "train": ("train",),
    "both": ("infer", "train"),
    "none": (),
}


class _ProfileProgress:
    """The share of the progress bar per stage, roughly proportional to the time each takes on CPU."""

    def __init__(self, callback: ProgressCallback | None, phases: tuple[str, ...], count_flops: bool) -> None:
        self.callback = callback
        self.weights = {"build": 0.05, "flops": 0.15 if count_flops else 0.0}
        self.weights.update({p: (0.25 if p == "infer" else 0.55) for p in phases})
        self.scale = 1.0 / sum(self.weights.values())
        self.done = 0.0

    def report(self, message: str, within: float = 0.0, stage: str | None = None) -> None:
        if self.callback is not None:
            extra = self.weights.get(stage, 0.0) * within if stage else 0.0
            self.callback(message, min(1.0, (self.done + extra) * self.scale))

    def iteration(self, phase: str, i: int, n: int) -> None:
        self.report(f"{phase}: iteration {i}/{n}", i / n, phase)

    def finish(self, stage: str) -> None:
        self.done += self.weights.get(stage, 0.0)


@dataclass(frozen=True)
class PhaseRun:
    """Everything the measurement of one phase needs besides its batch size.

    ``measure`` and ``phase_memory`` are :func:`conformer_bench.timing.measure` and
    :func:`conformer_bench.memory.phase_memory` unless replaced (e.g. by a fake probe).
    """

    phase: str  # infer | train
    model: Conformer
    cfg: ConformerConfig
    settings: ProfileSettings
    device: str
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    warmup: int
    defaults: DeviceDefaults
    path: str  # plain | optimized | compiled
    on_iter: Callable[[int, int], None]
    measure: Callable[..., PhaseTiming]
    phase_memory: Callable[[str], AbstractContextManager[Probe]]


@dataclass(frozen=True)
class PhaseResult:
    """One phase measured at one batch size."""

    timing: PhaseTiming
    memory: PhaseMemory
    finite: bool  # the last training loss is finite (always True for inference)
    precision: str
    last_loss: float | None
    compile_s: float | None  # seconds of a compiled runner's first call
    breakdown: Breakdown | None = None  # infer with --breakdown: time by component


@dataclass
class _Phases:
    """What the phases of a profile measured, and how the profile ended."""

    memory: ProfileMemory
    status: Status = Status.OK
    reason: str | None = None
    throughput: dict[str, ProfiledPhase] = field(default_factory=dict)
    path_by_phase: dict[str, str] = field(default_factory=dict)
    precision_by_phase: dict[str, str] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)
    breakdown: Breakdown | None = None


class _BackendCannotRun(Exception):
    """A deployment backend cannot run this variant in this precision (recorded as the profile's status)."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def profile_variant(
    cfg: ConformerConfig,
    settings: ProfileSettings,
    *,
    label: str | None = None,
    progress: ProgressCallback | None = None,
    defaults: DeviceDefaults | None = None,
    build: Callable[[], Any] | None = None,
) -> ProfileRecord:
    """Measure ``cfg`` under ``settings``: its ``conformer-bench.profile`` record (never rounded).

    ``defaults`` replaces the device's :data:`DEFAULTS` (batch, warm-up, time budget per phase); ``build``
    returns a fresh model of ``cfg`` instead of ``create_model(cfg)`` (e.g. a copy of one already built on
    the device, for many profiles of one variant in a process). ``settings.threads`` holds for the profile
    only.
    """
    validate_settings(cfg, settings)
    device = resolve_device(settings.device)
    if settings.timing_reference and device != "cpu":
        raise BenchError(f"--timing-reference times CPU steps only; {device} was picked, so add --device cpu")
    dtype = autocast_dtype(settings.precision, device)
    bar = _ProfileProgress(progress, PHASES_OF_MODE[settings.mode], settings.count_flops)
    with threads(settings.threads):
        record = _profile(
            cfg, settings, device, dtype, defaults or device_defaults(device), label, bar, build
        )
    if progress is not None:
        progress("done", 1.0)
    return record


def _profile(
    cfg: ConformerConfig,
    settings: ProfileSettings,
    device: str,
    dtype: torch.dtype | None,
    defaults: DeviceDefaults,
    label: str | None,
    bar: _ProfileProgress,
    build: Callable[[], Any] | None,
) -> ProfileRecord:
    """Build the model, count its parameters and FLOPs, measure its phases; the record of all that."""
    import torch

    from conformer import create_model

    started = time.perf_counter()
    phases = PHASES_OF_MODE[settings.mode]
    batch = settings.batch_size or defaults.batch_size
    warmup = settings.warmup if settings.warmup is not None else defaults.warmup

    bar.report("building the model")
    torch.manual_seed(0)
    # Costs only: params and FLOPs come from the config (same numbers), so no model is built.
    model: Any = (
        None
        if not phases and build is None
        else (build() if build is not None else create_model(cfg)).to(device)
    )
    params = costs_of(model if model is not None else cfg).params
    bar.finish("build")

    flops = None
    if settings.count_flops:
        bar.report("counting FLOPs (fvcore" + (" + FlopCounterMode)" if settings.cross_check else ")"))
        subject = model if model is not None else cfg
        flops = costs_of(subject, settings.img_size, exact=True, cross_check=settings.cross_check).flops
        bar.finish("flops")

    measured = _measure_phases(model, cfg, settings, device, dtype, batch, warmup, defaults, bar)
    achieved = [t.timing.batch_size for t in measured.throughput.values()]
    asked = asdict(settings)
    asked.update(
        device=device,
        batch_size=batch if phases else None,
        warmup=warmup if phases else None,
        threads=torch.get_num_threads(),
    )
    resolved = ProfileRunSettings(
        **asked,
        autocast_dtype=str(dtype).replace("torch.", "") if dtype is not None else None,
        path_by_phase=measured.path_by_phase,
        precision_by_phase=measured.precision_by_phase,
        optimizer=_optimizer_note(device) if "train" in phases else None,
    )
    return ProfileRecord(
        status=measured.status,
        reason=measured.reason,
        label=label or cfg.name,
        variant=Variant(name=cfg.name, label=label or cfg.name, config=cfg.to_dict()),
        environment=Environment.from_dict(
            fingerprint(
                device,
                settings.precision,
                min(achieved) if achieved else None,
                settings.img_size,
                threads_requested=settings.threads,
                channels_last=settings.channels_last,
                path=settings.path,
            )
        ),
        settings=resolved,
        params=params,
        flops=flops,
        memory=measured.memory if phases else None,
        throughput=measured.throughput,
        compile_s=measured.compile_s or None,
        wall_s=time.perf_counter() - started,
        breakdown=measured.breakdown,
    )


def _measure_phases(
    model: Any,
    cfg: ConformerConfig,
    settings: ProfileSettings,
    device: str,
    dtype: torch.dtype | None,
    batch: int,
    warmup: int,
    defaults: DeviceDefaults,
    bar: _ProfileProgress,
) -> _Phases:
    """Each phase in turn, at the largest batch up to ``batch`` that fits; stops at an OOM or a NaN."""
    phases = PHASES_OF_MODE[settings.mode]
    measured = _Phases(memory=ProfileMemory(device=device, method=memory.method(device)))
    for phase in phases:
        path = settings.path if phase == "infer" or settings.path == "compiled" else "plain"
        if phase == "infer" and settings.backend != "eager":
            path = settings.backend
        measured.path_by_phase[phase] = path
        run = PhaseRun(
            phase=phase,
            model=model,
            cfg=cfg,
            settings=settings,
            device=device,
            dtype=dtype,
            warmup=warmup,
            defaults=defaults,
            path=path,
            on_iter=partial(bar.iteration, phase),
            measure=timing.measure,
            phase_memory=memory.phase_memory,
        )
        try:
            result = _run_with_decaying_batch(run, batch, bar)
        except _BackendCannotRun as exc:
            measured.status, measured.reason = exc.status, f"{phase}: {exc.reason}"
            break
        bar.finish(phase)
        if result is not None and result.breakdown is not None:
            measured.breakdown = result.breakdown
        if result is None:
            measured.status = Status.OOM
            measured.reason = f"{phase}: out of memory even at batch size 1 (requested {batch})"
            break
        if result.compile_s is not None:
            measured.compile_s[phase] = result.compile_s
        measured.precision_by_phase[phase] = result.precision
        measured.throughput[phase] = ProfiledPhase(
            replace(result.timing, requested_batch_size=batch),
            result.precision,
            path,
            trained=phase == "train",
            last_loss=result.last_loss,
        )
        if phase == "infer":
            measured.memory = replace(measured.memory, infer=result.memory)
        else:
            measured.memory = replace(measured.memory, train=result.memory)
        if not result.finite:
            measured.status, measured.reason = Status.NAN, f"{phase}: the loss became non-finite"
            break
        if phase == "infer" and "train" in phases:
            model.train()
    return measured


def _run_with_decaying_batch(run: PhaseRun, batch: int, bar: _ProfileProgress) -> PhaseResult | None:
    """The phase at ``batch``, halved after each out-of-memory error; ``None`` when batch 1 does not fit."""
    while True:
        bar.report(f"{run.phase}: warm-up (batch {batch})", 0.0, run.phase)
        result = _try_run(run, batch)
        if result is not None:
            return result
        run.model.zero_grad(set_to_none=True)
        _free_device_memory(run.device)  # after the except block has ended, so the failed frames are released
        if batch == 1:
            return None
        batch //= 2


def _try_run(run: PhaseRun, batch: int) -> PhaseResult | None:
    """:func:`_run_phase`, or ``None`` on an out-of-memory error (any other error propagates)."""
    import torch

    try:
        return _run_phase(run, batch)
    except torch.OutOfMemoryError:
        return None


def _run_phase(run: PhaseRun, batch: int) -> PhaseResult:
    """Build and time one phase at ``batch``.

    The runner (optimised copy, channels-last, ``torch.compile`` wrapper) is built, and a compiled runner's
    first call (the compilation, kept as ``compile_s``) made, before the memory probe starts, so the
    phase's memory counts the step itself, not the copy, the fusion or the compiler.
    """
    import torch

    settings, device, dtype = run.settings, run.device, run.dtype
    runner, cl, backend_precision = _build_runner(run.phase, run.model, settings, dtype, run.path)
    reference = timing.gemm_reference() if settings.timing_reference else None
    # a bf16 optimized copy or a runtime casts its input itself; autocast would also cast fp32 heads to bf16
    infer_dtype = None if backend_precision is not None or _casts_itself(runner) else dtype

    def make() -> _Phase:
        if run.phase == "infer":
            return _infer_phase(runner, run.cfg, batch, settings.img_size, device, cl, infer_dtype)
        return _train_phase(runner, run.cfg, batch, settings.img_size, device, cl, dtype, settings.precision)

    first_call_s = None
    if run.path == "compiled":
        # One untimed call compiles; the warm-up and the auto-ranged iteration count then see compiled steps.
        first = make()
        first_call_s = timing.time_once(_compile_errors_as_bench_errors(first.step), device)
        del first
        run.model.zero_grad(set_to_none=True)  # the phase starts from the state a plain phase starts from
    with run.phase_memory(device) as mem:
        built = make()
        timed = run.measure(
            built.step,
            device=device,
            batch_size=batch,
            warmup=run.warmup,
            iters=settings.iters,
            budget_s=run.defaults.budget_s[run.phase],
            min_iters=run.defaults.min_iters,
            max_iters=run.defaults.max_iters,
            progress=run.on_iter,
            reference=reference,
        )
    finite, last_loss = True, None
    if built.last is not None:
        loss = built.last()
        finite = bool(torch.isfinite(loss).item()) if loss is not None else True
        last_loss = float(loss.item()) if loss is not None else None
    precision = backend_precision or _phase_precision(runner, settings.precision, dtype)
    breakdown = None
    if settings.breakdown and run.phase == "infer":
        breakdown = _breakdown(run, runner, batch, cl, infer_dtype)
    return PhaseResult(timed, mem.measured, finite, precision, last_loss, first_call_s, breakdown)


def _breakdown(run: PhaseRun, runner: Any, batch: int, cl: bool, dtype: torch.dtype | None) -> Breakdown:
    """Time by component of the inference runner, beside a matmul ceiling in the phase's precision."""
    import torch

    x, _ = _inputs(run.cfg, batch, run.settings.img_size, run.device, cl)
    ceiling = _matmul_ceiling(
        "bf16"
        if dtype is torch.bfloat16 or _casts_itself(runner)
        else ("fp16" if dtype is torch.float16 else "fp32"),
        run.device,
    )

    def forward(images: Any) -> Any:
        with autocast(run.device, dtype):
            return runner(images)

    macs = component_macs(run.model, run.settings.img_size)
    with torch.inference_mode():
        return measure_breakdown(
            forward, x, BreakdownSettings(device=run.device), macs, ceiling, model=runner
        )


def _matmul_ceiling(precision: str, device: str, n: int = 2048, calls: int = 5) -> BreakdownCeiling:
    """The rate of an n x n matmul in ``precision`` (median of ``calls``), the breakdown's ceiling."""
    import torch

    gen = torch.Generator().manual_seed(0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    timed = timing.synced_timer(device)
    timed(lambda: torch.mm(a, b))
    seconds = statistics.median(timed(lambda: torch.mm(a, b)) for _ in range(calls))
    return BreakdownCeiling(
        precision=precision, gflop_s=2 * n**3 / seconds / 1e9, op=f"torch.mm {precision} {n}x{n} @ {n}x{n}"
    )


def _build_runner(
    phase: str, model: Any, settings: ProfileSettings, dtype: torch.dtype | None, path: str
) -> tuple[Any, bool, str | None]:
    """The module (or a runtime's callable) a phase times, whether its inputs are channels-last, and the
    precision a deployment backend runs (``None`` for the eager paths).

    In bf16 the optimised path is the bf16 copy (``optimize_for_inference(dtype=torch.bfloat16)``: fused
    oneDNN bf16 ops, fp32 heads), run without autocast. Under fp16 autocast it keeps the unfused modules
    (``fuse_pointwise=False``): autocast does not reach inside the fused oneDNN ops.
    """
    import torch

    cl = settings.channels_last
    if phase == "infer" and settings.backend != "eager":
        return _backend_runner(model, settings)
    if phase == "infer":
        model.eval()
        if path != "plain":
            optimize = inference_optimizer()
            bf16 = dtype is torch.bfloat16
            runner = optimize(
                model,
                dtype=dtype if bf16 else None,
                channels_last=True,
                fold_bn=True,
                compile=path == "compiled",
                fuse_pointwise=dtype is None or bf16,
            )
            return runner, True, None
        return (model.to(memory_format=torch.channels_last) if cl else model), cl, None
    model.train()
    runner = model.to(memory_format=torch.channels_last) if cl else model
    if path == "compiled":
        runner = torch.compile(runner)
    return runner, cl, None


def _backend_runner(model: torch.nn.Module, settings: ProfileSettings) -> tuple[Any, bool, str]:
    """A deployment backend's callable for the eval model; :class:`_BackendCannotRun` when it has none."""
    import torch

    model.eval()
    options = PrepareOptions(
        device=settings.device, img_size=settings.img_size, threads=torch.get_num_threads()
    )
    prepared = get_backend(settings.backend).prepare(model, settings.precision, options)
    if not prepared.ok or prepared.run is None:
        raise _BackendCannotRun(prepared.status, f"{settings.backend}: {prepared.reason}")
    precision = prepared.precision
    if prepared.precision_name != precision:
        precision = f"{precision} ({settings.backend}: {prepared.precision_name})"
    return prepared.run, False, f"{precision}; {prepared.kernels}"


def _casts_itself(runner: Any) -> bool:
    """The runner is a low-precision optimized copy that casts its input and logits itself."""
    return hasattr(runner, "modules") and any(type(m).__name__ == "_LowPrecision" for m in runner.modules())


def _phase_precision(runner: Any, precision: str, dtype: torch.dtype | None) -> str:
    """The precision a phase ran in: the requested one, unless fused oneDNN ops kept it in fp32."""
    if dtype is None:
        return precision
    if _casts_itself(runner):
        fused = any(type(m).__name__.startswith("_Fused") for m in runner.modules())
        kernels = "fused oneDNN bf16 ops" if fused else "bf16 weights"
        return f"{precision} (optimize_for_inference dtype=bfloat16: {kernels}, fp32 heads; no autocast)"
    fused = any(type(m).__name__.startswith("_Fused") for m in runner.modules())
    return "fp32 (fused oneDNN ops ignore autocast)" if fused else precision


def _compile_errors_as_bench_errors(step: Callable[[], Any]) -> Callable[[], Any]:
    """A failure of torch.compile (no C++ compiler, unsupported op) is one line, not a traceback."""
    import torch

    first = [True]

    def wrapped() -> Any:
        if not first[0]:
            return step()
        first[0] = False
        try:
            return step()
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BenchError(
                f"torch.compile failed ({type(exc).__name__}: {message}); drop --compile"
            ) from None

    return wrapped
