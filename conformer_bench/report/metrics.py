"""Turn records (profile, finetune, ablation cells, baseline files) into named metrics with raw samples.

This is the one place that knows which record keys hold which measurement; everything downstream works on
:class:`Metric` objects. Metric names are dotted paths (``params.total``, ``throughput.infer.img_per_s``,
``finetune.top1.sum``); metrics of an ablation cell carry the cell label as a prefix (``<label>/params.total``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformer.config import is_finite_number

from ..env import TIMING_KEYS
from ..errors import BenchError

SCHEMA_PREFIX = "conformer-bench."
BASELINE_SCHEMA = "conformer-bench.baseline"
BASELINE_SCHEMA_VERSION = 1
# The newest schema_version of each record this module can read.
READABLE_VERSIONS: dict[str, int] = {
    "conformer-bench.profile": 1,
    "conformer-bench.finetune": 1,
    "conformer-bench.cell": 1,
    BASELINE_SCHEMA: BASELINE_SCHEMA_VERSION,
}
READABLE_HINT = (
    "a profile or finetune record (JSON), an ablation results folder (cells.jsonl) or a baseline file"
)

KINDS = ("exact", "noisy", "accuracy", "paired")  # paired: two revisions timed side by side (ab)
MAGNITUDE_LIMIT = 1e100  # no measurement comes near it; past it a variance overflows to infinity
DIRECTIONS = ("higher", "lower", "equal")


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "direction": self.direction,
            "kind": self.kind,
            "timing": self.timing,
            "samples": list(self.samples),
            "timing_env": dict(self.timing_env) if self.timing else None,
            "context": self.context,
        }


@dataclass
class MetricSet:
    """All metrics read from one input, plus what crashed and where it was measured."""

    source: str
    source_kind: str  # profile | finetune | ablation (a baseline keeps the kind it was written from)
    environment: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    crashed: dict[str, str] = field(default_factory=dict)  # name prefix -> one-line reason

    def add(self, metric: Metric) -> None:
        self.metrics[metric.name] = metric

    def crash_for(self, name: str) -> tuple[str, str] | None:
        """(prefix, reason) of the crashed record that covers ``name``, if any."""
        for prefix, reason in sorted(self.crashed.items(), key=lambda kv: -len(kv[0])):
            if name.startswith(prefix):
                return prefix, reason
        return None


# --------------------------------------------------------------------------- helpers


_ABSENT: Any = object()  # a key the record does not hold (unlike a key that holds null)


def _lookup(record: Mapping[str, Any], dotted: str) -> Any:
    """``record["a"]["b"]`` for ``"a.b"``; :data:`_ABSENT` when any step is absent."""
    node: Any = record
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return _ABSENT
        node = node[key]
    return node


def finite_number(value: Any, where: str, source: str) -> float:
    """``value`` as a float: a finite number, else a :class:`BenchError` naming ``where`` in ``source``.

    Every number a report or a baseline reads passes here: null, NaN, infinity, a string or a boolean where
    a measurement belongs never reaches a comparison, nor a magnitude past :data:`MAGNITUDE_LIMIT` (whose
    square would overflow the statistics to infinity).
    """
    if not is_finite_number(value) or abs(value) > MAGNITUDE_LIMIT:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        raise BenchError(
            f"{source}: {where} is {_shown(value)}, not a {'finite ' if number else ''}number"
            f"{f' within ±{MAGNITUDE_LIMIT:g}' if number else ''}; regenerate the record with conformer-bench"
        )
    return float(value)


def _shown(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _measured(record: Mapping[str, Any], dotted: str, source: str, *, required: bool = False) -> float | None:
    """The number at ``dotted`` in a record whose status is ok: ``None`` when the key is absent (not
    measured) and not ``required``; a null or any non-number there is an error, never a silent gap."""
    value = _lookup(record, dotted)
    if value is _ABSENT and not required:
        return None
    if value is None or value is _ABSENT:
        state = "null" if value is None else "missing"
        raise BenchError(
            f"{source}: {dotted} is {state} in a record whose status is ok, so the measurement is "
            "incomplete; rerun it (or regenerate the record with conformer-bench)"
        )
    return finite_number(value, dotted, source)


def _timing_env(environment: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((key, environment.get(key)) for key in TIMING_KEYS)


def _env(record: Mapping[str, Any]) -> dict[str, Any]:
    env = record.get("environment")
    return dict(env) if isinstance(env, Mapping) else {}


def _reason(record: Mapping[str, Any]) -> str:
    status = record.get("status", "failed")
    reason = record.get("reason")
    return f"{status}: {reason}" if reason else str(status)


# --------------------------------------------------------------------------- record readers

# (record key, metric name, unit, direction, kind)
_EXACT_PROFILE = (
    ("params.total", "params.total", "params", "equal"),
    ("params.trainable", "params.trainable", "params", "equal"),
    ("flops.fvcore_total", "flops.fvcore_total", "FLOPs/img (fvcore, 1 FMA = 1 flop)", "equal"),
    ("flops.paper_macs", "flops.paper_macs", "MACs/img (conv+linear+matmul)", "equal"),
)
_MEMORY_KEYS = ("peak_allocated_bytes", "peak_rss_increase_bytes")
_ACCURACY = (
    ("final.top1.sum", "finetune.top1.sum", "%", "higher"),
    ("final.top1.conv", "finetune.top1.conv", "%", "higher"),
    ("final.top1.trans", "finetune.top1.trans", "%", "higher"),
    ("final.top5.sum", "finetune.top5.sum", "%", "higher"),
    ("final.top5.conv", "finetune.top5.conv", "%", "higher"),
    ("final.top5.trans", "finetune.top5.trans", "%", "higher"),
    ("final.val_loss", "finetune.val_loss", "cross-entropy", "lower"),
)


def _check_schema(record: Any, expected: str, source: str) -> None:
    if not isinstance(record, Mapping):
        raise BenchError(
            f"{source}: expected a JSON object holding a {expected} record; pass {READABLE_HINT}"
        )
    schema = record.get("schema")
    if schema != expected:
        raise BenchError(f"{source}: schema is {schema!r}, expected {expected!r}; pass {READABLE_HINT}")
    _check_version(record, source)


def _check_version(record: Mapping[str, Any], source: str) -> None:
    schema = str(record.get("schema"))
    version = record.get("schema_version")
    newest = READABLE_VERSIONS[schema]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BenchError(
            f"{source}: {schema} record has no valid schema_version; regenerate it with conformer-bench"
        )
    if version > newest:
        raise BenchError(
            f"{source}: {schema} schema_version {version} is newer than this tool reads ({newest}); upgrade conformer-bench"
        )


def profile_metrics(
    record: Mapping[str, Any], out: MetricSet, prefix: str = "", context: str | None = None
) -> None:
    """Params, FLOPs/MACs (exact), throughput and peak memory (noisy) of a profile record.

    A record whose status is ok must hold every number its settings measured: params always, FLOPs unless
    it was run without them, throughput and memory of each phase of its mode.
    """
    source = out.source
    _check_schema(record, "conformer-bench.profile", source)
    if record.get("status", "ok") != "ok":
        out.crashed[prefix] = _reason(record)
        return
    env = record.get("environment") or {}
    if not isinstance(env, Mapping):
        raise BenchError(
            f"{source}: environment is not an object; regenerate the record with conformer-bench"
        )
    tenv = _timing_env(env)
    counted = isinstance(record.get("flops"), Mapping)
    for key, name, unit, direction in _EXACT_PROFILE:
        value = _measured(record, key, source, required=counted or key.startswith("params."))
        if value is not None:
            out.add(Metric(prefix + name, (value,), unit, direction, "exact", context=context))
    for mode in _measured_phases(record, source):
        _phase_metrics(record, mode, out, prefix, context, tenv)


def _measured_phases(record: Mapping[str, Any], source: str) -> tuple[str, ...]:
    """The phases a profile record's mode timed (those present when it names no known mode)."""
    from ..profiling import PHASES_OF_MODE

    mode = _lookup(record, "settings.mode")
    phases = PHASES_OF_MODE.get(mode) if isinstance(mode, str) else None
    if phases is None:
        return tuple(m for m in ("infer", "train") if isinstance(_lookup(record, f"throughput.{m}"), Mapping))
    for phase in phases:
        if not isinstance(_lookup(record, f"throughput.{phase}"), Mapping):
            raise BenchError(
                f"{source}: throughput.{phase} is missing although the record's mode is {mode!r}; rerun "
                "the measurement"
            )
    return phases


