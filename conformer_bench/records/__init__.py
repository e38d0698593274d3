"""Typed records of what the benchmarks measure: the currency every command passes around.

Producers return records, consumers take them; JSON exists only where a file is written or read
(:mod:`conformer_bench.readers`). Every record kind and status reads back: see :mod:`.base`.
"""

from __future__ import annotations

from .ab import AB_SCHEMA, ABRecord, InstructionCounts, PairedCell, PairedRound
from .base import Record, SchemaRecord, Status, plain
from .baseline import BASELINE_SCHEMA, BaselineEvent, BaselineMetric, BaselineRecord
from .cell import CellRecord, ExperimentRecord, JobsRecord
from .common import Environment, Variant
from .finetune import (
    FINETUNE_SCHEMA,
    Bf16Inference,
    CheckpointLoad,
    FinetuneData,
    FinetuneEpoch,
    FinetuneFinal,
    FinetuneHyper,
    FinetuneRecord,
    FinetuneSettings,
    TrainPoint,
)
from .gpu_check import CeilingsRecord, GpuCheckRecord, LogitsRecord, SharesRecord
from .profile import (
    PROFILE_SCHEMA,
    CpuPhaseMemory,
    CudaPhaseMemory,
    FlopCounts,
    FlopCrossCheck,
    ParamCounts,
    PhaseTiming,
    ProfiledPhase,
    ProfileMemory,
    ProfileRecord,
    ReferenceTiming,
)
from .report import REPORT_SCHEMA, ReportRecord, ReportRow, ReportSide
from .search import SEARCH_SCHEMA, SearchRecord, TrialRecord
from .speed import SPEED_SCHEMA, SpeedPath, SpeedRecord

KINDS: dict[str, type[SchemaRecord]] = {
    kind.SCHEMA: kind
    for kind in (
        ProfileRecord,
        SpeedRecord,
        FinetuneRecord,
        ABRecord,
        SearchRecord,
        GpuCheckRecord,
        CeilingsRecord,
        LogitsRecord,
        SharesRecord,
        BaselineRecord,
        ReportRecord,
        CellRecord,
        ExperimentRecord,
        JobsRecord,
    )
}
SCHEMAS: dict[str, int] = {schema: kind.VERSION for schema, kind in KINDS.items()}  # what is written now


def register(kind: type[SchemaRecord]) -> type[SchemaRecord]:
    """Add a record kind defined elsewhere to :data:`KINDS` (a class decorator)."""
    KINDS[kind.SCHEMA] = kind
    SCHEMAS[kind.SCHEMA] = kind.VERSION
    return kind


__all__ = [
    "AB_SCHEMA",
    "BASELINE_SCHEMA",
    "FINETUNE_SCHEMA",
    "KINDS",
    "PROFILE_SCHEMA",
    "REPORT_SCHEMA",
    "SCHEMAS",
    "SEARCH_SCHEMA",
    "SPEED_SCHEMA",
    "ABRecord",
    "BaselineEvent",
    "BaselineMetric",
    "BaselineRecord",
    "Bf16Inference",
    "CeilingsRecord",
    "CellRecord",
    "CheckpointLoad",
    "CpuPhaseMemory",
    "CudaPhaseMemory",
    "Environment",
    "ExperimentRecord",
    "FinetuneData",
    "FinetuneEpoch",
    "FinetuneFinal",
    "FinetuneHyper",
    "FinetuneRecord",
    "FinetuneSettings",
    "FlopCounts",
    "FlopCrossCheck",
    "GpuCheckRecord",
    "InstructionCounts",
    "JobsRecord",
    "LogitsRecord",
    "PairedCell",
    "PairedRound",
    "ParamCounts",
    "PhaseTiming",
    "ProfileMemory",
    "ProfileRecord",
    "ProfiledPhase",
    "Record",
    "ReferenceTiming",
    "ReportRecord",
    "ReportRow",
    "ReportSide",
    "SchemaRecord",
    "SearchRecord",
    "SharesRecord",
    "SpeedPath",
    "SpeedRecord",
    "Status",
    "TrainPoint",
    "TrialRecord",
    "Variant",
    "plain",
    "register",
]
