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

import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import BenchError
from .params import COMPONENTS, component_of, component_roots

CONVENTION = (
    "fvcore_total: fvcore, one fused multiply-add = one flop (also counts norms, adaptive pooling, "
    "upsampling); paper_macs: multiply-adds of conv + linear + matmul (incl. bmm/einsum/SDPA products); "
    "batch 1, eval mode"
)
# fvcore operator names (as in ``by_operator``) that make up the paper's MAC column.
PAPER_OPERATORS: frozenset[str] = frozenset(
    {"conv", "linear", "matmul", "bmm", "einsum", "addmm", "mm", "scaled_dot_product_attention"}
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


def _model_for(model_or_cfg: Any) -> Any:
    from conformer import ConformerConfig, create_model

    if isinstance(model_or_cfg, ConformerConfig):
        return create_model(model_or_cfg)
    if isinstance(model_or_cfg, str):
        return create_model(model_or_cfg)
    return model_or_cfg


@contextmanager
def _eval_mode(model: Any) -> Iterator[Any]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _ops_by_component(model: Any, by_module_and_op: dict[str, Counter[str]]) -> dict[str, Counter[str]]:
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


def count_flops(model_or_cfg: Any, img_size: int = 224, *, cross_check: bool = True) -> dict[str, Any]:
    """The record's ``flops`` dict for one image of ``img_size``² (batch 1, eval mode).

    ``model_or_cfg``: a built model (counted on its device, left in its original train/eval mode), a
    :class:`conformer.ConformerConfig` or a preset name.
    """
    import torch
    from fvcore.nn import FlopCountAnalysis

    model = _model_for(model_or_cfg)
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
    uncounted = dict(sorted({**unsupported, **ignored_ops}.items()))
    result: dict[str, Any] = {
        "convention": CONVENTION,
        "img_size": img_size,
        "batch_size": 1,
        "fvcore_total": total,
        "paper_macs": int(paper_macs),
        "by_operator": dict(sorted(by_operator.items())),
        "by_component": by_component,
        "uncounted_ops": uncounted,
        # fvcore warns about the first kind; it treats the second as zero-cost without a word.
        "unsupported_ops": unsupported,
        "ignored_ops": ignored_ops,
        "handles_added": [SDPA_OP],
    }
    if cross is not None:
        cross["relative_difference"] = (cross["macs"] - paper_macs) / paper_macs if paper_macs else None
        result["cross_check"] = cross
    return result


def _cross_check(model: Any, x: Any) -> dict[str, Any]:
    """Count with torch's FlopCounterMode on the math SDPA backend (its CPU flash kernel is not counted)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    flops = int(counter.get_total_flops())
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"tool": CROSS_CHECK_TOOL, "flops": flops, "macs": flops // 2, "by_operator": by_op}


# --- fast counts for listings: no weights, no arithmetic ----------------------------------------------------


def build_on_meta(cfg: Any) -> Any:
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
            return func(*args, **kwargs)

    try:
        with _MetaFactories():
            model = create_model(cfg)
    except (RuntimeError, NotImplementedError):  # pragma: no cover - an op without a meta kernel
        return create_model(cfg).to("meta")
    return model.to("meta")  # anything a constructor created without a factory


def quick_counts(cfg: Any, img_size: int | None = None) -> dict[str, Any]:
    """Params and paper-convention MACs (batch 1, eval) of ``cfg`` in well under a second, on meta tensors.

    MACs come from FlopCounterMode (flops / 2) over shapes only; ``count_flops`` gives the full fvcore record.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from .params import count_params

    size = img_size or cfg.img_size
    model = build_on_meta(cfg).eval()
    x = torch.zeros(1, cfg.in_chans, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    return {"params": count_params(model), "macs": int(counter.get_total_flops()) // 2, "img_size": size}


MAC_LIMIT = 10**12  # per image: past this a variant is almost surely a typo (the release's base is ~23 G)
MED_BLOCK_LIMIT = 2000  # extra bottlenecks in the whole model (the paper's grid: at most 3 per block, 36)


def estimated_macs(cfg: Any, img_size: int | None = None) -> int:
    """Paper-convention MACs per image (batch 1), counted on shapes only, without building a large model.

    MACs grow linearly with ``num_med_block`` (each adds the same bottlenecks), so a config with many is
    extrapolated exactly from 0 and 1 extra blocks.
    """
    if cfg.num_med_block <= 1:
        return int(quick_counts(cfg, img_size)["macs"])
    none = int(quick_counts(cfg.replace(num_med_block=0), img_size)["macs"])
    one = int(quick_counts(cfg.replace(num_med_block=1), img_size)["macs"])
    return none + cfg.num_med_block * (one - none)


def refuse_huge(cfg: Any, img_size: int | None, force: bool) -> None:
    """A :class:`BenchError` when one image costs more than :data:`MAC_LIMIT` MACs, unless ``force``.

    Counted only past the presets' range (more than 4 extra bottlenecks, or images over 1024 px): the
    presets at those sizes stay far below the bound, so an ordinary run pays nothing for the check.
    """
    if force or (cfg.num_med_block <= 4 and (img_size or cfg.img_size) <= 1024):
        return
    extra = (cfg.depth - 1) * cfg.num_med_block  # every coupled block after the first stem-side one
    if extra > MED_BLOCK_LIMIT:  # building alone would take minutes, whatever it costs per image
        raise BenchError(
            f"--num-med-block {cfg.num_med_block} builds {extra:,} extra bottlenecks ({cfg.depth - 1} coupled blocks), "
            f"past the sanity bound of {MED_BLOCK_LIMIT:,} (the paper uses at most 3 per block); "
            "lower it, or pass --force to build it anyway"
        )
    macs = estimated_macs(cfg, img_size)
    if macs > MAC_LIMIT:
        raise BenchError(
            f"{cfg.name} at {img_size or cfg.img_size} px costs {macs / 1e12:.3g} TMACs per image (batch 1), "
            f"past the {MAC_LIMIT / 1e12:g} TMAC sanity bound; check --num-med-block / --img-size, "
            "or pass --force to run it anyway"
        )
