"""Results grouped into series: one per machine, experiment, cell, metric and what was measured, in history
order, one point per revision.

A series never crosses machines (a change of machine is not a step of the code) nor settings (the
``context`` hashes the config and the settings that change the number). A paired result is relative to
the revision it was timed against, so paired series are also kept apart by that anchor. Where a revision
was measured more than once on the machine, its point is the median of the runs.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from .store import HistoryStore, Machine, Result, RevisionInfo, StoredResult


@dataclass(frozen=True)
class SeriesKey:
    machine: str  # the machine's fingerprint
    experiment: str
    cell: str
    metric: str
    context: str
    anchor: str | None  # paired series: the revision every value is relative to

    @property
    def name(self) -> str:
        return f"{self.cell}/{self.metric}" if self.cell else self.metric


@dataclass(frozen=True)
class Point:
    revision: RevisionInfo
    value: float
    low: float | None  # the point's own interval, where its run gave one
    high: float | None
    runs: int  # runs behind the value (the median of them when more than one)


@dataclass
class Series:
    key: SeriesKey
    machine: Machine
    unit: str
    direction: str  # higher | lower | equal
    kind: str  # exact | noisy | accuracy | paired
    anchor: RevisionInfo | None = None
    points: list[Point] = field(default_factory=list)


def _point(revision: RevisionInfo, results: list[Result]) -> Point:
    if len(results) == 1:
        only = results[0]
        return Point(revision, only.value, only.low, only.high, 1)
    return Point(revision, statistics.median(r.value for r in results), None, None, len(results))


def load_series(store: HistoryStore) -> list[Series]:
    """Every series in the store, each point a revision in history order."""
    machines = store.machines()
    revisions = store.revisions()
    grouped: dict[SeriesKey, dict[str, list[StoredResult]]] = defaultdict(lambda: defaultdict(list))
    for row in store.result_rows():
        r = row.result
        anchor = row.anchor if r.kind == "paired" else None
        key = SeriesKey(
            machines[row.machine].fingerprint, row.experiment, r.cell, r.metric, r.context, anchor
        )
        grouped[key][row.revision].append(row)
    out = []
    for key, by_revision in grouped.items():
        first = next(iter(by_revision.values()))[0]
        series = Series(
            key,
            machines[first.machine],
            first.result.unit,
            first.result.direction,
            first.result.kind,
            revisions.get(key.anchor) if key.anchor else None,
        )
        ordered = sorted(by_revision, key=lambda sha: revisions[sha].position)
        series.points = [_point(revisions[sha], [row.result for row in by_revision[sha]]) for sha in ordered]
        out.append(series)
    out.sort(key=lambda s: (s.key.machine, s.key.experiment, s.key.metric, s.key.cell, s.key.anchor or ""))
    return out
