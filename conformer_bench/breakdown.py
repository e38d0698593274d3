"""Time by component: where one forward pass of a Conformer spends its time, per part of the model.

Components (disjoint; every module of the model belongs to at most one):

* ``stem`` — conv 7x7, BN, ReLU, max-pool;
* ``cnn`` — the CNN branch: the entry bottleneck, every coupled block's bottleneck, med blocks and fusion block;
* ``transformer`` — patch embedding, the entry transformer block and every coupled block's transformer block;
* ``fcu_down`` / ``fcu_up`` — the two directions of the Feature Coupling Units;
* ``heads`` — the final LayerNorm and both classifiers;
* ``rest`` — what the forward runs outside those modules: the class-token concat, the sum of the FCU-down
  output and the tokens, the conv head's global pooling, a low-precision copy's input cast, Python glue.

How: forward pre- and post-hooks on each component's modules, registered for one timed forward and removed
after it, so the model carries no instrumentation otherwise (no code in ``conformer/`` changes, and an
uninstrumented forward runs exactly the model's code). On the CPU the hooks read ``perf_counter`` (the ops
are synchronous); on CUDA they record events, read after one synchronisation. Each round times an
uninstrumented forward and an instrumented one, interleaved. The hooks' own cost per call is calibrated on
an ``nn.Identity`` and taken out of ``rest``; the overhead is the measured ratio of instrumented to
uninstrumented forwards; the components' sum is checked against the uninstrumented forward, and a
difference past :data:`TOLERANCE` is shown as ``unattributed``.

FLOPs per component are paper-convention multiply-adds (conv + linear + matmul) of the plain model, counted
by fvcore per module (batch 1) and cached like the FLOP records; achieved GFLOP/s = 2 x MACs x batch /
median component seconds, against a matmul ceiling in the run's precision.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .costs import PAPER_OPERATORS
from .errors import BenchError
from .files import atomic_write_text, loads_json, read_in_folder
from .flops import SDPA_OP, _cache_folder, _tool_fingerprint, costs_of, sdpa_flop_jit
from .records import Status
from .records.breakdown import Breakdown, BreakdownCeiling, BreakdownOverhead, ComponentTime

if TYPE_CHECKING:
    import torch

    from conformer import Conformer, ConformerConfig

COMPONENTS: tuple[str, ...] = ("stem", "cnn", "transformer", "fcu_down", "fcu_up", "heads")
REST = "rest"
ROWS: tuple[str, ...] = (*COMPONENTS, REST)
LABELS = {
    "stem": "stem",
    "cnn": "CNN branch",
    "transformer": "transformer branch",
    "fcu_down": "FCU down",
    "fcu_up": "FCU up",
    "heads": "heads",
    REST: "the rest",
}
TOLERANCE = 0.05  # components' sum vs the uninstrumented forward
_TOP_LEVEL = {
    "stem": "stem",
    "cnn_entry": "cnn",
    "patch_embed": "transformer",
    "trans_entry": "transformer",
    "trans_norm": "heads",
    "conv_head": "heads",
    "trans_head": "heads",
}
_BLOCK_CHILD = {
    "cnn_block": "cnn",
    "fusion_block": "cnn",
    "trans_block": "transformer",
    "squeeze_block": "fcu_down",
    "expand_block": "fcu_up",
}
WHAT = (
    "time per component from forward pre/post hooks on its modules (perf_counter on CPU, CUDA events on GPU), "
    "median over interleaved rounds; 'the rest' = instrumented forward - components - hook calls x calibrated "
    "hook cost; share of forward = of the median uninstrumented forward; MACs: paper convention of the plain "
    "model (fvcore, batch 1); GFLOP/s = 2 x MACs x batch / median seconds, against a matmul in the run's precision"
)


def component_of(name: str) -> str | None:
    """The component whose root module is ``name`` (relative to the Conformer), else ``None``.

    ``stages.1.0.squeeze_block`` -> ``fcu_down``; ``stages.1.0.med_block.2`` -> ``cnn``; ``stages.1.0`` ->
    ``None`` (a container above the components); a module inside a component's root -> ``None``.
    """
    parts = name.split(".")
    if len(parts) == 1:
        return _TOP_LEVEL.get(parts[0])
    if parts[0] != "stages":
        return None
    if len(parts) == 4:
        return _BLOCK_CHILD.get(parts[3])
    if len(parts) == 5 and parts[3] == "med_block":
        return "cnn"
    return None


def conformer_root(model: torch.nn.Module) -> torch.nn.Module:
    """The module laid out as a Conformer (``stem`` and ``stages``) inside ``model`` (itself, or the model a
    low-precision copy wraps)."""
    for module in model.modules():
        if hasattr(module, "stem") and hasattr(module, "stages"):
            return module
    raise BenchError("time by component needs a Conformer's modules (stem, stages); this runner has none")


def component_modules(model: torch.nn.Module) -> dict[str, tuple[str, torch.nn.Module]]:
    """Qualified name -> (component, module) of every component root of ``model``'s Conformer."""
    root = conformer_root(model)
    return {
        name: (comp, module)
        for name, module in root.named_modules()
        if name and (comp := component_of(name)) is not None
    }


