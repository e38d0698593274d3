"""Typed records of what the benchmarks measure, and the JSON they write.

Each record is a dataclass whose fields are the record's keys in the order they are written: ``to_dict()``
gives the JSON object (nested records included), ``from_dict()`` reads one back. Fields named in
``OPTIONAL`` are left out of the JSON while ``None`` (a key that appears only in some runs); every other
``None`` is written as ``null``. Schema names and versions live here, in :data:`SCHEMAS`.

Readers of older records (``report``, ``table``) keep reading plain dicts; these classes describe what is
written now.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, TypeVar, cast

from .errors import BenchError

PROFILE_SCHEMA = "conformer-bench.profile"
SPEED_SCHEMA = "conformer-bench.speed"
FINETUNE_SCHEMA = "conformer-bench.finetune"
AB_SCHEMA = "conformer-bench.ab"
SEARCH_SCHEMA = "conformer-bench.search"  # conformer_bench.search.front.SearchRecord
SCHEMAS: dict[str, int] = {
    PROFILE_SCHEMA: 1,
    SPEED_SCHEMA: 3,
    FINETUNE_SCHEMA: 1,
    AB_SCHEMA: 1,
    SEARCH_SCHEMA: 1,
}

R = TypeVar("R", bound="Record")
S = TypeVar("S", bound="SchemaRecord")
Readers = Mapping[str, Callable[[Any], Any]]  # field name -> what reads its JSON back


class Status(StrEnum):
    """How a measurement ended; written as its plain string value."""

    OK = "ok"
    OOM = "oom"  # profile: out of memory even at batch size 1
    NAN = "nan"  # a training loss became non-finite
    FAILED = "failed"  # speed: a path failed; fine-tune: the weights could not be saved
    UNSUPPORTED = (
        "unsupported"  # speed: no native kernels for the precision; ab: a revision cannot build the cell
    )


def plain(value: Any) -> Any:
    """``value`` with every nested record turned into its dict and every status into its string (dicts and
    lists copied, the rest as is)."""
    if isinstance(value, Status):
        return value.value
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class Record:
    """Field order is key order; ``OPTIONAL`` fields are omitted while ``None``, and so are ``MEASURED``
    fields of a record whose status is not ok (what was never measured is not written)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    MEASURED: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        omit = self.OPTIONAL | (
            self.MEASURED if getattr(self, "status", Status.OK) != Status.OK else frozenset()
        )
        for f in fields(cast(Any, self)):  # every subclass is a dataclass
            value = getattr(self, f.name)
            if value is None and f.name in omit:
                continue
            out[f.name] = plain(value)
        return out

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        return cls(**known_fields(cls, data))