def _phase_metrics(
    record: Mapping[str, Any],
    mode: str,
    out: MetricSet,
    prefix: str,
    context: str | None,
    tenv: tuple[tuple[str, Any], ...],
) -> None:
    """Throughput and memory of one timed phase (or the crash that took them)."""
    source = out.source
    timing = record["throughput"][mode]
    if timing.get("status", "ok") != "ok":
        out.crashed[f"{prefix}throughput.{mode}."] = _reason(timing)
    else:
        samples = throughput_samples(timing, f"throughput.{mode}", source)
        name = f"{prefix}throughput.{mode}.img_per_s"
        out.add(Metric(name, samples, "img/s", "higher", "noisy", True, tenv, context))
        relative = reference_samples(timing, f"throughput.{mode}", source)
        if relative:
            name = f"{prefix}throughput.{mode}.img_per_ref_gflop"
            out.add(Metric(name, relative, REF_UNIT, "higher", "noisy", True, tenv, context))
    memory = _lookup(record, f"memory.{mode}")
    if not isinstance(memory, Mapping):
        return
    if memory.get("status", "ok") != "ok":
        out.crashed[f"{prefix}memory.{mode}."] = _reason(memory)
        return
    for key in _MEMORY_KEYS:
        value = _measured(memory, key, f"{source} memory.{mode}")
        if value is not None:
            name = f"{prefix}memory.{mode}.{key}"
            out.add(Metric(name, (value,), "bytes", "lower", "noisy", True, tenv, context))


