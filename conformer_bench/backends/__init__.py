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

import importlib.util

from ..errors import BenchError
from ..lists import comma_items
from .base import (
    BACKENDS,
    DEPLOY_BACKENDS,
    EAGER,
    INSTALL_HINT,
    Backend,
    Prepared,
    PrepareOptions,
    Runner,
    unsupported,
)

__all__ = [
    "BACKENDS",
    "DEPLOY_BACKENDS",
    "EAGER",
    "INSTALL_HINT",
    "Backend",
    "PrepareOptions",
    "Prepared",
    "Runner",
    "get_backend",
    "parse_backends",
    "require_installed",
    "unsupported",
]


def parse_backends(text: str) -> tuple[str, ...]:
    """``"eager,onnxruntime"`` -> ``("eager", "onnxruntime")``; an unknown or repeated name is a BenchError."""
    names = tuple(part.lower() for part in comma_items(text, "--backend"))
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
    modules = {
        "onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
        "openvino": ("openvino", "onnx", "onnxscript"),
    }
    for name in names:
        missing = [m for m in modules.get(name, ()) if importlib.util.find_spec(m) is None]
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
