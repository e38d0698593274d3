"""Environment fingerprint carried by every record: what was measured, where, and how."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from . import __version__
from .errors import BenchError

# /proc/cpuinfo flags that decide which kernels the libraries choose (fp32 width, bf16/int8 paths, AMX tiles).
KERNEL_FLAGS: tuple[str, ...] = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# Environment variables that make the libraries take another kernel set than the CPU would pick.
KERNEL_OVERRIDES: tuple[str, ...] = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "MKL_DEBUG_CPU_TYPE",
)


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo (empty where there is none)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return info


@cache
def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


@cache
def cpu_vendor() -> str | None:
    """``GenuineIntel``, ``AuthenticAMD``, ... (``None`` where /proc/cpuinfo is absent)."""
    return _cpuinfo().get("vendor_id")


@cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of the first CPU (``flags`` on x86, ``Features`` on Arm; empty without
    /proc/cpuinfo)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("features") or "").split())


@cache
def cpu_kernel_flags() -> list[str]:
    """Which of :data:`KERNEL_FLAGS` the CPU reports."""
    return [flag for flag in KERNEL_FLAGS if flag in cpu_flags()]


@cache
def library_versions() -> dict[str, str | None]:
    """oneDNN and oneMKL versions of the torch build, read from ``torch.__config__.show()``."""
    import torch

    try:
        config = torch.__config__.show()
    except Exception:  # a torch build without the config string: versions unknown, not fatal
        config = ""
    onednn = re.search(r"MKL-DNN v([0-9][\w.]*)", config)
    mkl = re.search(r"Math Kernel Library Version ([0-9][\w.]*)", config)
    return {
        "onednn_version": onednn.group(1) if onednn else None,
        "mkl_version": mkl.group(1) if mkl else None,
    }


def cpu_kernels() -> dict[str, Any]:
    """What decides the CPU kernels that ran: vendor, ATen capability, ISA flags, library versions, overrides."""
    import torch

    try:
        capability: str | None = torch.backends.cpu.get_cpu_capability()
    except Exception:  # torch builds without the query
        capability = None
    return {
        "cpu_vendor": cpu_vendor(),
        "cpu_capability": capability,
        "cpu_flags": cpu_kernel_flags(),
        **library_versions(),
        "kernel_overrides": {k: os.environ[k] for k in KERNEL_OVERRIDES if k in os.environ},
    }


@cache
def git_commit() -> str | None:
    """The project's commit when run from a checkout (``+dirty`` if it has local changes), else ``None``."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise BenchError(f"--device {device!r} is not valid; use auto, cpu, cuda or cuda:N")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was requested but no CUDA GPU is visible; use --device cpu")
    return device


def gpu_info(device: str) -> dict[str, Any]:
    import torch

    if not device.startswith("cuda"):
        return {}
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    info: dict[str, Any] = {
        "device_name": props.name,
        "gpu_memory_total_bytes": int(props.total_memory),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,  # cuDNN convolutions (torch's default: on)
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML is optional: record why it is absent
        info["driver"] = None
        info["nvml_error"] = f"{type(exc).__name__}: {exc}"
    return info


def fingerprint(
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int | None = None,
    img_size: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything a reader needs to know to trust, or refuse to compare, a measurement."""
    import torch

    env: dict[str, Any] = {
        "device": "cuda" if device.startswith("cuda") else device,
        "device_name": cpu_model() if device == "cpu" else None,
        "cpu_model": cpu_model(),
        **cpu_kernels(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "cuda": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "precision": precision,
        "batch_size": batch_size,
        "img_size": img_size,
        "tool_version": __version__,
        "commit": git_commit(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    env.update(gpu_info(device))
    env.update(extra)
    return env
