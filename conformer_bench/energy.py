"""GPU energy of a timed loop from NVML: the total-energy counter, or power samples where it is missing."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from .records.energy import EnergyReading

COUNTER_METHOD = "nvmlDeviceGetTotalEnergyConsumption delta over the timed loop (millijoule counter, Volta+)"
SAMPLING_METHOD = (
    "nvmlDeviceGetPowerUsage sampled every {interval_ms:g} ms over the timed loop, trapezoid integral "
    "(the driver may average power over up to a second: short loops are coarse)"
)


def _nvml_handle(pynvml: ModuleType, device: str) -> object:
    """The NVML handle of ``device``; by UUID, since CUDA and NVML number devices differently."""
    import torch

    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class _PowerSampler:
    """Samples board power (W) in a background thread; ``joules()`` integrates the samples."""

    def __init__(self, pynvml: ModuleType, handle: object, interval_s: float) -> None:
        self.pynvml, self.handle, self.interval_s = pynvml, handle, interval_s
        self.samples: list[tuple[float, float]] = []  # (perf_counter seconds, watts)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)

    def read(self) -> None:
        watts = self.pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
        self.samples.append((time.perf_counter(), watts))

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.read()

    def __enter__(self) -> _PowerSampler:
        self.read()  # raises when power readings are not supported: the caller reports it
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.read()

    def joules(self) -> float:
        pts = self.samples
        return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in itertools.pairwise(pts))


@contextmanager
def gpu_energy(device: str, interval_s: float = 0.01) -> Iterator[EnergyReading]:
    """Energy of the enclosed (synchronised) GPU work; the reading is filled in on exit.

    ``error`` says why there is none (NVML missing, or the call not supported on this board). The caller
    synchronises the device before leaving the block, so the reading covers the work.
    """
    result = EnergyReading()
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver / library: the record says why
        result.error = f"{type(exc).__name__}: {exc}"
        yield result
        return
    try:
        try:
            handle = _nvml_handle(pynvml, device)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            yield result
            return
        start_mj: int | None = None
        counter_error = None
        try:
            start_mj = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except pynvml.NVMLError as exc:
            counter_error = f"{type(exc).__name__}: {exc}"
        sampler: _PowerSampler | None = None
        if start_mj is None:
            try:
                sampler = _PowerSampler(pynvml, handle, interval_s).__enter__()
            except pynvml.NVMLError as exc:
                result.error = f"energy counter: {counter_error}; power: {type(exc).__name__}: {exc}"
        started = time.perf_counter()
        try:
            yield result
        except BaseException:
            if sampler is not None:
                sampler.__exit__()
            raise
        seconds = time.perf_counter() - started
        if start_mj is not None:
            result.method = COUNTER_METHOD
            result.joules = (int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)) - start_mj) / 1000.0
        elif sampler is not None:
            sampler.__exit__()
            result.method = SAMPLING_METHOD.format(interval_ms=interval_s * 1e3)
            result.joules = sampler.joules()
            result.samples = len(sampler.samples)
            result.sampled_s = sampler.samples[-1][0] - sampler.samples[0][0]
            result.counter_error = counter_error
        result.seconds = seconds
        # Power samples may start and end a little off the block: their own span gives the mean power.
        span = result.sampled_s if result.sampled_s is not None else seconds
        if result.joules is not None and span > 0:
            result.mean_power_w = result.joules / span
    finally:
        pynvml.nvmlShutdown()
