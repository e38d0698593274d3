"""The eager paths: the plain model (under bf16 autocast for bf16), ``optimize_for_inference``'s copy, and
that copy under ``torch.compile``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import exception_line
from ..precision import precision_support
from ..records import Status
from ..steps import autocast
from .base import EAGER, Prepared, PrepareOptions, unsupported

PATH_DESCRIPTIONS: dict[str, str] = {
    "plain": "eval model as built (NCHW, BatchNorm, explicit attention unless the config says fused)",
    "optimized": "optimize_for_inference: folded BN, FCU-down pool before projection, channels-last, attention "
    "scale folded into qkv; CPU: each conv, linear and attention runs the kernel measured fastest on this CPU at "
    "its shape (fused oneDNN conv or ATen conv; oneDNN or MKL prepacked GEMM; SDPA or matmul-softmax), cached "
    "per CPU fingerprint",
    "compiled": "optimize_for_inference(compile=True): folded BN, FCU-down pool before projection, "
    "channels-last, torch.compile (Inductor; weight freezing with prepacked oneDNN convs / MKL linears on CPU)",
    "plain-bf16": "the plain eval model under torch.autocast(bfloat16): convs, linears and matmuls in bf16, "
    "norms, softmax and BatchNorm in fp32",
    "optimized-bf16": "optimize_for_inference(dtype=bfloat16): BN folded in float64 then rounded to bf16, FCU-down "
    "pool before projection, channels-last; CPU: bf16 convs (fused oneDNN or ATen), oneDNN prepacked linears "
    "and attention (SDPA or matmul-softmax), each the kernel measured fastest on this CPU at its shape; "
    "LayerNorm on bf16 tensors (fp32 accumulation, softmax sums and statistics inside the kernels); final norm "
    "and classifier heads in fp32",
    "compiled-bf16": "optimize_for_inference(dtype=bfloat16, compile=True): the bf16 model above (unfused) "
    "compiled by Inductor with weight freezing",
}


def run_name(path: str, precision: str) -> str:
    """``("optimized", "bf16")`` -> ``"optimized-bf16"``; fp32 runs keep their bare names."""
    return path if precision == "fp32" else f"{path}-{precision}"


class EagerBackend:
    """PyTorch eager: ``plain``, ``optimized`` or ``compiled`` (``path``) in fp32 or bf16."""

    name = EAGER

    def prepare(
        self, model: Any, precision: str, options: PrepareOptions, *, path: str = "plain"
    ) -> Prepared:
        """The runner of ``path``; a path that cannot be built is ``failed`` with its reason (plain's raises)."""
        description = PATH_DESCRIPTIONS[run_name(path, precision)]
        support = precision_support(precision, options.device)
        if not support.supported:
            return unsupported(EAGER, path, precision, precision, description, str(support.reason))
        started = time.perf_counter()
        try:
            runner = build_runner(model, path, precision, options)
        except Exception as exc:  # building a path can fail too (e.g. no C++ compiler): recorded, not fatal
            if path == "plain":
                raise
            return Prepared(
                EAGER, path, precision, precision, Status.FAILED, exception_line(exc), description
            )
        return Prepared(
            EAGER,
            path,
            precision,
            precision,
            Status.OK,
            None,
            description,
            kernels=kernels_of(runner, path, precision, support.kernels),
            run=runner,
            prepare_s=time.perf_counter() - started,
        )


def build_runner(plain: Any, path: str, precision: str, options: PrepareOptions) -> Callable[[Any], Any]:
    """The callable one path times: the plain model (under bf16 autocast for ``plain-bf16``) or its optimized copy."""
    import torch

    from conformer.optimize import optimize_for_inference

    if path == "plain":
        return _under_autocast(plain, options.device, torch.bfloat16 if precision == "bf16" else None)
    return optimize_for_inference(
        plain,
        dtype=torch.bfloat16 if precision == "bf16" else None,
        channels_last=options.channels_last,
        fold_bn=options.fold_bn,
        compile=path == "compiled",
        fuse_pointwise=options.fuse_pointwise,
        pool_first=options.pool_first,
    )


def _under_autocast(run: Callable[[Any], Any], device: str, dtype: Any) -> Callable[[Any], Any]:
    """``run`` under ``torch.autocast(dtype)`` with float32 outputs (``dtype=None``: ``run`` itself)."""
    if dtype is None:
        return run

    def autocast_run(x: Any) -> Any:
        with autocast(device, dtype):
            out = run(x)
        return type(out)(*(None if t is None else t.float() for t in out))

    return autocast_run


def kernels_of(runner: Any, path: str, precision: str, precision_kernels: str) -> str:
    """What ran, in words: precision, the fused modules' kernels as chosen so far, compilation, heads."""
    from conformer.optimize import describe_kernels

    if not hasattr(runner, "modules"):
        return f"{precision} ATen kernels under autocast ({precision_kernels})"
    modules = list(runner.modules())
    names = {type(m).__name__ for m in modules}
    parts = [precision]
    chosen = describe_kernels(runner)
    if chosen is not None:
        parts.append(f"fused oneDNN / MKL / ATen kernels per op and shape ({chosen})")
    if "_CompiledUnderConfig" in names:
        parts.append("Inductor (torch.compile, frozen weights)")
    if "_Float32Head" in names:
        parts.append("fp32 final norm and heads")
    if path == "plain":
        return ", ".join([*parts, "ATen kernels"])
    if chosen is None:
        sdpa = any(getattr(m, "fused", False) for m in modules)
        parts.append("SDPA" if sdpa else "matmul-softmax attention")
    return ", ".join(parts)