def _number_list(raw: Any, where: str, source: str, what: str) -> tuple[float, ...]:
    """A non-empty list of finite positive numbers (seconds, ratios)."""
    if not isinstance(raw, list) or not raw:
        raise BenchError(f"{source}: {where} is not a list of {what}; regenerate the record")
    values = tuple(finite_number(v, where, source) for v in raw)
    if min(values) <= 0:
        raise BenchError(f"{source}: {where} holds a value <= 0, not {what}; regenerate the record")
    return values


def throughput_samples(timing: Mapping[str, Any], where: str, source: str) -> tuple[float, ...]:
    """Images per second of every timed iteration: ``batch_size / seconds``."""
    raw = timing.get("samples_s")
    if raw is None:
        return (positive_number(timing.get("img_per_s"), f"{where}.img_per_s", source),)
    batch = positive_number(timing.get("batch_size"), f"{where}.batch_size", source)
    seconds = _number_list(raw, f"{where}.samples_s", source, "seconds")
    return tuple(batch / s for s in seconds)


def positive_number(value: Any, where: str, source: str) -> float:
    number = finite_number(value, where, source)
    if number <= 0:
        raise BenchError(f"{source}: {where} is {number:g}, not a positive number; regenerate the record")
    return number


REF_UNIT = "img/ref-GFLOP"


def reference_samples(timing: Mapping[str, Any], where: str, source: str) -> tuple[float, ...]:
    """Images per reference GFLOP of every (step, reference GEMM) pair; empty without a reference."""
    raw = timing.get("ref_ratio_samples")
    if raw is None:
        return ()
    return _number_list(raw, f"{where}.ref_ratio_samples", source, "numbers")


def finetune_metrics(
    records: list[Mapping[str, Any]], out: MetricSet, prefix: str = "", context: str | None = None
) -> None:
    """Final accuracies (percent) and validation loss; one sample per seed (record).

    Every seed of a cell must hold the same metrics: a null is allowed only for the head the model does not
    have (``top1.trans`` of a CNN-only variant); anywhere else it is an error, never a dropped metric.
    """
    if not records:
        return
    for rec in records:
        _check_schema(rec, "conformer-bench.finetune", out.source)
    failed = [rec for rec in records if rec.get("status", "ok") != "ok"]
    if failed:
        out.crashed[f"{prefix}finetune."] = f"{len(failed)} of {len(records)} seed(s) {_reason(failed[0])}"
        return
    for key, name, unit, direction in _ACCURACY:
        values = [_accuracy_value(rec, key, out.source) for rec in records]
        present = [v for v in values if v is not None]
        if present and len(present) < len(values):
            raise BenchError(
                f"{out.source}: {key} is missing in {len(values) - len(present)} of {len(values)} "
                "seeds; rerun the fine-tuning"
            )
        if present:
            out.add(Metric(prefix + name, tuple(present), unit, direction, "accuracy", context=context))


