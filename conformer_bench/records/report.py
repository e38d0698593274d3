"""The ``conformer-bench.report`` record: the verdict of a regression report, row by row (``report --json``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Record, SchemaRecord

REPORT_SCHEMA = "conformer-bench.report"


@dataclass(frozen=True)
class ReportRow(Record):
    """One metric compared: raw numbers (never rounded), ``delta`` = current - baseline, and the rule used."""

    metric: str  # "<cell label>/<metric name>" for an ablation cell; "<prefix>*" for a crashed record
    status: str  # FAIL | CHANGED | CRASHED | MISSING | WARN | IMPROVED | NOISY | UNSTABLE | NOT COMPARABLE | NEW | OK
    blocking: bool
    kind: str
    direction: str
    unit: str
    baseline: float | None
    current: float | None
    delta: float | None
    delta_rel: float | None
    n_baseline: int
    n_current: int
    p_value: float | None
    ci: list[float] | None  # interval of current/baseline (noisy metrics)
    sd_baseline: float | None  # seed standard deviation (accuracy)
    sd_current: float | None
    p_adjusted: float | None  # p_value corrected for multiplicity (Benjamini-Hochberg)
    p_better: float | None
    tolerance: float | None  # effective fail tolerance (accuracy, absolute)
    note: str
    threshold: dict[str, Any] | None  # the metric's rule (``MetricSpec.to_dict``)


@dataclass(frozen=True)
class ReportSide(Record):
    """What one side of the comparison was read from, and where it was measured."""

    source: str
    source_kind: str
    environment: dict[str, Any]


@dataclass
class ReportRecord(SchemaRecord):
    """A ``conformer-bench.report`` record: verdict, exit code, counts by status and every row."""

    SCHEMA = REPORT_SCHEMA
    VERSION = 1

    verdict: str  # PASS | WARN | FAIL
    exit_code: int
    warn_only: bool
    counts: dict[str, int]  # status (lower case, "_" for spaces) -> rows
    blocking: list[str]
    stale: list[str]
    environment_mismatch: dict[str, list[Any]]  # timing key -> [baseline, current]
    baseline: ReportSide
    current: ReportSide
    thresholds: list[str]
    rows: list[ReportRow]
