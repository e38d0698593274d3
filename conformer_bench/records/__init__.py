"""Typed records of what the benchmarks measure: the currency every command passes around.

Producers return records, consumers take them; JSON exists only where a file is written or read
(:mod:`conformer_bench.readers`). Every record kind and status reads back: see :mod:`.base`.

The record kinds are imported on first use (PEP 562), so a command module that needs one kind, or only
:class:`Status`, does not pay for defining every dataclass at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import Record, SchemaRecord, Status, plain
from .common import Environment, Variant

if TYPE_CHECKING:
    from .ab import (
        AB_SCHEMA,
        ABExperiment,
        ABRecord,
        ABSettings,
        InstructionCounts,
        PairedCell,
        PairedRound,
        RevisionRef,
    )
    from .baseline import BASELINE_SCHEMA, BaselineEvent, BaselineMetric, BaselineRecord
    from .cell import CellRecord, ExperimentRecord, JobsRecord
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
        ProfileRunSettings,
        ReferenceTiming,
    )
    from .report import REPORT_SCHEMA, ReportRecord, ReportRow, ReportSide
    from .search import SEARCH_SCHEMA, SearchRecord, TrialRecord
    from .speed import SPEED_SCHEMA, SpeedPath, SpeedRecord
    from .variants import VARIANTS_SCHEMA, PresetRow, ToggleRow, VariantsRecord

_LAZY: dict[str, str] = {
    "AB_SCHEMA": ".ab",
    "ABRecord": ".ab",
    "ABExperiment": ".ab",
    "ABSettings": ".ab",
    "RevisionRef": ".ab",
    "InstructionCounts": ".ab",
    "PairedCell": ".ab",
    "PairedRound": ".ab",
    "BASELINE_SCHEMA": ".baseline",
    "BaselineEvent": ".baseline",
    "BaselineMetric": ".baseline",
    "BaselineRecord": ".baseline",
    "CellRecord": ".cell",
    "ExperimentRecord": ".cell",
    "JobsRecord": ".cell",
    "FINETUNE_SCHEMA": ".finetune",
    "Bf16Inference": ".finetune",
    "CheckpointLoad": ".finetune",
    "FinetuneData": ".finetune",
    "FinetuneEpoch": ".finetune",
    "FinetuneFinal": ".finetune",
    "FinetuneHyper": ".finetune",
    "FinetuneRecord": ".finetune",
    "FinetuneSettings": ".finetune",
    "TrainPoint": ".finetune",
    "CeilingsRecord": ".gpu_check",
    "GpuCheckRecord": ".gpu_check",
    "LogitsRecord": ".gpu_check",
    "SharesRecord": ".gpu_check",
    "PROFILE_SCHEMA": ".profile",
    "CpuPhaseMemory": ".profile",
    "CudaPhaseMemory": ".profile",
    "FlopCounts": ".profile",
    "FlopCrossCheck": ".profile",
    "ParamCounts": ".profile",
    "PhaseTiming": ".profile",
    "ProfiledPhase": ".profile",
    "ProfileMemory": ".profile",
    "ProfileRecord": ".profile",
    "ProfileRunSettings": ".profile",
    "ReferenceTiming": ".profile",
    "REPORT_SCHEMA": ".report",
    "ReportRecord": ".report",
    "ReportRow": ".report",
    "ReportSide": ".report",
    "SEARCH_SCHEMA": ".search",
    "SearchRecord": ".search",
    "TrialRecord": ".search",
    "SPEED_SCHEMA": ".speed",
    "SpeedPath": ".speed",
    "SpeedRecord": ".speed",
    "VARIANTS_SCHEMA": ".variants",
    "PresetRow": ".variants",
    "ToggleRow": ".variants",
    "VariantsRecord": ".variants",
}
_KIND_CLASSES = (
    "ProfileRecord",
    "SpeedRecord",
    "FinetuneRecord",
    "ABRecord",
    "SearchRecord",
    "GpuCheckRecord",
    "CeilingsRecord",
    "LogitsRecord",
    "SharesRecord",
    "BaselineRecord",
    "ReportRecord",
    "CellRecord",
    "ExperimentRecord",
    "JobsRecord",
    "VariantsRecord",
)


def _kinds() -> dict[str, type[SchemaRecord]]:
    return {cls.SCHEMA: cls for cls in (__getattr__(name) for name in _KIND_CLASSES)}


def __getattr__(name: str) -> Any:
    if name == "KINDS":  # schema -> record class, every kind the readers know
        kinds = _kinds()
        globals()["KINDS"] = kinds
        return kinds
    if name == "SCHEMAS":  # schema -> the version written now
        return {schema: kind.VERSION for schema, kind in __getattr__("KINDS").items()}
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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
    "VARIANTS_SCHEMA",
    "ABExperiment",
    "ABRecord",
    "ABSettings",
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
    "PresetRow",
    "ProfileMemory",
    "ProfileRecord",
    "ProfileRunSettings",
    "ProfiledPhase",
    "Record",
    "ReferenceTiming",
    "ReportRecord",
    "ReportRow",
    "ReportSide",
    "RevisionRef",
    "SchemaRecord",
    "SearchRecord",
    "SharesRecord",
    "SpeedPath",
    "SpeedRecord",
    "Status",
    "ToggleRow",
    "TrainPoint",
    "TrialRecord",
    "Variant",
    "VariantsRecord",
    "plain",
]
