"""ONNX Runtime on the CPU (``CPUExecutionProvider``), on the cached ONNX export, fp32."""

from __future__ import annotations

from typing import Any

from .base import Prepared, PrepareOptions, Runner, unsupported
from .onnx_export import INPUT_NAME, OnnxExport, as_conformer_output, as_numpy, prepare_from_export

NAME = "onnxruntime"
DESCRIPTION = (
    "ONNX Runtime CPUExecutionProvider on the torch.onnx (dynamo) export, dynamic batch; graph optimisation "
    "level all, sequential execution, intra-op threads = the run's threads, no spin-waiting between calls"
)
BF16_REASON = (
    "ONNX Runtime's CPU execution provider has no bfloat16 Conv or MatMul kernels; it runs this graph in "
    "fp32 only"
)


class OnnxRuntimeBackend:
    name = NAME

    def prepare(self, model: Any, precision: str, options: PrepareOptions, *, path: str = NAME) -> Prepared:
        if precision != "fp32":
            return unsupported(NAME, NAME, precision, precision, DESCRIPTION, BF16_REASON)
        return prepare_from_export(
            NAME, model, precision, precision, options, DESCRIPTION, lambda e: _session(model.cfg, e, options)
        )


def _session(cfg: Any, export: OnnxExport, options: PrepareOptions) -> tuple[Runner, str]:
    """An inference session of the exported file and the callable that runs it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = options.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Its pool would otherwise spin after each call and take the cores from the paths timed next to it.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    session = ort.InferenceSession(str(export.path), so, providers=["CPUExecutionProvider"])
    names = list(export.output_names)

    def run(x: Any) -> Any:
        return as_conformer_output(cfg, session.run(names, {INPUT_NAME: as_numpy(x)}))

    kernels = (
        f"fp32, onnxruntime {ort.__version__} {', '.join(session.get_providers())}, "
        f"{options.threads} intra-op threads, ONNX opset {export.opset}"
    )
    return run, kernels
