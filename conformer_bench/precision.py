"""Which reduced precisions this device runs natively, and the evidence for it.

A CPU without bf16 instructions still runs bf16 tensors (oneDNN and ATen convert to fp32 and back), only
slower than fp32; a benchmark must report such a path as unsupported rather than time an emulation. Native
bf16 on x86 means the ``avx512_bf16`` (AVX512-BF16 dot products) or ``amx_bf16`` (AMX tiles) instructions,
and oneDNN built with bf16 kernels for this CPU.
"""

from __future__ import annotations

from .env import cpu_flags
from .records.speed import PrecisionSupport

__all__ = ["BF16_CPU_FLAGS", "PRECISIONS", "PrecisionSupport", "native_bf16_flags", "precision_support"]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")


def native_bf16_flags() -> tuple[str, ...]:
    """The native bf16 instruction sets of this CPU: ``/proc/cpuinfo`` flags, else torch's cpuinfo probes."""
    flags = cpu_flags()
    if flags:
        return tuple(f for f in BF16_CPU_FLAGS if f in flags)
    import torch

    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return tuple(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def onednn_bf16() -> bool:
    """oneDNN has bf16 kernels for this CPU (true on any AVX-512 core, native or emulated)."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_support(precision: str, device: str) -> PrecisionSupport:
    """Whether ``precision`` (``fp32`` or ``bf16``) runs natively on ``device`` (``cpu`` or ``cuda[:N]``)."""
    if precision == "fp32":
        return PrecisionSupport("fp32", device, True, None, "fp32", {})
    assert precision == "bf16", f"unknown precision {precision!r}"
    if device.startswith("cuda"):
        import torch

        native = bool(torch.cuda.is_bf16_supported(including_emulation=False))
        reason = None if native else "bf16 not supported on this GPU (no native bf16 tensor cores)"
        return PrecisionSupport("bf16", device, native, reason, "cuDNN / cuBLAS bf16", {"cuda_bf16": native})
    flags, onednn = native_bf16_flags(), onednn_bf16()
    evidence = {"cpu_bf16_flags": list(flags), "onednn_bf16": onednn}
    if not flags:
        reason = (
            "bf16 not supported on this CPU (no avx512_bf16 or amx_bf16 instructions; it would be emulated "
            "in fp32, slower than fp32)"
        )
        return PrecisionSupport("bf16", device, False, reason, "none", evidence)
    if not onednn:
        reason = "bf16 not supported on this CPU by this torch build (oneDNN has no bf16 kernels for it)"
        return PrecisionSupport("bf16", device, False, reason, "none", evidence)
    isa = "AMX" if "amx_bf16" in flags else "AVX512-BF16"
    return PrecisionSupport("bf16", device, True, None, f"oneDNN bf16 ({isa})", evidence)
