"""Parts every record kind carries: where it ran (:class:`Environment`) and what ran (:class:`Variant`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from conformer.config import ConformerConfig

from .base import Record

# Environment fields whose difference makes timings from two records not comparable.
TIMING_KEYS: tuple[str, ...] = (
    "device",
    "device_name",
    "cpu_model",
    "cpu_capability",  # the kernel set ATen dispatches (AVX512, AVX2, ...): another set, other timings
    "threads",
    "torch",
    "cuda",
    "precision",
    "batch_size",
    "img_size",
    "path",  # plain | optimized | compiled (profile records)
    "channels_last",  # profile records; a key missing on both sides counts as equal
)

_CONFIG_FIELDS = frozenset(f.name for f in fields(ConformerConfig))


@dataclass(frozen=True)
class Environment(Record):
    """The machine, libraries and settings a measurement ran with (``conformer_bench.env.fingerprint``).

    The first fields are in every record; the rest only where they apply (CPU kernel facts since 0.1,
    GPU facts on CUDA, distributed facts under torchrun). A key this version does not know is kept.
    """

    device: str
    device_name: str | None
    cpu_model: str | None
    cpu_count: int | None
    threads: int | None
    interop_threads: int | None
    torch: str
    cuda: str | None
    python: str
    platform: str
    hostname: str
    precision: str | None
    batch_size: int | None
    img_size: int | None
    tool_version: str
    commit: str | None
    created: str
    cpu_vendor: str | None = None
    cpu_capability: str | None = None
    cpu_flags: list[str] | None = None
    onednn_version: str | None = None
    mkl_version: str | None = None
    kernel_overrides: dict[str, Any] | None = None
    threads_requested: int | None = None
    channels_last: bool | None = None
    path: str | None = None
    gpu_memory_total_bytes: int | None = None
    cudnn: int | None = None
    tf32_matmul: bool | None = None
    tf32_cudnn: bool | None = None
    cudnn_benchmark: bool | None = None
    cudnn_deterministic: bool | None = None
    driver: str | None = None
    nvml_error: str | None = None
    fused_kernels: Any = None
    mkl_linear: Any = None
    world_size: int | None = None
    dist_backend: str | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def timing_identity(self) -> tuple[tuple[str, Any], ...]:
        """(key, value) of each field in ``TIMING_KEYS``: timings compare only where these are equal."""
        return tuple((key, getattr(self, key)) for key in TIMING_KEYS)


@dataclass(frozen=True)
class Variant(Record):
    """What was measured: the preset's name, the label it was run under and the whole config."""

    name: str
    label: str
    config: dict[str, Any]  # ConformerConfig.to_dict(): read it with conformer_config()

    def conformer_config(self) -> ConformerConfig | None:
        """The config as a :class:`ConformerConfig` (keys it does not know are passed over, missing ones take
        their defaults); None when the record holds none, or one that does not build (a hand-edited file)."""
        if not isinstance(self.config, Mapping):
            return None
        try:
            return ConformerConfig(**{k: v for k, v in self.config.items() if k in _CONFIG_FIELDS})
        except (TypeError, ValueError):
            return None