def breakdown_unavailable(backend: str, path: str) -> str | None:
    """Why a run has no time by component (its modules are gone), or ``None`` when it can have one."""
    if backend != "eager":
        return f"{backend} runs one graph: the model's module boundaries are not kept in it"
    if path == "compiled":
        return "torch.compile fuses across module boundaries (hooks would break the graph)"
    return None


# --- settings ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakdownSettings:
    device: str = "cpu"
    rounds: int = 5
    warmup: int = 1
    calibration_calls: int = 2000


# --- hooks -----------------------------------------------------------------------------------------------


class _Clock:
    """Start and stop marks of one hooked call: ``perf_counter`` on the CPU, CUDA events on a GPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        if self.cuda:
            import torch

            self.event = lambda: torch.cuda.Event(enable_timing=True)

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = self.event()
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        return float(end - start) if not self.cuda else start.elapsed_time(end) / 1000.0


class _ComponentHooks:
    """Pre/post hooks that collect the (start, end) marks of every component call of one forward."""

    def __init__(self, modules: dict[str, tuple[str, Any]], clock: _Clock) -> None:
        self.modules = modules
        self.clock = clock
        self.marks: list[tuple[str, Any, Any]] = []
        self.calls = 0  # hooked calls in the last forward read by take()
        self._open: dict[int, Any] = {}

    @contextmanager
    def attached(self) -> Iterator[None]:
        handles = []
        for comp, module in self.modules.values():
            handles.append(module.register_forward_pre_hook(self._pre(module)))
            handles.append(module.register_forward_hook(self._post(comp, module)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _pre(self, module: Any) -> Callable[..., None]:
        def pre(*_: Any) -> None:
            self._open[id(module)] = self.clock.mark()

        return pre

    def _post(self, comp: str, module: Any) -> Callable[..., None]:
        def post(*_: Any) -> None:
            self.marks.append((comp, self._open.pop(id(module)), self.clock.mark()))

        return post

    def take(self) -> dict[str, float]:
        """Seconds per component of the marks collected since the last call (synchronised on CUDA first)."""
        if self.clock.cuda:
            import torch

            torch.cuda.synchronize()
        out = dict.fromkeys(COMPONENTS, 0.0)
        for comp, start, end in self.marks:
            out[comp] += self.clock.seconds(start, end)
        self.calls = len(self.marks)
        self.marks = []
        return out


def hook_cost(device: str, calls: int) -> float:
    """Seconds one hooked call adds (pre + post hook with their marks), from ``calls`` calls of an
    ``nn.Identity`` with and without the hooks (minimum of three tries each, host time)."""
    import torch

    identity = torch.nn.Identity()
    x = torch.zeros(1)
    hooks = _ComponentHooks({"identity": ("stem", identity)}, _Clock(device))

    def loop() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            identity(x)
        return time.perf_counter() - start

    bare = min(loop() for _ in range(3))
    with hooks.attached():
        hooked = min(loop() for _ in range(3))
    hooks.take()
    return max(0.0, (hooked - bare) / calls)


# --- measurement -----------------------------------------------------------------------------------------


def measure_breakdown(
    run: Callable[[Any], Any],
    x: Any,
    settings: BreakdownSettings,
    macs: dict[str, int],
    ceiling: BreakdownCeiling | None,
    *,
    model: Any = None,
) -> Breakdown:
    """Time ``run(x)`` uninstrumented and instrumented, interleaved, and split the forward by component.

    ``model`` holds the modules to hook when ``run`` is not itself a module (a plain model under autocast);
    ``macs`` comes from :func:`component_macs`; ``ceiling`` is the matmul rate of the run's precision or
    ``None``. Call under ``torch.inference_mode()``.
    """
    import torch

    from .stats import bootstrap_ratio
    from .timing import synced_timer

    modules = component_modules(run if isinstance(run, torch.nn.Module) else model)
    hooks = _ComponentHooks(modules, _Clock(settings.device))
    timed = synced_timer(settings.device)
    cost = hook_cost(settings.device, settings.calibration_calls)
    for _ in range(settings.warmup):
        run(x)
    plain_s: list[float] = []
    inst_s: list[float] = []
    per_comp: dict[str, list[float]] = {c: [] for c in ROWS}
    for r in range(settings.rounds):
        instrumented_first = r % 2 == 1  # alternate the order within a round
        for instrumented in (instrumented_first, not instrumented_first):
            if not instrumented:
                plain_s.append(timed(lambda: run(x)))
                continue
            with hooks.attached():
                inst_s.append(timed(lambda: run(x)))
            comps = hooks.take()
            for comp, seconds in comps.items():
                per_comp[comp].append(seconds)
            per_comp[REST].append(inst_s[-1] - sum(comps.values()) - hooks.calls * cost)
    ratio, low, high = bootstrap_ratio(inst_s, plain_s)
    return _summarise(
        per_comp, plain_s, inst_s, (ratio, low, high), hooks.calls, cost, x.shape[0], macs, ceiling, settings
    )


def _summarise(
    per_comp: dict[str, list[float]],
    plain_s: list[float],
    inst_s: list[float],
    overhead: tuple[float, float, float],
    calls: int,
    cost: float,
    batch: int,
    macs: dict[str, int],
    ceiling: BreakdownCeiling | None,
    settings: BreakdownSettings,
) -> Breakdown:
    """Medians, shares, achieved rates and the sum-vs-forward check of the rounds' samples."""
    import numpy as np

    forward = float(np.median(plain_s))
    total_macs = sum(macs.values())
    components: dict[str, ComponentTime] = {}
    for comp in ROWS:
        seconds = float(np.median(per_comp[comp]))
        comp_macs = int(macs.get(comp, 0))
        rate = 2 * comp_macs * batch / seconds / 1e9 if comp_macs and seconds > 0 else None
        components[comp] = ComponentTime(
            seconds=seconds,
            samples_s=per_comp[comp],
            share_of_forward=seconds / forward,
            paper_macs_per_image=comp_macs,
            share_of_macs=comp_macs / total_macs if total_macs else 0.0,
            gflop_s=rate,
            ceiling_share=rate / ceiling.gflop_s
            if rate is not None and ceiling and ceiling.gflop_s
            else None,
        )
    total = sum(c.seconds for c in components.values())
    unattributed = forward - total
    return Breakdown(
        status=Status.OK,
        reason=None,
        device=settings.device,
        batch_size=batch,
        rounds=settings.rounds,
        timer="cuda events" if settings.device.startswith("cuda") else "perf_counter",
        what=WHAT,
        components=components,
        forward_s=forward,
        forward_samples_s=plain_s,
        instrumented_s=float(np.median(inst_s)),
        instrumented_samples_s=inst_s,
        overhead=BreakdownOverhead(
            ratio=overhead[0] - 1, low=overhead[1] - 1, high=overhead[2] - 1, confidence=0.95
        ),
        hook_calls=calls,
        hook_cost_s=cost,
        sum_s=total,
        unattributed_s=unattributed,
        unattributed_share=unattributed / forward,
        within_tolerance=abs(unattributed) <= TOLERANCE * forward,
        tolerance=TOLERANCE,
        paper_macs_per_image=total_macs,
        ceiling=ceiling or BreakdownCeiling(),
    )


