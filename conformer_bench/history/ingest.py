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
from typing import TYPE_CHECKING, Any

from ..errors import BenchError
from ..report.metrics import (
    Metric,
    MetricSet,
    config_identity,
    finetune_metrics,
    finite_number,
    positive_number,
    profile_metrics,
)
from ..revisions import Revision, commit_position, resolve_revision
from .store import MACHINE_KEYS, Machine, Result, RevisionInfo, RunEntry, digest

if TYPE_CHECKING:
    from ..records import ABRecord, PairedCell

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

    def of(self, environment: Mapping[str, Any], source: str) -> RevisionInfo:
        """The commit a record was measured at (its ``environment.commit``), or ``--revision``."""
        if self.given is not None:
            return self.resolve(self.given)
        commit = environment.get("commit")
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


def _label(record: Mapping[str, Any]) -> str:
    variant = record.get("variant")
    if isinstance(variant, Mapping):
        return str(variant.get("label") or variant.get("name") or "")
    return ""


def _environment(record: Mapping[str, Any], source: str) -> dict[str, Any]:
    env = record.get("environment")
    if not isinstance(env, Mapping):
        raise BenchError(
            f"{source}: the record has no environment object; regenerate it with conformer-bench"
        )
    return dict(env)


def _single(
    kind: str, record: dict[str, Any], source: str, revs: Revisions, results: list[Result],
    environment: Mapping[str, Any] | None = None, experiment: str | None = None,
) -> RunEntry:  # fmt: skip
    env = _environment(record, source) if environment is None else environment
    return RunEntry(
        kind=kind,
        key=digest({"kind": kind, "record": record}, 32),
        revision=revs.of(env, source),
        machine=Machine.of(env),
        experiment=_label(record) if experiment is None else experiment,
        source=source,
        parts={"": record},
        results={"": results},
    )


def _profile(record: dict[str, Any], source: str, revs: Revisions) -> list[RunEntry]:
    out = MetricSet(source=source, source_kind="profile")
    profile_metrics(record, out, context=config_identity(record.get("variant") or {}))
    return [_single("profile", record, source, revs, metric_set_results(out, _label(record)))]


def _finetune(record: dict[str, Any], source: str, revs: Revisions) -> list[RunEntry]:
    out = MetricSet(source=source, source_kind="finetune")
    finetune_metrics([record], out, context=config_identity(record.get("variant") or {}))
    return [_single("finetune", record, source, revs, metric_set_results(out, _label(record)))]


def cell_entry(record: dict[str, Any], source: str, revs: Revisions) -> RunEntry:
    """One ablation cell record: its profile and fine-tune metrics under the cell's label."""
    label = str(record.get("label") or "")
    if not label:
        raise BenchError(
            f"{source}: the cell record has no label; regenerate it with `conformer-bench ablate`"
        )
    out = MetricSet(source=source, source_kind="ablation")
    context = config_identity(record)
    if record.get("status", "ok") == "ok":
        profile = record.get("profile")
        if isinstance(profile, dict):
            profile_metrics(profile, out, f"{label}/", context)
        finetune = record.get("finetune") or []
        if not isinstance(finetune, list):
            raise BenchError(f"{source}: cell {label!r}: finetune is not a list of records; regenerate it")
        finetune_metrics(finetune, out, f"{label}/", context)
    env = record.get("environment") or (record.get("profile") or {}).get("environment")
    if not isinstance(env, Mapping):
        raise BenchError(
            f"{source}: cell {label!r} has no environment; regenerate it with `conformer-bench ablate`"
        )
    return RunEntry(
        kind="ablate",
        key=digest({"kind": "ablate", "record": record}, 32),
        revision=revs.of(env, f"{source} cell {label!r}"),
        machine=Machine.of(env),
        experiment=str(record.get("experiment") or ""),
        source=source,
        parts={"": record},
        results={"": metric_set_results(out)},
    )


def _ablation_folder(path: Path, revs: Revisions) -> list[RunEntry]:
    from ..ablate.store import CELLS_FILE, ResultStore

    folder = path if path.is_dir() else path.parent
    store = ResultStore(folder)
    if not path.is_dir():
        store.cells_path = path
    elif not (path / CELLS_FILE).is_file():
        raise BenchError(f"{str(path)!r} holds no {CELLS_FILE}; pass {READABLE}")
    return [cell_entry(record, f"{path}", revs) for record in store.latest().values()]


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