def _accuracy_value(record: Mapping[str, Any], key: str, source: str) -> float | None:
    """A final accuracy or loss; ``None`` only for a head the variant does not have, or for top-5 under five
    classes (the record then holds no top-5 at all)."""
    head = key.rsplit(".", 1)[-1]
    if key.startswith("final.top5") and _lookup(record, "final.top5") in (None, _ABSENT):
        return None
    if head in ("conv", "trans") and head not in _heads_of(record):
        value = _lookup(record, key)
        return None if value in (None, _ABSENT) else finite_number(value, key, source)
    return _measured(record, key, source, required=True)


def _heads_of(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The classifier heads of the record's variant, from its config (``ConformerConfig.has_conv_head`` and
    ``has_trans_head``); both when the record holds no config."""
    config = _lookup(record, "variant.config")
    if not isinstance(config, Mapping):
        return ("conv", "trans")
    branches, heads = config.get("branches", "dual"), config.get("heads", "both")
    conv = branches in ("dual", "cnn") and heads in ("both", "conv")
    trans = branches in ("dual", "transformer") and heads in ("both", "trans")
    return (*(("conv",) if conv else ()), *(("trans",) if trans else ()))


def config_identity(cell: Mapping[str, Any]) -> str | None:
    """A short hash of the cell's model config (what was measured), else its recorded config_hash."""
    config = cell.get("config")
    if isinstance(config, Mapping):
        text = json.dumps(config, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    digest = cell.get("config_hash")
    return str(digest) if digest is not None else None


def _cell_metrics(cell: Any, out: MetricSet, where: str) -> None:
    if not isinstance(cell, Mapping) or cell.get("schema", "conformer-bench.cell") != "conformer-bench.cell":
        raise BenchError(f"{where}: not a conformer-bench.cell record; pass {READABLE_HINT}")
    if "schema" in cell:
        _check_version(cell, where)
    label = cell.get("label")
    if not isinstance(label, str) or not label:
        raise BenchError(f"{where}: cell has no label; regenerate the results with `conformer-bench ablate`")
    prefix = f"{label}/"
    if any(name.startswith(prefix) for name in out.metrics) or prefix in out.crashed:
        raise BenchError(f"{where}: label {label!r} appears twice; give each ablation cell a unique label")
    context = config_identity(cell)
    if cell.get("status", "ok") != "ok":
        out.crashed[prefix] = _reason(cell)
        return
    profile = cell.get("profile")
    if isinstance(profile, Mapping):
        profile_metrics(profile, out, prefix, context)
        out.environment = out.environment or _env(profile)
    out.environment = out.environment or _env(cell)
    finetune = cell.get("finetune") or []
    if not isinstance(finetune, list):
        raise BenchError(f"{where}: finetune is not a list of records; regenerate the results")
    finetune_metrics(finetune, out, prefix, context)
    if finetune and isinstance(finetune[0], Mapping):
        out.environment = out.environment or _env(finetune[0])


def ablation_metrics(path: Path) -> MetricSet:
    """Every cell of an ablation results folder (or a cells.jsonl file), prefixed by its label.

    Read through the folder's results store: the newest record of each label. A cell that does not belong
    to the folder's current experiment (another experiment, or settings changed since it ran) counts as
    crashed with the reason "stale: ...", so it is reported and never gated as ok.
    """
    from ..ablate.store import CELLS_FILE, ResultStore

    folder = path if path.is_dir() else path.parent
    if path.is_dir() and not os.path.lexists(path / CELLS_FILE) and not ResultStore(path).exists():
        raise BenchError(f"{str(path)!r} holds no {CELLS_FILE}; pass {READABLE_HINT}")
    if not path.is_dir() and not path.is_file():
        raise BenchError(f"{str(path)!r} does not exist; pass {READABLE_HINT}")
    store = ResultStore(folder)
    if not path.is_dir():
        store.cells_path = path
    # No lock for reading: records are appended whole and compaction renames a complete file into place.
    records = store.latest()
    stale = store.stale(records) if path.is_dir() or path.name == CELLS_FILE else {}
    out = MetricSet(source=str(path), source_kind="ablation")
    for label, cell in records.items():
        if label in stale:
            out.crashed[f"{label}/"] = f"stale: {stale[label]}; rerun the ablation or remove the cell"
            continue
        _cell_metrics(cell, out, f"{path} cell {label!r}")
    return out


def baseline_metrics(record: Mapping[str, Any], source: str) -> MetricSet:
    """Read back a file written by ``conformer-bench baseline write``."""
    _check_schema(record, BASELINE_SCHEMA, source)
    kind = record.get("source_kind")
    metrics = record.get("metrics")
    if kind not in ("profile", "finetune", "ablation") or not isinstance(metrics, Mapping):
        raise BenchError(
            f"{source}: baseline is missing source_kind or metrics; rewrite it with `baseline write`"
        )
    out = MetricSet(source=source, source_kind=str(kind), environment=_env(record))
    for name, entry in metrics.items():
        out.add(_baseline_metric(name, entry, source))
    crashed = record.get("crashed")
    if crashed is not None and not isinstance(crashed, Mapping):
        raise BenchError(f"{source}: crashed is not an object; rewrite the baseline with `baseline write`")
    out.crashed = {str(k): str(v) for k, v in (crashed or {}).items()}
    return out


def _baseline_metric(name: str, entry: Any, source: str) -> Metric:
    """One metric of a baseline file: every field checked, every sample a finite number."""
    where = f"metric {name!r}"
    fix = "rewrite it with `baseline write`"
    if not isinstance(entry, Mapping):
        raise BenchError(f"{source}: {where} is not an object; {fix}")
    raw = entry.get("samples")
    if not isinstance(raw, list) or not raw:
        raise BenchError(f"{source}: {where} has no samples (a non-empty list of numbers); {fix}")
    samples = tuple(finite_number(s, f"{where} sample {i}", source) for i, s in enumerate(raw))
    direction, kind, unit = entry.get("direction"), entry.get("kind"), entry.get("unit")
    if direction not in DIRECTIONS or kind not in KINDS or not isinstance(unit, str):
        raise BenchError(f"{source}: {where} has an unknown kind, direction or unit; {fix}")
    timing, tenv, context = entry.get("timing", False), entry.get("timing_env"), entry.get("context")
    if not isinstance(timing, bool) or not isinstance(tenv, (Mapping, type(None))):
        raise BenchError(f"{source}: {where} has a malformed timing or timing_env; {fix}")
    if not isinstance(context, (str, type(None))):
        raise BenchError(f"{source}: {where} has a context that is not a string; {fix}")
    tenv = tenv or {}
    return Metric(
        name, samples, unit, direction, kind, timing, tuple((k, tenv.get(k)) for k in TIMING_KEYS), context
    )


def input_files(path: str | Path) -> list[Path]:
    """The files :func:`load_metrics` reads for ``path``: the file itself, or a results folder's records."""
    from ..ablate.store import ResultStore

    path = Path(path)
    return ResultStore(path).record_files() if path.is_dir() else [path]


def load_metrics(path: str | Path) -> MetricSet:
    """Read any input ``report`` and ``baseline`` accept; :class:`BenchError` for anything else."""
    from ..files import read_json

    path = Path(path)
    if path.is_dir() or path.suffix == ".jsonl":
        return ablation_metrics(path)
    record = read_json(path)
    source = str(path)
    if not isinstance(record, Mapping):
        raise BenchError(f"{source}: expected a JSON object; pass {READABLE_HINT}")
    schema = record.get("schema")
    if schema == BASELINE_SCHEMA:
        return baseline_metrics(record, source)
    env = _env(record)
    if schema == "conformer-bench.profile":
        out = MetricSet(source=source, source_kind="profile", environment=dict(env))
        profile_metrics(record, out)
    elif schema == "conformer-bench.finetune":
        out = MetricSet(source=source, source_kind="finetune", environment=dict(env))
        finetune_metrics([record], out)
    elif schema == "conformer-bench.cell":
        _check_version(record, source)
        out = MetricSet(source=source, source_kind="ablation")
        _cell_metrics(record, out, source)
    else:
        raise BenchError(f"{source}: schema {schema!r} is not one report reads; pass {READABLE_HINT}")
    return out