# --- FLOPs per component ---------------------------------------------------------------------------------


def component_macs(model: Conformer, img_size: int) -> dict[str, int]:
    """Paper-convention MACs per image of each component of the plain ``model`` (``rest``: what is left),
    counted by fvcore per module at batch 1; cached on disk beside the FLOP records."""
    folder = _cache_folder()
    path = None
    if folder is not None:
        weights_free = {k: v for k, v in model.cfg.to_dict().items() if k not in ("name", "from_paper")}
        key = {"kind": "component-macs", "config": weights_free, "img_size": img_size, **_tool_fingerprint()}
        path = (
            folder / f"components-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()}.json"
        )
        cached = _read_component_cache(path, model.cfg, img_size)
        if cached is not None:
            return cached
    macs = _count_component_macs(model, img_size)
    if path is not None:
        with suppress(BenchError, OSError):
            atomic_write_text(path, json.dumps(macs))
    return macs


def _read_component_cache(path: Path, cfg: ConformerConfig, img_size: int) -> dict[str, int] | None:
    """The cached MACs per component, or ``None`` when there are none to trust: like the FLOP cache, a link
    or a non-regular file is never followed nor opened blocking, and an entry is used only when every
    component holds a whole number >= 0 and they add up to the closed-form total (else it is counted again)."""
    try:
        data = read_in_folder(path)
        cached = loads_json(data.decode("utf-8")) if data is not None else None
    except (OSError, ValueError, BenchError):
        return None
    if not isinstance(cached, dict) or set(cached) != set(ROWS):
        return None
    if not all(type(n) is int and n >= 0 for n in cached.values()):
        return None
    return cached if sum(cached.values()) == costs_of(cfg, img_size).paper_macs else None


