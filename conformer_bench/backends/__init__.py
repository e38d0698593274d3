"""Where a model runs: one small interface over the eager paths and the deployment runtimes.

A backend takes the plain eval model and a precision and returns a :class:`Prepared`: a callable that maps
a float32 image batch (a torch tensor) to a :class:`conformer.model.ConformerOutput` of float32 logits, what
it runs in words, and, when it cannot run that model in that precision, the status and the reason instead
of the callable. Measurement code (``speed``, ``profile``) times the callables alike and checks their logits
against the plain fp32 model; nothing here times anything.

Backends: ``eager`` (the paths ``plain``, ``optimized`` and ``compiled`` of :mod:`conformer.optimize`),
``onnxruntime`` and ``openvino`` (both on the ONNX export of :mod:`.onnx_export`, cached per config and
weights). The deployment runtimes come from the optional extra ``deploy``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import BenchError
from ..records import Status

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
    export: dict[str, Any] | None = None  # the ONNX export's file, cache hit, export seconds, opset

    @property
    def ok(self) -> bool:
        return self.status == Status.OK and self.run is not None


class Backend(Protocol):
    """``prepare(model, precision, options)`` -> :class:`Prepared`; never raises for a model it cannot run."""

    name: str

    def prepare(
        self, model: Any, precision: str, options: PrepareOptions, *, path: str = ...
    ) -> Prepared: ...


def parse_backends(text: str) -> tuple[str, ...]:
    """``"eager,onnxruntime"`` -> ``("eager", "onnxruntime")``; an unknown or repeated name is a BenchError."""
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if not names or len(set(names)) != len(names):
        raise BenchError(f"--backend needs distinct names, e.g. {','.join(BACKENDS)}")
    for name in names:
        if name not in BACKENDS:
            raise BenchError(
                f"--backend: {name!r} is not a backend; use a comma list of {', '.join(BACKENDS)}"
            )
    return names


def require_installed(names: tuple[str, ...]) -> None:
    """A BenchError naming the install command when a deployment backend's package is missing."""
    from importlib.util import find_spec

    modules = {
        "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
        "openvino": ("openvino", "onnx", "onnxscript"),
    }
    for name in names:
        missing = [m for m in modules.get(name, ()) if find_spec(m) is None]
        if missing:
            raise BenchError(
                f"--backend {name} needs {', '.join(missing)} (not installed); install them with: {INSTALL_HINT}"
            )


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (see :data:`BACKENDS`)."""
    if name == EAGER:
        from .eager import EagerBackend

        return EagerBackend()
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    if name == "openvino":
        from .openvino import OpenVinoBackend

        return OpenVinoBackend()
    raise BenchError(f"--backend: {name!r} is not a backend; use one of {', '.join(BACKENDS)}")


def unsupported(
    backend: str, path: str, precision: str, precision_name: str, description: str, reason: str
) -> Prepared:
    """A :class:`Prepared` that says why ``backend`` cannot run the model in ``precision``."""
    return Prepared(backend, path, precision, precision_name, Status.UNSUPPORTED, reason, description)
