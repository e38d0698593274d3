"""Per-iteration timing of a step: warm-up, auto-ranged iteration count, raw samples, robust summary.

A CPU step can also be timed side by side with a fixed reference workload (:func:`gemm_reference`): each
timed iteration is bracketed by reference calls, and the ratio says how fast the step ran *relative to what
this machine did at that moment*. A shared host's slow phases slow both halves of a pair, so the ratio
holds across runs and hosts of one CPU kind where raw img/s moves by a third (docs/ci.md).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .records import PhaseTiming, ReferenceTiming
from .records.speed import LatencySummary
from .stats import summarize

ProgressFn = Callable[[int, int], None]  # (iterations done, iterations planned)


def plan_iters(estimate_s: float, budget_s: float, min_iters: int, max_iters: int) -> int:
    """Iterations that fit in ``budget_s`` at ``estimate_s`` each, clamped to [min_iters, max_iters]."""
    if estimate_s <= 0 or not math.isfinite(estimate_s):
        return max_iters
    return max(min_iters, min(max_iters, math.ceil(budget_s / estimate_s)))


@dataclass(frozen=True)
class ReferenceWorkload:
    """A fixed amount of plain-torch work timed beside each iteration of a step."""

    description: str
    flops: int  # floating-point operations of one call (a multiply-add counts 2)
    step: Callable[[], Any]


REFERENCE_GEMM_N = 256  # square fp32 matrices: small enough to stay in cache, large enough for the FMA units
REFERENCE_GEMM_CALLS = 8  # about 3 ms on one Zen 4 core, the order of a micro model's step


def gemm_reference(n: int = REFERENCE_GEMM_N, calls: int = REFERENCE_GEMM_CALLS) -> ReferenceWorkload:
    """``calls`` fp32 ``torch.mm`` of ``n x n`` by ``n x n`` on the CPU, into a preallocated output.

    Built before a phase's memory probe starts: its three matrices are the only memory it holds.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator)
    b = torch.randn(n, n, generator=generator)
    out = torch.empty(n, n)

    def step() -> None:
        for _ in range(calls):
            torch.mm(a, b, out=out)

    return ReferenceWorkload(f"{calls} x fp32 GEMM {n}x{n}x{n} (torch.mm, CPU)", 2 * n**3 * calls, step)


def reference_ratios(
    step_s: list[float], reference_s: list[float], batch_size: int, flops: int
) -> list[float]:
    """Images per reference GFLOP of each step: its img/s over the GFLOP/s of the reference calls just
    before and after it (``reference_s`` has one more entry than ``step_s``), i.e.
    ``batch * mean(t_reference before, after) / (t_step * GFLOP)``."""
    if len(reference_s) != len(step_s) + 1:
        raise ValueError("every step needs a reference call before and after it")
    gflop = flops / 1e9
    return [
        batch_size * (reference_s[i] + reference_s[i + 1]) / 2 / (sec * gflop) for i, sec in enumerate(step_s)
    ]


class _CudaTimer:
    """Brackets each iteration with CUDA events; reads them after one synchronisation at the end."""

    name = "cuda_event"

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.events: list[tuple[Any, Any]] = []

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def time_synced(self, step: Callable[[], Any]) -> float:
        """One iteration timed on the host with synchronisation on both sides (warm-up, calibration)."""
        self.sync()
        start = time.perf_counter()
        step()
        self.sync()
        return time.perf_counter() - start

    def run(self, step: Callable[[], Any], iters: int, progress: ProgressFn | None) -> list[float]:
        self.sync()
        pairs = []
        for i in range(iters):
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            pairs.append((start, end))
            if progress is not None:
                progress(i + 1, iters)
        self.sync()
        return [start.elapsed_time(end) / 1000.0 for start, end in pairs]


class _HostTimer:
    """``time.perf_counter`` around each iteration (CPU steps are synchronous)."""

    name = "perf_counter"

    def time_synced(self, step: Callable[[], Any]) -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    def run(self, step: Callable[[], Any], iters: int, progress: ProgressFn | None) -> list[float]:
        samples = []
        for i in range(iters):
            start = time.perf_counter()
            step()
            samples.append(time.perf_counter() - start)
            if progress is not None:
                progress(i + 1, iters)
        return samples

    def run_paired(
        self, step: Callable[[], Any], reference: Callable[[], Any], iters: int, progress: ProgressFn | None
    ) -> tuple[list[float], list[float]]:
        """One timed reference call, then ``iters`` times a timed step and a timed reference call: every
        step is bracketed by the reference calls just before and after it (``iters + 1`` of them)."""

        def timed(call: Callable[[], Any]) -> float:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start

        steps, references = [], [timed(reference)]
        for i in range(iters):
            steps.append(timed(step))
            references.append(timed(reference))
            if progress is not None:
                progress(i + 1, iters)
        return steps, references