def _count_component_macs(model: Conformer, img_size: int) -> dict[str, int]:
    import torch
    from fvcore.nn import FlopCountAnalysis

    param = next(model.parameters())
    x = torch.zeros(1, model.cfg.in_chans, img_size, img_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, (x,))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            analysis.set_op_handle(SDPA_OP, sdpa_flop_jit)
            by_module = analysis.by_module_and_operator()
    finally:
        model.train(was_training)

    def paper(name: str) -> int:
        return int(sum(n for op, n in by_module.get(name, {}).items() if op in PAPER_OPERATORS))

    macs = dict.fromkeys(ROWS, 0)
    for name, (comp, _) in component_modules(model).items():
        macs[comp] += paper(name)
    macs[REST] = paper("") - sum(macs.values())
    return macs


# --- rendering (rounding happens only here) --------------------------------------------------------------

COLUMNS = ("component", "ms (median)", "share of forward", "share of MACs", "GFLOP/s", "of ceiling")


def _s(value: float | None) -> float:
    """A measured number of an ok breakdown (NaN where a partial record lacks it)."""
    return math.nan if value is None else value


def rows(b: Breakdown) -> list[list[str]]:
    """Table rows of a breakdown: one per component, then the sum, the forward and the overhead."""
    out = []
    components = b.components or {}
    forward, total, tolerance = _s(b.forward_s), _s(b.sum_s), _s(b.tolerance)
    for comp in ROWS:
        c = components[comp]
        out.append([
            LABELS[comp],
            f"{1e3 * c.seconds:.2f}",
            f"{100 * c.share_of_forward:.1f} %",
            f"{100 * c.share_of_macs:.1f} %",
            f"{c.gflop_s:.1f}" if c.gflop_s is not None else "—",
            f"{100 * c.ceiling_share:.1f} %" if c.ceiling_share is not None else "—",
        ])  # fmt: skip
    check = "ok" if b.within_tolerance else "past"
    out.append([
        "sum",
        f"{1e3 * total:.2f}",
        f"{100 * total / forward:.1f} %",
        "100.0 %", "—", "—",
    ])  # fmt: skip
    out.append([
        f"unattributed ({check} ±{100 * tolerance:.0f} %)",
        f"{1e3 * _s(b.unattributed_s):+.2f}",
        f"{100 * _s(b.unattributed_share):+.1f} %",
        "—", "—", "—",
    ])  # fmt: skip
    out.append(["uninstrumented forward", f"{1e3 * forward:.2f}", "100.0 %", "—", "—", "—"])
    return out


