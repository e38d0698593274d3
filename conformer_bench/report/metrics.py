"""Turn typed records (profile, finetune, ablation cells, baselines) into named metrics with raw samples.

This is the one place that knows which record field holds which measurement; everything downstream works on
:class:`Metric` objects. Metric names are dotted paths (``params.total``, ``throughput.infer.img_per_s``,
``finetune.top1.sum``); metrics of an ablation cell carry the cell label as a prefix (``<label>/params.total``).
Records are read by :mod:`conformer_bench.readers`; what a report needs of an ok record (every number it
measured present and finite) is checked here, each failure a one-line error naming the field and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ablate.store import CELL_SCHEMA, CELLS_FILE, ResultStore, validate_record
from ..errors import BenchError
from ..files import read_json
from ..readers import typed_record
from ..records import (
    FINETUNE_SCHEMA,
    PROFILE_SCHEMA,
    Environment,
    FinetuneRecord,
    ProfiledPhase,
    ProfileRecord,
    Record,
    SchemaRecord,
    Status,
)
from ..records import KINDS as RECORD_KINDS
from ..records.baseline import BASELINE_SCHEMA, BaselineMetric, BaselineRecord
from ..records.baseline import finite_number as _finite
from ..records.common import TIMING_KEYS

REPORTED = (PROFILE_SCHEMA, FINETUNE_SCHEMA, CELL_SCHEMA, BASELINE_SCHEMA)  # what `report` reads
READABLE_HINT = (
    "a profile or finetune record (JSON), an ablation results folder (cells.jsonl) or a baseline file"
)
REGENERATE = "regenerate the record with conformer-bench"
REF_UNIT = "img/ref-GFLOP"


@dataclass(frozen=True)
class Metric:
    """One measured quantity: its raw samples and what they mean.

    ``samples`` are per-iteration values for timings, one value per seed for accuracy, and a single value
    for exact counts. ``timing_env`` holds the fingerprint keys that decide whether two timings compare;
    ``context`` identifies what was measured (an ablation cell's config hash) when that can differ.
    """

    name: str
    samples: tuple[float, ...]
    unit: str
    direction: str
    kind: str
    timing: bool = False
    timing_env: tuple[tuple[str, Any], ...] = ()
    context: str | None = None

    @property
    def base_name(self) -> str:
        """The name without an ablation cell label (what thresholds match against)."""
        return self.name.rsplit("/", 1)[-1]

    def to_record(self) -> BaselineMetric:
        """The metric as a baseline keeps it."""
        return BaselineMetric(
            unit=self.unit,
            direction=self.direction,
            kind=self.kind,
            timing=self.timing,
            samples=list(self.samples),
            timing_env=dict(self.timing_env) if self.timing else None,
            context=self.context,
        )

    @classmethod
    def from_record(cls, name: str, metric: BaselineMetric) -> Metric:
        """A (checked) baseline metric read back."""
        tenv = metric.timing_env or {}
        return cls(
            name, tuple(float(s) for s in metric.samples), metric.unit, metric.direction, metric.kind,
            metric.timing, tuple((k, tenv.get(k)) for k in TIMING_KEYS), metric.context,
        )  # fmt: skip


@dataclass
class MetricSet:
    """All metrics read from one input, plus what crashed and where it was measured.

    ``environment`` is the measuring record's environment (None when it recorded none); baselines and
    verdicts write it as JSON (:meth:`environment_json`).
    """

    source: str
    source_kind: str  # profile | finetune | ablation (a baseline keeps the kind it was written from)
    environment: Environment | None = None
    metrics: dict[str, Metric] = field(default_factory=dict)
    crashed: dict[str, str] = field(default_factory=dict)  # name prefix -> one-line reason

    def add(self, metric: Metric) -> None:
        self.metrics[metric.name] = metric

    def environment_json(self) -> dict[str, Any]:
        """The environment as the file it was read from held it ({} when there is none)."""
        return self.environment.to_dict() if self.environment is not None else {}

    def crash_for(self, name: str) -> tuple[str, str] | None:
        """(prefix, reason) of the crashed record that covers ``name``, if any."""
        for prefix, reason in sorted(self.crashed.items(), key=lambda kv: -len(kv[0])):
            if name.startswith(prefix):
                return prefix, reason
        return None


# --------------------------------------------------------------------------- checked numbers


def finite_number(value: Any, where: str, source: str) -> float:
    """``value`` as a float: a finite number, else a :class:`BenchError` naming ``where`` in ``source``.

    Every number a report or a baseline reads passes here: null, NaN, infinity, a string or a boolean where
    a measurement belongs never reaches a comparison, nor a magnitude past :data:`MAGNITUDE_LIMIT` (whose
    square would overflow the statistics to infinity).
    """
    return _finite(value, f"{source}: {where}", REGENERATE)


def positive_number(value: Any, where: str, source: str) -> float:
    number = finite_number(value, where, source)
    if number <= 0:
        raise BenchError(f"{source}: {where} is {number:g}, not a positive number; regenerate the record")
    return number


def _absent(record: Record, name: str) -> bool:
    """Whether the file ``record`` was read from left the field ``name`` out (unlike writing null)."""
    return name in getattr(record, "_absent", frozenset())


def _measured(value: Any, where: str, source: str, *, absent: bool = False) -> float:
    """A number a record whose status is ok must hold: null or missing is an error, never a silent gap."""
    if value is None:
        raise BenchError(
            f"{source}: {where} is {'missing' if absent else 'null'} in a record whose status is ok, so "
            "the measurement is incomplete; rerun it (or regenerate the record with conformer-bench)"
        )
    return finite_number(value, where, source)


def _reason(status: Status | str | None, reason: str | None) -> str:
    status = status.value if isinstance(status, Status) else str(status or "failed")
    return f"{status}: {reason}" if reason else status


def timing_env(environment: Environment | None) -> tuple[tuple[str, Any], ...]:
    """The timing keys of ``environment`` (each None when there is no environment)."""
    if environment is None:
        return tuple((key, None) for key in TIMING_KEYS)
    return environment.timing_identity()


def as_environment(value: Any) -> Environment | None:
    """``value`` (an Environment, or its JSON from a file) as a record; None for none, or an empty one."""
    env = Environment.from_dict(value) if isinstance(value, Mapping) else value
    if not isinstance(env, Environment) or not env.to_dict():
        return None
    return env


def _environment_of(record: ProfileRecord | FinetuneRecord | None) -> Environment | None:
    """A record's environment (None when it has none)."""
    return as_environment(record.environment) if record is not None else None


def _read_as(value: Any, kind: type[SchemaRecord], where: str) -> Any:
    """``value`` (a parsed JSON object, or a record already typed) as a record of ``kind``."""
    if isinstance(value, kind):
        return value
    schema = value.get("schema") if isinstance(value, Mapping) else None
    if schema != kind.SCHEMA:
        raise BenchError(f"{where}: schema is {schema!r}, expected {kind.SCHEMA!r}; pass {READABLE_HINT}")
    return typed_record(value, where)


# --------------------------------------------------------------------------- profile

# (metric name, unit) of the exact counts; params are always measured, FLOPs unless the run skipped them
_PARAMS = (("total", "params.total"), ("trainable", "params.trainable"))
_FLOPS = (
    ("fvcore_total", "flops.fvcore_total", "FLOPs/img (fvcore, 1 FMA = 1 flop)"),
    ("paper_macs", "flops.paper_macs", "MACs/img (conv+linear+matmul)"),
)
_MEMORY_FIELDS = ("peak_allocated_bytes", "peak_rss_increase_bytes")


def profile_metrics(
    record: ProfileRecord, out: MetricSet, prefix: str = "", context: str | None = None
) -> None:
    """Params, FLOPs/MACs (exact), throughput and peak memory (noisy) of a profile record.

    A record whose status is ok must hold every number its settings measured: params always, FLOPs unless
    it was run without them, throughput and memory of each phase of its mode.
    """
    source = out.source
    if record.status != Status.OK:
        out.crashed[prefix] = _reason(record.status, record.reason)
        return
    tenv = timing_env(_environment_of(record))
    params = record.params
    for attr, name in _PARAMS:
        value = getattr(params, attr) if params is not None else None
        absent = _absent(record, "params") if params is None else _absent(params, attr)
        number = _measured(value, name, source, absent=absent)
        out.add(Metric(prefix + name, (number,), "params", "equal", "exact", context=context))
    if record.flops is not None:
        for attr, name, unit in _FLOPS:
            number = _measured(getattr(record.flops, attr), name, source, absent=_absent(record.flops, attr))
            out.add(Metric(prefix + name, (number,), unit, "equal", "exact", context=context))
    for mode, phase in _measured_phases(record, source):
        _phase_metrics(record, mode, phase, out, prefix, context, tenv)


def _measured_phases(record: ProfileRecord, source: str) -> list[tuple[str, ProfiledPhase]]:
    """The phases a profile record's mode timed (those present when it names no known mode)."""
    from ..profiling import PHASES_OF_MODE  # the profiler's own table (it imports torch)

    throughput = record.throughput or {}
    mode = record.settings.mode if record.settings is not None else None  # a hand-made file may lack it
    phases = PHASES_OF_MODE.get(mode) if isinstance(mode, str) else None
    if phases is None:
        return [
            (m, throughput[m]) for m in ("infer", "train") if isinstance(throughput.get(m), ProfiledPhase)
        ]
    for phase in phases:
        if not isinstance(throughput.get(phase), ProfiledPhase):
            raise BenchError(
                f"{source}: throughput.{phase} is missing although the record's mode is {mode!r}; rerun "
                "the measurement"
            )
    return [(m, throughput[m]) for m in phases]


def _phase_metrics(
    record: ProfileRecord,
    mode: str,
    phase: ProfiledPhase,
    out: MetricSet,
    prefix: str,
    context: str | None,
    tenv: tuple[tuple[str, Any], ...],
) -> None:
    """Throughput and memory of one timed phase."""
    source = out.source
    where = f"throughput.{mode}"
    samples = throughput_samples(phase, where, source)
    name = f"{prefix}throughput.{mode}.img_per_s"
    out.add(Metric(name, samples, "img/s", "higher", "noisy", True, tenv, context))
    relative = reference_samples(phase, where, source)
    if relative:
        name = f"{prefix}throughput.{mode}.img_per_ref_gflop"
        out.add(Metric(name, relative, REF_UNIT, "higher", "noisy", True, tenv, context))
    memory = record.memory.phase(mode) if record.memory is not None else None
    if memory is None:
        return
    for attr in _MEMORY_FIELDS:
        if hasattr(memory, attr):
            value = _measured(getattr(memory, attr), attr, f"{source} memory.{mode}")
            name = f"{prefix}memory.{mode}.{attr}"
            out.add(Metric(name, (value,), "bytes", "lower", "noisy", True, tenv, context))


def _number_list(raw: Any, where: str, source: str, what: str) -> tuple[float, ...]:
    """A non-empty list of finite positive numbers (seconds, ratios)."""
    if not isinstance(raw, list) or not raw:
        raise BenchError(f"{source}: {where} is not a list of {what}; regenerate the record")
    values = tuple(finite_number(v, where, source) for v in raw)
    if min(values) <= 0:
        raise BenchError(f"{source}: {where} holds a value <= 0, not {what}; regenerate the record")
    return values


def throughput_samples(phase: ProfiledPhase, where: str, source: str) -> tuple[float, ...]:
    """Images per second of every timed iteration: ``batch_size / seconds``."""
    timing = phase.timing
    if timing.samples_s is None:
        return (positive_number(timing.img_per_s, f"{where}.img_per_s", source),)
    batch = positive_number(timing.batch_size, f"{where}.batch_size", source)
    seconds = _number_list(timing.samples_s, f"{where}.samples_s", source, "seconds")
    return tuple(batch / s for s in seconds)


def reference_samples(phase: ProfiledPhase, where: str, source: str) -> tuple[float, ...]:
    """Images per reference GFLOP of every (step, reference GEMM) pair; empty without a reference."""
    raw = phase.timing.ref_ratio_samples
    if raw is None:
        return ()
    return _number_list(raw, f"{where}.ref_ratio_samples", source, "numbers")


# --------------------------------------------------------------------------- finetune

# (group of FinetuneFinal, head or None for the field itself, metric name, unit, direction)
_ACCURACY = (
    ("top1", "sum", "finetune.top1.sum", "%", "higher"),
    ("top1", "conv", "finetune.top1.conv", "%", "higher"),
    ("top1", "trans", "finetune.top1.trans", "%", "higher"),
    ("top5", "sum", "finetune.top5.sum", "%", "higher"),
    ("top5", "conv", "finetune.top5.conv", "%", "higher"),
    ("top5", "trans", "finetune.top5.trans", "%", "higher"),
    ("val_loss", None, "finetune.val_loss", "cross-entropy", "lower"),
)


def finetune_metrics(
    records: list[FinetuneRecord], out: MetricSet, prefix: str = "", context: str | None = None
) -> None:
    """Final accuracies (percent) and validation loss; one sample per seed (record).

    Every seed of a cell must hold the same metrics: a null is allowed only for the head the model does not
    have (``top1.trans`` of a CNN-only variant); anywhere else it is an error, never a dropped metric.
    """
    if not records:
        return
    failed = [rec for rec in records if rec.status != Status.OK]
    if failed:
        why = _reason(failed[0].status, failed[0].reason)
        out.crashed[f"{prefix}finetune."] = f"{len(failed)} of {len(records)} seed(s) {why}"
        return
    for group, head, name, unit, direction in _ACCURACY:
        values = [_accuracy_value(rec, group, head, out.source) for rec in records]
        present = [v for v in values if v is not None]
        key = f"final.{group}" + (f".{head}" if head else "")
        if present and len(present) < len(values):
            raise BenchError(
                f"{out.source}: {key} is missing in {len(values) - len(present)} of {len(values)} "
                "seeds; rerun the fine-tuning"
            )
        if present:
            out.add(Metric(prefix + name, tuple(present), unit, direction, "accuracy", context=context))


def _accuracy_value(record: FinetuneRecord, group: str, head: str | None, source: str) -> float | None:
    """A final accuracy or loss; ``None`` only for a head the variant does not have, or for top-5 under five
    classes (the record then holds no top-5 at all)."""
    final = record.final
    if final is None:
        raise BenchError(f"{source}: final is missing in a record whose status is ok; rerun the fine-tuning")
    key = f"final.{group}" + (f".{head}" if head else "")
    if head is None:
        return _measured(getattr(final, group), key, source, absent=_absent(final, group))
    by_head = getattr(final, group)
    if by_head is None and group == "top5":
        return None
    if not isinstance(by_head, Mapping):
        raise BenchError(f"{source}: final.{group} is not an object of heads; {REGENERATE}")
    value = by_head.get(head)
    if head != "sum" and head not in _heads_of(record):
        return None if value is None else finite_number(value, key, source)
    return _measured(value, key, source, absent=head not in by_head)


def _heads_of(record: FinetuneRecord) -> tuple[str, ...]:
    """The classifier heads of the record's variant, from its config; both when the record holds no config
    (or one that does not build)."""
    config = record.variant.conformer_config() if record.variant is not None else None
    if config is None:
        return ("conv", "trans")
    return (*(("conv",) if config.has_conv_head else ()), *(("trans",) if config.has_trans_head else ()))


# --------------------------------------------------------------------------- ablation cells


def config_digest(config: Mapping[str, Any] | None, recorded: str | None = None) -> str | None:
    """A short hash of a model config (what was measured), else the ``recorded`` config hash."""
    if isinstance(config, Mapping):
        text = json.dumps(config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return str(recorded) if recorded is not None else None


@dataclass
class CellView:
    """What a report and the history read of one ablation cell, its profile and fine-tune records typed."""

    label: str
    status: Status | str
    reason: str | None
    context: str | None  # what was measured: a hash of the cell's config
    experiment: str
    profile: ProfileRecord | None
    finetune: list[FinetuneRecord]
    own_environment: Environment | None  # the cell record's own (older cells have none)

    @property
    def environment(self) -> Environment | None:
        """Where it was measured: its profile's environment, else the cell's, else its first seed's."""
        seed = self.finetune[0] if self.finetune else None
        return _environment_of(self.profile) or self.own_environment or _environment_of(seed)


def cell_view(cell: Any, where: str) -> CellView:
    """The one adapter from an ablation cell record to what the report and the history read of it.

    ``cell`` is a JSON object from the results store, or a typed cell record (whose fields are its JSON keys).
    """
    if isinstance(cell, Record):
        if getattr(cell, "SCHEMA", None) != CELL_SCHEMA:
            raise BenchError(f"{where}: not a {CELL_SCHEMA} record; pass {READABLE_HINT}")
    else:
        cell = validate_record(cell, where)
    profile, finetune = _field(cell, "profile"), _field(cell, "finetune") or []
    if not isinstance(finetune, list):
        raise BenchError(f"{where}: finetune is not a list of records; regenerate the results")
    status = _field(cell, "status") or Status.OK
    return CellView(
        label=_field(cell, "label"),
        status=Status(status) if status in set(Status) else str(status),
        reason=_field(cell, "reason"),
        context=config_digest(_field(cell, "config"), _field(cell, "config_hash")),
        experiment=str(_field(cell, "experiment") or ""),
        profile=_read_as(profile, ProfileRecord, f"{where} profile") if profile is not None else None,
        finetune=[_read_as(r, FinetuneRecord, f"{where} finetune seed {i}") for i, r in enumerate(finetune)],
        own_environment=as_environment(_field(cell, "environment")),
    )


def _field(cell: Any, name: str) -> Any:
    """A field of a cell: an attribute of a typed cell record, a key of a cell's JSON object."""
    return getattr(cell, name, None) if isinstance(cell, Record) else cell.get(name)


def cell_metrics(cell: CellView, out: MetricSet) -> None:
    """A cell's profile and fine-tune metrics under its label (or the crash that took them)."""
    prefix = f"{cell.label}/"
    if cell.status != Status.OK:
        out.crashed[prefix] = _reason(cell.status, cell.reason)
        return
    if cell.profile is not None:
        profile_metrics(cell.profile, out, prefix, cell.context)
    finetune_metrics(cell.finetune, out, prefix, cell.context)


def _add_cell(cell: Any, out: MetricSet, where: str) -> None:
    view = cell_view(cell, where)
    prefix = f"{view.label}/"
    if any(name.startswith(prefix) for name in out.metrics) or prefix in out.crashed:
        raise BenchError(
            f"{where}: label {view.label!r} appears twice; give each ablation cell a unique label"
        )
    cell_metrics(view, out)
    if view.status == Status.OK:
        out.environment = out.environment or view.environment


def ablation_metrics(path: Path) -> MetricSet:
    """Every cell of an ablation results folder (or a cells.jsonl file), prefixed by its label.

    Read through the folder's results store: the newest record of each label. A cell that does not belong
    to the folder's current experiment (another experiment, or settings changed since it ran) counts as
    crashed with the reason "stale: ...", so it is reported and never gated as ok.
    """
    folder = path if path.is_dir() else path.parent
    if path.is_dir() and not os.path.lexists(path / CELLS_FILE) and not ResultStore(path).exists():
        raise BenchError(f"{str(path)!r} holds no {CELLS_FILE}; pass {READABLE_HINT}")
    if not path.is_dir() and not path.is_file():
        raise BenchError(f"{str(path)!r} does not exist; pass {READABLE_HINT}")
    store = ResultStore(folder)
    if not path.is_dir():
        store.cells_path = path
    # No lock for reading: records are appended whole and compaction renames a complete file into place.
    cells = store.latest()
    stale = store.stale(cells) if path.is_dir() or path.name == CELLS_FILE else {}
    out = MetricSet(source=str(path), source_kind="ablation")
    for label, cell in cells.items():
        if label in stale:
            out.crashed[f"{label}/"] = f"stale: {stale[label]}; rerun the ablation or remove the cell"
            continue
        _add_cell(cell, out, f"{path} cell {label!r}")
    return out


# --------------------------------------------------------------------------- baselines and any input


def baseline_metrics(record: BaselineRecord, source: str) -> MetricSet:
    """The metrics of a (checked) baseline record."""
    out = MetricSet(source, record.source_kind, as_environment(record.environment))
    for name, metric in record.metrics.items():
        out.add(Metric.from_record(name, metric))
    out.crashed = {str(k): str(v) for k, v in (record.crashed or {}).items()}
    return out


def input_files(path: str | Path) -> list[Path]:
    """The files :func:`load_metrics` reads for ``path``: the file itself, or a results folder's records."""
    path = Path(path)
    return ResultStore(path).record_files() if path.is_dir() else [path]


def read_input(path: str | Path, expected: str | None = None) -> Any:
    """The record in a JSON file ``report`` or ``baseline`` reads: typed, of a schema they read (``expected``
    when given); a cell record stays JSON until its kind is registered."""
    path = Path(path)
    value = read_json(path)
    source = str(path)
    if not isinstance(value, Mapping):
        raise BenchError(f"{source}: expected a JSON object; pass {READABLE_HINT}")
    schema = value.get("schema")
    if expected is not None and schema != expected:
        raise BenchError(f"{source}: schema is {schema!r}, expected {expected!r}; pass {READABLE_HINT}")
    if schema not in REPORTED:
        raise BenchError(f"{source}: schema {schema!r} is not one report reads; pass {READABLE_HINT}")
    if schema == CELL_SCHEMA and schema not in RECORD_KINDS:
        return value
    return typed_record(value, source)


def load_metrics(path: str | Path) -> MetricSet:
    """Read any input ``report`` and ``baseline`` accept; :class:`BenchError` for anything else."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".jsonl":
        return ablation_metrics(path)
    record = read_input(path)
    source = str(path)
    if isinstance(record, BaselineRecord):
        return baseline_metrics(record, source)
    if isinstance(record, ProfileRecord):
        out = MetricSet(source=source, source_kind="profile", environment=_environment_of(record))
        profile_metrics(record, out)
    elif isinstance(record, FinetuneRecord):
        out = MetricSet(source=source, source_kind="finetune", environment=_environment_of(record))
        finetune_metrics([record], out)
    else:
        out = MetricSet(source=source, source_kind="ablation")
        _add_cell(record, out, source)
    return out
