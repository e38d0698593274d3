"""FLOP counts: fvcore's total, the paper's MAC convention, every uncounted op, and a torch cross-check.

Conventions
-----------
* ``fvcore_total``: fvcore's count, one fused multiply-add = one flop. Besides conv/linear/matmul it counts
  norms, adaptive pooling and upsampling; it counts 0 for element-wise ops (add, mul, softmax, GELU ...).
* ``paper_macs``: multiply-adds of conv + linear + matmul only (bmm, einsum and the two products inside
  ``scaled_dot_product_attention`` included): the convention of the paper's FLOPs column.
* The cross-check is ``torch.utils.flop_counter.FlopCounterMode`` (2 flops per MAC, math SDPA backend).

All counts are for batch 1 in eval mode (fvcore counts BatchNorm differently in train mode).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from .costs import PAPER_OPERATORS, Costs, closed_form, closed_params
from .errors import BenchError
from .files import atomic_write_text, loads_json, read_in_folder
from .params import COMPONENTS, _count_model, component_of, component_roots
from .records import FlopCounts, FlopCrossCheck

if TYPE_CHECKING:
    import torch

    from conformer import Conformer, ConformerConfig

CONVENTION = (
    "fvcore_total: fvcore, one fused multiply-add = one flop (also counts norms, adaptive pooling, "
    "upsampling); paper_macs: multiply-adds of conv + linear + matmul (incl. bmm/einsum/SDPA products); "
    "batch 1, eval mode"
)
SDPA_OP = "aten::scaled_dot_product_attention"
CROSS_CHECK_TOOL = "torch.utils.flop_counter.FlopCounterMode"


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore handle for ``aten::scaled_dot_product_attention``: MACs of q @ k^T and attn @ v.

    q: (..., L, E), k: (..., S, E), v: (..., S, Ev) -> L*S*E + L*S*Ev multiply-adds per leading index.
    Softmax, scaling and masking are element-wise and, as for the explicit path, not counted.
    """
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(val) for val in inputs[:3])
    assert q is not None and k is not None and v is not None, "SDPA inputs need complete shapes"
    lead = math.prod(q[:-2])  # batch x heads (of the query, which broadcasts over grouped keys)
    length, embed = q[-2], q[-1]
    source, value_dim = k[-2], v[-1]
    macs = lead * length * source * (embed + value_dim)
    return Counter({"scaled_dot_product_attention": int(macs)})


