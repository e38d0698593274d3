"""OpenVINO's CPU plugin on the cached ONNX export, in f32 or bf16 (its ``INFERENCE_PRECISION_HINT``).

OpenVINO picks bf16 by itself on a CPU with AVX512-BF16 or AMX; the f32 run sets the hint to ``f32``
explicitly, so each precision is what it says.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..precision import precision_support
from .base import Prepared, PrepareOptions, Runner, unsupported
from .onnx_export import OnnxExport, as_conformer_output, as_numpy, prepare_from_export

NAME = "openvino"
HINTS = {"fp32": "f32", "bf16": "bf16"}  # the project's precision -> OpenVINO's name for it
DESCRIPTION = (
    "OpenVINO CPU plugin on the torch.onnx (dynamo) export read by its ONNX frontend, dynamic batch; "
    "PERFORMANCE_HINT=LATENCY, one stream, INFERENCE_NUM_THREADS = the run's threads, "
    "INFERENCE_PRECISION_HINT set explicitly"
)


class OpenVinoBackend:
    name = NAME

    def prepare(self, model: Any, precision: str, options: PrepareOptions, *, path: str = NAME) -> Prepared:
        hint = HINTS.get(precision, precision)
        if precision == "bf16":
            reason = _bf16_missing(options.device)
            if reason is not None:
                return unsupported(NAME, NAME, precision, hint, DESCRIPTION, reason)
        return prepare_from_export(
            NAME,
            model,
            precision,
            hint,
            options,
            DESCRIPTION,
            lambda e: _compiled(model.cfg, e, hint, options),
        )


def _bf16_missing(device: str) -> str | None:
    """Why bf16 cannot run natively here (the CPU lacks it, or OpenVINO does not offer it); ``None`` if it can."""
    import openvino as ov

    support = precision_support("bf16", "cpu")
    if not support.supported:
        return str(support.reason)
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        return f"OpenVINO's CPU plugin offers no BF16 here (capabilities: {', '.join(capabilities)})"
    return None


def _compiled(cfg: Any, export: OnnxExport, hint: str, options: PrepareOptions) -> tuple[Runner, str]:
    """The exported graph compiled by the CPU plugin, and the callable that runs it."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(export.path)),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": options.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        },
    )
    request = compiled.create_infer_request()

    def run(x: Any) -> Any:
        result = request.infer({0: as_numpy(x)}, share_inputs=True, share_outputs=False)
        return as_conformer_output(cfg, [result[output] for output in compiled.outputs])

    effective = compiled.get_property("INFERENCE_PRECISION_HINT")
    kernels = (
        f"{getattr(effective, 'get_type_name', lambda: hint)()}, OpenVINO {ov.get_version().split('-')[0]} CPU plugin, "
        f"{compiled.get_property('INFERENCE_NUM_THREADS')} threads, {_runtime_precisions(compiled)}"
    )
    return run, kernels


def _runtime_precisions(compiled: Any) -> str:
    """How many executed nodes ran in which precision (the runtime graph's ``runtimePrecision``)."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and op.get_type_name() not in ("Parameter", "Result", "Constant"):
            counts[str(info["runtimePrecision"].astype(str))] += 1
    if not counts:
        return "runtime precisions not reported"
    return "executed nodes by precision: " + ", ".join(f"{n} {p}" for p, n in counts.most_common())
