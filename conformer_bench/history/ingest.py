"""Records -> history runs: what each kind of record file adds to the store, at which revision and machine.

Every record the tool writes can be added: a ``profile``, ``speed`` or ``finetune`` record (``-o x.json``),
an ``ablate`` results folder (one run per cell record), a ``report --json`` verdict (the current side's
numbers) and an ``ab --output`` record (each cell's paired ratio, head over base). Metrics are read by the
report's own readers (:mod:`conformer_bench.report.metrics`) so that a name means the same here as in a
regression report.

A run is filed under the commit its record names (``environment.commit``), resolved in the repository;
a record measured with uncommitted changes, or outside a checkout, needs ``--revision``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ab.compare import cell_clock, turn_times
from ..ab.stats import paired_estimate
from ..ablate.store import CELL_SCHEMA, CELLS_FILE, ResultStore
from ..errors import BenchError
from ..files import read_json
from ..readers import typed_record
from ..records import (
    KINDS,
    ABRecord,
    Environment,
    FinetuneRecord,
    PairedCell,
    ProfileRecord,
    Record,
    ReportRecord,
    SchemaRecord,
    SpeedPath,
    SpeedRecord,
    Status,
    plain,
)
from ..report.metrics import (
    Metric,
    MetricSet,
    cell_metrics,
    cell_view,
    config_digest,
    finetune_metrics,
    finite_number,
    positive_number,
    profile_metrics,
)
from ..revisions import Revision, commit_position, resolve_revision
from .store import MACHINE_KEYS, Machine, Result, RevisionInfo, RunEntry, digest

READABLE = (
    "a profile, speed, finetune, ablation-cell or A/B record (JSON), an ablation results folder, or a "
    "report --json verdict"
)


def revision_info(revision: Revision) -> RevisionInfo:
    """A commit as the store keeps it."""
    if revision.sha is None:
        raise BenchError("the working tree has no place in the history; commit it and measure the commit")
    return RevisionInfo(revision.sha, revision.subject, revision.commit_time, commit_position(revision))


@dataclass
class Revisions:
    """Resolves the commits records name, once each, in one repository (``given`` overrides them all)."""

    repo: Path
    given: str | None = None
    _seen: dict[str, RevisionInfo] = field(default_factory=dict)

    def resolve(self, name: str) -> RevisionInfo:
        if name not in self._seen:
            self._seen[name] = revision_info(resolve_revision(self.repo, name))
        return self._seen[name]

    def of(self, commit: str | None, source: str) -> RevisionInfo:
        """The commit a record was measured at (its environment's ``commit``), or ``--revision``."""
        if self.given is not None:
            return self.resolve(self.given)
        if not isinstance(commit, str) or not commit:
            raise BenchError(
                f"{source}: the record names no commit (measured outside a git checkout); pass --revision REV"
            )
        if commit.endswith("+dirty"):
            raise BenchError(
                f"{source}: measured at {commit}, with uncommitted changes; commit them and measure again, "
                "or pass --revision REV to file it under a commit"
            )
        return self.resolve(commit)


# --- metrics -> results -------------------------------------------------------------------------------------


def _settings_context(metric: Metric) -> str:
    """What was measured: the config, and for a timing the settings that change it (batch, threads, ...)."""
    if not metric.timing:
        return metric.context or ""
    settings = {k: v for k, v in metric.timing_env if k not in MACHINE_KEYS}
    return digest({"config": metric.context, "settings": settings}, 12)


def _t_interval(values: tuple[float, ...]) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return None, None
    from scipy.stats import t

    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(t.ppf(0.975, len(values) - 1)) * sd / len(values) ** 0.5
    return mean - half, mean + half


def metric_result(metric: Metric, cell: str | None = None) -> Result:
    """A report metric as one history result: exact values as they are, timings by their median,
    accuracies by their mean over seeds with a 95 % t-interval."""
    label, _, name = metric.name.rpartition("/")
    samples = metric.samples
    low = high = None
    if metric.kind == "accuracy":
        value = statistics.fmean(samples)
        low, high = _t_interval(samples)
    elif metric.kind == "exact":
        value = samples[0]
    else:
        value = statistics.median(samples)
    return Result(
        cell if cell is not None else label, name, float(value), metric.unit, metric.direction, metric.kind,
        low, high, len(samples), _settings_context(metric),
    )  # fmt: skip


def metric_set_results(metrics: MetricSet, cell: str | None = None) -> list[Result]:
    return [metric_result(m, cell) for m in metrics.metrics.values()]


# --- one reader per record kind -------------------------------------------------------------------------------


def _json(record: Record | Mapping[str, Any]) -> dict[str, Any]:
    """A record as its file holds it (what the store keeps and what a run's key is computed from)."""
    return record.to_dict() if isinstance(record, Record) else dict(record)


def _label(record: ProfileRecord | FinetuneRecord | SpeedRecord) -> str:
    variant = record.variant
    return str(variant.label or variant.name or "") if variant is not None else ""


def _context(record: ProfileRecord | FinetuneRecord | SpeedRecord) -> str | None:
    return config_digest(record.variant.config if record.variant is not None else None)


def _environment(record: ProfileRecord | FinetuneRecord | SpeedRecord, source: str) -> Environment:
    if record.environment is None:
        raise BenchError(
            f"{source}: the record has no environment object; regenerate it with conformer-bench"
        )
    return record.environment


def _single(
    kind: str, record: SchemaRecord, source: str, revs: Revisions, results: list[Result],
    environment: Environment, experiment: str,
) -> RunEntry:  # fmt: skip
    data = record.to_dict()
    return RunEntry(
        kind=kind,
        key=digest({"kind": kind, "record": data}, 32),
        revision=revs.of(environment.commit, source),
        machine=Machine.of(environment),
        experiment=experiment,
        source=source,
        parts={"": data},
        results={"": results},
    )


def _profile(record: ProfileRecord, source: str, revs: Revisions) -> list[RunEntry]:
    out = MetricSet(source=source, source_kind="profile")
    env = _environment(record, source)
    profile_metrics(record, out, context=_context(record))
    results = metric_set_results(out, _label(record))
    return [_single("profile", record, source, revs, results, env, _label(record))]


def _finetune(record: FinetuneRecord, source: str, revs: Revisions) -> list[RunEntry]:
    out = MetricSet(source=source, source_kind="finetune")
    env = _environment(record, source)
    finetune_metrics([record], out, context=_context(record))
    results = metric_set_results(out, _label(record))
    return [_single("finetune", record, source, revs, results, env, _label(record))]


def cell_entry(record: Record | Mapping[str, Any], source: str, revs: Revisions) -> RunEntry:
    """One ablation cell record (as the results store gives it): its profile and fine-tune metrics under the
    cell's label."""
    cell = cell_view(record, source)
    out = MetricSet(source=source, source_kind="ablation")
    cell_metrics(cell, out)
    environment = cell.own_environment or cell.environment
    if environment is None:
        raise BenchError(
            f"{source}: cell {cell.label!r} has no environment; regenerate it with `conformer-bench ablate`"
        )
    data = _json(record)
    return RunEntry(
        kind="ablate",
        key=digest({"kind": "ablate", "record": data}, 32),
        revision=revs.of(environment.commit, f"{source} cell {cell.label!r}"),
        machine=Machine.of(environment),
        experiment=cell.experiment,
        source=source,
        parts={"": data},
        results={"": metric_set_results(out)},
    )


def _ablation_folder(path: Path, revs: Revisions) -> list[RunEntry]:
    folder = path if path.is_dir() else path.parent
    store = ResultStore(folder)
    if not path.is_dir():
        store.cells_path = path
    elif not (path / CELLS_FILE).is_file():
        raise BenchError(f"{str(path)!r} holds no {CELLS_FILE}; pass {READABLE}")
    return [cell_entry(record, f"{path}", revs) for record in store.latest_dicts().values()]


def _optional_number(value: Any, where: str, source: str) -> float | None:
    """An interval end or other number a record may leave null: ``None``, else a finite number."""
    return None if value is None else finite_number(value, where, source)


def _interval(raw: Any, where: str, source: str) -> tuple[float | None, float | None]:
    """``[low, high]`` of a record (either end may be null); absent is ``(None, None)``."""
    if raw is None:
        return None, None
    if not isinstance(raw, list) or len(raw) != 2:
        raise BenchError(
            f"{source}: {where} is not a [low, high] pair; regenerate the record with conformer-bench"
        )
    return _optional_number(raw[0], where, source), _optional_number(raw[1], where, source)


def _count(value: Any, where: str, source: str) -> int:
    """A sample count: a whole number >= 1 (absent or null counts as one)."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BenchError(
            f"{source}: {where} is {value!r}, not a count of samples; regenerate the record with conformer-bench"
        )
    return value


def _speedup(path: SpeedPath) -> tuple[Any, Any, Any]:
    """(ratio, low, high) of a path's speed-up over plain, as read (checked by the caller)."""
    speedup = path.speedup_vs_plain
    if speedup is None:
        return None, None, None
    return speedup.ratio, speedup.low, speedup.high


def _speed(record: SpeedRecord, source: str, revs: Revisions) -> list[RunEntry]:
    """Each path's images per second (median; interquartile range as its interval) and speed-up over plain
    (with its bootstrap interval), per precision."""
    if not isinstance(record.paths, dict):
        raise BenchError(
            f"{source}: the speed record has no paths; regenerate it with `conformer-bench speed`"
        )
    env = _environment(record, source)
    settings = digest({"config": _context(record), "settings": plain(record.settings)}, 12)
    label = _label(record)
    results = []
    for name, path in record.paths.items():
        if path.status != Status.OK or path.img_per_s is None:
            continue
        where = f"paths.{name}"
        img_per_s = positive_number(path.img_per_s, f"{where}.img_per_s", source)
        low, high = _interval(path.img_per_s_iqr, f"{where}.img_per_s_iqr", source)
        n = len(path.samples_s) if isinstance(path.samples_s, list) and path.samples_s else 1
        results.append(
            Result(label, f"speed.{name}.img_per_s", img_per_s, "img/s", "higher",
                   "noisy", low, high, n, settings)
        )  # fmt: skip
        raw_ratio, raw_low, raw_high = _speedup(path)
        if raw_ratio is not None:
            sp = f"{where}.speedup_vs_plain"
            ratio = positive_number(raw_ratio, f"{sp}.ratio", source)
            low = _optional_number(raw_low, f"{sp}.low", source)
            high = _optional_number(raw_high, f"{sp}.high", source)
            results.append(
                Result(label, f"speed.{name}.speedup_vs_plain", ratio, "x plain", "higher", "noisy", low, high,
                       n, settings)
            )  # fmt: skip
    return [_single("speed", record, source, revs, results, env, label)]


def _report(record: ReportRecord, source: str, revs: Revisions) -> list[RunEntry]:
    """The current side of a regression report: each row's current value, as the report measured it."""
    current = record.current
    if current is None or not isinstance(record.rows, list):
        raise BenchError(f"{source}: the report has no current side or rows; write it with `report --json`")
    if not isinstance(current.environment, Mapping):
        raise BenchError(
            f"{source}: the record has no environment object; regenerate it with conformer-bench"
        )
    results = []
    for i, row in enumerate(record.rows):
        if row.current is None:
            continue
        cell, _, name = str(row.metric).rpartition("/")
        value = finite_number(row.current, f"rows[{i}].current", source)
        n = _count(row.n_current, f"rows[{i}].n_current", source)
        results.append(
            Result(cell, name, value, str(row.unit or ""), str(row.direction), str(row.kind), n=n)
        )  # fmt: skip
    env = Environment.from_dict(current.environment)
    return [_single("report", record, source, revs, results, env, str(current.source or ""))]


# --- paired runs: an A/B record, a backfill's revision against its anchor -------------------------------------

CELL_PART = "cell:"  # + "<label>/<phase>": a paired cell's part of a run


def cell_part(key: str) -> str:
    return CELL_PART + key


def paired_results(cell: PairedCell, clock: str, seed: int) -> list[Result]:
    """A paired cell's numbers: the timed revision's throughput over its anchor's (the rounds' paired
    estimate, with its interval), and each side's images per second in those rounds (median turn)."""
    if cell.status != Status.OK or not cell.rounds:
        return []
    anchor_s, timed_s, epochs = turn_times(cell, clock)
    estimate = paired_estimate(anchor_s, timed_s, epochs, seed=seed)
    low, high = estimate.throughput_interval
    images = cell.batch_size * cell.steps_per_turn
    context = digest({"config": cell.config_hash, "clock": cell_clock(clock, cell)}, 12)
    prefix = f"paired.{cell.phase}"
    return [
        Result(cell.label, f"{prefix}.img_per_s", estimate.throughput_ratio, "x anchor", "higher", "paired",
               low, high, estimate.n, context),
        Result(cell.label, f"{prefix}.timed_img_per_s", images / statistics.median(timed_s), "img/s", "higher",
               "noisy", n=estimate.n, context=context),
        Result(cell.label, f"{prefix}.anchor_img_per_s", images / statistics.median(anchor_s), "img/s",
               "higher", "noisy", n=estimate.n, context=context),
    ]  # fmt: skip


def paired_header(record: ABRecord) -> dict[str, Any]:
    """An A/B record without its cells: what every cell of the run shares."""
    header = record.to_dict()
    header["cells"] = []
    return header


def paired_entry(
    kind: str, key: str, record: ABRecord, cells: list[PairedCell], revs: Revisions, source: str
) -> RunEntry:
    """The run of ``record``'s head timed against its base (the anchor), with ``cells`` as its parts."""
    head, base = record.head.sha, record.base.sha
    if not head or not base:
        raise BenchError(f"{source}: a side of this A/B is the working tree; the history keeps commits only")
    clock = record.settings.clock
    seed = record.settings.seed
    entry = RunEntry(
        kind=kind,
        key=key,
        revision=revs.resolve(str(head)),
        machine=Machine.of(record.typed_environment()),
        experiment=record.experiment.name or "",
        source=source,
        parts={"": paired_header(record)},
        anchor=revs.resolve(str(base)),
    )
    for cell in cells:
        part = cell_part(f"{cell.label}/{cell.phase}")
        entry.parts[part] = cell.to_dict()
        entry.results[part] = paired_results(cell, clock, seed)
    return entry


def _ab(record: ABRecord, source: str, revs: Revisions) -> list[RunEntry]:
    key = digest({"kind": "ab", "record": record.to_dict()}, 32)
    return [paired_entry("ab", key, record, record.cells, revs, source)]


READERS: dict[type[SchemaRecord], Callable[[Any, str, Revisions], list[RunEntry]]] = {
    ProfileRecord: _profile,
    FinetuneRecord: _finetune,
    SpeedRecord: _speed,
    ReportRecord: _report,
    ABRecord: _ab,
}


def entries_from_path(path: Path, revs: Revisions) -> list[RunEntry]:
    """The runs a file or folder holds."""
    if path.is_dir() or path.suffix == ".jsonl":
        return _ablation_folder(path, revs)
    value = read_json(path)
    source = str(path)
    schema = value.get("schema") if isinstance(value, Mapping) else None
    if schema == CELL_SCHEMA and schema not in KINDS:  # cells stay JSON until their kind is registered
        return [cell_entry(value, source, revs)]
    kind = KINDS.get(schema) if isinstance(schema, str) else None
    if kind is not None and kind.SCHEMA == CELL_SCHEMA:
        return [cell_entry(typed_record(value, source), source, revs)]
    reader = READERS.get(kind) if kind is not None else None
    if reader is None:
        raise BenchError(f"{path}: schema {schema!r} is not a run the history keeps; pass {READABLE}")
    return reader(typed_record(value, source), source, revs)