def known_fields(cls: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    """The items of ``data`` that are fields of the dataclass ``cls``; optional fields it lacks are ``None``."""
    names = {f.name for f in fields(cls)}
    values = dict.fromkeys(getattr(cls, "OPTIONAL", ()))
    if data.get("status", Status.OK) != Status.OK:
        values.update(dict.fromkeys(getattr(cls, "MEASURED", ())))
    values.update((k, v) for k, v in data.items() if k in names)
    status = values.get("status")
    if isinstance(status, str) and status in set(Status):
        values["status"] = Status(status)
    return values


def _dict_of(kind: type[Record]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Reads a JSON object of ``kind`` records, key by key."""
    return lambda data: {key: kind.from_dict(value) for key, value in data.items()}


def _list_of(kind: type[Record]) -> Callable[[list[Any]], list[Any]]:
    """Reads a JSON list of ``kind`` records."""
    return lambda data: [kind.from_dict(value) for value in data]


class SchemaRecord(Record):
    """A top-level record: ``schema`` and ``schema_version`` come first in its JSON."""

    SCHEMA: ClassVar[str]
    # Fields that hold nested records.
    NESTED: ClassVar[Readers] = {}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, "schema_version": SCHEMAS[self.SCHEMA], **super().to_dict()}

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        cls.check_schema(data)
        values = known_fields(cls, data)
        for name, read in cls.NESTED.items():
            if name in data or name not in values:  # absent only where the status allows (MEASURED)
                values[name] = read(data[name])
        return cls(**values)

    @classmethod
    def check_schema(cls, data: dict[str, Any]) -> None:
        schema, version = data.get("schema"), data.get("schema_version")
        if schema != cls.SCHEMA or version != SCHEMAS[cls.SCHEMA]:
            raise BenchError(
                f"record is {schema!r} version {version!r}, not {cls.SCHEMA!r} version {SCHEMAS[cls.SCHEMA]}; "
                "read it with the conformer-bench that wrote it"
            )


# --- timing and memory of one phase ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceTiming(Record):
    """The reference workload timed beside each iteration (see :func:`conformer_bench.timing.gemm_reference`)."""

    workload: str
    flops: int
    gflop_per_s: float
    samples_s: list[float]


@dataclass(frozen=True)
class PhaseTiming(Record):
    """Per-iteration timing of one phase (``timing.measure``); ``latency_s`` is per batch."""

    OPTIONAL = frozenset({"img_per_ref_gflop", "ref_ratio_samples", "reference"})

    img_per_s: float
    batch_size: int
    requested_batch_size: int
    iters: int
    iters_auto: bool
    budget_s: float | None
    warmup: int
    warmup_s: list[float]
    latency_s: dict[str, float]
    iqr_over_median: float
    noisy: bool
    samples_s: list[float]
    timer: str
    energy: dict[str, Any] | None  # cuda: NVML energy of the timed loop; None on CPU
    img_per_j: float | None
    img_per_ref_gflop: float | None = None  # these three only when timed beside a reference workload
    ref_ratio_samples: list[float] | None = None
    reference: ReferenceTiming | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhaseTiming:
        values = known_fields(cls, data)
        if isinstance(values.get("reference"), dict):
            values["reference"] = ReferenceTiming.from_dict(values["reference"])
        return cls(**values)


@dataclass(frozen=True)
class CpuPhaseMemory(Record):
    """Resident-set peak of a phase on the CPU (``memory.cpu_peak_rss``)."""

    peak_rss_increase_bytes: int
    rss_before_bytes: int
    rss_after_bytes: int
    peak_rss_bytes: int
    peak_from_ru_maxrss: bool
    rss_samples: int
    sample_interval_s: float
    malloc_trim: bool


@dataclass(frozen=True)
class CudaPhaseMemory(Record):
    """Allocator peaks of a phase on a CUDA device and NVML's reading at its end (``memory.cuda_peak_memory``)."""

    OPTIONAL = frozenset({"nvml_error"})

    peak_allocated_bytes: int
    peak_reserved_bytes: int
    allocated_before_bytes: int
    nvml_used_bytes: int | None
    nvml_total_bytes: int | None
    nvml_error: str | None = None


# --- profile -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfiledPhase(Record):
    """One timed phase of a profile: its timing, then the precision it ran in, the last loss (train) and path."""

    timing: PhaseTiming
    precision: str
    path: str
    trained: bool = False
    last_loss: float | None = None  # written for a training phase only

    def to_dict(self) -> dict[str, Any]:
        out = {**self.timing.to_dict(), "precision": self.precision}
        if self.trained:
            out["last_loss"] = self.last_loss
        out["path"] = self.path
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfiledPhase:
        timing = {k: v for k, v in data.items() if k not in ("precision", "last_loss", "path")}
        return cls(
            PhaseTiming.from_dict(timing),
            data["precision"],
            data["path"],
            trained="last_loss" in data,
            last_loss=data.get("last_loss"),
        )


@dataclass
class ProfileRecord(SchemaRecord):
    """A ``conformer-bench.profile`` record: one variant's params, FLOPs, memory and throughput."""

    SCHEMA = PROFILE_SCHEMA
    NESTED: ClassVar[Readers] = {"throughput": _dict_of(ProfiledPhase)}

    status: Status  # ok | oom | nan | failed (a sweep point that raised: what was asked and why)
    reason: str | None
    label: str
    variant: dict[str, Any]
    environment: dict[str, Any]
    settings: dict[str, Any]
    params: dict[str, Any] | None  # None only in a failed record
    flops: dict[str, Any] | None
    memory: dict[str, Any] | None  # device, method, then one probe's dict per phase
    throughput: dict[str, ProfiledPhase] | None  # None only in a failed record
    compile_s: dict[str, float] | None
    wall_s: float | None  # None only in a failed record
    breakdown: dict[str, Any] | None = None  # --breakdown: time by component of inference

    OPTIONAL = frozenset({"breakdown"})
    MEASURED = frozenset({"params", "flops", "memory", "throughput", "compile_s", "wall_s"})


# --- speed ---------------------------------------------------------------------------------------------------


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
            del out["compile_s"]
        return out


@dataclass
class SpeedRecord(SchemaRecord):
    """A ``conformer-bench.speed`` record: every path of one variant timed interleaved, per precision."""

    SCHEMA = SPEED_SCHEMA
    NESTED: ClassVar[Readers] = {"paths": _dict_of(SpeedPath)}

    status: Status  # ok | failed
    reason: str | None
    environment: dict[str, Any]
    variant: dict[str, Any]
    settings: dict[str, Any]
    precision_support: dict[str, Any]
    evaluation_set: dict[str, Any]
    flops: dict[str, Any]
    ceiling: dict[str, Any]
    ceilings: dict[str, dict[str, Any]]
    paths: dict[str, SpeedPath]
    best_path: str | None


# --- fine-tune -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneEpoch(Record):
    """Training and validation numbers after one epoch."""

    OPTIONAL = frozenset({"top5", "cue_top1"})

    epoch: int
    step: int
    train_loss: float
    train_top1: float
    val_loss: float | None
    top1: dict[str, float | None]
    top5: dict[str, float | None] | None  # with 5 classes or more
    cue_top1: dict[str, float | None] | None  # local-global only
    lr: float
    img_per_s: float
    epoch_s: float
    eval_s: float
    eval_img_per_s: float


@dataclass(frozen=True)
class FinetuneFinal(Record):
    """The run's outcome: the last epoch's accuracies (``None`` when it failed), speed and peak memory."""

    OPTIONAL = frozenset({"top5", "cue_top1", "bf16_inference"})

    top1: dict[str, float | None]
    top5: dict[str, float | None] | None
    cue_top1: dict[str, float | None] | None
    val_loss: float | None
    val_count: int
    train_loss: float | None
    img_per_s: float | None
    train_s: float
    wall_s: float
    steps_done: int
    peak_memory_bytes: int
    peak_memory_kind: str
    bf16_inference: dict[str, Any] | None = None


@dataclass
class FinetuneRecord(SchemaRecord):
    """A ``conformer-bench.finetune`` record."""

    SCHEMA = FINETUNE_SCHEMA
    NESTED: ClassVar[Readers] = {"history": _list_of(FinetuneEpoch), "final": FinetuneFinal.from_dict}

    status: Status  # ok | nan | failed
    reason: str | None
    environment: dict[str, Any]
    variant: dict[str, Any]
    data: dict[str, Any]
    hyper: dict[str, Any]
    settings: dict[str, Any]
    checkpoint: dict[str, Any] | None
    saved_checkpoint: str | None
    history: list[FinetuneEpoch]
    train_curve: list[dict[str, Any]]
    final: FinetuneFinal


# --- same-machine A/B of two revisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedRound(Record):
    """One round of an A/B cell: each revision's turn of ``steps_per_turn`` steps, in the order they ran.

    Times are per turn (the sum of its steps): wall clock (``perf_counter``) and the worker's CPU time
    (``process_time``, all its threads, user and system).
    """

    order: str  # "base,head", "head,base", or "duet" (both at once)
    epoch: int  # which build of the cell (each epoch builds it anew, at another memory layout)
    base_wall_s: float
    head_wall_s: float
    base_cpu_s: float
    head_cpu_s: float
    base_page_faults: int  # minor page faults during the turn (the workers' allocator is set to need none)
    head_page_faults: int


@dataclass(frozen=True)
class InstructionCounts(Record):
    """Instructions per image of each revision's step, counted under callgrind (``count_steps`` steps, one
    thread); a side that could not be counted is None, with the reason."""

    OPTIONAL = frozenset({"reason"})

    base: float | None
    head: float | None
    count_steps: int
    tool: str  # e.g. "valgrind-3.19.0 callgrind, Ir"
    reason: str | None = None


@dataclass
class PairedCell(Record):
    """One cell and phase of an A/B: what ran, how it ended, and every round's raw times."""

    OPTIONAL = frozenset({"instructions"})

    label: str
    phase: str  # infer | train
    status: Status  # ok | unsupported (a revision cannot build it) | failed
    reason: str | None
    failed_side: str | None  # base | head when one side alone could not run it
    config_hash: str
    batch_size: int
    img_size: int
    precision: str
    path: str
    threads: int
    steps_per_turn: int
    rounds: list[PairedRound]
    instructions: InstructionCounts | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairedCell:
        values = known_fields(cls, data)
        values["rounds"] = [PairedRound.from_dict(r) for r in data["rounds"]]
        if isinstance(values.get("instructions"), dict):
            values["instructions"] = InstructionCounts.from_dict(values["instructions"])
        return cls(**values)


@dataclass
class ABRecord(SchemaRecord):
    """A ``conformer-bench.ab`` record: two revisions measured side by side on one machine, cell by cell."""

    SCHEMA = AB_SCHEMA
    NESTED: ClassVar[Readers] = {"cells": _list_of(PairedCell)}

    status: Status  # ok | failed (stopped before every cell ran)
    reason: str | None
    base: dict[str, Any]  # the revision: name, sha, subject, commit_time
    head: dict[str, Any]
    experiment: dict[str, Any]  # name, source, digest
    environment: dict[str, Any]
    settings: dict[str, Any]
    workers: dict[str, Any]  # per side: what the worker reported at start (python, torch, its conformer)
    cells: list[PairedCell]
    wall_s: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ABRecord:
        """Read an A/B record, checking every number a verdict is computed from (BenchError otherwise)."""
        if not isinstance(data, dict):
            raise BenchError("not a JSON object; pass the --output file of a `conformer-bench ab` run")
        try:
            record = super().from_dict(data)
            _check_ab(record)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BenchError(
                f"malformed A/B record ({type(exc).__name__}: {exc}); write it again with `ab --output`"
            ) from None
        return record


def _positive(value: Any, where: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{where} is {value!r}, not a positive finite number")


def _check_ab(record: ABRecord) -> None:
    """What the verdict reads of an A/B record: known statuses and clock, positive finite times and counts."""
    for name in ("base", "head", "experiment", "environment", "settings", "workers"):
        if not isinstance(getattr(record, name), dict):
            raise TypeError(f"{name} must be an object")
    if not isinstance(record.cells, list):
        raise TypeError("cells must be a list")
    if record.settings.get("clock", "auto") not in ("auto", "cpu", "wall"):
        raise ValueError(f"settings.clock {record.settings.get('clock')!r} is not auto, cpu or wall")
    if not isinstance(record.settings.get("seed", 0), int):
        raise TypeError("settings.seed must be an integer")
    for cell in record.cells:
        where = f"cell {cell.label!r}"
        if not isinstance(cell.status, Status) or not isinstance(cell.label, str):
            raise ValueError(f"{where}: unknown status {cell.status!r}")
        for name in ("batch_size", "steps_per_turn", "threads"):
            value = getattr(cell, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if name == "steps_per_turn" else 1)
            ):
                raise ValueError(f"{where}: {name} is {value!r}")
        for i, r in enumerate(cell.rounds):
            for name in ("base_wall_s", "head_wall_s", "base_cpu_s", "head_cpu_s"):
                _positive(getattr(r, name), f"{where} round {i} {name}")
            if isinstance(r.epoch, bool) or not isinstance(r.epoch, int):
                raise ValueError(f"{where} round {i}: epoch is {r.epoch!r}")
        counts = cell.instructions
        for side in ("base", "head"):
            value = getattr(counts, side) if counts is not None else None
            if value is not None:
                _positive(value, f"{where} {side} instructions")
