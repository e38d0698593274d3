"""GPU energy of a timed loop (``conformer_bench.energy.gpu_energy``), as a profile's phase timing holds it."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Record


@dataclass
class EnergyReading(Record):
    """NVML's energy over a block: filled in when the block ends (``joules`` None: no reading, see ``error``).

    ``seconds`` is the block's host wall time; the power-sampling fallback adds how many samples it took,
    the span they cover and why the energy counter could not be used.
    """

    OPTIONAL = frozenset({"error", "samples", "sampled_s", "counter_error"})

    method: str | None = None
    joules: float | None = None
    seconds: float | None = None
    mean_power_w: float | None = None
    error: str | None = None  # why there is no reading (no NVML, or the board does not report it)
    samples: int | None = None
    sampled_s: float | None = None
    counter_error: str | None = None
