"""Regression reports: read records into metrics, compare them under per-metric rules, render the verdict."""

from __future__ import annotations

from .baseline import read_baseline, update_baseline, write_baseline
from .compare import Comparison, Row, compare
from .metrics import Metric, MetricSet, load_metrics
from .render import render_json, render_markdown
from .thresholds import MetricSpec, Thresholds, load_thresholds

__all__ = [
    "Comparison",
    "Metric",
    "MetricSet",
    "MetricSpec",
    "Row",
    "Thresholds",
    "compare",
    "load_metrics",
    "load_thresholds",
    "read_baseline",
    "render_json",
    "render_markdown",
    "update_baseline",
    "write_baseline",
]