def _speed(record: dict[str, Any], source: str, revs: Revisions) -> list[RunEntry]:
    """Each path's images per second (median; interquartile range as its interval) and speed-up over plain
    (with its bootstrap interval), per precision."""
    paths = record.get("paths")
    if not isinstance(paths, Mapping):
        raise BenchError(
            f"{source}: the speed record has no paths; regenerate it with `conformer-bench speed`"
        )
    context = config_identity(record.get("variant") or {})
    settings = digest({"config": context, "settings": record.get("settings")}, 12)
    label = _label(record)
    results = []
    for name, entry in paths.items():
        if not isinstance(entry, Mapping) or entry.get("status") != "ok" or entry.get("img_per_s") is None:
            continue
        where = f"paths.{name}"
        img_per_s = positive_number(entry["img_per_s"], f"{where}.img_per_s", source)
        low, high = _interval(entry.get("img_per_s_iqr"), f"{where}.img_per_s_iqr", source)
        samples = entry.get("samples_s") or []
        n = len(samples) if isinstance(samples, list) and samples else 1
        results.append(
            Result(label, f"speed.{name}.img_per_s", img_per_s, "img/s", "higher", "noisy", low, high, n,
                   settings)
        )  # fmt: skip
        speedup = entry.get("speedup_vs_plain")
        if isinstance(speedup, Mapping) and speedup.get("ratio") is not None:
            sp = f"{where}.speedup_vs_plain"
            ratio = positive_number(speedup["ratio"], f"{sp}.ratio", source)
            low, high = (_optional_number(speedup.get(end), f"{sp}.{end}", source) for end in ("low", "high"))
            results.append(
                Result(label, f"speed.{name}.speedup_vs_plain", ratio, "x plain", "higher", "noisy", low, high,
                       n, settings)
            )  # fmt: skip
    return [_single("speed", record, source, revs, results)]


def _report(record: dict[str, Any], source: str, revs: Revisions) -> list[RunEntry]:
    """The current side of a regression report: each row's current value, as the report measured it."""
    current = record.get("current")
    rows = record.get("rows")
    if not isinstance(current, Mapping) or not isinstance(rows, list):
        raise BenchError(f"{source}: the report has no current side or rows; write it with `report --json`")
    env = _environment(current, source)
    results = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or row.get("current") is None:
            continue
        cell, _, name = str(row.get("metric")).rpartition("/")
        value = finite_number(row["current"], f"rows[{i}].current", source)
        n = _count(row.get("n_current"), f"rows[{i}].n_current", source)
        results.append(
            Result(cell, name, value, str(row.get("unit") or ""), str(row.get("direction")),
                   str(row.get("kind")), n=n)
        )  # fmt: skip
    return [_single("report", record, source, revs, results, env, str(current.get("source") or ""))]


# --- paired runs: an A/B record, a backfill's revision against its anchor -------------------------------------

CELL_PART = "cell:"  # + "<label>/<phase>": a paired cell's part of a run


def cell_part(key: str) -> str:
    return CELL_PART + key


def paired_results(cell: PairedCell, clock: str, seed: int) -> list[Result]:
    """A paired cell's numbers: the timed revision's throughput over its anchor's (the rounds' paired
    estimate, with its interval), and each side's images per second in those rounds (median turn)."""
    from ..ab.compare import cell_clock, turn_times
    from ..ab.stats import paired_estimate
    from ..records import Status

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
    head, base = record.head.get("sha"), record.base.get("sha")
    if not head or not base:
        raise BenchError(f"{source}: a side of this A/B is the working tree; the history keeps commits only")
    clock = str(record.settings.get("clock", "auto"))
    seed = int(record.settings.get("seed", 0))
    entry = RunEntry(
        kind=kind,
        key=key,
        revision=revs.resolve(str(head)),
        machine=Machine.of(record.environment),
        experiment=str(record.experiment.get("name") or ""),
        source=source,
        parts={"": paired_header(record)},
        anchor=revs.resolve(str(base)),
    )
    for cell in cells:
        part = cell_part(f"{cell.label}/{cell.phase}")
        entry.parts[part] = cell.to_dict()
        entry.results[part] = paired_results(cell, clock, seed)
    return entry


def _ab(data: dict[str, Any], source: str, revs: Revisions) -> list[RunEntry]:
    from ..records import ABRecord

    record = ABRecord.from_dict(data)
    key = digest({"kind": "ab", "record": data}, 32)
    return [paired_entry("ab", key, record, record.cells, revs, source)]


READERS: dict[str, Callable[[dict[str, Any], str, Revisions], list[RunEntry]]] = {
    "conformer-bench.profile": _profile,
    "conformer-bench.finetune": _finetune,
    "conformer-bench.speed": _speed,
    "conformer-bench.report": _report,
    "conformer-bench.ab": _ab,
    "conformer-bench.cell": lambda record, source, revs: [cell_entry(record, source, revs)],
}


def entries_from_path(path: Path, revs: Revisions) -> list[RunEntry]:
    """The runs a file or folder holds."""
    from ..files import read_json

    if path.is_dir() or path.suffix == ".jsonl":
        return _ablation_folder(path, revs)
    record = read_json(path)
    schema = record.get("schema") if isinstance(record, dict) else None
    reader = READERS.get(str(schema))
    if reader is None:
        raise BenchError(f"{path}: schema {schema!r} is not a run the history keeps; pass {READABLE}")
    return reader(record, str(path), revs)
