"""The ``conformer-bench.speed`` record: every inference path of one variant, timed interleaved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Record, SchemaRecord, Status
from .common import Environment, Variant

SPEED_SCHEMA = "conformer-bench.speed"


@dataclass
class SpeedPath(Record):
    """One measured path of a speed run, filled in as the run goes: description, first call, timing.

    A path that failed keeps what it got before failing; ``compile_s`` is written (null unless compiled)
    whenever ``first_call_s`` is.
    """

    OPTIONAL = frozenset(
        {
            "first_call_s",
            "max_rel_diff_vs_plain",
            "rms_rel_diff_vs_plain",
            "max_abs_diff_vs_plain",
            "top1_agreement_vs_plain",
            "samples_s",
            "latency_s",
            "img_per_s",
            "img_per_s_iqr",
            "achieved_gflop_s",
            "ceiling_precision",
            "ceiling_share",
            "executed_paper_macs_per_image",
            "executed_gflop_s",
            "executed_ceiling_share",
            "speedup_vs_plain",
            "precision_name",
            "prepare_s",
            "export",
            "breakdown",
        }
    )

    path: str
    precision: str
    status: Status  # ok | unsupported | failed
    reason: str | None
    description: str
    kernels: str | None
    first_call_s: float | None = None
    compile_s: float | None = None
    max_rel_diff_vs_plain: float | None = None
    rms_rel_diff_vs_plain: float | None = None
    max_abs_diff_vs_plain: float | None = None
    top1_agreement_vs_plain: dict[str, float | None] | None = None
    samples_s: list[float] | None = None
    latency_s: dict[str, Any] | None = None
    img_per_s: float | None = None
    img_per_s_iqr: list[float] | None = None
    achieved_gflop_s: float | None = None
    ceiling_precision: str | None = None
    ceiling_share: float | None = None
    executed_paper_macs_per_image: int | None = None
    executed_gflop_s: float | None = None
    executed_ceiling_share: float | None = None
    speedup_vs_plain: dict[str, float] | None = None
    # schema 3: where the path ran (eager or a deployment runtime) and the precision as that backend names it
    backend: str = "eager"
    precision_name: str | None = None
    prepare_s: float | None = None  # export + session creation or compilation, before the first call
    export: dict[str, Any] | None = None  # the ONNX export a runtime ran (file, cache hit, seconds, opset)
    breakdown: dict[str, Any] | None = None  # time by component (conformer_bench.breakdown), when asked for

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.first_call_s is None:
            out.pop("compile_s", None)
        return out


@dataclass
class SpeedRecord(SchemaRecord):
    """A ``conformer-bench.speed`` record: every path of one variant timed interleaved, per precision."""

    SCHEMA = SPEED_SCHEMA
    VERSION = 3

    status: Status  # ok | failed
    reason: str | None
    environment: Environment
    variant: Variant
    settings: dict[str, Any]
    precision_support: dict[str, Any]
    evaluation_set: dict[str, Any]
    flops: dict[str, Any]
    ceiling: dict[str, Any]
    ceilings: dict[str, dict[str, Any]]
    paths: dict[str, SpeedPath]
    best_path: str | None
