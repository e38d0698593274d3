"""Baseline files: the metrics of one run (raw samples, unit, direction, kind) kept on purpose for reports."""

from __future__ import annotations

import datetime as _dt
import fnmatch
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import BenchError
from ..files import check_outputs_apart, check_writable, read_json, write_json
from .metrics import (
    BASELINE_SCHEMA,
    BASELINE_SCHEMA_VERSION,
    MetricSet,
    baseline_metrics,
    input_files,
    load_metrics,
)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _history_entry(action: str, metrics: MetricSet, names: list[str]) -> dict[str, Any]:
    return {
        "action": action,
        "at": _now(),
        "from": metrics.source,
        "commit": metrics.environment.get("commit"),
        "metrics": len(names),
        "tool_version": __version__,
    }


def measured_revision(environment: dict[str, Any]) -> str | None:
    """The commit that results were measured at, from their environment; None when unknown or when the
    tree had uncommitted changes (``...+dirty``: no revision holds that code)."""
    commit = environment.get("commit")
    if not isinstance(commit, str) or not commit or commit.endswith("+dirty"):
        return None
    return commit


def baseline_revision(document: dict[str, Any]) -> str | None:
    """The revision a baseline's results were measured at (older baselines: their environment's commit)."""
    revision = document.get("revision")
    if isinstance(revision, str) and revision:
        return revision
    environment = document.get("environment")
    return measured_revision(environment) if isinstance(environment, dict) else None


def baseline_document(metrics: MetricSet, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The versioned JSON written by ``baseline write``: environment plus every metric's samples."""
    if not metrics.metrics:
        raise BenchError(f"{metrics.source} holds no measured metric; a baseline needs successful results")
    return {
        "schema": BASELINE_SCHEMA,
        "schema_version": BASELINE_SCHEMA_VERSION,
        "created": _now(),
        "tool_version": __version__,
        "source": metrics.source,
        "source_kind": metrics.source_kind,
        # The commit the results were measured at: `conformer-bench ab` times it against a newer revision.
        "revision": measured_revision(metrics.environment),
        "environment": metrics.environment,
        "metrics": {name: metrics.metrics[name].to_dict() for name in sorted(metrics.metrics)},
        "crashed": dict(sorted(metrics.crashed.items())),
        "history": history or [_history_entry("write", metrics, sorted(metrics.metrics))],
    }


def read_baseline(path: str | Path) -> dict[str, Any]:
    """A baseline document, validated (BenchError when it is not one)."""
    document = read_json(path)
    baseline_metrics(document, str(path))  # validates schema, version and every metric
    return dict(document)


def _check_clean(metrics: MetricSet, allow_dirty: bool) -> None:
    """A baseline is a reference: refuse results measured on uncommitted code unless asked."""
    commit = metrics.environment.get("commit")
    if not allow_dirty and isinstance(commit, str) and commit.endswith("+dirty"):
        raise BenchError(
            f"{metrics.source} was measured on uncommitted changes (commit {commit}); commit them and measure "
            "again, or pass --allow-dirty"
        )


def write_baseline(
    source: str | Path, output: str | Path, force: bool = False, allow_dirty: bool = False
) -> dict[str, Any]:
    """Write a new baseline from ``source`` results; refuses to replace one unless ``force``, and results
    of a dirty tree unless ``allow_dirty``."""
    check_outputs_apart({"--output": output}, {"--from": input_files(source)})
    output = check_writable(output)
    if output.exists() and not force:
        raise BenchError(f"{str(output)!r} already exists; use `baseline update` (or --force to replace it)")
    metrics = load_metrics(source)
    _check_clean(metrics, allow_dirty)
    document = baseline_document(metrics)
    write_json(output, document)
    return document


def update_baseline(
    source: str | Path, baseline: str | Path, only: list[str] | None = None, allow_dirty: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """Replace the baseline's metrics with those of ``source`` (all, or the names matching ``only`` globs).

    Returns the new document and the names that changed. Metrics that ``source`` lacks are dropped on a
    full update and kept on a partial one.
    """
    baseline = Path(baseline)
    old = read_baseline(baseline)
    fresh = load_metrics(source)
    _check_clean(fresh, allow_dirty)
    if fresh.source_kind != old["source_kind"]:
        raise BenchError(
            f"{source} holds {fresh.source_kind} metrics but the baseline holds {old['source_kind']} metrics; "
            "use `baseline write` for a new baseline"
        )
    new_doc = baseline_document(fresh)
    if only:
        picked = {n: m for n, m in new_doc["metrics"].items() if any(fnmatch.fnmatchcase(n, g) for g in only)}
        if not picked:
            raise BenchError(f"no metric of {source} matches --only {' '.join(only)}; check the metric names")
        metrics = {**old["metrics"], **picked}
        new_doc["metrics"] = dict(sorted(metrics.items()))
        new_doc["environment"] = old.get("environment", {})
        new_doc["revision"] = baseline_revision(old)  # most metrics still come from the old results
        new_doc["crashed"] = old.get("crashed", {})
        new_doc["created"] = old.get("created")
    changed = sorted(
        n for n, m in new_doc["metrics"].items() if old["metrics"].get(n, {}).get("samples") != m["samples"]
    ) + sorted(n for n in old["metrics"] if n not in new_doc["metrics"])
    new_doc["updated"] = _now()
    history = old.get("history")
    new_doc["history"] = [
        *(history if isinstance(history, list) else []),
        _history_entry("update", fresh, changed),
    ]
    write_json(baseline, new_doc)
    return new_doc, changed