def _recording_zero_handle(op: str, seen: Counter[str]) -> Callable[[list[Any], list[Any]], Counter[str]]:
    """A handle that counts 0 flops, as fvcore does for ``op``, but records that ``op`` was seen."""

    def handle(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
        seen[op] += 1
        return Counter()

    return handle


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _ops_by_component(
    model: torch.nn.Module, by_module_and_op: dict[str, Counter[str]]
) -> dict[str, Counter[str]]:
    """Per-component operator counters that add up to the model's total.

    Ops inside a component's module go to that component. Ops run directly by a container's own forward are
    attributed by what they are: in ``Conformer.forward_head`` the global average pool belongs to the conv
    head (``heads``), other root-level ops (class-token concat, position embedding) to the transformer; in a
    coupled block's forward, the sum of the FCU-down output and the tokens belongs to the ``fcu``.
    """
    names = [name for name, _ in model.named_modules()]
    result: dict[str, Counter[str]] = {c: Counter() for c in COMPONENTS}
    for name, comp in component_roots(names).items():
        result[comp].update(by_module_and_op.get(name, Counter()))
    for name in names:
        if name and component_of(name) is not None:
            continue
        own = Counter(by_module_and_op.get(name, Counter()))
        prefix = f"{name}." if name else ""
        for child in names:
            if child.startswith(prefix) and child != name and "." not in child[len(prefix) :]:
                own.subtract(by_module_and_op.get(child, Counter()))
        for op, count in own.items():
            if count < 0:
                raise AssertionError(f"fvcore counted less in {name!r} than in its children ({op}: {count})")
            if count == 0:
                continue
            if name == "":
                comp = "heads" if op == "adaptive_avg_pool2d" else "transformer"
            else:
                comp = "fcu"
            result[comp][op] += count
    return result


def _fvcore_counts(model: Conformer, img_size: int, cross_check: bool) -> FlopCounts:
    """fvcore's count of a built model on one ``img_size``² image, on its device (left in its train/eval mode)."""
    import torch
    from fvcore.nn import FlopCountAnalysis

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, model.cfg.in_chans, img_size, img_size, device=device)
    with _eval_mode(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, (x,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        ignored_seen: Counter[str] = Counter()
        ignored = sorted(getattr(analysis, "_ignored_ops", set()))
        for op in ignored:
            analysis.set_op_handle(op, _recording_zero_handle(op, ignored_seen))
        analysis.set_op_handle(SDPA_OP, sdpa_flop_jit)
        total = int(analysis.total())
        by_operator = {op: int(n) for op, n in analysis.by_operator().items()}
        unsupported = {op: int(n) for op, n in sorted(analysis.unsupported_ops().items())}
        comp_ops = _ops_by_component(model, analysis.by_module_and_operator())
        cross = _cross_check(model, x) if cross_check else None

    paper_macs = sum(n for op, n in by_operator.items() if op in PAPER_OPERATORS)
    by_component = {
        comp: {
            "fvcore": int(sum(ops.values())),
            "paper_macs": int(sum(n for op, n in ops.items() if op in PAPER_OPERATORS)),
        }
        for comp, ops in comp_ops.items()
    }
    ignored_ops = {op: int(n) for op, n in sorted(ignored_seen.items())}
    return FlopCounts(
        convention=CONVENTION,
        img_size=img_size,
        batch_size=1,
        fvcore_total=total,
        paper_macs=int(paper_macs),
        by_operator=dict(sorted(by_operator.items())),
        by_component=by_component,
        uncounted_ops=dict(sorted({**unsupported, **ignored_ops}.items())),
        # fvcore warns about the first kind; it treats the second as zero-cost without a word.
        unsupported_ops=unsupported,
        ignored_ops=ignored_ops,
        handles_added=[SDPA_OP],
        cross_check=None if cross is None else _with_difference(cross, paper_macs),
    )


def _with_difference(cross: FlopCrossCheck, paper_macs: int) -> FlopCrossCheck:
    difference = (cross.macs - paper_macs) / paper_macs if paper_macs else None
    return replace(cross, relative_difference=difference)


def structural_twin(cfg: ConformerConfig, img_size: int) -> tuple[ConformerConfig, int]:
    """A config with the same layers and forward graph as ``cfg`` at ``img_size``, but one-element-wide.

    Widths and the image size change no operator's presence, only its cost; the position embedding is
    resampled exactly when the image's grid differs from the config's, so that choice is kept.
    """
    patch = cfg.patch_size
    twin = cfg.replace(
        base_channel=4,
        channel_ratio=1.0,
        embed_dim=4,
        num_heads=1,
        mlp_ratio=1.0,
        in_chans=1,
        num_classes=min(cfg.num_classes, 1),
        img_size=patch if cfg.img_size == img_size else 2 * patch,
    )
    return twin, patch


_PRIM_COUNTED = ("prim::PythonOp", "prim::CallFunction")  # the prim:: nodes fvcore does not skip


@lru_cache(maxsize=512)
def _uncounted_ops(twin: ConformerConfig, img_size: int) -> tuple[dict[str, int], dict[str, int]]:
    """fvcore's (unsupported, ignored) operator counts of a traced structural twin, on one thread.

    The twin is traced once, without fvcore's per-module scopes (only the whole model's counts are needed),
    and its nodes are sorted with fvcore's own tables as fvcore does.
    """
    import torch
    from fvcore.nn import FlopCountAnalysis
    from torch.jit import _get_trace_graph

    from conformer import create_model

    model = create_model(twin).eval()
    x = torch.zeros(1, twin.in_chans, img_size, img_size)
    # fvcore's own tables of the operators it counts and of those it deems free.
    analysis = FlopCountAnalysis(model, (x,))
    handled = set(analysis._op_handles) | {SDPA_OP}
    free = set(analysis._ignored_ops)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny trace: more threads only spin (and contend on a busy machine)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks, as fvcore silences them
            graph, _ = _get_trace_graph(model, (x,))
    finally:
        torch.set_num_threads(threads)
    unsupported: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    for node in graph.nodes():  # as fvcore walks the trace, without the per-module scopes
        kind = node.kind()
        if kind == "prim::PythonOp":
            kind = f"{kind}.{node.pyname()}"
        if kind in free:
            ignored[kind] += 1
        elif kind in handled or (kind.startswith("prim::") and not kind.startswith(_PRIM_COUNTED)):
            continue
        else:
            unsupported[kind] += 1
    return dict(sorted(unsupported.items())), dict(sorted(ignored.items()))


CACHE_ENV = "CONFORMER_BENCH_CACHE"  # a folder for the on-disk cache of FLOP records; "off" disables it


def _cache_folder() -> Path | None:
    setting = os.environ.get(CACHE_ENV)
    if setting is not None:
        return None if setting.strip().lower() in ("", "off", "0", "no") else Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "conformer-bench" / "flops"


@lru_cache(maxsize=1)
def _tool_fingerprint() -> dict[str, str]:
    """Versions of torch and fvcore and a digest of the counted code: any change starts a fresh cache."""
    from importlib.metadata import version

    import torch

    import conformer.layers
    import conformer.model

    from . import costs

    digest = hashlib.sha256()  # the model's code and the counting code
    for source in (conformer.model.__file__, conformer.layers.__file__, __file__, costs.__file__):
        digest.update(Path(source).read_bytes())
    return {"torch": torch.__version__, "fvcore": version("fvcore"), "code": digest.hexdigest()}


def _cache_path(cfg: ConformerConfig, img_size: int, cross_check: bool) -> Path | None:
    folder = _cache_folder()
    if folder is None:
        return None
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("name", "from_paper")}
    key = {"config": config, "img_size": img_size, "cross_check": cross_check, **_tool_fingerprint()}
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return folder / f"{name}.json"


def _config_counts(cfg: ConformerConfig, img_size: int, cross_check: bool) -> FlopCounts:
    """fvcore's count of ``create_model(cfg)`` without building it or running an image.

    Cached on disk (see :data:`CACHE_ENV`; written atomically, so concurrent runs are safe); a miss is
    counted by :func:`_count_from_config`.
    """
    path = _cache_path(cfg, img_size, cross_check)
    cached = _read_cache(path, cfg, img_size, cross_check) if path is not None else None
    if cached is not None:
        return cached
    result = _count_from_config(cfg, img_size, cross_check)
    if path is not None:
        with suppress(BenchError, OSError):  # a cache that cannot be written only costs time
            atomic_write_text(path, json.dumps(result.to_dict()))
    return result


def _read_cache(path: Path, cfg: ConformerConfig, img_size: int, cross_check: bool) -> FlopCounts | None:
    """The cached record of ``cfg``, or ``None`` when there is none that can be trusted: the cache is input
    like any other file. A link, a FIFO or any other non-regular file is never opened blocking nor followed;
    a record that fails :func:`_cached_record_ok` is counted again (and rewritten)."""
    try:
        data = read_in_folder(path)
        entry = loads_json(data.decode("utf-8")) if data is not None else None
        record = FlopCounts.from_dict(entry) if isinstance(entry, dict) else None
    except (OSError, ValueError, TypeError, AttributeError, BenchError):
        return None
    return record if record is not None and _cached_record_ok(record, cfg, img_size, cross_check) else None


def _counts_of_ops(value: Any) -> TypeGuard[dict[str, int]]:
    """``{operator name: count >= 0}``."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and type(n) is int and n >= 0 for k, n in value.items()
    )


def _cached_record_ok(record: FlopCounts, cfg: ConformerConfig, img_size: int, cross_check: bool) -> bool:
    """A cached FLOP record that is what :func:`_count_from_config` would return: the closed-form counts
    (recomputed here, microseconds) equal, the traced operator tallies well formed, the cross-check present
    exactly when asked for and self-consistent."""
    counts = closed_form(cfg, img_size)
    if (
        record.convention != CONVENTION
        or record.img_size != img_size
        or record.batch_size != 1
        or record.handles_added != [SDPA_OP]
        or record.fvcore_total != counts.fvcore_total
        or record.paper_macs != counts.paper_macs
        or record.by_operator != counts.by_operator
        or record.by_component != counts.by_component
    ):
        return False
    uncounted, unsupported, ignored = record.uncounted_ops, record.unsupported_ops, record.ignored_ops
    if not (_counts_of_ops(uncounted) and _counts_of_ops(unsupported) and _counts_of_ops(ignored)):
        return False
    if uncounted != {**unsupported, **ignored}:
        return False
    cross = record.cross_check
    if not cross_check:
        return cross is None
    if cross is None or cross.tool != CROSS_CHECK_TOOL:
        return False
    if type(cross.flops) is not int or cross.flops < 0 or cross.macs != cross.flops // 2:
        return False
    if not _counts_of_ops(cross.by_operator):
        return False
    paper = counts.paper_macs
    return cross.relative_difference == ((cross.macs - paper) / paper if paper else None)


def _count_from_config(cfg: ConformerConfig, img_size: int, cross_check: bool) -> FlopCounts:
    """fvcore's counts in closed form (:mod:`.costs`); the uncounted operators from a trace of a
    one-element-wide twin (same graph); the cross-check from FlopCounterMode on meta tensors."""
    counts = closed_form(cfg, img_size)
    unsupported, ignored = _uncounted_ops(*structural_twin(cfg, img_size))
    cross = None
    if cross_check:
        import torch

        x = torch.zeros(1, cfg.in_chans, img_size, img_size, device="meta")
        cross = _with_difference(
            _cross_check(_without_norms(build_on_meta(cfg).eval()), x), counts.paper_macs
        )
    return FlopCounts(
        convention=CONVENTION,
        img_size=img_size,
        batch_size=1,
        fvcore_total=counts.fvcore_total,
        paper_macs=counts.paper_macs,
        by_operator=counts.by_operator,
        by_component=counts.by_component,
        uncounted_ops=dict(sorted({**unsupported, **ignored}.items())),
        unsupported_ops=dict(unsupported),
        ignored_ops=dict(ignored),
        handles_added=[SDPA_OP],
        cross_check=cross,
    )


def _without_norms(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its BatchNorm and LayerNorm modules replaced by identities, in place.

    FlopCounterMode counts no norm (only conv, matmul and attention products), and on meta tensors the norms
    run through Python decompositions that took about nine tenths of a cross-check's time.
    """
    import torch

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
                setattr(module, name, torch.nn.Identity())
    return model


def _cross_check(model: torch.nn.Module, x: torch.Tensor) -> FlopCrossCheck:
    """Count with torch's FlopCounterMode on the math SDPA backend (its CPU flash kernel is not counted)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    flops = int(counter.get_total_flops())
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCrossCheck(
        tool=CROSS_CHECK_TOOL, flops=flops, macs=flops // 2, by_operator=by_op, relative_difference=None
    )


# --- fast counts for listings: no weights, no arithmetic ----------------------------------------------------


def _fills_meta_in_place(func: Any, args: tuple[Any, ...]) -> bool:
    """An in-place tensor method (``uniform_``, ``normal_``, ``fill_`` ...) called on a meta tensor."""
    import torch

    name = getattr(func, "__name__", "")
    return (
        name.endswith("_")
        and not name.startswith("_")
        and name not in ("resize_", "set_", "as_strided_", "requires_grad_")
        and bool(args)
        and isinstance(args[0], torch.Tensor)
        and args[0].is_meta
    )


def build_on_meta(cfg: ConformerConfig) -> torch.nn.Module:
    """Build the model with every tensor on the meta device (shapes only; no memory, no initialisation cost).

    The constructor reads a few scalars back from ``torch.linspace`` (stochastic-depth rates), so that one
    factory stays on the CPU. Falls back to building on the CPU and moving to meta.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    from conformer import create_model

    try:
        from torch.utils._device import _device_constructors
    except ImportError:  # pragma: no cover - private helper moved
        return create_model(cfg).to("meta")

    constructors = _device_constructors()

    class _MetaFactories(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
        ) -> Any:
            kwargs = dict(kwargs or {})
            if func in constructors and func is not torch.linspace and kwargs.get("device") is None:
                kwargs["device"] = "meta"
            elif _fills_meta_in_place(func, args):
                return args[0]  # weight initialisation: a meta tensor has no values to fill
            return func(*args, **kwargs)

    try:
        with _MetaFactories():
            model = create_model(cfg)
    except (RuntimeError, NotImplementedError):  # pragma: no cover - an op without a meta kernel
        return create_model(cfg).to("meta")
    return model.to("meta")  # anything a constructor created without a factory


# --- the one entry point ---------------------------------------------------------------------------------


def costs_of(
    subject: ConformerConfig | str | Conformer,
    img_size: int | None = None,
    *,
    exact: bool = False,
    cross_check: bool = False,
) -> Costs:
    """Parameters and FLOPs (batch 1, eval) of a config, a preset name or a built model at ``img_size``²
    (default: the config's).

    ``exact=False``: the closed form of :mod:`.costs` (microseconds, no torch; a built model's parameters are
    counted on it). ``exact=True`` adds the full :class:`FlopCounts`, with the operators fvcore leaves
    uncounted: fvcore on a built model (on its device), or for a config the closed form plus a trace of a
    one-element-wide twin (cached on disk, see :data:`CACHE_ENV`); ``cross_check`` adds FlopCounterMode's
    count of the same forward.
    """
    from conformer import ConformerConfig, get_config

    model = None
    if isinstance(subject, str):
        cfg = get_config(subject)
    elif isinstance(subject, ConformerConfig):
        cfg = subject
    else:
        model, cfg = subject, subject.cfg
    size = img_size or cfg.img_size
    params = _count_model(model) if model is not None else closed_params(cfg)
    if not exact:
        return closed_form(cfg, size, params)
    flops = (
        _fvcore_counts(model, size, cross_check)
        if model is not None
        else _config_counts(cfg, size, cross_check)
    )
    return Costs.of_record(params, flops)
