"""The types every backend shares: what it is asked (:class:`PrepareOptions`) and what it returns (:class:`Prepared`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..records import Status
from ..records.speed import ExportInfo

EAGER = "eager"
DEPLOY_BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")
BACKENDS: tuple[str, ...] = (EAGER, *DEPLOY_BACKENDS)
INSTALL_HINT = "pip install -e .[deploy]"

Runner = Callable[[Any], Any]  # float32 image batch -> ConformerOutput of float32 logits


@dataclass(frozen=True)
class PrepareOptions:
    """What every backend needs to know besides the model and the precision."""

    device: str = "cpu"
    img_size: int = 224
    threads: int = 1  # intra-op threads the runtime uses (the run's torch thread count)
    channels_last: bool = True  # eager optimized / compiled only
    fold_bn: bool = True
    fuse_pointwise: bool = True
    pool_first: bool = True


@dataclass
class Prepared:
    """A model made ready to run by one backend in one precision, or why it could not be."""

    backend: str
    path: str  # eager: plain | optimized | compiled; otherwise the backend's name
    precision: str  # fp32 | bf16 (the project's name; selects the matmul ceiling)
    precision_name: str  # as the backend names it (OpenVINO: f32, bf16)
    status: Status
    reason: str | None
    description: str
    kernels: str | None = None
    run: Runner | None = None
    prepare_s: float | None = None  # export, session creation or compilation before the first call
    export: ExportInfo | None = None  # the ONNX export's file, cache hit, export seconds, opset

    @property
    def ok(self) -> bool:
        return self.status == Status.OK and self.run is not None


class Backend(Protocol):
    """``prepare(model, precision, options)`` -> :class:`Prepared`; never raises for a model it cannot run."""

    name: str

    def prepare(
        self, model: Any, precision: str, options: PrepareOptions, *, path: str = ...
    ) -> Prepared: ...


def unsupported(
    backend: str, path: str, precision: str, precision_name: str, description: str, reason: str
) -> Prepared:
    """A :class:`Prepared` that says why ``backend`` cannot run the model in ``precision``."""
    return Prepared(backend, path, precision, precision_name, Status.UNSUPPORTED, reason, description)
