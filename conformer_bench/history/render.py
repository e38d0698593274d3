"""The change points as text (Markdown) and JSON; rounding happens here only."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..tables import Column, Table
from .series import Series
from .store import RevisionInfo

if TYPE_CHECKING:
    from .changes import ChangePoint, SeriesSteps  # numpy

CHANGES_SCHEMA = "conformer-bench.history-changes"
CHANGES_SCHEMA_VERSION = 1
DEFAULT_GATE = ("paired.*.img_per_s",)


@dataclass(frozen=True)
class Gate:
    """Which metrics gate: exit 1 when the newest step of one of their series is a regression."""

    patterns: tuple[str, ...] = DEFAULT_GATE

    def gates(self, series: Series) -> bool:
        return any(fnmatch.fnmatchcase(series.key.metric, p) for p in self.patterns)

    def blocking(self, found: list[SeriesSteps]) -> list[SeriesSteps]:
        return [s for s in found if self.gates(s.series) and s.newest is not None and s.newest.regression]


def size_text(cp: ChangePoint) -> str:
    step = cp.step
    change = f"{(step.ratio - 1) * 100:+.1f} %"
    if step.p_value == 0.0:
        return f"{change} (exact)"
    return f"{change} [{(step.low - 1) * 100:+.1f}, {(step.high - 1) * 100:+.1f}]"


def p_text(p: float) -> str:
    return "exact" if p == 0.0 else f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def _verdict(cp: ChangePoint) -> str:
    if cp.direction == "equal":
        return "changed"
    return "regression" if cp.regression else "improvement"


@dataclass(frozen=True)
class StepRow:
    """One change point of one series, and whether it blocks (the newest step of a gated regression)."""

    steps: SeriesSteps
    point: ChangePoint
    blocks: bool


STEP_COLUMNS: tuple[Column[StepRow], ...] = (
    Column("machine", lambda r: r.steps.series.machine.fingerprint),
    Column("experiment", lambda r: r.steps.series.key.experiment),
    Column("series", lambda r: f"`{r.steps.series.key.name}`"),
    Column("step (before..at)", lambda r: f"{r.point.before.short}..{r.point.revision.short}"),
    Column("change [95 % CI]", lambda r: size_text(r.point)),
    Column("p", lambda r: p_text(r.point.step.p_value)),
    Column("points", lambda r: f"{r.point.step.before}+{r.point.step.after}"),
    Column("kind", lambda r: _verdict(r.point) + (" **blocks**" if r.blocks else "")),
)


def step_table(found: list[SeriesSteps], gate: Gate) -> Table[StepRow]:
    """Every change point of ``found`` as a table (in the series' order, each series' steps in time order)."""
    blocking = gate.blocking(found)
    rows = [
        StepRow(s, cp, s in blocking and cp is s.newest)
        for s in found
        if s.change_points
        for cp in s.change_points
    ]
    return Table(STEP_COLUMNS, rows)


def render_markdown(found: list[SeriesSteps], gate: Gate, total: int) -> str:
    """A table of every change point, newest steps of gated metrics first when they block."""
    blocking = gate.blocking(found)
    with_steps = [s for s in found if s.change_points]
    head = "FAIL" if blocking else "PASS"
    lines = [
        f"**conformer-bench history: {head}** — {sum(len(s.change_points) for s in found)} change point(s) "
        f"in {len(with_steps)} of {total} series; {len(blocking)} gated series end in a regression",
        "",
    ]
    if with_steps:
        lines += [*step_table(found, gate).to_markdown().splitlines(), ""]
    machines = {s.series.machine.fingerprint: s.series.machine.label for s in found}
    lines += [f"Machine {fp}: {label}" for fp, label in sorted(machines.items())]
    lines.append(f"Gated metrics: {', '.join(gate.patterns) or 'none'}")
    return "\n".join(lines) + "\n"


def _revision(rev: RevisionInfo) -> dict[str, Any]:
    return {"sha": rev.sha, "subject": rev.subject, "commit_time": rev.commit_time}


def render_json(found: list[SeriesSteps], gate: Gate) -> dict[str, Any]:
    blocking = gate.blocking(found)
    return {
        "schema": CHANGES_SCHEMA,
        "schema_version": CHANGES_SCHEMA_VERSION,
        "verdict": "FAIL" if blocking else "PASS",
        "gate": list(gate.patterns),
        "blocking": [s.series.key.name for s in blocking],
        # each identity with its keys sorted, as the database stores it
        "machines": {
            s.series.machine.fingerprint: dict(sorted(s.series.machine.identity.items())) for s in found
        },
        "series": [
            {
                "machine": s.series.machine.fingerprint,
                "experiment": s.series.key.experiment,
                "cell": s.series.key.cell,
                "metric": s.series.key.metric,
                "context": s.series.key.context,
                "anchor": s.series.key.anchor,
                "unit": s.series.unit,
                "direction": s.series.direction,
                "kind": s.series.kind,
                "points": [
                    {
                        "revision": p.revision.sha,
                        "value": p.value,
                        "low": p.low,
                        "high": p.high,
                        "runs": p.runs,
                    }
                    for p in s.series.points
                ],
                "change_points": [
                    {
                        "revision": cp.revision.sha,
                        "before": cp.before.sha,
                        "at": _revision(cp.revision),
                        "index": cp.step.index,
                        "ratio": cp.step.ratio,
                        "low": cp.step.low,
                        "high": cp.step.high,
                        "p_value": cp.step.p_value,
                        "points_before": cp.step.before,
                        "points_after": cp.step.after,
                        "regression": cp.regression,
                    }
                    for cp in s.change_points
                ],
            }
            for s in found
        ],
    }