def _overhead(b: Breakdown) -> tuple[float, float, float]:
    """The overhead's ratio and 95 % interval (instrumented / uninstrumented - 1)."""
    o = b.overhead
    return (o.ratio, o.low, o.high) if o is not None else (math.nan, math.nan, math.nan)


def note(b: Breakdown) -> str:
    """One line: the instrumentation's overhead and the hook calibration."""
    ratio, low, high = _overhead(b)
    calls, cost = b.hook_calls or 0, _s(b.hook_cost_s)
    return (
        f"instrumented forward {1e3 * _s(b.instrumented_s):.2f} ms vs {1e3 * _s(b.forward_s):.2f} ms "
        f"uninstrumented: overhead {100 * ratio:+.1f} % [{100 * low:+.1f}, {100 * high:+.1f}] "
        f"(95 % CI, {b.rounds} interleaved rounds); {calls} hooked calls x "
        f"{1e6 * cost:.1f} µs calibrated = {1e3 * calls * cost:.2f} ms, "
        "taken out of 'the rest'; without a breakdown no hook is registered"
    )


def profile_rows(b: Breakdown | None) -> list[tuple[str, str, str, str]]:
    """The ``time by component`` rows of a profile table: (section, metric, value, what it counts)."""
    if b is None or not b.ok:
        return []
    section = "time by component"
    out = []
    precision = b.ceiling.precision if b.ceiling is not None else None
    components = b.components or {}
    for comp in ROWS:
        c = components[comp]
        rate = (
            f"; {c.gflop_s:.1f} GFLOP/s = {100 * c.ceiling_share:.1f} % of the {precision} matmul"
            if c.gflop_s is not None and c.ceiling_share is not None
            else ""
        )
        out.append((
            section,
            LABELS[comp],
            f"{1e3 * c.seconds:.2f} ms",
            f"{100 * c.share_of_forward:.1f} % of the forward, {100 * c.share_of_macs:.1f} % of MACs{rate}",
        ))  # fmt: skip
    check = "within" if b.within_tolerance else "past"
    out.append((
        section,
        "sum / forward",
        f"{1e3 * _s(b.sum_s):.2f} / {1e3 * _s(b.forward_s):.2f} ms",
        f"unattributed {1e3 * _s(b.unattributed_s):+.2f} ms ({100 * _s(b.unattributed_share):+.1f} %, "
        f"{check} ±{100 * _s(b.tolerance):.0f} %); batch {b.batch_size}, {b.timer}",
    ))  # fmt: skip
    out.append((section, "overhead", f"{100 * _overhead(b)[0]:+.1f} %", note(b)))
    return out
