"""Baseline files: the metrics of one run (raw samples, unit, direction, kind) kept on purpose for reports."""

from __future__ import annotations

import datetime as _dt
import fnmatch
from pathlib import Path

from .. import __version__
from ..errors import BenchError
from ..files import check_outputs_apart, check_writable, write_json
from ..records.baseline import BASELINE_SCHEMA, BaselineEvent, BaselineRecord, measured_revision
from .metrics import MetricSet, input_files, load_metrics, read_input

__all__ = [
    "baseline_record",
    "baseline_revision",
    "measured_revision",
    "read_baseline",
    "update_baseline",
    "write_baseline",
]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _event(action: str, metrics: MetricSet, names: list[str]) -> BaselineEvent:
    commit = metrics.environment.commit if metrics.environment is not None else None
    return BaselineEvent(action, _now(), metrics.source, commit, len(names), __version__)


def baseline_revision(record: BaselineRecord) -> str | None:
    """The revision a baseline's results were measured at (older baselines: their environment's commit)."""
    return record.measured_at


def baseline_record(metrics: MetricSet) -> BaselineRecord:
    """What ``baseline write`` writes: environment plus every metric's samples."""
    if not metrics.metrics:
        raise BenchError(f"{metrics.source} holds no measured metric; a baseline needs successful results")
    names = sorted(metrics.metrics)
    return BaselineRecord(
        created=_now(),
        tool_version=__version__,
        source=metrics.source,
        source_kind=metrics.source_kind,
        # The commit the results were measured at: `conformer-bench ab` times it against a newer revision.
        revision=measured_revision(metrics.environment),
        environment=metrics.environment_json(),
        metrics={name: metrics.metrics[name].to_record() for name in names},
        crashed=dict(sorted(metrics.crashed.items())),
        history=[_event("write", metrics, names)],
    )


def read_baseline(path: str | Path) -> BaselineRecord:
    """A baseline record, checked (BenchError when it is not one)."""
    record = read_input(path, BASELINE_SCHEMA)
    assert isinstance(record, BaselineRecord)
    return record


def _check_clean(metrics: MetricSet, allow_dirty: bool) -> None:
    """A baseline is a reference: refuse results measured on uncommitted code unless asked."""
    commit = metrics.environment.commit if metrics.environment is not None else None
    if not allow_dirty and isinstance(commit, str) and commit.endswith("+dirty"):
        raise BenchError(
            f"{metrics.source} was measured on uncommitted changes (commit {commit}); commit them and measure "
            "again, or pass --allow-dirty"
        )


def write_baseline(
    source: str | Path, output: str | Path, force: bool = False, allow_dirty: bool = False
) -> BaselineRecord:
    """Write a new baseline from ``source`` results; refuses to replace one unless ``force``, and results
    of a dirty tree unless ``allow_dirty``."""
    check_outputs_apart({"--output": output}, {"--from": input_files(source)})
    output = check_writable(output)
    if output.exists() and not force:
        raise BenchError(f"{str(output)!r} already exists; use `baseline update` (or --force to replace it)")
    metrics = load_metrics(source)
    _check_clean(metrics, allow_dirty)
    record = baseline_record(metrics)
    write_json(output, record.to_dict())
    return record


def update_baseline(
    source: str | Path, baseline: str | Path, only: list[str] | None = None, allow_dirty: bool = False
) -> tuple[BaselineRecord, list[str]]:
    """Replace the baseline's metrics with those of ``source`` (all, or the names matching ``only`` globs).

    Returns the new record and the names that changed. Metrics that ``source`` lacks are dropped on a
    full update and kept on a partial one.
    """
    baseline = Path(baseline)
    old = read_baseline(baseline)
    fresh = load_metrics(source)
    _check_clean(fresh, allow_dirty)
    if fresh.source_kind != old.source_kind:
        raise BenchError(
            f"{source} holds {fresh.source_kind} metrics but the baseline holds {old.source_kind} metrics; "
            "use `baseline write` for a new baseline"
        )
    new = baseline_record(fresh)
    if only:
        picked = {n: m for n, m in new.metrics.items() if any(fnmatch.fnmatchcase(n, g) for g in only)}
        if not picked:
            raise BenchError(f"no metric of {source} matches --only {' '.join(only)}; check the metric names")
        new.metrics = dict(sorted({**old.metrics, **picked}.items()))
        new.environment = old.environment or {}
        new.revision = baseline_revision(old)  # most metrics still come from the old results
        new.crashed = old.crashed or {}
        new.created = old.created
    changed = sorted(
        n for n, m in new.metrics.items() if n not in old.metrics or old.metrics[n].samples != m.samples
    ) + sorted(n for n in old.metrics if n not in new.metrics)
    new.updated = _now()
    new.history = [*(old.history or []), _event("update", fresh, changed)]
    write_json(baseline, new.to_dict())
    return new, changed
