"""Peak memory of one measured phase: CUDA allocator peaks plus NVML, or the CPU resident-set peak."""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .records import CpuPhaseMemory, CudaPhaseMemory

PhaseMemory = CpuPhaseMemory | CudaPhaseMemory

CPU_METHOD = (
    "peak RSS minus RSS at the start of the phase; peak = max of psutil samples every {interval_ms:g} ms "
    "(a background thread) and, when the phase raised the process's lifetime high-water mark, "
    "getrusage ru_maxrss (exact). Before the phase, garbage is collected and glibc's malloc_trim returns "
    "freed heap pages to the OS, so memory freed by earlier phases is not silently reused. Limits: spikes "
    "shorter than the sampling interval that stay below an earlier high-water mark are missed; memory an "
    "allocator still caches (or that malloc_trim cannot return) is in the baseline"
)
CUDA_METHOD = (
    "torch.cuda.max_memory_allocated / max_memory_reserved after reset_peak_memory_stats at the start of "
    "the phase; nvml_used_bytes: device memory in use (all processes, incl. the CUDA context) read with "
    "NVML at the end of the phase"
)


def release_freed_memory() -> bool:
    """Collect garbage and ask glibc to return free heap pages to the OS (False where there is no glibc)."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def process_peak_rss_bytes() -> int:
    """The process's lifetime peak RSS (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@dataclass
class Probe:
    """What a memory probe measured: ``record`` is set when the enclosed code ends (None until then)."""

    record: PhaseMemory | None = None

    @property
    def measured(self) -> PhaseMemory:
        if self.record is None:
            raise RuntimeError("the memory probe is read before its phase ended")
        return self.record


@contextmanager
def cpu_peak_rss(interval_s: float = 0.005) -> Iterator[Probe]:
    """Measure the peak resident-set increase of the enclosed code (a :class:`CpuPhaseMemory`, set on exit)."""
    import psutil

    proc = psutil.Process()
    trimmed = release_freed_memory()
    result = Probe()
    before = int(proc.memory_info().rss)
    hwm_before = process_peak_rss_bytes()
    peak = before
    samples = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, samples
        while not stop.wait(interval_s):
            rss = int(proc.memory_info().rss)
            samples += 1
            peak = max(peak, rss)

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        after = int(proc.memory_info().rss)
        hwm_after = process_peak_rss_bytes()
        peak = max(peak, after)
        exact = hwm_after > hwm_before
        if exact:
            peak = max(peak, hwm_after)
        result.record = CpuPhaseMemory(
            peak_rss_increase_bytes=peak - before,
            rss_before_bytes=before,
            rss_after_bytes=after,
            peak_rss_bytes=peak,
            peak_from_ru_maxrss=exact,
            rss_samples=samples,
            sample_interval_s=interval_s,
            malloc_trim=trimmed,
        )


def nvml_memory(device_index: int, uuid: str | None = None) -> dict[str, Any]:
    """Device memory used/total from NVML (``nvidia-ml-py``); the reason when NVML is unusable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver / library: say so in the record
        return {
            "nvml_used_bytes": None,
            "nvml_total_bytes": None,
            "nvml_error": f"{type(exc).__name__}: {exc}",
        }
    try:
        # CUDA and NVML number devices differently under CUDA_VISIBLE_DEVICES; the UUID is unambiguous.
        if uuid:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return {"nvml_used_bytes": int(info.used), "nvml_total_bytes": int(info.total)}
    except Exception as exc:
        return {
            "nvml_used_bytes": None,
            "nvml_total_bytes": None,
            "nvml_error": f"{type(exc).__name__}: {exc}",
        }
    finally:
        pynvml.nvmlShutdown()


def _device_uuid(index: int) -> str | None:
    import torch

    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return str(uuid) if uuid is not None else None


@contextmanager
def cuda_peak_memory(device: str) -> Iterator[Probe]:
    """Allocator peaks of the enclosed code (stats reset at entry) and NVML's reading at exit (a
    :class:`CudaPhaseMemory`, set on exit)."""
    import torch

    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    result = Probe()
    gc.collect()
    torch.cuda.synchronize(index)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(index)
    before = int(torch.cuda.memory_allocated(index))
    try:
        yield result
    finally:
        torch.cuda.synchronize(index)
        result.record = CudaPhaseMemory(
            peak_allocated_bytes=int(torch.cuda.max_memory_allocated(index)),
            peak_reserved_bytes=int(torch.cuda.max_memory_reserved(index)),
            allocated_before_bytes=before,
            **nvml_memory(index, _device_uuid(index)),
        )


@contextmanager
def phase_memory(device: str) -> Iterator[Probe]:
    """The right probe for ``device``."""
    probe = cuda_peak_memory(device) if device.startswith("cuda") else cpu_peak_rss()
    with probe as result:
        yield result


def method(device: str) -> str:
    return CUDA_METHOD if device.startswith("cuda") else CPU_METHOD.format(interval_ms=5)