def synced_timer(device: str) -> Callable[[Callable[[], Any]], float]:
    """Seconds of one call of a step, synchronised on both sides on CUDA (first calls, interleaved rounds)."""
    timer: _CudaTimer | _HostTimer = _CudaTimer(device) if device.startswith("cuda") else _HostTimer()
    return timer.time_synced


def time_once(step: Callable[[], Any], device: str) -> float:
    """Seconds of one call of ``step``, synchronised on both sides on CUDA (e.g. a first, compiling call)."""
    return synced_timer(device)(step)


def measure(
    step: Callable[[], Any],
    *,
    device: str,
    batch_size: int,
    warmup: int,
    iters: int | None,
    budget_s: float,
    min_iters: int,
    max_iters: int,
    requested_batch_size: int | None = None,
    progress: ProgressFn | None = None,
    reference: ReferenceWorkload | None = None,
) -> PhaseTiming:
    """Run ``warmup`` untimed-for-the-result iterations, then ``iters`` timed ones; return their timing.

    With ``iters=None`` the count is auto-ranged: the budget divided by the last warm-up iteration's time
    (so ``warmup`` must be >= 1), clamped to ``[min_iters, max_iters]``. ``latency_s`` is per batch.
    On CUDA the timed loop's energy is read from NVML (``energy``) and gives ``img_per_j``.
    With a CPU ``reference``, every timed iteration is bracketed by timed reference calls; the result then
    also holds ``reference`` (its samples and GFLOP/s) and ``img_per_ref_gflop`` (median over steps).
    """
    if iters is None and warmup < 1:
        raise ValueError("auto-ranged iterations need at least one warm-up iteration")
    if reference is not None and device.startswith("cuda"):
        raise ValueError("a reference workload times CPU steps only")
    timer: _CudaTimer | _HostTimer = _CudaTimer(device) if device.startswith("cuda") else _HostTimer()
    warmup_s = [timer.time_synced(step) for _ in range(warmup)]
    auto = iters is None
    if iters is None:
        estimate = statistics.median(warmup_s[1:]) if len(warmup_s) > 2 else warmup_s[-1]
        iters = plan_iters(estimate, budget_s, min_iters, max_iters)
    energy = None
    reference_s: list[float] | None = None
    if device.startswith("cuda"):
        from .energy import gpu_energy

        with gpu_energy(device) as energy:
            samples = timer.run(step, iters, progress)  # synchronises before returning
    elif reference is not None:
        assert isinstance(timer, _HostTimer)
        reference.step()  # an untimed first call (allocation, kernel selection)
        samples, reference_s = timer.run_paired(step, reference.step, iters, progress)
    else:
        samples = timer.run(step, iters, progress)
    summary = LatencySummary.from_dict(summarize(samples))
    joules = energy.joules if energy else None
    paired: dict[str, Any] = {}
    if reference is not None and reference_s is not None:
        paired = _paired_fields(samples, reference_s, batch_size, reference)
    return PhaseTiming(
        img_per_s=batch_size / summary.median,
        batch_size=batch_size,
        requested_batch_size=requested_batch_size if requested_batch_size is not None else batch_size,
        iters=iters,
        iters_auto=auto,
        budget_s=budget_s if auto else None,
        warmup=warmup,
        warmup_s=warmup_s,
        latency_s={
            "median": summary.median,
            "p90": summary.p90,
            "p99": summary.p99,
            "iqr": summary.iqr,
            "mean": summary.mean,
            "min": summary.min,
            "max": summary.max,
        },
        iqr_over_median=summary.iqr_over_median,
        noisy=summary.noisy,
        samples_s=samples,
        timer=timer.name,
        energy=energy,
        img_per_j=batch_size * iters / joules if joules else None,
        **paired,
    )


def _paired_fields(
    step_s: list[float], reference_s: list[float], batch_size: int, reference: ReferenceWorkload
) -> dict[str, Any]:
    """The :class:`PhaseTiming` fields of a step timed beside a reference workload."""
    ratios = reference_ratios(step_s, reference_s, batch_size, reference.flops)
    return {
        "img_per_ref_gflop": statistics.median(ratios),
        "ref_ratio_samples": ratios,
        "reference": ReferenceTiming(
            workload=reference.description,
            flops=reference.flops,
            gflop_per_s=reference.flops / statistics.median(reference_s) / 1e9,
            samples_s=reference_s,
        ),
    }
