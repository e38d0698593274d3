"""Interleaved speed measurement of the inference paths (plain, optimized, compiled) of one variant, per precision.

All paths run in one process, one forward pass each in turn (A B C M, then B C M A, ... with M a large matmul
per precision), so that load from other processes hits every path alike and ratios stay meaningful on a shared
machine. Precision is an axis: each path runs in fp32 and, where the device has native bf16, in bf16 (named
``<path>-bf16``), and each precision's share of ceiling is taken against a matmul in that precision timed in
the same rounds (more matmuls, e.g. TF32 and fp16 on CUDA, can be timed beside them with
``SpeedSettings.ceilings``). Next to each path's speed, its accuracy cost: logits relative error and top-1
agreement against the plain fp32 model. The record keeps every raw sample; rounding happens only in
:func:`render`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from . import breakdown as breakdown_mod
from .backends import BACKENDS, EAGER, Prepared, PrepareOptions, Runner, get_backend
from .backends.eager import kernels_of, run_name
from .bounds import THREAD_LIMIT, check_count, check_memory, check_seed
from .env import fingerprint
from .errors import BenchError, exception_line
from .files import dumps_json
from .flops import costs_of
from .formatting import render_rows_md
from .lists import comma_items
from .precision import PRECISIONS, PrecisionSupport, precision_support
from .records import Environment, FlopCounts, SpeedPath, SpeedRecord, Status, Variant
from .records.breakdown import Breakdown, BreakdownCeiling
from .records.speed import (
    Ceiling,
    EvaluationSet,
    ExportInfo,
    LatencySummary,
    PerHead,
    RunSettings,
    SpeedFlops,
    SpeedUp,
)
from .stats import bootstrap_ratio, summarize
from .steps import HEADS, PATHS, head_logits
from .tables import EMPTY, FORMATS, Column, Table
from .threads import threads
from .timing import synced_timer

if TYPE_CHECKING:
    import torch

    from conformer import Conformer, ConformerConfig
    from conformer.model import ConformerOutput

# Matmul ceilings: fp32 with TF32 off, fp32 inputs with TF32 tensor cores (CUDA), bf16 and fp16 inputs.
CEILINGS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
CUDA_ONLY_CEILINGS: tuple[str, ...] = ("tf32", "fp16")
FLOP_CONVENTION = (
    "achieved GFLOP/s = 2 x paper_macs x images / median seconds; paper_macs = multiply-adds of conv + linear + "
    "matmul of the plain model (fvcore, batch 1, eval; norms, pooling and element-wise ops excluded), counted "
    "once for all paths; the ceiling is 2 n^3 flops per n x n matmul in the path's precision (fp32: TF32 "
    "off), timed in the same rounds; executed GFLOP/s counts what a path runs instead (the optimized paths "
    "pool before the FCU-down 1x1 projection, an exact rewrite that skips some multiply-adds)"
)
ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class SpeedSettings:
    """What one ``speed`` run measures."""

    device: str = "cpu"
    batch_size: int = 8
    img_size: int = 224
    paths: tuple[str, ...] = PATHS
    precisions: tuple[str, ...] = PRECISIONS
    rounds: int = 10
    warmup: int = 2
    matmul_size: int = 2048
    threads: int | None = None
    channels_last: bool = True
    fold_bn: bool = True
    fuse_pointwise: bool = True
    pool_first: bool = True
    agreement_images: int = 32
    seed: int = 0
    ceilings: tuple[str, ...] = ()  # more matmul ceilings timed in the same rounds (see CEILINGS)
    backends: tuple[str, ...] = (
        EAGER,
    )  # eager runs ``paths``; the others run their own graph (plain fp32 always)
    breakdown: bool = False  # time by component of each eager path that has module boundaries
    breakdown_rounds: int = 5

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
                f"--matmul-size {self.matmul_size} is too small to measure a ceiling; use 64 or more (512 or more for a steady ceiling)"
            )
        if not self.paths or len(set(self.paths)) != len(self.paths):
            raise BenchError("--paths needs distinct names, e.g. plain,optimized,compiled")
        for path in self.paths:
            if path not in PATHS:
                raise BenchError(f"--paths: {path!r} is not a path; use a comma list of {', '.join(PATHS)}")
        if not self.precisions or len(set(self.precisions)) != len(self.precisions):
            raise BenchError("--precision needs distinct names, e.g. fp32,bf16")
        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise BenchError(
                    f"--precision: {precision!r} is not a precision; use a comma list of {', '.join(PRECISIONS)}"
                )
        if self.threads is not None and self.threads < 1:
            raise BenchError(f"--threads {self.threads} is not valid; use 1 or more")
        check_count(self.threads, "--threads", THREAD_LIMIT)
        cuda = self.device.startswith("cuda")
        for kind in self.ceilings:
            if kind not in CEILINGS:
                raise BenchError(f"ceiling {kind!r} is not valid; use one of {', '.join(CEILINGS)}")
            if kind in CUDA_ONLY_CEILINGS and not cuda:
                raise BenchError(f"ceiling {kind} is CUDA-only here; use fp32 or bf16 on CPU")
        if self.agreement_images < 0:
            raise BenchError(f"--agreement-images {self.agreement_images} is not valid; use 0 or more")
        if not self.backends or len(set(self.backends)) != len(self.backends):
            raise BenchError(f"--backend needs distinct names, e.g. {','.join(BACKENDS)}")
        for backend in self.backends:
            if backend not in BACKENDS:
                raise BenchError(
                    f"--backend: {backend!r} is not a backend; use a comma list of {', '.join(BACKENDS)}"
                )
        if self.breakdown_rounds < 3:
            raise BenchError(
                f"--breakdown-rounds {self.breakdown_rounds} is too few for a median; use 3 or more"
            )
        self._check_sizes()

    def _check_sizes(self) -> None:
        """The seed's range, and matrices that fit this machine's memory (checked before any is made)."""
        check_seed(self.seed)
        check_memory(
            3 * self.matmul_size**2 * 4,
            f"--matmul-size {self.matmul_size}",
            "its three n×n fp32 matrices",
            "lower --matmul-size (2048 is the default)",
        )

    def runs(self) -> list[tuple[str, str, str, str]]:
        """``(name, backend, path, precision)`` of every measured run, fp32 first, the eager paths first.

        Without ``eager`` among the backends, the plain fp32 model still runs: it is the reference of the
        ratios and the logits checks.
        """
        if EAGER in self.backends:
            out = [(run_name(p, q), EAGER, p, q) for q in self.precisions for p in self.paths]
        else:
            out = [("plain", EAGER, "plain", "fp32")]
        deployed = [b for b in self.backends if b != EAGER]
        return out + [(run_name(b, q), b, b, q) for q in self.precisions for b in deployed]

    def prepare_options(self, threads: int) -> PrepareOptions:
        """What the backends need of these settings (``threads``: the run's torch thread count)."""
        return PrepareOptions(
            device=self.device,
            img_size=self.img_size,
            threads=threads,
            channels_last=self.channels_last,
            fold_bn=self.fold_bn,
            fuse_pointwise=self.fuse_pointwise,
            pool_first=self.pool_first,
        )


def parse_list(text: str, option: str) -> tuple[str, ...]:
    """``"plain,compiled"`` -> ``("plain", "compiled")`` (validated later by :meth:`SpeedSettings.validate`)."""
    return tuple(part.lower() for part in comma_items(text, option))


def matmul_step(kind: str, a: torch.Tensor, b: torch.Tensor, device: str) -> Callable[[], Any]:
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


def ceiling_record(kind: str, n: int, samples: list[float]) -> Ceiling:
    """One matmul ceiling of ``kind`` (see :data:`CEILINGS`) from its seconds per call."""
    flop = 2.0 * n**3
    tf32 = " (TF32 tensor cores)" if kind == "tf32" else " (TF32 off)" if kind == "fp32" else ""
    return Ceiling(
        precision=kind,
        op=f"torch.mm {kind}{tf32} {n}x{n} @ {n}x{n}",
        matmul_size=n,
        flop_per_call=flop,
        samples_s=samples,
        latency_s=LatencySummary.from_dict(summarize(samples)),
        gflop_s=flop / float(np.median(samples)) / 1e9,
        gflop_s_best=flop / min(samples) / 1e9,
    )


def max_rel_diff(out: ConformerOutput, ref: ConformerOutput) -> float:
    """Largest ``max|a - b| / max|b|`` over the present heads."""
    return _worst_head(out, ref, lambda d, b: float(d.abs().max()) / (float(b.abs().max()) or 1.0))


def _max_abs_diff(out: ConformerOutput, ref: ConformerOutput) -> float:
    """Largest ``max|a - b|`` over the present heads (in the logits' own units)."""
    return _worst_head(out, ref, lambda d, b: float(d.abs().max()))


def _rms_rel_diff(out: ConformerOutput, ref: ConformerOutput) -> float:
    """Largest ``||a - b|| / ||b||`` (Frobenius) over the present heads: the typical error, where max is the worst."""
    return _worst_head(out, ref, lambda d, b: float(d.norm()) / (float(b.norm()) or 1.0))


def _worst_head(
    out: ConformerOutput, ref: ConformerOutput, error: Callable[[torch.Tensor, torch.Tensor], float]
) -> float:
    """The largest ``error(a - b, b)`` (in float32) over the heads present in both outputs."""
    worst = 0.0
    for a, b in zip(out, ref, strict=True):
        if a is not None and b is not None:
            worst = max(worst, error(a.float() - b.float(), b.float()))
    return worst


@dataclass
class _Agreement:
    """Top-1 agreement of one path with the plain fp32 model over the evaluation set, per head."""

    same: dict[str, int]
    images: int = 0

    def add(self, out: ConformerOutput, ref: dict[str, torch.Tensor]) -> None:
        for head, logits in head_logits(out).items():
            self.same[head] = self.same.get(head, 0) + int((logits.argmax(1) == ref[head].argmax(1)).sum())

    def fractions(self) -> PerHead:
        return PerHead(
            *(self.same[h] / self.images if h in self.same and self.images else None for h in HEADS)
        )


def measure_speed(
    cfg: ConformerConfig,
    settings: SpeedSettings,
    *,
    label: str | None = None,
    progress: ProgressFn | None = None,
) -> SpeedRecord:
    """Build ``cfg``, time every path interleaved, and return its ``conformer-bench.speed`` record.

    ``settings.threads`` holds for the run only.
    """
    settings.validate(cfg.patch_size)
    support = {q: precision_support(q, settings.device) for q in settings.precisions}
    if not any(s.supported for s in support.values()):
        reasons = "; ".join(str(s.reason) for s in support.values())
        raise BenchError(f"--precision: nothing to time ({reasons}); add fp32, e.g. --precision fp32,bf16")
    with threads(settings.threads):
        return _measure(cfg, settings, support, label, progress or (lambda message, fraction: None))


def _measure(
    cfg: ConformerConfig,
    settings: SpeedSettings,
    support: dict[str, PrecisionSupport],
    label: str | None,
    report: ProgressFn,
) -> SpeedRecord:
    """Build the paths, check them against plain fp32, time them interleaved with the matmuls; the record."""
    import torch

    from conformer import create_model

    device = settings.device
    timed = synced_timer(device)
    torch.manual_seed(settings.seed)
    plain = create_model(cfg).eval().to(device)
    report("counting FLOPs", 0.0)
    flops = _exact_flops(plain, settings.img_size)
    gen = torch.Generator().manual_seed(settings.seed)
    x = torch.randn(settings.batch_size, cfg.in_chans, settings.img_size, settings.img_size, generator=gen)
    x = x.to(device)
    eval_set = _evaluation_set(cfg, settings, device)
    n = settings.matmul_size
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    kinds = _ceiling_kinds(settings, support)
    matmuls = {kind: matmul_step(kind, a, b, device) for kind in kinds}

    report("preparing the paths and backends", 0.02)
    entries, runners = _build_paths(plain, settings)
    executed_macs = _executed_macs(plain, settings, flops.paper_macs)
    with torch.inference_mode():
        _first_calls(plain, runners, entries, x, eval_set, settings, timed, report)
        _describe_chosen_kernels(runners, entries)
        live = {name: run for name, run in runners.items() if entries[name].status == Status.OK}
        samples, matmul_s = _interleaved(live, matmuls, x, settings, timed, report)
    ceilings = {kind: ceiling_record(kind, n, s) for kind, s in matmul_s.items()}
    if settings.breakdown:
        with torch.inference_mode():
            _breakdowns(plain, live, entries, x, settings, ceilings, report)
    report("done", 1.0)

    paper_macs = flops.paper_macs
    for name, s in samples.items():
        entry = entries[name]
        executed = executed_macs if entry.backend == EAGER and entry.path != "plain" else paper_macs
        ceiling = ceilings[entry.precision]
        _fill_timing(entry, s, samples.get("plain"), settings.batch_size, paper_macs, executed, ceiling)
    return _speed_record(
        cfg=cfg,
        settings=settings,
        support=support,
        label=label,
        flops=flops,
        executed_macs=executed_macs,
        kinds=kinds,
        ceilings=ceilings,
        entries=entries,
        eval_set=eval_set,
    )


def _exact_flops(model: Conformer, img_size: int) -> FlopCounts:
    """fvcore's count of ``model``'s forward at ``img_size``² (batch 1, eval), with what it left uncounted."""
    flops = costs_of(model, img_size, exact=True).flops
    assert flops is not None  # exact=True always counts
    return flops


def _describe_chosen_kernels(runners: dict[str, Runner], entries: dict[str, SpeedPath]) -> None:
    """Each eager optimized run's kernels as chosen at its first calls (unknown when it was prepared); in place."""
    for name, run in runners.items():
        entry = entries[name]
        if entry.backend == EAGER and entry.path != "plain" and entry.status == Status.OK:
            entry.kernels = kernels_of(run, entry.path, entry.precision, entry.kernels or "")


def _ceiling_kinds(settings: SpeedSettings, support: dict[str, PrecisionSupport]) -> list[str]:
    """fp32 always (the record's ``ceiling``), each timed precision's own, then the extra ones asked for."""
    kinds = ["fp32", *(q for q in settings.precisions if q != "fp32" and support[q].supported)]
    return kinds + [k for k in settings.ceilings if k not in kinds]


def _build_paths(
    plain: torch.nn.Module, settings: SpeedSettings
) -> tuple[dict[str, SpeedPath], dict[str, Runner]]:
    """An entry per run and the runners of those that could be prepared (unsupported and failed ones recorded
    with their reason; plain's failure raised)."""
    import torch

    options = settings.prepare_options(torch.get_num_threads())
    entries: dict[str, SpeedPath] = {}
    runners: dict[str, Runner] = {}
    for name, backend, path, precision in settings.runs():
        prepared = get_backend(backend).prepare(plain, precision, options, path=path)
        entries[name] = _entry_of(prepared)
        if prepared.ok:
            assert prepared.run is not None
            runners[name] = prepared.run
    return entries, runners


def _entry_of(prepared: Prepared) -> SpeedPath:
    """The record of one run as prepared: status, reason, what it runs; timing is filled in later."""
    return SpeedPath(
        prepared.path,
        prepared.precision,
        prepared.status,
        prepared.reason,
        prepared.description,
        prepared.kernels,
        backend=prepared.backend,
        precision_name=prepared.precision_name,
        prepare_s=prepared.prepare_s,
        export=prepared.export,
    )


def _breakdowns(
    plain: Conformer,
    runners: dict[str, Runner],
    entries: dict[str, SpeedPath],
    x: torch.Tensor,
    settings: SpeedSettings,
    ceilings: dict[str, Ceiling],
    report: ProgressFn,
) -> None:
    """Time by component of every eager run that still has the model's modules (not compiled); in place."""
    macs = breakdown_mod.component_macs(plain, settings.img_size)
    bd = breakdown_mod.BreakdownSettings(device=settings.device, rounds=settings.breakdown_rounds, warmup=1)
    for name, entry in entries.items():
        if entry.status != Status.OK:
            continue
        why_not = breakdown_mod.breakdown_unavailable(entry.backend or EAGER, entry.path)
        if why_not is not None:
            entry.breakdown = Breakdown(status=Status.UNSUPPORTED, reason=why_not)
            continue
        report(f"time by component: {name}", 0.95)
        c = ceilings[entry.precision]
        ceiling = BreakdownCeiling(precision=c.precision, gflop_s=c.gflop_s, op=c.op)
        entry.breakdown = breakdown_mod.measure_breakdown(runners[name], x, bd, macs, ceiling, model=plain)


def _executed_macs(plain: Conformer, settings: SpeedSettings, paper_macs: int) -> int:
    """Multiply-adds per image the optimized paths run: fewer than plain's when they pool before FCU-down."""
    if not (settings.pool_first and any(p != "plain" for p in settings.paths)):
        return paper_macs
    from conformer.optimize import optimize_for_inference

    restructured = optimize_for_inference(
        plain, channels_last=False, fold_bn=False, fuse_pointwise=False, pool_first=True
    )
    counted = cast("Conformer", restructured)  # the same model class, restructured in place of copies
    return _exact_flops(counted, settings.img_size).paper_macs


def _speed_record(
    *,
    cfg: ConformerConfig,
    settings: SpeedSettings,
    support: dict[str, PrecisionSupport],
    label: str | None,
    flops: FlopCounts,
    executed_macs: int,
    kinds: list[str],
    ceilings: dict[str, Ceiling],
    entries: dict[str, SpeedPath],
    eval_set: list[torch.Tensor],
) -> SpeedRecord:
    """The ``conformer-bench.speed`` record of the timed paths; the best path is the fastest one timed."""
    import torch

    from conformer.optimize import fused_kernels_available, mkl_linear_available

    device = settings.device
    failed = [name for name, e in entries.items() if e.status == Status.FAILED]
    timed_ok = [name for name, e in entries.items() if e.timed]
    best = max(timed_ok, key=lambda name: entries[name].img_per_s or 0.0) if timed_ok else None
    environment = fingerprint(
        device,
        ",".join(settings.precisions),
        settings.batch_size,
        settings.img_size,
        fused_kernels=fused_kernels_available(device),
        mkl_linear=mkl_linear_available() and device == "cpu",
    )
    return SpeedRecord(
        status=Status.FAILED if failed else Status.OK,
        reason=next((f"{name}: {entries[name].reason}" for name in failed), None),
        environment=environment
        if isinstance(environment, Environment)
        else Environment.from_dict(environment),
        variant=Variant(cfg.name, label or cfg.name, cfg.to_dict()),
        settings=RunSettings(
            **{
                **asdict(settings),
                "paths": list(settings.paths),
                "precisions": list(settings.precisions),
                "ceilings": kinds,
                "backends": list(settings.backends),
                "threads": torch.get_num_threads(),
                "order": "interleaved, one forward per path per round, order rotated each round",
                "timer": "perf_counter" + (" + cuda synchronize" if device.startswith("cuda") else ""),
            }
        ),
        precision_support=dict(support),
        evaluation_set=EvaluationSet(
            images=sum(batch.shape[0] for batch in eval_set),
            what=f"{settings.agreement_images} images drawn from N(0, 1) with seed {settings.seed + 1} "
            f"({settings.img_size}², batches of {settings.batch_size}); the model's seeded weights",
        ),
        flops=SpeedFlops(
            convention=FLOP_CONVENTION,
            img_size=settings.img_size,
            paper_macs_per_image=flops.paper_macs,
            fvcore_total_per_image=flops.fvcore_total,
            flop_per_image=2 * flops.paper_macs,
            uncounted_ops=flops.uncounted_ops or {},
            executed_paper_macs_per_image_optimized=executed_macs,
        ),
        ceiling=ceilings["fp32"],
        ceilings=ceilings,
        paths=entries,
        best_path=best,
    )


def _evaluation_set(cfg: ConformerConfig, settings: SpeedSettings, device: str) -> list[torch.Tensor]:
    """The fixed images on which top-1 agreement with plain fp32 is counted (seeded, batches of the run's size)."""
    import torch

    gen = torch.Generator().manual_seed(settings.seed + 1)
    count, size = settings.agreement_images, settings.img_size
    images = torch.randn(count, cfg.in_chans, size, size, generator=gen).to(device)
    return list(images.split(settings.batch_size)) if count else []


def _first_calls(
    plain: torch.nn.Module,
    runners: dict[str, Runner],
    entries: dict[str, SpeedPath],
    x: torch.Tensor,
    eval_set: list[torch.Tensor],
    settings: SpeedSettings,
    timed: Callable[[Callable[[], Any]], float],
    report: ProgressFn,
) -> None:
    """First call (compilation for compiled paths), accuracy against plain fp32, then warm-up; in place."""
    reference = plain(x)
    eval_reference = [head_logits(plain(batch)) for batch in eval_set]
    for i, (name, run) in enumerate(runners.items()):
        report(f"first call: {name}", 0.05 + 0.15 * i / len(runners))
        entry = entries[name]
        try:
            out: Any = None

            def first(run: Runner = run) -> None:
                nonlocal out
                out = run(x)

            entry.first_call_s = timed(first)
            entry.compile_s = entry.first_call_s if entry.path == "compiled" else None
            entry.max_rel_diff_vs_plain = max_rel_diff(out, reference)
            entry.max_abs_diff_vs_plain = _max_abs_diff(out, reference)
            entry.rms_rel_diff_vs_plain = _rms_rel_diff(out, reference)
            agreement = _Agreement({}, sum(batch.shape[0] for batch in eval_set))
            for batch, ref in zip(eval_set, eval_reference, strict=True):
                agreement.add(run(batch), ref)
            entry.top1_agreement_vs_plain = agreement.fractions()
            for _ in range(settings.warmup):
                run(x)
        except Exception as exc:  # a path that cannot run (e.g. no C++ compiler) is recorded, not fatal
            if name == "plain":
                raise
            entry.status, entry.reason = Status.FAILED, exception_line(exc)


def _interleaved(
    runners: dict[str, Runner],
    matmuls: dict[str, Callable[[], Any]],
    x: torch.Tensor,
    settings: SpeedSettings,
    timed: Callable[[Callable[[], Any]], float],
    report: ProgressFn,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of every path and every precision's matmul, one call each per round, order rotated."""
    steps: list[tuple[str, Callable[[], Any]]] = [(name, partial(run, x)) for name, run in runners.items()]
    steps += [(f"matmul-{q}", mm) for q, mm in matmuls.items()]
    for _, mm in matmuls.items():
        timed(mm)  # warm the matmuls too
    seconds: dict[str, list[float]] = {name: [] for name, _ in steps}
    for r in range(settings.rounds):
        report(f"round {r + 1}/{settings.rounds}", 0.2 + 0.8 * r / settings.rounds)
        k = r % len(steps)  # rotate the order so that no path always runs first
        for name, step in steps[k:] + steps[:k]:
            seconds[name].append(timed(step))
    matmul_s = {q: seconds.pop(f"matmul-{q}") for q in matmuls}
    return seconds, matmul_s


def _fill_timing(
    entry: SpeedPath,
    s: list[float],
    plain_s: list[float] | None,
    batch: int,
    paper_macs: int,
    executed_macs: int,
    ceiling: Ceiling,
) -> None:
    """Statistics of one path's samples against its precision's ceiling (and plain fp32 when timed)."""
    latency = LatencySummary.from_dict(summarize(s))
    median = latency.median
    rate = LatencySummary.from_dict(summarize([batch / t for t in s]))
    assert rate.q25 is not None and rate.q75 is not None  # summarize gives the quartiles
    achieved = 2 * paper_macs * batch / median / 1e9
    executed = 2 * executed_macs * batch / median / 1e9
    entry.samples_s = s
    entry.latency_s = latency
    entry.img_per_s = batch / median
    entry.img_per_s_iqr = [rate.q25, rate.q75]
    entry.achieved_gflop_s = achieved
    entry.ceiling_precision = ceiling.precision
    entry.ceiling_share = achieved / ceiling.gflop_s
    entry.executed_paper_macs_per_image = executed_macs
    entry.executed_gflop_s = executed
    entry.executed_ceiling_share = executed / ceiling.gflop_s
    if plain_s is not None:
        ratio, low, high = bootstrap_ratio(plain_s, s)
        entry.speedup_vs_plain = SpeedUp(ratio, low, high, 0.95)


# --- rendering: one row per path, columns declared once ----------------------------------------------------


@dataclass(frozen=True)
class PathRow:
    """One path of a speed record, as a table row."""

    record: SpeedRecord
    name: str
    entry: SpeedPath

    @property
    def timed(self) -> bool:
        return self.entry.timed


@dataclass(frozen=True)
class _SciColumn(Column[PathRow]):
    """A column of small errors: files hold the value as measured, text shows two significant digits."""

    def text(self, row: PathRow) -> str:
        value = self.value(row)
        return EMPTY if value is None else f"{value:.1e}"


def _when_timed(get: Callable[[PathRow], Any]) -> Callable[[PathRow], Any]:
    return lambda r: get(r) if r.timed else None


def _precision_text(r: PathRow) -> str:
    """``fp32``, or ``fp32 (openvino: f32)`` where the backend names the precision otherwise."""
    e = r.entry
    return (
        e.precision
        if e.precision_name in (None, e.precision)
        else f"{e.precision} ({e.backend}: {e.precision_name})"
    )


def _status_text(r: PathRow) -> str:
    e = r.entry
    if not r.timed:
        return f"{e.status}: {e.reason}"
    return "ok" + (" (noisy)" if e.latency_s is not None and e.latency_s.noisy else "")


def _iqr_text(e: SpeedPath) -> str | None:
    return f"{e.img_per_s_iqr[0]:.2f}–{e.img_per_s_iqr[1]:.2f}" if e.img_per_s_iqr else None


def _speedup_text(e: SpeedPath) -> str | None:
    sp = e.speedup_vs_plain
    return f"{sp.ratio:.2f}× [{sp.low:.2f}, {sp.high:.2f}]" if sp else None


def _share_text(r: PathRow) -> str:
    e = r.entry
    return f"{100 * (e.ceiling_share or 0.0):.1f} % ({e.ceiling_precision or r.record.ceiling.precision})"


def _executed_text(e: SpeedPath) -> str:
    return f"{e.executed_gflop_s or 0.0:.1f} ({100 * (e.executed_ceiling_share or 0.0):.1f} %)"


def _errors_text(e: SpeedPath) -> str | None:
    worst, rms = e.max_rel_diff_vs_plain, e.rms_rel_diff_vs_plain
    if worst is None:
        return None
    return f"{worst:.1e} ({rms:.1e})" if rms is not None else f"{worst:.1e} (—)"


def _agreement_text(e: SpeedPath) -> str | None:
    share = e.top1_agreement_vs_plain.sum if e.top1_agreement_vs_plain else None
    return f"{100 * share:.1f} %" if share is not None else None


def _latency(e: SpeedPath) -> LatencySummary:
    assert e.latency_s is not None  # a timed path has its latency
    return e.latency_s


COLUMNS: tuple[Column[PathRow], ...] = (
    Column("variant", lambda r: r.record.variant.label, help="the label the variant ran under"),
    Column("batch_size", lambda r: r.record.settings.batch_size),
    Column("img_size", lambda r: r.record.settings.img_size),
    Column("threads", lambda r: r.record.settings.threads, help="torch intra-op threads of the run"),
    Column("path", lambda r: r.name, help="path, -precision when not fp32"),
    Column("precision", _precision_text),
    Column("status", _status_text),
    Column("img/s (median)", _when_timed(lambda r: r.entry.img_per_s), digits=2),
    Column("img/s IQR", _when_timed(lambda r: _iqr_text(r.entry))),
    Column("vs plain fp32 (95% CI)", _when_timed(lambda r: _speedup_text(r.entry))),
    Column("achieved GFLOP/s", _when_timed(lambda r: r.entry.achieved_gflop_s), digits=1),
    Column("of matmul ceiling (own precision)", _when_timed(_share_text)),
    Column("executed GFLOP/s (share)", _when_timed(lambda r: _executed_text(r.entry))),
    Column("latency median", _when_timed(lambda r: f"{1e3 * _latency(r.entry).median:.1f} ms")),
    Column("IQR/median", _when_timed(lambda r: f"{100 * _latency(r.entry).iqr_over_median:.1f} %")),
    Column(
        "first call / compile",
        _when_timed(lambda r: f"{r.entry.first_call_s:.2f} s" if r.entry.first_call_s is not None else None),
    ),
    Column("logits rel err vs fp32: max (rms)", _when_timed(lambda r: _errors_text(r.entry))),
    Column("top-1 agreement vs fp32", _when_timed(lambda r: _agreement_text(r.entry))),
    _SciColumn("logits max abs err vs fp32", _when_timed(lambda r: r.entry.max_abs_diff_vs_plain)),
)
PATH_COLUMNS = COLUMNS[4:]  # what the text formats show (the run's own settings are in their header)


def tidy(record: SpeedRecord) -> tuple[tuple[Column[PathRow], ...], list[PathRow]]:
    """The CSV columns of a speed record and its rows, one per path (``conformer_bench.api.TIDY``)."""
    return COLUMNS, [PathRow(record, name, e) for name, e in record.paths.items()]


def _breakdown_sections(record: SpeedRecord, fmt: str) -> list[str]:
    """One table of time by component per path that has one (``md`` or ``table``), and a line for the others."""
    sections = []
    for name, e in record.paths.items():
        bd = e.breakdown
        if bd is None:
            continue
        if not bd.ok:
            sections.append(f"time by component of {name}: {bd.status} ({bd.reason})")
            continue
        title = f"time by component of {name} (batch {bd.batch_size}, {bd.device}, {bd.timer}):"
        body = breakdown_mod.rows(bd)
        if fmt == "md":
            table = render_rows_md(breakdown_mod.COLUMNS, body)
        else:
            table = _plain_table(breakdown_mod.COLUMNS, body)
        sections.append(f"{title}\n\n{table}\n{breakdown_mod.note(bd)}")
    return sections


def _plain_table(columns: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(lines)


def _header_lines(record: SpeedRecord) -> list[str]:
    env, st, fl = record.environment, record.settings, record.flops
    return [
        f"variant {record.variant.label}: batch {st.batch_size}, {st.img_size}², {', '.join(st.precisions)}, "
        f"device {env.device} ({env.device_name or env.cpu_model}), {st.threads} threads, torch {env.torch}",
        f"{st.rounds} interleaved rounds after {st.warmup} warm-up calls per path; img/s = batch / median "
        "seconds per forward; vs plain = ratio of median latencies with a 95 % bootstrap interval",
        f"FLOPs per image: {fl.flop_per_image / 1e9:.4f} GFLOP (2 × paper MACs; fvcore total "
        f"{fl.fvcore_total_per_image / 1e9:.4f} G, one multiply-add = one flop); executed GFLOP/s counts "
        "the FLOPs a path runs (optimized paths pool before the FCU-down projection)",
        *(
            f"matmul ceiling {q}: {c.gflop_s:.1f} GFLOP/s median, {c.gflop_s_best:.1f} best ({c.op}, same rounds)"
            for q, c in record.ceilings.items()
        ),
        *(f"{q}: {s.reason}" for q, s in record.precision_support.items() if not s.supported),
        *(f"kernels of {name}: {e.kernels}" for name, e in record.paths.items() if e.kernels),
        *_export_lines(record),
        "first call / compile: seconds of the first forward (for compiled: torch.compile's compilation)",
        f"accuracy against the plain {st.reference}: logits rel err = max |Δlogit| / max |logit| (rms: ‖Δlogits‖ / "
        f"‖logits‖), worst head, on the timed batch; top-1 agreement of the summed heads on {_eval_what(record)}",
    ]


def _export_lines(record: SpeedRecord) -> list[str]:
    """How each runtime's ONNX graph came to be (one line per distinct export file)."""
    by_file: dict[str, tuple[ExportInfo, list[str]]] = {}
    for name, e in record.paths.items():
        if e.export is not None:
            by_file.setdefault(e.export.path, (e.export, []))[1].append(name)
    lines = []
    for export, names in by_file.values():
        how = "cache hit" if export.cache_hit else f"exported in {export.export_s:.1f} s"
        tools = ", ".join(f"{tool} {export.tools.get(tool)}" for tool in ("torch", "onnxscript"))
        lines.append(
            f"ONNX graph of {', '.join(names)}: torch.onnx.export(dynamo=True), dynamic batch, opset "
            f"{export.opset}, {how} ({tools})"
        )
    return lines


def _eval_what(record: SpeedRecord) -> str:
    return record.evaluation_set.what if record.evaluation_set is not None else "the evaluation set"


def path_table(record: SpeedRecord, columns: tuple[Column[PathRow], ...] = PATH_COLUMNS) -> Table[PathRow]:
    return Table(columns, tidy(record)[1])


def render(record: SpeedRecord, fmt: str) -> str:
    """``record`` in ``fmt``: json is the record itself; csv, jsonl and latex one row per path (the CSV with
    the run's variant, batch, image size and threads); md and table add the run's facts and time by
    component."""
    if fmt == "json":
        return dumps_json(record.to_dict())
    if fmt in ("csv", "jsonl", "latex"):
        return path_table(record, COLUMNS).render(fmt)
    if fmt == "md":
        text = "\n".join(f"- {line}" for line in _header_lines(record))
        return "\n\n".join([text, path_table(record).to_markdown(), *_breakdown_sections(record, "md")])
    if fmt == "table":
        table = path_table(record)
        widths = [
            max(len(c.header), *(len(t) for t in col))
            for c, col in zip(table.columns, zip(*table.texts(), strict=True), strict=True)
        ]
        text = table.to_rich_text(width=sum(widths) + 3 * len(widths) + 8)
        return (
            "\n\n".join(
                ["\n".join(_header_lines(record)), text.rstrip("\n"), *_breakdown_sections(record, "table")]
            )
            + "\n"
        )
    raise BenchError(f"--format {fmt!r} is not valid; use one of {', '.join(FORMATS)}")
